"""The Celery app of tests/e2e/test_schedules.py (flow control: schedules).

Configured from the environment like tests/apps/wfapp.py (CD_BROKER, CD_DATABASE_URL, CD_QUEUE,
CD_PREFIX, CD_COUNTER_DIR). It registers one schedule at import, as user code does: CD_SCHED_EVERY
seconds (default 2), CD_SCHED_CATCHUP seconds of catch-up (unset: none); CD_SWEEP=off turns the
workers' sweep and tick driver off. Beat, when started on this
app, drives the ticks too (``durable.beat_schedule()``). Each run appends its id, its
``scheduled_for`` and its start time to the counter file "runs".
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta

from celery import Celery

from celery_durable import Durable

app = Celery("schedapp", broker=os.environ.get("CD_BROKER", "redis://127.0.0.1:6379/9"))
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
    # CD_SWEEP=off: the workers neither sweep nor drive ticks, so only beat does.
    sweep_interval=None if os.environ.get("CD_SWEEP") == "off" else 2.0,
)
app.conf.beat_schedule = durable.beat_schedule(every=30.0, ticks_every=1.0)
COUNTER_DIR = os.environ.get("CD_COUNTER_DIR", "/tmp")


@durable.step()
def note_run(workflow_id: str) -> None:
    scheduled = durable.management.get(workflow_id).scheduled_for
    line = {"id": workflow_id, "scheduled_for": scheduled.timestamp() if scheduled else None, "at": time.time()}
    fd = os.open(os.path.join(COUNTER_DIR, "runs"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


@durable.workflow()
def report(label: str) -> str:
    wid = durable.workflow_id
    assert wid is not None
    note_run(wid)
    return label


catchup = os.environ.get("CD_SCHED_CATCHUP")
durable.schedule(
    "every",
    report,
    float(os.environ.get("CD_SCHED_EVERY", "2")),
    args=("tick",),
    overlap="allow",
    catchup=timedelta(seconds=float(catchup)) if catchup else None,
)
