"""SQLite backend, the embedded default: engine set-up and locks. Every query lives in ``sql.py``.

SQLite serialises writers itself; worker processes on one machine share the file.
Execution lock: ``flock`` on a per-workflow lock file beside the database. The kernel
drops a ``flock`` when the process holding it dies, so a ``kill -9``'d worker never keeps
a workflow locked. (An SQLite database must be on a local disk for this, as SQLite itself
requires for its own locking.)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from ..errors import ConfigurationError
from .base import Lease
from .records import Dispatch, WorkflowStatus
from .sql import SQLLease, SQLStore
from .transient import is_transient_sqlite


class SQLiteStore(SQLStore):
    """Store in an SQLite file."""


    def __init__(self, url: str, prefix: str = "durable_", engine_options: dict[str, Any] | None = None) -> None:
        parsed = sa.make_url(url)
        path = parsed.database
        if not path or path == ":memory:" or parsed.query.get("mode") == "memory":
            raise ConfigurationError(
                f"SQLite URL {url!r} names an in-memory database, which worker processes cannot share; "
                "use a file, e.g. sqlite:///celery_durable.sqlite3"
            )
        path = os.path.abspath(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.lock_dir = path + "-locks"
        os.makedirs(self.lock_dir, exist_ok=True)
        options: dict[str, Any] = {"connect_args": {"timeout": 60, "check_same_thread": False}}
        options.update(engine_options or {})
        engine = sa.create_engine(parsed.set(database=path), **options)
        sa.event.listen(engine, "connect", _on_connect)
        sa.event.listen(engine, "begin", _on_begin)
        super().__init__(engine, prefix)

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient_sqlite(exc)

    def _insert(self, table: sa.Table) -> Any:
        return sqlite.insert(table)

    def _lock_path(self, workflow_id: str) -> str:
        digest = hashlib.sha256(f"{self.prefix}{workflow_id}".encode()).hexdigest()[:40]
        return os.path.join(self.lock_dir, digest)

    def acquire(self, workflow_id: str) -> Lease | None:
        fd = os.open(self._lock_path(workflow_id), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # flock (not fcntl/POSIX locks): owned by this open file, so two threads of one
            # process exclude each other too, and released when the process dies.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return SQLLease(workflow_id, self.engine.connect(), fd)

    def finish(
        self, lease: Lease, status: WorkflowStatus, output: str | None, error: str | None, now: float
    ) -> list[Dispatch]:
        wakeups = super().finish(lease, status, output, error, now)
        assert isinstance(lease, SQLLease)
        lease.finished = True
        return wakeups

    def release(self, lease: Lease) -> None:
        assert isinstance(lease, SQLLease)
        fd, lease.handle = lease.handle, None
        if fd is None:
            return  # released already: its descriptor number may now hold another lease's lock
        self._keep_history(lease)
        if lease.finished:
            # A finished workflow never runs again, so its lock file can go. Unlinking while we
            # hold the flock is safe: a process that opened the old file and locks it after us
            # finds the workflow finished and does nothing.
            try:
                os.unlink(self._lock_path(lease.workflow_id))
            except OSError:
                pass
        try:
            if lease.conn.in_transaction():
                lease.conn.rollback()
            lease.conn.close()
        except Exception:
            pass
        finally:
            os.close(fd)  # closing the only descriptor drops the flock


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN: pysqlite's own implicit BEGIN is DEFERRED
    # and is not emitted before SELECTs, which breaks read-then-write transactions.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer and the writer never blocks readers, across processes.
    cursor.execute("PRAGMA journal_mode=WAL")
    # Wait up to 60 s for another process's write lock instead of failing with "database is locked".
    cursor.execute("PRAGMA busy_timeout=60000")
    # NORMAL is crash-safe in WAL mode for process crashes (kill -9); only an OS crash or
    # power loss can drop the last commits. FULL would fsync on every commit.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _on_begin(conn: sa.Connection) -> None:
    # IMMEDIATE takes the write lock at BEGIN: a DEFERRED transaction that reads and then
    # writes can fail with SQLITE_BUSY on upgrade without waiting for busy_timeout. Taking the
    # lock up front also serialises every transaction that decides to wait against every send.
    conn.exec_driver_sql("BEGIN IMMEDIATE")
