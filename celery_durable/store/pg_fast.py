"""PostgreSQL's execution hot path: the statements every execution runs, on the raw psycopg connection.

Profiled (benchmarks/profile_engine.py, cProfile with ``time.process_time``): per statement, SQLAlchemy's
execute path (``_execute_context``, result set-up, ``_init_compiled``) cost about three times the
client CPU of a raw psycopg ``execute`` of the same text, and the generic recv wait sent 7 round
trips. So the statements of claim, checkpoint, recv, finish and release are written here as SQL
text run on the lease connection's DBAPI connection (psycopg prepares each after a few uses), and
the rows are read by position. The lease keeps its SQLAlchemy connection: every other operation of
an execution (events, sleeps, sends, retries) still goes through the generic code in ``sql.py``.

Every statement keeps the invariants of the generic one it replaces (see each docstring).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.errors
from psycopg.pq import TransactionStatus

from ..errors import DurableError, WorkflowCancelled
from .records import Dispatch, Execution, StepRecord, Suspended, WaitRequest, WorkflowRecord, WorkflowStatus
from .sql_lease import SQLLease

if TYPE_CHECKING:
    import sqlalchemy as sa

    from .schema import Tables
    from .step_cache import StepCache

# Keys are 64-bit hashes of a namespaced string, so they do not collide with the small
# integer keys applications usually pick for their own advisory locks.
KEY = "hashtextextended(%(k)s, 0)"
_STEP_COLUMNS = "step_id, name, kind, output, error, topic, started_at, ended_at"
_RELAXED = "set_config('synchronous_commit', 'off', true)"


class PgFastPath:
    """The hot path of :class:`~celery_durable.store.postgres.PostgresStore` (a mixin)."""

    if TYPE_CHECKING:  # provided by SQLStore / PostgresStore
        t: Tables
        prefix: str
        exec_engine: sa.Engine
        step_cache: StepCache
        relaxed: bool

        def _key(self, kind: str, workflow_id: str) -> str: ...
        def _keep_history(self, lease: SQLLease) -> None: ...

    #: Statements sent on the raw path (benchmarks add them to SQLAlchemy's count).
    raw_statements = 0
    notifies_finish = True

    def _fast_statements(self) -> None:
        w, s, m = self.t.workflows.name, self.t.steps.name, self.t.messages.name
        # The columns a WorkflowRecord holds, read by position (a column only the store uses, such as a
        # join's bookkeeping, is not returned).
        fields = {f.name for f in dataclasses.fields(WorkflowRecord)}
        self._wf_columns = [c.name for c in self.t.workflows.c if c.name in fields]
        cols = ", ".join(f"{w}.{c}" for c in self._wf_columns)
        self._fq_claim = (
            # The claim's commit need not wait for its WAL flush: if the database crashed before
            # the flush, the claim is lost with everything after it, and the row is as it was
            # before (the execution's connection is gone too). The next durable write of this
            # execution flushes the WAL up to and past it anyway.
            f"WITH sc AS MATERIALIZED (SELECT {_RELAXED}), "
            f"l AS MATERIALIZED (SELECT pg_try_advisory_lock({KEY}) AS locked FROM sc), "
            f"u AS (UPDATE {w} SET status = 'RUNNING', executions = executions + 1, "
            "timer_due = NULL, dispatched_at = NULL, updated_at = %(now)s FROM l "
            "WHERE l.locked AND workflow_id = CAST(%(wid)s AS varchar) AND ticket = %(ticket)s "
            f"AND status IN ('PENDING', 'RUNNING', 'WAITING') RETURNING {cols}) "
            "SELECT l.locked, u.* FROM l LEFT JOIN u ON true"
        )
        self._fq_steps = f"SELECT {_STEP_COLUMNS} FROM {s} WHERE workflow_id = CAST(%(wid)s AS varchar) AND step_id > %(after)s"
        values = "CAST(%(wid)s AS varchar), %(sid)s, %(name)s, %(kind)s, %(output)s, %(error)s, %(topic)s, %(started)s, %(ended)s"
        running = f"EXISTS (SELECT 1 FROM {w} WHERE workflow_id = CAST(%(wid)s AS varchar) AND status = 'RUNNING')"
        insert = f"INSERT INTO {s} (workflow_id, {_STEP_COLUMNS}) "
        conflict = " ON CONFLICT (workflow_id, step_id) DO NOTHING RETURNING step_id"
        self._fq_step = f"{insert}SELECT {values} WHERE {running}{conflict}"
        # durability="relaxed": this one commit does not wait for its WAL flush (see config.py).
        self._fq_step_relaxed = f"{insert}SELECT {values} FROM (SELECT {_RELAXED}) AS sc WHERE {running}{conflict}"
        self._fq_finish = (
            f"WITH u AS (UPDATE {w} SET status = %(status)s, output = %(output)s, error = %(error)s, "
            "updated_at = %(now)s, wait_kind = NULL, wait_target = NULL, wait_topics = NULL, "
            "wait_step = NULL, deadline = NULL, timer_due = NULL "
            "WHERE workflow_id = CAST(%(wid)s AS varchar) AND status = 'RUNNING' RETURNING 1 AS one), "
            # Wakes a handle.result() waiting on this workflow (watch_finish), at our commit.
            "nt AS (SELECT pg_notify(%(fchan)s, '') FROM u) "
            f"SELECT pg_advisory_unlock({KEY}) AS unlocked FROM (SELECT count(*) AS n FROM u) AS done, "
            "(SELECT count(*) AS n FROM nt) AS told"
        )
        self._fq_unlock = f"SELECT pg_advisory_unlock({KEY})"
        self._fq_create = (
            f"INSERT INTO {w} (workflow_id, name, status, inputs, queue, ticket, executions, created_at, updated_at, "
            "dispatched_at, version, parent_id, timeout_at, trace_context, task_options, dedup_key) VALUES (%(p_wid)s, "
            "%(p_name)s, 'PENDING', %(p_inputs)s, %(p_queue)s, 0, 0, %(p_now)s, %(p_now)s, %(p_now)s, %(p_version)s, "
            "%(p_parent_id)s, %(p_timeout_at)s, %(p_trace_context)s, %(p_task_options)s, %(p_dedup_key)s) "
            # No conflict target: the id's primary key, or the dedup index when a key is given.
            f"ON CONFLICT DO NOTHING RETURNING {cols}"
        )
        self._fq_get = f"SELECT {cols} FROM {w} WHERE workflow_id = %(p_wid)s"
        self._fq_get_dedup = (
            f"SELECT {cols} FROM {w} WHERE name = %(p_name)s AND dedup_key = %(p_dedup_key)s "
            "AND status NOT IN ('SUCCESS', 'ERROR', 'CANCELLED')"
        )
        # A send from outside a workflow; see PostgresStore.send for why it is correct in one statement.
        self._fq_send = (
            f"WITH lk AS MATERIALIZED (SELECT pg_advisory_xact_lock({KEY}) AS x), "
            "wf AS MATERIALIZED (SELECT d.workflow_id, d.status, d.wait_kind, d.wait_topics "
            f"FROM {w} AS d, lk WHERE d.workflow_id = %(dest)s FOR UPDATE OF d), "
            f"ins AS (INSERT INTO {m} (destination, topic, payload, idempotency_key, created_at) "
            "SELECT CAST(%(dest)s AS varchar), %(topic)s, %(payload)s, %(ikey)s, %(now)s FROM wf "
            "ON CONFLICT (destination, idempotency_key) DO NOTHING RETURNING seq), "
            f"wake AS (UPDATE {w} AS d SET status = 'PENDING', ticket = d.ticket + 1, timer_due = NULL, "
            "dispatched_at = %(now)s, updated_at = %(now)s FROM wf, ins "
            "WHERE d.workflow_id = wf.workflow_id AND wf.status = 'WAITING' AND wf.wait_kind = 'recv' "
            "AND CAST(wf.wait_topics AS jsonb) ? CAST(%(topic)s AS varchar) RETURNING d.ticket, d.name, d.queue), "
            # A RUNNING destination may be lingering in recv (linger_recv): tell it, at our commit.
            "nt AS (SELECT pg_notify(%(chan)s, '') FROM wf, ins WHERE wf.status = 'RUNNING') "
            "SELECT (SELECT count(*) FROM wf) AS found, (SELECT seq FROM ins) AS seq, "
            "wake.ticket, wake.name, wake.queue, (SELECT count(*) FROM nt) AS notified "
            "FROM (SELECT 1) AS one LEFT JOIN wake ON true"
        )
        # A recv's message, if there is one, without deciding anything else (a lingering recv; see linger_recv).
        self._fq_take = (
            f"WITH wf AS MATERIALIZED (SELECT status FROM {w} WHERE workflow_id = CAST(%(wid)s AS varchar) FOR UPDATE), "
            f"msg AS MATERIALIZED (SELECT seq, topic, payload FROM {m} WHERE destination = CAST(%(wid)s AS varchar) "
            "AND topic = ANY(%(topics)s) AND consumed_at IS NULL "
            "AND EXISTS (SELECT 1 FROM wf WHERE wf.status = 'RUNNING') ORDER BY seq LIMIT 1), "
            f"taken AS (UPDATE {m} SET consumed_at = %(now)s WHERE seq = (SELECT seq FROM msg) RETURNING 1), "
            f"ins AS (INSERT INTO {s} (workflow_id, {_STEP_COLUMNS}) "
            "SELECT CAST(%(wid)s AS varchar), %(sid)s, %(name)s, 'recv', payload, NULL, topic, %(now)s, %(now)s "
            "FROM msg RETURNING 1), "
            f"clr AS (UPDATE {w} SET wait_kind = NULL, wait_target = NULL, wait_topics = NULL, wait_step = NULL, "
            "deadline = NULL, timer_due = NULL, updated_at = %(now)s "
            "WHERE workflow_id = CAST(%(wid)s AS varchar) AND EXISTS (SELECT 1 FROM msg) RETURNING 1) "
            "SELECT topic, payload FROM msg"
        )
        self._fq_first_seq = f"SELECT seq FROM {m} WHERE destination = %(dest)s AND idempotency_key = %(ikey)s"
        self._fq_lock_channel = f"SELECT pg_advisory_xact_lock({KEY})"
        # One recv: consume the oldest message, or time out, or record the wait; see wait_step.
        self._fq_recv = (
            "WITH wf AS MATERIALIZED (SELECT workflow_id, status, timeout_at, name, queue, "
            "CASE WHEN wait_step = %(sid)s AND (deadline IS NOT NULL OR CAST(%(timeout)s AS float8) IS NULL) "
            "THEN deadline ELSE %(now)s + CAST(%(timeout)s AS float8) END AS dl "
            f"FROM {w} WHERE workflow_id = CAST(%(wid)s AS varchar) FOR UPDATE), "
            f"msg AS MATERIALIZED (SELECT seq, topic, payload FROM {m} WHERE destination = CAST(%(wid)s AS varchar) "
            "AND topic = ANY(%(topics)s) AND consumed_at IS NULL "
            "AND EXISTS (SELECT 1 FROM wf WHERE status = 'RUNNING') ORDER BY seq LIMIT 1), "
            "expired AS MATERIALIZED (SELECT 1 AS x FROM wf WHERE status = 'RUNNING' "
            "AND NOT EXISTS (SELECT 1 FROM msg) AND dl <= %(now)s), "
            f"taken AS (UPDATE {m} SET consumed_at = %(now)s WHERE seq = (SELECT seq FROM msg) RETURNING 1), "
            f"ins AS (INSERT INTO {s} (workflow_id, {_STEP_COLUMNS}) "
            "SELECT CAST(%(wid)s AS varchar), %(sid)s, %(name)s, 'recv', payload, NULL, topic, %(now)s, %(now)s FROM msg "
            "UNION ALL SELECT CAST(%(wid)s AS varchar), %(sid)s, %(name)s, 'recv', NULL, NULL, NULL, %(now)s, %(now)s FROM expired "
            "RETURNING 1), "
            f"clr AS (UPDATE {w} SET wait_kind = NULL, wait_target = NULL, wait_topics = NULL, wait_step = NULL, "
            "deadline = NULL, timer_due = NULL, updated_at = %(now)s WHERE workflow_id = CAST(%(wid)s AS varchar) "
            "AND (EXISTS (SELECT 1 FROM msg) OR EXISTS (SELECT 1 FROM expired)) RETURNING 1), "
            f"wt AS (UPDATE {w} AS d SET status = 'WAITING', ticket = d.ticket + 1, updated_at = %(now)s, "
            "wait_kind = 'recv', wait_target = CAST(%(wid)s AS varchar), wait_topics = %(topics_json)s, wait_step = %(sid)s, "
            "deadline = wf.dl, dispatched_at = NULL, timer_due = CASE WHEN least(wf.dl, wf.timeout_at) - %(now)s "
            "<= %(horizon)s THEN least(wf.dl, wf.timeout_at) END FROM wf "
            "WHERE d.workflow_id = wf.workflow_id AND wf.status = 'RUNNING' "
            "AND NOT EXISTS (SELECT 1 FROM msg) AND NOT EXISTS (SELECT 1 FROM expired) "
            "RETURNING d.ticket, d.timer_due) "
            "SELECT wf.status, msg.topic, msg.payload, (msg.seq IS NOT NULL) AS took, "
            "EXISTS (SELECT 1 FROM expired) AS expired, wt.ticket, wt.timer_due, wf.name, wf.queue, "
            "(SELECT count(*) FROM ins) + (SELECT count(*) FROM taken) + (SELECT count(*) FROM clr) AS n "
            "FROM wf LEFT JOIN msg ON true LEFT JOIN wt ON true"
        )

    # -- helpers --------------------------------------------------------------------------------
    def _raw(self, lease: SQLLease) -> psycopg.Connection[Any]:
        dbapi = lease.dbapi
        assert isinstance(dbapi, psycopg.Connection)
        return dbapi

    def _cursor(self, lease: SQLLease) -> psycopg.Cursor[Any]:
        """The lease's cursor, reused by every lone statement of the execution (one fewer object per statement)."""
        cur = lease.cursor
        if cur is None:
            cur = lease.cursor = self._raw(lease).cursor()
        return cur

    def _record(self, values: Any) -> WorkflowRecord:
        m = dict(zip(self._wf_columns, values))
        topics = m["wait_topics"]
        m["status"] = WorkflowStatus(m["status"])
        m["wait_topics"] = tuple(json.loads(topics)) if topics is not None else None
        return WorkflowRecord(**m)

    @staticmethod
    def _steps(workflow_id: str, rows: Any, into: dict[int, StepRecord]) -> dict[int, StepRecord]:
        for r in rows:
            into[r[0]] = StepRecord(workflow_id, *r)
        return into

    @contextmanager
    def _raw_connect(self) -> Iterator[psycopg.Connection[Any]]:
        """A DBAPI connection of the executions' AUTOCOMMIT pool for a producer's lone statements.

        The pool's own checkout (with its check that the server did not close the connection) and
        reset on return, without building a SQLAlchemy Connection these statements never use.
        """
        proxied = self.exec_engine.raw_connection()
        try:
            raw = proxied.dbapi_connection
            assert isinstance(raw, psycopg.Connection)
            yield raw
        finally:
            proxied.close()

    # -- the hot path -----------------------------------------------------------------------------
    def _create_or_find(self, params: dict[str, Any]) -> tuple[WorkflowRecord, bool] | None:
        """``create_workflow``'s one atomic statement (then a read on conflict), raw."""
        with self._raw_connect() as raw:
            row = raw.execute(self._fq_create, params).fetchone()
            PgFastPath.raw_statements += 1
            if row is not None:
                return self._record(row), True
            row = raw.execute(self._fq_get, params).fetchone()
            PgFastPath.raw_statements += 1
            if row is None and params["p_dedup_key"] is not None:  # the conflict was on the dedup index
                row = raw.execute(self._fq_get_dedup, params).fetchone()
                PgFastPath.raw_statements += 1
        return (self._record(row), False) if row is not None else None

    def claim(self, workflow_id: str, ticket: int, now: float) -> tuple[Any, Execution | None]:
        """Take the lock and start the execution in one statement (one round trip).

        ``u`` reads ``l``, so the lock is taken before the row is updated; if another holder
        commits the row meanwhile, PostgreSQL re-checks the UPDATE's conditions on the committed
        version (READ COMMITTED), so a finished workflow is never restarted. The checkpoints are
        then read on the same connection under the lock: only those newer than what this process
        cached for the workflow (step_cache.py says when a cached history is still its history).
        """
        # AUTOCOMMIT engine: no isolation switch per checkout. The pooled DBAPI connection only: the
        # lease builds a SQLAlchemy Connection around it if generic code ever needs one (sql_lease.py).
        proxied = self.exec_engine.raw_connection()
        try:
            raw = proxied.dbapi_connection
            assert isinstance(raw, psycopg.Connection)
            cur = raw.cursor()
            row = cur.execute(
                self._fq_claim, {"k": self._key("x", workflow_id), "wid": workflow_id, "ticket": ticket, "now": now}
            ).fetchone()
            PgFastPath.raw_statements += 1
        except BaseException:
            proxied.invalidate()  # closing the session drops a lock it may have taken
            raise
        assert row is not None
        if not row[0]:
            proxied.close()
            return None, None
        lease = SQLLease(workflow_id, None, autocommit=True, engine=self.exec_engine, proxied=proxied)
        lease.cursor = cur
        if row[1] is None:
            return lease, None
        record = self._record(row[1:])
        lease.record = record
        lease.parent_id = record.parent_id  # hook (children): finish() wakes a waiting parent
        lease.flow_key = record.flow_key  # hook (concurrency): finish() frees its slot
        if record.executions == 1:
            lease.history = {}  # the first execution: no checkpoint can exist
            return lease, Execution(record, lease.history)
        try:
            cached = self.step_cache.take(record)
            after = max(cached) if cached else -1
            rows = cur.execute(self._fq_steps, {"wid": workflow_id, "after": after}).fetchall()
            PgFastPath.raw_statements += 1
            lease.history = self._steps(workflow_id, rows, cached if cached is not None else {})
            return lease, Execution(record, lease.history)
        except BaseException:
            self.release(lease)
            raise

    def record_step(self, lease: Any, step: StepRecord) -> StepRecord:
        """Insert the checkpoint only while the workflow is RUNNING and the step id is free (one statement).

        Anything else (the id taken, the workflow cancelled) is sorted out by the generic code.
        """
        assert isinstance(lease, SQLLease)
        query = self._fq_step_relaxed if self.relaxed and step.kind == "step" else self._fq_step
        params = {
            "wid": step.workflow_id,
            "sid": step.step_id,
            "name": step.name,
            "kind": step.kind,
            "output": step.output,
            "error": step.error,
            "topic": step.topic,
            "started": step.started_at,
            "ended": step.ended_at,
        }
        inserted = self._cursor(lease).execute(query, params).fetchone()
        PgFastPath.raw_statements += 1
        if inserted is None:
            return super().record_step(lease, step)  # type: ignore[misc]
        lease.remember(step)
        return step

    def wait_step(self, lease: Any, request: WaitRequest) -> StepRecord | Suspended:
        """A ``recv`` in one pipelined transaction (one network round trip): BEGIN, the channel lock, one
        statement that consumes the oldest message, or writes a timed-out checkpoint, or records the
        wait, and COMMIT.

        The channel lock is taken by a statement of its own *before* the one that looks for the
        message, so that statement's snapshot (READ COMMITTED: one per statement) sees every message a
        sender committed while holding the lock: either we see the message, or the sender (which
        takes the same lock, then our row FOR UPDATE) sees the wait and wakes us. Same rules as the
        generic ``SQLStore.wait_step``; other kinds of wait go there.
        """
        if request.kind != "recv":
            return super().wait_step(lease, request)  # type: ignore[misc]
        assert isinstance(lease, SQLLease)
        wid = lease.workflow_id
        now = request.now
        raw = self._raw(lease)
        params = {
            "wid": wid,
            "sid": request.step_id,
            "name": request.name,
            "topics": list(request.topics),
            "topics_json": json.dumps(list(request.topics)),
            "timeout": request.timeout,
            "now": now,
            "horizon": request.horizon,
        }
        try:
            with raw.pipeline():
                raw.execute("BEGIN")
                raw.execute(self._fq_lock_channel, {"k": self._key("m", wid)})
                cur = raw.execute(self._fq_recv, params)
                raw.execute("COMMIT")
            row = cur.fetchone()
        except psycopg.errors.UniqueViolation:
            self._rollback(raw)
            raise DurableError(f"step {request.step_id} of workflow {wid!r} was already recorded") from None
        except BaseException:
            self._rollback(raw)
            raise
        finally:
            PgFastPath.raw_statements += 4
        if row is None or row[0] != WorkflowStatus.RUNNING.value:
            if row is not None and row[0] == WorkflowStatus.CANCELLED.value:
                raise WorkflowCancelled(f"workflow {wid!r} was cancelled")
            status = row[0] if row is not None else "gone"
            raise DurableError(f"workflow {wid!r} is {status}, not RUNNING: this execution lost its claim")
        status, topic, payload, took, expired, ticket, timer_due, name, queue, _ = row
        if took or expired:
            step = StepRecord(wid, request.step_id, request.name, "recv", payload, None, topic, now, now)
            lease.remember(step)
            return step
        lease.waited = ("recv", request.step_id)
        if timer_due is None:
            return Suspended(None)
        return Suspended(Dispatch(wid, name, queue, int(ticket), max(0.0, timer_due - now)))

    def channel(self, workflow_id: str, kind: str = "m") -> str:
        """The LISTEN/NOTIFY channel of a workflow's messages (``m``) or end (``f``): an identifier of at most 63 bytes."""
        return f"{self.prefix}{kind}{hashlib.sha1(workflow_id.encode()).hexdigest()}"[:63]

    @staticmethod
    def _take_params(lease: SQLLease, request: WaitRequest) -> dict[str, Any]:
        """Parameters of ``_fq_take`` (take_recv, linger_recv)."""
        return {
            "wid": lease.workflow_id,
            "sid": request.step_id,
            "name": request.name,
            "topics": list(request.topics),
            "now": request.now,
        }

    def take_recv(self, lease: Any, request: WaitRequest) -> StepRecord | None:
        """Take the oldest message the ``recv`` *request* can take, with its checkpoint, in one statement;
        ``None`` (nothing written) when there is none. For a recv that was woken by a send.

        Without the channel lock, and still FIFO: senders to one destination take that lock around
        their insert and commit, so their sequence numbers are in commit order and any snapshot holds
        a prefix of that destination's messages; the oldest unconsumed one in it is the oldest there
        is. Deciding to *wait* needs the lock (a message committed after this snapshot must be seen or
        must see the wait): that is :meth:`wait_step`, which the caller runs when this returns ``None``.
        """
        assert isinstance(lease, SQLLease)
        if request.kind != "recv":
            return None
        params = self._take_params(lease, request)
        try:
            row = self._cursor(lease).execute(self._fq_take, params).fetchone()
        except psycopg.errors.UniqueViolation:
            raise DurableError(f"step {request.step_id} of workflow {lease.workflow_id!r} was already recorded") from None
        finally:
            PgFastPath.raw_statements += 1
        if row is None:
            return None
        topic, payload = row
        step = StepRecord(lease.workflow_id, request.step_id, request.name, "recv", payload, None, topic, request.now, request.now)
        lease.remember(step)
        return step

    def linger_recv(self, lease: Any, request: WaitRequest, seconds: float) -> StepRecord | None:
        """Wait up to *seconds* for a message that a ``recv`` at *request* can take, without recording a wait.

        Invariant (why this cannot lose or double a message): while it lingers the workflow stays
        RUNNING and this execution keeps its lock, so a sender stores the message and publishes no
        wake-up (it only NOTIFYs the workflow's channel, at its commit). A message is consumed here
        only by the same statement the normal path uses (row FOR UPDATE, RUNNING, oldest unconsumed,
        checkpoint in the same commit). When this returns ``None`` the caller runs the normal
        :meth:`wait_step`, which takes the channel lock and so sees every message committed before:
        a message sent during or after the linger is either taken there or wakes the recorded wait.
        LISTEN comes before the first look, so a message committed between the two is not missed.
        """
        assert isinstance(lease, SQLLease)
        raw = self._raw(lease)
        channel = self.channel(lease.workflow_id)
        params = self._take_params(lease, request)
        lease.listening = True  # release() ends it (UNLISTEN *)
        with raw.pipeline():
            raw.execute(f'LISTEN "{channel}"')
            cur = raw.execute(self._fq_take, params)
        PgFastPath.raw_statements += 2
        row = cur.fetchone()
        now = request.now
        end = time.monotonic() + seconds
        while row is None:
            left = end - time.monotonic()
            if left <= 0:
                return None
            if not list(raw.notifies(timeout=left, stop_after=1)):
                return None
            # The checkpoint's time is the consuming statement's, as resume() pins a message by it.
            now = request.now + (seconds - max(0.0, end - time.monotonic()))
            row = raw.execute(self._fq_take, {**params, "now": now}).fetchone()
            PgFastPath.raw_statements += 1
        topic, payload = row
        step = StepRecord(lease.workflow_id, request.step_id, request.name, "recv", payload, None, topic, now, now)
        lease.remember(step)
        return step

    @staticmethod
    def _rollback(raw: psycopg.Connection[Any]) -> None:
        try:
            if raw.info.transaction_status != TransactionStatus.IDLE:
                raw.execute("ROLLBACK")
        except Exception:
            pass  # the connection is broken: release() invalidates it

    def finish(
        self, lease: Any, status: WorkflowStatus, output: str | None, error: str | None, now: float
    ) -> list[Dispatch]:
        """Record the end and release the lock in one statement.

        The unlock reads the UPDATE's result, so it runs after the row is updated and before the
        commit; whoever takes the lock next waits on the row lock until the commit, then sees the
        workflow finished.

        A workflow holding a concurrency slot takes the generic path (its slot is freed and the next of its
        key admitted in the finish's transaction, sql_concurrency.py), and so does a child
        (one transaction of two statements; ``release`` drops
        the lock): its parent's row must be read with a snapshot taken *after* the child's row lock
        was granted, or a join committed meanwhile would be missed (see sql_children.py). Its end is
        then announced by a NOTIFY of its own, for ``handle.result()`` callers (watch_finish).
        """
        assert isinstance(lease, SQLLease)
        if lease.parent_id is not None or lease.flow_key is not None:  # hooks (children, concurrency)
            wakeups: list[Dispatch] = super().finish(lease, status, output, error, now)  # type: ignore[misc]
            self._raw(lease).execute("SELECT pg_notify(%(fchan)s, '')", {"fchan": self.channel(lease.workflow_id, "f")})
            return wakeups
        params = {
            "status": status.value,
            "output": output,
            "error": error,
            "now": now,
            "wid": lease.workflow_id,
            "k": self._key("x", lease.workflow_id),
            "fchan": self.channel(lease.workflow_id, "f"),
        }
        row = self._cursor(lease).execute(self._fq_finish, params).fetchone()
        PgFastPath.raw_statements += 1
        lease.finished = True
        if row is None or not row[0]:
            lease.invalidate()  # never pool a session that may still hold the lock
        return []

    def release(self, lease: Any) -> None:
        assert isinstance(lease, SQLLease)
        self._keep_history(lease)
        if lease.finished and not lease.listening:
            lease.close()  # finish() already released the lock
            return
        if lease.finished:  # a pooled connection must not keep listening
            try:
                self._raw(lease).execute("UNLISTEN *")
            except Exception:
                lease.invalidate()
            lease.close()
            return
        try:
            raw = self._raw(lease)
            if raw.info.transaction_status != TransactionStatus.IDLE:  # a failed statement
                raw.execute("ROLLBACK")
            if lease.listening:
                raw.execute("UNLISTEN *")
            row = self._cursor(lease).execute(self._fq_unlock, {"k": self._key("x", lease.workflow_id)}).fetchone()
            PgFastPath.raw_statements += 1
            if row is None or not row[0]:
                lease.invalidate()  # never hand a connection that may still hold a lock back to the pool
        except Exception:
            try:
                lease.invalidate()  # closing the session releases any lock it held
            except Exception:
                pass
        finally:
            lease.close()
