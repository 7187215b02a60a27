"""Messaging: send -> recv latency, and many workflows waiting in recv at once.

    .venv/bin/python -m benchmarks.bench_messaging [--round-trips 500] [--waiting 10000]

Redis broker (database 15 by default), a fresh PostgreSQL database as the store, one
``celery worker -P prefork -c 2``.

(a) Latency. ``pinger`` workflows loop ``recv("ping")`` then a step ``stamp()`` that returns
    ``time.time()``. For each round trip this process waits until the workflow is WAITING in that
    recv, takes ``t0 = time.time()``, calls ``durable.send(...)``, then reads the stamp from the
    steps table. Latency = stamp - t0: from just before ``send()`` to just after ``recv`` returned
    inside the worker (same machine, same clock). It covers the send transaction, the wake-up
    publish, the broker delivery, the execution's lock + replay of the history so far, and the
    recv transaction. Every round trip is a wake-up through the broker.

(b) Many waiters. ``--waiting`` workflows each call ``recv("go", timeout=...)`` with a timeout
    beyond the durable ``horizon``, so the deadline stays in the store and no countdown message is
    published: nothing is held in the worker. Once all are WAITING (store count) it reports worker
    slots in use (``inspect().active()``), messages the worker holds (``reserved``/``scheduled``,
    Redis ``unacked``), RSS and OS threads of the worker's processes against a baseline, then sends
    one message to each and times until all are SUCCESS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import redis
import sqlalchemy as sa

from benchmarks import _common as common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-trips", type=int, default=500, help="send -> recv round trips (default 500; 0 skips)")
    parser.add_argument(
        "--per-workflow", type=int, default=500, help="round trips per pinger workflow (default 500: one workflow)"
    )
    parser.add_argument(
        "--gap", type=float, default=0.02, help="pause after a stamp is read before the next send, s (default 0.02)"
    )
    parser.add_argument(
        "--broker",
        choices=["redis", "rabbitmq", "embedded"],
        default="redis",
        help="redis (default), rabbitmq, or embedded: filesystem:// broker and an SQLite store",
    )
    parser.add_argument("--timer-grace", type=float, default=None, help="DurableConfig timer_grace (default: its own)")
    parser.add_argument("--linger", type=float, default=None, help="DurableConfig recv_linger, s (default: its own, 0)")
    parser.add_argument(
        "--adaptive-linger", type=float, default=None, help="DurableConfig adaptive_linger, s (default: its own; 0 = off)"
    )
    parser.add_argument("--ping-timeout", type=float, default=60.0, help="recv timeout of the pingers, s (default 60)")
    parser.add_argument("--waiting", type=int, default=10000, help="workflows waiting at once (default 10000; 0 skips)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="recv timeout of the waiters, s (default 1800)")
    parser.add_argument("--horizon", type=float, default=300.0, help="durable horizon, s (default 300)")
    parser.add_argument("--threads", type=int, default=2, help="producer threads starting/sending in (b) (default 2)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker prefork processes (default 2)")
    parser.add_argument("--redis", default=common.DEFAULT_REDIS, help=f"broker (default {common.DEFAULT_REDIS})")
    args = parser.parse_args(argv)
    if args.waiting and args.timeout <= args.horizon:
        parser.error("--timeout must be beyond --horizon, so the waits hold no countdown message")

    tag = common.new_tag("msg")
    database = None if args.broker == "embedded" else common.create_database(tag)
    print(
        f"celery_durable messaging benchmark: worker celery -P prefork -c {args.concurrency}; broker {args.broker}; "
        f"store {'SQLite' if database is None else 'PostgreSQL database ' + database}; horizon {args.horizon:g} s; "
        f"{os.cpu_count()} cores; {common.load_average()}",
        flush=True,
    )
    try:
        # Each part has its own queue, table prefix and worker: the stale timers (a) leaves behind
        # (see below) must not be counted in (b).
        if args.round_trips:
            run_part(args, f"{tag}a", database, latency)
        if args.waiting:
            run_part(args, f"{tag}b", database, many_waiting)
    finally:
        if database is not None:
            common.drop_database(database)
    return 0


def run_part(args: argparse.Namespace, tag: str, database: str | None, part: Any) -> None:
    # recovery_grace 600: a slow start of 10,000 workflows must not make the sweep re-publish PENDING ones.
    extra = {} if args.timer_grace is None else {"BENCH_TIMER_GRACE": str(args.timer_grace)}
    if args.linger is not None:
        extra["BENCH_LINGER"] = str(args.linger)
    if args.adaptive_linger is not None:
        extra["BENCH_ADAPTIVE_LINGER"] = str(args.adaptive_linger)
    fs_dir = tempfile.mkdtemp(prefix=f"{tag}-") if database is None else None
    if args.broker == "rabbitmq":
        extra["BENCH_BROKER"] = common.RABBIT_URL
    elif fs_dir is not None:
        extra.update(BENCH_BROKER="filesystem://", BENCH_FS_DIR=fs_dir)
    env = common.bench_env(
        tag, database or "", args.redis, BENCH_HORIZON=str(args.horizon), BENCH_SWEEP="30", BENCH_GRACE="600", **extra
    )
    if fs_dir is not None:
        env["BENCH_DATABASE_URL"] = f"sqlite:///{fs_dir}/store.sqlite3"
    env["BENCH_PREFIX"] = f"bench_{tag[-1]}_"
    bench = common.load_app(env)
    r = redis.Redis.from_url(args.redis)
    worker: common.Worker | None = None
    poll_engine: sa.Engine | None = None
    try:
        bench.durable.migrate()
        poll_engine = sa.create_engine(env["BENCH_DATABASE_URL"])
        worker = common.Worker(env, concurrency=args.concurrency).start()
        ctx = Ctx(tag, bench, worker, poll_engine, r)
        ctx.meter = common.CpuMeter(worker, args.broker, args.redis, database)
        ctx.embedded = fs_dir is not None
        part(args, ctx)
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
        r.close()
        common.redis_cleanup(args.redis, tag, extra_keys=(f"{oid}.reply.celery.pidbox",))
        if fs_dir is not None:
            shutil.rmtree(fs_dir, ignore_errors=True)


class Ctx:
    def __init__(self, tag: str, bench: Any, worker: common.Worker, poll_engine: sa.Engine, r: redis.Redis) -> None:
        self.tag, self.bench, self.worker, self.poll_engine, self.r = tag, bench, worker, poll_engine, r
        self.durable = bench.durable
        self.w, self.s = bench.durable.store.t.workflows, bench.durable.store.t.steps
        self.meter: common.CpuMeter | None = None
        self.embedded = False

    def store_counts(self) -> dict[str, int]:
        with self.poll_engine.connect() as conn:
            rows = conn.execute(sa.select(self.w.c.status, sa.func.count()).group_by(self.w.c.status))
            return {status: count for status, count in rows}

    def store_bytes(self) -> int:
        """Bytes the store's tables (with indexes) take: PostgreSQL relation sizes, or the SQLite files."""
        url = self.poll_engine.url
        if url.get_backend_name() == "sqlite":
            path = str(url.database)
            return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
        names = [t.name for t in (self.w, self.s, self.durable.store.t.messages, self.durable.store.t.events)]
        with self.poll_engine.connect() as conn:
            total = conn.execute(
                sa.text("SELECT sum(pg_total_relation_size(CAST(n AS regclass))) FROM unnest(CAST(:names AS text[])) AS n"),
                {"names": names},
            ).scalar()
        return int(total or 0)

    def held(self) -> dict[str, Any]:
        """What the worker holds: tasks running, prefetched, held for a countdown; Redis queue and unacked."""
        if self.embedded:  # the filesystem transport has no remote control
            return {k: "n/a" for k in ("active", "reserved", "scheduled", "queue", "unacked")}
        inspect = self.bench.app.control.inspect(destination=[self.worker.hostname], timeout=3.0)

        def count(reply: dict[str, list[Any]] | None) -> int | str:
            return "no reply" if not reply else sum(len(v) for v in reply.values())

        return {
            "active": count(inspect.active()),
            "reserved": count(inspect.reserved()),
            "scheduled": count(inspect.scheduled()),
            "queue": self.r.llen(f"{self.tag}-q"),
            "unacked": self.r.hlen("unacked"),
        }


