"""Concurrency limits, the engine alone (no Celery, no broker): statements and CPU per workflow with and
without a limit, and admission throughput through a key's queue.

    .venv/bin/python -m benchmarks.bench_concurrency [--store postgres|sqlite] [-n 500]

(a) the 3-step workflow of profile_engine.py, started and executed to the end N times: without a limit,
    then with ``concurrency`` whose key is free (admitted at create, freed at finish), then started by
    name and admitted at its first execution. Statements are SQLAlchemy's plus the fast path's own.
(b) admission throughput: N workflows of one key with a limit of 2, all started first (N - 2 ENQUEUED),
    then executed one message at a time, each finish admitting the next: workflows per second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections import deque
from typing import Any

import sqlalchemy as sa

from benchmarks import _common as common
from benchmarks.profile_engine import three_steps
from celery_durable import core, flow_concurrency
from celery_durable.config import DurableConfig
from celery_durable.serialization import JSONSerializer
from celery_durable.store import Dispatch, FlowLimit, open_store


class Counter:
    """Statements sent: SQLAlchemy's plus the fast path's raw ones. PostgreSQL's store has two engines
    whose listeners overlap (a statement may fire both), so each execution context counts once."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.n = 0
        self.last: Any = None
        for engine in {id(e): e for e in (store.engine, getattr(store, "exec_engine", None)) if e}.values():
            sa.event.listen(engine, "before_cursor_execute", self._bump)

    def _bump(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if context is not self.last:
            self.last = context
            self.n += 1

    def total(self) -> int:
        return self.n + int(getattr(self.store, "raw_statements", 0))


def run(engine: core.Engine, counter: Counter, n: int, mode: str, published: list[Dispatch]) -> dict[str, float]:
    plain = three_steps(engine)
    spec = flow_concurrency.concurrency("body", plain, 4, None, None)
    assert spec is not None
    body = flow_concurrency.admitting(plain, spec) if mode != "none" else plain
    inputs = engine.serializer.dumps({"args": [0], "kwargs": {}})
    tag = uuid.uuid4().hex[:6]
    cpu = {"create": 0.0, "exec": 0.0}
    sql = {"create": 0, "exec": 0}
    for i in range(n + 20):  # the first 20 warm up connections and statements
        wid = f"{mode}{tag}{i}"
        c0, s0 = time.process_time(), counter.total()
        flow = FlowLimit(f"body-{tag}", 4) if mode == "limit" else None
        extra = {"flow": flow} if flow is not None else {}
        record, _ = engine.store.create_workflow(wid, "body", inputs, None, engine.clock(), **extra)
        c1, s1 = time.process_time(), counter.total()
        outcome = engine.execute(wid, record.ticket, "body", body)
        c2, s2 = time.process_time(), counter.total()
        assert isinstance(outcome, core.Finished), outcome
        if i >= 20:
            cpu["create"] += c1 - c0
            cpu["exec"] += c2 - c1
            sql["create"] += s1 - s0
            sql["exec"] += s2 - s1
    return {
        "create_sql": sql["create"] / n,
        "exec_sql": sql["exec"] / n,
        "create_cpu_ms": cpu["create"] / n * 1e3,
        "exec_cpu_ms": cpu["exec"] / n * 1e3,
    }


def throughput(engine: core.Engine, n: int, published: list[Dispatch]) -> float:
    body = three_steps(engine)
    inputs = engine.serializer.dumps({"args": [0], "kwargs": {}})
    key = f"tp-{uuid.uuid4().hex[:6]}"
    ready: deque[Dispatch] = deque()
    for i in range(n):
        record, _ = engine.store.create_workflow(f"{key}-{i}", "body", inputs, None, engine.clock(), flow=FlowLimit(key, 2))
        if record.status.value == "PENDING":
            ready.append(Dispatch(record.workflow_id, "body", None, record.ticket))
    t0, done = time.perf_counter(), 0
    while ready:
        d = ready.popleft()
        published.clear()
        assert isinstance(engine.execute(d.workflow_id, d.ticket, "body", body), core.Finished)
        ready.extend(published)  # the finish admitted the next of the key
        done += 1
    assert done == n, done
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("-n", type=int, default=500)
    args = parser.parse_args()
    database = None
    if args.store == "postgres":
        database = common.create_database(common.new_tag("conc"))
        url = f"{common.PG_HOST_URL}/{database}"
    else:
        url = f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"
    store = open_store(url)
    try:
        store.migrate()
        published: list[Dispatch] = []
        engine = core.Engine(store, JSONSerializer(), DurableConfig(horizon=60), published.append)
        counter = Counter(store)
        results = {mode: run(engine, counter, args.n, mode, published) for mode in ("none", "limit", "by_name")}
        results["throughput_per_s"] = {"limit_2_one_key": throughput(engine, args.n, published)}  # type: ignore[dict-item]
    finally:
        store.close()
        if database is not None:
            common.drop_database(database)
    print(f"store {args.store}, n={args.n}, cores {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    for mode in ("none", "limit", "by_name"):
        r = results[mode]
        print(
            f"{mode:8s} statements: create {r['create_sql']:.1f}, execution {r['exec_sql']:.1f};  "
            f"CPU ms: create {r['create_cpu_ms']:.2f}, execution {r['exec_cpu_ms']:.2f}"
        )
    print(f"admission throughput (one key, limit 2, engine alone): {results['throughput_per_s']['limit_2_one_key']:.0f} workflows/s")
    print("JSON " + json.dumps({"store": args.store, "n": args.n, **results}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
