"""Faults on real parts: workers killed with SIGKILL mid-step, lost task messages, a Redis restart.

The store (PostgreSQL) is the source of truth; these tests check that a workflow whose worker
or message disappeared still finishes, and that steps that had finished never run again
(the step that was cut off does: steps are at-least-once).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis as redis_client

from celery_durable import WorkflowStatus
from tests.conftest import load_app, make_env
from tests.services import Worker, count_lines, wait_for

CRASHY_RESULT = ["first", "second", "third"]


@pytest.fixture
def counters(tmp_path: Path) -> Path:
    return tmp_path / "counters"


@pytest.fixture
def wf_grace1(e2e_env: dict[str, str], request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The producer's app with recovery_grace=1 s, so an explicit ``durable.recover()`` acts quickly."""
    e2e_env["CD_GRACE"] = "1"
    # load_app copies the env into os.environ; make sure CD_GRACE does not leak into later tests.
    monkeypatch.setenv("CD_GRACE", "1")
    return request.getfixturevalue("wf")


def pid_of_first_line(path: Path) -> int:
    """Counter lines start with the pid of the process that wrote them."""
    return int(path.read_text().splitlines()[0].split()[0])


def purge(wf: Any, queue: str) -> int:
    with wf.app.connection_for_write() as conn:
        return int(conn.default_channel.queue_purge(queue) or 0)


def assert_crashy_counts(counters: Path, second_runs: int) -> None:
    assert count_lines(counters / "first.start") == 1, "a finished step ran again"
    assert count_lines(counters / "first.end") == 1
    assert count_lines(counters / "second.start") == second_runs
    assert count_lines(counters / "second.end") == 1
    assert count_lines(counters / "third.start") == 1
    assert count_lines(counters / "third.end") == 1


# -- crash --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("victim", ["child", "child-no-sweep", "worker"])
def test_kill_9_mid_step_finishes_on_a_live_worker(wf, e2e_env, counters, victim):
    """kill -9 the pool process running step "second" (or its whole worker): another process finishes it.

    "child-no-sweep": the workers never sweep after start-up, so only Celery's reject-on-worker-lost
    (the message goes back to the queue) can bring the workflow back.
    """
    env = {**e2e_env, "CD_SWEEP_INTERVAL": "none"} if victim == "child-no-sweep" else e2e_env
    workers = [Worker(env), Worker(env)]
    try:
        for w in workers:
            w.start()
        # The step's arguments are fixed at start: the re-run of "second" also lasts 8 s.
        handle = wf.crashy.start(8, workflow_id=f"crash-{victim}")
        wait_for(lambda: count_lines(counters / "second.start") == 1, timeout=60, what="step 'second' to start")
        pid = pid_of_first_line(counters / "second.start")
        owner = next(w for w in workers if pid in w.children())
        if victim.startswith("child"):
            os.kill(pid, signal.SIGKILL)
        else:
            owner.kill()  # main process and pool children at once: nobody rejects the message
        assert count_lines(counters / "second.end") == 0

        assert handle.result(timeout=120) == CRASHY_RESULT
        assert handle.status() == WorkflowStatus.SUCCESS
        assert_crashy_counts(counters, second_runs=2)
        assert pid_of_first_line(counters / "second.end") != pid
        steps = handle.steps()
        assert [(s.step_id, s.output) for s in steps] == [(0, '"first"'), (1, '"second"'), (2, '"third"')]
        if victim == "child-no-sweep":
            assert not any("recover: published" in w.output() for w in workers)
    finally:
        for w in workers:
            w.stop()


# -- lost messages ----------------------------------------------------------------------------------
def test_purged_message_is_brought_back_by_the_worker_sweep(wf, e2e_env, counters):
    handle = wf.three_adds.start(10, workflow_id="lost-sweep")  # nobody consumes the queue yet
    assert purge(wf, e2e_env["CD_QUEUE"]) == 1
    assert handle.status() == WorkflowStatus.PENDING

    worker = Worker({**e2e_env, "CD_GRACE": "1"}).start()
    try:
        assert handle.result(timeout=60) == 13
        assert count_lines(counters / "add") == 3
    finally:
        worker.stop()


def test_purged_message_is_brought_back_by_recover(wf_grace1, e2e_env, counters):
    wf = wf_grace1
    handle = wf.three_adds.start(20, workflow_id="lost-recover")
    assert purge(wf, e2e_env["CD_QUEUE"]) == 1

    # This worker never sweeps on its own (one pass at start-up, with a 120 s grace): only recover() helps.
    worker = Worker({**e2e_env, "CD_GRACE": "120", "CD_SWEEP_INTERVAL": "none"}).start()
    try:
        with pytest.raises(TimeoutError):
            handle.result(timeout=1)
        assert handle.status() == WorkflowStatus.PENDING
        assert count_lines(counters / "add") == 0

        # recover() re-enqueues it once the 1 s grace has passed since it was dispatched.
        assert wait_for(wf.durable.recover, timeout=30, interval=0.2, what="recover() to re-enqueue the workflow") == 1
        assert handle.result(timeout=60) == 23
        assert count_lines(counters / "add") == 3
        assert wf.durable.recover() == 0
    finally:
        worker.stop()


def test_recover_leaves_a_running_workflow_alone(wf_grace1, e2e_env, counters):
    wf = wf_grace1
    worker = Worker({**e2e_env, "CD_GRACE": "1"}).start()
    try:
        handle = wf.crashy.start(3, workflow_id="recover-running")
        wait_for(lambda: count_lines(counters / "second.start") == 1, timeout=60, what="step 'second' to start")
        published = []
        while count_lines(counters / "second.end") == 0:
            published.append(wf.durable.recover())
            time.sleep(0.1)
        assert handle.result(timeout=60) == CRASHY_RESULT
        assert published
        assert sum(published) == 0, "recover() re-enqueued a workflow that a live worker was running"
        assert_crashy_counts(counters, second_runs=1)
        assert handle.record().executions == 1
    finally:
        worker.stop()


