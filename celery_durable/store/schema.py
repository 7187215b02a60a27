"""Tables and versioned migrations, in SQLAlchemy Core.

Every table name starts with a prefix (``durable_`` by default) so the tables sit beside an
application's own. The schema version lives in ``<prefix>schema_version``; each migration is a
function applied once, in order, inside one transaction per migration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

# Workflow ids, names, topics, keys and queue names are limited to this many characters.
MAX_ID_LENGTH = 255

_BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only


@dataclass(frozen=True)
class Tables:
    """The package's tables for one prefix."""

    metadata: sa.MetaData
    version: sa.Table
    workflows: sa.Table
    steps: sa.Table
    messages: sa.Table
    events: sa.Table


def build_tables(prefix: str) -> Tables:
    """Declare the newest schema under *prefix*."""
    md = sa.MetaData()
    version = sa.Table(f"{prefix}schema_version", md, sa.Column("version", sa.Integer, nullable=False))
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
    )
    sa.Index(f"{prefix}workflows_created", workflows.c.created_at)
    sa.Index(f"{prefix}workflows_status", workflows.c.status, workflows.c.created_at)
    sa.Index(f"{prefix}workflows_wait_target", workflows.c.wait_target)
    # The sweep looks for waits whose deadline comes within the horizon.
    waiting = workflows.c.status == "WAITING"
    sa.Index(f"{prefix}workflows_deadline", workflows.c.deadline, postgresql_where=waiting, sqlite_where=waiting)
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
    return Tables(md, version, workflows, steps, messages, events)


def _v1_initial(conn: sa.Connection, tables: Tables) -> None:
    for table in (tables.workflows, tables.steps, tables.messages, tables.events):
        table.create(conn, checkfirst=True)


# Append new migrations here; never edit one that has shipped.
MIGRATIONS: list[Callable[[sa.Connection, Tables], None]] = [_v1_initial]
LATEST_VERSION = len(MIGRATIONS)
