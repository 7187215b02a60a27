"""Durable step retries, workflow timeouts and patches, in the engine driven by hand (SQLite and PostgreSQL).

As in test_engine.py, each test plays the task system: it calls ``Engine.execute`` with the
ticket of the message the engine asked for, and moves a fake clock instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from celery_durable import core
from celery_durable.config import DurableConfig
from celery_durable.errors import NonDeterministicWorkflow, StepAttemptLost, WorkflowTimedOut
from celery_durable.handle import decode_result
from celery_durable.retries import RetryPolicy
from celery_durable.serialization import JSONSerializer, decode_error
from celery_durable.store import Dispatch, WorkflowStatus

HORIZON = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Crash(BaseException):
    """Stands for the worker dying in a step: nothing in the engine catches it."""


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(store: Any, clock: Clock) -> core.Engine:
    published: list[Dispatch] = []
    config = DurableConfig(horizon=HORIZON)
    return core.Engine(store, JSONSerializer(), config, published.append, clock=clock, sleep=clock.sleep)


def start(engine: core.Engine, workflow_id: str, timeout: float | None = None) -> int:
    now = engine.clock()
    inputs = engine.serializer.dumps({"args": [], "kwargs": {}})
    timeout_at = None if timeout is None else now + timeout
    record, created = engine.store.create_workflow(workflow_id, "body", inputs, None, now, timeout_at=timeout_at)
    assert created
    return record.ticket


def flaky(calls: list[int], failures: int, error: Callable[[], BaseException] = lambda: ConnectionError("down")) -> Any:
    """A step body that raises *error* on its first *failures* calls, then returns how often it ran."""

    def run() -> int:
        calls.append(1)
        if len(calls) <= failures:
            raise error()
        return len(calls)

    return run


def one_step(body: Callable[[], Any], policy: RetryPolicy) -> Callable[[], Any]:
    return lambda: core.require_context("test").run_step("flaky", body, (), {}, policy)


# -- durable step retries ---------------------------------------------------------------------------------
def test_long_pauses_leave_the_worker_and_the_attempt_count_is_stored(engine: core.Engine, clock: Clock) -> None:
    calls: list[int] = []
    body = one_step(flaky(calls, 2), RetryPolicy(retries=3, interval=5, backoff=2))
    ticket = start(engine, "wf")

    first = engine.execute("wf", ticket, "body", body)
    assert isinstance(first, core.Waiting) and first.dispatch is not None
    assert first.dispatch.countdown == pytest.approx(5)
    record = engine.store.get_workflow("wf")
    assert (record.status, record.wait_kind, record.attempt_step, record.attempts) == ("WAITING", "retry", 0, 1)
    assert engine.store.list_steps("wf") == [], "a pause writes no checkpoint"

    clock.now += 2  # woken early (a redelivery): it waits for what is left, no attempt runs
    early = engine.execute("wf", first.dispatch.ticket, "body", body)
    assert isinstance(early, core.Waiting) and early.dispatch is not None
    assert early.dispatch.countdown == pytest.approx(3)
    assert len(calls) == 1

    clock.now += 3
    second = engine.execute("wf", early.dispatch.ticket, "body", body)
    assert isinstance(second, core.Waiting) and second.dispatch is not None
    assert second.dispatch.countdown == pytest.approx(10), "backoff doubles the pause"
    assert engine.store.get_workflow("wf").attempts == 2

    clock.now += 10
    done = engine.execute("wf", second.dispatch.ticket, "body", body)
    assert isinstance(done, core.Finished) and done.value == 3
    assert len(calls) == 3 and clock.slept == []
    assert engine.store.get_workflow("wf").attempts == 3


def test_pauses_of_at_most_a_second_sleep_in_place(engine: core.Engine, clock: Clock) -> None:
    calls: list[int] = []
    body = one_step(flaky(calls, 5), RetryPolicy(retries=5, interval=0.5, backoff=2, max_interval=1.5))
    ticket = start(engine, "wf")
    outcome = engine.execute("wf", ticket, "body", body)
    assert clock.slept == [0.5, 1.0], "0.5 s and 1 s sleep in the worker"
    assert isinstance(outcome, core.Waiting) and outcome.dispatch is not None
    assert outcome.dispatch.countdown == pytest.approx(1.5), "2 s capped by max_interval, still over a second"
    assert len(calls) == 3


def test_final_error_keeps_its_type_and_message_and_says_how_many_attempts(engine: core.Engine) -> None:
    calls: list[int] = []
    body = one_step(flaky(calls, 99, lambda: KeyError("card")), RetryPolicy(retries=2, interval=0))
    outcome = engine.execute("wf", start(engine, "wf"), "body", body)
    assert isinstance(outcome, core.Failed) and isinstance(outcome.error, KeyError)
    assert len(calls) == 3
    record = engine.store.get_workflow("wf")
    with pytest.raises(KeyError, match="card") as info:
        decode_result(record, JSONSerializer().loads)
    assert any("failed after 3 attempt(s) of at most 3" in note for note in info.value.__notes__)
    (step,) = engine.store.list_steps("wf")
    replayed = decode_error(step.error)
    assert isinstance(replayed, KeyError) and "3 attempt(s)" in replayed.__notes__[0]


def test_retry_on_limits_which_errors_are_retried(engine: core.Engine) -> None:
    calls: list[int] = []
    body = one_step(
        flaky(calls, 99, lambda: ValueError("bad input")), RetryPolicy(retries=3, retry_on=(ConnectionError,))
    )
    outcome = engine.execute("wf", start(engine, "wf"), "body", body)
    assert isinstance(outcome, core.Failed) and isinstance(outcome.error, ValueError)
    assert len(calls) == 1
    assert "not in retry_on" in outcome.error.__notes__[0]


def scripted(calls: list[int], *errors: BaseException) -> Callable[[], None]:
    """A step body whose n-th call raises ``errors[n]``."""

    def run() -> None:
        calls.append(1)
        raise errors[len(calls) - 1]

    return run


def test_a_crash_neither_resets_nor_repeats_the_attempt(engine: core.Engine) -> None:
    calls: list[int] = []
    steps = scripted(calls, ConnectionError("attempt 1"), Crash(), ConnectionError("attempt 3"))
    body = one_step(steps, RetryPolicy(retries=2, interval=0))
    ticket = start(engine, "wf")
    with pytest.raises(Crash):
        engine.execute("wf", ticket, "body", body)  # attempt 1 fails, attempt 2 dies with its worker
    assert engine.store.get_workflow("wf").attempts == 2, "attempt 2 was written before it ran"
    outcome = engine.execute("wf", ticket, "body", body)  # redelivered: attempt 3, not 1 nor 2 again
    assert isinstance(outcome, core.Failed) and str(outcome.error) == "attempt 3"
    assert len(calls) == 3
    assert "3 attempt(s)" in outcome.error.__notes__[0]


def test_a_lost_last_attempt_fails_the_step(engine: core.Engine) -> None:
    calls: list[int] = []
    body = one_step(scripted(calls, Crash(), Crash()), RetryPolicy(retries=1, interval=0))
    ticket = start(engine, "wf")
    for _ in range(2):
        with pytest.raises(Crash):
            engine.execute("wf", ticket, "body", body)
    outcome = engine.execute("wf", ticket, "body", body)
    assert isinstance(outcome, core.Failed) and isinstance(outcome.error, StepAttemptLost)
    assert "made 2 attempt(s)" in str(outcome.error)
    assert len(calls) == 2, "a step that kills its worker runs at most retries + 1 times"


def test_a_step_without_retries_writes_no_attempt(engine: core.Engine) -> None:
    body = one_step(lambda: "ok", RetryPolicy())
    assert isinstance(engine.execute("wf", start(engine, "wf"), "body", body), core.Finished)
    record = engine.store.get_workflow("wf")
    assert record.attempt_step is None and record.attempts is None


def test_the_sweep_arms_and_rearms_a_long_pause_like_a_sleep(engine: core.Engine, clock: Clock) -> None:
    calls: list[int] = []
    body = one_step(flaky(calls, 1), RetryPolicy(retries=1, interval=1000))
    waiting = engine.execute("wf", start(engine, "wf"), "body", body)
    assert isinstance(waiting, core.Waiting) and waiting.dispatch is None, "beyond the horizon: no timer yet"
    due = clock.now + 1000
    store = engine.store
    assert store.sweep(due - 2 * HORIZON, HORIZON, 30) == []
    (armed,) = store.sweep(due - 20, HORIZON, 30)
    assert armed.countdown == pytest.approx(20)
    assert store.sweep(due - 10, HORIZON, 30) == [], "armed: nothing to do until it is overdue"
    (lost,) = store.sweep(due + 31, HORIZON, 30)  # the timer never ran: published again, at once
    assert lost.countdown == 0 and store.get_workflow("wf").status == WorkflowStatus.PENDING
    clock.now = due + 31
    outcome = engine.execute("wf", lost.ticket, "body", body)
    assert isinstance(outcome, core.Finished) and outcome.value == 2


# -- workflow timeout ------------------------------------------------------------------------------------
def test_timeout_while_waiting_wakes_at_the_deadline_and_cancels(engine: core.Engine, clock: Clock) -> None:
    def body() -> Any:
        return core.require_context("test").recv(("go",), 3600)

    ticket = start(engine, "wf", timeout=10)
    waiting = engine.execute("wf", ticket, "body", body)
    assert isinstance(waiting, core.Waiting) and waiting.dispatch is not None
    assert waiting.dispatch.countdown == pytest.approx(10), "the timer is armed for the workflow's deadline"
    assert engine.store.get_workflow("wf").deadline == pytest.approx(clock.now + 3600), "the recv keeps its own"
    clock.now += 10
    outcome = engine.execute("wf", waiting.dispatch.ticket, "body", body)
    assert isinstance(outcome, core.Cancelled) and isinstance(outcome.reason, WorkflowTimedOut)
    record = engine.store.get_workflow("wf")
    assert record.status == WorkflowStatus.CANCELLED
    with pytest.raises(WorkflowTimedOut, match="timed out") as info:
        decode_result(record, JSONSerializer().loads)
    assert info.value.deadline == record.timeout_at


def test_timeout_while_a_step_runs_stops_at_the_next_step_boundary(engine: core.Engine, clock: Clock) -> None:
    ran: list[str] = []

    def slow() -> str:
        ran.append("slow")
        clock.now += 20  # the deadline passes while the step runs
        return "slow done"

    def body() -> None:
        ctx = core.require_context("test")
        ctx.run_step("slow", slow, (), {})
        ctx.run_step("next", lambda: ran.append("next"), (), {})

    outcome = engine.execute("wf", start(engine, "wf", timeout=10), "body", body)
    assert isinstance(outcome, core.Cancelled) and isinstance(outcome.reason, WorkflowTimedOut)
    assert ran == ["slow"], "the running step finishes; the next one never starts"
    assert [s.name for s in engine.store.list_steps("wf")] == ["slow"], "the finished step's output is kept"


def test_no_result_is_recorded_after_the_deadline(engine: core.Engine, clock: Clock) -> None:
    def body() -> str:
        core.require_context("test").run_step("slow", lambda: setattr(clock, "now", clock.now + 20), (), {})
        return "too late"

    outcome = engine.execute("wf", start(engine, "wf", timeout=10), "body", body)
    assert isinstance(outcome, core.Cancelled) and isinstance(outcome.reason, WorkflowTimedOut)


def test_timeout_during_a_retry_pause(engine: core.Engine, clock: Clock) -> None:
    calls: list[int] = []
    body = one_step(flaky(calls, 5), RetryPolicy(retries=5, interval=30))
    waiting = engine.execute("wf", start(engine, "wf", timeout=12), "body", body)
    assert isinstance(waiting, core.Waiting) and waiting.dispatch is not None
    assert waiting.dispatch.countdown == pytest.approx(12), "woken for the deadline, not the 30 s pause"
    clock.now += 12
    outcome = engine.execute("wf", waiting.dispatch.ticket, "body", body)
    assert isinstance(outcome, core.Cancelled) and isinstance(outcome.reason, WorkflowTimedOut)
    assert len(calls) == 1


# -- patches -----------------------------------------------------------------------------------------------
class Code:
    """A workflow body whose code the test changes between executions, as a deploy would."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.ran: list[str] = []

    def step(self, name: str) -> None:
        core.require_context("test").run_step(name, lambda: self.ran.append(name), (), {})

    def wait(self) -> None:
        core.require_context("test").recv(("go",), 30)

    def __call__(self) -> str:
        ctx = core.require_context("test")
        self.step("a")
        branch = "-"
        if self.version == "patched":
            branch = "new" if ctx.patched("p") else "old"
            self.step("new" if branch == "new" else "b")
        elif self.version == "deprecated":
            ctx.deprecate_patch("p")
            self.step("new")
        else:
            self.step("b")
        self.wait()
        return branch


