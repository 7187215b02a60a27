"""Timers kept for a grace before they are published (celery_durable/timers.py)."""

from __future__ import annotations

import time

from celery_durable.store import Dispatch
from celery_durable.timers import DeferredTimers


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:  # type: ignore[operator]
        time.sleep(0.01)


def test_a_timer_whose_wait_ended_is_never_published_and_one_still_waiting_is() -> None:
    published: list[Dispatch] = []
    waiting = {"still": True, "ended": False}
    timers = DeferredTimers(0.05, lambda d: waiting[d.workflow_id], published.append)
    timers.defer(Dispatch("still", "wf", None, 3, countdown=30.0))
    timers.defer(Dispatch("ended", "wf", None, 7, countdown=30.0))
    _wait_for(lambda: timers.published + timers.dropped == 2)
    assert [d.workflow_id for d in published] == ["still"]
    assert published[0].ticket == 3 and 29.0 < published[0].countdown < 30.0, "the countdown left, not the whole"
    assert timers.dropped == 1 and timers.pending() == 0


def test_flush_publishes_every_kept_timer_and_an_unknown_state_publishes() -> None:
    published: list[Dispatch] = []

    def unknown(_: Dispatch) -> bool:
        raise ConnectionError("store down")

    timers = DeferredTimers(3600, unknown, published.append)
    timers.defer(Dispatch("a", "wf", None, 1, countdown=7200.0))
    timers.flush()  # a stopping worker publishes what it kept
    assert [d.workflow_id for d in published] == ["a"] and timers.pending() == 0
    timers = DeferredTimers(0.01, unknown, published.append)
    timers.defer(Dispatch("b", "wf", None, 1, countdown=60.0))
    _wait_for(lambda: timers.published == 1)
    assert published[-1].workflow_id == "b", "when the store cannot say, publish: stale is a no-op, missing is late"
