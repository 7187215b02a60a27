"""The operators' queries of the SQL store: listings, resume, fork, prune (see ``Store`` in ``base.py``).

A mixin of :class:`~celery_durable.store.sql.SQLStore`, kept apart from the queries every
execution runs so each module stays readable. Nothing here runs inside an execution, except
``continue_as_new`` (which rewrites a history as resume and fork do).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..errors import DuplicateWorkflow
from .records import Dispatch, MessageRecord, StepRecord, WorkflowRecord, WorkflowStatus
from .schema import CLEARED_WAIT
from .sql_lease import SQLLease

if TYPE_CHECKING:
    from .base import Lease
    from .schema import Tables

_TERMINAL = (WorkflowStatus.SUCCESS.value, WorkflowStatus.ERROR.value, WorkflowStatus.CANCELLED.value)
_RESUMABLE = (WorkflowStatus.ERROR.value, WorkflowStatus.CANCELLED.value)


class SQLOperations:
    """Operations on workflows from outside their executions, in SQLAlchemy Core."""

    if TYPE_CHECKING:  # provided by SQLStore
        t: Tables
        engine: sa.Engine

        def _tx(self, lease: Lease | None = None) -> AbstractContextManager[sa.Connection]: ...
        def _lock_channel(self, conn: sa.Connection, kind: str, workflow_id: str) -> None: ...
        def _insert(self, table: sa.Table) -> Any: ...
        def _select_workflow(
            self, conn: sa.Connection, workflow_id: str, for_update: bool = False
        ) -> WorkflowRecord | None: ...
        @staticmethod
        def _workflow(row: Any) -> WorkflowRecord: ...
        @staticmethod
        def _step(row: Any) -> StepRecord: ...
        def _running_row(self, conn: sa.Connection, workflow_id: str) -> WorkflowRecord: ...
        def _select_deduplicated(self, conn: sa.Connection, name: str, dedup_key: str) -> WorkflowRecord | None: ...

    def list_workflows(
        self,
        status: WorkflowStatus | Sequence[WorkflowStatus] | None = None,
        name: str | None = None,
        *,
        created_after: float | None = None,
        created_before: float | None = None,
        id_prefix: str | None = None,
        parent_id: str | None = None,
        version: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[WorkflowRecord]:
        w = self.t.workflows
        query = sa.select(w).order_by(w.c.created_at.desc(), w.c.workflow_id.desc()).limit(limit).offset(offset)
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            query = query.where(w.c.status.in_([WorkflowStatus(s).value for s in wanted]))
        if name is not None:
            query = query.where(w.c.name == name)
        if created_after is not None:
            query = query.where(w.c.created_at >= created_after)
        if created_before is not None:
            query = query.where(w.c.created_at < created_before)
        if id_prefix:
            query = query.where(w.c.workflow_id.startswith(id_prefix, autoescape=True))
        if parent_id is not None:
            query = query.where(w.c.parent_id == parent_id)
        if version is not None:
            query = query.where(w.c.version == version)
        with self.engine.connect() as conn:
            return [self._workflow(r) for r in conn.execute(query)]

    def list_messages(self, workflow_id: str) -> list[MessageRecord]:
        m = self.t.messages
        query = sa.select(m).where(m.c.destination == workflow_id).order_by(m.c.seq)
        with self.engine.connect() as conn:
            return [
                MessageRecord(
                    workflow_id=r.destination,
                    seq=int(r.seq),
                    topic=r.topic or None,
                    payload=r.payload,
                    sent_at=r.created_at,
                    consumed_at=r.consumed_at,
                    idempotency_key=r.idempotency_key,
                )
                for r in conn.execute(query)
            ]

    def get_events(self, workflow_id: str) -> dict[str, str]:
        e = self.t.events
        query = sa.select(e.c.key, e.c.value).where(e.c.workflow_id == workflow_id).order_by(e.c.key)
        with self.engine.connect() as conn:
            return {r.key: r.value for r in conn.execute(query)}

    def continue_as_new(self, lease: Lease, inputs: str, now: float) -> WorkflowRecord:
        w, s, m = self.t.workflows, self.t.steps, self.t.messages
        wid = lease.workflow_id
        with self._tx(lease) as conn:
            # The channel lock and the row lock, as a wait takes them: a send meanwhile either
            # committed its message before (unconsumed: the new run receives it) or waits for us.
            self._lock_channel(conn, "m", wid)
            self._running_row(conn, wid)
            conn.execute(sa.delete(s).where(s.c.workflow_id == wid))
            # Consumed messages are history too, except those with an idempotency key: it must keep
            # refusing a repeated send of a message the old run already received.
            conn.execute(
                sa.delete(m).where(m.c.destination == wid, m.c.consumed_at.is_not(None), m.c.idempotency_key.is_(None))
            )
            row = conn.execute(
                w.update()
                .where(w.c.workflow_id == wid)
                # The execution count is kept: it only ever grows, which the per-process checkpoint caches
                # rely on (step_cache.py); a reset let a stale cached history of the old run pass for the new one.
                .values(inputs=inputs, attempt_step=None, attempts=None, updated_at=now, **CLEARED_WAIT)
                .returning(*w.c)
            ).one()
        record = self._workflow(row)
        if isinstance(lease, SQLLease):  # the new run's history starts empty (step_cache.py)
            lease.record, lease.history, lease.waited = record, {}, None
        return record

    def resume(
        self, workflow_id: str, ticket: int, drop_from: int | None, now: float
    ) -> tuple[WorkflowRecord | None, Dispatch | None]:
        try:
            return self._resume(workflow_id, ticket, drop_from, now)
        except sa.exc.IntegrityError:
            # Only the dedup index can refuse it: a workflow with its key started between our check and our update.
            wf = self._select_workflow_now(workflow_id)
            holder = self._deduplicated_now(wf)
            raise _duplicate(wf, holder) from None

    def _select_workflow_now(self, workflow_id: str) -> WorkflowRecord | None:
        with self._tx() as conn:
            return self._select_workflow(conn, workflow_id)

    def _deduplicated_now(self, wf: WorkflowRecord | None) -> WorkflowRecord | None:
        if wf is None or wf.dedup_key is None:
            return None
        with self._tx() as conn:
            return self._select_deduplicated(conn, wf.name, wf.dedup_key)

    def _resume(
        self, workflow_id: str, ticket: int, drop_from: int | None, now: float
    ) -> tuple[WorkflowRecord | None, Dispatch | None]:
        w, s, m = self.t.workflows, self.t.steps, self.t.messages
        with self._tx() as conn:
            # The channel lock and the row lock, as cancel() takes them: a concurrent send sees
            # either the finished workflow or the resumed one, never half of the change.
            self._lock_channel(conn, "m", workflow_id)
            wf = self._select_workflow(conn, workflow_id, for_update=True)
            if wf is None or wf.status.value not in _RESUMABLE or wf.ticket != ticket:
                return wf, None
            if wf.dedup_key is not None:  # it becomes unfinished again: its key must be free
                holder = self._select_deduplicated(conn, wf.name, wf.dedup_key)
                if holder is not None:
                    raise _duplicate(wf, holder)
            values: dict[str, Any] = {}
            if drop_from is not None:
                dropped = conn.execute(
                    sa.delete(s).where(s.c.workflow_id == workflow_id, s.c.step_id >= drop_from).returning(s)
                ).all()
                for row in dropped:
                    if row.kind == "recv" and row.output is not None:
                        # A recv consumed its message and wrote its checkpoint with the same `now`:
                        # that pins the message down, so the re-run receives it again.
                        conn.execute(
                            m.update()
                            .where(
                                m.c.destination == workflow_id,
                                m.c.topic == (row.topic or ""),
                                m.c.consumed_at == row.ended_at,
                            )
                            .values(consumed_at=None)
                        )
                if wf.attempt_step is not None and wf.attempt_step >= drop_from:
                    values.update(attempt_step=None, attempts=None)
            if wf.timeout_at is not None and wf.timeout_at <= now:
                values["timeout_at"] = None
            row = conn.execute(
                w.update()
                .where(w.c.workflow_id == workflow_id)
                .values(
                    status=WorkflowStatus.PENDING.value,
                    ticket=wf.ticket + 1,
                    output=None,
                    error=None,
                    dispatched_at=now,
                    updated_at=now,
                    flow_key=None,  # concurrency: its first execution is admitted again (admit_started)
                    **CLEARED_WAIT,
                    **values,
                )
                .returning(*w.c)
            ).one()
            record = self._workflow(row)
            return record, Dispatch(workflow_id, record.name, record.queue, record.ticket)

    def fork(
        self, source_id: str, new_id: str, start_step: int, now: float, *, version: str | None = None
    ) -> tuple[WorkflowRecord | None, bool]:
        w, s, e = self.t.workflows, self.t.steps, self.t.events
        with self._tx() as conn:
            source = self._select_workflow(conn, source_id)
            if source is None:
                return None, False
            row = conn.execute(
                self._insert(w)
                .values(
                    workflow_id=new_id,
                    name=source.name,
                    status=WorkflowStatus.PENDING.value,
                    inputs=source.inputs,
                    queue=source.queue,
                    ticket=0,
                    # Executions skip reading checkpoints when the count they start is 1 (nothing can
                    # exist before the first one); a fork has copied checkpoints, so it starts at 1.
                    executions=1,
                    created_at=now,
                    updated_at=now,
                    dispatched_at=now,
                    version=version,
                    forked_from=source_id,
                    forked_from_step=start_step,
                )
                .on_conflict_do_nothing(index_elements=[w.c.workflow_id])
                .returning(*w.c)
            ).first()
            if row is None:
                return self._select_workflow(conn, new_id), False
            copied = [c.name for c in s.c if c.name != "workflow_id"]
            conn.execute(
                s.insert().from_select(
                    ["workflow_id", *copied],
                    sa.select(sa.literal(new_id, s.c.workflow_id.type), *[s.c[c] for c in copied]).where(
                        s.c.workflow_id == source_id, s.c.step_id < start_step
                    ),
                )
            )
            events = self._events_set_by(conn, source_id, start_step)
            if events:
                rows = [{"workflow_id": new_id, "key": k, "value": v, "updated_at": now} for k, v in events.items()]
                conn.execute(e.insert(), rows)
            return self._workflow(row), True

    def _events_set_by(self, conn: sa.Connection, workflow_id: str, before_step: int) -> dict[str, str]:
        """Each event key's last value set by a ``set_event`` checkpoint before *before_step*.

        A ``set_event`` checkpoint holds the key in ``topic`` and the value in ``output``.
        """
        s = self.t.steps
        rows = conn.execute(
            sa.select(s.c.topic, s.c.output)
            .where(
                s.c.workflow_id == workflow_id,
                s.c.kind == "set_event",
                s.c.step_id < before_step,
                s.c.topic.is_not(None),
                s.c.output.is_not(None),
            )
            .order_by(s.c.step_id)
        )
        return {r.topic: r.output for r in rows}

    def prune(self, before: float, batch: int = 500) -> int:
        w, s, m, e = self.t.workflows, self.t.steps, self.t.messages, self.t.events
        finished = sa.and_(w.c.status.in_(_TERMINAL), w.c.updated_at < before)
        # SKIP LOCKED: a row someone holds (say a send to a finished workflow) waits for the next prune.
        candidates = sa.select(w.c.workflow_id).where(finished).limit(batch).with_for_update(skip_locked=True)
        # The DELETE checks the condition again, so a workflow resumed meanwhile is kept.
        delete = (
            w.delete().where(w.c.workflow_id.in_(candidates.scalar_subquery()), finished).returning(w.c.workflow_id)
        )
        total = 0
        while True:
            with self._tx() as conn:  # one short transaction per batch
                ids = list(conn.execute(delete).scalars())
                if ids:
                    conn.execute(s.delete().where(s.c.workflow_id.in_(ids)))
                    conn.execute(m.delete().where(m.c.destination.in_(ids)))
                    conn.execute(e.delete().where(e.c.workflow_id.in_(ids)))
            total += len(ids)
            if len(ids) < batch:
                return total

    def leave_to_sweep(self, dispatch: Dispatch) -> None:
        w = self.t.workflows
        current = sa.and_(w.c.workflow_id == dispatch.workflow_id, w.c.ticket == dispatch.ticket)
        with self._tx() as conn:
            conn.execute(
                w.update().where(current, w.c.status == WorkflowStatus.PENDING.value).values(dispatched_at=None)
            )
            conn.execute(w.update().where(current, w.c.status == WorkflowStatus.WAITING.value).values(timer_due=None))


def _duplicate(wf: WorkflowRecord | None, holder: WorkflowRecord | None) -> DuplicateWorkflow:
    """The error of a resume refused because another unfinished workflow holds the resumed one's dedup key."""
    if wf is None:
        return DuplicateWorkflow("cannot resume the workflow: another unfinished workflow holds its dedup_key")
    other = f"{holder.workflow_id!r} ({holder.status.value})" if holder is not None else "another one"
    return DuplicateWorkflow(
        f"cannot resume workflow {wf.workflow_id!r}: workflow {other} of {wf.name!r} holds its "
        f"dedup_key {wf.dedup_key!r}; cancel it or wait for it to finish"
    )
