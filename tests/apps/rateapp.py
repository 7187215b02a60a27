"""The Celery app of tests/e2e/test_rate.py and benchmarks/bench_flow.py: rate-limited steps and workflows.

Configured from the environment like tests/apps/wfapp.py (CD_BROKER, CD_DATABASE_URL, CD_QUEUE,
CD_PREFIX) plus CD_RATE (the step's and the workflow's limit, default ``20/s``).
"""

from __future__ import annotations

import os
import time

from celery import Celery

from celery_durable import Durable

RATE = os.environ.get("CD_RATE", "20/s")

app = Celery("rateapp", broker=os.environ.get("CD_BROKER", "redis://127.0.0.1:6379/9"))
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


@durable.step(rate_limit=RATE)
def call_api(i: int) -> float:
    """The rate-limited call: returns when it started (the workflow records it)."""
    return time.time()


@durable.workflow()
def one_call(i: int) -> float:
    return call_api(i)


@durable.step(rate_limit=RATE, rate_key="account")
def charge(account: str, i: int) -> float:
    return time.time()


@durable.workflow()
def charge_twice(account: str, i: int) -> list[float]:
    return [charge(account, i), charge(account, i + 1000)]


@durable.workflow(rate_limit=RATE)
def admitted(i: int) -> float:
    """A workflow whose admission is rate-limited: its body records when it first ran."""
    return durable_start_time()


@durable.step()
def durable_start_time() -> float:
    return time.time()
