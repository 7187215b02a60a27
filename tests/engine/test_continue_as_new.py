"""``continue_as_new``: a new run with new inputs and an empty history, atomically, racing with sends."""

from __future__ import annotations

import queue
import threading
from typing import Any

from celery_durable import core
from celery_durable.config import DurableConfig
from celery_durable.serialization import JSONSerializer
from celery_durable.store import Dispatch, Store, WorkflowStatus, open_store
from tests.engine.race import Executors
from tests.store.conftest import store_url


def _loop(total: int, batch: int) -> Any:
    def body(received: list[int]) -> list[int]:
        ctx = core.require_context("test")
        got = list(received)
        for _ in range(batch):
            if len(got) == total:
                return got
            _, value = ctx.recv(("v",), None)
            got.append(value)
        ctx.continue_as_new((got,), {})
        raise AssertionError("continue_as_new returned")

    return body


def _start(store: Store, wid: str) -> int:
    record, _ = store.create_workflow(wid, "body", JSONSerializer().dumps({"args": [[]], "kwargs": {}}), None, 1.0)
    return record.ticket


def test_new_run_has_new_inputs_and_an_empty_history(store: Store) -> None:
    engine = core.Engine(store, JSONSerializer(), DurableConfig(), lambda d: None)
    body = _loop(total=4, batch=2)
    outcome = engine.execute("wf", _start(store, "wf"), "body", body)
    for value in range(4):
        assert isinstance(outcome, core.Waiting)
        (wakeup,) = store.send("wf", "v", str(value), 2.0 + value).wakeups
        outcome = engine.execute("wf", wakeup.ticket, "body", body)
        if value == 1:  # the first run received 0 and 1, then continued: a new run waits at step 0
            record = store.get_workflow("wf")
            assert record is not None and record.wait_step == 0
            assert JSONSerializer().loads(record.inputs) == {"args": [[0, 1]], "kwargs": {}}
            assert store.list_steps("wf") == []
            assert [m.consumed for m in store.list_messages("wf")] == []  # consumed ones went with the history
    assert isinstance(outcome, core.Finished) and outcome.value == [0, 1, 2, 3]


def test_continue_as_new_racing_with_sends_loses_and_repeats_nothing(store: Store) -> None:
    """Hammer: 3 sender threads, 2 executor threads (separate store instances, as separate processes),
    the workflow continuing as new every 3 messages. Every message is received exactly once, in order
    per sender."""
    senders, per_sender, batch = 3, 40, 3
    total = senders * per_sender
    stores = [open_store(store_url(store), store.prefix) for _ in range(2)]  # type: ignore[attr-defined]
    wakeups: queue.Queue[Dispatch | None] = queue.Queue()
    engines = [core.Engine(s, JSONSerializer(), DurableConfig(), wakeups.put) for s in stores]
    body = _loop(total, batch)
    executors = Executors(engines, wakeups, body)
    try:
        wakeups.put(Dispatch("wf", "body", None, _start(store, "wf")))

        def send(k: int) -> None:
            own = open_store(store_url(store), store.prefix)  # type: ignore[attr-defined]
            try:
                for i in range(per_sender):
                    for wakeup in own.send("wf", "v", str(k * 1000 + i), 2.0).wakeups:
                        wakeups.put(wakeup)
            finally:
                own.close()

        got = executors.run_with([threading.Thread(target=send, args=(k,)) for k in range(senders)])
        dupes = sorted({v for v in got if got.count(v) > 1})
        assert not dupes, f"received twice: {dupes}; got {got}"
        assert sorted(got) == sorted(k * 1000 + i for k in range(senders) for i in range(per_sender))
        for k in range(senders):
            mine = [v for v in got if v // 1000 == k]
            assert mine == sorted(mine), "per-sender FIFO order"
        record = store.get_workflow("wf")
        assert record is not None and record.status == WorkflowStatus.SUCCESS
    finally:
        for s in stores:
            s.close()
