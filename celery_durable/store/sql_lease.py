"""The lease of the SQL stores: an execution lock plus the connection all of that execution's writes use."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .base import Lease
from .records import StepRecord, WorkflowRecord


class SQLLease(Lease):
    """An execution lock plus the connection every write of that execution goes through."""

    def __init__(self, workflow_id: str, conn: sa.Connection, handle: Any = None, autocommit: bool = False) -> None:
        self.workflow_id = workflow_id
        self.conn = conn
        self.handle = handle  # backend-specific: a lock file descriptor for SQLite
        # An autocommit connection runs a lone statement in one round trip; transactions
        # that need several statements issue BEGIN/COMMIT themselves (see SQLStore._tx).
        self.autocommit = autocommit
        self.finished = False  # set by finish(): the workflow will never run again
        self.parent_id: str | None = None  # set by the claim: finish() wakes a parent only for children
        # The execution's history, kept for the next execution in this process (step_cache.py):
        # the row as claimed, every checkpoint (read or written), and the wait it recorded, if any.
        self.record: WorkflowRecord | None = None
        self.history: dict[int, StepRecord] | None = None
        self.waited: tuple[str, int] | None = None
        self.listening = False  # PostgreSQL: the connection LISTENs for a lingering recv (pg_fast.py)

    def remember(self, step: StepRecord) -> None:
        """Add a checkpoint this execution wrote (or found written) to its history."""
        if self.history is not None:
            self.history[step.step_id] = step
