"""Create the store's tables with the library's own migrations; declare the models the admin reads.

The schema has one source of truth, ``celery_durable/store/schema.py``. This migration runs the
library's versioned migrations (``store.migrate()`` brings the tables to the newest schema
version) and only *declares* the unmanaged models Django reads them through. Reversing it drops
nothing: workflow history is not Django's to delete (drop the ``<prefix>*`` tables by hand).
A later library schema version comes with a new migration here that runs ``migrate_store`` again.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models

from celery_durable.contrib.django import conf
from celery_durable.store.records import WorkflowStatus

PREFIX = conf.table_prefix()


def migrate_store(apps: Any, schema_editor: Any) -> None:
    alias = schema_editor.connection.alias
    if alias != conf.database_alias():
        return  # migrate --database=<another alias>: the store lives in one database only
    store = conf.open_configured_store(alias)
    try:
        store.migrate()
    finally:
        store.close()


def _options(table: str, **extra: Any) -> dict[str, Any]:
    return {"db_table": f"{PREFIX}{table}", "managed": False, **extra}


class Migration(migrations.Migration):
    initial = True
    # The library's migrations commit on their own connection; a Django transaction around them
    # would only hold SQLite's write lock against them.
    atomic = False
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.RunPython(migrate_store, migrations.RunPython.noop),
        migrations.CreateModel(
            name="Workflow",
            fields=[
                ("workflow_id", models.CharField(max_length=255, primary_key=True, serialize=False)),
                ("name", models.CharField(max_length=255)),
                ("status", models.CharField(choices=[(s.value, s.value) for s in WorkflowStatus], max_length=16)),
                ("inputs", models.TextField()),
                ("output", models.TextField(null=True)),
                ("error", models.TextField(null=True)),
                ("queue", models.CharField(max_length=255, null=True)),
                ("ticket", models.IntegerField()),
                ("executions", models.IntegerField()),
                ("wait_kind", models.CharField(max_length=8, null=True)),
                ("wait_target", models.CharField(max_length=255, null=True)),
                ("wait_topics", models.TextField(null=True)),
                ("wait_step", models.IntegerField(null=True)),
                ("deadline", models.FloatField(null=True)),
                ("timer_due", models.FloatField(null=True)),
                ("dispatched_at", models.FloatField(null=True)),
                ("created_at", models.FloatField()),
                ("updated_at", models.FloatField()),
                ("version", models.CharField(max_length=255, null=True)),
                ("parent_id", models.CharField(max_length=255, null=True)),
                ("forked_from", models.CharField(max_length=255, null=True)),
                ("forked_from_step", models.IntegerField(null=True)),
                ("timeout_at", models.FloatField(null=True)),
                ("attempt_step", models.IntegerField(null=True)),
                ("attempts", models.IntegerField(null=True)),
                ("trace_context", models.TextField(null=True)),
            ],
            options=_options("workflows", ordering=["-created_at", "-workflow_id"]),
        ),
        migrations.CreateModel(
            name="Step",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "workflow_id", "step_id", blank=True, editable=False, primary_key=True, serialize=False
                    ),
                ),
                ("workflow_id", models.CharField(max_length=255)),
                ("step_id", models.IntegerField()),
                ("name", models.CharField(max_length=255)),
                ("kind", models.CharField(max_length=16)),
                ("output", models.TextField(null=True)),
                ("error", models.TextField(null=True)),
                ("topic", models.CharField(max_length=255, null=True)),
                ("started_at", models.FloatField()),
                ("ended_at", models.FloatField()),
            ],
            options=_options("steps"),
        ),
        migrations.CreateModel(
            name="Message",
            fields=[
                ("seq", models.BigIntegerField(primary_key=True, serialize=False)),
                ("destination", models.CharField(max_length=255)),
                ("topic", models.CharField(max_length=255)),
                ("payload", models.TextField()),
                ("idempotency_key", models.CharField(max_length=255, null=True)),
                ("created_at", models.FloatField()),
                ("consumed_at", models.FloatField(null=True)),
            ],
            options=_options("messages", ordering=["-seq"]),
        ),
        migrations.CreateModel(
            name="Event",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "workflow_id", "key", blank=True, editable=False, primary_key=True, serialize=False
                    ),
                ),
                ("workflow_id", models.CharField(max_length=255)),
                ("key", models.CharField(max_length=255)),
                ("value", models.TextField()),
                ("updated_at", models.FloatField()),
            ],
            options=_options("events"),
        ),
    ]
