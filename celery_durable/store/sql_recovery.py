"""The sweep of the SQL store: find workflows that should be moving but have no live message (``Store.sweep``).

A mixin of :class:`~celery_durable.store.sql.SQLStore`, kept apart from the queries every execution
runs. It runs in each worker's main process every ``sweep_interval`` (or from beat).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..timeouts import earliest, timed_out_error
from .records import Dispatch, WorkflowRecord, WorkflowStatus
from .schema import CLEARED_WAIT, UNFINISHED_STATUSES

if TYPE_CHECKING:
    from .base import Lease
    from .schema import Tables


class SQLRecovery:
    """Recovery queries: the sweep, reclaiming one workflow, stopping one past its deadline."""

    if TYPE_CHECKING:  # provided by SQLStore
        t: Tables
        engine: sa.Engine

        def _tx(self, lease: Lease | None = None) -> AbstractContextManager[sa.Connection]: ...
        def _lock_channel(self, conn: sa.Connection, kind: str, workflow_id: str) -> None: ...
        def _select_workflow(
            self, conn: sa.Connection, workflow_id: str, for_update: bool = False
        ) -> WorkflowRecord | None: ...
        def _bump(self, conn: sa.Connection, wf: WorkflowRecord, now: float, **values: Any) -> int | None: ...
        def acquire(self, workflow_id: str) -> Lease | None: ...
        def release(self, lease: Lease) -> None: ...
        def _stopped(self, conn: sa.Connection, workflow_id: str, failed: bool, now: float) -> list[Dispatch]: ...
        def admit_enqueued(self, now: float) -> list[Dispatch]: ...

    def sweep(self, now: float, horizon: float, grace: float, limit: int = 500) -> list[Dispatch]:
        w = self.t.workflows
        waiting = w.c.status == WorkflowStatus.WAITING.value
        within = now + horizon
        due = sa.or_(
            sa.and_(waiting, w.c.timer_due.is_(None), sa.or_(w.c.deadline <= within, w.c.timeout_at <= within)),
            # Past their own deadline, queued or waiting: the sweep stops them (see _time_out). RUNNING
            # ones are probed below with the others: only a free lock says no execution will.
            sa.and_(
                w.c.status.in_((WorkflowStatus.PENDING.value, WorkflowStatus.WAITING.value, WorkflowStatus.ENQUEUED.value)),
                w.c.timeout_at <= now,
            ),
            sa.and_(waiting, w.c.timer_due < now - grace),
            sa.and_(
                w.c.status == WorkflowStatus.PENDING.value,
                sa.or_(w.c.dispatched_at.is_(None), w.c.dispatched_at < now - grace),
            ),
        )
        running = w.c.status == WorkflowStatus.RUNNING.value
        with self.engine.connect() as conn:
            ids = list(
                conn.execute(sa.select(w.c.workflow_id).where(due).order_by(w.c.updated_at).limit(limit)).scalars()
            )
            # Whether a RUNNING workflow is alive only its lock can tell, so they are probed apart and
            # in random order: live long-running executions can never fill the sweep for good and hide
            # lost ones, nor starve the waits and messages above.
            ids += conn.execute(
                sa.select(w.c.workflow_id).where(running).order_by(sa.func.random()).limit(limit)
            ).scalars()
        dispatches = []
        for workflow_id in ids:
            lease = self.acquire(workflow_id)
            if lease is None:
                continue  # a live execution holds it: leave it alone
            try:
                dispatch = self._reclaim(lease, now, horizon, grace)
            finally:
                self.release(lease)
            if dispatch is not None:
                dispatches.append(dispatch)
        # Concurrency limits (sql_concurrency.py): admit into free slots, had a wake-up been lost.
        return dispatches + self.admit_enqueued(now)

    def _reclaim(self, lease: Lease, now: float, horizon: float, grace: float) -> Dispatch | None:
        with self._tx(lease) as conn:
            self._lock_channel(conn, "m", lease.workflow_id)
            wf = self._select_workflow(conn, lease.workflow_id, for_update=True)
            if wf is None:
                return None
            if wf.timeout_at is not None and wf.timeout_at <= now and not wf.status.is_terminal:
                wakeups = self._time_out(conn, wf, now)
                return wakeups[0] if wakeups else None  # its parent, waiting on it
            pending = {"status": WorkflowStatus.PENDING.value, "timer_due": None, "dispatched_at": now}
            wake = earliest(wf.deadline, wf.timeout_at)
            if wf.status == WorkflowStatus.WAITING:
                if wf.timer_due is None and wake is not None and wake <= now + horizon:
                    ticket = self._bump(conn, wf, now, timer_due=wake)
                    countdown = max(0.0, wake - now)
                elif wf.timer_due is not None and wf.timer_due < now - grace:
                    ticket, countdown = self._bump(conn, wf, now, **pending), 0.0
                else:
                    return None
            elif wf.status == WorkflowStatus.PENDING:
                if wf.dispatched_at is not None and wf.dispatched_at >= now - grace:
                    return None
                ticket, countdown = self._bump(conn, wf, now, **pending), 0.0
            elif wf.status == WorkflowStatus.RUNNING:
                # We hold the execution lock, so the execution that set RUNNING is gone.
                ticket, countdown = self._bump(conn, wf, now, **pending), 0.0
            else:
                return None
            if ticket is None:
                return None
            return Dispatch(wf.workflow_id, wf.name, wf.queue, ticket, countdown)

    def _time_out(self, conn: sa.Connection, wf: WorkflowRecord, now: float) -> list[Dispatch]:
        """Stop *wf*, whose own deadline passed while no execution ran it (we hold its execution lock).

        The engine does the same for a running workflow at its next step boundary (core._TimedOut).
        Its unfinished children are cancelled and a parent waiting on it is woken, in this
        transaction (sql_children.py); the wake-up is returned.
        """
        assert wf.timeout_at is not None
        self._bump(
            conn,
            wf,
            now,
            status=WorkflowStatus.CANCELLED.value,
            error=timed_out_error(wf.workflow_id, wf.timeout_at),
            dispatched_at=None,
            **CLEARED_WAIT,
        )
        return self._stopped(conn, wf.workflow_id, True, now)  # hook (children)

    def shift_deadlines(self, seconds: float) -> int:
        w = self.t.workflows
        unfinished = w.c.status.in_(UNFINISHED_STATUSES)
        timed = sa.or_(w.c.deadline.is_not(None), w.c.timeout_at.is_not(None), w.c.timer_due.is_not(None))
        with self._tx() as conn:
            result = conn.execute(
                sa.update(w)
                .where(unfinished, timed)
                .values(deadline=w.c.deadline - seconds, timeout_at=w.c.timeout_at - seconds, timer_due=None)
            )
        return int(result.rowcount)

    def waiting_count(self) -> int:
        w = self.t.workflows
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(w).where(w.c.status == WorkflowStatus.WAITING.value)
                ).scalar_one()
            )
