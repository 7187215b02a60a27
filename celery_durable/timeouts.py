"""A workflow's own deadline (``timeout=``): how it is named, and when a wait must wake for it.

The deadline (``timeout_at`` on the workflow row) is fixed when the workflow is created and never
moves, so it survives restarts and redeliveries. Two places stop a workflow whose deadline passed,
with the same error text: the engine, at the next step boundary of an execution
(:meth:`~celery_durable.core.WorkflowContext.check_deadline`), and the store's sweep, for a
workflow no execution is running (queued, waiting, or left RUNNING by a dead worker).
"""

from __future__ import annotations

import datetime

from .errors import WorkflowTimedOut
from .serialization import encode_error


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="milliseconds")


def timed_out(workflow_id: str, timeout_at: float) -> WorkflowTimedOut:
    """The error of a workflow stopped by its deadline, naming that deadline."""
    return WorkflowTimedOut(
        f"workflow {workflow_id!r} timed out: its deadline {_when(timeout_at)} ({timeout_at:.3f}) passed",
        deadline=timeout_at,
    )


def timed_out_error(workflow_id: str, timeout_at: float) -> str:
    """:func:`timed_out` encoded for the workflow row's ``error`` column (errors are always JSON)."""
    return encode_error(timed_out(workflow_id, timeout_at))


def earliest(*times: float | None) -> float | None:
    """The earliest of the given times, ignoring ``None``; ``None`` when all are."""
    known = [t for t in times if t is not None]
    return min(known) if known else None
