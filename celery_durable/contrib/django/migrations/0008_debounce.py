"""Library schema version 9 (flow control: debouncing, one row per (workflow name, key) in ``debounces``).

The table is the library's (store/schema.py, migration 9; store/sql_debounce.py uses it); no model
reads it, and the workflows table gains no column.
"""

from __future__ import annotations

import importlib

from django.db import migrations

_initial = importlib.import_module("celery_durable.contrib.django.migrations.0001_initial")


class Migration(migrations.Migration):
    atomic = False  # as 0001: the library's migrations commit on their own connection
    dependencies = [("celery_durable", "0007_schedules")]

    operations = [
        migrations.RunPython(_initial.migrate_store, migrations.RunPython.noop),
    ]