# -- Redis restarted without persistence ---------------------------------------------------------------
class PrivateRedis:
    """A redis-server of this test alone (same flags as the shared one, another port), so restarting it
    disturbs nobody else's tests on the shared Redis."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        result = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
        return result.stdout.strip() == "PONG"

    def unacked(self) -> list[dict[str, Any]]:
        """The messages workers hold without having acknowledged them (kombu's Redis transport keeps them here)."""
        client = redis_client.Redis(port=self.port)
        try:
            return [json.loads(v)[0] for v in client.hvals("unacked")]
        finally:
            client.close()

    def queue_length(self, queue: str) -> int:
        client = redis_client.Redis(port=self.port)
        try:
            return int(client.llen(queue))
        finally:
            client.close()

    def holds_only_a_timer(self) -> bool:
        held = self.unacked()
        return len(held) == 1 and held[0]["headers"].get("eta") is not None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
            ]
        )
        wait_for(self.ping, timeout=30, interval=0.1, what="the private Redis to answer")

    def stop(self) -> None:
        """``shutdown nosave``: everything in memory is gone."""
        if self.proc is None:
            return
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.mark.parametrize("wake", ["send", "sweep"])
def test_redis_restart_loses_the_timer_but_not_the_workflow(pg_database, tmp_path, counters, wake, monkeypatch):
    """Redis restarted without persistence while a workflow waits in recv: its queued timer is gone.

    "send": a message sent afterwards still wakes it. "sweep": nobody sends; the timer was due, so
    the sweep finds it overdue (CD_GRACE=1) and re-publishes it, and the recv times out as it should.
    """
    redis = PrivateRedis(tmp_path)
    redis.start()
    workers: list[Worker] = []
    wf = None
    try:
        env = make_env(redis.url, pg_database, tmp_path, CD_GRACE="1")
        for key, value in env.items():  # load_app copies env into os.environ: undo that after the test
            monkeypatch.setenv(key, value)
        wf = load_app(env)
        first = Worker(env).start()
        workers.append(first)
        # Waits in recv with a timer queued in Redis and reserved by the worker.
        handle = wf.receiver.start(["go"], 1, 60 if wake == "send" else 8, workflow_id="redis-restart")
        wait_for(lambda: handle.status() == WorkflowStatus.WAITING, timeout=60, what="the workflow to wait")
        wait_for(redis.holds_only_a_timer, timeout=60, what="the worker to hold the timer message (and nothing else)")

        redis.stop()
        # Let the worker notice while Redis is down (so it cannot hand the timer back): kombu then either
        # reconnects later or gives up with "Unrecoverable error" and the worker exits.
        wait_for(
            lambda: "Connection to broker lost" in first.output() or first.proc.poll() is not None,
            timeout=60,
            what="the worker to notice that Redis is gone",
        )
        redis.start()
        # Redis came back empty: the timer message is gone; the store still says the workflow waits.
        assert redis.unacked() == []
        assert redis.queue_length(env["CD_QUEUE"]) == 0
        assert handle.status() == WorkflowStatus.WAITING

        # A live worker for sure (the first may have exited, as above; a supervisor would restart it).
        workers.append(Worker(env).start())
        if wake == "send":
            # The send stores the message and publishes a wake-up, which resumes the workflow.
            wf.durable.send("redis-restart", "after the restart", topic="go")
            assert handle.result(timeout=90) == ["after the restart"]
            assert [(s.name, s.output) for s in handle.steps()] == [("recv:go", '"after the restart"')]
        else:
            assert handle.result(timeout=90) == ["<timeout>"]
            # A timed-out recv is recorded with neither output nor error, and only after its deadline.
            assert [(s.name, s.output, s.error) for s in handle.steps()] == [("recv:go", None, None)]
            record = handle.record()
            assert record.updated_at - record.created_at >= 8
        assert count_lines(counters / "receiver.got") == 1
    finally:
        for w in workers:
            w.stop()
        if wf is not None and wf.durable._store is not None:
            wf.durable._store.close()
        redis.stop()


# ---- PostgreSQL restart -------------------------------------------------------------------------


def restart_postgres() -> None:
    """Restart the machine's PostgreSQL (every session ends) and wait until it accepts connections."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True, timeout=120)
    wait_for(
        lambda: subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], check=False).returncode == 0,
        timeout=60,
        what="PostgreSQL to accept connections again",
    )


def test_postgres_restart_loses_nothing(pg_database, tmp_path, counters):
    """A database restart ends every session: pooled connections in the worker and the producer die.

    Workflows waiting across it still receive their messages, new workflows still run, and no
    finished step runs again.
    """
    env = make_env("redis://127.0.0.1:6379/11", pg_database, tmp_path, CD_SWEEP_INTERVAL="1")
    wf = load_app(env)
    worker = Worker(env).start()
    try:
        waiting = [wf.steps_then_recv.start(i, None) for i in range(3)]
        wait_for(lambda: all(h.status() == WorkflowStatus.WAITING for h in waiting), what="workflows to wait")
        assert count_lines(counters / "add") == 6
        restart_postgres()
        for h in waiting:
            wf.durable.send(h.workflow_id, "after restart", topic="go")
        after = wf.three_adds.start(10)
        assert after.result(timeout=90) == 13
        for h in waiting:
            assert h.result(timeout=90)["message"] == "after restart"
        assert count_lines(counters / "add") == 6 + 3, "a step that had finished before the restart ran again"
    finally:
        worker.stop()
        with wf.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(env["CD_QUEUE"])
        wf.durable.store.close()