def wake(engine: core.Engine, workflow_id: str) -> int:
    (wakeup,) = engine.store.send(workflow_id, "go", '"x"', engine.clock()).wakeups
    return wakeup.ticket


def test_patched_is_false_for_a_history_recorded_before_the_patch(engine: core.Engine) -> None:
    code = Code("old")
    assert isinstance(engine.execute("wf", start(engine, "wf"), "body", code), core.Waiting)
    code.version = "patched"
    outcome = engine.execute("wf", wake(engine, "wf"), "body", code)
    assert isinstance(outcome, core.Finished) and outcome.value == "old"
    assert [s.name for s in engine.store.list_steps("wf")] == ["a", "b", "recv:go"], "the patch took no step id"


def test_patched_is_true_for_new_workflows_and_their_replays(engine: core.Engine) -> None:
    code = Code("patched")
    assert isinstance(engine.execute("wf", start(engine, "wf"), "body", code), core.Waiting)
    outcome = engine.execute("wf", wake(engine, "wf"), "body", code)
    assert isinstance(outcome, core.Finished) and outcome.value == "new"
    steps = engine.store.list_steps("wf")
    assert [(s.kind, s.name) for s in steps] == [
        ("step", "a"),
        ("patch", "patch:p"),
        ("step", "new"),
        ("recv", "recv:go"),
    ]
    assert code.ran == ["a", "new"]