def plain_hops(ctx: Ctx, n: int = 200) -> list[float]:
    """Seconds from ``delay()`` to the first line of a plain task, *n* times, one at a time, 20 ms apart:
    the broker-to-task hop of this worker, which a wake-up through the broker pays as well."""
    key = f"bench:{ctx.tag}:hop"
    hops = []
    for _ in range(n + 20):
        t0 = time.time()
        ctx.bench.hop.delay(key)
        reply = ctx.r.blpop([key], timeout=30)
        if reply is None:
            raise RuntimeError(f"a plain task did not run within 30 s; see {ctx.worker.log}")
        hops.append(float(reply[1]) - t0)
        time.sleep(0.02)
    return hops[20:]  # after a warm-up


def latency(args: argparse.Namespace, ctx: Ctx) -> None:
    """(a) send -> recv-returns latency."""
    hops = plain_hops(ctx) if not ctx.embedded else []
    w, s = ctx.w, ctx.s
    latencies: list[float] = []
    send_calls: list[float] = []
    position: list[int] = []
    per = max(1, args.per_workflow)
    cpu0 = ctx.meter.snapshot() if ctx.meter else None
    config = ctx.durable.config
    # A workflow may also wait in place (recv_linger / adaptive_linger, PostgreSQL): it then stays
    # RUNNING. After its previous stamp was read and the gap passed, RUNNING means it is in the next recv.
    can_linger = not ctx.embedded and (config.recv_linger > 0 or config.adaptive_linger > 0)
    executions = 0
    with ctx.poll_engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        for k in range(math.ceil(args.round_trips / per)):
            count = min(per, args.round_trips - k * per)
            wid = f"{ctx.tag}-ping-{k}"
            ctx.bench.pinger.start(count, args.ping_timeout, workflow_id=wid)
            state = sa.select(w.c.status, w.c.wait_step).where(w.c.workflow_id == wid)
            for i in range(count):

                def waiting_here(i: int = i, wid: str = wid, state: Any = state) -> bool:
                    row = conn.execute(state).one()
                    if row.status in ("ERROR", "CANCELLED"):
                        raise RuntimeError(f"{wid} ended in {row.status}; see {ctx.worker.log}")
                    if can_linger and i > 0 and row.status == "RUNNING":
                        return True  # lingering in recv #i (its stamp #i-1 was read a gap ago)
                    return row.status == "WAITING" and row.wait_step == 2 * i

                common.wait_until(waiting_here, 60, 0.002, f"{wid} to wait in recv #{i}")
                t0 = time.time()
                ctx.durable.send(wid, i, topic="ping")
                send_calls.append(time.time() - t0)
                stamp_q = sa.select(s.c.output).where(s.c.workflow_id == wid, s.c.step_id == 2 * i + 1)
                stamp = common.wait_until(lambda q=stamp_q: conn.execute(q).scalar(), 60, 0.002, "the stamp")
                latencies.append(float(stamp) - t0)
                position.append(i)
                conn.rollback()  # end the read transaction: SQLite's WAL is not held by a reader
                time.sleep(args.gap)
            done = common.wait_until(
                lambda wid=wid: conn.execute(sa.select(w.c.status, w.c.executions).where(w.c.workflow_id == wid)).one()
                if conn.execute(sa.select(w.c.status).where(w.c.workflow_id == wid)).scalar() == "SUCCESS" else None,
                60, 0.01, f"{wid} to finish",
            )  # fmt: skip
            executions += done.executions
    cpu = common.CpuMeter.delta(cpu0, ctx.meter.snapshot()) if ctx.meter and cpu0 else {}
    time.sleep(max(1.5, float(ctx.durable.config.timer_grace) + 0.5))  # timers kept for the grace are decided
    held = ctx.held()
    print(
        f"\n(a) send -> recv-returns latency, {len(latencies)} round trips, {per} per workflow, "
        f"recv timeout {args.ping_timeout:g} s"
    )
    ms = [x * 1000 for x in latencies]
    p50, p99 = common.percentile(ms, 50), common.percentile(ms, 99)
    print(f"    latency     {common.describe_ms(latencies)}")
    print(f"    goal p50 <= 4 ms: {p50:.2f} ms; goal p99 <= 10 ms: {p99:.2f} ms")
    print(f"    send() call {common.describe_ms(send_calls)}")
    if hops:
        print(f"    for scale, a plain Celery task from delay() to its first line: {common.describe_ms(hops)}")
    k = min(50, per // 2)
    first = [x for x, i in zip(latencies, position) if i < k]
    last = [x for x, i in zip(latencies, position) if i >= per - k]
    ratio = None
    if first and last and per >= 4:
        ratio = common.percentile(last, 50) / common.percentile(first, 50)
        print(
            f"    p50 over messages 1-{k} of each workflow {common.percentile(first, 50) * 1000:.2f} ms, over the last {k} "
            f"({per - k + 1}-{per}) {common.percentile(last, 50) * 1000:.2f} ms: ratio {ratio:.2f} (goal <= 1.25, flat in history)"
        )
    if cpu:
        n = len(latencies)
        print(
            "    CPU per round trip (send + wake-up + recv + stamp), ms: "
            + ", ".join(f"{g} {v / n * 1000:.3f}" for g, v in cpu.items())
            + f"; total {sum(cpu.values()) / n * 1000:.3f} (/proc/<pid>/stat; Redis/RabbitMQ shared)"
        )
    pingers = math.ceil(args.round_trips / per)
    print(
        f"    wake-ups through the broker: {executions - pingers} of {len(latencies)} round trips (executions less "
        f"the starts); the rest were taken in place by a lingering recv (recv_linger {config.recv_linger:g} s, "
        f"adaptive_linger {config.adaptive_linger:g} s)"
    )
    print(
        f"    afterwards the worker holds {held['scheduled']} countdown (ETA) message(s), Redis unacked {held['unacked']}: "
        f"timers of waits that a message ended first (timer_grace {ctx.durable.config.timer_grace:g} s keeps short ones "
        "out of the broker)"
    )
    summary = {
        "bench": "messaging-latency", "broker": args.broker, "n": len(latencies), "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3), "first_last_ratio": round(ratio, 3) if ratio else None,
        "send_p50_ms": round(common.percentile(send_calls, 50) * 1000, 3), "held_timers": held["scheduled"],
        "broker_wakeups": executions - pingers,
        "plain_hop_p50_ms": round(common.percentile(hops, 50) * 1000, 3) if hops else None, "adaptive_linger": config.adaptive_linger, "recv_linger": config.recv_linger,
        "cores": os.cpu_count(), "load": os.getloadavg()[0],
    }  # fmt: skip
    print("JSON " + json.dumps(summary))


def many_waiting(args: argparse.Namespace, ctx: Ctx) -> None:
    """(b) many workflows waiting in recv at once."""
    bench, durable, worker, w = ctx.bench, ctx.durable, ctx.worker, ctx.w
    start_stats = common.worker_stats(worker)

    def run_parallel(fn: Any, items: list[str]) -> float:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, args.threads)) as pool:
            for _ in pool.map(fn, items, chunksize=64):
                pass
        return time.perf_counter() - t0

    def check_errors(c: dict[str, int]) -> None:
        if c.get("ERROR"):
            raise RuntimeError(f"{c['ERROR']} workflow(s) ended in ERROR; see {worker.log}")

    # warm up: a few waiters through the whole cycle, so the baseline has every import and connection
    warm = [f"{ctx.tag}-warm-{i}" for i in range(20)]
    for wid in warm:
        bench.waiter.start(args.timeout, workflow_id=wid)
    common.wait_until(lambda: ctx.store_counts().get("WAITING", 0) >= len(warm), 60, 0.05, "warm-up waiters")
    for wid in warm:
        durable.send(wid, "go", topic="go")
    common.wait_until(lambda: ctx.store_counts().get("SUCCESS", 0) >= len(warm), 60, 0.05, "warm-up")
    time.sleep(1.0)
    base = common.worker_stats(worker)

    n = args.waiting
    ids = [f"{ctx.tag}-w-{i}" for i in range(n)]
    print(
        f"\n(b) {n} workflows waiting in recv('go', timeout={args.timeout:g}) -- beyond the horizon "
        f"({args.horizon:g} s): deadlines kept in the store, no countdown messages"
    )
    t_start = run_parallel(lambda wid: bench.waiter.start(args.timeout, workflow_id=wid), ids)
    print(f"    started {n} in {t_start:.1f} s ({n / t_start:.0f}/s, {args.threads} producer thread(s))", flush=True)
    t0 = time.perf_counter()

    def all_waiting() -> bool:
        c = ctx.store_counts()
        check_errors(c)
        return c.get("WAITING", 0) >= n

    common.wait_until(all_waiting, max(300.0, n / 10), 0.2, f"{n} workflows to be WAITING")
    print(f"    all WAITING {t_start + time.perf_counter() - t0:.1f} s after the first start", flush=True)
    time.sleep(2.0)
    during = common.worker_stats(worker)
    held = ctx.held()
    print(
        f"    while all wait: worker slots in use (inspect active) {held['active']}, reserved {held['reserved']}, "
        f"scheduled (countdown) {held['scheduled']}; Redis queue {held['queue']}, unacked {held['unacked']}"
    )
    print(
        f"    worker RSS (main + {len(during['per_process']) - 1} children): at start {start_stats['rss_mb']:.1f} MB, "
        f"after warm-up {base['rss_mb']:.1f} MB, while {n} wait {during['rss_mb']:.1f} MB "
        f"(growth {during['rss_mb'] - base['rss_mb']:+.1f} MB); PSS {base['pss_mb']:.1f} -> {during['pss_mb']:.1f} MB"
    )
    print(
        f"    worker OS threads: after warm-up {base['threads']}, while waiting {during['threads']} "
        f"(pid: (MB, threads) {during['per_process']})"
    )
    size = ctx.store_bytes()
    print(f"    store size {size / 2**20:.1f} MB for {n + len(warm)} workflows: {size / (n + len(warm)):.0f} bytes per waiting workflow")

    cpu0 = ctx.meter.snapshot() if ctx.meter else None
    t0 = time.perf_counter()
    t_send = run_parallel(lambda wid: durable.send(wid, "go", topic="go"), ids)

    last = sa.select(w.c.status).where(w.c.workflow_id == ids[-1])

    def all_done() -> bool:
        # The last one sent is about the last to finish: a primary-key read until it has, then the
        # full count (a count over the table every 50 ms would charge PostgreSQL's CPU to the run).
        with ctx.poll_engine.connect() as conn:
            if conn.execute(last).scalar() != "SUCCESS":
                return False
        c = ctx.store_counts()
        check_errors(c)
        return c.get("SUCCESS", 0) >= len(warm) + n

    common.wait_until(all_done, max(300.0, n / 10), 0.02, f"{n} workflows to finish")
    t_done = time.perf_counter() - t0
    after = common.worker_stats(worker)
    with ctx.poll_engine.connect() as conn:
        executions = conn.execute(
            sa.select(sa.func.sum(w.c.executions)).where(w.c.workflow_id.like(f"{ctx.tag}-w-%"))
        ).scalar()
    print(
        f"    sent one message to each: {n} sends in {t_send:.1f} s = {n / t_send:.0f} sends/s ({args.threads} thread(s))"
    )
    print(f"    all {n} finished {t_done:.1f} s after the first send = {n / t_done:.0f} completions/s (goal >= 1000)")
    print_cpu(ctx, cpu0, n, "    CPU per wake-up (send + execution), ms: ")
    by_hand = floor_wakeups(args, ctx, n) if not ctx.embedded else None
    summary = {
        "bench": "messaging-waiting", "broker": args.broker, "n": n, "rss_growth_mb": round(during["rss_mb"] - base["rss_mb"], 1),
        "held": held, "bytes_per_waiting": round(size / (n + len(warm))), "sends_per_s": round(n / t_send),
        "completions_per_s": round(n / t_done), "by_hand_completions_per_s": by_hand, "cores": os.cpu_count(),
        "load": os.getloadavg()[0],
    }  # fmt: skip
    print("JSON " + json.dumps(summary, default=str))
    print(
        f"    executions per workflow {executions / n:.2f} (2 = start + wake-up); worker RSS after: {after['rss_mb']:.1f} MB"
    )


