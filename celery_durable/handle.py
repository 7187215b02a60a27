"""Handles on workflows, read from the store (no Celery needed)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import children
from .errors import WorkflowCancelled, WorkflowTimedOut
from .serialization import decode_error
from .store import StepRecord, WorkflowRecord, WorkflowStatus
from .validation import check_id, check_poll_interval, check_timeout

if TYPE_CHECKING:
    from .client import Client


class WorkflowHandle:
    """A workflow by id: its status, result, steps; cancel it."""

    def __init__(self, durable: Client, workflow_id: str, *, parent_id: str | None = None) -> None:
        self._durable = durable
        self.workflow_id = check_id(workflow_id)
        #: The workflow that started this one as a child, when this handle came from that start.
        self.parent_id = parent_id

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.workflow_id!r}>"

    def record(self) -> WorkflowRecord:
        """Return the stored workflow row."""
        return self._durable.management.get(self.workflow_id)

    def status(self) -> WorkflowStatus:
        """Return the current :class:`WorkflowStatus`."""
        return self.record().status

    def steps(self) -> list[StepRecord]:
        """Return the recorded checkpoints, in step order."""
        return self._durable.list_steps(self.workflow_id)

    def cancel(self) -> WorkflowStatus:
        """Cancel the workflow (see :meth:`Client.cancel`); return its status afterwards."""
        return self._durable.cancel(self.workflow_id)

    def result(self, timeout: float | None = None, poll_interval: float = 0.5) -> Any:
        """Wait for the workflow to finish and return its value.

        Re-raises the workflow's error (the same type when this process knows it, else
        :class:`~celery_durable.errors.WorkflowFailed`), raises
        :class:`~celery_durable.errors.WorkflowCancelled` for a cancelled one
        (:class:`~celery_durable.errors.WorkflowTimedOut` when its deadline stopped it), and the builtin
        ``TimeoutError`` when it has not finished within *timeout* seconds.

        In the body of the workflow that started it as a child, it waits durably instead (the parent
        leaves its worker and is woken when the child finishes; see children.py), and a child's error
        is raised as :class:`~celery_durable.errors.WorkflowFailed` (cancelled: ``ChildWorkflowCancelled``).
        """
        timeout = check_timeout(timeout)
        poll_interval = check_poll_interval(poll_interval)
        ctx = children.parent_context(self)
        if ctx is not None:  # hook (children): in its parent's body, a child's result is a durable wait
            return children.child_result(ctx, self, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        store = self._durable.store
        # With a store that says when a workflow ends, wait for that (polling only as a safety net).
        delay = poll_interval if store.notifies_finish else 0.005
        # Not a tight loop: each pause doubles up to poll_interval, and on PostgreSQL it ends early when
        # the finishing statement NOTIFYs (Store.watch_finish), so waiting costs few reads.
        with store.watch_finish(self.workflow_id) as wait:
            while True:
                record = self.record()
                if record.status.is_terminal:
                    return self._durable.decode_result(record)
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"workflow {self.workflow_id!r} did not finish within {timeout} s (it is {record.status})"
                    )
                pause = min(delay, poll_interval)
                if deadline is not None:
                    pause = max(0.0, min(pause, deadline - time.monotonic()))
                wait(pause)
                delay *= 2


def decode_result(record: WorkflowRecord, loads: Any) -> Any:
    """Return a finished workflow's value or raise its error."""
    if record.status == WorkflowStatus.SUCCESS:
        return loads(record.output) if record.output is not None else None
    if record.status == WorkflowStatus.CANCELLED:
        if record.error is None:  # a cancel says nothing more; a timeout stores why (timeouts.py)
            raise WorkflowCancelled(f"workflow {record.workflow_id!r} was cancelled")
        exc = decode_error(record.error)
        if isinstance(exc, WorkflowTimedOut):
            exc.deadline = record.timeout_at
        raise exc
    assert record.error is not None
    raise decode_error(record.error)
