"""Celery's own result semantics for workflows: task states, ``AsyncResult``, canvas, revoke, eager mode.

The helpers of :mod:`celery_durable.integration` (the module that knows Celery) for what a Celery
user pokes at: a workflow's task id is its workflow id, and

* ``AsyncResult(workflow_id).state`` tells the truth: nothing is stored while the workflow runs
  (PENDING, or STARTED with ``task_track_started``), the custom state ``WAITING`` (its ``info``
  says what for) while it waits, and SUCCESS / FAILURE / REVOKED only when it has finished. A wait
  ends its Celery task with ``Ignore``, so no result, no link and no success event is sent there.
* Canvas (``link``, ``link_error``, ``chain``, ``chord``, ``group``) is taken off the message that
  starts a workflow and stored with it (``task_options``); the execution that finishes the
  workflow puts it back on its request, so Celery's own tracer fires it, once, with the
  workflow's result. Messages of ours never carry it.
* :class:`WorkflowResult`, returned by ``delay``/``apply_async``, reads the store (the source of
  truth), so ``.get()`` works with no result backend at all.

Which execution reports what (each report is written once, where no later one can overtake it):
a wait's ``WAITING`` is written before the execution releases the workflow's lock (the engine's
``on_outcome``); SUCCESS/FAILURE by Celery's tracer after the finishing execution; REVOKED by the
cancel (``Durable.cancel``, a Celery revoke of the id) or, for a timeout, by the execution that
stopped it.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from celery import states
from celery.backends.base import DisabledBackend
from celery.exceptions import TaskRevokedError
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from kombu.utils.json import dumps, loads

from .errors import InvalidArgument, WorkflowCancelled, WorkflowNotFound
from .outcomes import Cancelled, Outcome, Waiting
from .store import Dispatch, WorkflowRecord, WorkflowStatus

if TYPE_CHECKING:
    from celery import Celery, Task

    from .client import Client
    from .handle import WorkflowHandle
    from .management import Management

log = logging.getLogger("celery_durable")

#: The workflow task whose execution runs in this thread (for :meth:`CeleryResults._report`).
RUNNING_TASK: contextvars.ContextVar[Task | None] = contextvars.ContextVar("celery_durable_task", default=None)

#: The custom Celery state of a waiting workflow; ``AsyncResult.info`` says what it waits for.
WAITING = "WAITING"

# apply_async option -> the request attribute Celery's tracer reads it from.
_CANVAS = {
    "link": "callbacks",
    "link_error": "errbacks",
    "chain": "chain",
    "chord": "chord",
    "group_id": "group",
    "group_index": "group_index",
}
_STATES = {
    WorkflowStatus.PENDING: states.PENDING,
    WorkflowStatus.ENQUEUED: states.PENDING,  # waiting for a concurrency slot: not received by a worker yet
    WorkflowStatus.RUNNING: states.STARTED,
    WorkflowStatus.WAITING: WAITING,
    WorkflowStatus.SUCCESS: states.SUCCESS,
    WorkflowStatus.ERROR: states.FAILURE,
    WorkflowStatus.CANCELLED: states.REVOKED,
}


# -- canvas ------------------------------------------------------------------------------------------
def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return [dict(v) for v in value] if isinstance(value, (list, tuple)) else [dict(value)]


def take_canvas(options: dict[str, Any]) -> str | None:
    """Remove the canvas options from *options* (``apply_async``'s); return them as text to store, or None."""
    canvas: dict[str, Any] = {}
    for option, attribute in _CANVAS.items():
        value = options.pop(option, None)
        if value is None or value == []:
            continue
        if attribute in ("callbacks", "errbacks", "chain"):
            value = _as_list(value)
        elif attribute == "chord":
            value = dict(value)
        canvas[attribute] = value
    return dumps(canvas) if canvas else None


def canvas_of_request(request: Any) -> str | None:
    """The canvas a message published by name (``send_task``, a canvas) carries, as text to store."""
    canvas = {a: getattr(request, a, None) for a in _CANVAS.values()}
    canvas = {a: v for a, v in canvas.items() if v is not None and v != []}
    return dumps(canvas) if canvas else None


def strip_canvas(request: Any) -> None:
    """Clear the canvas from the running request: a wait fires nothing, a retry message carries nothing."""
    for attribute in _CANVAS.values():
        if getattr(request, attribute, None) is not None:
            setattr(request, attribute, None)


def restore_canvas(request: Any, record: WorkflowRecord | None) -> None:
    """Put the canvas stored at the workflow's start back on *request*, for the execution that finishes it."""
    if record is None or record.task_options is None:
        return
    for attribute, value in loads(record.task_options).items():
        setattr(request, attribute, value)


# -- states --------------------------------------------------------------------------------------------
def stores_results(task: Task) -> bool:
    """Whether Celery keeps results for *task* (a result backend, results not ignored, not eager unless
    ``task_store_eager_result``)."""
    if isinstance(task.backend, DisabledBackend) or task.ignore_result:
        return False
    request = task.request
    if getattr(request, "is_eager", False) and not task.app.conf.task_store_eager_result:
        return False
    return not getattr(request, "ignore_result", False)


def report_waiting(task: Task, workflow_id: str, wait: dict[str, Any] | None) -> None:
    """Store the ``WAITING`` state with what the workflow waits for (``AsyncResult.info``)."""
    task.backend.store_result(workflow_id, {**(wait or {}), "since": time.time()}, WAITING, request=task.request)


def report_revoked(task: Task, workflow_id: str, reason: str, request: Any = None) -> None:
    """Store REVOKED for a cancelled workflow (and count it as a chord part: *request* carries its
    canvas), as Celery does for a revoke."""
    task.backend.mark_as_revoked(workflow_id, reason, request=task.request if request is None else request)


def restate(task: Task, client: Client, workflow_id: str) -> None:
    """Store again what the workflow's record says, after Celery's ``task_track_started`` wrote STARTED
    for a message that turned out to have nothing to run (a duplicate, a stale timer, a busy workflow)."""
    record = client.store.get_workflow(workflow_id)
    if record is None or record.status in (WorkflowStatus.PENDING, WorkflowStatus.RUNNING):
        return
    meta = _meta(client, record)
    task.backend.store_result(workflow_id, meta["result"], meta["status"], request=task.request)


def celery_state(record: WorkflowRecord) -> str:
    """The Celery state a stored workflow reads as."""
    return _STATES[record.status]


class WorkflowResult(AsyncResult):
    """The ``AsyncResult`` of a workflow, read from the store: it needs no result backend.

    ``state`` follows the workflow (PENDING, STARTED while running, ``WAITING``, SUCCESS, FAILURE,
    REVOKED); ``get()`` waits for the workflow's result (on PostgreSQL for the finish's NOTIFY) and
    raises its error like Celery does; ``revoke()`` cancels the workflow (``durable.cancel``) and
    then revokes the id through Celery as usual.
    """

    def __init__(self, workflow_id: str, client: Client, **kwargs: Any) -> None:
        super().__init__(workflow_id, **kwargs)
        self.client = client

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent to another process (pickled, copied): a plain AsyncResult of the same id there, which
        # reads the result backend; this one's store client does not travel.
        return AsyncResult, (self.id,)

    def _record(self) -> WorkflowRecord | None:
        return self.client.store.get_workflow(self.id)

    def _get_task_meta(self) -> dict[str, Any]:
        record = self._record()
        if record is None:
            return {"status": states.PENDING, "result": None, "task_id": self.id, "traceback": None, "children": []}
        return _meta(self.client, record)

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        **_: Any,
    ) -> Any:
        """Wait until the workflow finishes; return its result, or raise its error (*propagate*).

        ``celery.exceptions.TimeoutError`` when it has not finished within *timeout* seconds. A
        cancelled workflow raises ``TaskRevokedError``, as a revoked Celery task does.
        """
        from .handle import WorkflowHandle

        handle = WorkflowHandle(self.client, self.id)
        try:
            return handle.result(timeout=timeout, poll_interval=interval)
        except TimeoutError:
            raise CeleryTimeoutError(f"workflow {self.id!r} did not finish within {timeout} s") from None
        except WorkflowNotFound:
            raise
        except WorkflowCancelled as exc:
            if propagate:
                raise TaskRevokedError(str(exc)) from exc
            return TaskRevokedError(str(exc))
        except Exception as exc:
            if propagate:
                raise
            return exc

    wait = get  # AsyncResult.wait is an alias of get

    def revoke(self, connection: Any = None, terminate: bool = False, signal: Any = None, wait: bool = False,
               timeout: float | None = None) -> None:
        """Cancel the workflow (durably, in the store), then revoke the id through Celery's workers."""
        cancel = getattr(self.client, "cancel", None)
        if cancel is not None:
            try:
                cancel(self.id)
            except WorkflowNotFound:
                pass
        super().revoke(connection=connection, terminate=terminate, signal=signal, wait=wait, timeout=timeout)


