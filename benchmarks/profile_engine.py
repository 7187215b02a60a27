"""The engine alone (no Celery, no broker): CPU and statements per execution, and replay cost by history.

    .venv/bin/python -m benchmarks.profile_engine [--store postgres|sqlite] [-n 500] [--profile]

Robust to a loaded machine: it reports ``time.process_time`` (this process's CPU) and the SQL
statements sent (SQLAlchemy events plus the fast path's own counter), not only wall time.

(a) a 3-step workflow started and executed to the end, N times: CPU, wall and statements per workflow
    (producer's ``create_workflow`` and the execution apart).
(b) replay cost: a workflow with 1, 10, 100, 1,000 and 10,000 recorded steps then executed once more
    (a wake-up that replays it all): time and statements of that execution.
(c) a workflow that has received k messages (k up to --messages, default 1,000): CPU of each wake-up
    (claim + replay + recv), as p50 over the first and the last 50.
``--profile`` prints the cProfile top of (a)'s executions.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

import sqlalchemy as sa

from benchmarks import _common as common
from celery_durable import core
from celery_durable.config import DurableConfig
from celery_durable.serialization import JSONSerializer
from celery_durable.store import Dispatch, Store, open_store


class Counter:
    """Statements sent through SQLAlchemy plus those of the store's raw fast path, if it has one."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.n = 0
        for engine in {id(e): e for e in (store.engine, getattr(store, "exec_engine", None)) if e}.values():
            sa.event.listen(engine, "before_cursor_execute", self._bump)

    def _bump(self, *_: Any) -> None:
        self.n += 1

    def total(self) -> int:
        return self.n + int(getattr(self.store, "raw_statements", 0))


def three_steps(engine: core.Engine) -> Any:
    def inc(x: int) -> int:
        return x + 1

    def body(x: int) -> int:
        ctx = core.require_context("bench")
        for _ in range(3):
            x = ctx.run_step("inc", inc, (x,), {})
        return x

    return body


def start(engine: core.Engine, wid: str, *args: Any) -> int:
    inputs = engine.serializer.dumps({"args": list(args), "kwargs": {}})
    record, _ = engine.store.create_workflow(wid, "body", inputs, None, engine.clock())
    return record.ticket


def pg_cpu(database: str | None) -> float:
    """CPU seconds of the PostgreSQL backends connected to *database* (0 on SQLite)."""
    if database is None:
        return 0.0
    import psycopg

    with psycopg.connect(common.PG_ADMIN_DSN, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,))]
    return sum(common.cpu_of(pid) for pid in pids)


def part_a(engine: core.Engine, counter: Counter, n: int, profile: bool, database: str | None) -> dict[str, float]:
    body = three_steps(engine)
    tag = uuid.uuid4().hex[:6]
    for i in range(20):  # warm-up: connections, prepared statements
        engine.execute(f"warm{tag}{i}", start(engine, f"warm{tag}{i}", 0), "body", body)
    prof = cProfile.Profile() if profile else None
    create_cpu = exec_cpu = 0.0
    create_sql = exec_sql = 0
    server0 = pg_cpu(database)
    t0 = time.perf_counter()
    for i in range(n):
        wid = f"a{tag}{i}"
        c0, s0 = time.process_time(), counter.total()
        ticket = start(engine, wid, 0)
        c1, s1 = time.process_time(), counter.total()
        if prof:
            prof.enable()
        outcome = engine.execute(wid, ticket, "body", body)
        if prof:
            prof.disable()
        c2, s2 = time.process_time(), counter.total()
        assert isinstance(outcome, core.Finished), outcome
        create_cpu += c1 - c0
        exec_cpu += c2 - c1
        create_sql += s1 - s0
        exec_sql += s2 - s1
    wall = time.perf_counter() - t0
    server = pg_cpu(database) - server0
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return {
        "create_cpu_ms": create_cpu / n * 1e3,
        "exec_cpu_ms": exec_cpu / n * 1e3,
        "create_sql": create_sql / n,
        "exec_sql": exec_sql / n,
        "wall_ms": wall / n * 1e3,
        "server_ms": server / n * 1e3,
    }


def part_b(engine: core.Engine, counter: Counter, sizes: list[int]) -> list[dict[str, float]]:
    """A workflow that records *size* steps then waits; the measured execution replays them all."""
    out = []
    for size in sizes:
        wid = f"b{uuid.uuid4().hex[:6]}-{size}"

        def step(i: int) -> int:
            return i

        def body(size: int = size) -> int:
            ctx = core.require_context("bench")
            for i in range(size):
                ctx.run_step("s", step, (i,), {})
            ctx.recv(("go",), 3600)
            return size

        ticket = start(engine, wid)
        outcome = engine.execute(wid, ticket, "body", body)
        assert isinstance(outcome, core.Waiting), outcome
        wakeup = _send(engine, wid)
        c0, t0, s0 = time.process_time(), time.perf_counter(), counter.total()
        outcome = engine.execute(wid, wakeup.ticket, "body", body)
        c1, t1, s1 = time.process_time(), time.perf_counter(), counter.total()
        assert isinstance(outcome, core.Finished), outcome
        out.append({"steps": size, "cpu_ms": (c1 - c0) * 1e3, "wall_ms": (t1 - t0) * 1e3, "sql": s1 - s0})
    return out


