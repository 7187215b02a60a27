"""What a Celery user sees of a workflow: ``delay().get()``, ``AsyncResult.state`` through a wait, canvas, revoke.

Real ``celery worker`` processes (tests/apps/resultapp.py) on Redis and RabbitMQ, the store on
PostgreSQL, and Celery's Redis result backend, its database result backend (SQLAlchemy on the same
PostgreSQL) or no result backend at all. Plain tasks record what they received in counter files,
so a test sees when (and with what) a link, a chain or a chord body ran.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import chain, chord, group
from celery.exceptions import TaskRevokedError
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from celery_durable import WorkflowStatus
from tests.conftest import load_app
from tests.services import REDIS_URL, Worker, wait_for

BACKENDS = ["redis", "database", "none"]


def backend_url(kind: str, database_url: str) -> str:
    if kind == "redis":
        return f"{REDIS_URL}/{uuid.uuid4().int % 14 + 1}"
    if kind == "database":
        return "db+" + database_url
    return ""


def load(env: dict[str, str]) -> Any:
    """tests.apps.resultapp configured by *env* in this (producer) process."""
    return load_app(env, "tests.apps.resultapp")


@pytest.fixture
def app_and_worker(request: pytest.FixtureRequest, e2e_env: dict[str, str]) -> Iterator[tuple[Any, Worker]]:
    kind = getattr(request, "param", "redis")
    env = {**e2e_env, "CD_RESULT_BACKEND": backend_url(kind, e2e_env["CD_DATABASE_URL"])}
    module = load(env)
    worker = Worker(env, app="tests.apps.resultapp").start()
    try:
        yield module, worker
    finally:
        worker.stop()
        try:
            with module.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(env["CD_QUEUE"])
        except Exception:
            pass
        module.durable.close()


def state_of(module: Any, workflow_id: str) -> str:
    """What ``AsyncResult(workflow_id).state`` says: from the result backend, as any Celery user reads it."""
    return AsyncResult(workflow_id, app=module.app).state


@pytest.mark.parametrize("app_and_worker", BACKENDS, indirect=True)
def test_delay_get_and_the_task_state_through_a_wait(app_and_worker: tuple[Any, Worker]) -> None:
    module, _ = app_and_worker
    has_backend = module.app.conf.result_backend is not None
    result = module.pay.delay("o-1")
    assert result.id and isinstance(result, AsyncResult)
    handle = module.durable.handle(result.id)
    wait_for(lambda: handle.status() == WorkflowStatus.WAITING, what="the workflow to wait")

    # The workflow waits: its result is not ready, and nobody says SUCCESS.
    assert result.state == "WAITING" and not result.ready()
    assert result.info["wait"] == "recv" and result.info["topics"] == ["paid"]
    with pytest.raises(CeleryTimeoutError):
        result.get(timeout=0.5)
    if has_backend:
        wait_for(lambda: state_of(module, result.id) == "WAITING", what="the backend to say WAITING")
        plain = AsyncResult(result.id, app=module.app)
        assert plain.info["wait"] == "recv" and plain.info["topics"] == ["paid"], plain.info
        assert not plain.ready()

    module.durable.send(result.id, "paid", topic="paid")
    expected = {"order": "o-1", "reserved": "reserved o-1", "status": "paid"}
    assert result.get(timeout=30) == expected
    assert result.state == "SUCCESS" and result.successful()
    if has_backend:
        plain = AsyncResult(result.id, app=module.app)
        assert plain.get(timeout=30) == expected, "Celery's own AsyncResult reads the workflow's result"
        assert plain.state == "SUCCESS"

    # A workflow that fails: FAILURE with its error, raised by get() as Celery does.
    failing = module.pay.apply_async(("o-2",), task_id=f"fail-{uuid.uuid4().hex[:6]}")
    wait_for(lambda: module.durable.handle(failing.id).status() == WorkflowStatus.WAITING, what="o-2 to wait")
    module.durable.send(failing.id, "decline", topic="paid")
    with pytest.raises(ValueError, match="payment of o-2 declined"):
        failing.get(timeout=30)
    assert isinstance(failing.get(timeout=30, propagate=False), ValueError)
    assert failing.state == "FAILURE" and failing.failed()
    if has_backend:
        plain = AsyncResult(failing.id, app=module.app)
        wait_for(lambda: plain.state == "FAILURE", what="the backend to say FAILURE")
        with pytest.raises(Exception, match="payment of o-2 declined"):
            plain.get(timeout=5)

    # Cancelled through the durable API: REVOKED, and get() raises TaskRevokedError.
    cancelled = module.pay.delay("o-3")
    wait_for(lambda: module.durable.handle(cancelled.id).status() == WorkflowStatus.WAITING, what="o-3 to wait")
    assert module.durable.cancel(cancelled.id) == WorkflowStatus.CANCELLED
    assert cancelled.state == "REVOKED"
    with pytest.raises(TaskRevokedError):
        cancelled.get(timeout=5)
    if has_backend:
        assert state_of(module, cancelled.id) == "REVOKED"


@pytest.mark.parametrize("app_and_worker", ["redis", "none"], indirect=True)
def test_a_celery_revoke_cancels_the_workflow(app_and_worker: tuple[Any, Worker]) -> None:
    """``AsyncResult(id).revoke()`` (a plain one, not ours) reaches the worker, which cancels the workflow."""
    module, _ = app_and_worker
    result = module.pay.delay("o-4")
    handle = module.durable.handle(result.id)
    wait_for(lambda: handle.status() == WorkflowStatus.WAITING, what="the workflow to wait")
    AsyncResult(result.id, app=module.app).revoke()
    wait_for(lambda: handle.status() == WorkflowStatus.CANCELLED, timeout=30, what="the revoke to cancel it")
    assert result.state == "REVOKED"
    if module.app.conf.result_backend is not None:
        wait_for(lambda: state_of(module, result.id) == "REVOKED", what="the backend to say REVOKED")
    # A message sent now does not bring it back.
    module.durable.send(result.id, "paid", topic="paid")
    time.sleep(1)
    assert handle.status() == WorkflowStatus.CANCELLED


@pytest.mark.parametrize("app_and_worker", ["redis", "database"], indirect=True)
def test_canvas_continues_only_when_the_workflow_finishes(app_and_worker: tuple[Any, Worker], tmp_path: Path) -> None:
    module, _ = app_and_worker
    durable, marks = module.durable, module.marks
    # Ids of their own: the database result backend's table is shared by every test of the session.
    ids = {name: f"{name}-{uuid.uuid4().hex[:8]}" for name in ("linked", "failed", "chained", "head-1", "head-2")}

    def waiting(workflow_id: str) -> None:
        wait_for(lambda: durable.handle(workflow_id).status() == WorkflowStatus.WAITING, what=f"{workflow_id} to wait")

    # link= and link_error= on apply_async.
    module.pay.apply_async(
        ("l-1",), task_id=ids["linked"], link=module.collect.s(name="link"), link_error=module.on_error.s()
    )
    module.pay.apply_async(("l-2",), task_id=ids["failed"], link=module.collect.s(name="link"),
                                    link_error=module.on_error.s())
    # A chain: the next task gets the workflow's result.
    chained = chain(module.pay.s("c-1").set(task_id=ids["chained"]), module.collect.s(name="chain")).delay()
    # A chord over two workflows.
    body = chord([module.pay.s("h-1").set(task_id=ids["head-1"]), module.pay.s("h-2").set(task_id=ids["head-2"])],
                 module.summarize.s()).delay()
    # A group.
    grouped = group(module.quick.s(1), module.quick.s(2)).delay()
    for workflow_id in ids.values():
        waiting(workflow_id)
    time.sleep(1)  # room for a wrongly fired link to show up
    assert marks("link") == [] and marks("chain") == [] and marks("summarize") == [] and marks("errback") == []
    assert grouped.get(timeout=30) == [10, 20]

    durable.send(ids["linked"], "paid", topic="paid")
    wait_for(lambda: marks("link"), what="the link to run")
    assert marks("link") == [{"order": "l-1", "reserved": "reserved l-1", "status": "paid"}]

    durable.send(ids["failed"], "decline", topic="paid")
    wait_for(lambda: marks("errback"), what="the errback to run")
    assert marks("errback") == [{"id": ids["failed"], "error": "ValueError: payment of l-2 declined"}]

    durable.send(ids["chained"], "paid", topic="paid")
    assert chained.get(timeout=30) == {"order": "c-1", "reserved": "reserved c-1", "status": "paid"}
    assert len(marks("chain")) == 1

    durable.send(ids["head-1"], "paid", topic="paid")
    time.sleep(1)
    assert marks("summarize") == [], "the chord body waits for every header workflow"
    durable.send(ids["head-2"], "paid-too", topic="paid")
    assert [r["status"] for r in body.get(timeout=30)] == ["paid", "paid-too"]
    assert len(marks("summarize")) == 1
    time.sleep(1)
    assert len(marks("link")) == 1 and len(marks("errback")) == 1 and len(marks("chain")) == 1, "each fired once"


@pytest.fixture
def tracking(e2e_env: dict[str, str]) -> Iterator[Any]:
    env = {**e2e_env, "CD_RESULT_BACKEND": backend_url("redis", ""), "CD_TRACK_STARTED": "1"}
    module = load(env)
    worker = Worker(env, app="tests.apps.resultapp").start()
    try:
        yield module, worker
    finally:
        worker.stop()
        module.durable.close()


def test_task_track_started_never_hides_a_wait_or_a_verdict(tracking: tuple[Any, Worker]) -> None:
    """With ``task_track_started`` Celery stores STARTED when any message of the id begins, even one that
    turns out to have nothing to run (a stale duplicate): the state is put back from the store."""
    from celery_durable.integration import publish_dispatch
    from celery_durable.store import Dispatch

    module, worker = tracking

    def stale_duplicate(workflow_id: str, ignored_before: int) -> None:
        """Publish a stale duplicate of the workflow's first message (ticket 0); wait until it was ignored."""
        publish_dispatch(module.app, Dispatch(workflow_id, module.pay.name, None, 0))
        wait_for(lambda: worker.output().count(f"[{workflow_id}] ignored") > ignored_before, what="the duplicate")

    waiting = module.pay.delay("t-1")
    wait_for(lambda: module.durable.handle(waiting.id).status() == WorkflowStatus.WAITING, what="the wait")
    wait_for(lambda: state_of(module, waiting.id) == "WAITING", what="WAITING over STARTED")
    stale_duplicate(waiting.id, 1)
    assert state_of(module, waiting.id) == "WAITING"

    module.durable.send(waiting.id, "decline", topic="paid")
    wait_for(lambda: state_of(module, waiting.id) == "FAILURE", what="the failure")
    stale_duplicate(waiting.id, 2)
    assert state_of(module, waiting.id) == "FAILURE"
    with pytest.raises(Exception, match="payment of t-1 declined"):
        AsyncResult(waiting.id, app=module.app).get(timeout=5)


