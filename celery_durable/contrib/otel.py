"""OpenTelemetry tracing for durable workflows (``pip install 'celery-durable[otel]'``).

``instrument(durable)`` installs an :class:`OTelObserver` (see :mod:`celery_durable.hooks`) on a
``Durable`` or a ``DurableClient``. Do it where the app is created, so the workers and every
process that starts or sends to workflows trace alike. Spans (tracer ``celery_durable``):

=========================================  =====================================================
``celery_durable.start <workflow>``        PRODUCER: a workflow stored (its context is stored too)
``celery_durable.execute <workflow>``      one execution of the body; ``celery_durable.outcome``
``celery_durable.step <step>``             one attempt of a step; errors recorded
``celery_durable.recv <topics>``           a ``recv`` (``get_event``, ``sleep`` alike), with
                                           ``celery_durable.wait.outcome``: ``waiting`` (it left
                                           the worker), ``received``, ``timed_out``
``celery_durable.send <topic>``            PRODUCER: a message stored for a workflow
``celery_durable.wakeup <workflow>``       PRODUCER: the task message that runs a workflow now
=========================================  =====================================================

Attributes: ``celery_durable.workflow_id``, ``celery_durable.workflow_name``,
``celery_durable.step_id``, ``celery_durable.step_name``, ``celery_durable.attempt``,
``celery_durable.topic``, ``celery_durable.execution`` (1 for the first execution).

How the context travels:

* **Start.** The start span is a child of the caller's current span (a web request, say) and
  its context is stored with the workflow (the ``trace_context`` column). A workflow started
  from inside another one stores the parent execution's context: the child joins its trace.
* **Every execution**, however late (after a wait of days, on another worker, after a
  recovery), is a child of that stored context. When ``opentelemetry-instrumentation-celery``
  runs its CONSUMER span ``run/<task>`` in the same trace, that span is the parent instead, so
  the two nest; when it is in another trace (a message published by the sweep, by a sender in
  another trace), the execution stays in the workflow's trace and *links* to it.
* **Send to wake-up.** The wake-up message carries the context of its ``wakeup`` span in the
  header :data:`HEADER`; the execution it runs links to it, so a trace viewer leads from the
  sender to the resumed workflow. A message received by a ``recv`` that did not wait (it was
  already there) woke nothing, so no link is made.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from .. import core, hooks
from ..client import Client
from ..store import Dispatch, StepRecord, WaitRequest, WorkflowRecord

__all__ = ["HEADER", "OTelObserver", "instrument"]

T = TypeVar("T")
#: The task message header that carries the waker's trace context (W3C, JSON-encoded).
HEADER = "celery_durable_trace"
PREFIX = "celery_durable."


def instrument(client: Client, tracer_provider: trace.TracerProvider | None = None) -> OTelObserver:
    """Trace *client*'s workflows (a ``Durable`` or ``DurableClient``) from now on; return the observer.

    *tracer_provider* defaults to the global one (``opentelemetry.trace.set_tracer_provider``).
    """
    observer = OTelObserver(tracer_provider)
    client.add_observer(observer)
    return observer


class OTelObserver(hooks.Observer):
    """Makes OpenTelemetry spans of workflow executions, steps, waits, sends and wake-ups."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("celery_durable", tracer_provider=tracer_provider)

    # -- start: the context every execution continues -------------------------------------------------
    def start_context(self, name: str, workflow_id: str) -> str | None:
        attributes = {PREFIX + "workflow_id": workflow_id, PREFIX + "workflow_name": name}
        with self.tracer.start_as_current_span(f"celery_durable.start {name}", kind=SpanKind.PRODUCER, attributes=attributes):
            return _serialize()

    # -- executions ------------------------------------------------------------------------------------------
    def execution(self, workflow: WorkflowRecord, run: Callable[[], core.Outcome]) -> core.Outcome:
        stored = _deserialize(workflow.trace_context)
        current = trace.get_current_span().get_span_context()
        links = []
        parent: Context | None = None  # the current context: run/<task> when it is in the workflow's trace
        if stored is not None:
            stored_span = trace.get_current_span(stored).get_span_context()
            if not current.is_valid or current.trace_id != stored_span.trace_id:
                parent = stored
                if current.is_valid:
                    links.append(Link(current, {PREFIX + "link": "task"}))
        woken_by = _waker()
        if woken_by is not None:
            links.append(Link(woken_by, {PREFIX + "link": "woken by"}))
        attributes: dict[str, Any] = {
            PREFIX + "workflow_id": workflow.workflow_id,
            PREFIX + "workflow_name": workflow.name,
            PREFIX + "execution": workflow.executions,
        }
        if workflow.wait_kind is not None:  # the wait this execution was woken from
            attributes[PREFIX + "resumed_from"] = workflow.wait_kind
            if workflow.wait_step is not None:
                attributes[PREFIX + "resumed_from_step"] = workflow.wait_step
        name = f"celery_durable.execute {workflow.name}"
        with self._span(name, parent, attributes, links=links) as span:
            outcome = run()
            span.set_attribute(PREFIX + "outcome", type(outcome).__name__.lower())
            if isinstance(outcome, core.Failed):
                _record_error(span, outcome.error)
            elif isinstance(outcome, core.Refused):
                _record_error(span, outcome.error)
            elif isinstance(outcome, core.Interrupted):
                span.add_event("interrupted", {"exception.type": type(outcome.error).__name__, "exception.message": str(outcome.error)})
            elif isinstance(outcome, core.Cancelled) and outcome.reason is not None:
                span.set_attribute(PREFIX + "cancelled_reason", str(outcome.reason))
            return outcome

    def step(self, ctx: core.WorkflowContext, step_id: int, name: str, attempt: int, run: Callable[[], T]) -> T:
        attributes = _workflow_attributes(ctx, step_id)
        attributes[PREFIX + "step_name"] = name
        attributes[PREFIX + "attempt"] = attempt
        with self._span(f"celery_durable.step {name}", None, attributes) as span:
            try:
                return run()
            except Exception as exc:
                _record_error(span, exc)
                raise

    def wait(self, ctx: core.WorkflowContext, request: WaitRequest, run: Callable[[], StepRecord]) -> StepRecord:
        attributes = _workflow_attributes(ctx, request.step_id)
        attributes[PREFIX + "topic"] = list(request.topics)
        if request.timeout is not None:
            attributes[PREFIX + "timeout"] = request.timeout
        if ctx.workflow.wait_step == request.step_id:
            attributes[PREFIX + "wait.resumed"] = True  # this execution was woken from this very wait
        label = {"recv": "recv", "event": "get_event"}.get(request.kind, request.kind)
        with self._span(f"celery_durable.{label} {','.join(request.topics)}".rstrip(), None, attributes) as span:
            try:
                step = run()
            except core.Suspend as suspend:
                span.set_attribute(PREFIX + "wait.outcome", "waiting")
                if suspend.dispatch is not None:
                    span.set_attribute(PREFIX + "wait.timer_in", suspend.dispatch.countdown)
                raise
            except Exception as exc:
                _record_error(span, exc)
                raise
            timed_out = step.output is None and step.error is None
            span.set_attribute(PREFIX + "wait.outcome", "timed_out" if timed_out else "received")
            if step.topic is not None:
                span.set_attribute(PREFIX + "received_topic", step.topic)
            return step

    def send(self, sender: str | None, destination: str, topic: str, run: Callable[[], None]) -> None:
        attributes: dict[str, Any] = {PREFIX + "workflow_id": destination, PREFIX + "topic": topic}
        if sender is not None:
            attributes[PREFIX + "sender_id"] = sender
        with self._span(f"celery_durable.send {topic or '(default)'}", None, attributes, kind=SpanKind.PRODUCER):
            run()

    def wakeup(self, dispatch: Dispatch, run: Callable[[], None]) -> None:
        attributes = {PREFIX + "workflow_id": dispatch.workflow_id, PREFIX + "workflow_name": dispatch.name}
        with self._span(f"celery_durable.wakeup {dispatch.name}", None, attributes, kind=SpanKind.PRODUCER):
            token = hooks.message_headers.set({**(hooks.message_headers.get() or {}), HEADER: _serialize()})
            try:
                run()
            finally:
                hooks.message_headers.reset(token)

    @contextmanager
    def _span(
        self,
        name: str,
        parent: Context | None,
        attributes: dict[str, Any],
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        links: list[Link] | None = None,
    ) -> Iterator[Span]:
        # Errors are recorded by the hooks themselves: the engine's control flow (a wait leaving the
        # worker, a cancellation) passes through as BaseExceptions that are not failures.
        with self.tracer.start_as_current_span(
            name,
            context=parent,
            kind=kind,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span


def _workflow_attributes(ctx: core.WorkflowContext, step_id: int) -> dict[str, Any]:
    return {
        PREFIX + "workflow_id": ctx.workflow_id,
        PREFIX + "workflow_name": ctx.workflow.name,
        PREFIX + "step_id": step_id,
    }


def _record_error(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def _serialize() -> str:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return json.dumps(carrier, sort_keys=True)


def _deserialize(text: str | None) -> Context | None:
    if not text:
        return None
    try:
        carrier = json.loads(text)
    except ValueError:
        return None
    if not isinstance(carrier, dict):
        return None
    context = propagate.extract(carrier)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def _waker() -> trace.SpanContext | None:
    """The span context of the wake-up that published the Celery task message running now, if any."""
    from celery import current_task  # only this module's callers run inside Celery tasks

    request = getattr(current_task, "request", None)
    text = getattr(request, HEADER, None)
    if text is None:
        headers = getattr(request, "headers", None)
        text = headers.get(HEADER) if isinstance(headers, dict) else None
    context = _deserialize(text) if isinstance(text, str) else None
    return trace.get_current_span(context).get_span_context() if context is not None else None
