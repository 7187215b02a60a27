"""The combined fault run: a ring of workflows exchanging messages while everything around them fails.

Workflows ``ring-0 .. ring-(n-1)`` each send ``rounds`` messages to their successor and receive as many
from their predecessor, with a checkpointed step per round. Meanwhile pool children and whole workers
are killed with SIGKILL (and restarted, as a supervisor would), Redis is restarted without persistence
and PostgreSQL is restarted. Afterwards: every workflow finished, every message arrived once and in
order, and every step that ran more than once is explained by a fault (its earlier run was in a process
that died, or around the database restart).

Redis and PostgreSQL are private instances on free ports, so restarting them disturbs no other test.
``CD_FAULT_SCALE`` multiplies the number of workflows (CI runs scale 1: 100 workflows, 800 messages).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from celery_durable import WorkflowStatus
from tests.conftest import load_app, make_env
from tests.e2e.test_faults import PrivateRedis
from tests.services import Worker

pytestmark = pytest.mark.faultrun

ROUNDS = 8
STEP_SECONDS = 0.02


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """A throw-away PostgreSQL cluster (initdb into a temporary directory) on a free port.

    Run as the ``postgres`` user when the tests run as root (PostgreSQL refuses to run as root).
    """

    def __init__(self) -> None:
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
        found = versions[-1] if versions else shutil.which("initdb")
        if found is None:
            pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
        self.bindir = Path(found).parent
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cd-faultrun-pg-"))
        self.data = self.dir / "data"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_postgres, *args], check=True, capture_output=True, timeout=120)

    def _ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            *args,
        )

    def start(self) -> None:
        if not self.data.exists():
            self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
        self._ctl("start")

    def restart(self) -> None:
        """A fast shutdown and a start: every session ends, as in a real database restart."""
        self._ctl("-m", "fast", "restart")

    def destroy(self) -> None:
        try:
            self._ctl("-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class Supervisor:
    """Keeps ``count`` workers running (restarting any that died) and remembers every pool process that died."""

    def __init__(self, env: dict[str, str], count: int) -> None:
        self.env = env
        self.workers: list[Worker] = []
        self.count = count
        self.restarts = 0
        self.children: dict[int, set[int]] = defaultdict(set)  # worker pid -> pool pids ever seen
        self.lost_pids: set[int] = set()

    def watch(self) -> None:
        for w in list(self.workers):
            if w.proc is not None and w.proc.poll() is None:
                self.children[w.proc.pid].update(w.children())
            else:  # died on its own (kombu gives up after a Redis restart): its pool died with it
                self._forget(w)
        while len(self.workers) < self.count:
            try:
                self.workers.append(Worker(self.env, concurrency=2).start(timeout=60))
                self.restarts += 1
            except RuntimeError:
                time.sleep(0.5)  # the broker may be restarting: try again on the next watch

    def _forget(self, w: Worker) -> None:
        assert w.proc is not None
        self.lost_pids |= self.children[w.proc.pid]
        self.workers.remove(w)
        w.stop()

    def kill_child(self) -> bool:
        for w in self.workers:
            pids = w.children()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                self.lost_pids.add(pids[0])
                return True
        return False

    def kill_worker(self) -> bool:
        if not self.workers:
            return False
        w = self.workers[0]
        self.watch()
        w.kill()
        self._forget(w)
        return True

    def stop(self) -> None:
        for w in self.workers:
            w.stop()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def ring_runs(path: Path) -> dict[tuple[int, int], list[tuple[int, float]]]:
    """(i, k) -> [(pid, time)] of every run of the ring step, in time order."""
    runs: dict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            pid, ik, at = line.split()
            i, k = ik.split(":")
            runs[(int(i), int(k))].append((int(pid), float(at)))
    return {key: sorted(value, key=lambda r: r[1]) for key, value in runs.items()}


def test_fault_run(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    began = time.monotonic()
    n = max(3, int(100 * float(os.environ.get("CD_FAULT_SCALE", "1"))))
    env = make_env(
        private_redis.url,
        private_postgres.url,
        tmp_path,
        CD_GRACE="2",
        CD_SWEEP_INTERVAL="1",
        CD_BUSY_BACKOFF="0.1",
        CD_RING_STEP_SECONDS=str(STEP_SECONDS),
    )
    for key, value in env.items():  # load_app copies env into os.environ: undo that after the test
        monkeypatch.setenv(key, value)
    wf = load_app(env)
    work = Path(env["CD_COUNTER_DIR"]) / "ring.work"
    supervisor = Supervisor(env, count=2)
    pg_windows: list[tuple[float, float]] = []

    def restart_postgres() -> bool:
        before = time.time()
        private_postgres.restart()
        pg_windows.append((before, time.time()))
        return True

    def restart_redis() -> bool:
        private_redis.stop()
        private_redis.start()
        return True

    # Each fault fires when this share of all steps has run, so they land mid-run at any speed.
    faults: list[tuple[float, str, Callable[[], bool]]] = [
        (0.10, "child kill", supervisor.kill_child),
        (0.20, "worker kill", supervisor.kill_worker),
        (0.35, "Redis restart", restart_redis),
        (0.50, "PostgreSQL restart", restart_postgres),
        (0.65, "child kill", supervisor.kill_child),
        (0.80, "worker kill", supervisor.kill_worker),
    ]
    fired: list[str] = []
    total_steps = n * ROUNDS
    try:
        supervisor.watch()
        handles = [wf.ring.start(i, n, ROUNDS, "ring-", workflow_id=f"ring-{i}") for i in range(n)]
        deadline = time.monotonic() + 240 * max(1.0, n / 100)
        finished = 0
        while finished < n:
            assert time.monotonic() < deadline, f"only {finished}/{n} workflows finished; faults so far: {fired}"
            progress = len(work.read_text().splitlines()) / total_steps if work.exists() else 0.0
            if faults and progress >= faults[0][0] and faults[0][2]():  # not fired (no pool yet): try again
                fired.append(faults.pop(0)[1])
            supervisor.watch()
            try:
                finished = len(wf.durable.list_workflows(status=WorkflowStatus.SUCCESS, limit=n))
            except Exception:  # the database is restarting
                finished = 0
            time.sleep(0.2)

        # Every message arrived once, in order.
        for i, handle in enumerate(handles):
            assert handle.result(timeout=0) == [[(i - 1) % n, k] for k in range(ROUNDS)]
        m = wf.durable.store.t.messages
        with wf.durable.store.engine.connect() as conn:
            rows = conn.execute(sa.select(m.c.destination, m.c.payload, m.c.consumed_at)).all()
        assert len(rows) == n * ROUNDS and len({(r.destination, r.payload) for r in rows}) == n * ROUNDS
        assert all(r.consumed_at is not None for r in rows)

        # Every step ran, and every re-run is explained by a fault.
        runs = ring_runs(work)
        assert set(runs) == {(i, k) for i in range(n) for k in range(ROUNDS)}
        unexplained = []
        reruns = 0
        for key, attempts in runs.items():
            for pid, at in attempts[:-1]:
                reruns += 1
                near_restart = any(start - 2 <= at <= end + 10 for start, end in pg_windows)
                if pid not in supervisor.lost_pids and not near_restart:
                    unexplained.append((key, pid, at))
        assert not unexplained, f"steps re-ran without a fault to explain it: {unexplained[:5]}"
        assert not faults and len(fired) == 6, f"some faults did not fire: {fired}"
    finally:
        supervisor.stop()
        if wf.durable._store is not None:
            wf.durable._store.close()

    counts = {name: fired.count(name) for name in dict.fromkeys(fired)}
    with capsys.disabled():
        print(
            f"\nfault run: {n} workflows, {n * ROUNDS} messages, {total_steps} steps (+{reruns} re-runs, all explained); "
            f"faults: {', '.join(f'{c} {name}' for name, c in counts.items())}, {supervisor.restarts - 2} worker restarts; "
            f"everything finished, nothing lost, duplicated or out of order; {time.monotonic() - began:.1f} s"
        )
