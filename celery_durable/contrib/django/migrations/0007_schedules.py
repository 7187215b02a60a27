"""Library schema version 8 (flow control: schedules, a table of their own).

The table is the library's (store/schema.py, migration 8); it has no Django model.
"""

from __future__ import annotations

import importlib

from django.db import migrations

_initial = importlib.import_module("celery_durable.contrib.django.migrations.0001_initial")


class Migration(migrations.Migration):
    atomic = False  # as 0001: the library's migrations commit on their own connection
    dependencies = [("celery_durable", "0006_concurrency")]

    operations = [
        migrations.RunPython(_initial.migrate_store, migrations.RunPython.noop),
    ]
