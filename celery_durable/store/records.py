"""Plain records that cross the store interface. No SQL, no Celery."""

from __future__ import annotations

import datetime
import enum
import json
from dataclasses import dataclass, field
from typing import Any


class WorkflowStatus(str, enum.Enum):
    """Where a workflow is in its life.

    PENDING: a task message for it is queued (new, woken, or re-enqueued by recovery).
    RUNNING: a worker is executing it.
    WAITING: it waits in ``recv``/``get_event``/``sleep``; no worker slot is held.
    ENQUEUED: it waits for a slot of its concurrency limit (``@durable.workflow(concurrency=N)``);
    no worker slot and no task message is held; admission makes it PENDING.
    SUCCESS, ERROR, CANCELLED: finished; nothing runs it again.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    ENQUEUED = "ENQUEUED"
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    def __str__(self) -> str:
        return self.value


_TERMINAL = frozenset({WorkflowStatus.SUCCESS, WorkflowStatus.ERROR, WorkflowStatus.CANCELLED})


@dataclass(frozen=True)
class WorkflowRecord:
    """One workflow as stored. ``inputs``, ``output`` and ``error`` are serialized text."""

    workflow_id: str
    name: str
    status: WorkflowStatus
    inputs: str
    output: str | None
    error: str | None
    queue: str | None
    ticket: int
    created_at: float
    updated_at: float
    executions: int = 0
    wait_kind: str | None = None
    wait_target: str | None = None
    wait_topics: tuple[str, ...] | None = None
    wait_step: int | None = None
    deadline: float | None = None
    timer_due: float | None = None
    dispatched_at: float | None = None
    version: str | None = None
    parent_id: str | None = None
    forked_from: str | None = None
    forked_from_step: int | None = None
    timeout_at: float | None = None
    attempt_step: int | None = None
    attempts: int | None = None
    trace_context: str | None = None
    #: Opaque text the task system stored at start (Celery: the start message's canvas options).
    task_options: str | None = None
    #: At most one unfinished workflow of this name has this key (``start(..., dedup_key=...)``).
    dedup_key: str | None = None
    #: Its concurrency key once admission saw it (``None``: no limit, or not yet seen; sql_concurrency.py).
    flow_key: str | None = None
    #: Its admission priority among the ENQUEUED of its key (lower first).
    priority: int | None = None

    @property
    def scheduled_for(self) -> datetime.datetime | None:
        """The tick of a schedule this workflow is the run of (timezone-aware UTC); None if it is none.

        A tick's run has the id ``sched:{schedule}:{tick ISO-8601 UTC}`` (see celery_durable.schedules):
        the id is where the tick is stored, so it costs no column and no write.
        """
        if not self.workflow_id.startswith("sched:"):
            return None
        from ..schedules import tick_of  # the tick math; imported only for schedule runs

        return tick_of(self.workflow_id)

    @property
    def error_summary(self) -> str | None:
        """The error in one line, e.g. ``"ValueError: boom"`` (``None`` when there is none)."""
        return error_summary(self.error)


def error_summary(error: str | None, width: int = 200) -> str | None:
    """One line for a stored error (the JSON ``encode_error`` writes): short type name and first message line."""
    if error is None:
        return None
    try:
        record = json.loads(error)
        kind = str(record.get("type", "")).rpartition(".")[2] or "Error"
        message = str(record.get("message", ""))
    except (ValueError, AttributeError):
        kind, message = "Error", error
    lines = message.strip().splitlines()
    line = f"{kind}: {lines[0]}" if lines else kind
    return line if len(line) <= width else line[: width - 3] + "..."


@dataclass(frozen=True)
class StepRecord:
    """One checkpoint: a step's output or error, or what a ``recv``/``get_event``/``sleep``/``send`` did.

    ``output`` is serialized text; ``None`` with ``error`` also ``None`` means "timed out"
    for waiting operations. ``topic`` is the topic a ``recv`` received from.
    """

    workflow_id: str
    step_id: int
    name: str
    kind: str
    output: str | None = None
    error: str | None = None
    topic: str | None = None
    started_at: float = 0.0
    ended_at: float = 0.0


@dataclass(frozen=True)
class MessageRecord:
    """A message addressed to a workflow, as :meth:`Store.list_messages` returns it.

    ``payload`` is the serialized text in what the store returns, and the decoded value in what
    ``Durable.list_messages`` returns. ``topic`` is ``None`` for the default topic.
    """

    workflow_id: str
    seq: int
    topic: str | None
    payload: Any
    sent_at: float
    consumed_at: float | None = None
    idempotency_key: str | None = None

    @property
    def consumed(self) -> bool:
        """Whether a ``recv`` took it (then its checkpoint holds the value)."""
        return self.consumed_at is not None


@dataclass(frozen=True)
class Dispatch:
    """A task message the caller must publish: run *workflow_id* with *ticket*.

    Every dispatch carries a new ticket, which makes every earlier message for the
    workflow stale: an execution runs only when its message's ticket is the current one.
    ``countdown`` is seconds from now (0 means at once).
    """

    workflow_id: str
    name: str
    queue: str | None
    ticket: int
    countdown: float = 0.0


@dataclass(frozen=True)
class Execution:
    """What an execution starts from: the workflow row and all its checkpoints (one read)."""

    workflow: WorkflowRecord
    steps: dict[int, StepRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class WaitRequest:
    """A waiting operation at *step_id*: ``recv`` on *topics*, ``event`` *key* of *target*, or ``sleep``.

    *timeout* counts from the first time this step waits (the deadline is recorded then);
    ``None`` waits without a deadline. *horizon* is the longest countdown a timer may use.
    """

    step_id: int
    name: str
    kind: str  # "recv" | "event" | "sleep"
    topics: tuple[str, ...] = ()
    target: str | None = None
    timeout: float | None = None
    now: float = 0.0
    horizon: float = 300.0


@dataclass(frozen=True)
class Suspended:
    """The step could not complete: the wait is recorded.

    *dispatch* is the timer message to publish with its countdown, or ``None`` when the
    deadline is beyond the horizon (or absent) and the sweep will arm it later.
    """

    dispatch: Dispatch | None


@dataclass(frozen=True)
class SendResult:
    """A stored message: its sequence number, whether it was new, and wake-ups to publish."""

    seq: int
    created: bool
    wakeups: tuple[Dispatch, ...] = ()


#: What a concurrency limit does with a start that finds every slot of its key taken.
LIMIT_STRATEGIES = ("queue", "cancel_newest", "cancel_in_progress")


@dataclass(frozen=True)
class FlowLimit:
    """A workflow's concurrency limit, as the store applies it: at most *limit* admitted at once under *key*.

    *strategy* is one of :data:`LIMIT_STRATEGIES`; *priority* orders the ENQUEUED of a key (lower first,
    then start order).
    """

    key: str
    limit: int
    strategy: str = "queue"
    priority: int = 0
