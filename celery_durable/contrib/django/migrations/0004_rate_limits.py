"""Library schema version 5 (rate limits: one row per limit and key value, see store/sql_rate.py).

The table is the library's (store/schema.py, migration 5); it needs no model.
"""

from __future__ import annotations

import importlib

from django.db import migrations

_initial = importlib.import_module("celery_durable.contrib.django.migrations.0001_initial")


class Migration(migrations.Migration):
    atomic = False  # as 0001: the library's migrations commit on their own connection
    dependencies = [("celery_durable", "0003_task_options")]

    operations = [
        migrations.RunPython(_initial.migrate_store, migrations.RunPython.noop),
    ]
