"""Records that cross the store interface for child workflows and joins. No SQL, no Celery."""

from __future__ import annotations

from dataclasses import dataclass

from .records import WorkflowStatus

#: ``wait_target`` of a join that ends at the first failed child (without ``return_exceptions``).
FIRST_ERROR = "first_error"
#: ``wait_target`` of a join that ends only when every awaited child finished.
ALL = "all"
#: ``wait_kind`` of a parent waiting for children.
JOIN = "join"


@dataclass(frozen=True)
class ChildSpec:
    """A child workflow to create: like ``Store.create_workflow``'s arguments, with the parent implied by the lease."""

    workflow_id: str
    name: str
    inputs: str
    queue: str | None
    version: str | None = None
    timeout_at: float | None = None
    trace_context: str | None = None


@dataclass(frozen=True)
class JoinRequest:
    """A join at *step_id* on the children *child_ids* (all children of the leased workflow).

    *fail_fast*: the join ends at the first child that ends in ERROR or CANCELLED; otherwise only
    when every child finished. *timeout* counts from the first time this step waits, as for
    ``WaitRequest``.
    """

    step_id: int
    name: str
    child_ids: tuple[str, ...]
    fail_fast: bool
    timeout: float | None
    now: float
    horizon: float


@dataclass(frozen=True)
class ChildOutcome:
    """A child as a join reads it. *status* ``None``: no such workflow (it was pruned, or never a child)."""

    workflow_id: str
    status: WorkflowStatus | None
    output: str | None
    error: str | None
    timeout_at: float | None = None

    @property
    def failed(self) -> bool:
        """Whether the child ended without a result (ERROR, CANCELLED, or gone)."""
        return self.status is None or self.status in (WorkflowStatus.ERROR, WorkflowStatus.CANCELLED)


@dataclass(frozen=True)
class Joined:
    """A join that completed: the children in the order asked, or *timed_out* (its deadline passed first)."""

    outcomes: tuple[ChildOutcome, ...]
    timed_out: bool = False
