"""Library schema version 6 (flow control: a workflow's dedup key, one unfinished workflow per key).

The column and its unique partial index are the library's (store/schema.py, migration 6); the
models only read the column.
"""

from __future__ import annotations

import importlib

from django.db import migrations, models

_initial = importlib.import_module("celery_durable.contrib.django.migrations.0001_initial")


class Migration(migrations.Migration):
    atomic = False  # as 0001: the library's migrations commit on their own connection
    dependencies = [("celery_durable", "0004_rate_limits")]

    operations = [
        migrations.RunPython(_initial.migrate_store, migrations.RunPython.noop),
        migrations.AddField("workflow", "dedup_key", models.CharField(max_length=255, null=True)),
    ]
