"""The Celery app of tests/e2e/test_flow_concurrency.py: workflows with concurrency limits, and a plain task.

Configured from the environment like tests/apps/wfapp.py (CD_BROKER, CD_DATABASE_URL, CD_QUEUE,
CD_PREFIX, CD_COUNTER_DIR). Each workflow records, from inside itself, when it held its slot: a step
stamps its start, another its end, and a last one appends ``[key, seq, start, end]`` to a counter file.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

from celery_durable import Durable

app = Celery("concapp", broker=os.environ.get("CD_BROKER", "redis://127.0.0.1:6379/9"))
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    task_default_queue=os.environ.get("CD_QUEUE", "celery"),
)
durable = Durable(
    app,
    os.environ.get("CD_DATABASE_URL"),
    table_prefix=os.environ.get("CD_PREFIX", "durable_"),
    sweep_interval=2.0,
)
COUNTER_DIR = os.environ.get("CD_COUNTER_DIR", "/tmp")


def mark(name: str, value: Any) -> None:
    """Append *value* as one JSON line to the counter file *name* (O_APPEND: one write per line)."""
    fd = os.open(os.path.join(COUNTER_DIR, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(value) + "\n").encode())
    finally:
        os.close(fd)


def marks(name: str) -> list[Any]:
    path = os.path.join(COUNTER_DIR, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


@durable.step()
def stamp() -> float:
    return time.time()


@durable.step()
def work(ms: int) -> None:
    time.sleep(ms / 1000)


@durable.step()
def report(key: str, seq: int, start: float, end: float) -> None:
    mark("held", [key, seq, start, end])


@durable.workflow(concurrency=2, concurrency_key="key")
def hold(key: str, seq: int, ms: int, wait: bool = False) -> int:
    """Holds a slot of *key* for *ms* (and, with *wait*, until a "go" message comes)."""
    start = stamp()
    if wait:
        durable.recv("go", timeout=120)
    work(ms)
    report(key, seq, start, stamp())
    return seq


@app.task(shared=False)
def ping(n: int) -> int:
    mark("ping", [n, time.time()])
    return n
