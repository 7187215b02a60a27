"""The tick math of schedules (celery_durable/schedules.py): intervals aligned to the epoch, crontabs in UTC."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from celery.schedules import crontab, schedule

from celery_durable.errors import InvalidArgument
from celery_durable.schedules import (
    Cron,
    Interval,
    first_at_or_after,
    from_text,
    parse,
    tick_id,
    tick_of,
    ticks_between,
    to_text,
)


def ts(*parts: int) -> float:
    return datetime(*parts, tzinfo=timezone.utc).timestamp()  # type: ignore[misc]


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S %a")


def test_intervals_tick_at_multiples_of_their_length_since_the_epoch() -> None:
    every = parse(timedelta(seconds=2))
    assert every == Interval(2.0)
    t = ts(2026, 3, 1, 12, 0, 0)
    assert every.next_after(t) == t + 2, "strictly after"
    assert every.next_after(t + 0.5) == t + 2
    assert every.last_at_or_before(t + 1.9) == t
    assert every.last_at_or_before(t) == t
    assert first_at_or_after(every, t) == t and first_at_or_after(every, t + 0.1) == t + 2
    tenth = parse(0.1)
    assert ticks_between(tenth, t, t + 0.35) == [t, t + 0.1, t + 0.2, t + 0.3]
    assert parse(schedule(run_every=timedelta(minutes=5))) == Interval(300.0)


def test_crontab_fields_are_expanded_and_read_in_utc() -> None:
    business = parse(crontab(minute="*/15", hour="9-17", day_of_week="mon-fri"))
    assert isinstance(business, Cron)
    friday_evening = ts(2026, 1, 2, 17, 50)  # a Friday
    assert iso(business.next_after(friday_evening)) == "2026-01-05 09:00:00 Mon"
    assert iso(business.last_at_or_before(ts(2026, 1, 4, 12, 0))) == "2026-01-02 17:45:00 Fri"
    assert business.next_after(ts(2026, 1, 5, 9, 0)) == ts(2026, 1, 5, 9, 15), "strictly after a tick"
    assert business.last_at_or_before(ts(2026, 1, 5, 9, 15, 30)) == ts(2026, 1, 5, 9, 15)


def test_crontab_day_of_month_and_month_and_leap_days() -> None:
    leap = parse(crontab(minute=0, hour=0, day_of_month=29, month_of_year=2))
    assert iso(leap.next_after(ts(2026, 1, 1))) == "2028-02-29 00:00:00 Tue"
    both = parse(crontab(minute=30, hour=6, day_of_month=13, day_of_week="fri"))  # both must match, as Celery
    assert iso(both.next_after(ts(2026, 1, 1))) == "2026-02-13 06:30:00 Fri"
    with pytest.raises(InvalidArgument, match="never ticks"):
        Cron(frozenset({0}), frozenset({0}), frozenset({30}), frozenset({2}), frozenset(range(7))).next_after(ts(2026, 1, 1))


def test_ticks_between_matches_stepping_one_tick_at_a_time() -> None:
    every_minute = parse(crontab())
    start = ts(2026, 6, 30, 23, 58, 30)
    ticks = ticks_between(every_minute, start, start + 180)
    assert [iso(t) for t in ticks] == ["2026-06-30 23:59:00 Tue", "2026-07-01 00:00:00 Wed", "2026-07-01 00:01:00 Wed"]
    with pytest.raises(InvalidArgument, match="more than 3 ticks"):
        ticks_between(every_minute, start, start + 600, limit=3)


def test_specs_survive_the_store_text() -> None:
    for spec in (Interval(2.0), Interval(0.5), parse(crontab(minute="0,30", hour=9))):
        assert from_text(to_text(spec)) == spec
    assert parse(crontab(minute="0,30", hour=9)).describe() == "cron 0,30 9 * * *"


def test_tick_ids_are_deterministic_and_carry_their_tick() -> None:
    t = ts(2026, 1, 1, 9, 0, 0)
    assert tick_id("report:daily", t) == "sched:report:daily:2026-01-01T09:00:00Z"
    assert tick_id("fast", t + 0.5) == "sched:fast:2026-01-01T09:00:00.500Z"
    assert tick_of(tick_id("report:daily", t)) == datetime(2026, 1, 1, 9, tzinfo=timezone.utc)
    assert tick_of("sched:x:manual-abc") is None and tick_of("some-id") is None


@pytest.mark.parametrize("bad", ["*/5 * * * *", 0.01, timedelta(0), float("inf"), 1e12, True, None])
def test_bad_schedules_are_refused_by_what_was_wrong(bad: object) -> None:
    with pytest.raises(InvalidArgument, match="schedule"):
        parse(bad)
