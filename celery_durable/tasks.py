"""The Celery side of a workflow's messages: the task class, our header and ticket, publishing by name.

A workflow is a Celery task whose message carries no arguments, only a *ticket* in a keyword
argument: the inputs live in the store, so recovery can re-enqueue a workflow from the store alone
and a producer needs nothing but the task's name. Our own messages carry a header
(:data:`MESSAGE_HEADER`) that user arguments cannot reach; a message without it is a start
published by name (``app.send_task``, a canvas), whatever its keyword arguments are called.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from celery.exceptions import Ignore, Reject, Retry

from . import core, flow_concurrency, hooks
from . import validation as v
from .errors import InvalidArgument
from .handle import WorkflowHandle
from .store import Dispatch

if TYPE_CHECKING:
    from .integration import Durable

#: The keyword argument that carries the ticket in our own messages (those with MESSAGE_HEADER).
TICKET_KW = "__durable_ticket__"
#: The keyword argument that counts how often a delivery of our own message found the workflow busy.
BUSY_KW = "__durable_busy__"
#: The message header that marks a message as published by celery_durable (a wake-up, timer, retry).
MESSAGE_HEADER = "celery_durable"
__all__ = ["BUSY_KW", "MESSAGE_HEADER", "TICKET_KW", "WorkflowTask", "broker_publisher", "publish_dispatch"]
# Celery's control-flow signals: they pass through workflows and steps unrecorded. A soft time
# limit is not one of them: it is recorded as the failure of the step it cut off.
_CONTROL_FLOW = (Retry, Ignore, Reject)
# Set while this package publishes one of its own messages through a task's apply_async (Celery's
# retry does): a user's call can never set it, whatever its arguments are called.
_INTERNAL: contextvars.ContextVar[bool] = contextvars.ContextVar("celery_durable_internal", default=False)


@contextlib.contextmanager
def _internal() -> Iterator[None]:
    token = _INTERNAL.set(True)
    try:
        yield
    finally:
        _INTERNAL.reset(token)


def _our_message(request: Any) -> bool:
    """Whether the message being executed was published by celery_durable (it carries our header)."""
    if getattr(request, MESSAGE_HEADER, None):
        return True
    headers = getattr(request, "headers", None)
    return isinstance(headers, dict) and bool(headers.get(MESSAGE_HEADER))


class _QueuedTask(Task):
    """A task of the library's own (recover) published to the workflows' queue unless told otherwise.

    Not Celery's ``queue`` task attribute, which Celery 5.7 deprecates in favour of ``task_routes``
    (a library should not rewrite an application's routes)."""

    abstract = True
    durable_queue: str | None = None

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any) -> Any:
        if self.durable_queue and not options.get("queue"):
            options["queue"] = self.durable_queue
        return super().apply_async(args, kwargs, task_id=task_id, **options)


class WorkflowTask(Task):
    """Base class of workflow tasks. ``delay``/``apply_async``/``start`` start a durable workflow."""

    abstract = True
    durable: Durable
    typing = False  # the message carries only the ticket; inputs come from the store

    #: Seconds from start after which the workflow is stopped (``@durable.workflow(timeout=...)``).
    durable_timeout: float | None = None
    #: Queue of its messages (``@durable.workflow(queue=...)``, else ``DurableConfig.queue``; None: routing).
    durable_queue: str | None = None

    #: Its concurrency limit (``@durable.workflow(concurrency=N)``, flow_concurrency.py), or None.
    durable_concurrency: flow_concurrency.Concurrency | None = None

    def start(
        self,
        *args: Any,
        workflow_id: str | None = None,
        timeout: float | None = None,
        dedup_key: str | None = None,
        on_conflict: str = "return_existing",
        priority: int | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle:
        """Start the workflow (or find it: the id is an idempotency key) and return its handle.

        *timeout* (seconds, default the workflow's own ``timeout``) fixes its deadline now: once it
        passes, the workflow stops and ends CANCELLED (``result()`` raises ``WorkflowTimedOut``).
        With *dedup_key*, at most one workflow of this name with that key is unfinished at a time:
        while one is, this returns its handle and starts nothing (*on_conflict* ``"return_existing"``)
        or raises ``DuplicateWorkflow`` (``"raise"``). ``apply_async`` takes the same two options.
        *priority* (a workflow with ``concurrency=``): among those waiting for a slot of its key, lower
        is admitted first (default 0; equal priorities in start order).
        """
        priority = flow_concurrency.check_priority(priority)
        if core.workflow_body() is not None:  # hook (children): inside a workflow, start a child (a checkpoint)
            if dedup_key is not None:
                raise InvalidArgument("dedup_key is not supported when a workflow starts a child; give it a workflow_id")
            return self.durable._start_child(self, args, kwargs, workflow_id, timeout)
        options = {"dedup_key": dedup_key, "on_conflict": on_conflict}
        result = self.durable._start(self, args, kwargs, workflow_id, options, timeout=timeout, priority=priority)
        return WorkflowHandle(self.durable, result.id)  # it exists: _start just stored or found it

    def debounce(
        self,
        key: str,
        *args: Any,
        delay: v.Duration,
        max_delay: v.Duration | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle:
        """Debounce this workflow: calls with the same *key* within *delay* seconds of each other start
        one workflow, *delay* after the last call, with the last call's arguments; *max_delay* (from the
        round's first call) bounds how far a steady stream pushes it back. Returns the round's handle,
        the same for every call of the round. See :meth:`Client.debounce <celery_durable.client.Client.debounce>`.
        """
        return self.durable.debounce(self.name, key, *args, delay=delay, max_delay=max_delay, timeout=timeout, **kwargs)

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> Any:
        """Start the workflow (*task_id* is its workflow id) and return its :class:`~celery_durable.celery_results.WorkflowResult`.

        Canvas options (``link``, ``link_error``, a chain or chord it is part of) take effect when the
        workflow finishes. Under ``task_always_eager`` it runs in-process until it finishes or waits.
        """
        if _INTERNAL.get():  # a message of ours (Celery's retry of it): publish as is
            return super().apply_async(args, kwargs, task_id=task_id, **options)
        args, kwargs = v.check_call(args, kwargs)
        return self.durable._start(self, args, kwargs, task_id, options)


def publish_dispatch(app: Celery, dispatch: Dispatch, default_queue: str | None = None) -> None:
    """Publish the workflow task message *dispatch* describes, by task name (no task object needed)."""
    options: dict[str, Any] = {
        "task_id": dispatch.workflow_id,
        "kwargs": {TICKET_KW: dispatch.ticket},
        "headers": {**(hooks.message_headers.get() or {}), MESSAGE_HEADER: 1},  # ours (see _our_message); observer hook
    }
    queue = dispatch.queue or default_queue
    if queue:
        options["queue"] = queue
    if dispatch.countdown > 0:
        options["countdown"] = dispatch.countdown
    app.send_task(dispatch.name, **options)


def broker_publisher(
    broker_url: str | None, app: Celery | None = None, default_queue: str | None = None
) -> Callable[[Dispatch], None]:
    """A ``publish`` callable for :class:`~celery_durable.client.DurableClient`: through *app*, or a bare
    Celery app on *broker_url* (``send_task`` needs only the task's name, not its code).

    *default_queue* is used for workflows stored without a queue (they follow the workers' app
    routing, which a bare app does not know).
    """
    if app is None:
        app = Celery("celery_durable.client", broker=broker_url, set_as_current=False)
        app.conf.broker_connection_retry_on_startup = True
    return functools.partial(publish_dispatch, app, default_queue=default_queue)
