"""The store contract: every domain operation the workflow engine needs, and nothing else.

A store holds serialized text and knows nothing about Celery or about how values are
serialized. Every method states what it guarantees; the contract test suite
(``tests/store``) checks each backend against exactly these sentences.

Invariants every implementation keeps:

* **Tickets.** Each workflow has an integer ``ticket``. Every operation that asks for a
  new task message (a wait's timer, a wake-up, a recovery) increments it and returns a
  :class:`Dispatch` with the new value, so at most one task message is *live*: an
  execution whose message carries an older ticket does nothing (:meth:`Store.begin`
  returns ``None``). Stale timers and duplicate wake-ups therefore cost one no-op.
* **Exclusive execution.** :meth:`Store.acquire` gives at most one live holder per
  workflow, and the lock dies with its holder's process or connection. Every write an
  execution makes goes through its lease.
* **No lost wake-up.** Recording a wait (:meth:`Store.wait_step`) and storing a message
  (:meth:`Store.send`) both lock the destination's workflow row, so they are serialised:
  either the wait sees the message, or the send sees the wait and wakes it.
* **Concurrency slots** (``flow`` of :meth:`Store.create_workflow`, :meth:`Store.admit_started`).
  A workflow admitted under a concurrency key holds one slot of that key from its admission until
  the transaction that finishes it (``finish``, ``cancel``/``cancel_tree`` and their cascade to
  descendants, a timeout by the engine or the sweep): never leaked, never granted twice, at most the
  key's limit at any time. The transaction that frees a slot admits the next ENQUEUED workflow of
  the key (lowest ``priority``, then oldest start) and returns its message to publish.
* **Wake-up times.** A waiting workflow's timer is armed for the earlier of its wait's
  ``deadline`` and the workflow's own ``timeout_at``, so a workflow past its deadline is woken
  (and stopped) even while it waits for something else.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence

from .base_flow import FlowControlStore
from .child_records import ChildSpec, Joined, JoinRequest
from .records import (
    Dispatch,
    Execution,
    FlowLimit,
    MessageRecord,
    SendResult,
    StepRecord,
    Suspended,
    WaitRequest,
    WorkflowRecord,
    WorkflowStatus,
)


class Lease(abc.ABC):
    """Proof that this process holds a workflow's execution lock."""

    workflow_id: str


