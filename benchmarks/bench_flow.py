"""Flow control (issue 15): a step with ``rate_limit="20/s"`` under a saturating load.

Two ``celery worker -P prefork -c 2`` (``tests/apps/rateapp.py``) on one queue, Redis (or RabbitMQ)
as broker, a fresh PostgreSQL database. ``-n`` workflows are started at once, each calling the
rate-limited step once; the step returns when it started. Printed: the span from the first start to
the last against the ideal ``(n - 1) / rate`` (goal: at most 1.1x), the most starts in any window of
one second (goal: the limit), and the time from the first ``start`` to the last result.

    .venv/bin/python -m benchmarks.bench_flow                 # -n 200 --rate 20
    .venv/bin/python -m benchmarks.bench_flow --broker rabbitmq -n 400
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from tests.services import Worker
from tests.store.test_contract_rate import most_in_a_window

from ._common import PG_HOST_URL, create_database, drop_database, load_average, new_tag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="calls of the rate-limited step (one per workflow)")
    parser.add_argument("--rate", type=int, default=20, help="the step's limit, per second")
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis")
    args = parser.parse_args()
    tag = new_tag("flow")
    database = create_database(tag)
    broker = "redis://127.0.0.1:6379/15" if args.broker == "redis" else "amqp://guest:guest@127.0.0.1:5672//"
    env = {
        "CD_BROKER": broker,
        "CD_DATABASE_URL": f"{PG_HOST_URL}/{database}",
        "CD_QUEUE": f"{tag}-q",
        "CD_PREFIX": f"t{uuid.uuid4().hex[:10]}_",
        "CD_COUNTER_DIR": tempfile.gettempdir(),
        "CD_RATE": f"{args.rate}/s",
    }
    os.environ.update(env)
    import tests.apps.rateapp as rateapp

    rateapp.durable.store.migrate()
    workers: list[Worker] = []
    try:
        workers = [Worker(env, concurrency=2, app="tests.apps.rateapp", log=Path(tempfile.gettempdir()) / f"{tag}-{i}.log").start() for i in range(2)]
        began = time.time()
        handles = [rateapp.one_call.start(i) for i in range(args.n)]
        starts = [h.result(timeout=600) for h in handles]
        ended = time.time()
        span = max(starts) - min(starts)
        ideal = (args.n - 1) / args.rate
        window = most_in_a_window(starts, 1.0)
        print(f"cores {os.cpu_count()}, {load_average()}")
        print(f"{args.n} calls at {args.rate}/s on {args.broker}: first to last start {span:.2f} s, ideal {ideal:.2f} s "
              f"-> {span / ideal:.3f}x (goal <= 1.1x)")
        print(f"most starts in a window of 1 s: {window} (goal: {args.rate})")
        print(f"first start() to last result: {ended - began:.2f} s")
        print("JSON " + json.dumps({"n": args.n, "rate": args.rate, "broker": args.broker, "span": span, "ideal": ideal,
                                    "ratio": span / ideal, "max_window": window, "total": ended - began}))
    finally:
        for worker in workers:
            worker.stop()
        try:
            with rateapp.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(env["CD_QUEUE"])
        except Exception:
            pass
        rateapp.durable.store.close()
        drop_database(database)


if __name__ == "__main__":
    main()