def _meta(client: Client, record: WorkflowRecord) -> dict[str, Any]:
    state = celery_state(record)
    result: Any = None
    if state == states.SUCCESS:
        result = client.decode_result(record)
    elif state in (states.FAILURE, states.REVOKED):
        try:
            client.decode_result(record)
        except WorkflowCancelled as exc:
            result = TaskRevokedError(str(exc))
        except Exception as exc:
            result = exc
    elif state == WAITING:
        result = {"wait": record.wait_kind, "step": record.wait_step, "topics": list(record.wait_topics or ())}
        if record.deadline is not None:
            result["deadline"] = record.deadline
    return {"status": state, "result": result, "task_id": record.workflow_id, "traceback": None, "children": [],
            "date_done": None}


# -- what Durable does for Celery's view ----------------------------------------------------------------
class CeleryResults:
    """The part of :class:`~celery_durable.Durable` that keeps Celery's view of its workflows true:
    the engine's ``on_outcome`` report, cancels that read REVOKED, resumes that forget the result."""

    if TYPE_CHECKING:  # provided by Durable / Client
        app: Celery
        management: Management

    def _report(self, outcome: Outcome) -> None:
        """The engine's ``on_outcome``: store the Celery state of a wait (and of a timeout's cancel) while
        the workflow's lock is still held, so the next execution's report always comes after it."""
        task = RUNNING_TASK.get()
        if task is None or not stores_results(task):
            return
        if isinstance(outcome, Waiting):
            report_waiting(task, task.request.id, outcome.wait)
        elif isinstance(outcome, Cancelled) and outcome.reason is not None:
            # Stopped by its own deadline in this execution. A user's cancel was reported by the canceller.
            restore_canvas(task.request, outcome.workflow)
            report_revoked(task, task.request.id, str(outcome.reason))
            strip_canvas(task.request)

    def cancel(self, workflow_id: str) -> WorkflowStatus:
        """Cancel a workflow that has not finished; return its status afterwards (see :meth:`Client.cancel`).

        Celery sees it too: its result reads REVOKED (and counts as a finished part of a chord it
        belongs to), as a revoked task does. A Celery revoke of the id (``AsyncResult(id).revoke()``,
        ``celery control revoke``) comes here on the workers.
        """
        status, record = self.management.cancel_record(workflow_id)
        if record is not None:  # this call cancelled it
            self._report_cancel(record)
        return status

    def _report_cancel(self, record: WorkflowRecord) -> None:
        task = self.app.tasks.get(record.name)
        if task is None or not stores_results(task):
            return
        from celery.app.task import Context

        request = Context(id=record.workflow_id, task=record.name)
        restore_canvas(request, record)
        try:
            report_revoked(task, record.workflow_id, "cancelled", request)
        except Exception:
            log.warning("could not store REVOKED for cancelled workflow %s", record.workflow_id, exc_info=True)

    def resume(self, workflow_id: str) -> WorkflowHandle:
        """Run a CANCELLED or failed workflow again (see :meth:`Client.resume`); Celery's stored result of
        it is forgotten, so ``AsyncResult(id)`` follows the resumed run."""
        handle: WorkflowHandle = super().resume(workflow_id)  # type: ignore[misc]  # Client's, next in Durable's MRO
        task = self.app.tasks.get(handle.record().name)
        if task is not None and stores_results(task):
            task.backend.forget(workflow_id)
        return handle

    def _cancel_revoked(self, task_ids: Sequence[str]) -> None:
        """A Celery revoke of *task_ids* reached this worker: cancel those that are workflows."""
        for task_id in task_ids:
            try:
                self.cancel(task_id)
            except (WorkflowNotFound, InvalidArgument):
                continue  # not a workflow of ours
            except Exception:
                log.warning("could not cancel revoked workflow %s", task_id, exc_info=True)


