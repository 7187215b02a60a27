"""Child workflows driven by hand (no Celery): start as a checkpoint, joins woken once, errors, cascades.

Each test plays the task system: it runs ``Engine.execute`` for the parent and for each child with
the tickets the engine asked to publish, and counts the parent's executions.
"""

from __future__ import annotations

from typing import Any

import pytest

from celery_durable import children, core
from celery_durable.config import DurableConfig
from celery_durable.errors import ChildWorkflowCancelled, WorkflowFailed
from celery_durable.serialization import JSONSerializer
from celery_durable.store import Dispatch, WorkflowStatus

from .test_engine import Clock, start


class Cluster:
    """An engine plus the bodies by name: runs published dispatches as a worker would."""

    def __init__(self, store: Any, clock: Clock) -> None:
        self.published: list[Dispatch] = []
        self.engine = core.Engine(
            store, JSONSerializer(), DurableConfig(horizon=60), self.published.append, clock=clock
        )
        self.bodies: dict[str, Any] = {}
        self.runs: dict[str, int] = {}

    def run(self, dispatch: Dispatch) -> core.Outcome:
        self.runs[dispatch.workflow_id] = self.runs.get(dispatch.workflow_id, 0) + 1
        return self.engine.execute(dispatch.workflow_id, dispatch.ticket, dispatch.name, self.bodies[dispatch.name])

    def take(self, workflow_id: str) -> list[Dispatch]:
        mine = [d for d in self.published if d.workflow_id == workflow_id]
        self.published[:] = [d for d in self.published if d.workflow_id != workflow_id]
        return mine

    def drain_children(self, parent: str) -> None:
        """Run every published message except the parent's."""
        while any(d.workflow_id != parent for d in self.published):
            dispatch = next(d for d in self.published if d.workflow_id != parent)
            self.published.remove(dispatch)
            self.run(dispatch)


@pytest.fixture
def cluster(store: Any) -> Cluster:
    return Cluster(store, Clock())


def child_start(name: str, *args: Any, workflow_id: str | None = None) -> str:
    ctx = core.require_context("start")
    (cid,) = children.start_children(
        ctx,
        name,
        [children.encode_inputs(ctx, name, args, {})],
        explicit_id=workflow_id,
        queue="q",
        timeout=None,
        version=None,
    )
    return cid


def gather(ids: list[str], return_exceptions: bool = False) -> list[Any]:
    ctx = core.require_context("gather")
    outcomes = children.join(ctx, ids, fail_fast=not return_exceptions, timeout=None)
    return children.results(ctx.engine.serializer.loads, outcomes, return_exceptions)


def test_starting_a_child_is_a_checkpoint_and_its_result_a_join(cluster: Cluster) -> None:
    cluster.bodies["double"] = lambda x: 2 * x
    started: list[str] = []

    def parent() -> int:
        cid = child_start("double", 21)
        started.append(cid)
        return int(gather([cid])[0])

    cluster.bodies["parent"] = parent
    ticket = start(cluster.engine, "p", "parent")
    assert isinstance(cluster.run(Dispatch("p", "parent", None, ticket)), core.Waiting)
    (kid,) = cluster.engine.store.list_workflows(parent_id="p")
    assert kid.workflow_id == "p-0" and kid.parent_id == "p"
    cluster.drain_children("p")
    (wake,) = cluster.take("p")
    outcome = cluster.run(wake)
    assert isinstance(outcome, core.Finished) and outcome.value == 42
    assert started == ["p-0", "p-0"], "the replay returned the same child"
    assert len(cluster.engine.store.list_workflows(parent_id="p")) == 1, "and never started a second one"
    assert cluster.runs["p"] == 2


def test_gather_wakes_the_parent_once(cluster: Cluster) -> None:
    n = 25
    cluster.bodies["square"] = lambda x: x * x

    def parent() -> int:
        ids = [child_start("square", i) for i in range(n)]
        return sum(gather(ids))

    cluster.bodies["parent"] = parent
    ticket = start(cluster.engine, "p", "parent")
    assert isinstance(cluster.run(Dispatch("p", "parent", None, ticket)), core.Waiting)
    cluster.drain_children("p")
    wakeups = cluster.take("p")
    assert len(wakeups) == 1, "one wake-up for the parent, from the last child"
    outcome = cluster.run(wakeups[0])
    assert isinstance(outcome, core.Finished) and outcome.value == sum(i * i for i in range(n))
    assert cluster.runs["p"] == 2


def test_a_child_error_is_a_workflow_failed_the_parent_may_catch(cluster: Cluster) -> None:
    def bad() -> None:
        raise KeyError("nope")

    cluster.bodies["bad"] = bad

    def parent() -> list[str]:
        cid = child_start("bad")
        try:
            gather([cid])
        except WorkflowFailed as exc:
            return [exc.error_type, exc.error_message, str(exc)]
        return []

    cluster.bodies["parent"] = parent
    ticket = start(cluster.engine, "p", "parent")
    cluster.run(Dispatch("p", "parent", None, ticket))
    cluster.drain_children("p")
    outcome = cluster.run(cluster.take("p")[0])
    assert isinstance(outcome, core.Finished)
    kind, message, text = outcome.value
    assert kind == "builtins.KeyError" and "nope" in message and "'p-0'" in text


