"""Library schema version 4 (the task system's options: a workflow's Celery canvas, kept for its finish).

The column is the library's (store/schema.py, migration 4); the models only read it.
"""

from __future__ import annotations

import importlib

from django.db import migrations, models

_initial = importlib.import_module("celery_durable.contrib.django.migrations.0001_initial")


class Migration(migrations.Migration):
    atomic = False  # as 0001: the library's migrations commit on their own connection
    dependencies = [("celery_durable", "0002_children")]

    operations = [
        migrations.RunPython(_initial.migrate_store, migrations.RunPython.noop),
        migrations.AddField("workflow", "task_options", models.TextField(null=True)),
    ]
