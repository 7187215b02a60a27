"""What a Celery user sees of a Durable in real ``celery worker`` / ``celery beat`` processes:
beat-driven recovery on the workflows' own queue, the warning of a worker on the wrong queue,
sweeps really off, and how many PostgreSQL connections a worker holds."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from celery_durable import DurableClient, WorkflowStatus
from tests import services
from tests.conftest import BROKERS, configured_app, make_env
from tests.services import Beat, Worker, running_worker, wait_for


def _pending_without_message(env: dict[str, str], *args: Any) -> Any:
    """A three_adds workflow stored PENDING with no task message (a client without a broker)."""
    client = DurableClient(env["CD_DATABASE_URL"], table_prefix=env["CD_PREFIX"], queue=env.get("CD_DURABLE_QUEUE"))
    handle = client.start("tests.apps.wfapp.three_adds", *args)
    assert handle.status() == WorkflowStatus.PENDING
    return client, handle


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_beat_recovers_a_lost_workflow_on_the_workflows_queue(broker: str, pg_database: str, tmp_path: Path) -> None:
    # Workflows on their own queue; the worker consumes only it; no worker sweep: only beat can recover.
    durable_queue = f"dq{uuid.uuid4().hex[:10]}"
    env = make_env(
        BROKERS[broker](), pg_database, tmp_path, CD_DURABLE_QUEUE=durable_queue, CD_SWEEP_INTERVAL="none",
        CD_BEAT_EVERY="1",
    )
    with configured_app(env) as wf:
        worker = Worker(env, queues=durable_queue).start()
        beat = Beat(env, tmp_path).start()
        client = None
        try:
            # Stored after the worker started: nothing but the beat-driven recover task can publish it.
            client, handle = _pending_without_message(env, 1)
            assert handle.result(timeout=60) == 4
        finally:
            beat.stop()
            worker.stop()
            if client is not None:
                client.close()
            with wf.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(durable_queue)
        assert "SchedulingError" not in beat.output() and "Couldn't apply" not in beat.output(), beat.output()[-2000:]
        assert "consumes none of the queues" not in worker.output()
        assert (tmp_path / "celerybeat-schedule").exists() or any(tmp_path.glob("celerybeat-schedule*"))


def test_beat_schedule_entries_name_the_workflows_queue(pg_database: str, tmp_path: Path) -> None:
    env = make_env(BROKERS["redis"](), pg_database, tmp_path, CD_DURABLE_QUEUE="workflows")
    with configured_app(env) as wf:
        recover, ticks = wf.durable.beat_schedule(every=5).values()
        assert recover["options"] == {"queue": "workflows"} and recover["schedule"] == 5.0
        assert ticks["task"].endswith("fire_schedules") and ticks["options"]["queue"] == "workflows"
        assert list(wf.durable.beat_schedule(every=5, ticks_every=None).values()) == [recover]
        with pytest.raises(ValueError, match="every"):
            wf.durable.beat_schedule(every=0)


def test_a_worker_on_no_workflow_queue_warns_naming_the_queues(pg_database: str, tmp_path: Path) -> None:
    env = make_env(BROKERS["redis"](), pg_database, tmp_path, CD_LOG_INFO="1")
    with configured_app(env), running_worker(env, queues=f"other{uuid.uuid4().hex[:6]}") as worker:
        log = worker.output()
    (line,) = [ln for ln in log.splitlines() if "consumes none of the queues" in ln and "WARNING" in ln]
    assert env["CD_QUEUE"] in line and f"-Q {env['CD_QUEUE']}" in line, line
    # ... and says where the store is (the password hidden).
    assert f"stored in postgresql+psycopg://postgres@127.0.0.1/{pg_database.rsplit('/', 1)[-1]}" in log


def test_with_sweeps_off_a_worker_never_sweeps(pg_database: str, tmp_path: Path) -> None:
    env = make_env(BROKERS["redis"](), pg_database, tmp_path, CD_SWEEP_INTERVAL="none", CD_GRACE="0.1")
    with configured_app(env) as wf:
        client, lost = _pending_without_message(env, 1)
        try:
            with running_worker(env):
                # The worker runs what it is sent...
                assert wf.three_adds.start(10).result(timeout=60) == 13
                # ... and leaves the PENDING workflow alone: no sweep at start, none later.
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:
                    assert lost.status() == WorkflowStatus.PENDING
                    time.sleep(0.2)
        finally:
            client.close()


def _connections_per_process(dbname: str, prefix: str) -> dict[str, int]:
    with psycopg.connect(services.PG_ADMIN_DSN, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s "
            "GROUP BY application_name",
            (dbname, f"{prefix}-%"),
        ).fetchall()
    return {name: count for name, count in rows}


def test_a_prefork_worker_holds_a_few_connections_per_process(pg_database: str, tmp_path: Path) -> None:
    tag = f"cd{uuid.uuid4().hex[:8]}"
    env = make_env(BROKERS["redis"](), pg_database, tmp_path, CD_APPNAME_PER_PROCESS=tag, CD_SWEEP_INTERVAL="0.5")
    dbname = pg_database.rsplit("/", 1)[-1]
    peak: dict[str, int] = {}
    with configured_app(env) as wf, running_worker(env, concurrency=2):
        handles = [wf.three_adds.start(i) for i in range(40)] + [wf.sleeper.start(0.3) for _ in range(10)]

        def all_done() -> bool:
            for name, count in _connections_per_process(dbname, tag).items():
                peak[name] = max(peak.get(name, 0), count)
            return all(h.status().is_terminal for h in handles)

        wait_for(all_done, timeout=120, interval=0.02, what="50 workflows")
        assert [h.result(timeout=0) for h in handles[:3]] == [3, 4, 5]
    children = {n: c for n, c in peak.items() if "-child-" in n}
    main = {n: c for n, c in peak.items() if "-main-" in n}
    print("peak connections per process:", peak)
    assert len(children) == 2 and len(main) == 1, peak
    # One task at a time per child: its lease plus one short read. The main process: the sweep.
    assert max(children.values()) <= 2, peak
    assert max(main.values()) <= 2, peak