def test_monitors_see_a_waiting_workflow_as_waiting(e2e_env: dict[str, str]) -> None:
    """With task events on (``-E``, what Flower reads), a wait sends ``task-waiting`` and no ``task-succeeded``;
    the finish sends ``task-succeeded``. Read with Celery's own event receiver, as Flower does."""
    import threading

    env = {**e2e_env, "CD_EVENTS": "1"}
    module = load(env)
    events: list[dict[str, Any]] = []

    receivers: list[Any] = []

    def receive() -> None:
        with module.app.connection_for_read() as conn:
            receiver = module.app.events.Receiver(conn, handlers={"*": events.append})
            receivers.append(receiver)
            receiver.capture(limit=None, timeout=None, wakeup=True)  # until should_stop

    listener = threading.Thread(target=receive, daemon=True)
    listener.start()
    time.sleep(1)
    worker = Worker(env, app="tests.apps.resultapp").start()
    try:
        result = module.pay.delay("e-1")
        wait_for(lambda: module.durable.handle(result.id).status() == WorkflowStatus.WAITING, what="the wait")

        def of(kind: str) -> list[dict[str, Any]]:
            return [e for e in events if e.get("type") == kind and e.get("uuid") == result.id]

        wait_for(lambda: of("task-waiting"), what="a task-waiting event")
        assert of("task-waiting")[0]["wait"] == "recv" and of("task-waiting")[0]["topics"] == ["paid"]
        assert of("task-succeeded") == [], "a wait is not a success"
        module.durable.send(result.id, "paid", topic="paid")
        wait_for(lambda: of("task-succeeded"), what="the finish's task-succeeded event")
        assert len(of("task-succeeded")) == 1
    finally:
        for receiver in receivers:
            receiver.should_stop = True
        worker.stop()
        listener.join(timeout=5)
        module.durable.close()


