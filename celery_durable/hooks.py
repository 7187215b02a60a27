"""Observers: hooks called at a few well-defined points of a workflow's life (for tracing, metrics, logs).

An :class:`Observer` does nothing by default; a subclass overrides what it needs
(:mod:`celery_durable.contrib.otel` is one). Install one on a ``Durable`` or a ``DurableClient``
with ``durable.add_observer(observer)``; every process that starts, runs or sends to workflows
needs its own (a worker imports the app module, so adding it there covers both).

The "around" hooks receive a ``run`` callable and must call it exactly once and return (or
raise) what it returned (or raised): they see every outcome, exceptions included, without the
engine having to report them twice. What ``run`` may raise besides ordinary exceptions:
:class:`celery_durable.core.Suspend` (a ``BaseException``) when the workflow leaves its worker to
wait, and the engine's other control-flow signals (cancellation, a deadline passed). They are
not errors.

Where each hook is called (each call site is one line marked ``# observer hook``):

======================  ==========================================================================
``start_context``       ``Management.create``: a workflow (or a child) is about to be stored
``execution``           ``Engine.execute``: one execution of a workflow body, under its lock
``step``                ``WorkflowContext.run_step``: one attempt of a step body (not replays)
``wait``                ``WorkflowContext._wait``: a ``recv``/``get_event``/``sleep`` decided now
``send``                ``WorkflowContext.send`` and ``Management.send``: a message stored (not replays)
``wakeup``              ``Engine.publish_all``: a task message published to run a workflow now
======================  ==========================================================================

With no observer installed each site costs one truth test of an empty list.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .core import Outcome, WorkflowContext
    from .store import Dispatch, StepRecord, WaitRequest, WorkflowRecord

__all__ = ["Observer", "Observers", "message_headers"]

log = logging.getLogger("celery_durable")
T = TypeVar("T")

#: Extra headers for the task message being published in this context (set by a ``wakeup`` hook,
#: merged by the Celery publisher), so a woken execution can tell who woke it.
message_headers: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "celery_durable_message_headers", default=None
)


class Observer:
    """Base class of observers: every hook does nothing. Override the ones you need."""

    def start_context(self, name: str, workflow_id: str) -> str | None:
        """A workflow *name* with id *workflow_id* is about to be stored, in the starter's process.

        Return text to store with it as its ``trace_context`` (``None``: nothing). Called for every
        start, including a duplicate start of an existing id (whose stored context is kept), and
        for a workflow started from inside another one, in that workflow's execution.
        """
        return None

    def execution(self, workflow: WorkflowRecord, run: Callable[[], Outcome]) -> Outcome:
        """Around one execution of *workflow* (the row as claimed: its attempt counter, the wait it
        was woken from, its stored ``trace_context``). ``run`` returns the :class:`~celery_durable.core.Outcome`."""
        return run()

    def step(self, ctx: WorkflowContext, step_id: int, name: str, attempt: int, run: Callable[[], T]) -> T:
        """Around one attempt (1-based) of step *name* at *step_id*; replayed steps are not run, so not seen."""
        return run()

    def wait(self, ctx: WorkflowContext, request: WaitRequest, run: Callable[[], StepRecord]) -> StepRecord:
        """Around a waiting operation (``request.kind``: ``recv``, ``event`` or ``sleep``) that has no checkpoint yet.

        ``run`` returns its checkpoint (``output`` and ``error`` both ``None``: it timed out), or raises ``Suspend`` when the
        workflow leaves its worker to wait (a later execution calls this hook again for the same step).
        """
        return run()

    def send(self, sender: str | None, destination: str, topic: str, run: Callable[[], None]) -> None:
        """Around a send to *destination* (from workflow *sender*, or from outside one: ``None``).

        *topic* is the stored topic (``""`` for the default topic). Replayed sends are not seen.
        """
        run()

    def wakeup(self, dispatch: Dispatch, run: Callable[[], None]) -> None:
        """Around publishing a task message that runs a workflow (a send's wake-up, a resume, the sweep).

        Headers set in :data:`message_headers` while ``run`` runs travel with the message.
        """
        run()


class Observers(list[Observer]):
    """The observers of one engine, called in order (the first one outermost). Empty: call nothing."""

    def start_context(self, name: str, workflow_id: str) -> str | None:
        found = None
        for observer in self:
            context = observer.start_context(name, workflow_id)
            found = found if found is not None else context
        return found

    def execution(self, workflow: WorkflowRecord, run: Callable[[], Outcome]) -> Outcome:
        return self._around("execution", run, workflow)

    def step(self, ctx: WorkflowContext, step_id: int, name: str, attempt: int, run: Callable[[], T]) -> T:
        return self._around("step", run, ctx, step_id, name, attempt)

    def wait(self, ctx: WorkflowContext, request: WaitRequest, run: Callable[[], StepRecord]) -> StepRecord:
        return self._around("wait", run, ctx, request)

    def send(self, sender: str | None, destination: str, topic: str, run: Callable[[], None]) -> None:
        self._around("send", run, sender, destination, topic)

    def wakeup(self, dispatch: Dispatch, run: Callable[[], None]) -> None:
        self._around("wakeup", run, dispatch)

    def _around(self, hook: str, run: Callable[[], Any], *args: Any) -> Any:
        for observer in reversed(self):
            run = _bind(getattr(observer, hook), args, run)
        return run()


def _bind(method: Callable[..., Any], args: tuple[Any, ...], run: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: method(*args, run)
