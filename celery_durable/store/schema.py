"""Tables and versioned migrations, in SQLAlchemy Core.

Every table name starts with a prefix (``durable_`` by default) so the tables sit beside an
application's own. The schema version lives in ``<prefix>schema_version``; each migration is a
function applied once, in order, inside one transaction per migration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

# Workflow ids, names, topics, keys and queue names are limited to this many characters.
MAX_ID_LENGTH = 255

#: Statuses of a workflow that has been admitted and has not finished (an execution may run it).
ACTIVE_STATUSES = ("PENDING", "RUNNING", "WAITING")
#: Statuses of a workflow that has not finished: the active ones, and ENQUEUED (waiting for a concurrency
#: slot, see sql_concurrency.py), which nothing runs until it is admitted.
UNFINISHED_STATUSES = (*ACTIVE_STATUSES, "ENQUEUED")
#: Column values that say a workflow waits for nothing.
CLEARED_WAIT: dict[str, Any] = {
    "wait_kind": None,
    "wait_target": None,
    "wait_topics": None,
    "wait_step": None,
    "deadline": None,
    "timer_due": None,
}

_BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only


@dataclass(frozen=True)
class Tables:
    """The package's tables for one prefix."""

    prefix: str
    metadata: sa.MetaData
    version: sa.Table
    workflows: sa.Table
    steps: sa.Table
    messages: sa.Table
    events: sa.Table
    rate_limits: sa.Table
    #: Concurrency slots (schema version 7, sql_concurrency.py): one row per admitted, unfinished
    #: workflow of a concurrency-limited key.
    flow_slots: sa.Table
    #: Schedules (schema version 8, sql_schedules.py).
    schedules: sa.Table
    #: Debounce rounds (schema version 9, sql_debounce.py).
    debounces: sa.Table


def _v2_workflow_columns() -> list[sa.Column[Any]]:
    """Columns schema version 2 added to the workflows table (operations, versions, children, tracing)."""
    return [
        sa.Column("version", sa.String(MAX_ID_LENGTH)),  # application version that started the workflow
        sa.Column("parent_id", sa.String(MAX_ID_LENGTH)),  # the workflow that started this one as a child
        sa.Column("forked_from", sa.String(MAX_ID_LENGTH)),  # the workflow this one was forked from
        sa.Column("forked_from_step", sa.Integer),  # ... and the step it was forked at
        sa.Column("timeout_at", sa.Float),  # the workflow's own deadline, fixed at start (None: no timeout)
        sa.Column("attempt_step", sa.Integer),  # the step whose retry attempts `attempts` counts
        sa.Column("attempts", sa.Integer),  # attempts of that step started so far (durable retries)
        sa.Column("trace_context", sa.Text),  # JSON carrier of the trace context that started it
    ]


def _v3_workflow_columns() -> list[sa.Column[Any]]:
    """Columns schema version 3 added to the workflows table (child workflows: durable joins, see sql_children.py)."""
    return [
        sa.Column("awaited", sa.Integer),  # on a child: the parent's step id that waits for it (NULL: none)
        sa.Column("awaiting", sa.Integer),  # on a parent waiting in a join: awaited children not finished yet
    ]


def _v4_workflow_columns() -> list[sa.Column[Any]]:
    """Columns schema version 4 added to the workflows table (the task system's options, kept for the finish)."""
    return [
        # Opaque JSON text the task system stores at start and gets back with the record (Celery: the
        # start message's canvas - links, chain, chord, group - fired when the workflow finishes).
        sa.Column("task_options", sa.Text),
    ]


def _v6_workflow_columns() -> list[sa.Column[Any]]:
    """Columns schema version 6 added to the workflows table (flow control: deduplication)."""
    return [
        # At most one unfinished workflow per (name, dedup_key): the partial unique index below.
        sa.Column("dedup_key", sa.String(MAX_ID_LENGTH)),
    ]


