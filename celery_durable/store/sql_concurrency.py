"""Concurrency limits in the SQL store: admission, slots, and their release at every end.

A mixin of :class:`~celery_durable.store.sql.SQLStore`.

**The invariant.** A row of ``flow_slots`` (key, workflow) exists exactly while that workflow is
admitted under that key and unfinished; at most ``flow_limit`` rows exist per key; the ENQUEUED
workflows of a key are admitted in order (priority, then start order, then id). It holds because:

* every change of a key's slots runs under the key's lock (PostgreSQL: a transaction-scoped advisory
  lock; SQLite: writers are serialised by ``BEGIN IMMEDIATE``), in the transaction that changes the
  workflow's status: admission inserts the slot and makes the workflow PENDING (or keeps it RUNNING);
  every transition of an admitted workflow to a finished status (``finish``, ``cancel``, a cancel's
  cascade, a timeout by the engine or by the sweep) deletes its slot and admits the head of the
  key's queue in that same transaction;
* a count of a key's slots is read under that lock, after every transaction that changed them
  committed, so it never counts short (no double grant);
* the sweep admits the head of every key that has free slots and ENQUEUED workflows, in case a
  wake-up was lost (a publish that failed after its commit).

Lock order, the same on every path, so none deadlocks another: the workflow's own row, then the key,
then the ENQUEUED rows admission takes (with ``SKIP LOCKED``: a row being cancelled is skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..errors import ConcurrencyLimitExceeded, WorkflowCancelled
from .records import Dispatch, FlowLimit, WorkflowRecord, WorkflowStatus
from .schema import CLEARED_WAIT
from .sql_lease import SQLLease

if TYPE_CHECKING:
    from .base import Lease
    from .schema import Tables

ADMITTED, ENQUEUED, REFUSED = "admitted", "enqueued", "refused"
_ENQUEUED = WorkflowStatus.ENQUEUED.value
#: Most ENQUEUED workflows one admission takes (a key's limit above that fills up over several).
_BATCH = 500


class SQLConcurrency:
    """Queries for concurrency limits (see the module docstring for the invariant)."""

    if TYPE_CHECKING:  # provided by SQLStore
        t: Tables
        engine: sa.Engine

        def _tx(self, lease: Lease | None = None) -> AbstractContextManager[sa.Connection]: ...
        def _insert(self, table: sa.Table) -> Any: ...
        def _lock_channel(self, conn: sa.Connection, kind: str, workflow_id: str) -> None: ...
        def _select_workflow(
            self, conn: sa.Connection, workflow_id: str, for_update: bool = False
        ) -> WorkflowRecord | None: ...
        def _stopped(self, conn: sa.Connection, workflow_id: str, failed: bool, now: float) -> list[Dispatch]: ...
        def _select_deduplicated(self, conn: sa.Connection, name: str, dedup_key: str) -> WorkflowRecord | None: ...
        def leave_to_sweep(self, dispatch: Dispatch) -> None: ...

        _workflow: Callable[[Any], WorkflowRecord]

    # -- the key's lock and its queue ------------------------------------------------------------------
    def _lock_key(self, conn: sa.Connection, key: str) -> None:
        self._lock_channel(conn, "c", key)

    def _held_query(self, key: str) -> Any:
        f = self.t.flow_slots
        return sa.select(sa.func.count()).select_from(f).where(f.c.flow_key == key).scalar_subquery()

    def _held(self, conn: sa.Connection, key: str) -> int:
        return int(conn.execute(sa.select(self._held_query(key))).scalar_one())

    def _take_slot(self, conn: sa.Connection, key: str, workflow_id: str, now: float) -> None:
        conn.execute(self.t.flow_slots.insert().values(flow_key=key, workflow_id=workflow_id, admitted_at=now))

    def _admit(self, conn: sa.Connection, key: str, now: float) -> list[Dispatch]:
        """Admit the head of *key*'s queue into its free slots (the caller holds the key's lock); return their messages."""
        w = self.t.workflows
        head = (
            sa.select(w.c.workflow_id, w.c.flow_limit, self._held_query(key).label("held"))
            .where(w.c.flow_key == key, w.c.status == _ENQUEUED)
            .order_by(w.c.priority, w.c.created_at, w.c.workflow_id)
            .limit(_BATCH)
        )
        if conn.dialect.name == "postgresql":
            head = head.with_for_update(of=w, skip_locked=True)  # one being cancelled right now: skip it
        rows = conn.execute(head).all()
        if not rows:
            return []
        free = rows[0].flow_limit - rows[0].held
        chosen = [r.workflow_id for r in rows[: max(0, free)]]
        if not chosen:
            return []
        admitted = conn.execute(
            w.update()
            .where(w.c.workflow_id.in_(chosen), w.c.status == _ENQUEUED)
            .values(status=WorkflowStatus.PENDING.value, ticket=w.c.ticket + 1, dispatched_at=now, updated_at=now)
            .returning(w.c.workflow_id, w.c.name, w.c.queue, w.c.ticket)
        ).all()
        if admitted:
            conn.execute(
                self.t.flow_slots.insert(),
                [{"flow_key": key, "workflow_id": r.workflow_id, "admitted_at": now} for r in admitted],
            )
        return [Dispatch(r.workflow_id, r.name, r.queue, r.ticket) for r in admitted]

    def _release_slot(self, conn: sa.Connection, workflow_id: str, key: str, now: float) -> list[Dispatch]:
        """*workflow_id* finished in this transaction (its row already updated): free its slot, admit the next."""
        f = self.t.flow_slots
        self._lock_key(conn, key)
        freed = conn.execute(
            f.delete().where(f.c.flow_key == key, f.c.workflow_id == workflow_id).returning(f.c.workflow_id)
        ).first()
        return self._admit(conn, key, now) if freed is not None else []

    def _release_slots(self, conn: sa.Connection, ended: Sequence[tuple[str, str | None]], now: float) -> list[Dispatch]:
        """:meth:`_release_slot` for each ``(workflow_id, flow_key)`` that has a key."""
        wakeups: list[Dispatch] = []
        for workflow_id, key in sorted((wid, key) for wid, key in ended if key is not None):
            wakeups += self._release_slot(conn, workflow_id, key, now)
        return wakeups

    def _make_room(self, conn: sa.Connection, flow: FlowLimit, now: float) -> list[Dispatch]:
        """cancel_in_progress: cancel the oldest admitted workflows of the key until one slot is free.

        Holders whose rows are locked (finishing right now) are skipped: they free their slot anyway.
        Returns the wake-ups of their parents (a join waiting on them).
        """
        w, f = self.t.workflows, self.t.flow_slots
        excess = self._held(conn, flow.key) - flow.limit + 1
        if excess <= 0:
            return []
        query = (
            sa.select(w.c.workflow_id)
            .join(f, sa.and_(f.c.workflow_id == w.c.workflow_id, f.c.flow_key == flow.key))
            .where(w.c.status.in_(("PENDING", "RUNNING", "WAITING")))
            .order_by(f.c.admitted_at, w.c.created_at, w.c.workflow_id)
            .limit(excess)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(of=w, skip_locked=True)
        wakeups: list[Dispatch] = []
        for workflow_id in conn.execute(query).scalars().all():
            conn.execute(
                w.update()
                .where(w.c.workflow_id == workflow_id)
                .values(status=WorkflowStatus.CANCELLED.value, ticket=w.c.ticket + 1, updated_at=now, **CLEARED_WAIT)
            )
            conn.execute(f.delete().where(f.c.flow_key == flow.key, f.c.workflow_id == workflow_id))
            wakeups += self._stopped(conn, workflow_id, True, now)  # its children, its parent
        return wakeups

    def _decide(self, conn: sa.Connection, flow: FlowLimit, now: float) -> tuple[str, list[Dispatch]]:
        """Under the key's lock: whether a new arrival of *flow*'s key is admitted now, queued, or refused.

        Admitted only when a slot is free and nobody waits ahead of it (FIFO); with cancel_in_progress
        the oldest holders are cancelled to make room. Returns the verdict and wake-ups to publish.
        """
        w = self.t.workflows
        waiting = sa.exists().where(w.c.flow_key == flow.key, w.c.status == _ENQUEUED)
        held, queued = conn.execute(sa.select(self._held_query(flow.key), waiting)).one()  # one round trip
        if not queued and held < flow.limit:
            return ADMITTED, []
        if flow.strategy == "cancel_newest":
            return REFUSED, []
        if flow.strategy == "cancel_in_progress" and not queued:
            wakeups = self._make_room(conn, flow, now)
            if self._held(conn, flow.key) < flow.limit:
                return ADMITTED, wakeups
            return ENQUEUED, wakeups
        return ENQUEUED, []

    # -- the store's operations ----------------------------------------------------------------------
    def _create_limited(self, values: dict[str, Any], flow: FlowLimit, now: float) -> tuple[WorkflowRecord, bool]:
        """``create_workflow`` with a limit: insert and decide admission in one transaction (see base.py)."""
        w = self.t.workflows
        with self._tx() as conn:
            if flow.strategy == "cancel_in_progress":  # never cancel anything for a start that exists already
                existing = self._select_workflow(conn, values["workflow_id"])
                if existing is not None:
                    return existing, False
            self._lock_key(conn, flow.key)
            if values.get("dedup_key") is not None:  # hook (dedup): an unfinished holder of the key is returned
                existing = self._select_workflow(conn, values["workflow_id"]) or self._select_deduplicated(
                    conn, values["name"], values["dedup_key"]
                )
                if existing is not None:
                    return existing, False
            verdict, wakeups = self._decide(conn, flow, now)
            if verdict == REFUSED:
                existing = self._select_workflow(conn, values["workflow_id"])
                if existing is not None:  # a repeated start of one that exists: the id is an idempotency key
                    return existing, False
                raise ConcurrencyLimitExceeded(
                    f"workflow {values['name']!r} has {flow.limit} of {flow.limit} running for concurrency key "
                    f"{flow.key!r} (limit_strategy='cancel_newest'): {values['workflow_id']!r} was not started"
                )
            status = WorkflowStatus.PENDING.value if verdict == ADMITTED else _ENQUEUED
            row = conn.execute(
                self._insert(w)
                .values(
                    **values,
                    status=status,
                    ticket=0,
                    executions=0,
                    created_at=now,
                    updated_at=now,
                    dispatched_at=now if verdict == ADMITTED else None,
                    flow_key=flow.key,
                    flow_limit=flow.limit,
                    priority=flow.priority,
                )
                .on_conflict_do_nothing(index_elements=[w.c.workflow_id])
                .returning(*w.c)
            ).first()
            if row is None:  # created by a concurrent start between our read and our insert
                found = self._select_workflow(conn, values["workflow_id"])
                assert found is not None
                return found, False
            if verdict == ADMITTED:
                self._take_slot(conn, flow.key, values["workflow_id"], now)
            record = self._workflow(row)
        for dispatch in wakeups:
            self.leave_to_sweep(dispatch)
        return record, True

    def admit_started(self, lease: Lease, flow: FlowLimit, now: float) -> str:
        w = self.t.workflows
        assert isinstance(lease, SQLLease)
        wid = lease.workflow_id
        with self._tx(lease) as conn:
            wf = self._select_workflow(conn, wid, for_update=True)  # its own row first (lock order)
            if wf is None or wf.status != WorkflowStatus.RUNNING:
                raise WorkflowCancelled(f"workflow {wid!r} was cancelled")
            if wf.flow_key is not None:
                lease.flow_key = wf.flow_key
                return ADMITTED
            self._lock_key(conn, flow.key)
            verdict, wakeups = self._decide(conn, flow, now)
            if verdict == REFUSED:
                return REFUSED
            keyed = {"flow_key": flow.key, "flow_limit": flow.limit, "priority": flow.priority, "updated_at": now}
            if verdict == ADMITTED:
                conn.execute(w.update().where(w.c.workflow_id == wid).values(**keyed))
                self._take_slot(conn, flow.key, wid, now)
            else:  # leaves the worker: no message is live (the ticket moves on), admission sends one
                conn.execute(
                    w.update()
                    .where(w.c.workflow_id == wid)
                    .values(status=_ENQUEUED, ticket=w.c.ticket + 1, dispatched_at=None, **keyed, **CLEARED_WAIT)
                )
        lease.flow_key = flow.key if verdict == ADMITTED else None
        for dispatch in wakeups:
            self.leave_to_sweep(dispatch)
        return verdict

    def admit_enqueued(self, now: float) -> list[Dispatch]:
        w = self.t.workflows
        with self.engine.connect() as conn:
            keys = conn.execute(sa.select(w.c.flow_key).where(w.c.status == _ENQUEUED).distinct()).scalars().all()
        dispatches: list[Dispatch] = []
        for key in keys:
            with self._tx() as conn:
                self._lock_key(conn, key)
                dispatches += self._admit(conn, key, now)
        return dispatches

    def flow_slots(self, key: str) -> list[str]:
        f = self.t.flow_slots
        with self.engine.connect() as conn:
            return list(
                conn.execute(sa.select(f.c.workflow_id).where(f.c.flow_key == key).order_by(f.c.workflow_id)).scalars()
            )
