"""The record that crosses the store interface for schedules. No SQL, no Celery."""

from __future__ import annotations

from dataclasses import dataclass

#: What a tick does while the schedule's previous run is unfinished.
OVERLAPS = ("skip", "allow", "buffer_one")


@dataclass(frozen=True)
class ScheduleRecord:
    """One schedule as stored (its definition, then the drivers' state).

    ``spec`` is the tick rule as :func:`celery_durable.schedules.to_text` writes it; ``inputs`` the
    serialized arguments of each run. ``next_tick`` is the cursor: the first tick no driver has
    handled yet. ``pending`` is the tick ``buffer_one`` keeps while a run is unfinished;
    ``last_run`` the id of the latest run a driver claimed. Every change bumps ``revision``: a
    driver's update names the revision it read (compare-and-set).
    """

    name: str
    workflow: str
    inputs: str
    queue: str | None
    spec: str
    overlap: str
    catchup: float | None
    paused: bool
    next_tick: float
    pending: float | None
    last_run: str | None
    revision: int
    created_at: float
    updated_at: float


__all__ = ["OVERLAPS", "ScheduleRecord"]
