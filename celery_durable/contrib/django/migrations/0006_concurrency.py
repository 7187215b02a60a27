"""Library schema version 7 (concurrency limits: a workflow's concurrency key, limit and admission priority,
and the table of the slots admitted workflows hold).

The columns and the ``flow_slots`` table are the library's (store/schema.py, migration 7); the models
only read the columns, and the table needs no model.
"""

from __future__ import annotations

import importlib

from django.db import migrations, models

_initial = importlib.import_module("celery_durable.contrib.django.migrations.0001_initial")


class Migration(migrations.Migration):
    atomic = False  # as 0001: the library's migrations commit on their own connection
    dependencies = [("celery_durable", "0005_dedup")]

    operations = [
        migrations.RunPython(_initial.migrate_store, migrations.RunPython.noop),
        migrations.AddField("workflow", "flow_key", models.CharField(max_length=255, null=True)),
        migrations.AddField("workflow", "flow_limit", models.IntegerField(null=True)),
        migrations.AddField("workflow", "priority", models.IntegerField(null=True)),
    ]
