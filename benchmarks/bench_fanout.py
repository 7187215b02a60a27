"""Fan-out/fan-in: a Celery chord against a durable map (issue 9).

Two workers (``celery worker -P prefork -c 2`` each, ``benchmarks/fanoutapp.py``) on one queue serve
both. For each N, in one run: ``chord(square.s(i) for i in range(N))(total.s())`` on Redis with the
Redis result backend, then ``fan_in.start(N)``, a workflow returning ``sum(durable.map(square_wf,
range(N)))``. Printed per run: time from the start to the result, task executions (counted in Redis
by every task body), growth of the result backend (Redis keys, used_memory) or of the store (rows,
table bytes), and the workers' PSS. Then the same with one worker killed (SIGKILL, whole process
group) when a third of the tasks ran: does each finish, and with what.

    .venv/bin/python -m benchmarks.bench_fanout                    # N = 100, 1000, 10000; kill run at 1000
    .venv/bin/python -m benchmarks.bench_fanout --sizes 100 --kill-n 200   # quick check
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import psycopg
import redis
from celery import chord

from ._common import (
    DEFAULT_REDIS,
    PG_ADMIN_DSN,
    Worker,
    bench_env,
    create_database,
    drop_database,
    new_tag,
    redis_cleanup,
    wait_until,
    worker_stats,
)


def load_average() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(limit: float, patience: float) -> float:
    """Wait up to *patience* seconds for the 1-minute load average to drop below *limit*; return it."""
    deadline = time.monotonic() + patience
    while load_average() >= limit and time.monotonic() < deadline:
        time.sleep(10)
    return load_average()


class Run:
    def __init__(self, tag: str, database: str, redis_url: str, env: dict[str, str]) -> None:
        self.tag, self.database, self.env = tag, database, env
        self.r = redis.Redis.from_url(redis_url)
        self.app = load_app_module(env)
        self.workers: list[Worker] = []

    def counter(self, kind: str) -> int:
        return int(self.r.get(f"bench:{self.tag}:{kind}") or 0)

    def start_workers(self, n: int, concurrency: int) -> None:
        for _ in range(n - len(self.workers)):
            name = f"{self.tag}w{len(self.workers)}{time.monotonic_ns() % 10_000}"
            self.workers.append(
                Worker(self.env, concurrency=concurrency, app="benchmarks.fanoutapp", name=name).start()
            )

    def pss(self) -> float:
        return sum(worker_stats(w)["pss_mb"] for w in self.workers)

    def backend(self) -> tuple[int, int]:
        keys = sum(1 for _ in self.r.scan_iter(match="celery-task-meta-*", count=5000))
        return keys, int(self.r.info("memory")["used_memory"])

    def store(self) -> tuple[int, int]:
        prefix = self.env["BENCH_PREFIX"]
        with psycopg.connect(f"{PG_ADMIN_DSN.replace('dbname=postgres', '')} dbname={self.database}") as conn:
            rows = conn.execute(
                f"SELECT (SELECT count(*) FROM {prefix}workflows) + (SELECT count(*) FROM {prefix}steps)"
            ).fetchone()
            size = conn.execute(
                f"SELECT pg_total_relation_size('{prefix}workflows') + pg_total_relation_size('{prefix}steps')"
            ).fetchone()
        return int(rows[0] if rows else 0), int(size[0] if size else 0)

    def executions(self, parent: str) -> tuple[int, int, int]:
        """(parent executions, children, children's executions) from the store."""
        prefix = self.env["BENCH_PREFIX"]
        with psycopg.connect(f"{PG_ADMIN_DSN.replace('dbname=postgres', '')} dbname={self.database}") as conn:
            parent_row = conn.execute(
                f"SELECT executions FROM {prefix}workflows WHERE workflow_id = %s", (parent,)
            ).fetchone()
            kids = conn.execute(
                f"SELECT count(*), coalesce(sum(executions), 0) FROM {prefix}workflows WHERE parent_id = %s", (parent,)
            ).fetchone()
        assert parent_row is not None and kids is not None
        return int(parent_row[0]), int(kids[0]), int(kids[1])

    def kill_one_when(self, kind: str, at: int, timeout: float) -> None:
        wait_until(lambda: self.counter(kind) >= at, timeout, 0.05, f"{at} {kind} executions")
        victim = self.workers.pop(0)
        victim.kill_group()

    # -- the two sides -------------------------------------------------------------------------------
    def chord(self, n: int, kill: bool, wait: float) -> dict[str, Any]:
        app = self.app
        before_exec, before_body = self.counter("chord_task"), self.counter("chord_body")
        before_backend, before_pss = self.backend(), self.pss()
        t0 = time.monotonic()
        result = chord(app.square.s(i) for i in range(n))(app.total.s())
        if kill:
            self.kill_one_when("chord_task", before_exec + n // 3, 120)
        try:
            value: Any = result.get(timeout=wait, propagate=True)
            elapsed: Any = time.monotonic() - t0
        except Exception as exc:  # the chord never ended within the wait
            value, elapsed = f"none ({type(exc).__name__})", f"> {wait:.0f}"
        after_backend = self.backend()
        return {
            "value": value,
            "time": elapsed,
            "executions": f"{self.counter('chord_task') - before_exec} + body {self.counter('chord_body') - before_body}",
            "growth": f"{after_backend[0] - before_backend[0]} keys, {(after_backend[1] - before_backend[1]) / 1e6:+.1f} MB",
            "pss": f"{before_pss:.0f} -> {self.pss():.0f} MB",
        }

    def durable(self, n: int, kill: bool, wait: float) -> dict[str, Any]:
        app = self.app
        before_child, before_store, before_pss = self.counter("durable_child"), self.store(), self.pss()
        parent = f"fan-{n}-{'kill' if kill else 'ok'}-{time.monotonic_ns()}"
        t0 = time.monotonic()
        handle = app.fan_in.start(n, workflow_id=parent)
        if kill:
            self.kill_one_when("durable_child", before_child + n // 3, 120)
        try:
            value: Any = handle.result(timeout=wait)
            elapsed: Any = time.monotonic() - t0
        except Exception as exc:
            value, elapsed = f"none ({type(exc).__name__})", f"> {wait:.0f}"
        after_store = self.store()
        parent_execs, kids, kid_execs = self.executions(parent)
        return {
            "value": value,
            "time": elapsed,
            "executions": f"{kid_execs} (of {kids} children) + parent {parent_execs}",
            "growth": f"{after_store[0] - before_store[0]} rows, {(after_store[1] - before_store[1]) / 1e6:+.1f} MB",
            "pss": f"{before_pss:.0f} -> {self.pss():.0f} MB",
        }

    def close(self) -> None:
        for w in self.workers:
            w.stop()


def load_app_module(env: dict[str, str]) -> Any:
    os.environ.update(env)
    import importlib

    import benchmarks.fanoutapp as fanoutapp

    return importlib.reload(fanoutapp)


def _kill_group(self: Worker) -> None:
    assert self.proc is not None
    os.killpg(self.proc.pid, 9)
    self.proc.wait(timeout=30)


Worker.kill_group = _kill_group  # type: ignore[attr-defined]


def row(kind: str, n: int, scenario: str, m: dict[str, Any]) -> str:
    t = m["time"] if isinstance(m["time"], str) else f"{m['time']:.2f}"
    return f"| {kind} | {n} | {scenario} | {t} | {m['value']} | {m['executions']} | {m['growth']} | {m['pss']} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--kill-n", type=int, default=1000, help="N of the runs with a worker killed (0: none)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--redis", default=DEFAULT_REDIS)
    parser.add_argument("--wait", type=float, default=600, help="seconds to wait for a result")
    parser.add_argument("--kill-wait", type=float, default=180, help="seconds to wait for a result after a kill")
    parser.add_argument("--quiet-load", type=float, default=1.0, help="wait for the load average to drop below this")
    parser.add_argument("--patience", type=float, default=600, help="... for at most this many seconds")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    load = wait_for_quiet(args.quiet_load, args.patience)
    print(f"load average before the run: {load:.2f} (1 min), {os.cpu_count()} cores", flush=True)
    tag = new_tag("fan")
    database = create_database(tag)
    # Recovery tuned for the kill runs (the defaults, 30 s sweep and 120 s grace, work the same, later).
    env = bench_env(tag, database, args.redis, BENCH_SWEEP="5", BENCH_GRACE="10")
    run = Run(tag, database, args.redis, env)
    lines = [
        "| kind | N | scenario | time s | result | executions | backend / store growth | workers PSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    try:
        run.start_workers(args.workers, args.concurrency)
        run.chord(10, False, 60)  # warm-up: both sides' imports, connections, the store's tables
        run.durable(10, False, 60)
        for n in sizes:
            for kind in ("chord", "durable"):
                measured = getattr(run, kind)(n, False, args.wait)
                lines.append(row(kind, n, "no failure", measured))
                print(lines[-1], flush=True)
        if args.kill_n:
            for kind in ("chord", "durable"):
                run.start_workers(args.workers, args.concurrency)
                wait = args.kill_wait if kind == "chord" else args.wait
                measured = getattr(run, kind)(args.kill_n, True, wait)
                lines.append(row(kind, args.kill_n, "1 worker killed", measured))
                print(lines[-1], flush=True)
    finally:
        run.close()
        # The chord's header tasks a killed worker had prefetched come back after Redis's visibility
        # timeout (1 h): purge them with the run's queue.
        redis_cleanup(args.redis, tag)
        drop_database(database)
    print(f"\nload average after the run: {load_average():.2f}\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
