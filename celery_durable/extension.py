"""The public protocol of the workflow context: what engine extensions build on.

No Celery, no SQLAlchemy. :class:`~celery_durable.core.WorkflowContext` implements it; children
(``children.py``), step retries (``retries.py``) and patches (``versioning.py``) use nothing else of
it, and flow control (concurrency and rate limits) is to be built the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

if TYPE_CHECKING:
    from .config import DurableConfig
    from .hooks import Observers
    from .serialization import Serializer
    from .store import Dispatch, Lease, StepRecord, Store, WorkflowRecord

T = TypeVar("T")


class WorkflowContextProtocol(Protocol):
    """One execution of a workflow body, as an engine extension sees it.

    An extension adds a durable operation to workflows (start a child, wait for children, retry a
    step, answer a patch; next: take a concurrency slot, wait for a rate limit). It keeps replay
    deterministic by three rules, in this order:

    1. **Exactly one step id per durable operation, in program order.** Take it with
       :meth:`take_step` (which also stops a workflow past its deadline) before anything else, every
       time the operation runs, replay or not. Only an operation whose first answer decides whether
       it records anything at all (``patched``) may look with :meth:`next_step_id` first.
    2. **Check the recorded checkpoint before any side effect.** :meth:`recorded` returns the
       checkpoint of an earlier execution (and raises ``NonDeterministicWorkflow`` when the code now
       calls another operation there); when there is one, return what it says and do nothing else.
    3. **Write only through the lease**, inside :meth:`store_call`: every store write passes
       :attr:`lease`, so it commits only while this execution still holds the workflow, and a failure
       is classified as the engine does (transient: the execution is retried; permanent:
       ``StoreRejected`` in the body). Leave the worker with :meth:`suspend` once the wait is recorded.

    Everything else is read-only: the workflow's row as claimed, the store, clock, configuration.
    """

    # -- read-only state -----------------------------------------------------------------------------
    @property
    def workflow_id(self) -> str: ...
    @property
    def workflow(self) -> WorkflowRecord:
        """The workflow's row as this execution claimed it (deadline, attempt counter, the wait it was woken from)."""
    @property
    def lease(self) -> Lease:
        """This execution's hold on the workflow: pass it to every store write."""
    @property
    def store(self) -> Store: ...
    @property
    def config(self) -> DurableConfig: ...
    @property
    def serializer(self) -> Serializer: ...
    @property
    def observers(self) -> Observers:
        """The engine's observers (hooks.py), e.g. for a trace context of what the extension starts."""
    @property
    def passthrough(self) -> tuple[type[BaseException], ...]:
        """The task system's control-flow exceptions: never record them, let them through."""
    @property
    def checkpoints(self) -> Mapping[int, StepRecord]:
        """The checkpoints recorded before this execution, by step id (read them; never change them)."""
    @property
    def patches(self) -> dict[str, bool]:
        """The ``patched`` answers of this execution (versioning.py's memo)."""

    def clock(self) -> float:
        """The engine's clock (seconds since the epoch)."""
    def pause(self, seconds: float) -> None:
        """Sleep in this worker (only for short pauses: a long one records a wait and :meth:`suspend`\\s)."""

    # -- step ids and checkpoints ------------------------------------------------------------------------
    def check_deadline(self) -> None:
        """Stop the workflow (it ends CANCELLED) when its own deadline has passed."""
    def next_step_id(self) -> int:
        """The step id the next durable operation will take, without taking it."""
    def take_step(self) -> int:
        """Take the next step id (rule 1); a workflow past its deadline stops here."""
    def recorded(self, step_id: int, name: str, kind: str) -> StepRecord | None:
        """The checkpoint at *step_id* if it is operation *kind* *name*, None if there is none (rule 2).

        Raises ``NonDeterministicWorkflow`` when another operation was recorded there."""
    def decode_output(self, step: StepRecord) -> Any:
        """The value a checkpoint recorded, or raise the error it recorded."""

    # -- writing and leaving -------------------------------------------------------------------------------
    def store_call(self, call: Callable[[], T], what: str) -> T:
        """Run a store call of the operation *what* (rule 3); see ``WorkflowContext.store_call``."""
    def fail_step(self, step_id: int, name: str, exc: BaseException, started: float) -> BaseException:
        """Record *exc* as step *step_id*'s outcome (a replay raises it again); return it."""
    def publish(self, dispatches: Sequence[Dispatch]) -> None:
        """Publish wake-ups the store returned (after its commit); a failure is logged, never raised."""
    def suspend(self, dispatch: Dispatch | None, wait: dict[str, Any]) -> NoReturn:
        """Leave the worker: the wait is recorded; *dispatch* is its timer (if any), *wait* describes it."""
