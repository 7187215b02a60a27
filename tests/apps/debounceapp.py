"""The Celery app of tests/e2e/test_debounce.py (flow control: debouncing).

Configured from the environment like tests/apps/flowapp.py (CD_BROKER, CD_DATABASE_URL, CD_QUEUE,
CD_PREFIX, CD_COUNTER_DIR). The workflow's step records when its body started (the worker's clock),
so a test measures start times from what the workflows record, not from its own polling.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

from celery_durable import Durable

app = Celery("debounceapp", broker=os.environ.get("CD_BROKER", "redis://127.0.0.1:6379/9"))
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


def marks(name: str) -> list[Any]:
    path = os.path.join(COUNTER_DIR, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


@durable.step()
def stamp(key: str, tag: Any) -> dict[str, Any]:
    """Record (one JSON line) that the body of *key*'s round started with *tag*, and when."""
    value = {"key": key, "tag": tag, "at": time.time()}
    fd = os.open(os.path.join(COUNTER_DIR, "flushed"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(value) + "\n").encode())
    finally:
        os.close(fd)
    return value


@durable.workflow()
def flush(key: str, tag: Any) -> dict[str, Any]:
    """A debounced job: say, re-index a document once its edits have settled."""
    return stamp(key, tag)
