"""The engine without Celery: executions driven by hand against a real store (SQLite and PostgreSQL).

Each test plays the task system: it calls ``Engine.execute`` with a ticket and looks at the
outcome and at what the engine asked to publish.
"""

from __future__ import annotations

from typing import Any

import pytest

from celery_durable import core
from celery_durable.config import DurableConfig
from celery_durable.errors import NonDeterministicWorkflow, NotInWorkflow, SerializationError
from celery_durable.retries import RetryPolicy
from celery_durable.serialization import JSONSerializer
from celery_durable.store import Dispatch, WorkflowStatus


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def published() -> list[Dispatch]:
    return []


@pytest.fixture
def engine(store: Any, clock: Clock, published: list[Dispatch]) -> core.Engine:
    return core.Engine(store, JSONSerializer(), DurableConfig(horizon=60), published.append, clock=clock)


def start(engine: core.Engine, workflow_id: str, name: str, *args: Any) -> int:
    record, created = engine.store.create_workflow(
        workflow_id, name, engine.serializer.dumps({"args": list(args), "kwargs": {}}), None, engine.clock()
    )
    assert created
    return record.ticket


def test_finished_steps_return_recorded_output_on_replay(engine: core.Engine) -> None:
    calls: list[int] = []

    def step(x: int) -> int:
        calls.append(x)
        return x * 10

    def body(x: int) -> int:
        ctx = core.require_context("test")
        a = ctx.run_step("step", step, (x,), {})
        b = ctx.run_step("step", step, (a,), {})
        _, got = ctx.recv(("go",), 30)
        return a + b + (0 if got is core.TIMED_OUT else got)

    ticket = start(engine, "wf", "body", 1)
    outcome = engine.execute("wf", ticket, "body", body)
    assert isinstance(outcome, core.Waiting) and outcome.dispatch is not None
    assert calls == [1, 10]
    sent = engine.store.send("wf", "go", "5", engine.clock())
    (wakeup,) = sent.wakeups
    assert isinstance(engine.execute("wf", outcome.dispatch.ticket, "body", body), core.Stale), "the timer is stale now"
    outcome = engine.execute("wf", wakeup.ticket, "body", body)
    assert isinstance(outcome, core.Finished) and outcome.value == 10 + 100 + 5
    assert calls == [1, 10], "finished steps must not run again"


def test_stale_ticket_runs_nothing(engine: core.Engine) -> None:
    runs: list[int] = []

    def body() -> None:
        runs.append(1)

    ticket = start(engine, "wf", "body")
    assert isinstance(engine.execute("wf", ticket + 1, "body", body), core.Stale)
    assert isinstance(engine.execute("wf", ticket, "body", body), core.Finished)
    assert isinstance(engine.execute("wf", ticket, "body", body), core.Stale)
    assert runs == [1]


def test_replay_calling_another_step_is_a_determinism_error(engine: core.Engine) -> None:
    version = {"n": 1}

    def body() -> None:
        ctx = core.require_context("test")
        ctx.run_step("first" if version["n"] == 1 else "changed", lambda: 1, (), {})
        ctx.recv(("go",), 30)

    ticket = start(engine, "wf-nd", "body")
    waiting = engine.execute("wf-nd", ticket, "body", body)
    assert isinstance(waiting, core.Waiting) and waiting.dispatch is not None
    version["n"] = 2
    engine.clock.now += 31  # type: ignore[attr-defined]
    outcome = engine.execute("wf-nd", waiting.dispatch.ticket, "body", body)
    assert isinstance(outcome, core.Failed)
    assert isinstance(outcome.error, NonDeterministicWorkflow)
    message = str(outcome.error)
    assert "wf-nd" in message and "step 0" in message and "'first'" in message and "'changed'" in message
    assert engine.store.get_workflow("wf-nd").status == WorkflowStatus.ERROR


def test_step_error_is_recorded_and_replayed(engine: core.Engine) -> None:
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise KeyError("missing")

    def body() -> str:
        ctx = core.require_context("test")
        try:
            ctx.run_step("failing", failing, (), {})
        except KeyError:
            pass
        ctx.recv(("go",), 30)
        return "ok"

    ticket = start(engine, "wf", "body")
    waiting = engine.execute("wf", ticket, "body", body)
    assert isinstance(waiting, core.Waiting) and waiting.dispatch is not None
    steps = engine.store.list_steps("wf")
    assert steps[0].error is not None and "KeyError" in steps[0].error
    (wakeup,) = engine.store.send("wf", "go", "1", engine.clock()).wakeups
    assert isinstance(engine.execute("wf", wakeup.ticket, "body", body), core.Finished)
    assert calls == [1]


def test_step_retries_in_place(engine: core.Engine) -> None:
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "done"

    def body() -> str:
        return core.require_context("test").run_step("flaky", flaky, (), {}, RetryPolicy(2, 0.0, 1.0))

    ticket = start(engine, "wf", "body")
    outcome = engine.execute("wf", ticket, "body", body)
    assert isinstance(outcome, core.Finished) and outcome.value == "done"
    assert len(attempts) == 3


