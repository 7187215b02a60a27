"""The Celery app of tests/e2e/test_celery_results.py: workflows next to plain tasks, with a result backend.

Configured from the environment like tests/apps/wfapp.py (CD_BROKER, CD_DATABASE_URL, CD_QUEUE,
CD_PREFIX, CD_COUNTER_DIR) plus CD_RESULT_BACKEND (unset: no result backend at all) and
CD_TRACK_STARTED. Plain tasks append what they received to a counter file, one JSON line per call.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from celery_durable import Durable
from tests.apps import journal

app = Celery("resultapp", broker=os.environ.get("CD_BROKER", "redis://127.0.0.1:6379/9"))
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    task_default_queue=os.environ.get("CD_QUEUE", "celery"),
    result_backend=os.environ.get("CD_RESULT_BACKEND") or None,
    task_track_started=os.environ.get("CD_TRACK_STARTED") == "1",
    result_extended=True,
    worker_send_task_events=os.environ.get("CD_EVENTS") == "1",
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
def reserve(order: str) -> str:
    mark("reserve", order)
    return f"reserved {order}"


@durable.workflow()
def pay(order: str, timeout: float = 60) -> dict[str, Any]:
    """Waits for a "paid" message; fails when the message says "decline"."""
    reserved = reserve(order)
    status = durable.recv("paid", timeout=timeout)
    if status == "decline":
        raise ValueError(f"payment of {order} declined")
    return {"order": order, "reserved": reserved, "status": status}


@durable.workflow()
def quick(x: int) -> int:
    return x * 10


@app.task(shared=False)
def collect(value: Any, name: str = "collect") -> Any:
    mark(name, value)
    return value


@app.task(shared=False)
def summarize(values: list[Any]) -> list[Any]:
    mark("summarize", values)
    return values


@app.task(shared=False)
def on_error(request: Any, exc: BaseException, traceback: Any) -> None:
    mark("errback", {"id": request.id, "error": f"{type(exc).__name__}: {exc}"})
