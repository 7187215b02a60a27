"""Django integration: the store in a ``DATABASES`` entry, tables by ``manage.py migrate``, admin pages.

``settings.py``::

    INSTALLED_APPS = [..., "celery_durable.contrib.django"]
    CELERY_DURABLE = {"database": "default", "queue": "workflows"}   # optional; any DurableConfig option

``proj/celery.py``::

    app = Celery("proj")
    app.config_from_object("django.conf:settings", namespace="CELERY")
    durable = DjangoDurable(app)

``durable.send(...)`` from a view joins the view's transaction (see :mod:`.store`).
"""

from __future__ import annotations

from .conf import database_alias, database_url
from .durable import DjangoDurable, get_durable

__all__ = ["DjangoDurable", "database_alias", "database_url", "get_durable"]
