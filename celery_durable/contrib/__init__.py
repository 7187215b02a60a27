"""Integrations with the frameworks Celery users run beside it (each needs its own extra)."""
