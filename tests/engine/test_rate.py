"""Rate limits in the engine driven by hand (SQLite and PostgreSQL), with a fake clock.

As in test_features.py, each test plays the task system: it calls ``Engine.execute`` with the
ticket of the message the engine asked for, and moves the clock instead of sleeping.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from celery_durable import core, flow_rate, workflow_api
from celery_durable.config import DurableConfig
from celery_durable.errors import ConfigurationError
from celery_durable.retries import NO_RETRIES, RetryPolicy
from celery_durable.serialization import JSONSerializer
from celery_durable.store import Dispatch

from .test_features import Clock, start


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(store: Any, clock: Clock) -> core.Engine:
    published: list[Dispatch] = []
    return core.Engine(store, JSONSerializer(), DurableConfig(horizon=600), published.append, clock=clock, sleep=clock.sleep)


def limited_step(
    calls: list[Any], rate: str, rate_key: Any = None, policy: RetryPolicy = NO_RETRIES, fail: int = 0
) -> Callable[..., Any]:
    def call(customer: str = "") -> int:
        calls.append(customer)
        if len(calls) <= fail:
            raise ConnectionError("down")
        return len(calls)

    limit = flow_rate.declare("step", "call", call, rate, rate_key)
    return workflow_api.as_step(call, "call", policy, limit)


def next_turn(engine: core.Engine, limit: str = "step:call", key: str = "", interval: float = 60.0) -> float:
    """Take one more turn (as another worker would) and say when it was granted."""
    return engine.store.take_turn(limit, key, interval, engine.clock())


def test_a_call_over_the_rate_leaves_the_worker_and_keeps_its_turn(engine: core.Engine, clock: Clock) -> None:
    calls: list[Any] = []
    step = limited_step(calls, "1/m")
    t0 = clock.now
    first = engine.execute("a", start(engine, "a"), "body", lambda: step())
    assert isinstance(first, core.Finished) and calls == [""]

    second = engine.execute("b", start(engine, "b"), "body", lambda: step())
    assert isinstance(second, core.Waiting) and second.dispatch is not None
    assert second.dispatch.countdown == pytest.approx(60 - flow_rate.WAKE_AHEAD), "woken just before its turn"
    record = engine.store.get_workflow("b")
    assert (record.status, record.wait_kind, record.wait_step) == ("WAITING", "rate", 0)
    assert calls == [""] and clock.slept == []

    clock.now += 20  # woken early (a redelivery): it waits for what is left and takes no new turn
    early = engine.execute("b", second.dispatch.ticket, "body", lambda: step())
    assert isinstance(early, core.Waiting) and early.dispatch is not None
    assert early.dispatch.countdown == pytest.approx(40 - flow_rate.WAKE_AHEAD)

    clock.now += 40 - flow_rate.WAKE_AHEAD
    done = engine.execute("b", early.dispatch.ticket, "body", lambda: step())
    assert isinstance(done, core.Finished) and len(calls) == 2
    assert clock.slept == [pytest.approx(flow_rate.WAKE_AHEAD)], "the rest of the wait in place"
    (checkpoint,) = engine.store.list_steps("b")
    assert checkpoint.started_at == t0 + 60, "the step started at its turn"
    assert next_turn(engine) == t0 + 120, "b used the turn it reserved: the next one is after it"


def test_a_replayed_step_takes_no_turn(engine: core.Engine, clock: Clock) -> None:
    calls: list[Any] = []
    step = limited_step(calls, "1/m")

    def body() -> Any:
        value = step()
        core.require_context("test").sleep(5)
        return value

    t0 = clock.now
    waiting = engine.execute("a", start(engine, "a"), "body", body)
    assert isinstance(waiting, core.Waiting) and waiting.dispatch is not None
    clock.now += 5
    done = engine.execute("a", waiting.dispatch.ticket, "body", body)
    assert isinstance(done, core.Finished) and done.value == 1 and calls == [""]
    assert next_turn(engine) == t0 + 60, "only the first execution took a turn"


def test_a_wait_of_at_most_a_second_sleeps_in_place(engine: core.Engine, clock: Clock) -> None:
    calls: list[Any] = []
    step = limited_step(calls, "2/s")
    outcome = engine.execute("a", start(engine, "a"), "body", lambda: [step() for _ in range(4)])
    assert isinstance(outcome, core.Finished) and outcome.value == [1, 2, 3, 4]
    assert clock.slept == [0.5, 0.5, 0.5]
    starts = [s.started_at for s in engine.store.list_steps("a")]
    assert [b - a for a, b in itertools.pairwise(starts)] == [0.5, 0.5, 0.5]


def test_rate_key_gives_each_value_its_own_limit(engine: core.Engine, clock: Clock) -> None:
    calls: list[Any] = []
    step = limited_step(calls, "1/m", rate_key="customer")
    outcome = engine.execute("a", start(engine, "a"), "body", lambda: [step("x"), step(customer="y")])
    assert isinstance(outcome, core.Finished) and calls == ["x", "y"] and clock.slept == []
    blocked = engine.execute("b", start(engine, "b"), "body", lambda: step("x"))
    assert isinstance(blocked, core.Waiting), "x already had its turn this minute"
    assert next_turn(engine, key="y") == clock.now + 60
    assert next_turn(engine, key="z") == clock.now


def test_rate_key_may_be_a_callable(engine: core.Engine, clock: Clock) -> None:
    calls: list[Any] = []
    step = limited_step(calls, "1/h", rate_key=lambda customer="": customer.upper())
    outcome = engine.execute("a", start(engine, "a"), "body", lambda: step("x"))
    assert isinstance(outcome, core.Finished)
    assert next_turn(engine, key="X", interval=3600) == clock.now + 3600


def test_a_step_with_retries_takes_one_turn_per_call(engine: core.Engine, clock: Clock) -> None:
    calls: list[Any] = []
    step = limited_step(calls, "1/m", policy=RetryPolicy(retries=2, interval=5), fail=1)
    t0 = clock.now
    waiting = engine.execute("a", start(engine, "a"), "body", lambda: step())
    assert isinstance(waiting, core.Waiting) and waiting.dispatch is not None
    assert engine.store.get_workflow("a").wait_kind == "retry"
    clock.now += 5
    done = engine.execute("a", waiting.dispatch.ticket, "body", lambda: step())
    assert isinstance(done, core.Finished) and len(calls) == 2
    assert next_turn(engine) == t0 + 60, "the retry took no second turn"


def workflow_body(calls: list[str], rate: str) -> Callable[..., Any]:
    def body() -> str:
        ctx = core.require_context("test")
        calls.append(ctx.workflow_id)
        ctx.sleep(5)  # a later execution must not take a turn again
        return ctx.workflow_id

    limit = flow_rate.declare("workflow", "body", body, rate, None)
    assert limit is not None
    return workflow_api.rate_limited_body(body, limit)


def test_a_rate_limited_workflow_waits_for_its_turn_once(engine: core.Engine, clock: Clock) -> None:
    calls: list[str] = []
    body = workflow_body(calls, "1/m")
    t0 = clock.now
    a = engine.execute("a", start(engine, "a"), "body", body)
    b = engine.execute("b", start(engine, "b"), "body", body)
    assert isinstance(a, core.Waiting) and a.wait is not None and a.wait["wait"] == "sleep"
    assert isinstance(b, core.Waiting) and b.wait is not None and b.wait["wait"] == "rate"
    assert b.dispatch is not None and b.dispatch.countdown == pytest.approx(60 - flow_rate.WAKE_AHEAD)
    assert calls == ["a"], "b's body did not run before its turn"
    record = engine.store.get_workflow("b")
    assert (record.wait_kind, record.wait_step) == ("rate", flow_rate.ADMISSION_STEP)

    clock.now += 5
    a_done = engine.execute("a", a.dispatch.ticket, "body", body)  # type: ignore[union-attr]
    assert isinstance(a_done, core.Finished), "a's second execution took no turn (it would wait 55 s more)"

    clock.now += 55
    b_sleeps = engine.execute("b", b.dispatch.ticket, "body", body)
    assert isinstance(b_sleeps, core.Waiting) and b_sleeps.dispatch is not None
    clock.now += 5
    b_done = engine.execute("b", b_sleeps.dispatch.ticket, "body", body)
    assert isinstance(b_done, core.Finished) and calls == ["a", "a", "b", "b"], "each body ran once per execution"
    assert next_turn(engine, limit="workflow:body") == t0 + 120


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        ("20/x", "rate_limit must look like '20/s', '10/m' or '100/h', got '20/x'"),
        ("fast", "got 'fast'"),
        ("0/s", "rate_limit must allow more than 0 calls per period, got '0/s'"),
        (True, "got True"),
        (-3, "more than 0"),
    ],
)
def test_a_bad_rate_is_refused_naming_it(rate: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        flow_rate.declare("step", "s", lambda: None, rate, None)


def test_rates_in_celerys_format() -> None:
    assert flow_rate.parse_rate("20/s") == pytest.approx(0.05)
    assert flow_rate.parse_rate("10/m") == pytest.approx(6.0)
    assert flow_rate.parse_rate("100/h") == pytest.approx(36.0)
    assert flow_rate.parse_rate("2.5/s") == pytest.approx(0.4)
    assert flow_rate.parse_rate(4) == pytest.approx(0.25)


def test_a_bad_rate_key_is_refused_at_declaration() -> None:
    def charge(customer: str, amount: int) -> None: ...

    with pytest.raises(ConfigurationError, match=r"rate_key='user': step 's' has no parameter of that name \(its parameters: customer, amount\)"):
        flow_rate.declare("step", "s", charge, "5/s", "user")
    with pytest.raises(ConfigurationError, match="needs a rate_limit"):
        flow_rate.declare("step", "s", charge, None, "customer")
    with pytest.raises(ConfigurationError, match="a parameter name or a callable, got 3"):
        flow_rate.declare("step", "s", charge, "5/s", 3)
