"""The operators' part of the store contract (list_workflows filters, list_messages, get_events,
resume, fork, prune, leave_to_sweep), checked on SQLite and PostgreSQL with explicit clocks."""

from __future__ import annotations

import json

from celery_durable.store import Dispatch, StepRecord, WorkflowStatus

from .conftest import T0, Harness, recv, step


def ids(records: list) -> list[str]:
    return [r.workflow_id for r in records]


def failed(workflow_id: str, step_id: int, message: str = "boom") -> StepRecord:
    error = json.dumps({"type": "builtins.ValueError", "message": message, "args": [message], "traceback": ""})
    return StepRecord(workflow_id, step_id, f"step{step_id}", "step", None, error, None, T0, T0 + 1)


def test_list_workflows_filters_combine(h: Harness) -> None:
    store = h.store
    store.create_workflow("a-1", "wf.a", "[]", None, T0, version="v1")
    store.create_workflow("a-2", "wf.a", "[]", None, T0 + 10, version="v2", parent_id="a-1")
    store.create_workflow("b%_1", "wf.b", "[]", None, T0 + 20, version="v2", parent_id="a-1")
    store.create_workflow("bx-2", "wf.b", "[]", None, T0 + 30)
    store.cancel("a-2", T0 + 40)

    assert ids(store.list_workflows()) == ["bx-2", "b%_1", "a-2", "a-1"]
    assert ids(store.list_workflows(WorkflowStatus.CANCELLED)) == ["a-2"]
    assert ids(store.list_workflows([WorkflowStatus.CANCELLED, WorkflowStatus.PENDING], "wf.a")) == ["a-2", "a-1"]
    assert ids(store.list_workflows(created_after=T0 + 10, created_before=T0 + 30)) == ["b%_1", "a-2"]
    assert ids(store.list_workflows(id_prefix="b%_")) == ["b%_1"], "% and _ are literal in a prefix"
    assert ids(store.list_workflows(id_prefix="a-")) == ["a-2", "a-1"]
    assert ids(store.list_workflows(parent_id="a-1")) == ["b%_1", "a-2"]
    assert ids(store.list_workflows(version="v2")) == ["b%_1", "a-2"]
    assert ids(store.list_workflows(limit=2, offset=1)) == ["b%_1", "a-2"]
    assert store.list_workflows(offset=4) == []


