"""Timers armed after a grace: a wait that a message ends early leaves no countdown message behind.

A wait within the horizon needs a timer message (a Celery countdown) in case nothing else wakes it.
Published at once, each such message is held by a worker (and in Redis ``unacked``) until it is due,
even when a message ended the wait milliseconds later: a workflow answering 500 requests left 500
stale timers held. Here the timer is kept in this process for ``timer_grace`` seconds first, and
published (with what is left of its countdown) only if the workflow still waits with that ticket.
So only waits that outlive the grace cost a held message.

What it costs: a worker process that dies during the grace loses the timers it kept. The store still
says the timer is armed (``timer_due``), so the sweep publishes it again once it is overdue by
``recovery_grace``: such a wait times out late, never not at all. Nothing here runs a workflow or
writes to the store; a stale or duplicate publish is a no-op (tickets).
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import os
import threading
import time
from collections.abc import Callable

from .store import Dispatch

log = logging.getLogger("celery_durable")


class DeferredTimers:
    """Keeps timer dispatches for *grace* seconds, then publishes those whose workflow still waits."""

    def __init__(
        self,
        grace: float,
        still_waiting: Callable[[Dispatch], bool],
        publish: Callable[[Dispatch], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace = grace
        self._still_waiting = still_waiting
        self._publish = publish
        self._clock = clock
        self._heap: list[tuple[float, int, float, Dispatch]] = []  # (check at, order, kept at, dispatch)
        self._order = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0
        #: Counters for benchmarks and tests: timers published after the grace, and dropped as stale.
        self.published = 0
        self.dropped = 0

    def defer(self, dispatch: Dispatch) -> None:
        """Keep *dispatch* (a timer with a countdown longer than the grace) and decide after the grace."""
        now = self._clock()
        with self._cond:
            self._order += 1
            heapq.heappush(self._heap, (now + self.grace, self._order, now, dispatch))
            if self._thread is None or self._pid != os.getpid():  # first use in this (forked) process
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, name="celery-durable-timers", daemon=True)
                self._thread.start()
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def flush(self) -> None:
        """Publish every kept timer now, with what is left of its countdown (the process is stopping)."""
        with self._cond:
            kept, self._heap = self._heap, []
        now = self._clock()
        for _, _, kept_at, dispatch in kept:
            self._send(dispatch, now - kept_at)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > self._clock():
                    self._cond.wait(None if not self._heap else self._heap[0][0] - self._clock())
                _, _, kept_at, dispatch = heapq.heappop(self._heap)
            try:
                waiting = self._still_waiting(dispatch)
            except Exception:
                waiting = True  # cannot tell: publish (a stale timer is a no-op, a missing one is late)
            if waiting:
                self._send(dispatch, self._clock() - kept_at)
            else:
                self.dropped += 1

    def _send(self, dispatch: Dispatch, elapsed: float) -> None:
        try:
            self._publish(dataclasses.replace(dispatch, countdown=max(0.0, dispatch.countdown - elapsed)))
            self.published += 1
        except Exception:
            log.warning("could not publish the timer of %s; the sweep will", dispatch.workflow_id, exc_info=True)
