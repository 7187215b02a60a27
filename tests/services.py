"""Real services the tests run against: a fresh PostgreSQL database, Redis, RabbitMQ, worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_DSN = os.environ.get("CD_TEST_PG_ADMIN", "host=127.0.0.1 user=postgres dbname=postgres")
PG_HOST_URL = os.environ.get("CD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1")
REDIS_URL = os.environ.get("CD_TEST_REDIS", "redis://127.0.0.1:6379")
RABBIT_URL = os.environ.get("CD_TEST_RABBIT", "amqp://guest:guest@127.0.0.1:5672//")


def create_database() -> str:
    """Create an empty database; return its name."""
    name = f"cd_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_url(database: str) -> str:
    return f"{PG_HOST_URL}/{database}"


class Worker:
    """A real ``celery worker`` subprocess running tests/apps/wfapp.py (or the Celery *app* run from *cwd*)."""

    def __init__(
        self,
        env: dict[str, str],
        concurrency: int = 2,
        pool: str = "prefork",
        log: Path | None = None,
        app: str = "tests.apps.wfapp",
        cwd: Path = ROOT,
        queues: str | None = None,
    ) -> None:
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.queues = queues or self.env.get("CD_QUEUE", "celery")
        self.app = app
        self.cwd = cwd
        self.concurrency = concurrency
        self.pool = pool
        self.log = log or Path(env.get("CD_COUNTER_DIR", "/tmp")) / f"worker-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Worker:
        name = f"w{uuid.uuid4().hex[:8]}@%h"
        self._log_file = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                self.app,
                "worker",
                "-c",
                str(self.concurrency),
                "-P",
                self.pool,
                "-n",
                name,
                "-l",
                "info",
                "-Q",
                self.queues,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            env=self.env,
            cwd=str(self.cwd),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"ready." in self.log.read_bytes():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def children(self) -> list[int]:
        """PIDs of the pool processes (prefork children)."""
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the whole worker (main process and children) at once."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if hasattr(self, "_log_file"):
            self._log_file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Beat:
    """A real ``celery beat`` subprocess for tests/apps/wfapp.py, its schedule file in *schedule_dir*."""

    def __init__(self, env: dict[str, str], schedule_dir: Path, app: str = "tests.apps.wfapp") -> None:
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.app = app
        self.schedule = schedule_dir / "celerybeat-schedule"
        self.log = schedule_dir / f"beat-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Beat:
        self._log_file = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", self.app, "beat", "-s", str(self.schedule), "--max-interval", "1",
             "-l", "info"],
            env=self.env, cwd=str(ROOT), stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"beat: Starting" in self.log.read_bytes():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"beat exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"beat not started in {timeout}s:\n{self.output()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if hasattr(self, "_log_file"):
            self._log_file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_worker(env: dict[str, str], **kwargs: object) -> Iterator[Worker]:
    worker = Worker(env, **kwargs).start()  # type: ignore[arg-type]
    try:
        yield worker
    finally:
        worker.stop()


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for(predicate, timeout: float = 30, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll *predicate* until it returns a truthy value; fail the test after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
