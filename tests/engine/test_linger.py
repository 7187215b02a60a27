"""A recv that lingers (``recv_linger``) racing with sends: nothing lost, nothing received twice.

Store.linger_recv keeps the workflow RUNNING and the lock held while it waits in place; a sender then
stores the message and publishes no wake-up. Whatever the interleaving, every message must be received
exactly once and in order, either in place or through the normal wait and its wake-up.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from typing import Any

from celery_durable import core
from celery_durable.config import DurableConfig
from celery_durable.serialization import JSONSerializer
from celery_durable.store import Dispatch, Store, WorkflowStatus, open_store
from tests.engine.race import Executors
from tests.store.conftest import store_url


def _loop(total: int, timeout: float | None) -> Any:
    def body() -> list[int]:
        ctx = core.require_context("test")
        got: list[int] = []
        while len(got) < total:
            _, value = ctx.recv(("v",), timeout)
            if value is not core.TIMED_OUT:
                got.append(value)
        return got

    return body


def test_lingering_recv_racing_with_sends_loses_and_repeats_nothing(store: Store) -> None:
    total = 60
    rng = random.Random(7)
    stores = [open_store(store_url(store), store.prefix) for _ in range(2)]  # type: ignore[attr-defined]
    wakeups: queue.Queue[Dispatch | None] = queue.Queue()
    config = DurableConfig(recv_linger=0.05)
    engines = [core.Engine(s, JSONSerializer(), config, wakeups.put) for s in stores]
    body = _loop(total, None)
    executors = Executors(engines, wakeups, body)
    try:
        record, _ = store.create_workflow("wf", "body", JSONSerializer().dumps({"args": [], "kwargs": {}}), None, 1.0)
        wakeups.put(Dispatch("wf", "body", None, record.ticket))

        def send() -> None:
            own = open_store(store_url(store), store.prefix)  # type: ignore[attr-defined]
            try:
                for i in range(total):
                    # within the linger, around its end, and well after it
                    time.sleep(rng.choice([0.0, 0.001, 0.01, 0.045, 0.05, 0.055, 0.08]))
                    for wakeup in own.send("wf", "v", str(i), time.time()).wakeups:
                        wakeups.put(wakeup)
            finally:
                own.close()

        got = executors.run_with([threading.Thread(target=send)])
        assert got == list(range(total)), "every message exactly once, in order"
        assert [m.consumed for m in store.list_messages("wf")] == [True] * total
        final = store.get_workflow("wf")
        assert final is not None and final.status == WorkflowStatus.SUCCESS
        if store.engine.dialect.name == "postgresql":  # type: ignore[attr-defined]
            assert executors.executions < total, "messages within the linger continue in place, without a wake-up"
    finally:
        for s in stores:
            s.close()


def test_a_linger_longer_than_the_timeout_times_out_as_a_plain_recv(store: Store) -> None:
    engine = core.Engine(store, JSONSerializer(), DurableConfig(recv_linger=5.0), lambda d: None)

    def body() -> str:
        _, value = core.require_context("test").recv(("v",), 0.05)
        return "timed out" if value is core.TIMED_OUT else value

    record, _ = store.create_workflow("wf", "body", JSONSerializer().dumps({"args": [], "kwargs": {}}), None, 1.0)
    started = time.monotonic()
    outcome = engine.execute("wf", record.ticket, "body", body)
    assert time.monotonic() - started < 4.0, "the linger is capped by the recv's own timeout"
    assert isinstance(outcome, core.Waiting)  # its timer (a 50 ms deadline) then ends it as timed out


class _CountingLingers:
    """Counts the store's linger_recv calls (the real store still does the work)."""

    def __init__(self, store: Store) -> None:
        self.calls = 0
        self.caught = 0
        real = store.linger_recv

        def linger_recv(*args: Any) -> Any:
            self.calls += 1
            step = real(*args)
            self.caught += step is not None
            return step

        store.linger_recv = linger_recv  # type: ignore[method-assign]


def _start_loop(store: Store, engine: core.Engine, total: int) -> None:
    record, _ = store.create_workflow("wf", "body", JSONSerializer().dumps({"args": [], "kwargs": {}}), None, time.time())
    outcome = engine.execute("wf", record.ticket, "body", _loop(total, 30.0))
    assert isinstance(outcome, core.Waiting), "nothing was sent yet: the first recv records its wait"


