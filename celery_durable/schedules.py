"""When a schedule ticks: intervals aligned to the epoch and crontabs, in UTC. No Celery, no SQL.

A tick is a POSIX timestamp. An interval of *s* seconds ticks at every multiple of *s* since the
epoch (so every process computes the same ticks, whenever it started); a crontab ticks at the
whole minutes its minute, hour, day-of-month, month and day-of-week sets all allow (a day must
match both day sets, as Celery's ``crontab`` does), read in UTC.

A ``crontab`` is read only through its attributes (``minute``, ``hour``, ``day_of_month``,
``month_of_year``, ``day_of_week``: the expanded sets Celery keeps), so this module never imports
Celery. Each tick of a schedule starts the workflow under the id :func:`tick_id` makes of it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from .errors import InvalidArgument
from .validation import shown

#: The most ticks one backfill may start (a longer range is refused, not truncated).
MAX_BACKFILL = 10_000
#: Shortest interval accepted, in seconds.
MIN_INTERVAL = 0.1
#: Longest interval accepted, in seconds (ten years: ticks stay well inside datetime's range).
MAX_INTERVAL = 10 * 366 * 86400.0
_DAYS_SEARCHED = 366 * 8  # a crontab that matches no day in 8 years (say 30 February) never matches


@dataclass(frozen=True)
class Interval:
    """Every *seconds* seconds, at the multiples of *seconds* since the epoch."""

    seconds: float

    def next_after(self, t: float) -> float:
        """The first tick strictly after *t*."""
        k = math.floor(t / self.seconds) + 1
        tick = _round(k * self.seconds)
        return tick if tick > t else _round((k + 1) * self.seconds)

    def last_at_or_before(self, t: float) -> float:
        """The latest tick at or before *t*."""
        tick = _round(math.floor(t / self.seconds) * self.seconds)
        return tick if tick <= t else _round(tick - self.seconds)

    def describe(self) -> str:
        return f"every {self.seconds:g}s"

    def to_json(self) -> dict[str, Any]:
        return {"every": self.seconds}


@dataclass(frozen=True)
class Cron:
    """The whole minutes (UTC) whose fields are all in these sets; ``days_of_week``: 0 is Sunday."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]

    def _day_matches(self, day: date) -> bool:
        return (
            day.month in self.months
            and day.day in self.days_of_month
            and day.isoweekday() % 7 in self.days_of_week
        )

    def next_after(self, t: float) -> float:
        """The first tick strictly after *t*."""
        start = _utc((math.floor(t / 60) + 1) * 60)
        day = start.date()
        hours, minutes = sorted(self.hours), sorted(self.minutes)
        for _ in range(_DAYS_SEARCHED):
            if self._day_matches(day):
                first_day = day == start.date()
                for h in hours:
                    if first_day and h < start.hour:
                        continue
                    for m in minutes:
                        if first_day and h == start.hour and m < start.minute:
                            continue
                        return _timestamp(day, h, m)
            day += timedelta(days=1)
        raise InvalidArgument(f"the crontab {self.describe()} never ticks")

    def last_at_or_before(self, t: float) -> float:
        """The latest tick at or before *t*."""
        end = _utc(math.floor(t / 60) * 60)
        day = end.date()
        hours, minutes = sorted(self.hours, reverse=True), sorted(self.minutes, reverse=True)
        for _ in range(_DAYS_SEARCHED):
            if self._day_matches(day):
                last_day = day == end.date()
                for h in hours:
                    if last_day and h > end.hour:
                        continue
                    for m in minutes:
                        if last_day and h == end.hour and m > end.minute:
                            continue
                        return _timestamp(day, h, m)
            day -= timedelta(days=1)
        raise InvalidArgument(f"the crontab {self.describe()} never ticks")

    def describe(self) -> str:
        fields = (self.minutes, self.hours, self.days_of_month, self.months, self.days_of_week)
        full = (range(60), range(24), range(1, 32), range(1, 13), range(7))
        return "cron " + " ".join(
            "*" if values == frozenset(span) else ",".join(str(x) for x in sorted(values))
            for values, span in zip(fields, full)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "cron": [
                sorted(self.minutes),
                sorted(self.hours),
                sorted(self.days_of_month),
                sorted(self.months),
                sorted(self.days_of_week),
            ]
        }


Spec = Interval | Cron


def _round(t: float) -> float:
    return round(t, 6)  # k * 0.1 is not exactly a multiple: every process rounds the same way


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


def _timestamp(day: date, hour: int, minute: int) -> float:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=timezone.utc).timestamp()


