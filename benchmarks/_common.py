"""Shared plumbing of the benchmark scripts: a fresh database, a worker subprocess, clean-up, /proc stats."""

from __future__ import annotations

import importlib
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_DSN = os.environ.get("BENCH_PG_ADMIN", "host=127.0.0.1 user=postgres dbname=postgres")
PG_HOST_URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1")
DEFAULT_REDIS = "redis://127.0.0.1:6379/15"  # the test suite uses databases 1-14


def new_tag(kind: str) -> str:
    return f"b{kind}{uuid.uuid4().hex[:8]}"


def create_database(tag: str) -> str:
    name = f"cd_bench_{tag}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_env(tag: str, database: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {
        "BENCH_TAG": tag,
        "BENCH_REDIS": redis_url,
        "BENCH_DATABASE_URL": f"{PG_HOST_URL}/{database}",
        "BENCH_PREFIX": "bench_",
    }
    env.update(extra)
    return env


def load_app(env: dict[str, str]) -> ModuleType:
    """Import benchmarks.benchapp configured by *env* in this (producer) process."""
    os.environ.update(env)
    import benchmarks.benchapp as benchapp

    return importlib.reload(benchapp)


class Worker:
    """A ``celery -A benchmarks.benchapp worker`` subprocess in its own process group."""

    def __init__(
        self,
        env: dict[str, str],
        concurrency: int = 2,
        pool: str = "prefork",
        loglevel: str = "warning",
        app: str = "benchmarks.benchapp",
        name: str | None = None,
    ) -> None:
        self.tag = env["BENCH_TAG"]
        self.ready_file = Path(tempfile.gettempdir()) / f"{name or self.tag}.ready"
        self.log = Path(tempfile.gettempdir()) / f"{name or self.tag}-worker.log"
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "BENCH_READY_FILE": str(self.ready_file)}
        self.app = app
        self.name = f"{name or self.tag}@%h"
        self.concurrency = concurrency
        self.pool = pool
        self.loglevel = loglevel
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Worker:
        self.ready_file.unlink(missing_ok=True)
        self._log_file = open(self.log, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", self.app, "worker",
             "-P", self.pool, "-c", str(self.concurrency), "-n", self.name, "-l", self.loglevel,
             "-Q", f"{self.tag}-q", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=self.env, cwd=str(ROOT), stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"worker not ready in {timeout}s:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        return self

    @property
    def hostname(self) -> str:
        return self.name.replace("%h", os.uname().nodename)

    def pids(self) -> list[int]:
        """The main process and its pool children."""
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [self.proc.pid, *(int(p) for p in out.split())]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc is not None:
            try:  # pool children left behind by a main process that died first
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if hasattr(self, "_log_file"):
            self._log_file.close()
        self.ready_file.unlink(missing_ok=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def remove_log(self) -> None:
        self.log.unlink(missing_ok=True)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and Pss (KiB) and Threads of a process, from /proc/<pid>/status and smaps_rollup."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "Threads"):
                    out[key] = int(value.split()[0])
    except FileNotFoundError:
        pass
    try:  # RSS counts pages shared with the parent in every child; PSS splits them
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == "Pss":
                    out["Pss"] = int(value.split()[0])
    except FileNotFoundError:
        pass
    return out


def worker_stats(worker: Worker) -> dict[str, Any]:
    per = {pid: proc_status(pid) for pid in worker.pids()}
    return {
        "rss_mb": sum(s.get("VmRSS", 0) for s in per.values()) / 1024,
        "pss_mb": sum(s.get("Pss", 0) for s in per.values()) / 1024,
        "threads": sum(s.get("Threads", 0) for s in per.values()),
        "per_process": {pid: (round(s.get("VmRSS", 0) / 1024, 1), s.get("Threads", 0)) for pid, s in per.items()},
    }


def redis_cleanup(redis_url: str, tag: str, extra_keys: tuple[str, ...] = ()) -> int:
    """Delete every key of this run (its name holds *tag*) and its entries in kombu's binding sets."""
    r = redis.Redis.from_url(redis_url)
    removed = 0
    for key in r.scan_iter(match=f"*{tag}*", count=1000):
        removed += r.delete(key)
    for key in extra_keys:
        removed += r.delete(key)
    for pattern in ("_kombu.binding.*", "_kombu.binding_permanent.*"):
        for key in r.scan_iter(match=pattern, count=1000):
            if r.type(key) == b"set":
                members = [m for m in r.smembers(key) if tag.encode() in m]
                if members:
                    r.srem(key, *members)
                if r.scard(key) == 0:
                    r.delete(key)
    deadlines = "_kombu.binding_deadlines"  # kombu's expiry bookkeeping of binding tables, per exchange
    if r.type(deadlines) == b"zset":
        for exchange in r.zrange(deadlines, 0, -1):
            if not r.exists(b"_kombu.binding." + exchange):
                r.zrem(deadlines, exchange)
    r.close()
    return removed


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def describe_ms(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"p50 {percentile(ms, 50):.2f} ms  p90 {percentile(ms, 90):.2f} ms  p99 {percentile(ms, 99):.2f} ms  "
        f"max {max(ms):.2f} ms  mean {statistics.fmean(ms):.2f} ms  (n={len(ms)})"
    )


# -- CPU by process ----------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")
RABBIT_URL = os.environ.get("BENCH_RABBIT", "amqp://guest:guest@127.0.0.1:5672//")


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of *pid* (its threads included) from /proc/<pid>/stat; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of stat)


def pids_named(name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


class CpuMeter:
    """CPU seconds by process group: this producer, the worker (main + pool), the broker, PostgreSQL.

    PostgreSQL counts the backends connected to the benchmark's database (pg_stat_activity), not the
    server's shared processes (WAL writer, checkpointer), which also serve the other users of the
    machine. The broker is the Redis server the URL points to (its own process id from INFO), or every
    ``beam.smp`` (RabbitMQ); both are shared with anyone else using them at the same time.
    """

    def __init__(self, worker: Worker, broker: str, redis_url: str, database: str | None) -> None:
        self.worker, self.broker, self.database = worker, broker, database
        self.redis_pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])

    def _pg_pids(self) -> list[int]:
        if self.database is None:
            return []
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,)).fetchall()
        return [r[0] for r in rows]

    def snapshot(self) -> dict[str, dict[int, float]]:
        pids = self.worker.pids()
        groups: dict[str, list[int]] = {"worker-main": pids[:1], "worker-pool": pids[1:], "redis": [self.redis_pid]}
        if self.broker == "rabbitmq":
            groups["rabbitmq"] = pids_named("beam.smp")
        groups["postgres"] = self._pg_pids()
        snap = {name: {pid: cpu_of(pid) for pid in pids} for name, pids in groups.items()}
        snap["producer"] = {os.getpid(): time.process_time()}
        return snap

    @staticmethod
    def delta(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
        """CPU seconds spent per group between two snapshots (a process that appeared counts from 0)."""
        return {
            name: sum(cpu - before.get(name, {}).get(pid, 0.0) for pid, cpu in pids.items())
            for name, pids in after.items()
        }


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def commit_floor(database: str, n: int = 2000) -> dict[str, float]:
    """CPU of the cheapest durable write there is, on this machine: a single-row INSERT (prepared,
    autocommit, so its commit waits for the WAL flush) into a scratch table of *database*, *n* times.

    Returns microseconds per statement: ``server`` (the backend process, /proc) and ``client``
    (this process: psycopg and the Python around it). No store can checkpoint a step for less.
    """
    url = PG_HOST_URL.replace("postgresql+psycopg://", "postgresql://") + f"/{database}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE floor_probe (id text PRIMARY KEY, output text, at float8)")
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert backend is not None
        for i in range(50):  # warm-up: prepared statement, caches
            conn.execute("INSERT INTO floor_probe VALUES (%s, %s, %s)", (f"w{i}", "1", time.time()), prepare=True)
        server0, client0 = cpu_of(backend[0]), time.process_time()
        for i in range(n):
            conn.execute("INSERT INTO floor_probe VALUES (%s, %s, %s)", (f"k{i}", "1", time.time()), prepare=True)
        server1, client1 = cpu_of(backend[0]), time.process_time()
        conn.execute("DROP TABLE floor_probe")
    return {"server": (server1 - server0) / n * 1e6, "client": (client1 - client0) / n * 1e6}