def test_unserializable_step_output_is_a_clear_error(engine: core.Engine) -> None:
    def body() -> None:
        core.require_context("test").run_step("bad", lambda: object(), (), {})

    ticket = start(engine, "wf", "body")
    outcome = engine.execute("wf", ticket, "body", body)
    assert isinstance(outcome, core.Failed)
    assert isinstance(outcome.error, SerializationError)
    assert "step 'bad' returned" in str(outcome.error) and "JSON" in str(outcome.error)


def test_workflow_error_is_recorded(engine: core.Engine) -> None:
    def body() -> None:
        raise ValueError("bad order")

    ticket = start(engine, "wf", "body")
    outcome = engine.execute("wf", ticket, "body", body)
    assert isinstance(outcome, core.Failed) and isinstance(outcome.error, ValueError)
    record = engine.store.get_workflow("wf")
    assert record.status == WorkflowStatus.ERROR and "bad order" in record.error


def test_control_flow_exceptions_are_not_recorded_as_failures(store: Any, clock: Clock) -> None:
    class Retry(Exception):
        pass

    engine = core.Engine(store, JSONSerializer(), DurableConfig(), lambda d: None, passthrough=(Retry,), clock=clock)

    def body() -> None:
        raise Retry()

    ticket = start(engine, "wf", "body")
    outcome = engine.execute("wf", ticket, "body", body)
    assert isinstance(outcome, core.Interrupted) and isinstance(outcome.error, Retry)
    assert store.get_workflow("wf").status == WorkflowStatus.RUNNING
    assert store.list_steps("wf") == []


def test_user_except_exception_cannot_swallow_a_wait(engine: core.Engine) -> None:
    def body() -> str:
        try:
            core.require_context("test").recv(("go",), 30)
        except Exception:
            return "swallowed"
        return "received"

    ticket = start(engine, "wf", "body")
    assert isinstance(engine.execute("wf", ticket, "body", body), core.Waiting)


def test_deadline_is_kept_across_executions(engine: core.Engine, clock: Clock) -> None:
    def body() -> Any:
        _, value = core.require_context("test").recv(("go",), 30)
        return "timeout" if value is core.TIMED_OUT else value

    ticket = start(engine, "wf", "body")
    first = engine.execute("wf", ticket, "body", body)
    assert isinstance(first, core.Waiting) and first.dispatch is not None
    assert first.dispatch.countdown == pytest.approx(30)
    clock.now += 20  # a redelivery or recovery 20 s later waits only for what is left
    again = engine.execute("wf", first.dispatch.ticket, "body", body)
    assert isinstance(again, core.Waiting) and again.dispatch is not None
    assert again.dispatch.countdown == pytest.approx(10)
    clock.now += 10
    done = engine.execute("wf", again.dispatch.ticket, "body", body)
    assert isinstance(done, core.Finished) and done.value == "timeout"


def test_far_deadline_publishes_no_timer(engine: core.Engine) -> None:
    def body() -> None:
        core.require_context("test").recv(("go",), 3600)

    ticket = start(engine, "wf", "body")
    outcome = engine.execute("wf", ticket, "body", body)
    assert isinstance(outcome, core.Waiting) and outcome.dispatch is None
    assert engine.store.get_workflow("wf").timer_due is None


def test_send_inside_a_workflow_wakes_the_receiver_and_is_not_repeated(
    engine: core.Engine, published: list[Dispatch]
) -> None:
    def receiver() -> Any:
        return core.require_context("test").recv(("t",), 30)[1]

    def sender() -> None:
        ctx = core.require_context("test")
        ctx.send("rx", "t", '"hi"', False)
        ctx.recv(("never",), 30)

    rx_ticket = start(engine, "rx", "receiver")
    assert isinstance(engine.execute("rx", rx_ticket, "receiver", receiver), core.Waiting)
    tx_ticket = start(engine, "tx", "sender")
    waiting = engine.execute("tx", tx_ticket, "sender", sender)
    assert isinstance(waiting, core.Waiting) and waiting.dispatch is not None
    wakeups = [d for d in published if d.workflow_id == "rx"]
    assert len(wakeups) == 1
    engine.clock.now += 31  # type: ignore[attr-defined]
    assert isinstance(engine.execute("tx", waiting.dispatch.ticket, "sender", sender), core.Finished)
    outcome = engine.execute("rx", wakeups[0].ticket, "receiver", receiver)
    assert isinstance(outcome, core.Finished) and outcome.value == "hi"
    # The sender replayed its send: still exactly one message was ever stored for rx.
    assert engine.store.list_steps("rx")[0].output == '"hi"'


def test_operations_outside_a_workflow_say_so() -> None:
    with pytest.raises(NotInWorkflow, match="inside a workflow"):
        core.require_context("recv")


def test_unserializable_workflow_result_is_a_clear_error(engine: core.Engine) -> None:
    def body() -> object:
        return object()

    ticket = start(engine, "wf-out", "body")
    outcome = engine.execute("wf-out", ticket, "body", body)
    assert isinstance(outcome, core.Failed) and isinstance(outcome.error, SerializationError)
    assert "workflow 'wf-out' returned a value that cannot be stored" in str(outcome.error)
    assert engine.store.get_workflow("wf-out").status == WorkflowStatus.ERROR