def test_waits_leave_no_garbage_in_the_worker_child(e2e_env: dict[str, str]) -> None:
    """A wait ends its Celery task with Ignore; what Celery's tracer keeps of that exception is a reference
    cycle of ~150 kB that only a full garbage collection frees. It is freed at once (task_postrun), so a
    child's memory stays flat over many waits (before the fix: +148 kB per wait, +145 MB per 1,000)."""
    module = load(e2e_env)
    worker = Worker(e2e_env, concurrency=1, app="tests.apps.resultapp").start()

    def rss_mb() -> float:
        (child,) = worker.children()
        status = Path(f"/proc/{child}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    def waits(n: int, tag: str) -> None:
        ids = [module.pay.delay(f"{tag}{i}", 3600).id for i in range(n)]
        for workflow_id in ids:
            wait_for(lambda i=workflow_id: module.durable.store.get_workflow(i).status == WorkflowStatus.WAITING)

    try:
        waits(50, "warm-")
        before = rss_mb()
        waits(400, "m-")
        grown_kb = (rss_mb() - before) * 1024 / 400
    finally:
        worker.stop()
        module.durable.close()
    print(f"worker child: {grown_kb:.1f} kB more per wait over 400 waits")
    assert grown_kb < 30, f"a worker child grows {grown_kb:.0f} kB per wait"
