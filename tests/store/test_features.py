"""The store contract for durable retries and workflow deadlines (start_attempt, wait_retry, timeout_at), on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from celery_durable.errors import WorkflowCancelled
from celery_durable.store import Lease, Suspended, WorkflowStatus

from .conftest import T0, Harness, recv


def running_with_deadline(h: Harness, workflow_id: str, timeout_at: float | None) -> Lease:
    _, created = h.store.create_workflow(workflow_id, "wf", "[]", "q", T0, timeout_at=timeout_at)
    assert created
    lease = h.acquire(workflow_id)
    assert lease is not None and h.store.begin(lease, 0, T0) is not None
    return lease


# -- start_attempt / wait_retry --------------------------------------------------------------------------
def test_start_attempt_stores_the_count_and_clears_the_wait_it_was_woken_from(h: Harness) -> None:
    lease = h.running("wf")
    suspended = h.store.wait_retry(lease, 3, "charge", T0 + 10, T0, 300)
    assert isinstance(suspended, Suspended)
    h.resume(lease, T0 + 10)
    h.store.start_attempt(lease, 3, 2, T0 + 10)
    record = h.store.get_workflow("wf")
    assert (record.attempt_step, record.attempts) == (3, 2)
    assert (record.wait_kind, record.wait_step, record.deadline, record.timer_due) == (None, None, None, None)
    assert record.status == WorkflowStatus.RUNNING


def test_start_attempt_on_a_cancelled_workflow_raises(h: Harness) -> None:
    lease = h.running("wf")
    h.store.cancel("wf", T0)
    with pytest.raises(WorkflowCancelled):
        h.store.start_attempt(lease, 0, 1, T0)
    assert h.store.get_workflow("wf").attempts is None


def test_wait_retry_records_a_retry_wait_without_a_checkpoint(h: Harness) -> None:
    lease = h.running("wf")
    ticket = h.store.get_workflow("wf").ticket
    result = h.store.wait_retry(lease, 2, "charge", T0 + 10, T0, 300)
    assert result.dispatch is not None and result.dispatch.countdown == pytest.approx(10)
    assert result.dispatch.ticket == ticket + 1
    record = h.store.get_workflow("wf")
    assert (record.status, record.wait_kind, record.wait_step) == (WorkflowStatus.WAITING, "retry", 2)
    assert record.deadline == record.timer_due == T0 + 10
    assert h.store.list_steps("wf") == []
    # Only its timer wakes it: a message does not.
    assert h.store.send("wf", "", '"hi"', T0 + 1).wakeups == ()
    assert h.store.get_workflow("wf").status == WorkflowStatus.WAITING


def test_wait_retry_beyond_the_horizon_publishes_no_timer(h: Harness) -> None:
    lease = h.running("wf")
    assert h.store.wait_retry(lease, 0, "charge", T0 + 1000, T0, 300).dispatch is None
    assert h.store.get_workflow("wf").timer_due is None


def test_wait_retry_on_a_cancelled_workflow_raises(h: Harness) -> None:
    lease = h.running("wf")
    h.store.cancel("wf", T0)
    with pytest.raises(WorkflowCancelled):
        h.store.wait_retry(lease, 0, "charge", T0 + 10, T0, 300)


# -- the workflow's own deadline -------------------------------------------------------------------------
def test_a_wait_arms_its_timer_for_the_earlier_of_its_deadline_and_the_workflows(h: Harness) -> None:
    lease = running_with_deadline(h, "wf", T0 + 20)
    result = h.store.wait_step(lease, recv(0, "go", timeout=3600))
    assert isinstance(result, Suspended) and result.dispatch is not None
    assert result.dispatch.countdown == pytest.approx(20)
    record = h.store.get_workflow("wf")
    assert record.deadline == T0 + 3600, "the wait keeps its own deadline"
    assert record.timer_due == T0 + 20


def test_a_wait_without_deadline_arms_for_the_workflows(h: Harness) -> None:
    lease = running_with_deadline(h, "wf", T0 + 20)
    result = h.store.wait_step(lease, recv(0, "go", timeout=None))
    assert isinstance(result, Suspended) and result.dispatch is not None
    assert result.dispatch.countdown == pytest.approx(20)


def test_the_sweep_arms_a_far_wait_when_the_workflows_deadline_comes_within_the_horizon(h: Harness) -> None:
    lease = running_with_deadline(h, "wf", T0 + 1000)
    result = h.store.wait_step(lease, recv(0, "go", timeout=None))
    assert isinstance(result, Suspended) and result.dispatch is None
    h.release(lease)
    assert h.store.sweep(T0 + 500, 300, 30) == []
    (armed,) = h.store.sweep(T0 + 800, 300, 30)
    assert armed.countdown == pytest.approx(200)
    assert h.store.get_workflow("wf").timer_due == T0 + 1000


def test_finish_records_a_cancel_with_its_reason(h: Harness) -> None:
    lease = h.running("wf")
    h.store.finish(lease, WorkflowStatus.CANCELLED, None, '{"type": "x"}', T0 + 1)
    record = h.store.get_workflow("wf")
    assert (record.status, record.error) == (WorkflowStatus.CANCELLED, '{"type": "x"}')


@pytest.mark.parametrize("state", ["PENDING", "WAITING", "RUNNING"])
def test_the_sweep_stops_a_workflow_past_its_deadline_that_no_execution_runs(h: Harness, state: str) -> None:
    if state == "PENDING":  # queued (behind a backlog, or its task is unknown to every worker)
        h.store.create_workflow("wf", "wf", "[]", "q", T0, timeout_at=T0 + 10)
    else:
        lease = running_with_deadline(h, "wf", T0 + 10)
        if state == "WAITING":  # a wait whose timer was lost
            assert isinstance(h.store.wait_step(lease, recv(0, "go", timeout=None, horizon=1)), Suspended)
        h.release(lease)  # RUNNING: its worker died
    before = h.store.get_workflow("wf")
    assert before.status == state
    assert h.store.sweep(T0 + 11, 300, 30) == [], "nothing is published for it"
    record = h.store.get_workflow("wf")
    assert record.status == WorkflowStatus.CANCELLED
    assert record.ticket > before.ticket, "its queued messages went stale"
    error = json.loads(record.error)
    assert error["type"] == "celery_durable.errors.WorkflowTimedOut" and "deadline" in error["message"]
    assert record.wait_kind is None and record.timer_due is None


def test_the_sweep_leaves_a_running_workflow_past_its_deadline_to_its_execution(h: Harness) -> None:
    running_with_deadline(h, "wf", T0 + 10)  # its lease stays held: a live execution
    assert h.store.sweep(T0 + 11, 300, 30) == []
    assert h.store.get_workflow("wf").status == WorkflowStatus.RUNNING
