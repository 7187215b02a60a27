"""One trace from start through a wait, a send and the resumed execution to the end, through a real worker.

The worker (tests/apps/otel_export.py) writes its spans to a file, with
opentelemetry-instrumentation-celery running beside celery_durable's observer; this process
keeps its own spans (start, send, wake-up) in the SDK's in-memory exporter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from celery_durable import WorkflowStatus
from celery_durable.contrib import otel
from tests.conftest import BROKERS, configured_app, make_env
from tests.services import running_worker, wait_for

WORKFLOW = "tests.apps.wfapp.steps_then_recv"


@pytest.fixture
def traced(pg_database: str, tmp_path: Path) -> Iterator[tuple[Any, dict[str, str], InMemorySpanExporter]]:
    """The test app on Redis, traced in this process (celery_durable and Celery's instrumentation)."""
    env = make_env(BROKERS["redis"](), pg_database, tmp_path)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        with configured_app(env) as wf:
            otel.instrument(wf.durable, tracer_provider=provider)
            yield wf, env, exporter
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def read_spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def executions_in(path: Path) -> list[dict[str, Any]] | None:
    found = [s for s in read_spans(path) if s["name"] == f"celery_durable.execute {WORKFLOW}"]
    return found if len(found) >= 2 else None


def test_one_trace_spans_start_wait_send_resume_and_finish(traced: Any, tmp_path: Path) -> None:
    wf, env, exporter = traced
    spans_file = tmp_path / "worker-spans.jsonl"
    worker_env = {**env, "CD_OTEL_SPANS": str(spans_file), "CD_OTEL_CELERY": "1"}
    tracer = wf.durable.observers[0].tracer  # this process's provider: the in-memory exporter
    with running_worker(worker_env, concurrency=1):
        with tracer.start_as_current_span("POST /checkout") as request:
            handle = wf.steps_then_recv.start(1, 60, workflow_id="traced-1")
            wait_for(lambda: handle.status() == WorkflowStatus.WAITING, what="the workflow to wait")
            wf.durable.send("traced-1", "paid", topic="go")
            assert handle.result(timeout=30) == {"sum": 111, "message": "paid"}
        # The span of an execution ends just after its result is stored: wait for both to be written.
        executions = wait_for(lambda: executions_in(spans_file), what="the worker's spans of both executions")
    worker = read_spans(spans_file)
    local = exporter.get_finished_spans()
    trace_id = f"0x{request.get_span_context().trace_id:032x}"

    # Every span of the story is in the request's trace, in this process and in the worker.
    story = [s for s in worker if s["name"].startswith(("celery_durable.", "run/"))]
    assert {s["context"]["trace_id"] for s in story} == {trace_id}
    first, second = executions
    assert [first["attributes"]["celery_durable.outcome"], second["attributes"]["celery_durable.outcome"]] == [
        "waiting",
        "finished",
    ]
    assert first["attributes"]["celery_durable.workflow_id"] == "traced-1"
    # Beside opentelemetry-instrumentation-celery, its CONSUMER span run/<task> is each execution's parent.
    by_id = {s["context"]["span_id"]: s for s in worker}
    for execution in executions:
        assert by_id[execution["parent_id"]]["name"] == f"run/{WORKFLOW}"
    # The steps ran (and were traced) once; the recv waited, then received after the wake-up.
    steps = [s for s in worker if s["name"] == "celery_durable.step tests.apps.wfapp.add"]
    assert [s["attributes"]["celery_durable.step_id"] for s in steps] == [0, 1]
    assert {s["parent_id"] for s in steps} == {first["context"]["span_id"]}
    recvs = [s for s in worker if s["name"] == "celery_durable.recv go"]
    assert [r["attributes"]["celery_durable.wait.outcome"] for r in recvs] == ["waiting", "received"]
    # The send in this process woke the workflow; the resumed execution links to that wake-up.
    (send,) = [s for s in local if s.name == "celery_durable.send go"]
    (wakeup,) = [s for s in local if s.name == f"celery_durable.wakeup {WORKFLOW}"]
    assert wakeup.parent is not None and wakeup.parent.span_id == send.context.span_id
    linked = {(link["context"]["span_id"], link["attributes"].get("celery_durable.link")) for link in second["links"]}
    assert (f"0x{wakeup.context.span_id:016x}", "woken by") in linked