#: Statuses of a finished workflow: a dedup key is free again once its workflow has one of them.
FINISHED_STATUSES = ("SUCCESS", "ERROR", "CANCELLED")


def _dedup_index(prefix: str, workflows: sa.Table) -> sa.Index:
    # Unfinished = not finished, so any status added later (an admission queue's ENQUEUED) holds the key too.
    # Statuses already change the (indexed) status column, so the index costs no HOT update it did not cost.
    active = sa.and_(workflows.c.dedup_key.is_not(None), workflows.c.status.not_in(FINISHED_STATUSES))
    return sa.Index(
        f"{prefix}workflows_dedup",
        workflows.c.name,
        workflows.c.dedup_key,
        unique=True,
        postgresql_where=active,
        sqlite_where=active,
    )


def _v7_workflow_columns() -> list[sa.Column[Any]]:
    """Columns schema version 7 added to the workflows table (concurrency limits, see sql_concurrency.py)."""
    return [
        sa.Column("flow_key", sa.String(MAX_ID_LENGTH)),  # its concurrency key once it went through admission
        sa.Column("flow_limit", sa.Integer),  # how many of that key may be admitted at once
        sa.Column("priority", sa.Integer),  # admission order among the ENQUEUED of a key: lower first
    ]


def build_tables(prefix: str, version: int | None = None) -> Tables:
    """Declare the schema under *prefix*: the newest, or as it stood at schema *version*."""
    version = LATEST_VERSION if version is None else version
    md = sa.MetaData()
    version_table = sa.Table(f"{prefix}schema_version", md, sa.Column("version", sa.Integer, nullable=False))
    workflows = sa.Table(
        f"{prefix}workflows",
        md,
        sa.Column("workflow_id", sa.String(MAX_ID_LENGTH), primary_key=True),
        sa.Column("name", sa.String(MAX_ID_LENGTH), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("inputs", sa.Text, nullable=False),
        sa.Column("output", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("queue", sa.String(MAX_ID_LENGTH)),
        sa.Column("ticket", sa.Integer, nullable=False, default=0),
        sa.Column("executions", sa.Integer, nullable=False, default=0),
        sa.Column("wait_kind", sa.String(8)),
        sa.Column("wait_target", sa.String(MAX_ID_LENGTH)),
        sa.Column("wait_topics", sa.Text),  # JSON list of topics (recv) or [key] (event)
        sa.Column("wait_step", sa.Integer),
        sa.Column("deadline", sa.Float),
        sa.Column("timer_due", sa.Float),  # when the live timer message is due; NULL: none armed
        sa.Column("dispatched_at", sa.Float),  # when the live immediate message was published
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        *(_v2_workflow_columns() if version >= 2 else []),
        *(_v3_workflow_columns() if version >= 3 else []),
        *(_v4_workflow_columns() if version >= 4 else []),
        *(_v6_workflow_columns() if version >= 6 else []),
        *(_v7_workflow_columns() if version >= 7 else []),
    )
    sa.Index(f"{prefix}workflows_created", workflows.c.created_at)
    sa.Index(f"{prefix}workflows_status", workflows.c.status, workflows.c.created_at)
    sa.Index(f"{prefix}workflows_wait_target", workflows.c.wait_target)
    # The sweep looks for waits whose deadline comes within the horizon.
    waiting = workflows.c.status == "WAITING"
    sa.Index(f"{prefix}workflows_deadline", workflows.c.deadline, postgresql_where=waiting, sqlite_where=waiting)
    if version >= 2:
        sa.Index(f"{prefix}workflows_parent", workflows.c.parent_id)
        # The sweep looks for unfinished workflows whose own deadline passed.
        timed = workflows.c.timeout_at.is_not(None)
        sa.Index(f"{prefix}workflows_timeout", workflows.c.timeout_at, postgresql_where=timed, sqlite_where=timed)
    if version >= 6:
        _dedup_index(prefix, workflows)
    if version >= 7:
        # Admission takes the head of a key's queue: priority, then start order.
        enqueued = workflows.c.status == "ENQUEUED"
        sa.Index(
            f"{prefix}workflows_enqueued",
            workflows.c.flow_key,
            workflows.c.priority,
            workflows.c.created_at,
            postgresql_where=enqueued,
            sqlite_where=enqueued,
        )
    steps = sa.Table(
        f"{prefix}steps",
        md,
        sa.Column("workflow_id", sa.String(MAX_ID_LENGTH), primary_key=True),
        sa.Column("step_id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(MAX_ID_LENGTH), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("output", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("topic", sa.String(MAX_ID_LENGTH)),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float, nullable=False),
    )
    messages = sa.Table(
        f"{prefix}messages",
        md,
        sa.Column("seq", _BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("destination", sa.String(MAX_ID_LENGTH), nullable=False),
        sa.Column("topic", sa.String(MAX_ID_LENGTH), nullable=False),  # '' is the default topic
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.String(MAX_ID_LENGTH)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("consumed_at", sa.Float),
    )
    # FIFO per (destination, topic): the oldest unconsumed message is the first row of this index.
    sa.Index(
        f"{prefix}messages_queue",
        messages.c.destination,
        messages.c.topic,
        messages.c.seq,
        postgresql_where=messages.c.consumed_at.is_(None),
        sqlite_where=messages.c.consumed_at.is_(None),
    )
    sa.Index(
        f"{prefix}messages_idempotency",
        messages.c.destination,
        messages.c.idempotency_key,
        unique=True,
    )
    events = sa.Table(
        f"{prefix}events",
        md,
        sa.Column("workflow_id", sa.String(MAX_ID_LENGTH), primary_key=True),
        sa.Column("key", sa.String(MAX_ID_LENGTH), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    # Rate limits (sql_rate.py): one row per (limit, key value), the start time last reserved on it.
    rate_limits = sa.Table(
        f"{prefix}rate_limits",
        md,
        sa.Column("limit_name", sa.String(MAX_ID_LENGTH), primary_key=True),  # "step:<name>" or "workflow:<name>"
        sa.Column("key", sa.String(MAX_ID_LENGTH), primary_key=True),  # the rate_key's value ('' without one)
        sa.Column("reserved", sa.Float, nullable=False),  # the latest start time granted on this row
    )
    flow_slots = sa.Table(
        f"{prefix}flow_slots",
        md,
        sa.Column("flow_key", sa.String(MAX_ID_LENGTH), primary_key=True),
        sa.Column("workflow_id", sa.String(MAX_ID_LENGTH), primary_key=True),
        sa.Column("admitted_at", sa.Float, nullable=False),
    )
    # Schedules (sql_schedules.py): a definition the code upserts, and the state the tick drivers share.
    schedules = sa.Table(
        f"{prefix}schedules",
        md,
        sa.Column("name", sa.String(MAX_ID_LENGTH), primary_key=True),
        sa.Column("workflow", sa.String(MAX_ID_LENGTH), nullable=False),  # the workflow (task) name each tick starts
        sa.Column("inputs", sa.Text, nullable=False),  # serialized args and kwargs of each run
        sa.Column("queue", sa.String(MAX_ID_LENGTH)),
        sa.Column("spec", sa.Text, nullable=False),  # the tick rule, JSON (schedules.py)
        sa.Column("overlap", sa.String(16), nullable=False),  # skip, allow, buffer_one
        sa.Column("catchup", sa.Float),  # seconds of missed ticks started after downtime (NULL: none)
        sa.Column("paused", sa.Boolean, nullable=False, default=False),
        sa.Column("next_tick", sa.Float, nullable=False),  # the cursor: the first tick no driver handled yet
        sa.Column("pending", sa.Float),  # buffer_one: the tick kept while a run is unfinished
        sa.Column("last_run", sa.String(MAX_ID_LENGTH)),  # the id of the latest run a driver claimed
        sa.Column("revision", sa.Integer, nullable=False, default=0),  # bumped by every change (compare-and-set)
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    # Debouncing (sql_debounce.py): one row per (workflow name, key), the round open on it (if any).
    debounces = sa.Table(
        f"{prefix}debounces",
        md,
        sa.Column("name", sa.String(MAX_ID_LENGTH), primary_key=True),  # the workflow (task) name
        sa.Column("key", sa.String(MAX_ID_LENGTH), primary_key=True),  # the debounce key
        sa.Column("rounds", sa.Integer, nullable=False),  # rounds opened on this key so far (names their ids)
        sa.Column("workflow_id", sa.String(MAX_ID_LENGTH)),  # the latest round's workflow (open while it WAITs)
        sa.Column("first_at", sa.Float),  # when the latest round's first call came
        sa.Column("max_at", sa.Float),  # the latest its workflow may start (first call + max_delay); NULL: no bound
    )
    return Tables(
        prefix, md, version_table, workflows, steps, messages, events, rate_limits, flow_slots, schedules, debounces
    )


def _v1_initial(conn: sa.Connection, tables: Tables) -> None:
    # The tables as version 1 declared them: later versions add to them with their own migrations.
    v1 = build_tables(tables.prefix, version=1)
    for table in (v1.workflows, v1.steps, v1.messages, v1.events):
        table.create(conn, checkfirst=True)


def _v2_operations(conn: sa.Connection, tables: Tables) -> None:
    w = tables.workflows
    for column in _v2_workflow_columns():
        ddl = sa.schema.CreateColumn(w.c[column.name]).compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {w.name} ADD COLUMN {ddl}")
    for index in w.indexes:
        if index.name in (f"{tables.prefix}workflows_parent", f"{tables.prefix}workflows_timeout"):
            index.create(conn)


def _v3_children(conn: sa.Connection, tables: Tables) -> None:
    w = tables.workflows
    for column in _v3_workflow_columns():
        ddl = sa.schema.CreateColumn(w.c[column.name]).compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {w.name} ADD COLUMN {ddl}")


def _v4_task_options(conn: sa.Connection, tables: Tables) -> None:
    w = tables.workflows
    for column in _v4_workflow_columns():
        ddl = sa.schema.CreateColumn(w.c[column.name]).compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {w.name} ADD COLUMN {ddl}")


def _v5_rate_limits(conn: sa.Connection, tables: Tables) -> None:
    tables.rate_limits.create(conn, checkfirst=True)


def _v6_dedup(conn: sa.Connection, tables: Tables) -> None:
    w = tables.workflows
    for column in _v6_workflow_columns():
        ddl = sa.schema.CreateColumn(w.c[column.name]).compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {w.name} ADD COLUMN {ddl}")
    for index in w.indexes:
        if index.name == f"{tables.prefix}workflows_dedup":
            index.create(conn)


def _v7_concurrency(conn: sa.Connection, tables: Tables) -> None:
    w = tables.workflows
    for column in _v7_workflow_columns():
        ddl = sa.schema.CreateColumn(w.c[column.name]).compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {w.name} ADD COLUMN {ddl}")
    for index in w.indexes:
        if index.name == f"{tables.prefix}workflows_enqueued":
            index.create(conn)
    tables.flow_slots.create(conn, checkfirst=True)

def _v8_schedules(conn: sa.Connection, tables: Tables) -> None:
    tables.schedules.create(conn, checkfirst=True)


def _v9_debounce(conn: sa.Connection, tables: Tables) -> None:
    tables.debounces.create(conn, checkfirst=True)


# Append new migrations here; never edit one that has shipped.
MIGRATIONS: list[Callable[[sa.Connection, Tables], None]] = [
    _v1_initial,
    _v2_operations,
    _v3_children,
    _v4_task_options,
    _v5_rate_limits,
    _v6_dedup,
    _v7_concurrency,
    _v8_schedules,
    _v9_debounce,
]
LATEST_VERSION = len(MIGRATIONS)
