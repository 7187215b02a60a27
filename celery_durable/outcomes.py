"""What one execution of a workflow can end with (:class:`Outcome` and its kinds), and the signals that
unwind a workflow body (:class:`Suspend` and the private ones). No Celery, no SQLAlchemy.

The signals derive from ``BaseException`` so that ``except Exception`` in user code cannot swallow
them; ``core`` re-exports every name here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import WorkflowCancelled, WorkflowTimedOut
from .store import Dispatch, Execution, WorkflowRecord


class _Missing:
    def __repr__(self) -> str:
        return "<timed out>"


TIMED_OUT: Any = _Missing()


class Suspend(BaseException):
    """Unwinds a workflow body that must wait. A BaseException so ``except Exception`` in user code cannot swallow it."""

    def __init__(self, dispatch: Dispatch | None, wait: dict[str, Any] | None = None) -> None:
        super().__init__("workflow suspended")
        self.dispatch = dispatch
        self.wait = wait  # what it waits for, for the task system to report (see Waiting.wait)


class _Cancelled(BaseException):
    """Unwinds a workflow body that was cancelled (a BaseException for the same reason as :class:`Suspend`)."""


class _ContinueAsNew(BaseException):
    """Unwinds a workflow body that called ``continue_as_new`` (a BaseException for the same reason as :class:`Suspend`)."""

    def __init__(self, inputs: str) -> None:
        super().__init__("workflow continues as new")
        self.inputs = inputs


class _TimedOut(BaseException):
    """Unwinds a workflow body whose own deadline passed (a BaseException for the same reason as :class:`Suspend`)."""

    def __init__(self, error: WorkflowTimedOut) -> None:
        super().__init__(str(error))
        self.error = error


# -- outcomes of one execution ---------------------------------------------------------------
class Outcome:
    """What one execution ended with."""


@dataclass
class Finished(Outcome):
    value: Any
    workflow: WorkflowRecord | None = None  # the record as this execution claimed it (its task_options)


@dataclass
class Failed(Outcome):
    error: BaseException
    workflow: WorkflowRecord | None = None


@dataclass
class Waiting(Outcome):
    dispatch: Dispatch | None  # the timer to publish, or None: the sweep arms it later
    #: What it waits for: ``{"wait": "recv"|"event"|"sleep"|"retry"|"children", "step": n, ...}``.
    wait: dict[str, Any] | None = None


@dataclass
class Interrupted(Outcome):
    """Stopped without a verdict (store unreachable, a task-system control-flow signal).

    The workflow stays RUNNING with its lock released: run it again with the same ticket.
    """

    error: BaseException


@dataclass
class Refused(Outcome):
    """The store refused this execution for good where no verdict could be recorded (say the claim itself).

    Retrying cannot help: the task system logs it and drops the message.
    """

    error: BaseException


@dataclass
class _Continued(Outcome):
    """Internal: the body continued as new; run it again in place from *execution*."""

    execution: Execution


class Stale(Outcome):
    """The message's ticket is not current, or the workflow finished: nothing to do."""


class Busy(Outcome):
    """Another live execution holds the workflow: try again later with the same ticket."""


@dataclass
class Cancelled(Outcome):
    """The workflow was cancelled; *reason* says why when it was not a user's cancel (a timeout)."""

    reason: WorkflowCancelled | None = None
    workflow: WorkflowRecord | None = None
