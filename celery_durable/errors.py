"""Every error this package raises derives from :class:`DurableError`.

Each subclass's docstring is its default message, so ``raise WorkflowNotFound()``
already says something useful; callers pass a more precise message when they have one.
"""

from __future__ import annotations

from typing import Any


class DurableError(Exception):
    """Unexpected celery_durable error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (Celery result backends, multiprocessing):
        # rebuild them from their message alone.
        return (type(self), (str(self),))


class ConfigurationError(DurableError):
    """Raised when celery_durable is configured with a value it cannot use."""


class SerializationError(DurableError, TypeError):
    """Raised when a value cannot be serialized with the configured serializer."""


class PayloadTooLarge(DurableError, ValueError):
    """Raised when a message payload is larger than the configured limit."""


class InvalidArgument(DurableError, ValueError):
    """Raised when an argument (workflow id, topic, key, timeout) is not valid."""


class StoreRejected(DurableError):
    """Raised when the database refused an operation for good (a value it cannot hold, a constraint, a schema error).

    Trying again cannot help, so inside a workflow the operation fails with this error, which the
    body may catch; uncaught, it ends the workflow in ERROR. (Errors that may pass, such as a lost
    connection or a deadlock, are retried instead and never surface as this error.)
    """

    @classmethod
    def refused(cls, exc: BaseException, what: str, workflow_id: str) -> StoreRejected:
        """The error for the database's refusal *exc* of *what* (e.g. "step 'charge'") in *workflow_id*."""
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return cls(
            f"the database refused {what} of workflow {workflow_id!r} for good "
            f"({type(exc).__name__}: {first_line[:300]}); retrying cannot help"
        )


class WorkflowNotFound(DurableError, LookupError):
    """Raised when no workflow exists with the given id."""


class WorkflowConflict(DurableError):
    """Raised when a workflow id is already used by a different workflow function."""


class ConcurrencyLimitExceeded(DurableError):
    """Raised when a workflow with ``limit_strategy="cancel_newest"`` is started while its concurrency limit is full."""


class DuplicateWorkflow(DurableError):
    """Raised when a workflow is started with the ``dedup_key`` of one that is still active (``on_conflict="raise"``)."""


class ScheduleNotFound(DurableError, LookupError):
    """Raised when no schedule exists with the given name."""


class NotInWorkflow(DurableError, RuntimeError):
    """Raised when an operation that only makes sense inside a workflow is called outside one."""


class NonDeterministicWorkflow(DurableError):
    """Raised when a replayed workflow calls a different operation than the one recorded."""


class WorkflowCancelled(DurableError):
    """Raised when a workflow was cancelled."""


class ChildWorkflowCancelled(WorkflowCancelled):
    """Raised in a parent workflow when a child it waits for was cancelled (or stopped by its own deadline).

    Unlike the parent's own cancellation, it is an ordinary error of the parent's body: catch it,
    or the parent ends in ERROR with it.
    """


class WorkflowTimedOut(WorkflowCancelled):
    """Raised by ``result()`` when a workflow was stopped because its own deadline (``timeout=``) passed.

    ``deadline`` is that deadline (seconds since the epoch) when known.
    """

    def __init__(self, message: str | None = None, *, deadline: float | None = None) -> None:
        super().__init__(message)
        self.deadline = deadline

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_timed_out, (str(self), self.deadline))


class StepAttemptLost(DurableError):
    """Raised when the last allowed attempt of a step with retries never finished (its worker was lost)."""


class WorkflowFailed(DurableError):
    """Raised by ``result()`` when the workflow ended in ERROR.

    The original error's type name, message and traceback text are kept on
    ``error_type``, ``error_message`` and ``remote_traceback``.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        error_type: str = "",
        error_message: str = "",
        remote_traceback: str = "",
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.error_message = error_message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_failed, (str(self), self.error_type, self.error_message, self.remote_traceback))


def _rebuild_timed_out(message: str, deadline: float | None) -> WorkflowTimedOut:
    return WorkflowTimedOut(message, deadline=deadline)


def _rebuild_failed(message: str, error_type: str, error_message: str, tb: str) -> WorkflowFailed:
    return WorkflowFailed(message, error_type=error_type, error_message=error_message, remote_traceback=tb)