def _send(engine: core.Engine, wid: str, value: str = '"x"', topic: str = "go") -> Dispatch:
    (wakeup,) = engine.store.send(wid, topic, value, engine.clock()).wakeups
    return wakeup


def part_c(engine: core.Engine, counter: Counter, messages: int) -> dict[str, float]:
    wid = f"c{uuid.uuid4().hex[:6]}"

    def stamp() -> float:
        return 0.0

    def body(count: int) -> int:
        ctx = core.require_context("bench")
        for _ in range(count):
            ctx.recv(("ping",), 3600)
            ctx.run_step("stamp", stamp, (), {})
        return count

    outcome = engine.execute(wid, start(engine, wid, messages), "body", body)
    cpu: list[float] = []
    sql: list[int] = []
    for _ in range(messages):
        wakeup = _send(engine, wid, "1", "ping")
        c0, s0 = time.process_time(), counter.total()
        outcome = engine.execute(wid, wakeup.ticket, "body", body)
        cpu.append(time.process_time() - c0)
        sql.append(counter.total() - s0)
    assert isinstance(outcome, core.Finished), outcome
    k = min(50, messages)
    return {
        "first_p50_ms": statistics.median(cpu[:k]) * 1e3,
        "last_p50_ms": statistics.median(cpu[-k:]) * 1e3,
        "sql_first": statistics.mean(sql[:k]),
        "sql_last": statistics.mean(sql[-k:]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("-n", type=int, default=500, help="3-step workflows in (a) (default 500)")
    parser.add_argument("--sizes", default="1,10,100,1000,10000", help="history sizes of (b)")
    parser.add_argument("--messages", type=int, default=1000, help="messages received in (c) (default 1000)")
    parser.add_argument("--profile", action="store_true", help="cProfile (a)'s executions")
    parser.add_argument("--durability", default="full", choices=["full", "relaxed"])
    parser.add_argument("--parts", default="abc")
    args = parser.parse_args(argv)

    database = None
    if args.store == "postgres":
        database = common.create_database(common.new_tag("prof"))
        url = f"{common.PG_HOST_URL}/{database}"
    else:
        url = f"sqlite:///{tempfile.mkdtemp()}/prof.sqlite3"
    store: Store | None = None
    try:
        store = open_store(url, "prof_", {}, durability=args.durability)
        store.migrate()
        config = DurableConfig(durability=args.durability)
        engine = core.Engine(store, JSONSerializer(), config, lambda d: None)
        counter = Counter(store)
        print(f"engine profile on {args.store} (durability {args.durability})", flush=True)
        if "a" in args.parts:
            a = part_a(engine, counter, args.n, args.profile, database)
            print(
                f"(a) 3-step workflow, N={args.n}: producer create {a['create_cpu_ms']:.3f} ms CPU / "
                f"{a['create_sql']:.1f} statements; execution {a['exec_cpu_ms']:.3f} ms CPU / {a['exec_sql']:.1f} "
                f"statements; PostgreSQL backends {a['server_ms']:.3f} ms CPU; wall {a['wall_ms']:.2f} ms per workflow",
                flush=True,
            )
        if "b" in args.parts:
            sizes = [int(x) for x in args.sizes.split(",") if x]
            print("(b) one execution replaying a history of k steps (then a recv that finds its message)")
            for row in part_b(engine, counter, sizes):
                print(
                    f"    {row['steps']:>6} steps: {row['cpu_ms']:9.2f} ms CPU {row['wall_ms']:9.2f} ms wall "
                    f"{row['sql']:4d} statements",
                    flush=True,
                )
        if "c" in args.parts and args.messages:
            c = part_c(engine, counter, args.messages)
            print(
                f"(c) one workflow receiving {args.messages} messages, CPU per wake-up: p50 first 50 "
                f"{c['first_p50_ms']:.3f} ms, last 50 {c['last_p50_ms']:.3f} ms (ratio "
                f"{c['last_p50_ms'] / c['first_p50_ms']:.2f}); statements {c['sql_first']:.1f} -> {c['sql_last']:.1f}",
                flush=True,
            )
    finally:
        if store is not None:
            store.close()
        if database:
            common.drop_database(database)
    return 0


if __name__ == "__main__":
    sys.exit(main())
