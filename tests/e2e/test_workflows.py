"""End-to-end workflow semantics on real ``celery worker`` processes (Redis and RabbitMQ, store on PostgreSQL).

Every test starts its own worker subprocess running tests/apps/wfapp.py and drives it from
this process (the producer) through the public API only. Step bodies append a line to a
counter file per call, so the tests count executions across processes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from celery_durable import WorkflowStatus
from celery_durable.errors import (
    NonDeterministicWorkflow,
    SerializationError,
    WorkflowConflict,
    WorkflowNotFound,
)
from tests.services import Worker, count_lines, wait_for

ADD = "tests.apps.wfapp.add"
SLOW_STEP = "tests.apps.wfapp.slow_step"
FAIL_STEP = "tests.apps.wfapp.fail_step"


@pytest.fixture
def worker(e2e_env: dict[str, str], wf: Any) -> Any:
    w = Worker(e2e_env).start()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
def counters(tmp_path: Path) -> Path:
    return tmp_path / "counters"


def wait_status(handle: Any, status: WorkflowStatus, timeout: float = 60) -> None:
    wait_for(lambda: handle.status() == status, timeout=timeout, what=f"{handle.workflow_id} to be {status}")


def queued_messages(wf: Any, queue: str) -> int:
    """Purge *queue* and return how many messages it held (only meaningful with no worker consuming it)."""
    with wf.app.connection_for_write() as conn:
        channel = conn.default_channel
        channel.queue_declare(queue=queue, durable=True, auto_delete=False)
        return int(channel.queue_purge(queue) or 0)


# -- idempotent start ------------------------------------------------------------------------------
def test_start_twice_with_same_id_runs_once(wf, worker, counters):
    first = wf.three_adds.start(5, workflow_id="idem-1")
    again = wf.three_adds.start(5, workflow_id="idem-1")  # most likely while the first is queued or running
    assert first.workflow_id == again.workflow_id == "idem-1"
    assert first.result(timeout=60) == 8
    assert again.result(timeout=60) == 8

    # Once finished, starting the id again (even with other inputs) returns the existing workflow.
    late = wf.three_adds.start(100, workflow_id="idem-1")
    assert late.result(timeout=60) == 8
    assert count_lines(counters / "add") == 3, "the body ran more than once"
    assert first.record().executions == 1
    assert [w.workflow_id for w in wf.durable.list_workflows()] == ["idem-1"]

    with pytest.raises(WorkflowConflict) as info:
        wf.echo_args.start(1, workflow_id="idem-1")
    assert "idem-1" in str(info.value)
    assert "tests.apps.wfapp.three_adds" in str(info.value)
    assert "tests.apps.wfapp.echo_args" in str(info.value)
    assert first.result(timeout=60) == 8
    assert count_lines(counters / "add") == 3


# -- replay ------------------------------------------------------------------------------------------
def test_replay_does_not_rerun_finished_steps(wf, worker, counters):
    handle = wf.steps_then_recv.start(1, 60, workflow_id="replay-1")
    wait_status(handle, WorkflowStatus.WAITING)
    assert count_lines(counters / "add") == 2
    assert count_lines(counters / "steps_then_recv.body") == 1

    wf.durable.send("replay-1", {"hello": "world"}, topic="go")
    assert handle.result(timeout=60) == {"sum": 111, "message": {"hello": "world"}}

    assert count_lines(counters / "steps_then_recv.body") == 2, "the body should have run twice (wait, then wake-up)"
    assert count_lines(counters / "add") == 2, "finished steps ran again on replay"
    assert handle.status() == WorkflowStatus.SUCCESS
    assert handle.record().executions == 2

    steps = wf.durable.list_steps("replay-1")
    assert [(s.step_id, s.name, s.kind) for s in steps] == [
        (0, ADD, "step"),
        (1, ADD, "step"),
        (2, "recv:go", "recv"),
    ]
    assert [json.loads(s.output) for s in steps] == [11, 111, {"hello": "world"}]
    assert all(s.error is None for s in steps)
    assert steps[2].topic == "go"
    record = handle.record()
    for step in steps:
        assert record.created_at <= step.started_at <= step.ended_at <= record.updated_at
    assert steps[0].ended_at <= steps[1].started_at
    assert [s.step_id for s in handle.steps()] == [0, 1, 2]


# -- determinism ---------------------------------------------------------------------------------------
def test_changed_code_on_replay_is_a_determinism_error(wf, worker, counters, tmp_path):
    flag = tmp_path / "changed.flag"
    handle = wf.nondeterministic.start(str(flag), workflow_id="nondet-1")
    wait_status(handle, WorkflowStatus.WAITING)
    assert count_lines(counters / "add") == 1

    flag.touch()  # the body now calls slow_step where `add` was recorded as step 0
    wf.durable.send("nondet-1", "go!", topic="go")

    with pytest.raises(NonDeterministicWorkflow) as info:
        handle.result(timeout=60)
    message = str(info.value)
    assert "nondet-1" in message
    assert "step 0" in message
    assert ADD in message
    assert SLOW_STEP in message
    assert handle.status() == WorkflowStatus.ERROR
    # The recorded output of `add` was never handed to slow_step, and slow_step did not run.
    assert count_lines(counters / "changed.start") == 0
    assert count_lines(counters / "add") == 1
    assert [(s.step_id, s.name) for s in handle.steps()] == [(0, ADD)]
    error = json.loads(handle.record().error)
    assert error["type"] == "celery_durable.errors.NonDeterministicWorkflow"
    assert "step 0" in error["message"]


# -- errors ----------------------------------------------------------------------------------------------
def test_failing_workflow_records_its_error(wf, worker, counters):
    handle = wf.failing.start("boom: the card was declined", workflow_id="fail-1")
    with pytest.raises(ValueError, match="boom: the card was declined"):
        handle.result(timeout=60)
    assert handle.status() == WorkflowStatus.ERROR
    assert [w.workflow_id for w in wf.durable.list_workflows(status="ERROR")] == ["fail-1"]

    record = json.loads(handle.record().error)
    assert record["type"] == "builtins.ValueError"
    assert record["message"] == "boom: the card was declined"
    assert "fail_step" in record["traceback"]

    steps = wf.durable.list_steps("fail-1")
    assert [(s.step_id, s.name) for s in steps] == [(0, ADD), (1, FAIL_STEP)]
    assert json.loads(steps[0].output) == 2 and steps[0].error is None
    assert steps[1].output is None
    step_error = json.loads(steps[1].error)
    assert step_error["type"] == "builtins.ValueError"
    assert step_error["message"] == "boom: the card was declined"
    assert steps[1].started_at <= steps[1].ended_at
    assert count_lines(counters / "fail_step") == 1
    # result() keeps raising the same error; nothing runs again.
    with pytest.raises(ValueError, match="boom: the card was declined"):
        wf.durable.handle("fail-1").result(timeout=5)
    assert count_lines(counters / "fail_step") == 1


def test_step_outside_a_workflow_is_a_plain_function(wf, counters):
    assert wf.add(2, 3) == 5
    with pytest.raises(ValueError, match="plain"):
        wf.fail_step("plain")
    assert count_lines(counters / "add") == 1
    assert count_lines(counters / "fail_step") == 1
    assert wf.durable.list_workflows() == []


# -- Celery's own calls ------------------------------------------------------------------------------------
def test_delay_and_apply_async_start_durable_workflows(wf, worker, counters):
    delayed = wf.three_adds.delay(1)
    applied = wf.three_adds.apply_async((2,), task_id="apply-async-1")
    assert applied.id == "apply-async-1"

    assert wf.durable.handle(delayed.id).result(timeout=60) == 4
    assert wf.durable.handle("apply-async-1").result(timeout=60) == 5
    assert {w.workflow_id for w in wf.durable.list_workflows(status=WorkflowStatus.SUCCESS)} == {
        delayed.id,
        "apply-async-1",
    }
    assert [s.name for s in wf.durable.list_steps(delayed.id)] == [ADD] * 3
    assert count_lines(counters / "add") == 6

    # apply_async with an id that exists is an idempotent start too.
    again = wf.three_adds.apply_async((2,), task_id="apply-async-1")
    assert again.id == "apply-async-1"
    assert wf.durable.handle("apply-async-1").result(timeout=60) == 5
    assert count_lines(counters / "add") == 6


def test_args_and_kwargs_round_trip(wf, worker):
    args = (1, "two", [3, 3.5], {"four": 4}, None, True)
    kwargs = {"key": "välue", "nested": {"a": [1, None, False], "b": {"c": "d"}}}
    handle = wf.echo_args.start(*args, workflow_id="echo-1", **kwargs)
    assert handle.result(timeout=60) == {"args": list(args), "kwargs": kwargs}

    via_delay = wf.echo_args.delay(7, only="kw")
    assert wf.durable.handle(via_delay.id).result(timeout=60) == {"args": [7], "kwargs": {"only": "kw"}}
    via_apply = wf.echo_args.apply_async(kwargs={"x": [1, 2]}, task_id="echo-2")
    assert wf.durable.handle(via_apply.id).result(timeout=60) == {"args": [], "kwargs": {"x": [1, 2]}}


# -- listings and handles -------------------------------------------------------------------------------
def test_list_workflows_handle_and_result_timeout(wf, worker):
    first = wf.three_adds.start(1, workflow_id="list-a")
    assert first.result(timeout=60) == 4
    broken = wf.failing.start("nope", workflow_id="list-b")
    with pytest.raises(ValueError):
        broken.result(timeout=60)
    waiting = wf.steps_then_recv.start(0, 120, workflow_id="list-c")
    wait_status(waiting, WorkflowStatus.WAITING)
    last = wf.three_adds.start(2, workflow_id="list-d")
    assert last.result(timeout=60) == 5

    assert [w.workflow_id for w in wf.durable.list_workflows()] == ["list-d", "list-c", "list-b", "list-a"]
    assert [w.workflow_id for w in wf.durable.list_workflows(limit=2)] == ["list-d", "list-c"]
    assert [w.workflow_id for w in wf.durable.list_workflows(status="SUCCESS")] == ["list-d", "list-a"]
    assert [w.workflow_id for w in wf.durable.list_workflows(status=WorkflowStatus.ERROR)] == ["list-b"]
    assert [w.workflow_id for w in wf.durable.list_workflows(status=WorkflowStatus.WAITING)] == ["list-c"]
    assert [w.workflow_id for w in wf.durable.list_workflows(name=wf.three_adds.name)] == ["list-d", "list-a"]
    assert [w.workflow_id for w in wf.durable.list_workflows(status="ERROR", name=wf.three_adds.name)] == []
    records = {w.workflow_id: w for w in wf.durable.list_workflows()}
    assert records["list-c"].name == "tests.apps.wfapp.steps_then_recv"
    assert records["list-c"].status == WorkflowStatus.WAITING

    with pytest.raises(WorkflowNotFound, match="no-such-workflow"):
        wf.durable.handle("no-such-workflow")
    assert wf.durable.handle("list-a").result(timeout=5) == 4

    with pytest.raises(TimeoutError, match="list-c"):
        wf.durable.handle("list-c").result(timeout=1)
    assert waiting.status() == WorkflowStatus.WAITING

    assert wf.durable.cancel("list-c") == WorkflowStatus.CANCELLED
    assert wf.durable.list_workflows(status="WAITING") == []


# -- serialization of inputs -------------------------------------------------------------------------------
def test_non_json_inputs_fail_before_anything_is_enqueued(wf, e2e_env):
    # No worker consumes the queue: whatever would have been published stays there to be counted.
    with pytest.raises(SerializationError, match=r"tests\.apps\.wfapp\.three_adds.*not serializable") as info:
        wf.three_adds.start(object(), workflow_id="bad-1")
    assert isinstance(info.value, TypeError)
    with pytest.raises(SerializationError, match="not serializable"):
        wf.three_adds.delay(object())
    with pytest.raises(SerializationError, match="not serializable"):
        wf.echo_args.apply_async((1,), {"when": {1, 2}}, task_id="bad-2")

    assert wf.durable.list_workflows() == []
    with pytest.raises(WorkflowNotFound):
        wf.durable.handle("bad-1")
    assert queued_messages(wf, e2e_env["CD_QUEUE"]) == 0


def test_send_task_by_name_starts_a_durable_workflow(wf, worker, counters, e2e_env):
    """A producer that has only the task's name (no workflow code, no Durable) starts a workflow."""
    queue = e2e_env["CD_QUEUE"]
    wf.app.send_task(wf.three_adds.name, args=(20,), task_id="by-name-1", queue=queue)
    assert wait_for(lambda: wf.durable.store.get_workflow("by-name-1"), timeout=60, what="the workflow row")
    assert wf.durable.handle("by-name-1").result(timeout=60) == 23
    # The same message again (a producer retrying) starts nothing new.
    wf.app.send_task(wf.three_adds.name, args=(20,), task_id="by-name-1", queue=queue)
    wf.three_adds.delay(0)  # a later workflow on the same queue: once it finished, the duplicate was handled
    wait_for(lambda: len(wf.durable.list_workflows(status=WorkflowStatus.SUCCESS)) == 2, timeout=60, what="both")
    assert count_lines(counters / "add") == 6
    assert wf.durable.handle("by-name-1").record().executions == 1