def test_patched_at_the_point_a_workflow_waits_is_true(engine: core.Engine) -> None:
    """A workflow that waited before the patched code reaches the patch with the new code."""

    def old() -> None:
        core.require_context("test").recv(("go",), 30)

    def new() -> bool:
        ctx = core.require_context("test")
        answer = ctx.patched("p")
        ctx.recv(("go",), 30)
        return answer

    assert isinstance(engine.execute("wf", start(engine, "wf"), "body", old), core.Waiting)
    outcome = engine.execute("wf", wake(engine, "wf"), "body", new)
    assert isinstance(outcome, core.Finished) and outcome.value is True


def test_the_first_answer_for_a_patch_holds_for_the_whole_execution(engine: core.Engine) -> None:
    def body() -> list[bool]:
        ctx = core.require_context("test")
        answers = [ctx.patched("p")]
        ctx.run_step("s", lambda: 1, (), {})
        answers.append(ctx.patched("p"))  # takes no step id: one marker per workflow
        return answers

    outcome = engine.execute("wf", start(engine, "wf"), "body", body)
    assert isinstance(outcome, core.Finished) and outcome.value == [True, True]
    assert [s.kind for s in engine.store.list_steps("wf")] == ["patch", "step"]


def test_deprecate_patch_replays_patched_histories_and_new_ones(engine: core.Engine) -> None:
    patched = Code("patched")
    assert isinstance(engine.execute("p-wf", start(engine, "p-wf"), "body", patched), core.Waiting)
    deprecated = Code("deprecated")
    outcome = engine.execute("p-wf", wake(engine, "p-wf"), "body", deprecated)
    assert isinstance(outcome, core.Finished), "the recorded patch checkpoint is consumed"
    outcome = engine.execute("n-wf", start(engine, "n-wf"), "body", deprecated)
    assert isinstance(outcome, core.Waiting)
    assert [s.name for s in engine.store.list_steps("n-wf")] == ["a", "new"], "a new workflow records no patch"
    assert isinstance(engine.execute("n-wf", wake(engine, "n-wf"), "body", deprecated), core.Finished)


