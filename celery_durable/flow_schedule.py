"""Schedules: a workflow started once per tick, whatever the number of workers, hosts and beats.

No Celery, no SQL: the tick math is in :mod:`celery_durable.schedules`, the store side in
``store/sql_schedules.py``. Any number of drivers (each worker's tick thread, beat's tick task)
call :meth:`ScheduleDriver.fire` and race; for each schedule a driver reads the row, decides what
its due tick does (start it, skip it, buffer it, by ``overlap``), claims that decision by moving
the cursor with a compare-and-set (``Store.advance_schedule``), and only the winner starts the run,
under the tick's deterministic id (so even two winners of successive revisions would store one).

A driver that dies between its claim and its start leaves ``last_run`` naming a workflow that does
not exist: the next pass of any driver starts it (for a tick of the last :data:`REPAIR_WINDOW`
seconds, so a run pruned long after it finished is not started again).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from . import schedules as ticks
from . import validation as v
from .errors import InvalidArgument, ScheduleNotFound
from .store.schedule_records import OVERLAPS, ScheduleRecord

if TYPE_CHECKING:
    from .config import DurableConfig
    from .handle import WorkflowHandle
    from .management import Management
    from .serialization import Serializer
    from .store import Store

log = logging.getLogger("celery_durable")

#: Without ``catchup``, a due tick is started when a driver reaches it at most this many seconds late;
#: older missed ticks are skipped (only the latest due tick may run).
ON_TIME = 60.0
#: A claimed run missing from the store is started again only for a tick this recent (seconds).
REPAIR_WINDOW = 3600.0
#: Most ticks one driver pass handles per schedule (a long catch-up continues at the next pass).
MAX_TICKS_PER_PASS = 1000
#: While a ``buffer_one`` tick waits for the run before it, drivers look again this often (seconds).
PENDING_POLL = 1.0


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as :meth:`ScheduleAPI.list_schedules` shows it."""

    name: str
    workflow: str
    schedule: str  # "every 2s", "cron 0 9 * * 1,2,3,4,5" (UTC)
    overlap: str
    catchup: float | None
    paused: bool
    next_tick: datetime  # the next tick no driver handled yet
    last_run: str | None  # the id of the latest run a driver started
    pending: datetime | None  # buffer_one: the tick waiting for the run before it

    @classmethod
    def of(cls, row: ScheduleRecord) -> ScheduleInfo:
        return cls(
            name=row.name,
            workflow=row.workflow,
            schedule=ticks.from_text(row.spec).describe(),
            overlap=row.overlap,
            catchup=row.catchup,
            paused=row.paused,
            next_tick=datetime.fromtimestamp(row.next_tick, timezone.utc),
            last_run=row.last_run,
            pending=None if row.pending is None else datetime.fromtimestamp(row.pending, timezone.utc),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (times as ISO-8601)."""
        return {
            "name": self.name,
            "workflow": self.workflow,
            "schedule": self.schedule,
            "overlap": self.overlap,
            "catchup": self.catchup,
            "paused": self.paused,
            "next_tick": self.next_tick.isoformat(),
            "last_run": self.last_run,
            "pending": None if self.pending is None else self.pending.isoformat(),
        }


#: Starts one run: (workflow name, args, kwargs, workflow id, queue) -> the id of the run.
Starter = Callable[[str, tuple[Any, ...], dict[str, Any], str, "str | None"], str]


class ScheduleDriver:
    """Fires the due ticks of every stored schedule; any number of drivers may run at once."""

    def __init__(self, store: Store, serializer: Serializer, start: Starter, clock: Callable[[], float]) -> None:
        self.store = store
        self.serializer = serializer
        self.start = start
        self.clock = clock

    def fire(self, now: float | None = None) -> float:
        """Handle every due tick now; return when the next one is due (a timestamp; ``inf``: none)."""
        now = self.clock() if now is None else now
        wake = math.inf
        for row in self.store.list_schedules():
            if row.paused:
                continue
            try:
                after = self._drive(row, now)
            except Exception:
                log.warning("celery_durable: schedule %r: could not fire its ticks; will try again", row.name, exc_info=True)
                wake = min(wake, now + PENDING_POLL)
                continue
            if after is None or after.paused:
                continue
            wake = min(wake, after.next_tick, now + PENDING_POLL if after.pending is not None else math.inf)
        return wake

    def _drive(self, row: ScheduleRecord, now: float) -> ScheduleRecord | None:
        spec = ticks.from_text(row.spec)
        for _ in range(MAX_TICKS_PER_PASS):
            running = self._last_run_unfinished(row, now)
            if row.pending is not None and not running:
                run = ticks.tick_id(row.name, row.pending)
                if self.store.advance_schedule(row.name, row.revision, row.next_tick, None, run, now):
                    self._start(row, run)
            elif row.next_tick > now:
                return row
            else:
                tick = self._due_tick(row, spec, now)
                cursor = spec.next_after(now if tick is None else tick)
                pending, last_run, run = row.pending, row.last_run, None
                if tick is not None:
                    if not running or row.overlap == "allow":
                        run = last_run = ticks.tick_id(row.name, tick)
                    elif row.overlap == "buffer_one":
                        pending = tick  # replaces an older one: at most one is kept
                if self.store.advance_schedule(row.name, row.revision, cursor, pending, last_run, now) and run:
                    self._start(row, run)
            fresh = self.store.get_schedule(row.name)
            if fresh is None or fresh.paused:
                return None
            row = fresh
        return row

    @staticmethod
    def _due_tick(row: ScheduleRecord, spec: ticks.Spec, now: float) -> float | None:
        """The tick to handle now (the cursor is due), or None when every due tick was missed."""
        if row.catchup is None:
            latest = spec.last_at_or_before(now)
            return latest if now - latest <= ON_TIME else None
        oldest = ticks.first_at_or_after(spec, max(row.next_tick, now - max(row.catchup, ON_TIME)))
        return oldest if oldest <= now else None

    def _last_run_unfinished(self, row: ScheduleRecord, now: float) -> bool:
        if row.last_run is None:
            return False
        record = self.store.get_workflow(row.last_run)
        if record is not None:
            return not record.status.is_terminal
        tick = ticks.tick_of(row.last_run)
        if tick is None or now - tick.timestamp() > REPAIR_WINDOW:
            return False
        self._start(row, row.last_run)  # claimed by a driver that died before starting it
        return True

    def _start(self, row: ScheduleRecord, workflow_id: str) -> str:
        data = self.serializer.loads(row.inputs)
        return self.start(row.workflow, tuple(data["args"]), dict(data["kwargs"]), workflow_id, row.queue)


def check_overlap(overlap: Any) -> str:
    if overlap not in OVERLAPS:
        raise InvalidArgument(f"overlap must be one of {', '.join(repr(o) for o in OVERLAPS)}, got {v.shown(overlap)}")
    return str(overlap)


def check_catchup(catchup: Any) -> float | None:
    if catchup is None:
        return None
    seconds = catchup.total_seconds() if isinstance(catchup, timedelta) else catchup
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
        raise InvalidArgument(f"catchup must be a timedelta or a number of seconds >= 0, got {v.shown(catchup)}")
    return float(seconds)


def _timestamp(value: Any, what: str) -> float:
    seconds = v.check_timestamp(value, what)
    if seconds is None:
        raise InvalidArgument(f"{what} is required")
    return seconds


class ScheduleAPI:
    """The schedule operations of a client (``Durable`` and ``DurableClient``)."""

    if TYPE_CHECKING:  # provided by Client
        config: DurableConfig
        serializer: Serializer

        @property
        def store(self) -> Store: ...
        @property
        def management(self) -> Management: ...
        def handle(self, workflow_id: str) -> WorkflowHandle: ...

    _schedule_driver: ScheduleDriver | None = None

    @property
    def schedules(self) -> ScheduleDriver:
        """The driver of this client's schedules (what a worker's tick thread and beat's tick task run)."""
        if self._schedule_driver is None or self._schedule_driver.store is not self.store:
            self._schedule_driver = ScheduleDriver(self.store, self.serializer, self._start_run, self.management.engine.clock)
        return self._schedule_driver

    def _start_run(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], workflow_id: str, queue: str | None) -> str:
        # A Durable records its code version with each run, as its own starts do; a DurableClient has none.
        version = getattr(self, "version", None)
        return self.management.start(name, args, kwargs, workflow_id=workflow_id, queue=queue, version=version).workflow_id

    def schedule(
        self,
        name: str,
        workflow: Any,
        schedule: Any,
        args: Any = (),
        kwargs: Any = None,
        *,
        overlap: str = "skip",
        catchup: Any = None,
        queue: str | None = None,
    ) -> ScheduleInfo:
        """Store schedule *name*: start *workflow* (a workflow task, or its name) with *args*/*kwargs* at
        each tick of *schedule* (a ``crontab(...)``, read in UTC, or a ``timedelta`` / seconds for an
        interval aligned to the epoch). Call it where the code registers its workflows: it upserts, so
        a changed definition replaces the stored one (a changed *schedule* restarts from its next tick)
        and a paused schedule stays paused.

        Each tick starts one workflow, id ``sched:{name}:{tick ISO-8601 UTC}``, however many workers and
        beats drive it. *overlap*: while the previous run is unfinished, a tick is skipped (``"skip"``),
        started anyway (``"allow"``), or kept, at most one, to start when the run finishes
        (``"buffer_one"``). After downtime, *catchup* (a ``timedelta``) starts the ticks missed within
        that window, oldest first; without it, only the latest due tick runs if it is under a minute late.
        """
        name = v.check_id(name, "schedule name")
        if len(ticks.tick_id(name, 0.5)) > 255:
            raise InvalidArgument(f"schedule name {name!r} is too long for its runs' ids")
        workflow_name = v.check_id(getattr(workflow, "name", workflow), "workflow name")
        spec = ticks.parse(schedule)
        args, kwargs = v.check_call(args, kwargs)
        inputs = self.serializer.dumps({"args": list(args), "kwargs": kwargs})
        now = self.management.engine.clock()
        row = self.store.upsert_schedule(
            name,
            workflow_name,
            inputs,
            v.check_queue(queue or self.config.queue),
            ticks.to_text(spec),
            check_overlap(overlap),
            check_catchup(catchup),
            spec.next_after(now),
            now,
        )
        return ScheduleInfo.of(row)

    def list_schedules(self) -> list[ScheduleInfo]:
        """Every stored schedule, by name."""
        return [ScheduleInfo.of(row) for row in self.store.list_schedules()]

    def get_schedule(self, name: str) -> ScheduleInfo:
        """Schedule *name*; an unknown name raises ``ScheduleNotFound``."""
        return ScheduleInfo.of(self._schedule_row(name))

    def pause_schedule(self, name: str) -> ScheduleInfo:
        """Stop starting ticks of schedule *name* (its runs in flight go on)."""
        return self._pause(name, True, None)

    def resume_schedule(self, name: str) -> ScheduleInfo:
        """Start its ticks again, from the next one (ticks that fell while paused are not caught up)."""
        row = self._schedule_row(name)
        return self._pause(name, False, ticks.from_text(row.spec).next_after(self.management.engine.clock()))

    def delete_schedule(self, name: str) -> None:
        """Forget schedule *name* (its runs are left alone); an unknown name raises ``ScheduleNotFound``."""
        if not self.store.delete_schedule(v.check_id(name, "schedule name")):
            raise ScheduleNotFound(f"no schedule named {name!r}")

    def trigger_schedule(self, name: str) -> WorkflowHandle:
        """Start one run of schedule *name* now, outside its ticks (id ``sched:{name}:manual-...``, never a
        tick's), whatever its overlap; the drivers' ``overlap`` looks at the runs of ticks only."""
        row = self._schedule_row(name)
        run = self.schedules._start(row, ticks.manual_id(row.name, uuid.uuid4().hex))
        return self.handle(run)

    def backfill_schedule(self, name: str, start: Any, end: Any) -> list[WorkflowHandle]:
        """Start the run of every tick of schedule *name* in ``[start, end]`` (timezone-aware datetimes
        or timestamps), oldest first, whatever its overlap. Idempotent: a tick that has a run keeps it."""
        row = self._schedule_row(name)
        first, last = _timestamp(start, "start"), _timestamp(end, "end")
        if last < first:
            raise InvalidArgument("end must not be before start")
        spec = ticks.from_text(row.spec)
        return [self.handle(self.schedules._start(row, ticks.tick_id(row.name, t))) for t in ticks.ticks_between(spec, first, last)]

    def fire_schedules(self) -> float:
        """Start every due tick now (what the drivers call); return when the next is due (a timestamp)."""
        return self.schedules.fire()

    def _pause(self, name: str, paused: bool, next_tick: float | None) -> ScheduleInfo:
        row = self.store.pause_schedule(v.check_id(name, "schedule name"), paused, next_tick, self.management.engine.clock())
        if row is None:
            raise ScheduleNotFound(f"no schedule named {name!r}")
        return ScheduleInfo.of(row)

    def _schedule_row(self, name: str) -> ScheduleRecord:
        row = self.store.get_schedule(v.check_id(name, "schedule name"))
        if row is None:
            raise ScheduleNotFound(f"no schedule named {name!r}")
        return row


__all__ = ["ScheduleAPI", "ScheduleDriver", "ScheduleInfo"]
