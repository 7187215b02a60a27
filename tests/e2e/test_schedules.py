"""Schedules as a user sees them: real ``celery worker`` processes and real ``celery beat`` processes
all driving one schedule, on Redis and RabbitMQ, the store on PostgreSQL.

What is asserted comes from the runs themselves: each run records its id, its ``scheduled_for``
and when it ran (tests/apps/schedapp.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from celery_durable import DurableClient
from celery_durable.schedules import tick_id
from tests.services import ROOT, Beat, Worker, wait_for

EVERY = 2.0


def runs(env: dict[str, str]) -> list[dict[str, Any]]:
    path = Path(env["CD_COUNTER_DIR"]) / "runs"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stored_ticks(env: dict[str, str]) -> dict[str, Any]:
    with DurableClient(env["CD_DATABASE_URL"], table_prefix=env["CD_PREFIX"]) as client:
        return {w.workflow_id: w for w in client.list_workflows(name="tests.apps.schedapp.report", limit=1000)}


def assert_one_run_per_tick(env: dict[str, str], first: float, last: float) -> None:
    """Every tick in [first, last] has exactly one workflow, and its body ran exactly once, for that tick."""
    expected = [first + EVERY * k for k in range(round((last - first) / EVERY) + 1)]
    stored = stored_ticks(env)
    for tick in expected:
        record = stored.get(tick_id("every", tick))
        assert record is not None, f"tick {tick} has no workflow"
        assert record.scheduled_for is not None and record.scheduled_for.timestamp() == tick
    ran = [r["id"] for r in runs(env)]
    for tick in expected:
        assert ran.count(tick_id("every", tick)) == 1, f"tick {tick} ran {ran.count(tick_id('every', tick))} times"
    for line in runs(env):
        assert line["id"] == tick_id("every", line["scheduled_for"])


def test_three_workers_and_two_beats_start_exactly_one_workflow_per_tick(e2e_env: dict[str, str], tmp_path: Path) -> None:
    env = {**e2e_env, "CD_SCHED_EVERY": str(EVERY)}
    workers = [Worker(env, app="tests.apps.schedapp") for _ in range(3)]
    beats = [Beat(env, tmp_path / f"beat{i}", app="tests.apps.schedapp") for i in range(2)]
    for i in range(2):
        (tmp_path / f"beat{i}").mkdir()
    try:
        for w in workers:
            w.start()
        for b in beats:
            b.start()
        wait_for(lambda: len(runs(env)) >= 10, timeout=60)  # about 20 s of ticks
    finally:
        for b in beats:
            b.stop()
        for w in workers:
            w.stop()
    ticks = sorted(line["scheduled_for"] for line in runs(env))
    # The first and last ticks may fall while drivers start or stop: check the ones between.
    assert_one_run_per_tick(env, ticks[1], ticks[-2])
    assert len(ticks) == len(set(ticks)), "no tick ran twice"
    beat_log = "".join(b.output() for b in beats)
    assert "fire_schedules" in beat_log, "the beats sent tick tasks too"


def test_catchup_starts_the_ticks_missed_while_every_worker_was_stopped(e2e_env: dict[str, str]) -> None:
    env = {**e2e_env, "CD_SCHED_EVERY": str(EVERY), "CD_SCHED_CATCHUP": "60"}
    worker = Worker(env, app="tests.apps.schedapp").start()
    try:
        wait_for(lambda: len(runs(env)) >= 2, timeout=60)
    finally:
        worker.stop()
    stopped_after = max(line["scheduled_for"] for line in runs(env))
    time.sleep(10)  # every worker is down: about 5 ticks are missed
    worker = Worker(env, app="tests.apps.schedapp").start()
    restarted = time.time()
    try:
        wait_for(lambda: any(line["scheduled_for"] > restarted for line in runs(env)), timeout=60)
    finally:
        worker.stop()
    first = min(line["scheduled_for"] for line in runs(env))
    latest = max(line["scheduled_for"] for line in runs(env))
    assert latest > stopped_after + 10
    assert_one_run_per_tick(env, first, latest)
    caught_up = [line for line in runs(env) if stopped_after < line["scheduled_for"] < restarted - 1]
    assert len(caught_up) >= 4 and all(line["at"] >= restarted - 1 for line in caught_up), "the missed ticks ran late"


def test_celery_a_proj_durable_schedules_lists_and_pauses_what_the_code_registered(e2e_env: dict[str, str]) -> None:
    env = {**os.environ, **e2e_env, "PYTHONPATH": str(ROOT)}

    def celery(*args: str) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tests.apps.schedapp", "durable", "schedules", *args, "--json"],
            env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    (listed,) = celery("list")
    assert (listed["name"], listed["workflow"], listed["schedule"], listed["paused"]) == (
        "every", "tests.apps.schedapp.report", "every 2s", False
    )
    assert celery("pause", "every")["paused"] is True
    (again,) = celery("list")  # importing the app registers the schedule again: it stays paused
    assert again["paused"] is True


def test_beat_alone_drives_the_ticks_when_the_workers_do_not(e2e_env: dict[str, str], tmp_path: Path) -> None:
    env = {**e2e_env, "CD_SCHED_EVERY": str(EVERY), "CD_SWEEP": "off"}
    (tmp_path / "beat").mkdir()
    worker = Worker(env, app="tests.apps.schedapp").start()
    beat = Beat(env, tmp_path / "beat", app="tests.apps.schedapp")
    try:
        time.sleep(2 * EVERY)
        assert runs(env) == [], "with the sweep off, the worker alone starts no tick"
        beat.start()
        wait_for(lambda: len(runs(env)) >= 4, timeout=60)
    finally:
        beat.stop()
        worker.stop()
    ticks = sorted(line["scheduled_for"] for line in runs(env))
    assert_one_run_per_tick(env, ticks[0], ticks[-1])