def test_a_removed_patch_is_a_determinism_error_naming_it(engine: core.Engine) -> None:
    code = Code("patched")
    assert isinstance(engine.execute("wf", start(engine, "wf"), "body", code), core.Waiting)
    code.version = "old"  # patched("p") deleted while a workflow that recorded it waits
    outcome = engine.execute("wf", wake(engine, "wf"), "body", code)
    assert isinstance(outcome, core.Failed) and isinstance(outcome.error, NonDeterministicWorkflow)
    assert "misplaced patch" in str(outcome.error) and "'p'" in str(outcome.error)


def test_a_moved_patch_is_a_determinism_error_naming_it(engine: core.Engine) -> None:
    moved = {"early": False}

    def body() -> None:
        ctx = core.require_context("test")
        if moved["early"]:
            ctx.patched("p")
        ctx.run_step("a", lambda: 1, (), {})
        if not moved["early"]:
            ctx.patched("p")
        ctx.recv(("go",), 30)

    assert isinstance(engine.execute("wf", start(engine, "wf"), "body", body), core.Waiting)
    moved["early"] = True
    outcome = engine.execute("wf", wake(engine, "wf"), "body", body)
    assert isinstance(outcome, core.Failed) and isinstance(outcome.error, NonDeterministicWorkflow)
    assert "patch 'p' was recorded at step 1 but the code now reaches it at step 0" in str(outcome.error)


