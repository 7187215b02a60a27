"""Celery's eager mode (``task_always_eager``, common in Django test settings): workflows run in-process.

A start runs the workflow until it finishes or waits; ``durable.send`` runs the woken workflow
before it returns; a timer fires when ``DurableClock.advance`` skips to it. Real SQLite store, no
broker, no worker: that is what eager mode is for.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_durable import Durable, WorkflowStatus
from celery_durable.testing import DurableClock

_apps = itertools.count()


@pytest.fixture(params=[False, True], ids=["plain", "propagates"])
def eager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    app = Celery(f"eager{next(_apps)}", broker="memory://", set_as_current=False)
    app.conf.update(task_always_eager=True, task_eager_propagates=request.param)
    durable = Durable(app, f"sqlite:///{tmp_path}/eager.sqlite3", sweep_interval=None)
    calls: list[str] = []

    @durable.step()
    def reserve(order: str) -> str:
        calls.append(order)
        return f"reserved {order}"

    @durable.workflow(name="eager.pay")
    def pay(order: str, timeout: float = 60) -> dict[str, Any]:
        reserved = reserve(order)
        status = durable.recv("paid", timeout=timeout)
        if status == "decline":
            raise ValueError(f"payment of {order} declined")
        return {"reserved": reserved, "status": status}

    @durable.workflow(name="eager.relay")
    def relay(target: str) -> str:
        durable.send(target, "paid", topic="paid")  # runs the target after this execution, not inside it
        return "relayed"

    @durable.workflow(name="eager.quick")
    def quick(x: int) -> int:
        return x * 10

    class Env:
        pass

    env = Env()
    env.app, env.durable, env.calls = app, durable, calls  # type: ignore[attr-defined]
    env.pay, env.relay, env.quick = pay, relay, quick  # type: ignore[attr-defined]
    yield env
    durable.close()


def test_a_workflow_that_does_not_wait_finishes_inside_delay(eager: Any) -> None:
    result = eager.quick.delay(4)
    assert result.state == "SUCCESS" and result.get(timeout=1) == 40


def test_the_result_travels_as_a_plain_async_result(eager: Any) -> None:
    import pickle

    from celery.result import AsyncResult

    result = eager.quick.delay(5)
    copy = pickle.loads(pickle.dumps(result))
    assert type(copy) is AsyncResult and copy.id == result.id


def test_a_waiting_workflow_resumes_inside_send(eager: Any) -> None:
    result = eager.pay.delay("o-1")
    assert result.state == "WAITING" and eager.calls == ["o-1"]
    eager.durable.send(result.id, "paid", topic="paid")
    assert result.state == "SUCCESS"
    assert result.get(timeout=1) == {"reserved": "reserved o-1", "status": "paid"}
    assert eager.calls == ["o-1"], "the finished step was replayed, not run again"


def test_a_send_from_a_workflow_runs_the_woken_one_after_it(eager: Any) -> None:
    waiting = eager.pay.delay("o-2")
    relay = eager.relay.delay(waiting.id)
    assert relay.get(timeout=1) == "relayed"
    assert waiting.get(timeout=1)["status"] == "paid"


def test_a_failing_workflow_raises_from_get_not_from_delay(eager: Any) -> None:
    result = eager.pay.delay("o-3")
    eager.durable.send(result.id, "decline", topic="paid")
    assert result.state == "FAILURE"
    with pytest.raises(ValueError, match="payment of o-3 declined"):
        result.get(timeout=1)


def test_timers_fire_when_the_clock_skips_to_them(eager: Any) -> None:
    result = eager.pay.delay("o-4", timeout=3600)
    handle = eager.durable.handle(result.id)
    assert handle.status() == WorkflowStatus.WAITING
    clock = DurableClock(eager.durable)
    clock.advance(1800)
    assert handle.status() == WorkflowStatus.WAITING, "half the timeout is not the timeout"
    clock.advance(1800)
    assert result.get(timeout=1) == {"reserved": "reserved o-4", "status": None}
