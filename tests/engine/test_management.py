"""The management API (resume, fork, listings, prune) and the client, on a real store (SQLite and PostgreSQL).

No worker: each test plays the task system, executing the workflow for every message the
API asked to publish, so it sees exactly what a worker would run.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from celery import Celery

from celery_durable import Durable, DurableClient, InvalidArgument, WorkflowNotFound, WorkflowStatus
from celery_durable.store import Dispatch


class Recording(Durable):
    """A Durable whose task messages are kept in a list instead of going to a broker."""

    def __init__(self, store: Any) -> None:
        super().__init__(Celery("mgmt", set_as_current=False), store=store)
        self.published: list[Dispatch] = []

    def _publish(self, dispatch: Dispatch) -> None:
        self.published.append(dispatch)

    def run(self, fn: Any, name: str | None = None) -> Any:
        """Execute the last published message (as a worker would) and return the outcome."""
        dispatch = self.published.pop()
        return self.engine.execute(dispatch.workflow_id, dispatch.ticket, name or dispatch.name, fn)


@pytest.fixture
def d(store: Any) -> Recording:
    return Recording(store)


calls: list[str] = []
fixed = {"flag": False}


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()
    fixed["flag"] = False


def build(d: Recording) -> dict[str, Any]:
    @d.step(name="prepare")
    def prepare(x: int) -> int:
        calls.append("prepare")
        return x + 1

    @d.step(name="flaky")
    def flaky(x: int) -> int:
        calls.append("flaky")
        if not fixed["flag"]:
            raise ValueError("boom")
        return x * 10

    def pipeline(x: int) -> int:
        return flaky(prepare(x))

    def body_fails(x: int) -> int:
        value = prepare(x)
        if not fixed["flag"]:
            raise KeyError("no such thing")
        return value

    def chat(mailbox: str) -> dict[str, Any]:
        a = prepare(1)  # 0
        approval = d.recv("approval", timeout=60)  # 1
        d.send(mailbox, approval, topic="note", create_mailbox=True)  # 2
        d.set_event("stage", approval)  # 3
        b = prepare(a)  # 4
        final = d.recv("final", timeout=60)  # 5
        return {"approval": approval, "b": b, "final": final}

    return {"pipeline": pipeline, "body_fails": body_fails, "chat": chat}


def test_resume_after_an_error_reruns_the_failed_step_with_the_fix_and_not_the_ones_before(d: Recording) -> None:
    fns = build(d)
    handle = d.start("pipeline", 4, workflow_id="p1")
    d.run(fns["pipeline"])
    assert handle.status() == WorkflowStatus.ERROR
    assert d.list_workflows(status="ERROR")[0].error_summary == "ValueError: boom"
    assert calls == ["prepare", "flaky"]

    fixed["flag"] = True  # the fix is deployed
    assert d.resume("p1").status() == WorkflowStatus.PENDING
    d.run(fns["pipeline"])
    assert handle.result(timeout=0) == 50
    assert calls == ["prepare", "flaky", "flaky"], "the finished step before the failed one did not run again"
    assert [s.step_id for s in d.list_steps("p1")] == [0, 1]


def test_resume_after_a_body_error_keeps_every_checkpoint(d: Recording) -> None:
    fns = build(d)
    d.start("body_fails", 1, workflow_id="b1")
    d.run(fns["body_fails"])
    assert d.handle("b1").status() == WorkflowStatus.ERROR
    fixed["flag"] = True
    d.resume("b1")
    d.run(fns["body_fails"])
    assert d.handle("b1").result(timeout=0) == 2
    assert calls == ["prepare"]


def test_resume_of_a_cancelled_workflow_continues_and_other_statuses_change_nothing(d: Recording) -> None:
    fns = build(d)
    d.start("chat", "box", workflow_id="c1")
    d.run(fns["chat"])  # waits at step 1 (its timer is published)
    d.published.clear()
    assert d.resume("c1").status() == WorkflowStatus.WAITING, "a waiting workflow is left alone"
    assert d.published == []
    d.cancel("c1")
    d.send("c1", "yes", topic="approval")  # stored; a cancelled workflow is not woken
    assert d.published == []
    assert d.resume("c1").status() == WorkflowStatus.PENDING
    d.run(fns["chat"])  # receives "yes", sends, sets the event, waits at step 5
    d.send("c1", "done", topic="final")
    d.run(fns["chat"])
    assert d.handle("c1").result(timeout=0) == {"approval": "yes", "b": 3, "final": "done"}
    assert calls == ["prepare", "prepare"]
    with pytest.raises(WorkflowNotFound):
        d.resume("nobody")


def test_fork_replays_the_history_before_the_step_without_sending_again(d: Recording) -> None:
    fns = build(d)
    d.start("chat", "box", workflow_id="orig")
    d.run(fns["chat"])
    d.send("orig", "yes", topic="approval")
    d.run(fns["chat"])  # waits on "final" at step 5
    assert [m.payload for m in d.list_messages("box")] == ["yes"]
    calls.clear()

    fork = d.fork("orig", 4, new_workflow_id="fork")
    record = fork.record()
    assert (record.forked_from, record.forked_from_step, record.name) == ("orig", 4, "chat")
    assert d.get_events("fork") == {"stage": "yes"}
    d.run(fns["chat"], "chat")  # replays steps 0-3, runs step 4, waits at 5 for the fork's own message
    assert calls == ["prepare"]
    assert fork.status() == WorkflowStatus.WAITING
    d.send("fork", "forked", topic="final")
    d.run(fns["chat"])
    assert fork.result(timeout=0) == {"approval": "yes", "b": 3, "final": "forked"}
    assert [m.payload for m in d.list_messages("box")] == ["yes"], "the copied send was not sent again"
    assert d.handle("orig").status() == WorkflowStatus.WAITING, "the original is untouched"
    assert [m.consumed for m in d.list_messages("orig")] == [True]

    assert d.fork("orig", 4, new_workflow_id="fork").workflow_id == "fork", "the same fork again is a no-op"
    with pytest.raises(InvalidArgument):
        d.fork("orig", -1)
    with pytest.raises(WorkflowNotFound):
        d.fork("nobody", 0)


def test_listings_and_prune(d: Recording) -> None:
    fns = build(d)
    fixed["flag"] = True
    for i in range(3):
        d.start("pipeline", i, workflow_id=f"done-{i}")
        d.run(fns["pipeline"])
    d.start("chat", "box", workflow_id="live")
    d.run(fns["chat"])
    assert [r.workflow_id for r in d.list_workflows(["SUCCESS", WorkflowStatus.WAITING], id_prefix="done-")] == [
        "done-2",
        "done-1",
        "done-0",
    ]
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    assert len(d.list_workflows(created_after=past)) == 4
    assert d.list_workflows(created_before=past) == []
    with pytest.raises(InvalidArgument):
        d.list_workflows(status="BOGUS")
    with pytest.raises(InvalidArgument):
        d.prune(-1)

    assert d.prune(datetime.timedelta(hours=1)) == 0
    assert d.prune(0) == 3
    assert [r.workflow_id for r in d.list_workflows()] == ["live"]


def test_client_without_a_broker_leaves_its_work_to_the_sweep(store: Any) -> None:
    client = DurableClient("unused://", store=store, queue="workflows")
    handle = client.start("some.workflow", 1, x=2, workflow_id="c-1", timeout=30)
    record = handle.record()
    assert (record.name, record.queue, record.status) == ("some.workflow", "workflows", WorkflowStatus.PENDING)
    assert record.dispatched_at is None, "not published: the next sweep publishes it"
    assert record.timeout_at is not None and record.timeout_at == pytest.approx(record.created_at + 30)
    assert client.engine.serializer.loads(record.inputs) == {"args": [1], "kwargs": {"x": 2}}
    swept = store.sweep(record.created_at + 1, 300, 120)
    assert [(s.workflow_id, s.name, s.queue) for s in swept] == [("c-1", "some.workflow", "workflows")]