# -- eager mode and revokes -------------------------------------------------------------------------------
class EagerRunner:
    """Runs workflow messages in-process, one after another, under ``task_always_eager``.

    A start runs the workflow until it finishes or waits; a send (or any wake-up) runs the woken
    workflow before it returns. Messages published while one runs (a send to another workflow, a
    child's start) queue behind it in this thread, so executions never nest. A timer due later is
    not run: the wait stays recorded, and ``DurableClock(durable).advance(seconds)`` (or a sweep once
    it is overdue) fires it. A workflow's error is not raised here, even with
    ``task_eager_propagates``: ``result.get()`` raises it.
    """

    def __init__(self, apply: Callable[[Dispatch], None]) -> None:
        self._apply = apply
        self._local = threading.local()

    def run(self, dispatch: Dispatch) -> None:
        if dispatch.countdown > 0:
            return
        queue: list[Dispatch] | None = getattr(self._local, "queue", None)
        if queue is not None:
            queue.append(dispatch)
            return
        self._local.queue = queue = [dispatch]
        try:
            while queue:
                item = queue.pop(0)
                try:
                    self._apply(item)
                except Exception:
                    log.debug("eager execution of %s raised; its error is in the store", item.workflow_id, exc_info=True)
        finally:
            self._local.queue = None


def install_revoke_hook(durables_of: Callable[[Celery], Iterable[Any]]) -> None:
    """Make Celery's ``revoke`` control command also cancel the workflows it names (once per process).

    ``AsyncResult(workflow_id).revoke()`` and ``celery control revoke ID`` broadcast to the workers;
    each worker's handler first does what Celery does (the id is discarded from then on), then each
    Durable of that worker's app (*durables_of*) cancels the id if it is one of its workflows
    (idempotent: the first worker cancels it, the others find it finished).
    """
    from celery.worker import control

    original = control.Panel.data.get("revoke")
    if original is None or getattr(original, "celery_durable", False):
        return

    @functools.wraps(original)
    def revoke(state: Any, task_id: Any, *args: Any, **kwargs: Any) -> Any:
        reply = original(state, task_id, *args, **kwargs)
        ids = [task_id] if isinstance(task_id, str) else list(task_id or ())
        for durable in durables_of(state.app):
            durable._cancel_revoked(ids)
        return reply

    revoke.celery_durable = True  # type: ignore[attr-defined]
    control.Panel.data["revoke"] = revoke
