"""The project's Celery app, per Celery's Django guide, with durable workflows on the Django database."""

import os

from celery import Celery

from celery_durable.contrib.django import DjangoDurable

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
durable = DjangoDurable(app)
app.autodiscover_tasks(["shop"], related_name="workflows")
