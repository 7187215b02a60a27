"""The per-process checkpoint cache (store/step_cache.py) never hands an execution a wrong history.

Several store instances on one database play several worker processes, each with its own cache.
Executions of one workflow hop between them at random, and operators cancel, resume (dropping
checkpoints) and the workflow continues as new in between; every execution must see exactly the
checkpoints in the database.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from celery_durable import core
from celery_durable.config import DurableConfig
from celery_durable.serialization import JSONSerializer
from celery_durable.store import Store, WorkflowStatus, open_store
from tests.store.conftest import store_url


def _engines(store: Store, n: int) -> list[core.Engine]:
    others = [open_store(store_url(store), store.prefix) for _ in range(n - 1)]  # type: ignore[attr-defined]
    return [core.Engine(s, JSONSerializer(), DurableConfig(), lambda d: None) for s in [store, *others]]


def _body(seen: list[list[Any]]) -> Any:
    def body(count: int) -> int:
        ctx = core.require_context("test")
        got = []
        for _ in range(count):
            _, value = ctx.recv(("v",), None)
            got.append(value)
            ctx.run_step("echo", lambda v: v, (value,), {})
        seen.append(list(got))
        return sum(got)

    return body


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_executions_hopping_between_processes_see_the_stored_history(store: Store, seed: int) -> None:
    rng = random.Random(seed)
    engines = _engines(store, 3)
    seen: list[list[Any]] = []
    body = _body(seen)
    count = 40
    try:
        inputs = JSONSerializer().dumps({"args": [count], "kwargs": {}})
        record, _ = store.create_workflow("wf", "body", inputs, None, 1.0)
        assert isinstance(rng.choice(engines).execute("wf", record.ticket, "body", body), core.Waiting)
        sent: list[int] = []
        outcome: core.Outcome | None = None
        for i in range(count):
            value = rng.randrange(1000)
            sent.append(value)
            (wakeup,) = store.send("wf", "v", str(value), 2.0 + i).wakeups
            outcome = rng.choice(engines).execute("wf", wakeup.ticket, "body", body)
            # the history replayed so far is exactly what was sent so far
            assert seen[-1] == sent if isinstance(outcome, core.Finished) else True
        assert isinstance(outcome, core.Finished) and outcome.value == sum(sent)
        assert seen[-1] == sent
    finally:
        for e in engines[1:]:
            e.store.close()


def test_resume_that_drops_checkpoints_is_not_served_from_the_cache(store: Store) -> None:
    """A cached history, then cancel + resume from an earlier step: the next claim reads the database."""
    engine = _engines(store, 1)[0]
    seen: list[list[Any]] = []
    body = _body(seen)
    inputs = JSONSerializer().dumps({"args": [3], "kwargs": {}})
    record, _ = store.create_workflow("wf", "body", inputs, None, 1.0)
    assert isinstance(engine.execute("wf", record.ticket, "body", body), core.Waiting)
    (wakeup,) = store.send("wf", "v", "1", 2.0).wakeups
    assert isinstance(engine.execute("wf", wakeup.ticket, "body", body), core.Waiting)  # cached: steps 0, 1
    cancelled = store.cancel("wf", 3.0)
    assert cancelled is not None and cancelled.status == WorkflowStatus.CANCELLED
    _, dispatch = store.resume("wf", cancelled.ticket, 0, 4.0)  # drops every checkpoint, unconsumes "1"
    assert dispatch is not None
    assert isinstance(engine.execute("wf", dispatch.ticket, "body", body), core.Waiting)
    for value, t in ((5, 5.0), (7, 6.0)):
        (wakeup,) = store.send("wf", "v", str(value), t).wakeups
        outcome = engine.execute("wf", wakeup.ticket, "body", body)
    assert isinstance(outcome, core.Finished) and outcome.value == 1 + 5 + 7
    assert seen[-1] == [1, 5, 7]
