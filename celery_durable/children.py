"""Child workflows: starting them from a workflow, waiting for them durably, gather and map.

The engine side, an extension built on :class:`~celery_durable.extension.WorkflowContextProtocol`;
it imports neither Celery nor SQLAlchemy. The calls a workflow makes (``start`` inside a body,
``gather``, ``map``) are in ``workflow_api.py``, the queries in ``store/sql_children.py``.

* **Starting a child is a checkpoint.** ``other_workflow.start(...)`` inside a workflow takes the next
  step id, and the child's row and that checkpoint are written in one transaction
  (``Store.start_children``): a replay finds the checkpoint and returns the same child; a crash
  before the commit leaves neither. Without an explicit id the child's id is derived from the
  parent's id and the step id (``"{parent}-{step}"``, ``"{parent}-{step}.{i}"`` for ``map``), so it
  is stable and readable in listings. A child inherits its parent's deadline (the earlier of its own
  and the parent's): a parent's timeout stops its children even if the engine's cascade is lost.
* **Waiting for children is leaving.** ``handle.result()`` on a child, ``gather`` and ``map`` are a
  *join*: one checkpoint holding every child's outcome, and while children run the parent is WAITING
  with the number of them it still waits for. The last child to finish (or, without
  ``return_exceptions``, the first to fail) wakes it, once (see ``store/sql_children.py``).
* **Errors.** A child that ended in ERROR is raised in the parent as :class:`WorkflowFailed` carrying
  the child's error type, message and traceback; a cancelled (or timed out) child as
  :class:`ChildWorkflowCancelled`. Both are ordinary errors of the parent's body.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import core
from .errors import ChildWorkflowCancelled, InvalidArgument, WorkflowConflict, WorkflowFailed, WorkflowNotFound
from .serialization import check_stored_text
from .store import StepRecord, Suspended, WorkflowStatus
from .store.child_records import ChildOutcome, ChildSpec, JoinRequest
from .timeouts import earliest, timed_out

if TYPE_CHECKING:
    from .extension import WorkflowContextProtocol
    from .handle import WorkflowHandle

#: Checkpoint kinds: one child started, a batch of children started (map), a join.
CHILD, CHILDREN, JOIN = "child", "children", "join"
_DIGEST = 16


def child_id(parent_id: str, step_id: int, index: int | None = None) -> str:
    """The id of the child started at *step_id* of *parent_id* (the *index*-th of a map): stable across replays.

    ``"{parent}-{step}"`` (``"{parent}-{step}.{index}"``), or, when that would pass the 255-character
    limit, the parent's id cut short followed by a hash of the whole of it.
    """
    suffix = f"-{step_id}" if index is None else f"-{step_id}.{index}"
    if len(parent_id) + len(suffix) <= core.MAX_ID_LENGTH:
        return parent_id + suffix
    digest = hashlib.sha256(parent_id.encode()).hexdigest()[:_DIGEST]
    keep = core.MAX_ID_LENGTH - len(suffix) - _DIGEST - 1
    return f"{parent_id[:keep]}~{digest}{suffix}"


def _passing(call: Callable[[], Any]) -> Callable[[], Any]:
    """Return the caller's errors (conflict, bad argument) instead of raising them through ``ctx.store_call``,
    which takes any ``DurableError`` for a lost claim; the caller raises them in the body."""

    def run() -> Any:
        try:
            return call()
        except (WorkflowConflict, InvalidArgument) as exc:
            return exc

    return run


def encode_inputs(ctx: WorkflowContextProtocol, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    try:
        return check_stored_text(ctx.serializer.dumps({"args": list(args), "kwargs": kwargs}), "the arguments")
    except Exception as exc:
        raise type(exc)(f"cannot start workflow {name!r}: its arguments are not serializable: {exc}") from None


def start_children(
    ctx: WorkflowContextProtocol,
    name: str,
    inputs: Sequence[str],
    *,
    explicit_id: str | None,
    queue: str | None,
    timeout: float | None,
    version: str | None,
) -> list[str]:
    """Start children of workflow *name*, one per serialized *inputs* (a checkpoint); return their ids.

    One input is a single child (``start``; *explicit_id* may name it); several are a map, whose ids are
    derived. Its first task messages are published after the commit; a lost publish is the sweep's.
    """
    kind = CHILD if explicit_id is not None or len(inputs) == 1 else CHILDREN
    step_id = ctx.take_step()
    op = core.op_name(kind, name)
    recorded = ctx.recorded(step_id, op, kind)
    if recorded is not None:
        return _recorded_ids(ctx.workflow_id, step_id, recorded)
    now = ctx.clock()
    if kind == CHILD:
        ids = [explicit_id or child_id(ctx.workflow_id, step_id)]
        output = json.dumps(ids)
    else:
        ids = [child_id(ctx.workflow_id, step_id, i) for i in range(len(inputs))]
        output = json.dumps(len(ids))
    timeout_at = earliest(None if timeout is None else now + timeout, ctx.workflow.timeout_at)
    # A child joins the trace of the execution starting it (the observers' start context, as for any start).
    start_context = ctx.observers.start_context if ctx.observers else None  # observer hook
    specs = [
        ChildSpec(cid, name, text, queue, version, timeout_at, start_context(name, cid) if start_context else None)
        for cid, text in zip(ids, inputs)
    ]
    checkpoint = StepRecord(ctx.workflow_id, step_id, op, kind, output, None, None, now, now)
    store, lease = ctx.store, ctx.lease
    result = ctx.store_call(_passing(lambda: store.start_children(lease, specs, checkpoint)), f"starting {name!r}")
    if isinstance(result, Exception):
        raise result
    ctx.publish(result)
    return ids


def _recorded_ids(parent_id: str, step_id: int, recorded: StepRecord) -> list[str]:
    value = json.loads(recorded.output or "[]")
    if isinstance(value, int):
        return [child_id(parent_id, step_id, i) for i in range(value)]
    return [str(x) for x in value]


def join(
    ctx: WorkflowContextProtocol, ids: Sequence[str], *, fail_fast: bool, timeout: float | None
) -> list[ChildOutcome]:
    """Wait durably for the children *ids* (a checkpoint); return their outcomes in that order.

    Raises the builtin ``TimeoutError`` when *timeout* passed first (a replay raises it again).
    """
    step_id = ctx.take_step()
    name = core.op_name(JOIN, ",".join(ids))
    recorded = ctx.recorded(step_id, name, JOIN)
    if recorded is None:
        store, lease = ctx.store, ctx.lease
        request = JoinRequest(step_id, name, tuple(ids), fail_fast, timeout, ctx.clock(), ctx.config.horizon)
        result = ctx.store_call(_passing(lambda: store.wait_children(lease, request)), "a wait for children")
        if isinstance(result, Exception):
            raise result
        if isinstance(result, Suspended):
            ctx.suspend(result.dispatch, {"wait": "children", "step": step_id, "children": list(ids), "timeout": timeout})
        output = None
        if not result.timed_out:
            output = json.dumps(
                [[o.workflow_id, o.status and o.status.value, o.output, o.error, o.timeout_at] for o in result.outcomes]
            )
        now = ctx.clock()
        checkpoint = StepRecord(ctx.workflow_id, step_id, name, JOIN, output, None, None, now, now)
        recorded = ctx.store_call(lambda: store.record_step(lease, checkpoint), "a wait for children")
    if recorded.output is None:
        raise TimeoutError(
            f"workflow {ctx.workflow_id!r}: children {_shown(ids)} did not all finish within {timeout} s"
        )
    return [
        ChildOutcome(cid, WorkflowStatus(status) if status else None, output, error, timeout_at)
        for cid, status, output, error, timeout_at in json.loads(recorded.output)
    ]


def _shown(ids: Sequence[str]) -> str:
    return ", ".join(map(repr, ids[:3])) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")


def outcome(loads: Callable[[str], Any], o: ChildOutcome) -> tuple[bool, Any]:
    """``(True, value)`` for a child that succeeded, ``(False, error)`` for one that did not."""
    if o.status == WorkflowStatus.SUCCESS:
        return True, loads(o.output) if o.output is not None else None
    if o.status is None:
        return False, WorkflowNotFound(f"child workflow {o.workflow_id!r} does not exist (pruned?)")
    if o.status == WorkflowStatus.CANCELLED:
        why = "was cancelled"
        if o.error is not None and o.timeout_at is not None:
            why = f"was stopped: {timed_out(o.workflow_id, o.timeout_at)}"
        return False, ChildWorkflowCancelled(f"child workflow {o.workflow_id!r} {why}")
    if o.status == WorkflowStatus.ERROR:
        record = json.loads(o.error or "{}")
        kind, message = str(record.get("type", "")), str(record.get("message", ""))
        return False, WorkflowFailed(
            f"child workflow {o.workflow_id!r} failed: {kind}: {message}",
            error_type=kind,
            error_message=message,
            remote_traceback=str(record.get("traceback", "")),
        )
    raise AssertionError(f"a join returned an unfinished child {o.workflow_id!r}")  # pragma: no cover


def results(loads: Callable[[str], Any], outcomes: Sequence[ChildOutcome], return_exceptions: bool) -> list[Any]:
    """The values of *outcomes* in order; without *return_exceptions* raise the first failure (in that order)."""
    values: list[Any] = []
    for o in outcomes:
        if o.status is not None and not o.status.is_terminal:
            values.append(None)  # a fail-fast join ended before it: a failure below is raised
            continue
        ok, value = outcome(loads, o)
        if not ok and not return_exceptions:
            raise value
        values.append(value)
    return values


def parent_context(handle: WorkflowHandle) -> core.WorkflowContext | None:
    """The running workflow whose child *handle* is, when this is that workflow's body (its result is a join)."""
    ctx = core.workflow_body()
    if ctx is None or handle.parent_id != ctx.workflow_id:
        return None
    return ctx


def child_result(ctx: WorkflowContextProtocol, handle: WorkflowHandle, timeout: float | None) -> Any:
    """``handle.result()`` of a child inside its parent: a durable join on that one child."""
    (value,) = results(ctx.serializer.loads, join(ctx, [handle.workflow_id], fail_fast=True, timeout=timeout), False)
    return value


def gather_blocking(handles: Sequence[WorkflowHandle], return_exceptions: bool, timeout: float | None) -> list[Any]:
    """``gather`` outside a workflow body: wait for each handle's ``result()`` in turn."""
    deadline = None if timeout is None else time.monotonic() + timeout
    values: list[Any] = []
    for h in handles:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            values.append(h.result(timeout=left))
        except TimeoutError:
            raise
        except Exception as exc:
            if not return_exceptions:
                raise
            values.append(exc)
    return values
