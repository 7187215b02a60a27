"""The store in SQLAlchemy Core, shared by PostgreSQL and SQLite.

Backends override only engine set-up, the execution lock, the channel lock and the
``INSERT ... ON CONFLICT`` construct (see ``postgres.py`` and ``sqlite.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from ..errors import DurableError, WorkflowCancelled
from ..timeouts import earliest
from .base import Lease, Store
from .records import (
    Dispatch,
    Execution,
    FlowLimit,
    StepRecord,
    Suspended,
    WaitRequest,
    WorkflowRecord,
    WorkflowStatus,
)
from .schema import ACTIVE_STATUSES, CLEARED_WAIT, FINISHED_STATUSES, LATEST_VERSION, MIGRATIONS, build_tables
from .sql_children import SQLChildren
from .sql_concurrency import SQLConcurrency
from .sql_debounce import SQLDebounce
from .sql_lease import SQLLease
from .sql_messages import SQLMessages
from .sql_ops import SQLOperations
from .sql_rate import SQLRateLimits
from .sql_recovery import SQLRecovery
from .sql_schedules import SQLSchedules
from .step_cache import StepCache

#: The fields of a WorkflowRecord, each read from the workflows column of its name.
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(WorkflowRecord))

class SQLStore(
    SQLOperations, SQLRecovery, SQLChildren, SQLConcurrency, SQLMessages, SQLRateLimits, SQLSchedules, SQLDebounce, Store
):
    """Every query of the store (the operators' ones in ``sql_ops.py``); subclasses provide the engine and the locks."""

    #: Whether lone statements outside executions may run on autocommit connections.
    autocommit_reads = False

    def __init__(self, engine: sa.Engine, prefix: str = "durable_") -> None:
        self.engine = engine
        self.prefix = prefix
        self.t = build_tables(prefix)
        self.step_cache = StepCache()
        self._hot_statements()

    # -- backend hooks -------------------------------------------------------------------------
    def _insert(self, table: sa.Table) -> Any:
        """Return the dialect's INSERT construct (it must support ``on_conflict_do_nothing``)."""
        raise NotImplementedError

    def _lock_channel(self, conn: sa.Connection, kind: str, workflow_id: str) -> None:
        """Serialise, until commit, every transaction that reads or writes *kind* data of *workflow_id*."""

    def _lock_migrations(self, conn: sa.Connection) -> None:
        """Serialise concurrent migrators until commit."""

    # -- schema ---------------------------------------------------------------------------------
    def migrate(self) -> int:
        version = self.t.version
        with self.engine.begin() as conn:
            self._lock_migrations(conn)
            version.create(conn, checkfirst=True)
            current = conn.execute(sa.select(version.c.version)).scalar()
            if current is None:
                conn.execute(version.insert().values(version=0))
                current = 0
            if current > LATEST_VERSION:
                raise DurableError(
                    f"the database schema is at version {current}, newer than this celery_durable "
                    f"(version {LATEST_VERSION}); upgrade the package"
                )
            for number in range(current, LATEST_VERSION):
                MIGRATIONS[number](conn, self.t)
            conn.execute(version.update().values(version=LATEST_VERSION))
        return LATEST_VERSION

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(self.t.version.name):
                return 0
            return int(conn.execute(sa.select(self.t.version.c.version)).scalar() or 0)

    # -- helpers --------------------------------------------------------------------------------
    @contextmanager
    def _tx(self, lease: Lease | None = None) -> Iterator[sa.Connection]:
        """A transaction: on the lease's connection when given, else on a pooled one."""
        if lease is None:
            with self.engine.begin() as conn:
                yield conn
            return
        assert isinstance(lease, SQLLease)
        conn = lease.conn
        if not lease.autocommit:
            with conn.begin():
                yield conn
            return
        conn.exec_driver_sql("BEGIN")
        try:
            yield conn
        except BaseException:
            conn.exec_driver_sql("ROLLBACK")
            conn.commit()
            raise
        conn.exec_driver_sql("COMMIT")
        conn.commit()  # ends SQLAlchemy's bookkeeping only: the driver is idle, nothing is sent

    @contextmanager
    def _connect(self) -> Iterator[sa.Connection]:
        """A pooled connection for one atomic statement plus reads (autocommit where the backend has it)."""
        conn = self.engine.connect()
        if self.autocommit_reads:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            yield conn
            conn.commit()
        finally:
            conn.close()

    @contextmanager
    def _single(self, lease: Lease) -> Iterator[sa.Connection]:
        """For work that is one write (atomic by itself) plus reads: no BEGIN/COMMIT round trips
        on an autocommit lease. Safe because the lease holder is the only writer of its steps."""
        assert isinstance(lease, SQLLease)
        if not lease.autocommit:
            with self._tx(lease) as conn:
                yield conn
            return
        try:
            yield lease.conn
        finally:
            lease.conn.commit()

    @staticmethod
    def _workflow(row: Any) -> WorkflowRecord:
        # Every field of the record is a column of the same name; two are decoded.
        m = row._mapping
        values = {name: m[name] for name in _RECORD_FIELDS}
        values["status"] = WorkflowStatus(values["status"])
        topics = values["wait_topics"]
        values["wait_topics"] = tuple(json.loads(topics)) if topics is not None else None
        return WorkflowRecord(**values)

    @staticmethod
    def _step(row: Any) -> StepRecord:
        m = row._mapping
        return StepRecord(
            workflow_id=m["workflow_id"],
            step_id=m["step_id"],
            name=m["name"],
            kind=m["kind"],
            output=m["output"],
            error=m["error"],
            topic=m["topic"],
            started_at=m["started_at"],
            ended_at=m["ended_at"],
        )

    @staticmethod
    def _step_values(step: StepRecord) -> dict[str, Any]:
        return {
            "workflow_id": step.workflow_id,
            "step_id": step.step_id,
            "name": step.name,
            "kind": step.kind,
            "output": step.output,
            "error": step.error,
            "topic": step.topic,
            "started_at": step.started_at,
            "ended_at": step.ended_at,
        }

    def _select_workflow(
        self, conn: sa.Connection, workflow_id: str, for_update: bool = False
    ) -> WorkflowRecord | None:
        w = self.t.workflows
        query = sa.select(w).where(w.c.workflow_id == workflow_id)
        if for_update:
            query = query.with_for_update()
        row = conn.execute(query).first()
        return self._workflow(row) if row is not None else None

    def _bump(self, conn: sa.Connection, wf: WorkflowRecord, now: float, **values: Any) -> int | None:
        """Give *wf* a new ticket if nobody changed it since it was read; return the ticket or None."""
        w = self.t.workflows
        new_ticket = wf.ticket + 1
        result = conn.execute(
            w.update()
            .where(w.c.workflow_id == wf.workflow_id, w.c.ticket == wf.ticket)
            .values(ticket=new_ticket, updated_at=now, **values)
            .returning(w.c.ticket)
        ).first()
        return new_ticket if result is not None else None

    def _running_row(self, conn: sa.Connection, workflow_id: str) -> WorkflowRecord:
        """Lock the row of the leased workflow (FOR UPDATE) and return it; raise unless it is still RUNNING."""
        wf = self._select_workflow(conn, workflow_id, for_update=True)
        if wf is None or wf.status != WorkflowStatus.RUNNING:
            self._raise_if_cancelled(conn, workflow_id)
        assert wf is not None
        return wf

    def _raise_if_cancelled(self, conn: sa.Connection, workflow_id: str) -> None:
        w = self.t.workflows
        status = conn.execute(sa.select(w.c.status).where(w.c.workflow_id == workflow_id)).scalar()
        if status == WorkflowStatus.CANCELLED.value:
            raise WorkflowCancelled(f"workflow {workflow_id!r} was cancelled")
        if status != WorkflowStatus.RUNNING.value:
            raise DurableError(f"workflow {workflow_id!r} is {status}, not RUNNING: this execution lost its claim")

    # -- workflows ------------------------------------------------------------------------------
    def create_workflow(
        self,
        workflow_id: str,
        name: str,
        inputs: str,
        queue: str | None,
        now: float,
        *,
        version: str | None = None,
        parent_id: str | None = None,
        timeout_at: float | None = None,
        trace_context: str | None = None,
        task_options: str | None = None,
        dedup_key: str | None = None,
        flow: FlowLimit | None = None,
    ) -> tuple[WorkflowRecord, bool]:
        if flow is not None:  # hook (concurrency): admission decided with the insert (sql_concurrency.py)
            values = {
                "workflow_id": workflow_id,
                "name": name,
                "inputs": inputs,
                "queue": queue,
                "version": version,
                "parent_id": parent_id,
                "timeout_at": timeout_at,
                "trace_context": trace_context,
                "task_options": task_options,
                "dedup_key": dedup_key,
            }
            return self._create_limited(values, flow, now)
        params = {
            "p_wid": workflow_id,
            "p_name": name,
            "p_inputs": inputs,
            "p_queue": queue,
            "p_now": now,
            "p_version": version,
            "p_parent_id": parent_id,
            "p_timeout_at": timeout_at,
            "p_trace_context": trace_context,
            "p_task_options": task_options,
            "p_dedup_key": dedup_key,
        }
        # One atomic statement: no transaction needed. A conflict means the row exists (only
        # prune() deletes workflows, and only long-finished ones), so reading it afterwards is safe.
        # With a dedup key the conflict may be on the dedup index instead, and the holder may
        # finish before we read it: then nothing is found and the insert is tried again.
        while True:
            found = self._create_or_find(params)
            if found is not None:
                return found
            # pruned between the two statements: the id is free again

    def _create_or_find(self, params: dict[str, Any]) -> tuple[WorkflowRecord, bool] | None:
        """Insert the workflow *params* describe, or read the existing row; ``None`` if neither (pruned meanwhile)."""
        with self._connect() as conn:
            row = conn.execute(self._q_create, params).first()
            if row is not None:
                return self._workflow(row), True
            existing = self._select_workflow(conn, params["p_wid"])
            if existing is None and params["p_dedup_key"] is not None:
                existing = self._select_deduplicated(conn, params["p_name"], params["p_dedup_key"])
        return (existing, False) if existing is not None else None

    def _select_deduplicated(self, conn: sa.Connection, name: str, dedup_key: str) -> WorkflowRecord | None:
        """The unfinished workflow of *name* holding *dedup_key*, if any (the dedup index holds at most one)."""
        w = self.t.workflows
        row = conn.execute(
            sa.select(w).where(w.c.name == name, w.c.dedup_key == dedup_key, w.c.status.not_in(FINISHED_STATUSES))
        ).first()
        return self._workflow(row) if row is not None else None

    def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        with self._connect() as conn:
            return self._select_workflow(conn, workflow_id)

    def list_steps(self, workflow_id: str) -> list[StepRecord]:
        s = self.t.steps
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(s).where(s.c.workflow_id == workflow_id).order_by(s.c.step_id))
            return [self._step(r) for r in rows]

    def cancel(self, workflow_id: str, now: float) -> WorkflowRecord | None:
        # Children: the cancel cascades (sql_children.py); a parent it wakes is left to the sweep here,
        # callers that publish use cancel_tree.
        record, wakeups = self.cancel_tree(workflow_id, now)
        for dispatch in wakeups:
            self.leave_to_sweep(dispatch)
        return record

    # -- execution ------------------------------------------------------------------------------
    def _hot_statements(self) -> None:
        """Build the statements every workflow runs once, so each call only binds values
        (building Core constructs per call cost more CPU than the round trip itself)."""
        w, s = self.t.workflows, self.t.steps
        wid = sa.bindparam("p_wid", type_=w.c.workflow_id.type)
        now = sa.bindparam("p_now", type_=w.c.created_at.type)
        self._q_create = (
            self._insert(w)
            .values(
                workflow_id=wid,
                name=sa.bindparam("p_name", type_=w.c.name.type),
                status=WorkflowStatus.PENDING.value,
                inputs=sa.bindparam("p_inputs", type_=w.c.inputs.type),
                queue=sa.bindparam("p_queue", type_=w.c.queue.type),
                ticket=0,
                executions=0,
                created_at=now,
                updated_at=now,
                dispatched_at=now,
                version=sa.bindparam("p_version", type_=w.c.version.type),
                parent_id=sa.bindparam("p_parent_id", type_=w.c.parent_id.type),
                timeout_at=sa.bindparam("p_timeout_at", type_=w.c.timeout_at.type),
                trace_context=sa.bindparam("p_trace_context", type_=w.c.trace_context.type),
                task_options=sa.bindparam("p_task_options", type_=w.c.task_options.type),
                dedup_key=sa.bindparam("p_dedup_key", type_=w.c.dedup_key.type),
            )
            # No conflict target: the id's primary key, or the dedup index when a key is given.
            .on_conflict_do_nothing()
            .returning(*w.c)
        )
        self._q_begin = (
            w.update()
            .where(w.c.workflow_id == wid, w.c.ticket == sa.bindparam("p_ticket"), w.c.status.in_(ACTIVE_STATUSES))
            .values(
                status=WorkflowStatus.RUNNING.value,
                executions=w.c.executions + 1,
                timer_due=None,
                dispatched_at=None,
                updated_at=sa.bindparam("p_now", type_=w.c.updated_at.type),
            )
            .returning(*w.c)
        )
        self._q_steps = sa.select(s).where(s.c.workflow_id == wid, s.c.step_id > sa.bindparam("p_after"))
        running = sa.exists().where(w.c.workflow_id == wid, w.c.status == WorkflowStatus.RUNNING.value)
        source = sa.select(*[sa.bindparam(f"p_{c.name}", type_=c.type).label(c.name) for c in s.c]).where(running)
        self._q_insert_step = (
            self._insert(s)
            .from_select([c.name for c in s.c], source)
            .on_conflict_do_nothing(index_elements=[s.c.workflow_id, s.c.step_id])
            .returning(s.c.step_id)  # rowcount is -1 for INSERT ... SELECT with psycopg
        )
        self._q_finish = (
            w.update()
            .where(w.c.workflow_id == wid, w.c.status == WorkflowStatus.RUNNING.value)
            .values(
                status=sa.bindparam("p_status", type_=w.c.status.type),
                output=sa.bindparam("p_output", type_=w.c.output.type),
                error=sa.bindparam("p_error", type_=w.c.error.type),
                updated_at=sa.bindparam("p_now", type_=w.c.updated_at.type),
                **CLEARED_WAIT,
            )
        )

    def begin(self, lease: Lease, ticket: int, now: float) -> Execution | None:
        with self._single(lease) as conn:
            row = conn.execute(self._q_begin, {"p_wid": lease.workflow_id, "p_ticket": ticket, "p_now": now}).first()
            if row is None:
                return None
            record = self._workflow(row)
            assert isinstance(lease, SQLLease)
            lease.parent_id = record.parent_id  # hook (children): finish() wakes a waiting parent
            lease.flow_key = record.flow_key  # hook (concurrency): finish() frees its slot
            lease.record = record
            if record.executions == 1:
                # Only an execution writes checkpoints, and this is the first one: nothing to read.
                lease.history = {}
                return Execution(record, lease.history)
            # Only the checkpoints newer than the history this process cached (see step_cache.py).
            history = self.step_cache.take(record) or {}
            after = max(history) if history else -1
            for r in conn.execute(self._q_steps, {"p_wid": lease.workflow_id, "p_after": after}):
                history[r.step_id] = self._step(r)
            lease.history = history
            return Execution(record, history)

    def _keep_history(self, lease: SQLLease) -> None:
        """At release: cache the history of an execution that recorded a wait, forget it otherwise (step_cache.py)."""
        record = lease.record
        if record is None:
            return
        if lease.waited is not None and not lease.finished and lease.history is not None:
            kind, step_id = lease.waited
            self.step_cache.put(record, record.executions, kind, step_id, lease.history)
        else:
            self.step_cache.drop(lease.workflow_id)

    def _insert_step(self, conn: sa.Connection, step: StepRecord) -> bool:
        """Insert *step* only while its workflow is RUNNING and the step id is free; return whether it did."""
        params = {f"p_{name}": value for name, value in self._step_values(step).items()}
        params["p_wid"] = step.workflow_id
        return conn.execute(self._q_insert_step, params).first() is not None

    def record_step(self, lease: Lease, step: StepRecord) -> StepRecord:
        s = self.t.steps
        assert isinstance(lease, SQLLease)
        with self._single(lease) as conn:
            if self._insert_step(conn, step):
                lease.remember(step)
                return step
            existing = conn.execute(
                sa.select(s).where(s.c.workflow_id == step.workflow_id, s.c.step_id == step.step_id)
            ).first()
            if existing is not None:
                stored = self._step(existing)
                lease.remember(stored)
                return stored
            self._raise_if_cancelled(conn, step.workflow_id)
        raise AssertionError("unreachable")  # pragma: no cover

    def wait_step(self, lease: Lease, request: WaitRequest) -> StepRecord | Suspended:
        w, m, e = self.t.workflows, self.t.messages, self.t.events
        wid = lease.workflow_id
        now = request.now
        with self._tx(lease) as conn:
            if request.kind == "event":
                assert request.target is not None
                self._lock_channel(conn, "e", request.target)
            else:
                self._lock_channel(conn, "m", wid)
            wf = self._running_row(conn, wid)
            if wf.wait_step == request.step_id and (wf.deadline is not None or request.timeout is None):
                deadline = wf.deadline
            else:
                deadline = None if request.timeout is None else now + request.timeout
            step: StepRecord | None = None
            base = functools.partial(StepRecord, wid, request.step_id, request.name, request.kind)
            if request.kind == "recv":
                found = conn.execute(
                    sa.select(m.c.seq, m.c.topic, m.c.payload)
                    .where(m.c.destination == wid, m.c.topic.in_(request.topics), m.c.consumed_at.is_(None))
                    .order_by(m.c.seq)
                    .limit(1)
                ).first()
                if found is not None:
                    conn.execute(m.update().where(m.c.seq == found.seq).values(consumed_at=now))
                    step = base(output=found.payload, topic=found.topic, started_at=now, ended_at=now)
            elif request.kind == "event":
                value = conn.execute(
                    sa.select(e.c.value).where(e.c.workflow_id == request.target, e.c.key == request.topics[0])
                ).scalar()
                if value is not None:
                    step = base(output=value, started_at=now, ended_at=now)
            if step is None and deadline is not None and now >= deadline:
                step = base(output=None, started_at=now, ended_at=now)  # timed out
            if step is not None:
                if not self._insert_step(conn, step):
                    raise DurableError(f"step {request.step_id} of workflow {wid!r} was already recorded")
                conn.execute(w.update().where(w.c.workflow_id == wid).values(updated_at=now, **CLEARED_WAIT))
                assert isinstance(lease, SQLLease)
                lease.remember(step)
                return step
            target = request.target if request.kind == "event" else wid
            suspended = self._suspend(
                conn, wf, request.kind, target, request.topics, request.step_id, deadline, now, request.horizon
            )
        assert isinstance(lease, SQLLease)
        lease.waited = (request.kind, request.step_id)  # committed: see step_cache.py
        return suspended

    def _suspend(
        self,
        conn: sa.Connection,
        wf: WorkflowRecord,
        kind: str,
        target: str | None,
        topics: tuple[str, ...],
        step_id: int,
        deadline: float | None,
        now: float,
        horizon: float,
        **extra: Any,
    ) -> Suspended:
        """Record that *wf* (RUNNING, its row locked by the caller) now waits; return the timer to publish, if any.

        The timer is due at the earlier of the wait's deadline and the workflow's own deadline.
        *extra* are more columns of the wait (a join's ``awaiting``).
        """
        wake = earliest(deadline, wf.timeout_at)
        armed = wake is not None and wake - now <= horizon
        ticket = self._bump(
            conn,
            wf,
            now,
            status=WorkflowStatus.WAITING.value,
            wait_kind=kind,
            wait_target=target,
            wait_topics=json.dumps(list(topics)),
            wait_step=step_id,
            deadline=deadline,
            timer_due=wake if armed else None,
            dispatched_at=None,
            **extra,
        )
        assert ticket is not None  # we hold the execution lock and the row lock
        if not armed:
            return Suspended(None)
        assert wake is not None
        return Suspended(Dispatch(wf.workflow_id, wf.name, wf.queue, ticket, max(0.0, wake - now)))

    def start_attempt(self, lease: Lease, step_id: int, attempt: int, now: float) -> None:
        w = self.t.workflows
        with self._single(lease) as conn:
            updated = conn.execute(
                w.update()
                .where(w.c.workflow_id == lease.workflow_id, w.c.status == WorkflowStatus.RUNNING.value)
                .values(attempt_step=step_id, attempts=attempt, updated_at=now, **CLEARED_WAIT)
                .returning(w.c.workflow_id)  # rowcount is unreliable on some drivers for UPDATE ... RETURNING
            ).first()
            if updated is None:
                self._raise_if_cancelled(conn, lease.workflow_id)

    def wait_retry(self, lease: Lease, step_id: int, name: str, until: float, now: float, horizon: float) -> Suspended:
        wid = lease.workflow_id
        with self._tx(lease) as conn:
            # The same channel lock as a recv's wait: a send to this workflow then sees a consistent row.
            self._lock_channel(conn, "m", wid)
            wf = self._running_row(conn, wid)
            suspended = self._suspend(conn, wf, "retry", wid, (name,), step_id, until, now, horizon)
        assert isinstance(lease, SQLLease)
        lease.waited = ("retry", step_id)  # committed: see step_cache.py
        return suspended

    def finish(
        self, lease: Lease, status: WorkflowStatus, output: str | None, error: str | None, now: float
    ) -> list[Dispatch]:
        params = {
            "p_wid": lease.workflow_id,
            "p_status": status.value,
            "p_output": output,
            "p_error": error,
            "p_now": now,
        }
        assert isinstance(lease, SQLLease)
        # Hooks, in this transaction: a child wakes a parent waiting on it (children); a workflow admitted
        # under a concurrency limit frees its slot and admits the next of its key (sql_concurrency.py).
        if lease.parent_id is not None or lease.flow_key is not None:
            with self._tx(lease) as conn:
                row = conn.execute(self._q_finish.returning(self.t.workflows.c.awaited), params).first()
                if row is None:
                    return []
                wakeups = self._release_slot(conn, lease.workflow_id, lease.flow_key, now) if lease.flow_key else []
                if lease.parent_id is not None and row.awaited is not None:
                    failed = status != WorkflowStatus.SUCCESS
                    wakeups += self._child_finished(conn, lease.parent_id, row.awaited, failed, now)
                return wakeups
        with self._single(lease) as conn:
            conn.execute(self._q_finish, params)
        return []

    def after_fork(self) -> None:
        # Connections opened by the parent must not be used (or closed) by the child.
        self.engine.dispose(close=False)

    def close(self) -> None:
        self.engine.dispose()
