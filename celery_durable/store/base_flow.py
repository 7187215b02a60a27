"""The store contract's flow-control part that has tables of its own: schedules and debounce rounds.

:class:`~celery_durable.store.base.Store` inherits it; the same rules apply (every method states
what it guarantees, and tests/store checks each backend against those sentences).
"""

from __future__ import annotations

import abc

from .records import Dispatch, WorkflowRecord
from .schedule_records import ScheduleRecord


class FlowControlStore(abc.ABC):
    """Schedules (sql_schedules.py) and debouncing (sql_debounce.py)."""

    # -- schedules (sql_schedules.py) ----------------------------------------------------------------
    @abc.abstractmethod
    def upsert_schedule(
        self,
        name: str,
        workflow: str,
        inputs: str,
        queue: str | None,
        spec: str,
        overlap: str,
        catchup: float | None,
        first_tick: float,
        now: float,
    ) -> ScheduleRecord:
        """Store the definition of schedule *name*; return the row as it stands afterwards.

        A new schedule starts unpaused with cursor ``next_tick = first_tick``. An existing one keeps
        its state (paused, pending, last run) and is written only when a field differs: then its
        definition is replaced and its revision bumped, and when *spec* changed the cursor becomes
        *first_tick* (the ticks of the old rule are not the new rule's). Concurrent upserts of one
        name leave one row holding one of the definitions given.
        """

    @abc.abstractmethod
    def get_schedule(self, name: str) -> ScheduleRecord | None:
        """Return schedule *name*, or None."""

    @abc.abstractmethod
    def list_schedules(self) -> list[ScheduleRecord]:
        """Return every schedule, by name."""

    @abc.abstractmethod
    def advance_schedule(
        self, name: str, revision: int, next_tick: float, pending: float | None, last_run: str | None, now: float
    ) -> bool:
        """Compare-and-set of a schedule's drivers' state: if *name* still has *revision*, set its
        cursor, pending tick and last run to these values, bump its revision and return True;
        otherwise change nothing and return False.

        Of any number of concurrent callers that read the same revision, exactly one succeeds, in
        any process or host: a driver that claims a tick this way is the only one that claimed it.
        """

    @abc.abstractmethod
    def pause_schedule(self, name: str, paused: bool, next_tick: float | None, now: float) -> ScheduleRecord | None:
        """Set whether schedule *name* is paused (and, when *next_tick* is given, its cursor); bump its
        revision, so a driver that read it before cannot advance it; return it, or None when unknown.
        """

    @abc.abstractmethod
    def delete_schedule(self, name: str) -> bool:
        """Delete schedule *name*; return whether it existed. Its runs are left alone."""

    # -- debouncing (sql_debounce.py) ---------------------------------------------------------------
    @abc.abstractmethod
    def debounce(
        self,
        name: str,
        key: str,
        inputs: str,
        queue: str | None,
        now: float,
        delay: float,
        max_delay: float | None,
        horizon: float,
        *,
        version: str | None = None,
        timeout_at: float | None = None,
        trace_context: str | None = None,
        task_options: str | None = None,
    ) -> tuple[WorkflowRecord, Dispatch | None, bool]:
        """Record a debounced call of workflow *name* with *key* and *inputs*, in one transaction; return
        the round's workflow, its timer to publish (``None`` when not within *horizon*: the sweep arms
        it) and whether this call opened the round.

        A **round** is one workflow, WAITING with wait kind ``"debounce"`` until its deadline, then
        started by its timer like any wait's (the sweep arms, re-arms and recovers it). While the
        latest round of (*name*, *key*) is still WAITING for its debounce, a call joins it: its
        *inputs* replace the round's, its deadline becomes ``min(now + delay, max_at)`` and its ticket
        is bumped (earlier timers go stale). ``max_at`` is the round's first call's *now* plus the
        smallest *max_delay* any of its calls gave (none: no bound). Otherwise (no round yet, or it
        began, finished or was cancelled) the call opens the next round, with id
        ``debounce:{name}:{key}:{n}`` (hashed when longer than the id limit), *queue*, *version*,
        *timeout_at*, *trace_context* and *task_options* as given, no parent, deadline
        ``min(now + delay, now + max_delay)``. Raises ``WorkflowConflict`` (writing nothing) when that
        id is taken by a workflow it did not create.

        **Invariants**, whatever the number of concurrent callers in any process or host: one workflow
        per round; every call of a round returns the same workflow; a round runs the inputs of its
        last call (an execution begins only with the current ticket, and a call that races that begin
        either lands before it, bumping the ticket, or finds the workflow begun and opens the next
        round: no call is lost); and no round starts later than its ``max_at``.
        """