def test_cancelling_a_child_fails_the_parents_wait_and_return_exceptions_keeps_going(cluster: Cluster) -> None:
    cluster.bodies["wait_forever"] = lambda: core.require_context("recv").recv(("never",), None)
    cluster.bodies["quick"] = lambda: "ok"

    def parent() -> list[str]:
        ids = [child_start("wait_forever"), child_start("quick")]
        got = gather(ids, return_exceptions=True)
        return [type(g).__name__ if isinstance(g, BaseException) else g for g in got]

    cluster.bodies["parent"] = parent
    ticket = start(cluster.engine, "p", "parent")
    cluster.run(Dispatch("p", "parent", None, ticket))
    cluster.drain_children("p")
    assert cluster.take("p") == [], "one child still waits"
    record, wakeups = cluster.engine.store.cancel_tree("p-0", cluster.engine.clock())
    assert record is not None and [d.workflow_id for d in wakeups] == ["p"]
    outcome = cluster.run(wakeups[0])
    assert isinstance(outcome, core.Finished) and outcome.value == ["ChildWorkflowCancelled", "ok"]


def test_an_uncaught_child_cancel_ends_the_parent_in_error(cluster: Cluster) -> None:
    cluster.bodies["wait_forever"] = lambda: core.require_context("recv").recv(("never",), None)
    cluster.bodies["parent"] = lambda: gather([child_start("wait_forever")])
    ticket = start(cluster.engine, "p", "parent")
    cluster.run(Dispatch("p", "parent", None, ticket))
    cluster.drain_children("p")
    _, wakeups = cluster.engine.store.cancel_tree("p-0", cluster.engine.clock())
    outcome = cluster.run(wakeups[0])
    assert isinstance(outcome, core.Failed) and isinstance(outcome.error, ChildWorkflowCancelled)
    assert cluster.engine.store.get_workflow("p").status is WorkflowStatus.ERROR  # type: ignore[union-attr]


def test_a_parents_timeout_stops_its_children(cluster: Cluster) -> None:
    cluster.bodies["wait_forever"] = lambda: core.require_context("recv").recv(("never",), None)
    cluster.bodies["parent"] = lambda: gather([child_start("wait_forever")])
    engine = cluster.engine
    record, _ = engine.store.create_workflow(
        "p", "parent", '{"args": [], "kwargs": {}}', None, engine.clock(), timeout_at=engine.clock() + 50
    )
    waiting = cluster.run(Dispatch("p", "parent", None, record.ticket))
    assert isinstance(waiting, core.Waiting) and waiting.dispatch is not None
    cluster.drain_children("p")
    kid = engine.store.get_workflow("p-0")
    assert kid is not None and kid.timeout_at == engine.clock() + 50, "a child inherits its parent's deadline"
    engine.clock.now += 51  # type: ignore[attr-defined]
    outcome = cluster.run(waiting.dispatch)
    assert isinstance(outcome, core.Cancelled)
    assert engine.store.get_workflow("p-0").status is WorkflowStatus.CANCELLED  # type: ignore[union-attr]


def test_derived_ids_stay_within_the_limit() -> None:
    assert children.child_id("order-1", 3) == "order-1-3"
    assert children.child_id("order-1", 3, 7) == "order-1-3.7"
    long_id = "x" * 255
    derived = children.child_id(long_id, 12, 9999)
    assert len(derived) == 255 and derived.endswith("-12.9999")
    assert derived != children.child_id("x" * 254 + "y", 12, 9999)


def test_a_child_start_then_a_recv_replays_from_this_processs_history(cluster: Cluster) -> None:
    """The child's start is a checkpoint like any other: a later wake-up in the same process (which,
    on PostgreSQL, replays from the checkpoints this process kept: step_cache.py) returns the same
    child instead of starting it again."""
    cluster.bodies["double"] = lambda x: 2 * x

    def parent() -> list[Any]:
        ctx = core.require_context("parent")
        cid = child_start("double", 4)  # step 0
        noted = ctx.run_step("note", lambda: "noted", (), {})  # step 1: a checkpoint after it
        message = ctx.recv(("go",), 60)[1]  # step 2: waits, so this process keeps its history
        return [cid, noted, message]

    cluster.bodies["parent"] = parent
    ticket = start(cluster.engine, "p", "parent")
    assert isinstance(cluster.run(Dispatch("p", "parent", None, ticket)), core.Waiting)
    cluster.take("p")  # the recv's timer (stale once the message wakes it)
    (wake,) = cluster.engine.store.send("p", "go", '"paid"', cluster.engine.clock()).wakeups
    outcome = cluster.run(wake)
    assert isinstance(outcome, core.Finished), outcome
    assert outcome.value == ["p-0", "noted", "paid"]
    assert len(cluster.engine.store.list_workflows(parent_id="p")) == 1
