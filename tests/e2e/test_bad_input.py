"""Bad input against a real worker: it is refused or recorded, never retried forever, never leaked raw.

Producers that have only a task's name (``app.send_task``) skip every check the library makes at
``start``; the worker applies the same rules and says what it refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_durable import InvalidArgument, SerializationError, WorkflowNotFound, WorkflowStatus
from tests.conftest import BROKERS, configured_app, make_env
from tests.services import Worker, wait_for


@pytest.fixture
def env(pg_database: str, tmp_path: Path) -> dict[str, str]:
    return make_env(BROKERS["redis"](), pg_database, tmp_path)


@pytest.fixture
def wf(env: dict[str, str]) -> Iterator[Any]:
    with configured_app(env) as module:
        yield module


@pytest.fixture
def worker(env: dict[str, str], wf: Any) -> Iterator[Worker]:
    w = Worker(env, concurrency=1).start()
    try:
        yield w
    finally:
        w.stop()


def test_send_task_with_ids_that_cannot_be_stored(wf: Any, env: dict[str, str], worker: Worker) -> None:
    queue = env["CD_QUEUE"]
    for bad in ("x" * 300, "nul\x00id"):
        wf.app.send_task(wf.three_adds.name, args=(1,), task_id=bad, queue=queue)
    # One worker, one process: once a later workflow finished, both bad messages were handled.
    assert wf.three_adds.start(1, workflow_id="after").result(timeout=60) == 4
    log = worker.output()
    assert log.count("dropping a tests.apps.wfapp.three_adds message published by name: workflow id") == 2, log[-3000:]
    assert "must be 1 to 255 characters long, got 300" in log and "must not contain NUL" in log
    assert "interrupted" not in log and "DataError" not in log
    assert [r.workflow_id for r in wf.durable.list_workflows()] == ["after"]


def test_send_task_with_arguments_that_cannot_be_stored_records_why(
    wf: Any, env: dict[str, str], worker: Worker
) -> None:
    wf.app.send_task(wf.echo_args.name, args=("\ud800",), task_id="lone-surrogate", queue=env["CD_QUEUE"])
    handle = wait_for(lambda: _handle(wf, "lone-surrogate"), timeout=60, what="the workflow row")
    with pytest.raises(SerializationError, match=r"cannot start workflow .*echo_args.* published by name.*surrogate"):
        handle.result(timeout=60)
    assert handle.status() == WorkflowStatus.ERROR and handle.record().executions == 1


def _handle(wf: Any, workflow_id: str) -> Any:
    try:
        return wf.durable.handle(workflow_id)
    except WorkflowNotFound:
        return None


def test_internal_keyword_names_are_ordinary_arguments(wf: Any, env: dict[str, str], worker: Worker) -> None:
    started = wf.echo_args.start(1, __durable_ticket__=99, __durable_busy__="x", workflow_id="kw-start")
    assert started.result(timeout=60) == {"args": [1], "kwargs": {"__durable_ticket__": 99, "__durable_busy__": "x"}}
    # The same names from a producer that publishes by name.
    wf.app.send_task(wf.echo_args.name, kwargs={"__durable_ticket__": 0}, task_id="kw-by-name", queue=env["CD_QUEUE"])
    handle = wait_for(lambda: _handle(wf, "kw-by-name"), timeout=60, what="the workflow row")
    assert handle.result(timeout=60) == {"args": [], "kwargs": {"__durable_ticket__": 0}}


def test_poison_value_inside_a_body_ends_in_error_not_a_retry_loop(wf: Any, worker: Worker) -> None:
    handle = wf.event_setter.start("k\x00", 1, 0, workflow_id="poison-key")
    with pytest.raises(InvalidArgument, match="event key must not contain NUL"):
        handle.result(timeout=60)
    assert handle.status() == WorkflowStatus.ERROR and handle.record().executions == 1
    assert "interrupted" not in worker.output()
