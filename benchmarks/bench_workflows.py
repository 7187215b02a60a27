"""Throughput of a 3-step durable workflow against a plain Celery task and a chain, side by side.

    .venv/bin/python -m benchmarks.bench_workflows [-n 2000] [--rounds 1]

One ``celery worker -P prefork -c 2`` on a Redis broker (database 15 by default) runs, one kind
after the other in the same run and the same worker:

  (a) a plain Celery task making 3 trivial function calls,
  (b) a Celery chain of 3 tasks (one trivial call each),
  (c) a durable workflow making 3 trivial ``@durable.step`` calls (store: a fresh PostgreSQL database),
  (d) the floor of (c): a plain task making the same calls and writing the same rows by hand with raw
      psycopg (start row, claim, 3 checkpoints, finish; no lock, ticket, replay or engine).

For each kind, N of them are enqueued by this process and the clock runs from the first enqueue to
the last completion: for (a) and (b) the last task increments a Redis counter; (c) does the same
increment (equal work) but is timed by the workflow status in the store (all N rows SUCCESS),
which is read once the counter is full (and now and then before, to stop early on an ERROR).
The SQL the store sends for (c) is counted inside the worker's pool processes (SQLAlchemy events,
flushed to Redis) and in this producer, and reported per workflow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import redis
import sqlalchemy as sa
from celery import chain

from benchmarks import _common as common

KINDS = {
    "plain": "(a) plain task, 3 calls",
    "chain": "(b) chain of 3 tasks",
    "durable": "(c) durable, 3 steps",
    "floor": "(d) by hand: 3 calls + 6 SQL",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "-n", "--workflows", type=int, default=2000, help="workflows of each kind per round (default 2000)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (a), (b), (c) (default 1)")
    parser.add_argument("--warmup", type=int, default=50, help="of each kind before measuring (default 50)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker prefork processes (default 2)")
    parser.add_argument("--prefetch", type=int, default=4, help="worker_prefetch_multiplier (default 4, Celery's)")
    parser.add_argument(
        "--redis", default=common.DEFAULT_REDIS, help=f"broker and counters (default {common.DEFAULT_REDIS})"
    )
    parser.add_argument("--no-count-sql", action="store_true", help="do not install the SQL counters in the worker")
    parser.add_argument(
        "--broker",
        choices=["redis", "rabbitmq", "embedded"],
        default="redis",
        help="redis (default), rabbitmq, or embedded: the filesystem:// broker and an SQLite store (the defaults)",
    )
    parser.add_argument("--durability", choices=["full", "relaxed"], default="full", help="DurableConfig durability")
    args = parser.parse_args(argv)

    tag = common.new_tag("wf")
    embedded = args.broker == "embedded"
    database = None if embedded else common.create_database(tag)
    fs_dir = tempfile.mkdtemp(prefix=f"{tag}-") if embedded else None
    extra = {"BENCH_DURABILITY": args.durability}
    if args.broker == "rabbitmq":
        extra["BENCH_BROKER"] = common.RABBIT_URL
    elif fs_dir is not None:
        extra.update(BENCH_BROKER="filesystem://", BENCH_FS_DIR=fs_dir)
    env = common.bench_env(
        tag,
        database or "",
        args.redis,
        BENCH_PREFETCH=str(args.prefetch),
        BENCH_COUNT_SQL="0" if args.no_count_sql else "1",
        BENCH_SWEEP="30",
        **extra,
    )
    if fs_dir is not None:
        env["BENCH_DATABASE_URL"] = f"sqlite:///{fs_dir}/store.sqlite3"
    bench = common.load_app(env)
    r = redis.Redis.from_url(args.redis)
    worker: common.Worker | None = None
    poll_engine: sa.Engine | None = None
    try:
        bench.durable.migrate()
        kinds = {k: v for k, v in KINDS.items() if k != "floor" or database is not None}  # (d) is PostgreSQL's
        if database is not None:
            for ddl in bench.FLOOR_TABLES:
                bench.pg().execute(ddl)
        producer_sql = bench.SQLCounter().attach(bench.durable.store.engine)
        poll_engine = sa.create_engine(env["BENCH_DATABASE_URL"])
        workflows = bench.durable.store.t.workflows

        def store_counts() -> dict[str, int]:
            with poll_engine.connect() as conn:  # type: ignore[union-attr]
                rows = conn.execute(sa.select(workflows.c.status, sa.func.count()).group_by(workflows.c.status))
                return {status: count for status, count in rows}

        def worker_sql() -> dict[str, int]:
            raw = r.hgetall(bench.SQL_KEY)
            return {f: int(raw.get(f.encode(), 0)) for f in bench.SQLCounter.FIELDS}

        def enqueue(kind: str, i: int, key: str) -> None:
            if kind == "plain":
                bench.plain3.delay(i, key)
            elif kind == "chain":
                chain(bench.link.s(i), bench.link.s(), bench.link_last.s(key)).apply_async()
            elif kind == "floor":
                bench.floor_start(i, key)
            else:
                bench.wf3.delay(i, key)

        def run(kind: str, n: int, label: str) -> dict[str, Any]:
            key = f"bench:{tag}:done:{kind}:{label}"
            before = store_counts().get("SUCCESS", 0)
            sql0, prod0 = worker_sql(), producer_sql.snapshot()
            cpu0 = meter.snapshot()
            t0 = time.perf_counter()
            for i in range(n):
                enqueue(kind, i, key)
            enqueued = time.perf_counter() - t0
            prod1 = producer_sql.snapshot()

            polls = [0]

            def done() -> bool:
                counted = int(r.get(key) or 0) >= n
                if kind != "durable":
                    return counted
                # Each durable body increments the same counter just before its end is committed, so
                # the store is asked only once the counter is full (and every 50 polls, to see an
                # ERROR early): a count over the workflows table every 10 ms cost the measured
                # PostgreSQL about 0.6 ms and this producer about 0.2 ms of CPU each time.
                polls[0] += 1
                if not counted and polls[0] % 50:
                    return False
                counts = store_counts()
                if counts.get("ERROR"):
                    raise RuntimeError(f"{counts['ERROR']} workflow(s) ended in ERROR; see {worker.log}")  # type: ignore[union-attr]
                return counts.get("SUCCESS", 0) >= before + n

            common.wait_until(done, timeout=max(180.0, n / 5), interval=0.01, what=f"{n} {kind} to finish")
            total = time.perf_counter() - t0
            cpu = {k: v / n * 1000 for k, v in common.CpuMeter.delta(cpu0, meter.snapshot()).items()}
            result: dict[str, Any] = {
                "kind": kind, "n": n, "total": total, "enqueue": enqueued, "rate": n / total, "cpu_ms": cpu,
                "load": os.getloadavg()[0],
            }  # fmt: skip
            if kind == "durable" and not args.no_count_sql:
                time.sleep(0.6)  # the pool processes flush their counters every 0.2 s
                sql1 = worker_sql()
                result["worker_sql"] = {f: (sql1[f] - sql0[f]) / n for f in sql0}
                result["producer_sql"] = {f: (prod1[f] - prod0[f]) / n for f in prod0}
            return result

        worker = common.Worker(env, concurrency=args.concurrency).start()
        meter = common.CpuMeter(worker, args.broker, args.redis, database)
        store_name = f"SQLite {env['BENCH_DATABASE_URL']}" if embedded else f"PostgreSQL database {database}"
        print(
            f"celery_durable workflows benchmark: N={args.workflows} per kind, {args.rounds} round(s), warm-up {args.warmup}\n"
            f"worker: celery worker -P prefork -c {args.concurrency}, prefetch multiplier {args.prefetch}, log level warning; "
            f"broker {args.broker} ({env.get('BENCH_BROKER') or args.redis}); store {store_name}; "
            f"durability {args.durability}; {os.cpu_count()} cores; {common.load_average()}",
            flush=True,
        )
        for kind in kinds:
            run(kind, args.warmup, "warmup")

        results: list[dict[str, Any]] = []
        for rnd in range(args.rounds):
            for kind in kinds:
                res = run(kind, args.workflows, f"r{rnd}")
                res["round"] = rnd
                results.append(res)
                print(
                    f"  round {rnd + 1} {KINDS[kind]:<26} {res['total']:7.2f} s  ({res['rate']:7.1f}/s; "
                    f"enqueue took {res['enqueue']:.2f} s)",
                    flush=True,
                )

        print(f"\nResults (N={args.workflows}; time = first enqueue to last completion; median over rounds)")
        print(f"  {'kind':<28}{'time s':>9}{'per s':>9}{'enqueue s':>11}")
        med: dict[str, float] = {}
        for kind, title in kinds.items():
            rs = sorted((x for x in results if x["kind"] == kind), key=lambda x: x["total"])
            mid = rs[len(rs) // 2]
            med[kind] = mid["total"]
            print(f"  {title:<28}{mid['total']:9.2f}{args.workflows / mid['total']:9.1f}{mid['enqueue']:11.2f}")
        print(
            f"  ratio time (c)/(a): {med['durable'] / med['plain']:.2f} (goal <= 1.5)   (c)/(b): "
            f"{med['durable'] / med['chain']:.2f} (goal < 1: ahead of the chain)"
        )
        if "floor" in med:
            print(
                f"  ratio time (d)/(a): {med['floor'] / med['plain']:.2f} (the same checkpoints by hand)   "
                f"(c)/(d): {med['durable'] / med['floor']:.2f} (what the library adds to them)"
            )
        groups = [
            g for g in ("producer", "worker-main", "worker-pool", "redis", "rabbitmq", "postgres") if g in results[0]["cpu_ms"]
        ]
        print("\nCPU per workflow by process, ms (mean over rounds; /proc/<pid>/stat; Redis and RabbitMQ are shared)")
        print(f"  {'kind':<28}" + "".join(f"{g:>12}" for g in groups) + f"{'total':>10}{'load':>7}")
        cpu_total: dict[str, float] = {}
        for kind, title in kinds.items():
            rs = [x for x in results if x["kind"] == kind]
            mean = {g: sum(x["cpu_ms"][g] for x in rs) / len(rs) for g in groups}
            cpu_total[kind] = sum(mean.values())
            load = sum(x["load"] for x in rs) / len(rs)
            print(f"  {title:<28}" + "".join(f"{mean[g]:12.3f}" for g in groups) + f"{cpu_total[kind]:10.3f}{load:7.2f}")
        print(f"  ratio total CPU (c)/(a): {cpu_total['durable'] / cpu_total['plain']:.2f} (goal <= 1.5)")
        if "floor" in cpu_total:
            print(
                f"  ratio total CPU (d)/(a): {cpu_total['floor'] / cpu_total['plain']:.2f}   "
                f"(c)/(d): {cpu_total['durable'] / cpu_total['floor']:.2f}"
            )
        floor_ratio = None
        if database is not None:
            # The least any store that keeps each finished step in PostgreSQL can cost here.
            floor = common.commit_floor(database, 3000)
            commit_ms = (floor["server"] + floor["client"]) / 1000
            plain_ms = cpu_total["plain"]
            floor_ratio = (plain_ms + 5 * commit_ms) / plain_ms
            print(
                f"\nFloor on this machine: one single-row INSERT whose commit waits for the WAL flush costs "
                f"{floor['server']:.0f} us of PostgreSQL CPU + {floor['client']:.0f} us in the client (psycopg, prepared).\n"
                f"  Full durability needs at least 5 such commits per 3-step workflow (start, 3 checkpoints, end): "
                f"{5 * commit_ms:.2f} ms. Added to (a)'s {plain_ms:.2f} ms,\n  no design that keeps every finished step "
                f"in PostgreSQL on these cores can go below a CPU ratio of {floor_ratio:.2f}; the goal of 1.5 leaves "
                f"{0.5 * plain_ms:.2f} ms for everything durability adds."
            )
        summary = {
            "bench": "workflows", "broker": args.broker, "durability": args.durability, "n": args.workflows,
            "cores": os.cpu_count(), "per_s": {k: round(args.workflows / v, 1) for k, v in med.items()},
            "ratio_time": round(med["durable"] / med["plain"], 3),
            "ratio_cpu": round(cpu_total["durable"] / cpu_total["plain"], 3),
            "ratio_cpu_by_hand": round(cpu_total["floor"] / cpu_total["plain"], 3) if "floor" in cpu_total else None,
            "cpu_ms": {k: round(v, 3) for k, v in cpu_total.items()},
            "floor_ratio_cpu": round(floor_ratio, 3) if floor_ratio else None,
        }  # fmt: skip
        print("JSON " + json.dumps(summary))

        with poll_engine.connect() as conn:
            executions = conn.execute(sa.select(sa.func.sum(workflows.c.executions), sa.func.count())).one()
        print(
            f"  durable executions per workflow: {executions[0] / executions[1]:.3f} (1.000 = no redelivery, no retry)"
        )

        durable_runs = [x for x in results if x["kind"] == "durable" and "worker_sql" in x]
        if durable_runs:
            w = {f: sum(x["worker_sql"][f] for x in durable_runs) / len(durable_runs) for f in bench.SQLCounter.FIELDS}
            p = {
                f: sum(x["producer_sql"][f] for x in durable_runs) / len(durable_runs) for f in bench.SQLCounter.FIELDS
            }
            t = {f: w[f] + p[f] for f in w}
            print("\nSQL per durable workflow (SQLAlchemy events; producer = start(), worker = the execution)")
            print(
                f"  {'':<10}{'statements':>11}{'(autocommit)':>14}{'transactions':>14}{'commits':>9}{'rollbacks':>11}{'pings':>11}"
            )
            for title, c in (("producer", p), ("worker", w), ("total", t)):
                print(
                    f"  {title:<10}{c['statements']:11.2f}{c['autocommit']:14.2f}{c['begins']:14.2f}{c['commits']:9.2f}"
                    f"{c['rollbacks']:11.2f}{c['pings']:11.2f}"
                )
            trips = t["statements"] + t["begins"] + t["commits"] + t["rollbacks"] + t["pings"]
            print(
                f"  database round trips per workflow ~ {trips:.1f} = statements + BEGIN and COMMIT/ROLLBACK of each\n"
                "  transaction (psycopg sends each on its own; autocommit statements need neither) + pings\n"
                "  (pool_pre_ping checkouts: producers ping, executions do not)"
            )
        print("\n(The worker's sweep thread is not counted: it runs in the main process, every 30 s.)")
        return 0
    except Exception:
        if worker is not None:
            print(f"worker log tail:\n{worker.output()[-3000:]}", file=sys.stderr)
        raise
    finally:
        if worker is not None:
            worker.stop()
            worker.remove_log()
        if poll_engine is not None:
            poll_engine.dispose()
        if bench.durable._store is not None:
            bench.durable.store.close()
        oid = bench.app.control.mailbox.oid
        bench.app.pool.force_close_all()
        r.close()
        common.redis_cleanup(args.redis, tag, extra_keys=(f"{oid}.reply.celery.pidbox",))
        if database is not None:
            common.drop_database(database)
        if fs_dir is not None:
            shutil.rmtree(fs_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
