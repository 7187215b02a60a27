"""Schedules in the store contract: one workflow per tick, whatever the number of drivers.

Checked on SQLite and PostgreSQL. The drivers here are real ``ScheduleDriver`` objects on the
store under test (and on other instances of it, as other processes would open it), on a clock the
test sets; a run is started the way a client starts one (``create_workflow`` under the tick's id).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from celery_durable import DurableClient, ScheduleNotFound
from celery_durable.errors import InvalidArgument
from celery_durable.flow_schedule import ScheduleDriver
from celery_durable.schedules import Interval, tick_id, to_text
from celery_durable.serialization import get_serializer
from celery_durable.store import Store, WorkflowStatus

from .conftest import Harness, store_url

ROOT = Path(__file__).resolve().parents[2]

T = 1_800_000_000.0  # a multiple of 2 and of 60: ticks of "every 2s" fall on T, T + 2, ...
EVERY_2S = to_text(Interval(2.0))
INPUTS = '{"args":[1],"kwargs":{}}'


class Runs:
    """Starts runs as a client does and counts, per id, how many starts created the workflow."""

    def __init__(self) -> None:
        self.created: Counter[str] = Counter()
        self.lock = threading.Lock()

    def starter(self, store: Store):  # type: ignore[no-untyped-def]
        def start(name: str, args: tuple, kwargs: dict, workflow_id: str, queue: str | None) -> str:  # type: ignore[type-arg]
            record, created = store.create_workflow(workflow_id, name, INPUTS, queue, T)
            with self.lock:
                self.created[workflow_id] += int(created)
            return record.workflow_id

        return start


def driver(store: Store, runs: Runs) -> ScheduleDriver:
    return ScheduleDriver(store, get_serializer("json"), runs.starter(store), clock=lambda: T)


def add(store: Store, name: str = "s", overlap: str = "allow", catchup: float | None = None, first: float = T) -> None:
    store.upsert_schedule(name, "wf", INPUTS, "q", EVERY_2S, overlap, catchup, first, T - 1)


def finish_all(store: Store) -> None:
    for record in store.list_workflows(limit=1000):
        if not record.status.is_terminal:
            store.cancel(record.workflow_id, T)


# -- the definition --------------------------------------------------------------------------------
def test_upsert_inserts_then_updates_only_what_changed(h: Harness) -> None:
    store = h.store
    row = store.upsert_schedule("s", "wf", INPUTS, "q", EVERY_2S, "skip", None, T, T - 1)
    assert (row.next_tick, row.paused, row.revision, row.last_run) == (T, False, 0, None)
    same = store.upsert_schedule("s", "wf", INPUTS, "q", EVERY_2S, "skip", None, T + 10, T)
    assert same.revision == 0 and same.next_tick == T, "an unchanged definition writes nothing"
    assert store.advance_schedule("s", 0, T + 4, None, "run", T)
    args = store.upsert_schedule("s", "wf", '{"args":[2],"kwargs":{}}', "q", EVERY_2S, "skip", None, T + 10, T)
    assert args.revision == 2 and args.next_tick == T + 4 and args.last_run == "run", "same rule: the cursor stays"
    store.pause_schedule("s", True, None, T)
    rule = store.upsert_schedule("s", "wf", INPUTS, "q", to_text(Interval(5.0)), "skip", None, T + 5, T)
    assert rule.next_tick == T + 5, "a new rule starts from its own next tick"
    assert rule.paused, "a paused schedule stays paused when the code registers it again"
    assert [s.name for s in store.list_schedules()] == ["s"]


def test_advance_is_a_compare_and_set_on_the_revision(h: Harness) -> None:
    store = h.store
    add(store)
    assert store.advance_schedule("s", 0, T + 2, None, "a", T)
    assert not store.advance_schedule("s", 0, T + 4, None, "b", T), "a stale revision changes nothing"
    row = store.get_schedule("s")
    assert row is not None and (row.next_tick, row.last_run, row.revision) == (T + 2, "a", 1)
    paused = store.pause_schedule("s", True, None, T)
    assert paused is not None and paused.revision == 2
    assert not store.advance_schedule("s", 1, T + 4, None, "b", T), "a pause makes earlier reads stale"
    assert store.delete_schedule("s") and not store.delete_schedule("s")
    assert store.get_schedule("s") is None and store.pause_schedule("s", False, None, T) is None


def test_concurrent_upserts_leave_one_row(h: Harness) -> None:
    store, other = h.store, h.other_store()
    barrier = threading.Barrier(8)

    def upsert(i: int) -> None:
        barrier.wait()
        (store if i % 2 else other).upsert_schedule("s", "wf", f'{{"args":[{i}],"kwargs":{{}}}}', "q", EVERY_2S, "skip", None, T, T)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upsert, range(8)))
    rows = store.list_schedules()
    assert len(rows) == 1 and rows[0].inputs in {f'{{"args":[{i}],"kwargs":{{}}}}' for i in range(8)}


# -- the drivers ------------------------------------------------------------------------------------
def test_racing_drivers_start_exactly_one_workflow_per_tick(h: Harness) -> None:
    """16 drivers on 4 store instances fire the same 30 ticks at once: each tick's run is created once,
    and no tick is missing."""
    stores = [h.store, *(h.other_store() for _ in range(3))]
    add(h.store, overlap="allow")
    runs = Runs()
    drivers = [driver(stores[i % 4], runs) for i in range(16)]
    for k in range(30):
        now = T + 2 * k + 0.3
        barrier = threading.Barrier(len(drivers))

        def fire(d: ScheduleDriver, now: float = now, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            d.fire(now)

        with ThreadPoolExecutor(len(drivers)) as pool:
            list(pool.map(fire, drivers))
    expected = {tick_id("s", T + 2 * k) for k in range(30)}
    assert set(runs.created) == expected, "every tick, and only ticks, started"
    assert all(n == 1 for n in runs.created.values()), "each tick's workflow created exactly once"
    stored = {w.workflow_id for w in h.store.list_workflows(limit=1000)}
    assert stored == expected
    record = h.store.get_workflow(tick_id("s", T + 4))
    assert record is not None and record.scheduled_for == datetime.fromtimestamp(T + 4, timezone.utc)


def test_overlap_skip_starts_no_tick_while_the_previous_run_is_unfinished(h: Harness) -> None:
    store, runs = h.store, Runs()
    add(store, overlap="skip")
    d = driver(store, runs)
    d.fire(T)  # starts T
    d.fire(T + 2)  # T still running: skipped
    d.fire(T + 4)  # skipped
    finish_all(store)
    d.fire(T + 6)  # starts T + 6
    assert sorted(runs.created) == [tick_id("s", T), tick_id("s", T + 6)]


def test_overlap_allow_starts_every_tick(h: Harness) -> None:
    store, runs = h.store, Runs()
    add(store, overlap="allow")
    d = driver(store, runs)
    for k in range(4):
        d.fire(T + 2 * k)
    assert sorted(runs.created) == [tick_id("s", T + 2 * k) for k in range(4)]


def test_overlap_buffer_one_keeps_the_latest_tick_and_starts_it_once_the_run_finished(h: Harness) -> None:
    store, runs = h.store, Runs()
    add(store, overlap="buffer_one")
    d = driver(store, runs)
    d.fire(T)
    d.fire(T + 2)
    d.fire(T + 4)  # T + 2 and T + 4 came while T runs: only T + 4 is kept
    row = store.get_schedule("s")
    assert row is not None and row.pending == T + 4
    d.fire(T + 5)
    assert sorted(runs.created) == [tick_id("s", T)], "nothing more while the run is unfinished"
    finish_all(store)
    d.fire(T + 5)
    assert sorted(runs.created) == [tick_id("s", T), tick_id("s", T + 4)]
    row = store.get_schedule("s")
    assert row is not None and row.pending is None and row.last_run == tick_id("s", T + 4)


def test_without_catchup_missed_ticks_are_skipped(h: Harness) -> None:
    store, runs = h.store, Runs()
    add(store, overlap="allow")
    d = driver(store, runs)
    d.fire(T)
    d.fire(T + 600.5)  # 299 ticks missed: they are skipped, the latest (on time) runs
    assert sorted(runs.created) == [tick_id("s", T), tick_id("s", T + 600)]
    assert all(n == 1 for n in runs.created.values())
    row = store.get_schedule("s")
    assert row is not None and row.next_tick == T + 602


def test_without_catchup_a_tick_over_a_minute_late_is_skipped_for_the_next(h: Harness) -> None:
    store, runs = h.store, Runs()
    store.upsert_schedule("h", "wf", INPUTS, "q", to_text(Interval(3600.0)), "allow", None, T, T - 1)
    d = driver(store, runs)
    d.fire(T + 61)  # the only due tick is over a minute late: nothing runs, the next one will
    assert not runs.created
    row = store.get_schedule("h")
    assert row is not None and row.next_tick == T + 3600
    d.fire(T + 3600.5)
    assert list(runs.created) == [tick_id("h", T + 3600)]


def test_catchup_starts_the_missed_ticks_within_the_window_oldest_first(h: Harness) -> None:
    store, runs = h.store, Runs()
    add(store, overlap="allow", catchup=100.0)
    order: list[str] = []
    start = runs.starter(store)
    d = ScheduleDriver(store, get_serializer("json"), lambda *a: order.append(a[3]) or start(*a), clock=lambda: T)
    d.fire(T)
    d.fire(T + 600)  # down for 10 minutes: the ticks of the last 100 s run, one each
    expected = [tick_id("s", T)] + [tick_id("s", T + 500 + 2 * k) for k in range(51)]
    assert order == expected
    assert all(n == 1 for n in runs.created.values())


def test_a_paused_schedule_starts_nothing_and_a_deleted_one_is_gone(h: Harness) -> None:
    store, runs = h.store, Runs()
    add(store, overlap="allow")
    d = driver(store, runs)
    store.pause_schedule("s", True, None, T)
    assert d.fire(T + 10) == float("inf")
    assert not runs.created
    store.pause_schedule("s", False, T + 12, T + 10)
    d.fire(T + 12)
    assert list(runs.created) == [tick_id("s", T + 12)]
    assert store.delete_schedule("s")
    d.fire(T + 14)
    assert list(runs.created) == [tick_id("s", T + 12)]


def test_a_run_claimed_but_never_started_is_started_by_the_next_pass(h: Harness) -> None:
    store, runs = h.store, Runs()
    add(store, overlap="skip")
    # A driver claimed tick T and died before creating its workflow.
    assert store.advance_schedule("s", 0, T + 2, None, tick_id("s", T), T)
    driver(store, runs).fire(T + 1)
    assert list(runs.created) == [tick_id("s", T)]


# -- through a client -------------------------------------------------------------------------------
def test_client_backfill_is_idempotent_and_trigger_never_takes_a_tick_id(h: Harness) -> None:
    client = DurableClient(store=h.store)
    info = client.schedule("nightly", "wf", timedelta(hours=1), args=(1,), overlap="skip")
    assert info.schedule == "every 3600s" and info.overlap == "skip"
    start, end = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 1, 5, tzinfo=timezone.utc)
    first = [handle.workflow_id for handle in client.backfill_schedule("nightly", start, end)]
    assert first == [f"sched:nightly:2026-01-01T0{hour}:00:00Z" for hour in range(6)]
    again = [handle.workflow_id for handle in client.backfill_schedule("nightly", start, end)]
    assert again == first
    assert len(client.list_workflows(name="wf")) == 6, "a backfill twice stores each tick once"
    record = client.management.get(first[2])
    assert record.scheduled_for == datetime(2026, 1, 1, 2, tzinfo=timezone.utc)
    assert record.status is WorkflowStatus.PENDING and client.decode_result  # inputs are the schedule's
    manual = client.trigger_schedule("nightly")
    assert manual.workflow_id.startswith("sched:nightly:manual-")
    assert client.management.get(manual.workflow_id).scheduled_for is None
    assert [s.name for s in client.list_schedules()] == ["nightly"]
    assert client.pause_schedule("nightly").paused and not client.resume_schedule("nightly").paused
    client.delete_schedule("nightly")
    with pytest.raises(ScheduleNotFound, match="nightly"):
        client.trigger_schedule("nightly")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "2s"}, "schedule must be a crontab"),
        ({"schedule": 0}, "from 0.1 s to ten years"),
        ({"overlap": "queue"}, "overlap must be one of"),
        ({"catchup": -1}, "catchup must be"),
        ({"args": 3}, "args must be a list"),
    ],
)
def test_bad_definitions_are_refused_by_name(h: Harness, kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    client = DurableClient(store=h.store)
    call = {"schedule": 2, **kwargs}
    with pytest.raises(InvalidArgument, match=message):
        client.schedule("s", "wf", **call)
    assert client.list_schedules() == []


def test_racing_drivers_agree_on_skip_one_run_until_it_finishes(h: Harness) -> None:
    """With overlap="skip" the decision for a tick is made once: 16 racing drivers never start a second
    run while the first is unfinished, and start the next due tick once it finished."""
    stores = [h.store, *(h.other_store() for _ in range(3))]
    add(h.store, overlap="skip")
    runs = Runs()
    drivers = [driver(stores[i % 4], runs) for i in range(16)]

    def race(now: float) -> None:
        barrier = threading.Barrier(len(drivers))

        def fire(d: ScheduleDriver) -> None:
            barrier.wait()
            d.fire(now)

        with ThreadPoolExecutor(len(drivers)) as pool:
            list(pool.map(fire, drivers))

    for k in range(10):
        race(T + 2 * k + 0.1)
    assert list(runs.created.items()) == [(tick_id("s", T), 1)]
    finish_all(h.store)
    race(T + 20.1)
    assert sorted(runs.created.items()) == [(tick_id("s", T), 1), (tick_id("s", T + 20), 1)]


_DRIVER = """
import os, sys, time
from celery_durable.flow_schedule import ScheduleDriver
from celery_durable.serialization import get_serializer
from celery_durable.store import open_store
url, prefix, go, base = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
store = open_store(url, prefix)

def start(name, args, kwargs, workflow_id, queue):
    record, created = store.create_workflow(workflow_id, name, "[]", queue, base)
    if created:
        print(workflow_id, flush=True)
    return workflow_id

driver = ScheduleDriver(store, get_serializer("json"), start, clock=time.time)
while not os.path.exists(go):
    time.sleep(0.001)
for k in range(25):
    driver.fire(base + 2 * k + 0.5)
store.close()
"""


def test_processes_driving_one_schedule_start_each_tick_once(h: Harness, tmp_path: Path) -> None:
    """4 processes, each with its own store and driver, fire the same 25 ticks: every tick's
    workflow is created by exactly one of them."""
    add(h.store, overlap="allow")
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DRIVER, store_url(h.store), h.store.prefix, str(go), repr(T)],  # type: ignore[attr-defined]
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(4)
    ]
    go.write_text("")
    created: Counter[str] = Counter()
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        created.update(out.split())
    assert set(created) == {tick_id("s", T + 2 * k) for k in range(25)}
    assert set(created.values()) == {1}, "no tick's workflow created twice"
