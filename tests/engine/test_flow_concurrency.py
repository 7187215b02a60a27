"""Concurrency limits on the engine side (flow_concurrency.py): the key, the options' checks, admission at
the first execution of a workflow started by name, and ``start`` through a Durable (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_durable import ConcurrencyLimitExceeded, Durable, InvalidArgument, core, flow_concurrency
from celery_durable.config import DurableConfig
from celery_durable.serialization import JSONSerializer
from celery_durable.store import Dispatch, WorkflowStatus


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def published() -> list[Dispatch]:
    return []


@pytest.fixture
def engine(store: Any, published: list[Dispatch]) -> core.Engine:
    return core.Engine(store, JSONSerializer(), DurableConfig(horizon=60), published.append, clock=Clock())


def by_name(engine: core.Engine, workflow_id: str, *args: Any) -> int:
    """Store a workflow as a start by name does: no limit known, PENDING, ticket 0."""
    inputs = engine.serializer.dumps({"args": list(args), "kwargs": {}})
    record, created = engine.store.create_workflow(workflow_id, "body", inputs, None, engine.clock())
    assert created
    return record.ticket


def tenant_body(tenant: str, hold: bool = False) -> str:
    if hold:
        core.require_context("test").recv(("go",), 30)  # waits: keeps its slot
    return tenant


def test_a_workflow_started_by_name_is_admitted_at_its_first_execution(engine: core.Engine, published: list[Dispatch]) -> None:
    spec = flow_concurrency.concurrency("body", tenant_body, 1, "tenant", None)
    assert spec is not None
    body = flow_concurrency.admitting(tenant_body, spec)
    first = engine.execute("a", by_name(engine, "a", "acme", True), "body", body)
    assert isinstance(first, core.Waiting)  # admitted, then waits in recv holding its slot
    queued = engine.execute("b", by_name(engine, "b", "acme"), "body", body)
    assert isinstance(queued, core.Waiting) and queued.dispatch is None  # no timer: admission sends its message
    assert queued.wait == {"wait": "admission", "key": "body[acme]"}
    record = engine.store.get_workflow("b")
    assert record is not None and record.status is WorkflowStatus.ENQUEUED and record.flow_key == "body[acme]"
    other = engine.execute("c", by_name(engine, "c", "globex"), "body", body)  # another key: its own slot
    assert isinstance(other, core.Finished)
    (wakeup,) = engine.store.send("a", "go", '"x"', engine.clock()).wakeups
    assert isinstance(engine.execute("a", wakeup.ticket, "body", body), core.Finished)
    (admitted,) = [d for d in published if d.workflow_id == "b"]  # published by a's finish
    outcome = engine.execute("b", admitted.ticket, "body", body)
    assert isinstance(outcome, core.Finished) and outcome.value == "acme"
    assert engine.store.flow_slots("body[acme]") == []


def test_cancel_newest_by_name_ends_the_refused_one_in_error(engine: core.Engine) -> None:
    spec = flow_concurrency.concurrency("body", tenant_body, 1, None, "cancel_newest")
    assert spec is not None
    body = flow_concurrency.admitting(tenant_body, spec)
    assert isinstance(engine.execute("a", by_name(engine, "a", "x", True), "body", body), core.Waiting)
    refused = engine.execute("b", by_name(engine, "b", "x"), "body", body)
    assert isinstance(refused, core.Failed) and isinstance(refused.error, ConcurrencyLimitExceeded)
    assert "cancel_newest" in str(refused.error)
    assert engine.store.flow_slots("body") == ["a"]


def test_the_key_from_a_parameter_or_a_function() -> None:
    def wf(user: str, n: int = 1, *, region: str = "eu") -> None: ...

    by_param = flow_concurrency.concurrency("wf", wf, 2, "region", None)
    assert by_param is not None and by_param.key_of(("u",), {}) == "wf[eu]"
    assert by_param.key_of(("u",), {"region": "us"}) == "wf[us]"
    by_fn = flow_concurrency.concurrency("wf", wf, 2, lambda user, *a, **k: user.lower(), None)
    assert by_fn is not None and by_fn.flow(("ACME",), {}, 3).key == "wf[acme]"
    assert len(by_fn.key_of(("x" * 1000,), {})) <= 255
    bad = flow_concurrency.concurrency("wf", wf, 2, lambda *a, **k: 7, None)
    assert bad is not None
    with pytest.raises(InvalidArgument, match="must return a str"):
        bad.key_of(("u",), {})


@pytest.mark.parametrize(
    ("limit", "key", "strategy", "message"),
    [
        (0, None, None, "concurrency must be an int >= 1, got 0"),
        (True, None, None, "concurrency must be an int >= 1"),
        (None, "user", None, "need concurrency=N"),
        (2, "tenant", None, "concurrency_key 'tenant' is not a parameter of"),
        (2, 5, None, "concurrency_key must be a parameter name or a function"),
        (2, None, "drop", "limit_strategy must be one of 'queue', 'cancel_newest', 'cancel_in_progress'"),
    ],
)
def test_bad_options_are_refused_at_the_decorator(
    tmp_path: Path, limit: Any, key: Any, strategy: Any, message: str
) -> None:
    durable = Durable(Celery("t", broker="memory://"), f"sqlite:///{tmp_path}/d.sqlite3")
    with pytest.raises(InvalidArgument, match=message):

        @durable.workflow(concurrency=limit, concurrency_key=key, limit_strategy=strategy)
        def wf(user: str) -> None: ...


def test_start_through_the_workflow(tmp_path: Path) -> None:
    app = Celery("t", broker="memory://")
    durable = Durable(app, f"sqlite:///{tmp_path}/d.sqlite3")

    @durable.workflow(concurrency=1, concurrency_key="user")
    def queued(user: str) -> None: ...

    @durable.workflow(concurrency=1, limit_strategy="cancel_newest")
    def refusing(user: str) -> None: ...

    assert queued.start("ann").status() is WorkflowStatus.PENDING
    assert queued.start("bob").status() is WorkflowStatus.PENDING  # another key
    waiting = queued.start("ann", priority=-1)
    assert waiting.status() is WorkflowStatus.ENQUEUED
    assert [r.workflow_id for r in durable.list_workflows(WorkflowStatus.ENQUEUED)] == [waiting.workflow_id]
    with pytest.raises(InvalidArgument, match="priority must be an int"):
        queued.start("ann", priority="high")
    refusing.start("x")
    before = len(durable.list_workflows())
    with pytest.raises(ConcurrencyLimitExceeded, match="was not started"):
        refusing.delay("y")
    assert len(durable.list_workflows()) == before  # nothing stored
    durable.store.close()
