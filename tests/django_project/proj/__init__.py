"""A Django project set up as a user would: Celery's Django guide plus celery_durable's Django app."""

# Celery's Django guide: load the app (and so the DjangoDurable) whenever Django starts.
from .celery import app as celery_app

__all__ = ["celery_app"]