def test_a_patch_inserted_before_an_older_patch_is_false_for_older_histories(engine: core.Engine) -> None:
    version = {"n": 1}

    def body() -> list[bool]:
        ctx = core.require_context("test")
        answers = []
        if version["n"] == 2:
            answers.append(ctx.patched("second"))
        answers.append(ctx.patched("first"))
        ctx.recv(("go",), 30)
        return answers

    assert isinstance(engine.execute("wf", start(engine, "wf"), "body", body), core.Waiting)
    version["n"] = 2
    outcome = engine.execute("wf", wake(engine, "wf"), "body", body)
    assert isinstance(outcome, core.Finished) and outcome.value == [False, True]


# -- the code version ----------------------------------------------------------------------------------------
def make_durable(tmp_path: Any, **options: Any) -> Any:
    from celery import Celery

    from celery_durable import Durable

    return Durable(Celery("versions"), f"sqlite:///{tmp_path}/v.sqlite3", **options)


def compiled(source: str) -> Callable[..., Any]:
    """A function without a source file (as a REPL or exec makes): the hash falls back to its code."""
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    return namespace["f"]  # type: ignore[no-any-return]


def test_the_version_is_a_hash_of_the_registered_code(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERY_DURABLE_VERSION", raising=False)
    versions = []
    for body in ("return 1", "return 1", "return 2"):
        durable = make_durable(tmp_path)
        durable.step(name="s")(compiled(f"def f():\n    {body}\n"))
        versions.append(durable.version)
    assert versions[0] == versions[1] != versions[2]

    durable = make_durable(tmp_path)
    durable.workflow(name="w")(test_the_version_is_a_hash_of_the_registered_code)
    first = durable.version
    durable.step(name="late")(compiled("def f():\n    return 3\n"))
    assert durable.version != first, "a registration after first use is hashed in"


def test_an_explicit_version_beats_the_environment_which_beats_the_hash(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERY_DURABLE_VERSION", "from-env")
    assert make_durable(tmp_path).version == "from-env"
    assert make_durable(tmp_path, version="v42").version == "v42"


def test_bad_retry_options_are_refused_at_decoration(tmp_path: Any) -> None:
    from celery_durable.errors import ConfigurationError

    durable = make_durable(tmp_path)
    for options in (
        {"retries": -1},
        {"backoff": 0.5},
        {"retry_interval": float("nan")},
        {"retry_on": (KeyboardInterrupt,)},
    ):
        with pytest.raises(ConfigurationError):
            durable.step(**options)
