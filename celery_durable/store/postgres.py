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
