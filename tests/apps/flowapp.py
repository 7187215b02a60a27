"""The Celery app of tests/e2e/test_dedup.py (flow control: deduplication).

Configured from the environment like tests/apps/wfapp.py (CD_BROKER, CD_DATABASE_URL, CD_QUEUE,
CD_PREFIX, CD_COUNTER_DIR). Workflow bodies append what they ran to a counter file, one JSON line
per run, so a test sees how many bodies ran and with which arguments.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from celery_durable import Durable
from tests.apps import journal

app = Celery("flowapp", broker=os.environ.get("CD_BROKER", "redis://127.0.0.1:6379/9"))
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
    journal.mark(COUNTER_DIR, name, value)


def marks(name: str) -> list[Any]:
    return journal.marks(COUNTER_DIR, name)


@durable.step()
def note(tag: Any) -> Any:
    mark("ran", tag)
    return tag


@durable.workflow()
def held(tag: Any) -> Any:
    """Runs its step, then holds (WAITING) until it receives "go"."""
    note(tag)
    durable.recv("go", timeout=None)
    return tag
