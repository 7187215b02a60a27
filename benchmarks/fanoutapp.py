"""The Celery app of ``bench_fanout``: the same fan-out/fan-in as a Celery chord and as a durable map.

BENCH_TAG, BENCH_REDIS, BENCH_DATABASE_URL, BENCH_PREFIX, BENCH_SWEEP, BENCH_GRACE, BENCH_READY_FILE:
as in ``benchapp``. Redis is the broker *and* the chord's result backend. Every task body (a chord
header task, the chord body, a durable child's or parent's execution) increments a Redis counter of
its kind, so both sides pay the same extra round trip and the driver counts executions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready

from celery_durable import Durable

TAG = os.environ.get("BENCH_TAG", "bench")
REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/15")

app = Celery("fanoutapp", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_default_queue=f"{TAG}-q",
    result_expires=3600,
)
_sweep = os.environ.get("BENCH_SWEEP", "30")
durable = Durable(
    app,
    os.environ.get("BENCH_DATABASE_URL"),
    table_prefix=os.environ.get("BENCH_PREFIX", "bench_"),
    sweep_interval=None if _sweep == "none" else float(_sweep),
    recovery_grace=float(os.environ.get("BENCH_GRACE", "120")),
)
_redis: dict[int, redis.Redis] = {}


def count(kind: str) -> None:
    pid = os.getpid()
    if pid not in _redis:  # one client per (forked) process
        _redis.clear()
        _redis[pid] = redis.Redis.from_url(REDIS_URL)
    _redis[pid].incr(f"bench:{TAG}:{kind}")


@app.task
def square(i: int) -> int:
    count("chord_task")
    return i * i


@app.task
def total(values: list[int]) -> int:
    count("chord_body")
    return sum(values)


@durable.workflow()
def square_wf(i: int) -> int:
    count("durable_child")
    return i * i


@durable.workflow()
def fan_in(n: int) -> int:
    count("durable_parent")
    return sum(durable.map(square_wf, range(n)))


def _ready(**_: Any) -> None:
    if os.environ.get("BENCH_READY_FILE"):  # the driver waits for this file (see _common.Worker)
        Path(os.environ["BENCH_READY_FILE"]).write_text(str(os.getpid()))


worker_ready.connect(_ready, weak=False)
