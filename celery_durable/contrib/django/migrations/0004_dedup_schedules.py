"""Library schema version 5 (flow control: a workflow's dedup key and schedule tick, and the schedules table).

The columns and the table are the library's (store/schema.py, migration 5); the models only read
the columns, and the schedules table needs no model.
"""

from __future__ import annotations

import importlib

from django.db import migrations, models

_initial = importlib.import_module("celery_durable.contrib.django.migrations.0001_initial")


class Migration(migrations.Migration):
    atomic = False  # as 0001: the library's migrations commit on their own connection
    dependencies = [("celery_durable", "0003_task_options")]

    operations = [
        migrations.RunPython(_initial.migrate_store, migrations.RunPython.noop),
        migrations.AddField("workflow", "dedup_key", models.CharField(max_length=255, null=True)),
        migrations.AddField("workflow", "schedule_tick", models.FloatField(null=True)),
    ]
