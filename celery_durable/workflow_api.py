"""The API used inside a workflow body: messages, events, sleep, patches, children, step calls.

No Celery, no SQLAlchemy. :class:`WorkflowAPI` is a mixin of :class:`~celery_durable.Durable`, so
``durable.recv(...)``, ``durable.map(...)`` and the rest are called on the Durable; each checks its
arguments and hands the durable operation to the engine (core.py) or to an engine extension
(children.py, versioning.py), which take a step id and a checkpoint for it.

Whether code runs in a workflow body is asked in one way: :func:`core.workflow_body` (None outside
workflows and inside steps), or :func:`core.require_context` for operations that exist only in a
body (they raise :class:`~celery_durable.errors.NotInWorkflow`). The operations a producer calls
too (``send``, ``get_event``, ``start``, ``gather``, a step call) have one entry point each, which
asks it once and takes the in-workflow branch here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from . import children, core
from . import validation as v
from .errors import InvalidArgument
from .retries import RetryPolicy

if TYPE_CHECKING:
    from .config import DurableConfig
    from .handle import WorkflowHandle

F = TypeVar("F", bound=Callable[..., Any])


# -- the in-workflow halves of operations that also work outside workflows -----------------------------
def as_step(fn: F, step_name: str, policy: RetryPolicy) -> F:
    """Wrap *fn* as the checkpointed step *step_name*: in a workflow body a call is a step; elsewhere
    (outside workflows, inside another step) it is a plain call."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = core.workflow_body()
        if ctx is None:
            return fn(*args, **kwargs)
        return ctx.run_step(step_name, fn, args, kwargs, policy)

    wrapper.step_name = step_name  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def send(
    ctx: core.WorkflowContext,
    workflow_id: str,
    topic: str,
    payload: str,
    idempotency_key: str | None,
    create_mailbox: bool,
) -> None:
    """``send`` from a workflow body (arguments checked, *payload* encoded): a checkpoint, sent once."""
    if idempotency_key is not None:
        raise InvalidArgument("idempotency_key is for sends outside workflows; inside one, send is already exactly-once")
    ctx.send(workflow_id, topic, payload, create_mailbox)


def get_event(ctx: core.WorkflowContext, workflow_id: str, key: str, timeout: float | None, default: Any) -> Any:
    """``get_event`` from a workflow body (arguments checked): a checkpointed wait that leaves the worker."""
    value = ctx.get_event(workflow_id, key, timeout)
    return default if value is core.TIMED_OUT else value


