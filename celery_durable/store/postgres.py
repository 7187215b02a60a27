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
from .records import Execution, WorkflowStatus
from .sql import SQLLease, SQLStore

# Keys are 64-bit hashes of a namespaced string, so they do not collide with the small
# integer keys applications usually pick for their own advisory locks.
_KEY = "hashtextextended(:k, 0)"


class PostgresStore(SQLStore):
    """Store on PostgreSQL through psycopg 3."""

    dialect_name = "postgresql"
    autocommit_reads = True

    def __init__(self, url: str, prefix: str = "durable_", engine_options: dict[str, Any] | None = None) -> None:
        options: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10}
        options.update(engine_options or {})
        super().__init__(sa.create_engine(url, **options), prefix)

    def _insert(self, table: sa.Table) -> Any:
        return postgresql.insert(table)

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
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            row = conn.execute(
                sa.text(
                    f"WITH l AS MATERIALIZED (SELECT pg_try_advisory_lock({_KEY}) AS locked), "
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
        if record.executions == 1:
            return lease, Execution(record, {})  # the first execution: no checkpoint can exist
        try:
            steps = conn.execute(self._q_steps, {"p_wid": workflow_id})
            conn.commit()
            return lease, Execution(record, {r.step_id: self._step(r) for r in steps})
        except BaseException:
            self.release(lease)
            raise

    def finish(self, lease: Lease, status: WorkflowStatus, output: str | None, error: str | None, now: float) -> None:
        """Record the end and release the lock in one statement.

        The unlock reads the UPDATE's result, so it runs after the row is updated and before the
        commit; whoever takes the lock next waits on the row lock until the commit, then sees the
        workflow finished.
        """
        assert isinstance(lease, SQLLease)
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

    def acquire(self, workflow_id: str) -> Lease | None:
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
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
