"""A task system in threads for race tests: executors take wake-ups from a queue and run them."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from celery_durable import core
from celery_durable.store import Dispatch


class Executors:
    """Threads that execute one workflow's wake-ups (as several worker processes would) until it ends.

    ``results`` gets the final outcome (Finished) or any outcome that is not a wait, a stale or a busy
    message; ``executions`` counts the executions that ran the body.
    """

    def __init__(self, engines: list[core.Engine], wakeups: queue.Queue[Dispatch | None], body: Callable[..., Any]) -> None:
        self.engines, self.wakeups, self.body = engines, wakeups, body
        self.results: list[Any] = []
        self.executions = 0
        self.threads = [threading.Thread(target=self._run, args=(e,)) for e in engines]

    def _run(self, engine: core.Engine) -> None:
        while True:
            dispatch = self.wakeups.get()
            if dispatch is None:
                return
            outcome = engine.execute(dispatch.workflow_id, dispatch.ticket, "body", self.body)
            self.executions += not isinstance(outcome, (core.Stale, core.Busy))
            if isinstance(outcome, core.Busy):
                self.wakeups.put(dispatch)  # another executor holds it: try again
            elif not isinstance(outcome, (core.Waiting, core.Stale)):
                self.results.append(outcome)
                for _ in self.engines:
                    self.wakeups.put(None)

    def run_with(self, senders: list[threading.Thread]) -> Any:
        """Run the executors and *senders* to the end; return the workflow's value (it must finish)."""
        threads = [*self.threads, *senders]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "the workflow never finished: a wake-up was lost"
        (outcome,) = self.results
        assert isinstance(outcome, core.Finished), outcome
        return outcome.value
