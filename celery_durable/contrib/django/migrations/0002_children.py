"""Library schema version 3 (child workflows): bring the tables up to date and declare the new columns.

The columns are the library's (store/schema.py, migration 3); the models only read them.
"""

from __future__ import annotations

import importlib

from django.db import migrations, models

_initial = importlib.import_module("celery_durable.contrib.django.migrations.0001_initial")


class Migration(migrations.Migration):
    atomic = False  # as 0001: the library's migrations commit on their own connection
    dependencies = [("celery_durable", "0001_initial")]

    operations = [
        migrations.RunPython(_initial.migrate_store, migrations.RunPython.noop),
        migrations.AddField("workflow", "awaited", models.IntegerField(null=True)),
        migrations.AddField("workflow", "awaiting", models.IntegerField(null=True)),
    ]
