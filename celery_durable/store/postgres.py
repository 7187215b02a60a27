"""PostgreSQL (psycopg 3) backend: engine set-up and locks. Every query lives in ``sql.py``.

Execution lock: a session-level advisory lock taken on the connection the execution then
uses for all its writes. PostgreSQL releases it when that connection closes, and the
kernel closes the connection when the worker process dies (``kill -9`` included), so a
dead holder never blocks the workflow; the next delivery or the sweep takes over. A
holder whose connection broke (database restart) cannot write any more either: its
connection is gone, so the lock and the right to write end together.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .base import Lease
from .pg_fast import PgFastPath
from .pg_listen import FinishListener
from .records import Dispatch, SendResult, StepRecord
from .sql import SQLStore
from .sql_lease import SQLLease
from .sql_messages import no_such_destination
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
        # No pre-ping round trip per checkout: _drop_if_closed checks the socket locally instead.
        options: dict[str, Any] = {"pool_pre_ping": False, "pool_size": 5, "max_overflow": 10}
        options.update(engine_options or {})
        isolation = options.pop("isolation_level", "READ COMMITTED")
        # One pool per process. Its connections are AUTOCOMMIT, as executions want them (a lone
        # statement is one round trip; their transactions send BEGIN/COMMIT themselves); `engine`,
        # for SQLAlchemy's own transactions, borrows the same connections in *isolation*. psycopg 3
        # switches that on the client (the next BEGIN carries it), so the switch costs no round trip.
        self.exec_engine = sa.create_engine(url, **{**options, "isolation_level": "AUTOCOMMIT"})
        sa.event.listen(self.exec_engine, "checkout", _drop_if_closed)
        super().__init__(self.exec_engine.execution_options(isolation_level=isolation), prefix)
        #: durability="relaxed": step checkpoints commit without waiting for their WAL flush.
        self.relaxed = durability == "relaxed"
        self._connect_args: dict[str, Any] = dict(options.get("connect_args") or {})
        self._listener: FinishListener | None = None
        self._listener_lock = threading.Lock()
        self._fast_statements()

    def after_fork(self) -> None:
        super().after_fork()  # the one pool: `engine` shares exec_engine's
        self._listener = None  # the parent's thread is not ours; its connection is left alone

    def close(self) -> None:
        super().close()
        listener, self._listener = self._listener, None
        if listener is not None and listener.pid == os.getpid():
            listener.close()

    def finish_listener(self) -> FinishListener:
        """This process's listener for workflow ends (see pg_listen.py), started on first use."""
        with self._listener_lock:
            listener = self._listener
            if listener is None or listener.pid != os.getpid():
                listener = self._listener = FinishListener(self._listen_connection)
            return listener

    def _listen_connection(self) -> psycopg.Connection[Any]:
        """A connection outside the pool (it listens for as long as the process lives), same settings."""
        cargs, cparams = self.exec_engine.dialect.create_connect_args(self.exec_engine.url)
        return psycopg.connect(*cargs, **{**cparams, **self._connect_args, "autocommit": True})

    @contextmanager
    def watch_finish(self, workflow_id: str) -> Iterator[Callable[[float], None]]:
        """Wait for the end of *workflow_id* through this process's one listener connection (see
        ``Store.watch_finish``); the waiter still re-reads after every pause, whatever it hears."""
        channel = self.channel(workflow_id, "f")
        listener = self.finish_listener()
        event = listener.subscribe(channel)

        def wait(seconds: float) -> None:
            event.wait(max(0.0, seconds))
            event.clear()

        try:
            yield wait
        finally:
            listener.unsubscribe(channel, event)

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient_postgres(exc)

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
        params = {
            "k": self._key("m", destination),
            "dest": destination,
            "topic": topic,
            "payload": payload,
            "ikey": idempotency_key,
            "now": now,
            "chan": self.channel(destination),
        }
        with self._raw_connect() as raw:
            row = raw.execute(self._fq_send, params).fetchone()
            PgFastPath.raw_statements += 1
            assert row is not None
            found, seq, ticket, name, queue, _ = row
            if not found:
                raise no_such_destination(destination)
            if seq is None:  # the idempotency key was used before
                first = raw.execute(self._fq_first_seq, params).fetchone()
                assert first is not None
                return SendResult(int(first[0]), False)
        wakeups = () if ticket is None else (Dispatch(destination, name, queue, int(ticket)),)
        return SendResult(int(seq), True, wakeups)

    @contextmanager
    def _connect(self) -> Iterator[sa.Connection]:
        """Lone statements of producers use the executions' AUTOCOMMIT pool: no isolation switch per checkout."""
        conn = self.exec_engine.connect()
        try:
            yield conn
        finally:
            conn.close()

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


def _drop_if_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Refuse a pooled connection whose server closed it (a database restart), without a round trip.

    An idle connection's socket has nothing to read unless the server sent something: an EOF (the
    server closed it: restart, ``pg_terminate_backend``, idle timeout) or, rarely, an asynchronous
    notice. Either way the connection is discarded and the pool opens a new one (SQLAlchemy retries
    the checkout on ``DisconnectionError``). This replaces ``pool_pre_ping``, which paid a round trip
    on every checkout (every start, send and execution) for the same protection; a connection that
    dies while in use fails its statement as before (transient: retried).
    """
    pgconn = getattr(dbapi_connection, "pgconn", None)
    if pgconn is None or dbapi_connection.closed:
        raise sa.exc.DisconnectionError("connection closed")
    try:
        readable, _, _ = select.select([pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.OperationalError) as exc:
        raise sa.exc.DisconnectionError(str(exc)) from exc
    if readable:
        raise sa.exc.DisconnectionError("the server closed the connection or sent something while it was idle")