def test_adaptive_linger_keeps_a_fast_conversation_in_place(store: Store) -> None:
    """A reply within adaptive_linger of the wait: the next recvs wait in place (PostgreSQL)."""
    spy = _CountingLingers(store)
    engine = core.Engine(store, JSONSerializer(), DurableConfig(adaptive_linger=5.0), lambda d: None)
    _start_loop(store, engine, 4)
    assert spy.calls == 0, "a workflow that never waited before does not linger in its first recv"
    wakeups = store.send("wf", "v", "0", time.time()).wakeups  # answered at once: a fast reply
    assert len(wakeups) == 1

    def replies() -> None:
        own = open_store(store_url(store), store.prefix)  # type: ignore[attr-defined]
        try:
            for i in (1, 2, 3):
                time.sleep(0.05)
                own.send("wf", "v", str(i), time.time())
        finally:
            own.close()

    sender = threading.Thread(target=replies)
    sender.start()
    outcome = engine.execute("wf", wakeups[0].ticket, "body", _loop(4, 30.0))
    sender.join()
    final = store.get_workflow("wf")
    assert final is not None
    if store.engine.dialect.name == "postgresql":  # type: ignore[attr-defined]
        assert isinstance(outcome, core.Finished) and outcome.value == [0, 1, 2, 3]
        assert spy.caught == 3, "each later reply was taken in place"
        assert final.executions == 2, "the start and one wake-up: no further broker hop or replay"
    else:  # SQLite cannot be told of a message: the wait is recorded as usual
        assert isinstance(outcome, core.Waiting) and spy.caught == 0


def test_adaptive_linger_stays_off_while_replies_are_slow(store: Store) -> None:
    spy = _CountingLingers(store)
    engine = core.Engine(store, JSONSerializer(), DurableConfig(adaptive_linger=0.1), lambda d: None)
    _start_loop(store, engine, 2)
    time.sleep(0.3)  # a reply later than adaptive_linger after the wait began
    wakeups = store.send("wf", "v", "0", time.time()).wakeups
    outcome = engine.execute("wf", wakeups[0].ticket, "body", _loop(2, 30.0))
    assert isinstance(outcome, core.Waiting), "the second recv found nothing and recorded its wait"
    assert spy.calls == 0, "a slow reply turns lingering off: the slot is freed at once"


def test_a_linger_that_catches_nothing_turns_adaptive_lingering_off(store: Store) -> None:
    spy = _CountingLingers(store)
    engine = core.Engine(store, JSONSerializer(), DurableConfig(adaptive_linger=1.0), lambda d: None)
    _start_loop(store, engine, 3)
    wakeups = store.send("wf", "v", "0", time.time()).wakeups  # fast: the next recv lingers...
    outcome = engine.execute("wf", wakeups[0].ticket, "body", _loop(3, 30.0))
    assert isinstance(outcome, core.Waiting), "...but nothing came within the linger: the wait is recorded"
    assert (spy.calls, spy.caught) == (1, 0), "one linger (both stores ask; SQLite returns at once)"
    time.sleep(1.2)
    wakeups = store.send("wf", "v", "1", time.time()).wakeups  # later than the linger: a slow reply
    outcome = engine.execute("wf", wakeups[0].ticket, "body", _loop(3, 30.0))
    assert isinstance(outcome, core.Waiting)
    assert spy.calls == 1, "after a slow reply the next recv leaves at once"


def test_the_recv_an_execution_was_woken_for_takes_its_message_without_the_wait_path(store: Store) -> None:
    """take_recv: one statement for the woken recv (PostgreSQL); FIFO kept; nothing found -> the normal wait."""
    calls: list[bool] = []
    real = store.take_recv

    def take_recv(*args: Any) -> Any:
        step = real(*args)
        calls.append(step is not None)
        return step

    store.take_recv = take_recv  # type: ignore[method-assign]
    engine = core.Engine(store, JSONSerializer(), DurableConfig(adaptive_linger=0), lambda d: None)

    def body() -> list[Any]:
        ctx = core.require_context("test")
        got = [ctx.recv(("v",), 30.0)[1] for _ in range(3)]
        return ["<timed out>" if value is core.TIMED_OUT else value for value in got]

    record, _ = store.create_workflow("wf", "body", JSONSerializer().dumps({"args": [], "kwargs": {}}), None, time.time())
    assert isinstance(engine.execute("wf", record.ticket, "body", body), core.Waiting)
    assert calls == [], "the first execution was not woken: no take"
    wakeups = store.send("wf", "v", '"a"', time.time()).wakeups
    store.send("wf", "v", '"b"', time.time())
    outcome = engine.execute("wf", wakeups[0].ticket, "body", body)
    assert isinstance(outcome, core.Waiting), "two messages for three recvs: the third waits"
    postgres = store.engine.dialect.name == "postgresql"  # type: ignore[attr-defined]
    assert calls == ([True] if postgres else [False]), "only the woken recv (step 0) tries the take"
    record = store.get_workflow("wf")
    assert record is not None and record.status == WorkflowStatus.WAITING and record.wait_step == 2
    # A timer wake-up (no message) finds nothing to take and records the timeout through the wait path.
    store.shift_deadlines(60.0)
    outcome = engine.execute("wf", record.ticket, "body", body)
    assert isinstance(outcome, core.Finished) and outcome.value == ["a", "b", "<timed out>"]
    assert calls == ([True, False] if postgres else [False, False])
    assert [s.kind for s in store.list_steps("wf")] == ["recv", "recv", "recv"]