class Store(FlowControlStore):
    """Narrow domain interface of the workflow store."""

    # -- schema ---------------------------------------------------------------------------
    @abc.abstractmethod
    def migrate(self) -> int:
        """Create or upgrade the schema to the newest version; return that version. Idempotent and safe to call concurrently."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """Return the schema version in the database (0 when nothing was created)."""

    # -- workflows --------------------------------------------------------------------------
    @abc.abstractmethod
    def create_workflow(
        self,
        workflow_id: str,
        name: str,
        inputs: str,
        queue: str | None,
        now: float,
        *,
        version: str | None = None,
        parent_id: str | None = None,
        timeout_at: float | None = None,
        trace_context: str | None = None,
        task_options: str | None = None,
        dedup_key: str | None = None,
        flow: FlowLimit | None = None,
    ) -> tuple[WorkflowRecord, bool]:
        """Insert a PENDING workflow with ticket 0 unless the id exists, or *dedup_key* is held.

        With *flow* (a concurrency limit), admission is decided in the same transaction, under the
        key's lock: the workflow is admitted (PENDING, holding a slot of ``flow.key``) when fewer than
        ``flow.limit`` slots are held and no ENQUEUED workflow of the key waits; otherwise, by
        ``flow.strategy``: ``"queue"`` stores it ENQUEUED (no message may be published for it: the
        transaction that frees a slot admits it); ``"cancel_newest"`` raises
        ``ConcurrencyLimitExceeded`` and stores nothing; ``"cancel_in_progress"`` cancels the oldest
        admitted workflows of the key (as :meth:`cancel_tree` would; rows being finished at that moment
        are skipped, their end frees a slot anyway) and admits this one when that freed a slot, else
        stores it ENQUEUED. The record has ``flow_key`` and ``priority`` set. Without *flow*, nothing
        more than the insert runs.

        *version* is the application version starting it, *parent_id* the workflow that started
        it as a child, *timeout_at* its own deadline (absolute, fixed for its whole life),
        *trace_context* the serialized trace context it was started in and *task_options* the task
        system's opaque options (kept for its whole life, through ``continue_as_new`` and ``resume``;
        a fork does not copy them); each is stored as given.
        Return the stored record and whether this call created it. An existing row is
        returned unchanged whatever its name: the caller decides what a conflict means.

        **Deduplication.** At most one unfinished workflow (any status but SUCCESS, ERROR and
        CANCELLED) of a *name* holds a given *dedup_key*, whatever the number of concurrent callers:
        the database enforces it. The id comes first: an existing *workflow_id* is returned as above
        whatever its key. Otherwise, while another unfinished workflow of *name* holds *dedup_key*,
        nothing is written and that workflow is returned (with ``created`` false and its own id);
        once it finished, the key is free and the workflow is created.
        """

    @abc.abstractmethod
    def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        """Return the workflow, or ``None``."""

    @abc.abstractmethod
    def list_workflows(
        self,
        status: WorkflowStatus | Sequence[WorkflowStatus] | None = None,
        name: str | None = None,
        *,
        created_after: float | None = None,
        created_before: float | None = None,
        id_prefix: str | None = None,
        parent_id: str | None = None,
        version: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[WorkflowRecord]:
        """Return workflows newest first (by creation, then id), skipping *offset* and at most *limit*.

        Each filter given narrows the result: *status* (one, or any of several), exact *name*, created at or after
        *created_after* and before *created_before*, id starting with *id_prefix* (taken literally:
        ``%`` and ``_`` are not wildcards), exact *parent_id*, exact *version*.
        """

    @abc.abstractmethod
    def list_steps(self, workflow_id: str) -> list[StepRecord]:
        """Return a workflow's checkpoints ordered by step id."""

    @abc.abstractmethod
    def cancel(self, workflow_id: str, now: float) -> WorkflowRecord | None:
        """Mark a workflow CANCELLED unless it already finished; bump its ticket so queued messages go stale.

        An ENQUEUED workflow is cancelled too; one holding a concurrency slot frees it and the next of
        its key is admitted in the same transaction (its message left to the sweep here; :meth:`cancel_tree` returns it).

        Return the record after the change (or unchanged when it had finished), ``None`` if unknown.
        Like :meth:`cancel_tree`, except that a parent it wakes is left to the sweep.
        """

    # -- concurrency limits (sql_concurrency.py) -------------------------------------------------------
    @abc.abstractmethod
    def admit_started(self, lease: Lease, flow: FlowLimit, now: float) -> str:
        """Decide the admission of the leased (RUNNING) workflow that was stored without a limit, in one transaction.

        For a workflow started by name (or resumed, or forked: both clear ``flow_key``), whose first
        execution knows its limit. When its row already has a ``flow_key`` it was admitted: returns
        ``"admitted"`` and writes nothing. Otherwise, under the key's lock, as :meth:`create_workflow`
        with *flow* decides: ``"admitted"`` (it takes a slot and stays RUNNING; its finish frees the
        slot), ``"enqueued"`` (it becomes ENQUEUED with a new ticket: the message being executed is
        stale, and the execution must leave; admission publishes its next message) or ``"refused"``
        (``cancel_newest`` over the limit: nothing is written). Raises ``WorkflowCancelled`` when the
        workflow is no longer RUNNING.
        """

    @abc.abstractmethod
    def admit_enqueued(self, now: float) -> list[Dispatch]:
        """Admit ENQUEUED workflows into the free slots of every key, in order; return their messages.

        The sweep calls it, for slots whose admission's message was lost. A key whose slots are all
        held admits nothing; each key is decided under its lock, in its own transaction.
        """

    @abc.abstractmethod
    def flow_slots(self, key: str) -> list[str]:
        """Return the ids of the workflows holding a slot of concurrency key *key* (sorted), for tests and operators."""

    # -- children (sql_children.py) -------------------------------------------------------------------
    @abc.abstractmethod
    def cancel_tree(self, workflow_id: str, now: float) -> tuple[WorkflowRecord | None, list[Dispatch]]:
        """:meth:`cancel`, and in the same transaction cancel the workflow's unfinished children (and theirs),
        and count its end on a parent whose join awaits it; return the record and the wake-ups to publish
        (including the messages of workflows admitted into the concurrency slots this freed)."""

    @abc.abstractmethod
    def cancel_descendants(self, workflow_id: str, now: float) -> int:
        """Cancel the unfinished children of *workflow_id*, and theirs, in one transaction; return how many."""

    @abc.abstractmethod
    def start_children(self, lease: Lease, children: Sequence[ChildSpec], checkpoint: StepRecord) -> list[Dispatch]:
        """Create the leased workflow's *children* (PENDING, ticket 0, ``parent_id`` the leased workflow) and
        write *checkpoint*, in one transaction; return the first task message of each child it created.

        An id that exists already as a child of this workflow with the same name is kept (and not
        returned); any other existing id raises ``WorkflowConflict`` and writes nothing. Raises
        ``WorkflowCancelled`` (writing nothing) when the workflow was cancelled. A cancel of the parent
        either sees the children or makes this call fail: never a child of a cancelled parent left running.
        Batches use a bounded number of statements (one per 1,000 children).
        """

    @abc.abstractmethod
    def wait_children(self, lease: Lease, request: JoinRequest) -> Joined | Suspended:
        """Complete a join or record its wait, in one transaction (nothing is written when it completes).

        Completes (returns :class:`Joined` with every child's outcome, in the order asked) when every
        child in ``request.child_ids`` finished, or, with ``fail_fast``, when one of them ended in ERROR or
        CANCELLED; a child that does not exist counts as failed. A passed deadline (recorded as for
        :meth:`wait_step`) completes it with ``timed_out``. Otherwise the unfinished children are marked
        as awaited by this step, the workflow becomes WAITING (wait kind ``"join"``) with the count of
        them, its ticket is bumped, and the timer is returned as for :meth:`wait_step`.

        **No lost wake-up**: every child counted here counts its end on the parent (``finish``,
        ``cancel``, the sweep's timeout), and the last one (or, with ``fail_fast``, the first failed one)
        wakes it: exactly one wake-up per wait. Children are read in a bounded number of statements.
        Raises ``InvalidArgument`` for an id that is not a child of the leased workflow.
        """

    # -- execution ----------------------------------------------------------------------------
    @abc.abstractmethod
    def acquire(self, workflow_id: str) -> Lease | None:
        """Take the workflow's execution lock without blocking; ``None`` when another holder has it.

        The lock is released by :meth:`release`, and also when the holding process dies.
        """

    @abc.abstractmethod
    def release(self, lease: Lease) -> None:
        """Release the lock. Never raises; a lock that cannot be released cleanly dies with its connection."""

    @abc.abstractmethod
    def begin(self, lease: Lease, ticket: int, now: float) -> Execution | None:
        """Start an execution for a message carrying *ticket*.

        Return ``None`` (and change nothing) when the workflow finished or *ticket* is not its
        current ticket. Otherwise mark it RUNNING, count the execution, forget any timer
        (the message being executed is the only live one) and return the row with every
        checkpoint, read in one round trip per table.
        """

    def claim(self, workflow_id: str, ticket: int, now: float) -> tuple[Lease | None, Execution | None]:
        """:meth:`acquire` then :meth:`begin`, which a backend may do in one round trip.

        Returns ``(None, None)`` when another holder has the lock; ``(lease, None)`` when the
        ticket is stale or the workflow finished (the caller still releases the lease); and
        ``(lease, execution)`` when the execution may run.
        """
        lease = self.acquire(workflow_id)
        if lease is None:
            return None, None
        try:
            return lease, self.begin(lease, ticket, now)
        except BaseException:
            self.release(lease)
            raise

    @abc.abstractmethod
    def record_step(self, lease: Lease, step: StepRecord) -> StepRecord:
        """Write a checkpoint once; return the stored one (the earlier one if it already existed).

        Raises :class:`~celery_durable.errors.WorkflowCancelled` when the workflow was
        cancelled, writing nothing.
        """

    @abc.abstractmethod
    def wait_step(self, lease: Lease, request: WaitRequest) -> StepRecord | Suspended:
        """Complete a waiting operation or record the wait, in one transaction.

        The deadline is ``now + timeout`` the first time *step_id* waits and the recorded one
        afterwards. A matching message (oldest by sequence number) is consumed and becomes the
        checkpoint; an event that is set becomes the checkpoint; a passed deadline writes a
        timed-out checkpoint (``output`` ``None``). Otherwise the workflow becomes WAITING, its
        ticket is bumped, and :class:`Suspended` says which timer (if any) to publish: one due
        at the earlier of the deadline and the workflow's ``timeout_at``, when that is within
        the horizon. Raises ``WorkflowCancelled`` when the workflow was cancelled.
        """

    def take_recv(self, lease: Lease, request: WaitRequest) -> StepRecord | None:
        """Optionally take the message the ``recv`` *request* can take (oldest first, checkpoint
        included) and return its checkpoint, or return ``None`` and record nothing; never record a
        wait. The engine calls it first for the recv an execution was woken for, whose message is
        most likely there, then :meth:`wait_step` when it returns ``None``. A cheaper path for
        backends that have one; the default returns ``None`` at once.
        """
        return None

    def linger_recv(self, lease: Lease, request: WaitRequest, seconds: float) -> StepRecord | None:
        """Optionally wait up to *seconds*, holding the lease and leaving the workflow RUNNING, for a
        message that the ``recv`` *request* can take; take it (checkpoint included) and return its
        checkpoint, or return ``None`` and record nothing. The caller then calls :meth:`wait_step` as
        usual. Backends without a way to be told of a message return ``None`` at once (the default).
        """
        return None

    @abc.abstractmethod
    def start_attempt(self, lease: Lease, step_id: int, attempt: int, now: float) -> None:
        """Record that *attempt* (1-based) of step *step_id* starts, before it runs (durable step retries).

        Sets ``attempt_step``/``attempts`` and clears the wait the workflow was woken from, in one
        write. Raises ``WorkflowCancelled`` (writing nothing) when the workflow was cancelled.
        """

    @abc.abstractmethod
    def wait_retry(self, lease: Lease, step_id: int, name: str, until: float, now: float, horizon: float) -> Suspended:
        """Record that step *step_id* (called *name*) waits until *until* before its next attempt.

        Like a ``sleep`` wait: the workflow becomes WAITING with wait kind ``"retry"`` and deadline
        *until*, its ticket is bumped, nothing but its timer wakes it, and the sweep arms and
        re-arms that timer as for any wait. No checkpoint is written. Raises
        ``WorkflowCancelled`` when the workflow was cancelled.
        """

    # -- rate limits (sql_rate.py) ------------------------------------------------------------------
    @abc.abstractmethod
    def take_turn(self, limit: str, key: str, interval: float, now: float, lease: Lease | None = None) -> float:
        """Reserve the next start of rate limit *limit* for the value *key*; return the reserved start time.

        One atomic statement: the start reserved is ``max(previous + interval, now)``, where
        *previous* is the start this (limit, key) reserved last (none the first time: *now*), and it
        becomes the new *previous*. Concurrent callers, in any process or host, are serialised, so the
        starts reserved for one (limit, key) are at least *interval* apart: any window of N intervals
        holds at most N of them. A reservation is never given back. With *lease* it runs on the
        execution's connection (an execution's turn), without one on a pooled connection.
        """

    @abc.abstractmethod
    def wait_rate(self, lease: Lease, step_id: int, name: str, until: float, now: float, horizon: float) -> Suspended:
        """Record that step *step_id* (called *name*; -1: the workflow's own admission) waits for its
        turn of a rate limit, reserved at *until*.

        Like :meth:`wait_retry`, with wait kind ``"rate"``: the workflow becomes WAITING with deadline
        *until*, its ticket is bumped, nothing but its timer wakes it, and the sweep arms and re-arms
        that timer as for any wait. No checkpoint is written. Raises ``WorkflowCancelled`` when the
        workflow was cancelled.
        """

    @abc.abstractmethod
    def finish(
        self, lease: Lease, status: WorkflowStatus, output: str | None, error: str | None, now: float
    ) -> list[Dispatch]:
        """Record the end of the workflow unless it was cancelled meanwhile; return wake-ups to publish.

        A workflow holding a concurrency slot frees it, and the next ENQUEUED workflow of its key is
        admitted, in the same transaction; its message is among the wake-ups returned.

        *status* is SUCCESS (with *output*), ERROR (with *error*) or CANCELLED (with *error*
        saying why, such as an encoded ``WorkflowTimedOut``). A child that a join of its parent
        awaits counts its end on the parent in the same transaction, and returns the parent's
        wake-up when it is due (see :meth:`wait_children`); anything else returns ``[]``.

        It is the last write of an execution: a backend may release the lock with it, after the
        row is updated (:meth:`release` must still be called, and then only returns the connection).
        """

    @abc.abstractmethod
    def continue_as_new(self, lease: Lease, inputs: str, now: float) -> WorkflowRecord:
        """Restart the leased (RUNNING) workflow's history with *inputs*, in one transaction; return the new row.

        Deletes every checkpoint and every consumed message addressed to it that has no idempotency key
        (keyed ones stay, so a repeated send is still refused); unconsumed messages, events, the ticket,
        the status (RUNNING), the lock, the execution count (it never goes down) and ``timeout_at`` stay.
        The row gets *inputs* and no retry count or wait. Raises
        ``WorkflowCancelled`` (changing nothing) when the workflow was cancelled.
        """

    #: Whether :meth:`watch_finish` returns early when a workflow's execution finishes it.
    notifies_finish = False

    @contextlib.contextmanager
    def watch_finish(self, workflow_id: str) -> Iterator[Callable[[float], None]]:
        """Yield ``wait(seconds)``, which returns after *seconds* or earlier once *workflow_id* may have finished.

        For :meth:`WorkflowHandle.result`: the caller re-reads the workflow after each wait, so an early
        return is only a hint. The default just sleeps; PostgreSQL returns at once on the NOTIFY of the
        finishing statement (LISTEN/NOTIFY), so a waiting ``result()`` need not poll often.
        """
        yield time.sleep

    # -- messages and events ------------------------------------------------------------------
    @abc.abstractmethod
    def send(
        self,
        destination: str,
        topic: str,
        payload: str,
        now: float,
        *,
        idempotency_key: str | None = None,
        create_mailbox: bool = False,
        lease: Lease | None = None,
        checkpoint: StepRecord | None = None,
    ) -> SendResult:
        """Store a message for *destination* on *topic* ('' is the default topic), in one transaction.

        Raises ``WorkflowNotFound`` (writing nothing) when the destination does not exist and
        *create_mailbox* is false. A repeated *idempotency_key* for the same destination stores
        nothing and returns the first message's sequence number with ``created`` false. When the
        destination waits on this topic and was not already woken, it becomes PENDING with a new
        ticket and the returned wake-up must be published. With *lease* and *checkpoint* (a send
        inside a workflow) the checkpoint is written in the same transaction.
        """

    @abc.abstractmethod
    def set_event(self, lease: Lease, key: str, value: str, checkpoint: StepRecord) -> list[Dispatch]:
        """Set (overwrite) an event of the leased workflow and write *checkpoint*, in one transaction; return wake-ups for workflows waiting on it."""

    @abc.abstractmethod
    def get_event(self, workflow_id: str, key: str) -> str | None:
        """Return an event's current serialized value, or ``None`` when it is not set."""

    # -- operations (outside executions: operators, producers) --------------------------------------
    @abc.abstractmethod
    def list_messages(self, workflow_id: str) -> list[MessageRecord]:
        """Return every message addressed to *workflow_id*, consumed or not, oldest (lowest seq) first; payloads as stored."""

    @abc.abstractmethod
    def get_events(self, workflow_id: str) -> dict[str, str]:
        """Return every event of *workflow_id*: key -> current serialized value."""

    @abc.abstractmethod
    def resume(
        self, workflow_id: str, ticket: int, drop_from: int | None, now: float
    ) -> tuple[WorkflowRecord | None, Dispatch | None]:
        """Put an ERROR or CANCELLED workflow back to work, in one transaction.

        Only when the workflow is still ERROR or CANCELLED with *ticket* (what the caller read):
        its checkpoints with step id >= *drop_from* are deleted (none when ``None``), and a message
        a deleted ``recv`` checkpoint had consumed is unconsumed, so it is received again; it
        becomes PENDING with a new ticket, without output, error or wait; a ``timeout_at`` already
        passed is cleared (it would stop the workflow at once) and so is a retry count of a deleted
        step; its ``flow_key`` is cleared, so its next execution goes through admission again
        (:meth:`admit_started`). Returns the record after the change and the :class:`Dispatch` to publish. Otherwise
        nothing changes: returns the current record and ``None`` (``(None, None)`` when unknown).
        A workflow with a ``dedup_key`` that another unfinished workflow of its name holds now is
        not resumed: raises ``DuplicateWorkflow`` (naming the holder) and changes nothing.
        """

    @abc.abstractmethod
    def fork(
        self, source_id: str, new_id: str, start_step: int, now: float, *, version: str | None = None
    ) -> tuple[WorkflowRecord | None, bool]:
        """Create *new_id* as a copy of *source_id* that runs again from *start_step*, in one transaction.

        The new workflow is PENDING with ticket 0, the source's name, inputs and queue, *version*,
        no parent and no deadline, ``forked_from``/``forked_from_step`` set, and an execution count
        of 1 (its first execution must read the copied checkpoints). It holds copies of the source's
        checkpoints with step id < *start_step*, and the events those copied ``set_event``
        checkpoints set (the last value of each key). Messages are not copied: a copied ``recv``
        checkpoint holds its value, and a ``recv`` from *start_step* on waits for messages sent to
        *new_id*. Returns ``(record, True)``; ``(existing, False)`` when *new_id* exists (nothing
        is written); ``(None, False)`` when the source does not exist.
        """

    @abc.abstractmethod
    def prune(self, before: float, batch: int = 500) -> int:
        """Delete finished workflows last updated before *before* with their checkpoints, events and the
        messages addressed to them; return how many workflows were deleted.

        Works in batches of at most *batch* workflows, each in its own short transaction, and touches
        only finished rows: a workflow resumed meanwhile, and every unfinished one, is kept, and a
        row locked by someone else is skipped rather than waited for (on backends with row locks).
        """

    @abc.abstractmethod
    def leave_to_sweep(self, dispatch: Dispatch) -> None:
        """Record that *dispatch* will not be published: the next sweep publishes it.

        When the workflow's ticket is still ``dispatch.ticket``, a PENDING workflow gets no
        ``dispatched_at`` and a WAITING one no ``timer_due``; :meth:`sweep` then picks it up at its
        next run instead of after the grace period.
        """

    # -- recovery -------------------------------------------------------------------------------
    @abc.abstractmethod
    def sweep(self, now: float, horizon: float, grace: float, limit: int = 500) -> list[Dispatch]:
        """Find workflows that should be moving but have no live task message, and claim them.

        * WAITING with an unarmed deadline or ``timeout_at`` within *horizon*: arm a timer
          (countdown to the earlier of the two).
        * WAITING whose timer is overdue by more than *grace*: the timer was lost; run it now.
        * PENDING dispatched more than *grace* ago: the message was lost (or is stuck); dispatch again.
        * RUNNING whose execution lock is free: its worker died; dispatch again.

        * PENDING, WAITING, or RUNNING with a free lock, whose own ``timeout_at`` has passed: no
          execution can stop it, so the sweep does: it becomes CANCELLED, its ``error`` an encoded
          ``WorkflowTimedOut``, its ticket bumped (queued messages go stale), its unfinished children
          cancelled; only a parent whose join awaits it is dispatched (woken).

        * ENQUEUED with a free slot of its concurrency key: admitted (:meth:`admit_enqueued`).

        A workflow whose lock is held is never touched, so sweeping a running workflow is harmless.
        """

    @abc.abstractmethod
    def shift_deadlines(self, seconds: float) -> int:
        """Move the deadlines of every unfinished workflow *seconds* earlier, in one transaction; return how many changed.

        Both a wait's ``deadline`` and the workflow's own ``timeout_at`` move; an armed timer is
        forgotten (``timer_due`` cleared), since its message no longer fires at the right time: the
        next :meth:`sweep` arms a new one with a new ticket, and the old message goes stale. Nothing
        else changes. For tests only: it is how the pytest plugin skips time (``durable_clock.advance``).
        """

    @abc.abstractmethod
    def waiting_count(self) -> int:
        """Return how many workflows are WAITING (for metrics and tests)."""

    # -- errors --------------------------------------------------------------------------------
    def is_transient(self, exc: BaseException) -> bool:
        """Whether *exc*, raised by a method of this store, may pass if the call is tried again.

        Transient: a lost or refused connection, a server shutting down, a deadlock, a
        serialization failure, a lock timeout. Everything else is permanent (a value the
        database cannot hold, a constraint, a schema error): the same call fails the same way.
        """
        return isinstance(exc, OSError)

    def after_fork(self) -> None:
        """Drop connections inherited from a parent process (call in each forked child)."""

    def close(self) -> None:
        """Release every connection."""


__all__ = ["Lease", "Store"]
