"""One LISTEN connection per process for every ``handle.result()`` waiting on a workflow's end.

A finishing execution NOTIFYs its workflow's finish channel (see ``pg_fast.py``). Each waiter used
to LISTEN on a pooled connection of its own for the length of its wait; now a daemon thread holds
one connection outside the pool, LISTENs on the channels that have waiters and sets their events.

Never the only way a wait ends: a waiter still re-reads the workflow after each pause of at most its
``poll_interval``, so a NOTIFY lost with the connection (a database restart), or sent before LISTEN
took effect, costs at most that pause. The listener is created on first use, again in a forked
child (its parent's thread and connection are not its own), and reconnects after a lost connection.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any

import psycopg

log = logging.getLogger("celery_durable")

#: How long a subscriber waits for its LISTEN to take effect before it relies on polling alone.
SUBSCRIBE_TIMEOUT = 2.0


class FinishListener:
    """A daemon thread and one connection that LISTEN for workflow ends and wake this process's waiters."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._acks: list[tuple[str, threading.Event]] = []
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        #: Connections opened so far (1 unless the connection was lost): for tests and diagnostics.
        self.connections_opened = 0
        self._thread = threading.Thread(target=self._run, name="celery-durable-listen", daemon=True)
        self._thread.start()

    def subscribe(self, channel: str) -> threading.Event:
        """Register a waiter on *channel*; return once LISTEN is in effect (or after SUBSCRIBE_TIMEOUT).

        The returned event is set on each NOTIFY of the channel and whenever the connection is lost.
        """
        event, ack = threading.Event(), threading.Event()
        with self._lock:
            self._waiters.setdefault(channel, set()).add(event)
            self._acks.append((channel, ack))
        self._wake()
        ack.wait(SUBSCRIBE_TIMEOUT)
        return event

    def unsubscribe(self, channel: str, event: threading.Event) -> None:
        with self._lock:
            waiters = self._waiters.get(channel)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[channel]
        self._wake()  # the thread UNLISTENs channels nobody waits on

    def close(self) -> None:
        self._closed = True
        self._wake()
        self._thread.join(timeout=5)

    # -- the thread ----------------------------------------------------------------------------------
    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _notify(self, channel: str) -> None:
        with self._lock:
            for event in self._waiters.get(channel, ()):
                event.set()

    def _wake_everyone(self) -> None:
        with self._lock:
            for waiters in self._waiters.values():
                for event in waiters:
                    event.set()

    def _run(self) -> None:
        backoff = 0.1
        conn: psycopg.Connection[Any] | None = None
        listening: set[str] = set()
        try:
            while not self._closed:
                try:
                    if conn is None:
                        conn = self._connect()
                        self.connections_opened += 1
                        conn.add_notify_handler(lambda n: self._notify(n.channel))
                        listening = set()
                    self._reconcile(conn, listening)
                    backoff = 0.1
                    readable, _, _ = select.select([conn.pgconn.socket, self._wake_r], [], [], 30)
                    if self._wake_r in readable:
                        os.read(self._wake_r, 4096)
                    if conn.pgconn.socket in readable:
                        conn.pgconn.consume_input()
                        while (n := conn.pgconn.notifies()) is not None:
                            self._notify(n.relname.decode())
                        if conn.closed or conn.pgconn.status != psycopg.pq.ConnStatus.OK:
                            raise psycopg.OperationalError("the listener's connection is closed")
                except Exception as exc:
                    if self._closed:
                        break
                    log.info("celery_durable: result() listener lost its connection (%r); reconnecting", exc)
                    if conn is not None:
                        try:
                            conn.close()
                        except Exception:
                            pass
                    conn = None
                    self._wake_everyone()  # a NOTIFY may have been lost: every waiter reads again
                    # Wait before reconnecting, unless closed meanwhile.
                    select.select([self._wake_r], [], [], backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _reconcile(self, conn: psycopg.Connection[Any], listening: set[str]) -> None:
        """LISTEN on channels with waiters, UNLISTEN the others, then acknowledge the subscriptions."""
        with self._lock:
            wanted = set(self._waiters)
            acks = len(self._acks)  # subscriptions made before this snapshot; their channels are in it
        for channel in sorted(wanted - listening):
            conn.execute(f'LISTEN "{channel}"')
            listening.add(channel)
        for channel in sorted(listening - wanted):
            conn.execute(f'UNLISTEN "{channel}"')
            listening.discard(channel)
        with self._lock:
            done, self._acks = self._acks[:acks], self._acks[acks:]
        for _, ack in done:
            ack.set()
