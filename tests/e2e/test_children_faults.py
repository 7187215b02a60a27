"""A fan-in through a broker restart and a database restart (issue 9, "Scale and faults").

A parent maps N children while Redis is restarted (without persistence: every queued message is
lost, and kombu 5.7 workers holding a countdown exit, so a supervisor restarts them) and then
PostgreSQL is restarted (every session ends). Afterwards every child has finished once, the parent
has every result, and it ran a bounded number of times. Both servers are private instances on free
ports (as in test_fault_run.py), so no other test sees them go down.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from celery_durable import WorkflowStatus
from tests.conftest import load_app, make_env
from tests.e2e.test_fault_run import PrivatePostgres, Supervisor, private_postgres, private_redis  # noqa: F401
from tests.e2e.test_faults import PrivateRedis
from tests.services import count_lines

pytestmark = pytest.mark.faultrun


def test_fan_in_survives_a_broker_and_a_database_restart(
    private_postgres: PrivatePostgres,  # noqa: F811 - the fixture
    private_redis: PrivateRedis,  # noqa: F811 - the fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    n = 300
    env = make_env(
        private_redis.url,
        private_postgres.url,
        tmp_path,
        CD_GRACE="2",
        CD_SWEEP_INTERVAL="1",
        CD_BUSY_BACKOFF="0.1",
        CD_CHILD_SLEEP="0.02",
    )
    for key, value in env.items():  # load_app copies env into os.environ: undo that after the test
        monkeypatch.setenv(key, value)
    wf = load_app(env)
    counter = Path(env["CD_COUNTER_DIR"]) / "child_square"
    supervisor = Supervisor(env, count=2)
    restarts = [(n // 4, "Redis"), (n // 2, "PostgreSQL")]  # fired when this many children have run
    fired: list[str] = []
    try:
        supervisor.watch()
        handle = wf.fan_out.start(n, workflow_id="fan")
        deadline = time.monotonic() + 240
        while True:
            assert time.monotonic() < deadline, f"the fan-in did not finish; restarts so far: {fired}"
            if restarts and count_lines(counter) >= restarts[0][0]:
                what = restarts.pop(0)[1]
                if what == "Redis":
                    private_redis.stop()
                    private_redis.start()
                else:
                    private_postgres.restart()
                fired.append(what)
            supervisor.watch()
            try:
                record = wf.durable.store.get_workflow("fan")
            except Exception:  # the database is restarting
                record = None
            if record is not None and record.status.is_terminal:
                break
            time.sleep(0.2)

        assert fired == ["Redis", "PostgreSQL"], "both restarts happened during the fan-in"
        assert handle.result(timeout=0) == sum(i * i for i in range(n))
        children = wf.durable.list_workflows(parent_id="fan", limit=n + 10)
        assert len(children) == n and {c.status for c in children} == {WorkflowStatus.SUCCESS}
        values = [int(v) for v in counter.read_text().split()[1::2]]
        assert set(values) == set(range(n)), "every child's step ran"
        # A step re-runs only when a fault cut it off (in flight in a killed worker or across the
        # database restart): a handful, never a replay of finished work.
        assert len(values) - n <= 16, f"{len(values) - n} child steps ran twice"
        assert wf.durable.handle("fan").record().executions <= 3, "the parent was woken once, at the end"
    finally:
        supervisor.stop()
        if wf.durable._store is not None:
            wf.durable._store.close()
