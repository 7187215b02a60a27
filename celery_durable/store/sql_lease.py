"""The lease of the SQL stores: an execution lock plus the connection all of that execution's writes use."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .base import Lease
from .records import StepRecord, WorkflowRecord


class SQLLease(Lease):
    """An execution lock plus the connection every write of that execution goes through.

    Either *conn* (a SQLAlchemy connection) or *proxied* (a pooled DBAPI connection of *engine*,
    from ``engine.raw_connection()``) holds the lock. With *proxied*, the SQLAlchemy connection
    that generic code uses (``conn``) is built around that same DBAPI connection only when first
    asked for: PostgreSQL's hot path (pg_fast.py) runs on the DBAPI connection alone, and building
    and closing a ``Connection`` it never uses cost about as much CPU as one of its statements.
    """

    def __init__(
        self,
        workflow_id: str,
        conn: sa.Connection | None,
        handle: Any = None,
        autocommit: bool = False,
        *,
        engine: sa.Engine | None = None,
        proxied: Any = None,
    ) -> None:
        if conn is None and (engine is None or proxied is None):
            raise ValueError("SQLLease needs a connection, or an engine and one of its pooled DBAPI connections")
        self.workflow_id = workflow_id
        self._conn = conn
        self._engine = engine
        self.proxied = proxied
        self.handle = handle  # backend-specific: a lock file descriptor for SQLite
        # An autocommit connection runs a lone statement in one round trip; transactions
        # that need several statements issue BEGIN/COMMIT themselves (see SQLStore._tx).
        self.autocommit = autocommit
        self.finished = False  # set by finish(): the workflow will never run again
        self.parent_id: str | None = None  # set by the claim: finish() wakes a parent only for children
        self.flow_key: str | None = None  # set by the claim and by admission: finish() frees its slot (sql_concurrency.py)
        # The execution's history, kept for the next execution in this process (step_cache.py):
        # the row as claimed, every checkpoint (read or written), and the wait it recorded, if any.
        self.record: WorkflowRecord | None = None
        self.history: dict[int, StepRecord] | None = None
        self.waited: tuple[str, int] | None = None
        self.listening = False  # PostgreSQL: the connection LISTENs for a lingering recv (pg_fast.py)
        self.cursor: Any = None  # PostgreSQL: the DBAPI cursor the hot path reuses (pg_fast.py)

    @property
    def conn(self) -> sa.Connection:
        """The SQLAlchemy connection on the lease's DBAPI connection (built at first use)."""
        conn = self._conn
        if conn is None:
            assert self._engine is not None
            conn = self._conn = sa.Connection(self._engine, self.proxied)
        return conn

    @property
    def dbapi(self) -> Any:
        """The DBAPI connection that holds the lock."""
        return (self._conn.connection if self._conn is not None else self.proxied).dbapi_connection

    def invalidate(self) -> None:
        """Discard the connection instead of pooling it (the server session ends: its locks with it)."""
        if self._conn is not None:
            self._conn.invalidate()
        else:
            self.proxied.invalidate()

    def close(self) -> None:
        """Give the connection back to its pool (after :meth:`invalidate`: only end the bookkeeping)."""
        if self._conn is not None:
            self._conn.close()
        else:
            self.proxied.close()

    def remember(self, step: StepRecord) -> None:
        """Add a checkpoint this execution wrote (or found written) to its history."""
        if self.history is not None:
            self.history[step.step_id] = step