def first_at_or_after(spec: Spec, t: float) -> float:
    """The first tick at or after *t*."""
    last = spec.last_at_or_before(t)
    return last if last == t else spec.next_after(t)


def ticks_between(spec: Spec, start: float, end: float, limit: int = MAX_BACKFILL) -> list[float]:
    """Every tick in ``[start, end]``, oldest first; more than *limit* of them raises ``InvalidArgument``."""
    ticks: list[float] = []
    tick = first_at_or_after(spec, start)
    while tick <= end:
        if len(ticks) == limit:
            raise InvalidArgument(f"more than {limit} ticks of {spec.describe()} lie in that range")
        ticks.append(tick)
        tick = spec.next_after(tick)
    return ticks


# -- what users pass, what the store keeps ------------------------------------------------------------
_CRON_FIELDS = (
    ("minute", range(60)),
    ("hour", range(24)),
    ("day_of_month", range(1, 32)),
    ("month_of_year", range(1, 13)),
    ("day_of_week", range(7)),
)


def parse(schedule: Any) -> Spec:
    """A schedule as users give it: a ``crontab(...)``, a ``timedelta``, a number of seconds, or
    Celery's ``schedule(run_every=...)``; anything else raises ``InvalidArgument``."""
    if isinstance(schedule, (Interval, Cron)):
        return schedule
    run_every = getattr(schedule, "run_every", None)  # celery.schedules.schedule
    if run_every is not None and not hasattr(schedule, "month_of_year"):
        schedule = run_every
    if isinstance(schedule, timedelta):
        return _interval(schedule.total_seconds(), schedule)
    if isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
        return _interval(float(schedule), schedule)
    if all(hasattr(schedule, attribute) for attribute, _ in _CRON_FIELDS):
        sets = []
        for attribute, span in _CRON_FIELDS:
            values = getattr(schedule, attribute)
            try:
                expanded = frozenset(int(x) for x in values)
            except (TypeError, ValueError):
                raise InvalidArgument(f"the crontab's {attribute} is not a set of numbers: {shown(values)}") from None
            if not expanded or not expanded <= frozenset(span):
                raise InvalidArgument(f"the crontab's {attribute} must lie in {span.start}-{span.stop - 1}")
            sets.append(expanded)
        return Cron(*sets)
    raise InvalidArgument(
        f"schedule must be a crontab(...), a timedelta or a number of seconds, got {shown(schedule)}"
    )


def _interval(seconds: float, given: Any) -> Interval:
    if not math.isfinite(seconds) or not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        raise InvalidArgument(
            f"a schedule's interval must be from {MIN_INTERVAL} s to ten years, got {shown(given)}"
        )
    return Interval(_round(seconds))


def to_text(spec: Spec) -> str:
    """The spec as the store keeps it (JSON)."""
    return json.dumps(spec.to_json(), separators=(",", ":"))


def from_text(text: str) -> Spec:
    """The spec the store kept (see :func:`to_text`)."""
    data = json.loads(text)
    if "every" in data:
        return Interval(float(data["every"]))
    return Cron(*(frozenset(values) for values in data["cron"]))


# -- the ids of the workflows ticks start -------------------------------------------------------------
_TICK_ID = re.compile(r"^sched:.+:(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{3})?Z)$")


def tick_iso(tick: float) -> str:
    """A tick as ISO-8601 UTC: ``2026-01-01T09:00:00Z`` (milliseconds only when it has some)."""
    spec = "seconds" if tick == math.floor(tick) else "milliseconds"
    return _utc(tick).isoformat(timespec=spec).replace("+00:00", "Z")


def tick_id(schedule: str, tick: float) -> str:
    """The workflow id of *schedule*'s run for *tick*: every driver derives the same one, so a tick
    started twice is stored once."""
    return f"sched:{schedule}:{tick_iso(tick)}"


def manual_id(schedule: str, token: str) -> str:
    """The id of a run started by hand: it ends with no timestamp, so it is never a tick's."""
    return f"sched:{schedule}:manual-{token}"


def tick_of(workflow_id: str) -> datetime | None:
    """The tick a workflow id made by :func:`tick_id` stands for (timezone-aware UTC); None for others."""
    match = _TICK_ID.match(workflow_id)
    if match is None:
        return None
    return datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))


__all__ = [
    "Cron",
    "Interval",
    "Spec",
    "first_at_or_after",
    "from_text",
    "manual_id",
    "parse",
    "tick_id",
    "tick_iso",
    "tick_of",
    "ticks_between",
    "to_text",
]
