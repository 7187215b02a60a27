"""OpenTelemetry spans (celery_durable.contrib.otel) on a real store, read from the SDK's in-memory exporter.

No worker: the test plays the task system, executing each message the API asked to publish
(tests/e2e/test_otel.py runs the same story through a real worker).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from celery_durable import core
from celery_durable.contrib import otel
from tests.engine.test_management import Recording


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def d(store: Any, exporter: InMemorySpanExporter) -> Iterator[Recording]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    durable = Recording(store)
    otel.instrument(durable, tracer_provider=provider)
    yield durable
    provider.shutdown()


def named(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


def attr(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get(f"celery_durable.{key}")


def test_one_trace_from_start_through_a_wait_and_a_send_to_the_end(d: Recording, exporter: InMemorySpanExporter) -> None:
    @d.step(name="reserve")
    def reserve(order: str) -> str:
        return f"reserved {order}"

    def checkout(order: str) -> dict[str, Any]:
        reserved = reserve(order)
        return {"reserved": reserved, "status": d.recv("payment", timeout=60)}

    d.start("otel.checkout", "o-1", workflow_id="order-1")
    assert isinstance(d.run(checkout), core.Waiting)
    d.send("order-1", "paid", topic="payment")  # from outside: its own trace
    outcome = d.run(checkout)
    assert isinstance(outcome, core.Finished) and outcome.value["status"] == "paid"

    spans = exporter.get_finished_spans()
    (start,) = named(spans, "celery_durable.start otel.checkout")
    first, second = named(spans, "celery_durable.execute otel.checkout")
    (step,) = named(spans, "celery_durable.step reserve")  # the replay of the step makes no span
    waited, received = named(spans, "celery_durable.recv payment")
    (send,) = named(spans, "celery_durable.send payment")
    wakeups = named(spans, "celery_durable.wakeup")
    assert start.kind == SpanKind.PRODUCER and attr(start, "workflow_id") == "order-1"
    # Both executions continue the trace the start stored with the workflow, hours apart or not.
    trace_id = start.context.trace_id
    assert {s.context.trace_id for s in (first, second, step, waited, received)} == {trace_id}
    assert first.parent is not None and first.parent.span_id == start.context.span_id
    assert second.parent is not None and second.parent.span_id == start.context.span_id
    assert step.parent.span_id == first.context.span_id and waited.parent.span_id == first.context.span_id  # type: ignore[union-attr]
    assert attr(step, "step_id") == 0 and attr(step, "attempt") == 1 and attr(step, "workflow_name") == "otel.checkout"
    assert attr(waited, "wait.outcome") == "waiting" and attr(waited, "step_id") == 1
    assert attr(received, "wait.outcome") == "received" and attr(received, "wait.resumed") is True
    assert list(attr(received, "topic")) == ["payment"]
    assert [attr(first, "outcome"), attr(second, "outcome")] == ["waiting", "finished"]
    assert [attr(first, "execution"), attr(second, "execution")] == [1, 2]
    assert attr(second, "resumed_from") == "recv"
    # The send woke the workflow: its wake-up span is a child of the send.
    assert attr(send, "workflow_id") == "order-1" and send.kind == SpanKind.PRODUCER
    assert any(w.parent is not None and w.parent.span_id == send.context.span_id for w in wakeups)


def test_errors_are_recorded_on_the_step_and_the_execution(d: Recording, exporter: InMemorySpanExporter) -> None:
    @d.step(name="charge")
    def charge() -> None:
        raise ValueError("card declined")

    d.start("otel.failing", workflow_id="bad-1")
    outcome = d.run(lambda: charge())
    assert isinstance(outcome, core.Failed)

    spans = exporter.get_finished_spans()
    (step,) = named(spans, "celery_durable.step charge")
    (execution,) = named(spans, "celery_durable.execute otel.failing")
    for span in (step, execution):
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == "ValueError: card declined"
        assert [e.attributes["exception.type"] for e in span.events if e.attributes] == ["ValueError"]
    assert attr(execution, "outcome") == "failed"


def test_a_workflow_started_inside_another_joins_its_trace(d: Recording, exporter: InMemorySpanExporter) -> None:
    # The hook child workflows use: a start from inside an execution stores that execution's context.
    @d.step(name="spawn")
    def spawn() -> str:
        return d.start("otel.child", workflow_id="child-1").workflow_id

    d.start("otel.parent", workflow_id="parent-1")
    assert isinstance(d.run(lambda: spawn()), core.Finished)
    assert isinstance(d.run(lambda: "child done"), core.Finished)

    spans = exporter.get_finished_spans()
    (parent_run,) = named(spans, "celery_durable.execute otel.parent")
    (child_start,) = named(spans, "celery_durable.start otel.child")
    (child_run,) = named(spans, "celery_durable.execute otel.child")
    assert child_start.context.trace_id == child_run.context.trace_id == parent_run.context.trace_id
    assert child_run.parent is not None and child_run.parent.span_id == child_start.context.span_id



def test_a_child_workflow_joins_its_parents_trace(d: Recording, exporter: InMemorySpanExporter) -> None:
    @d.workflow(name="otel.kid")
    def kid(x: int) -> int:
        return x * 2

    def parent() -> int:
        return int(kid.start(21).result())  # a child (a checkpoint) and a durable join on it

    d.workflow(name="otel.family")(parent)
    d.start("otel.family", workflow_id="family-1")
    assert isinstance(d.run(parent), core.Waiting)  # started the child, waits for it
    assert isinstance(d.run(lambda x: x * 2), core.Finished)  # the child; its finish wakes the parent
    outcome = d.run(parent)
    assert isinstance(outcome, core.Finished) and outcome.value == 42

    spans = exporter.get_finished_spans()
    family = named(spans, "celery_durable.execute otel.family")
    (child_run,) = named(spans, "celery_durable.execute otel.kid")
    assert len(family) == 2
    assert {s.context.trace_id for s in family} == {child_run.context.trace_id}, "the child is in its parent's trace"