class WorkflowAPI:
    """What ``Durable`` offers inside workflow bodies (``send`` and ``get_event``: :class:`~celery_durable.client.Client`)."""

    if TYPE_CHECKING:  # provided by Durable
        config: DurableConfig
        _step_workflow: Any

        @property
        def version(self) -> str: ...
        @property
        def engine(self) -> core.Engine: ...

    # -- messages, events, time -------------------------------------------------------------------------
    def recv(self, topic: str | None = None, timeout: float | None = 60, default: Any = None) -> Any:
        """Return the oldest unread message on *topic*, waiting up to *timeout* seconds; *default* on timeout.

        Only inside a workflow. The deadline is recorded when it first waits, so a replay waits only for what
        is left; ``timeout=0`` polls, ``None`` waits forever. While it waits the workflow holds no worker.
        """
        stored_topic = v.check_topic(topic)
        seconds = v.check_timeout(timeout)
        _, value = core.require_context("recv").recv((stored_topic,), seconds)
        return default if value is core.TIMED_OUT else value

    def recv_any(self, topics: Sequence[str | None], timeout: float | None = 60, default: Any = None) -> Any:
        """Like :meth:`recv` on several topics: return ``(topic, message)`` for the oldest message of any, or *default*."""
        if not isinstance(topics, (list, tuple)) or not topics:
            raise InvalidArgument(f"topics must be a non-empty list of topics, got {v.shown(topics)}")
        stored = tuple(dict.fromkeys(v.check_topic(t) for t in topics))
        seconds = v.check_timeout(timeout)
        topic, value = core.require_context("recv_any").recv(stored, seconds)
        return default if value is core.TIMED_OUT else (topic or None, value)

    def continue_as_new(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Restart this workflow with new inputs and an empty history, under the same id (only inside a workflow).

        Atomic: its checkpoints and the messages it already received are deleted and the inputs replaced in
        one transaction, then the body runs again from the top with ``*args``/``**kwargs`` in the same
        execution. Messages not yet received, events and the workflow's deadline stay. Use it in a loop that
        lives long (a workflow that receives thousands of messages): each wake-up replays the history, so
        the history should stay short. Never returns.
        """
        args, kwargs = v.check_call(args, kwargs)
        core.require_context("continue_as_new").continue_as_new(args, kwargs)
        raise AssertionError("unreachable")  # pragma: no cover

    def set_event(self, key: str, value: Any) -> None:
        """Publish *value* under *key* for this workflow (checkpointed; the last value wins). Only inside a workflow."""
        key = v.check_id(key, "event key")
        payload = self.engine.encode_payload(value, "event value")
        core.require_context("set_event").set_event(key, payload)

    def sleep(self, seconds: float) -> None:
        """Sleep durably inside a workflow: the workflow leaves its worker and resumes after *seconds*."""
        value = v.check_timeout(seconds, "seconds", allow_none=False)
        assert value is not None
        core.require_context("sleep").sleep(value)

    # -- patches (versioning.py) --------------------------------------------------------------------------
    def patched(self, patch: str) -> bool:
        """Whether this workflow takes the branch added by change *patch* (only inside a workflow).

        True for a workflow that reaches this point running the new code, False when replaying a
        history recorded before the patch existed; see versioning.py and docs/changing-workflow-code.md.
        """
        v.check_id(patch, "patch name")
        return core.require_context("patched").patched(patch)

    def deprecate_patch(self, patch: str) -> None:
        """Stand where ``patched(patch)`` was once every workflow that predates the patch finished.

        Histories that recorded the patch still replay; new ones record nothing here.
        """
        v.check_id(patch, "patch name")
        core.require_context("deprecate_patch").deprecate_patch(patch)

    # -- where this runs ----------------------------------------------------------------------------------
    @property
    def workflow_id(self) -> str | None:
        """The id of the workflow executing here, or ``None`` outside workflows."""
        ctx = core.current_context()
        return ctx.workflow_id if ctx is not None else None

    @property
    def parent_workflow_id(self) -> str | None:
        """The id of the parent of the workflow executing here (``None``: no parent, or outside workflows)."""
        ctx = core.current_context()
        return ctx.workflow.parent_id if ctx is not None else None

    # -- children (children.py) ---------------------------------------------------------------------------
    def _start_child(
        self, task: Any, args: Sequence[Any], kwargs: dict[str, Any], workflow_id: str | None, timeout: float | None
    ) -> WorkflowHandle:
        """``task.start(...)`` inside a workflow body: start a child (a checkpoint) and return its handle."""
        from .handle import WorkflowHandle

        ctx = core.require_context("start")
        explicit = v.check_id(workflow_id) if workflow_id is not None else None
        seconds = v.check_timeout(timeout if timeout is not None else getattr(task, "durable_timeout", None))
        queue = v.check_queue(getattr(task, "queue", None) or self.config.queue)
        inputs = [children.encode_inputs(ctx, task.name, args, kwargs)]
        (cid,) = children.start_children(
            ctx, task.name, inputs, explicit_id=explicit, queue=queue, timeout=seconds, version=self.version
        )
        return WorkflowHandle(self, cid, parent_id=ctx.workflow_id)  # type: ignore[arg-type]

    def gather(
        self, handles: Iterable[WorkflowHandle], *, return_exceptions: bool = False, timeout: float | None = None
    ) -> list[Any]:
        """Wait for workflows and return their results in the order given.

        Inside a workflow, on its own children: a durable wait (the workflow leaves its worker and is
        woken once, when the last child finishes, or the first fails without *return_exceptions*;
        a replay returns the recorded results). A failed child raises :class:`WorkflowFailed` (its
        error type and message), a cancelled one :class:`ChildWorkflowCancelled`; with
        *return_exceptions* those errors are returned in its place. *timeout* raises the builtin
        ``TimeoutError``. Outside a workflow it blocks, polling each handle's ``result()``.
        """
        handles = list(handles)
        return_exceptions = v.check_flag(return_exceptions, "return_exceptions")
        seconds = v.check_timeout(timeout)
        ctx = core.workflow_body()
        if ctx is None:
            return children.gather_blocking(handles, return_exceptions, seconds)
        if not handles:
            return []
        ids = [h.workflow_id for h in handles]
        outcomes = children.join(ctx, ids, fail_fast=not return_exceptions, timeout=seconds)
        return children.results(ctx.serializer.loads, outcomes, return_exceptions)

    def map(self, workflow_or_step: Any, iterable: Iterable[Any], *, queue: str | None = None) -> list[Any]:
        """Run one child workflow per item (``workflow_or_step(item)``) and gather their results, in order.

        Only inside a workflow. A workflow task runs as itself; a step runs as a child workflow of the
        generic task ``celery_durable.<prefix>map_step``, which calls it once as a checkpointed step
        (so every worker needs the step registered, as with workflows). The children are started in
        one transaction (batched inserts) and published on *queue* (default: the workflow's own
        queue, else the ``queue`` option); the parent is woken once, when the last one finishes or the
        first one fails (its error is raised as in :meth:`gather`).
        """
        ctx = core.require_context("map")
        step_name = getattr(workflow_or_step, "step_name", None)
        task = self._step_workflow if step_name is not None else workflow_or_step
        if not isinstance(getattr(task, "name", None), str) or not hasattr(task, "durable"):
            raise InvalidArgument(f"map takes a workflow or a step of this Durable, got {v.shown(workflow_or_step)}")
        queue = v.check_queue(queue or getattr(task, "queue", None) or self.config.queue)
        lead = (step_name,) if step_name is not None else ()
        inputs = [children.encode_inputs(ctx, task.name, (*lead, item), {}) for item in iterable]
        if not inputs:
            return []
        seconds = v.check_timeout(getattr(task, "durable_timeout", None))
        ids = children.start_children(
            ctx, task.name, inputs, explicit_id=None, queue=queue, timeout=seconds, version=self.version
        )
        return children.results(ctx.serializer.loads, children.join(ctx, ids, fail_fast=True, timeout=None), False)