def test_list_messages_and_get_events(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    store.send("w", "go", '"one"', T0 + 1)
    store.send("w", "", '"two"', T0 + 2, idempotency_key="k")
    store.send("other", "go", '"elsewhere"', T0 + 3, create_mailbox=True)
    store.wait_step(lease, recv(1, "go", now=T0 + 4))
    store.set_event(lease, "stage", '"ready"', step("w", 2, output='"ready"', kind="set_event", topic="stage"))

    messages = store.list_messages("w")
    assert [(m.seq, m.topic, m.payload, m.sent_at, m.consumed, m.idempotency_key) for m in messages] == [
        (messages[0].seq, "go", '"one"', T0 + 1, True, None),
        (messages[1].seq, None, '"two"', T0 + 2, False, "k"),
    ]
    assert messages[0].seq < messages[1].seq
    assert messages[0].consumed_at == T0 + 4
    assert store.list_messages("nobody") == []
    assert store.get_events("w") == {"stage": '"ready"'}
    assert store.get_events("other") == {}


def test_resume_a_cancelled_workflow_keeps_its_checkpoints(h: Harness) -> None:
    store = h.store
    lease = h.waiting("w", "go")
    h.release(lease)
    cancelled = store.cancel("w", T0 + 1)
    assert cancelled is not None and cancelled.status is WorkflowStatus.CANCELLED

    assert store.resume("w", cancelled.ticket + 1, None, T0 + 2) == (cancelled, None), "a stale ticket changes nothing"
    record, dispatch = store.resume("w", cancelled.ticket, None, T0 + 2)
    assert record is not None and record.status is WorkflowStatus.PENDING
    assert record.ticket == cancelled.ticket + 1 and record.dispatched_at == T0 + 2
    assert record.wait_kind is None and record.error is None
    assert dispatch == Dispatch("w", "wf", "q", record.ticket)
    again = store.resume("w", cancelled.ticket, None, T0 + 3)
    assert again == (record, None), "resuming twice resumes once"
    assert store.resume("nobody", 0, None, T0) == (None, None)


def test_resume_an_error_drops_the_failed_step_and_redelivers_what_later_steps_received(h: Harness) -> None:
    store = h.store
    store.create_workflow("w", "wf", "[]", "q", T0, timeout_at=T0 + 5)
    lease = h.acquire("w")
    assert lease is not None and store.begin(lease, 0, T0) is not None
    store.record_step(lease, step("w", 0))
    store.record_step(lease, failed("w", 1))
    store.send("w", "go", '"m"', T0 + 1)
    got = store.wait_step(lease, recv(2, "go", now=T0 + 2))  # the body caught the error and received
    assert isinstance(got, StepRecord) and got.output == '"m"'
    store.finish(lease, WorkflowStatus.ERROR, None, failed("w", 1).error, T0 + 3)
    h.release(lease)
    finished = store.get_workflow("w")
    assert finished is not None

    record, dispatch = store.resume("w", finished.ticket, 1, T0 + 10)
    assert record is not None and dispatch is not None
    assert record.status is WorkflowStatus.PENDING and record.error is None
    assert record.timeout_at is None, "a deadline that passed is cleared"
    assert [s.step_id for s in store.list_steps("w")] == [0]
    assert [m.consumed for m in store.list_messages("w")] == [False], "the dropped recv's message is received again"


def test_resume_keeps_a_deadline_still_ahead_and_ignores_unfinished_workflows(h: Harness) -> None:
    store = h.store
    store.create_workflow("w", "wf", "[]", None, T0, timeout_at=T0 + 100)
    assert store.resume("w", 0, None, T0 + 1)[1] is None, "a PENDING workflow is not resumed"
    cancelled = store.cancel("w", T0 + 2)
    assert cancelled is not None
    record, _ = store.resume("w", cancelled.ticket, None, T0 + 3)
    assert record is not None and record.timeout_at == T0 + 100


def test_fork_copies_checkpoints_before_the_step_and_the_events_they_set(h: Harness) -> None:
    store = h.store
    store.create_workflow("src", "wf", '{"args":[1]}', "q", T0, version="v1", parent_id="p")
    lease = h.acquire("src")
    assert lease is not None and store.begin(lease, 0, T0) is not None
    store.record_step(lease, step("src", 0))
    store.set_event(lease, "stage", '"one"', step("src", 1, output='"one"', kind="set_event", topic="stage"))
    store.set_event(lease, "stage", '"two"', step("src", 2, output='"two"', kind="set_event", topic="stage"))
    store.record_step(lease, step("src", 3))

    record, created = store.fork("src", "copy", 2, T0 + 5, version="v1")
    assert created and record is not None
    assert (record.name, record.inputs, record.queue, record.version) == ("wf", '{"args":[1]}', "q", "v1")
    assert (record.forked_from, record.forked_from_step, record.parent_id) == ("src", 2, None)
    assert (record.status, record.ticket, record.created_at) == (WorkflowStatus.PENDING, 0, T0 + 5)
    assert [(s.step_id, s.name) for s in store.list_steps("copy")] == [(0, "step0"), (1, "step1")]
    assert store.get_events("copy") == {"stage": '"one"'}, "the value as of the fork point"
    assert store.get_events("src") == {"stage": '"two"'}

    # Its first execution sees the copied checkpoints.
    copy_lease = h.acquire("copy")
    assert copy_lease is not None
    execution = store.begin(copy_lease, 0, T0 + 6)
    assert execution is not None and sorted(execution.steps) == [0, 1]

    assert store.fork("src", "copy", 1, T0 + 7) == (store.get_workflow("copy"), False)
    everything, _ = store.fork("src", "all", 1000, T0 + 8)
    assert everything is not None and len(store.list_steps("all")) == 4
    assert store.fork("nobody", "x", 0, T0) == (None, False)
    assert store.get_workflow("x") is None


def test_prune_deletes_old_finished_workflows_with_everything_they_own(h: Harness) -> None:
    store = h.store
    for i in range(5):
        lease = h.running(f"old-{i}", now=T0)
        store.record_step(lease, step(f"old-{i}", 0))
        store.set_event(lease, "k", '"v"', step(f"old-{i}", 1, kind="set_event", topic="k"))
        store.finish(lease, WorkflowStatus.SUCCESS, '"ok"', None, T0 + 1)
        h.release(lease)
        store.send(f"old-{i}", "", '"late"', T0 + 2)
    running = h.running("running-old", now=T0)
    store.record_step(running, step("running-old", 0))
    store.create_workflow("pending-old", "wf", "[]", None, T0)
    recent = h.running("recent", now=T0 + 500)
    store.finish(recent, WorkflowStatus.ERROR, None, failed("recent", 0).error, T0 + 500)
    h.release(recent)

    assert store.prune(T0 + 100, batch=2) == 5, "three batches"
    assert ids(store.list_workflows()) == ["recent", "running-old", "pending-old"]
    for i in range(5):
        assert store.get_workflow(f"old-{i}") is None
        assert store.list_steps(f"old-{i}") == []
        assert store.list_messages(f"old-{i}") == []
        assert store.get_events(f"old-{i}") == {}
    assert len(store.list_steps("running-old")) == 1
    assert store.prune(T0 + 100) == 0
    assert store.prune(T0 + 1000) == 1  # "recent", now old enough


def test_leave_to_sweep_makes_the_next_sweep_publish_at_once(h: Harness) -> None:
    store = h.store
    record, _ = store.create_workflow("w", "wf", "[]", "q", T0)
    assert store.sweep(T0 + 1, 300, 120) == [], "just dispatched: within the grace period"
    store.leave_to_sweep(Dispatch("w", "wf", "q", record.ticket + 1))
    assert store.sweep(T0 + 1, 300, 120) == [], "a stale dispatch changes nothing"
    store.leave_to_sweep(Dispatch("w", "wf", "q", record.ticket))
    (dispatch,) = store.sweep(T0 + 1, 300, 120)
    assert (dispatch.workflow_id, dispatch.countdown) == ("w", 0.0)

    lease = h.waiting("t", "go", timeout=60, now=T0)
    h.release(lease)
    waiting = store.get_workflow("t")
    assert waiting is not None and waiting.timer_due == T0 + 60
    store.leave_to_sweep(Dispatch("t", "wf", "q", waiting.ticket, 60))
    (timer,) = store.sweep(T0 + 1, 300, 120)
    assert (timer.workflow_id, timer.countdown) == ("t", 59.0), "the sweep arms the timer again"


def test_task_options_are_kept_for_the_whole_life_but_not_forked(h: Harness) -> None:
    """The task system's opaque options (Celery: the start's canvas) come back with every read of the
    workflow, survive continue_as_new, a cancel and a resume, and are not copied by a fork."""
    store = h.store
    options = '{"callbacks": [{"task": "after"}]}'
    record, created = store.create_workflow("opt", "wf", '{"args":[]}', None, T0, task_options=options)
    assert created and record.task_options == options
    assert store.create_workflow("plain", "wf", "[]", None, T0)[0].task_options is None
    # A second start under the same id does not replace them.
    again, created = store.create_workflow("opt", "wf", "[]", None, T0 + 1, task_options='{"other": 1}')
    assert not created and again.task_options == options

    lease = h.acquire("opt")
    assert lease is not None
    execution = store.begin(lease, 0, T0 + 2)
    assert execution is not None and execution.workflow.task_options == options, "the claim returns them"
    store.record_step(lease, step("opt", 0))
    renewed = store.continue_as_new(lease, '{"args":[2],"kwargs":{}}', T0 + 3)
    assert renewed.task_options == options
    store.release(lease)

    forked, _ = store.fork("opt", "opt-copy", 0, T0 + 4)
    assert forked is not None and forked.task_options is None, "a fork is a new workflow with no canvas"

    store.cancel("opt", T0 + 5)
    resumed, _ = store.resume("opt", store.get_workflow("opt").ticket, None, T0 + 6)
    assert resumed is not None and resumed.task_options == options
    assert store.get_workflow("opt").task_options == options
