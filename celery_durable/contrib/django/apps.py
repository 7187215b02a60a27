"""The Django app: add ``"celery_durable.contrib.django"`` to ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig


class CeleryDurableConfig(AppConfig):
    """Durable workflows: tables created by ``manage.py migrate``, read-only admin pages."""

    name = "celery_durable.contrib.django"
    # Not "django" (the last part of the module path): that would clash with Django's own labels.
    label = "celery_durable"
    verbose_name = "Durable workflows"
    default_auto_field = "django.db.models.BigAutoField"
