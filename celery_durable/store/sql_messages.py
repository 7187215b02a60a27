"""Messages and events of the SQL store: ``send``, ``set_event``, ``get_event`` (see ``Store`` in ``base.py``).

A mixin of :class:`~celery_durable.store.sql.SQLStore`. A send and a wait for the same workflow take
the same channel lock (``_lock_channel``), then the workflow's row: either the wait sees the message
or the send sees the wait and wakes it (the no-lost-wake-up invariant of ``base.py``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..errors import DurableError, WorkflowNotFound
from .records import Dispatch, SendResult, StepRecord, WorkflowRecord, WorkflowStatus
from .sql_lease import SQLLease

if TYPE_CHECKING:
    from .base import Lease
    from .schema import Tables


def no_such_destination(destination: str) -> WorkflowNotFound:
    """The error for a send to a workflow id that does not exist (and no mailbox was asked for)."""
    return WorkflowNotFound(
        f"cannot send to workflow {destination!r}: no such workflow "
        "(pass create_mailbox=True to keep messages for a workflow that starts later)"
    )


class SQLMessages:
    """Storing messages and events, and waking the workflows that wait for them."""

    if TYPE_CHECKING:  # provided by SQLStore
        t: Tables
        engine: sa.Engine

        def _tx(self, lease: Lease | None = None) -> AbstractContextManager[sa.Connection]: ...
        def _insert(self, table: sa.Table) -> Any: ...
        def _insert_step(self, conn: sa.Connection, step: StepRecord) -> bool: ...
        def _lock_channel(self, conn: sa.Connection, kind: str, workflow_id: str) -> None: ...
        def _raise_if_cancelled(self, conn: sa.Connection, workflow_id: str) -> None: ...
        def _bump(self, conn: sa.Connection, wf: WorkflowRecord, now: float, **values: Any) -> int | None: ...
        def _select_workflow(
            self, conn: sa.Connection, workflow_id: str, for_update: bool = False
        ) -> WorkflowRecord | None: ...
        @staticmethod
        def _workflow(row: Any) -> WorkflowRecord: ...

    def send(
        self,
        destination: str,
        topic: str,
        payload: str,
        now: float,
        *,
        idempotency_key: str | None = None,
        create_mailbox: bool = False,
        lease: Lease | None = None,
        checkpoint: StepRecord | None = None,
    ) -> SendResult:
        m = self.t.messages
        with self._tx(lease) as conn:
            self._lock_channel(conn, "m", destination)
            wf = self._select_workflow(conn, destination, for_update=True)
            if wf is None and not create_mailbox:
                raise no_such_destination(destination)
            values = {
                "destination": destination,
                "topic": topic,
                "payload": payload,
                "idempotency_key": idempotency_key,
                "created_at": now,
            }
            stmt = self._insert(m).values(**values).returning(m.c.seq)
            if idempotency_key is not None:
                stmt = stmt.on_conflict_do_nothing(index_elements=[m.c.destination, m.c.idempotency_key])
            seq = conn.execute(stmt).scalar()
            if seq is None:
                first = conn.execute(
                    sa.select(m.c.seq).where(m.c.destination == destination, m.c.idempotency_key == idempotency_key)
                ).scalar_one()
                return SendResult(int(first), False)
            if checkpoint is not None and not self._insert_step(conn, checkpoint):
                self._raise_if_cancelled(conn, checkpoint.workflow_id)
                raise DurableError(f"step {checkpoint.step_id} of {checkpoint.workflow_id!r} was already recorded")
            if checkpoint is not None and isinstance(lease, SQLLease):
                lease.remember(checkpoint)
            wakeups: tuple[Dispatch, ...] = ()
            if (
                wf is not None
                and wf.status == WorkflowStatus.WAITING
                and wf.wait_kind == "recv"
                and topic in (wf.wait_topics or ())
            ):
                ticket = self._bump(
                    conn, wf, now, status=WorkflowStatus.PENDING.value, timer_due=None, dispatched_at=now
                )
                if ticket is not None:
                    wakeups = (Dispatch(destination, wf.name, wf.queue, ticket),)
            return SendResult(int(seq), True, wakeups)

    def set_event(self, lease: Lease, key: str, value: str, checkpoint: StepRecord) -> list[Dispatch]:
        e, w = self.t.events, self.t.workflows
        wid = lease.workflow_id
        now = checkpoint.ended_at
        with self._tx(lease) as conn:
            self._lock_channel(conn, "e", wid)
            if not self._insert_step(conn, checkpoint):
                self._raise_if_cancelled(conn, wid)
                raise DurableError(f"step {checkpoint.step_id} of {wid!r} was already recorded")
            assert isinstance(lease, SQLLease)
            lease.remember(checkpoint)
            upsert = self._insert(e).values(workflow_id=wid, key=key, value=value, updated_at=now)
            conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=[e.c.workflow_id, e.c.key], set_={"value": value, "updated_at": now}
                )
            )
            waiters = conn.execute(
                sa.select(w)
                .where(
                    w.c.wait_target == wid,
                    w.c.wait_kind == "event",
                    w.c.status == WorkflowStatus.WAITING.value,
                )
                .with_for_update()
            )
            wakeups = []
            for row in waiters.all():
                waiter = self._workflow(row)
                if key in (waiter.wait_topics or ()):
                    ticket = self._bump(
                        conn, waiter, now, status=WorkflowStatus.PENDING.value, timer_due=None, dispatched_at=now
                    )
                    if ticket is not None:
                        wakeups.append(Dispatch(waiter.workflow_id, waiter.name, waiter.queue, ticket))
            return wakeups

    def get_event(self, workflow_id: str, key: str) -> str | None:
        e = self.t.events
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(e.c.value).where(e.c.workflow_id == workflow_id, e.c.key == key)).scalar()
            return str(value) if value is not None else None
