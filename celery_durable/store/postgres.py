"""PostgreSQL (psycopg 3) backend: engine set-up and locks. Every query lives in ``sql.py``.

Execution lock: a session-level advisory lock taken on the connection the execution then
uses for all its writes. PostgreSQL releases it when that connection closes, and the
kernel closes the connection when the worker process dies (``kill -9`` included), so a
dead holder never blocks the workflow; the next delivery or the sweep takes over. A
holder whose connection broke (database restart) cannot write any more either: its
connection is gone, so the lock and the right to write end together.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .base import Lease
from .records import Dispatch, Execution, SendResult, StepRecord, Suspended, WaitRequest, WorkflowStatus
from .sql import SQLLease, SQLStore, no_such_destination
from .transient import is_transient_postgres

# Keys are 64-bit hashes of a namespaced string, so they do not collide with the small
# integer keys applications usually pick for their own advisory locks.
_KEY = "hashtextextended(:k, 0)"


class PostgresStore(SQLStore):
    """Store on PostgreSQL through psycopg 3."""

    autocommit_reads = True

    def __init__(self, url: str, prefix: str = "durable_", engine_options: dict[str, Any] | None = None) -> None:
        options: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10}
        options.update(engine_options or {})
        super().__init__(sa.create_engine(url, **options), prefix)
        # Executions check out their own pool without the pre-ping round trip: a dead pooled
        # connection (database restarted) fails the claim, SQLAlchemy then drops the whole pool,
        # and the delivery is retried after busy_backoff. Producers (start, send) keep the ping,
        # so their callers never see that error.
        self.exec_engine = sa.create_engine(url, **{**options, "pool_pre_ping": False})

    def after_fork(self) -> None:
        super().after_fork()
        self.exec_engine.dispose(close=False)

    def close(self) -> None:
        super().close()
        self.exec_engine.dispose()

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient_postgres(exc)

    def _insert(self, table: sa.Table) -> Any:
        return postgresql.insert(table)

    def _hot_statements(self) -> None:
        super()._hot_statements()
        w, m, st = self.t.workflows.name, self.t.messages.name, self.t.steps.name
        self._q_take = sa.text(
            f"WITH wf AS MATERIALIZED (SELECT status FROM {w} WHERE workflow_id = :wid FOR UPDATE), "
            f"msg AS MATERIALIZED (SELECT seq, topic, payload FROM {m} WHERE destination = :wid "
            "AND topic = ANY(:topics) AND consumed_at IS NULL "
            "AND EXISTS (SELECT 1 FROM wf WHERE wf.status = 'RUNNING') ORDER BY seq LIMIT 1), "
            f"taken AS (UPDATE {m} SET consumed_at = :now WHERE seq = (SELECT seq FROM msg) RETURNING 1), "
            f"ins AS (INSERT INTO {st} (workflow_id, step_id, name, kind, output, error, topic, started_at, ended_at) "
            "SELECT :wid, :sid, :name, 'recv', payload, NULL, topic, :now, :now FROM msg RETURNING 1), "
            f"clr AS (UPDATE {w} SET wait_kind = NULL, wait_target = NULL, wait_topics = NULL, wait_step = NULL, "
            "deadline = NULL, timer_due = NULL, updated_at = :now "
            "WHERE workflow_id = :wid AND EXISTS (SELECT 1 FROM msg) RETURNING 1) "
            "SELECT seq, topic, payload FROM msg"
        )
        self._q_send = sa.text(
            f"WITH lk AS MATERIALIZED (SELECT pg_advisory_xact_lock({_KEY}) AS x), "
            "wf AS MATERIALIZED (SELECT d.workflow_id, d.status, d.wait_kind, d.wait_topics "
            f"FROM {w} AS d, lk WHERE d.workflow_id = :dest FOR UPDATE OF d), "
            f"ins AS (INSERT INTO {m} (destination, topic, payload, idempotency_key, created_at) "
            "SELECT :dest, :topic, :payload, :ikey, :now FROM wf "
            "ON CONFLICT (destination, idempotency_key) DO NOTHING RETURNING seq), "
            f"wake AS (UPDATE {w} AS d SET status = 'PENDING', ticket = d.ticket + 1, timer_due = NULL, "
            "dispatched_at = :now, updated_at = :now FROM wf, ins "
            "WHERE d.workflow_id = wf.workflow_id AND wf.status = 'WAITING' AND wf.wait_kind = 'recv' "
            "AND CAST(wf.wait_topics AS jsonb) ? :topic RETURNING d.ticket, d.name, d.queue) "
            "SELECT (SELECT count(*) FROM wf) AS found, (SELECT seq FROM ins) AS seq, "
            "wake.ticket, wake.name, wake.queue FROM (SELECT 1) AS one LEFT JOIN wake ON true"
        )

    def _key(self, kind: str, workflow_id: str) -> str:
        return f"{self.prefix}{kind}:{workflow_id}"

    def _lock_channel(self, conn: sa.Connection, kind: str, workflow_id: str) -> None:
        # Transaction-scoped: a waiter deciding to wait and a sender storing a message for the
        # same workflow (or a setter and a waiter of one event) take turns, even when the
        # workflow row does not exist yet (mailboxes).
        conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_KEY})"), {"k": self._key(kind, workflow_id)})

    def _lock_migrations(self, conn: sa.Connection) -> None:
        conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_KEY})"), {"k": self._key("migrate", "")})

    def claim(self, workflow_id: str, ticket: int, now: float) -> tuple[Lease | None, Execution | None]:
        """Take the lock and start the execution in one statement (one round trip).

        ``u`` reads ``l``, so the lock is taken before the row is updated; if another holder
        commits the row meanwhile, PostgreSQL re-checks the UPDATE's conditions on the committed
        version (READ COMMITTED), so a finished workflow is never restarted.
        """
        w = self.t.workflows
        conn = self.exec_engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            row = conn.execute(
                sa.text(
                    # The claim's commit need not wait for its WAL flush: if the database crashed
                    # before the flush, the claim is lost with everything after it, and the row is
                    # as it was before (the execution's connection is gone too). The next durable
                    # write of this execution flushes the WAL up to and past it anyway.
                    "WITH sc AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)), "
                    f"l AS MATERIALIZED (SELECT pg_try_advisory_lock({_KEY}) AS locked FROM sc), "
                    f"u AS (UPDATE {w.name} SET status = 'RUNNING', executions = executions + 1, "
                    "timer_due = NULL, dispatched_at = NULL, updated_at = :now FROM l "
                    "WHERE l.locked AND workflow_id = :wid AND ticket = :ticket "
                    "AND status IN ('PENDING', 'RUNNING', 'WAITING') "
                    f"RETURNING {w.name}.*) "
                    "SELECT l.locked, u.* FROM l LEFT JOIN u ON true"
                ),
                {"k": self._key("x", workflow_id), "wid": workflow_id, "ticket": ticket, "now": now},
            ).one()
            conn.commit()
        except BaseException:
            conn.close()  # closing the session drops a lock it may have taken
            raise
        if not row.locked:
            conn.close()
            return None, None
        lease = SQLLease(workflow_id, conn, autocommit=True)
        if row.workflow_id is None:
            return lease, None
        record = self._workflow(row)
        lease.parent_id = record.parent_id  # hook (children): finish() wakes a waiting parent
        if record.executions == 1:
            return lease, Execution(record, {})  # the first execution: no checkpoint can exist
        try:
            steps = conn.execute(self._q_steps, {"p_wid": workflow_id})
            conn.commit()
            return lease, Execution(record, {r.step_id: self._step(r) for r in steps})
        except BaseException:
            self.release(lease)
            raise

    def finish(
        self, lease: Lease, status: WorkflowStatus, output: str | None, error: str | None, now: float
    ) -> list[Dispatch]:
        """Record the end and release the lock in one statement.

        The unlock reads the UPDATE's result, so it runs after the row is updated and before the
        commit; whoever takes the lock next waits on the row lock until the commit, then sees the
        workflow finished.

        A child takes the generic path instead (one transaction of two statements; ``release`` drops
        the lock): its parent's row must be read with a snapshot taken *after* the child's row lock
        was granted, or a join committed meanwhile would be missed (see sql_children.py).
        """
        assert isinstance(lease, SQLLease)
        if lease.parent_id is not None:  # hook (children)
            return super().finish(lease, status, output, error, now)
        w = self.t.workflows
        row = lease.conn.execute(
            sa.text(
                f"WITH u AS (UPDATE {w.name} SET status = :status, output = :output, error = :error, "
                "updated_at = :now, wait_kind = NULL, wait_target = NULL, wait_topics = NULL, "
                "wait_step = NULL, deadline = NULL, timer_due = NULL "
                "WHERE workflow_id = :wid AND status = 'RUNNING' RETURNING 1 AS one) "
                f"SELECT pg_advisory_unlock({_KEY}) AS unlocked FROM (SELECT count(*) AS n FROM u) AS done"
            ),
            {
                "status": status.value,
                "output": output,
                "error": error,
                "now": now,
                "wid": lease.workflow_id,
                "k": self._key("x", lease.workflow_id),
            },
        ).one()
        lease.conn.commit()
        lease.finished = True
        if not row.unlocked:
            lease.conn.invalidate()  # never pool a session that may still hold the lock
        return []

    def wait_step(self, lease: Lease, request: WaitRequest) -> StepRecord | Suspended:
        """A ``recv`` that finds its message consumes it in one statement (one round trip).

        Only consuming happens here, never deciding to wait, so it needs no channel lock: the
        destination row is locked FOR UPDATE (its newest version: still RUNNING, not cancelled),
        the oldest matching message is marked consumed and becomes the checkpoint, atomically.
        When nothing is found (or a message committed after this statement's snapshot), the
        generic transaction decides, under the channel lock, whether to wait.
        """
        if request.kind == "recv":
            assert isinstance(lease, SQLLease)
            row = lease.conn.execute(
                self._q_take,
                {
                    "wid": lease.workflow_id,
                    "topics": list(request.topics),
                    "now": request.now,
                    "sid": request.step_id,
                    "name": request.name,
                },
            ).first()
            lease.conn.commit()
            if row is not None:
                return StepRecord(
                    lease.workflow_id,
                    request.step_id,
                    request.name,
                    "recv",
                    row.payload,
                    None,
                    row.topic,
                    request.now,
                    request.now,
                )
        return super().wait_step(lease, request)

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
        """A send from outside any workflow, in one statement (one round trip).

        The same steps as the generic send, in the same order: the channel lock (``lk``), then the
        destination row FOR UPDATE (``wf``): taken after the lock, so in READ COMMITTED it is the
        newest committed version even when a waiter committed its wait while we queued on the
        lock. The message insert (``ins``) and the wake-up (``wake``, only if a message was
        inserted) follow. Mailbox sends keep the generic path: their destination may be created
        after this statement's snapshot, which one statement could not see.
        """
        if lease is not None or checkpoint is not None or create_mailbox:
            return super().send(
                destination,
                topic,
                payload,
                now,
                idempotency_key=idempotency_key,
                create_mailbox=create_mailbox,
                lease=lease,
                checkpoint=checkpoint,
            )
        m = self.t.messages.name
        params = {
            "k": self._key("m", destination),
            "dest": destination,
            "topic": topic,
            "payload": payload,
            "ikey": idempotency_key,
            "now": now,
        }
        with self._connect() as conn:
            row = conn.execute(self._q_send, params).one()
            if not row.found:
                raise no_such_destination(destination)
            if row.seq is None:  # the idempotency key was used before
                first = conn.execute(
                    sa.text(f"SELECT seq FROM {m} WHERE destination = :dest AND idempotency_key = :ikey"), params
                ).scalar_one()
                return SendResult(int(first), False)
        wakeups = () if row.ticket is None else (Dispatch(destination, row.name, row.queue, int(row.ticket)),)
        return SendResult(int(row.seq), True, wakeups)

    def acquire(self, workflow_id: str) -> Lease | None:
        conn = self.exec_engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            locked = conn.execute(
                sa.text(f"SELECT pg_try_advisory_lock({_KEY})"), {"k": self._key("x", workflow_id)}
            ).scalar()
            conn.commit()
        except BaseException:
            conn.close()
            raise
        if not locked:
            conn.close()
            return None
        return SQLLease(workflow_id, conn, autocommit=True)

    def release(self, lease: Lease) -> None:
        assert isinstance(lease, SQLLease)
        conn = lease.conn
        if lease.finished:
            conn.close()  # finish() already released the lock
            return
        try:
            dbapi = conn.connection.dbapi_connection
            if dbapi is not None and dbapi.info.transaction_status != 0:  # not idle: a failed statement
                conn.exec_driver_sql("ROLLBACK")
            conn.commit()
            unlocked = conn.execute(
                sa.text(f"SELECT pg_advisory_unlock({_KEY})"), {"k": self._key("x", lease.workflow_id)}
            ).scalar()
            conn.commit()
            if not unlocked:
                conn.invalidate()  # never hand a connection that may still hold a lock back to the pool
        except Exception:
            try:
                conn.invalidate()  # closing the session releases any lock it held
            except Exception:
                pass
        finally:
            conn.close()
