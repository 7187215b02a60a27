"""``DjangoDurable``: a :class:`~celery_durable.Durable` configured from Django settings, whose
store lives in a ``DATABASES`` entry and whose sends join the caller's transaction (see
:mod:`celery_durable.contrib.django.store`)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from celery import Celery

from ...errors import ConfigurationError
from ...integration import Durable
from ...store import Dispatch, Store
from . import conf
from .store import open_django_store

_instances: list[DjangoDurable] = []
_instances_lock = threading.Lock()


class DjangoDurable(Durable):
    """Durable workflows stored in a Django database (``CELERY_DURABLE["database"]``, default ``"default"``).

    Options come from ``settings.CELERY_DURABLE`` (every :class:`~celery_durable.DurableConfig`
    field); keyword *options* given here win over them. ``auto_migrate`` defaults to ``False``:
    ``manage.py migrate`` creates and upgrades the tables, as for every other Django app.
    """

    def __init__(self, app: Celery, *, database: str | None = None, **options: Any) -> None:
        self.database = database or conf.database_alias()
        merged: dict[str, Any] = {"auto_migrate": False, **conf.config_options(), **options}
        super().__init__(app, conf.database_url(self.database), **merged)
        with _instances_lock:
            _instances.append(self)

    @property
    def store(self) -> Store:
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    # Read the database's settings when the store opens, not at import: Django's
                    # test runner switches to the test database after celery.py was imported.
                    self.database_url = conf.database_url(self.database)
                    store = open_django_store(
                        self.database,
                        self.database_url,
                        self.config.table_prefix,
                        self._engine_options(),
                        self._publish_wakeups,
                        durability=self.config.durability,
                    )
                    if self.config.auto_migrate:
                        store.migrate()
                    self._store = store
        return self._store

    def _publish_wakeups(self, dispatches: Sequence[Dispatch]) -> None:
        self.engine.publish_all(dispatches)


def get_durable() -> DjangoDurable:
    """The :class:`DjangoDurable` this process built (the last one), for the admin's actions."""
    with _instances_lock:
        if _instances:
            return _instances[-1]
    raise ConfigurationError(
        "no DjangoDurable in this process: build one in your project's celery.py "
        "(durable = DjangoDurable(app)) and import that module from your project's __init__.py, "
        "as Celery's Django guide does for the app"
    )


__all__ = ["DjangoDurable", "get_durable"]
