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
from .pg_fast import PgFastPath
from .records import Dispatch, SendResult, StepRecord
from .sql import SQLLease, SQLStore, no_such_destination
from .transient import is_transient_postgres

# Keys are 64-bit hashes of a namespaced string, so they do not collide with the small
# integer keys applications usually pick for their own advisory locks.
_KEY = "hashtextextended(:k, 0)"


class PostgresStore(PgFastPath, SQLStore):
    """Store on PostgreSQL through psycopg 3; the statements of executions are in ``pg_fast.py``."""

    autocommit_reads = True

    def __init__(
        self,
        url: str,
        prefix: str = "durable_",
        engine_options: dict[str, Any] | None = None,
        *,
        durability: str = "full",
    ) -> None:
        options: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10}
        options.update(engine_options or {})
        super().__init__(sa.create_engine(url, **options), prefix)
        #: durability="relaxed": step checkpoints commit without waiting for their WAL flush.
        self.relaxed = durability == "relaxed"
        # Executions check out their own pool without the pre-ping round trip: a dead pooled
        # connection (database restarted) fails the claim, SQLAlchemy then drops the whole pool,
        # and the delivery is retried after busy_backoff. Producers (start, send) keep the ping,
        # so their callers never see that error. Its connections are always AUTOCOMMIT (a lone
        # statement is one round trip; transactions send BEGIN/COMMIT themselves), which saves
        # switching the isolation level on every checkout.
        self.exec_engine = sa.create_engine(url, **{**options, "pool_pre_ping": False, "isolation_level": "AUTOCOMMIT"})
        self._fast_statements()

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
        w, m = self.t.workflows.name, self.t.messages.name
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
        conn = self.exec_engine.connect()
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