def print_cpu(ctx: Ctx, cpu0: dict[str, dict[int, float]] | None, n: int, title: str) -> None:
    """CPU per item by process group since *cpu0*, in ms."""
    if ctx.meter and cpu0:
        cpu = common.CpuMeter.delta(cpu0, ctx.meter.snapshot())
        print(title + ", ".join(f"{g} {v / n * 1000:.3f}" for g, v in cpu.items()) + f"; total {sum(cpu.values()) / n * 1000:.3f}")


def floor_wakeups(args: argparse.Namespace, ctx: Ctx, n: int) -> float:
    """(b') The same n wake-ups by hand, same worker: rows already WAITING, a send that stores the message
    and wakes the row in one statement then publishes a plain task, which claims, takes the message with
    its checkpoint and finishes (no lock, ticket, replay or engine): the floor of (b)'s wake-ups."""
    bench = ctx.bench
    for ddl in bench.FLOOR_TABLES:
        bench.pg().execute(ddl)
    ids = [f"{ctx.tag}-f-{i}" for i in range(n)]
    bench.floor_wait(ids)
    cpu0 = ctx.meter.snapshot() if ctx.meter else None
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.threads)) as pool:
        for _ in pool.map(lambda wid: bench.floor_send(wid, '"go"'), ids, chunksize=64):
            pass
    t_send = time.perf_counter() - t0
    poll = psycopg.connect(str(ctx.poll_engine.url.set(drivername="postgresql")), autocommit=True)
    try:

        def done() -> bool:
            if poll.execute("SELECT status FROM bench_floor_wf WHERE id = %s", (ids[-1],)).fetchone() != ("SUCCESS",):
                return False
            row = poll.execute("SELECT count(*) FROM bench_floor_wf WHERE status = 'SUCCESS'").fetchone()
            return row is not None and row[0] >= n

        common.wait_until(done, max(300.0, n / 10), 0.02, f"{n} wake-ups by hand")
    finally:
        poll.close()
    t_done = time.perf_counter() - t0
    print(
        f"\n(b') the same {n} wake-ups by hand (plain tasks, raw SQL: the floor of (b)): {n / t_send:.0f} sends/s, "
        f"{n / t_done:.0f} completions/s"
    )
    print_cpu(ctx, cpu0, n, "    CPU per wake-up by hand, ms: ")
    return round(n / t_done)


if __name__ == "__main__":
    sys.exit(main())
