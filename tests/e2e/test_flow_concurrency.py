"""Concurrency limits on real parts: ``celery worker`` processes (tests/apps/concapp.py) on Redis and
RabbitMQ, the store on PostgreSQL. Everything is measured from the times the workflows record
themselves (a step stamps the start, another the end), never from how long the test waited.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from celery_durable import WorkflowStatus
from tests.services import Worker, wait_for

KEYS, LIMIT = [f"k{i}" for i in range(5)], 2


@pytest.fixture
def flowapp(e2e_env: dict[str, str]) -> Iterator[Any]:
    """tests.apps.concapp configured by *e2e_env* in this (producer) process."""
    saved = {key: os.environ.get(key) for key in e2e_env}
    os.environ.update(e2e_env)
    try:
        import tests.apps.concapp as module

        module = importlib.reload(module)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield module
    finally:
        try:
            with module.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(e2e_env["CD_QUEUE"])
        except Exception:
            pass
        module.durable.close()


class Releaser(threading.Thread):
    """Sends "go" to every hold workflow waiting in recv, as a producer answering it would."""

    def __init__(self, module: Any) -> None:
        super().__init__(daemon=True)
        self.module = module
        self.done = threading.Event()

    def run(self) -> None:
        durable = self.module.durable
        while not self.done.wait(0.1):
            for r in durable.list_workflows(WorkflowStatus.WAITING, name=self.module.hold.name, limit=500):
                if r.wait_kind == "recv":
                    durable.send(r.workflow_id, "go", topic="go", idempotency_key="go")


def held(module: Any) -> dict[str, list[tuple[int, float, float]]]:
    """Per key: (seq, start, end) of each workflow, once (a step cut by a kill may report twice)."""
    seen: dict[tuple[str, int], tuple[float, float]] = {}
    for key, seq, start, end in module.marks("held"):
        seen.setdefault((key, seq), (start, end))
    by_key: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for (key, seq), (start, end) in seen.items():
        by_key[key].append((seq, start, end))
    return by_key


def max_overlap(intervals: list[tuple[int, float, float]]) -> int:
    events = sorted([(s, 1) for _, s, _ in intervals] + [(e, -1) for _, _, e in intervals], key=lambda x: (x[0], x[1]))
    now = peak = 0
    for _, delta in events:
        now += delta
        peak = max(peak, now)
    return peak


def test_at_most_two_per_key_in_start_order_through_a_kill(flowapp: Any, e2e_env: dict[str, str]) -> None:
    """300 workflows over 5 keys, concurrency=2 per key, each holding its slot 50-200 ms (every 7th also
    waits in recv for a message the test sends); a pool child is killed with SIGKILL in the middle."""
    module = flowapp
    workers = [Worker(e2e_env, concurrency=4, app="tests.apps.concapp").start() for _ in range(2)]
    releaser = Releaser(module)
    releaser.start()
    try:
        handles = [
            module.hold.start(KEYS[seq % 5], seq, 50 + (seq * 37) % 151, wait=seq % 7 == 0) for seq in range(300)
        ]
        wait_for(lambda: len(module.marks("held")) >= 100, timeout=300, what="a third of the workflows")
        victim = wait_for(lambda: workers[0].children(), what="a pool process")[0]
        os.kill(victim, signal.SIGKILL)
        for seq, h in enumerate(handles):
            assert h.result(timeout=600) == seq
    finally:
        releaser.done.set()
        for w in workers:
            w.stop()
    by_key = held(module)
    assert sorted(by_key) == KEYS and sum(len(v) for v in by_key.values()) == 300
    for key, intervals in by_key.items():
        assert max_overlap(intervals) == LIMIT, f"{key}: never more than {LIMIT} at once, and the limit is used"
        # FIFO: a workflow admitted later starts before an earlier one of its key only when both were
        # admitted into the two slots at the same time, so it passes at most LIMIT - 1 of them.
        starts = sorted(intervals, key=lambda x: x[1])
        for rank, (seq, _, _) in enumerate(starts):
            passed = sum(1 for other, _, _ in starts[rank + 1 :] if other < seq)
            assert passed <= LIMIT - 1, f"{key}: workflow {seq} started before {passed} earlier ones"
    store = module.durable.store
    assert all(store.flow_slots(f"{module.hold.name}[{key}]") == [] for key in KEYS), "no slot left"


def test_queued_workflows_hold_no_worker(flowapp: Any, e2e_env: dict[str, str]) -> None:
    """A worker with -c 1: two workflows hold both slots of a key (waiting in recv), 50 more wait for
    admission; a plain Celery task still runs before any of the 50, which then all run."""
    module = flowapp
    durable = module.durable
    with_worker = Worker(e2e_env, concurrency=1, app="tests.apps.concapp").start()
    try:
        holders = [module.hold.start("busy", seq, 50, wait=True) for seq in range(2)]
        wait_for(lambda: all(h.status() is WorkflowStatus.WAITING for h in holders), timeout=60, what="the holders")
        queued = [module.hold.start("busy", seq, 50) for seq in range(2, 52)]
        assert {h.status() for h in queued} == {WorkflowStatus.ENQUEUED}
        records = durable.list_workflows(WorkflowStatus.ENQUEUED, limit=100)
        assert len(records) == 50 and all(r.dispatched_at is None and r.timer_due is None for r in records)
        module.ping.delay(1)
        wait_for(lambda: module.marks("ping"), timeout=60, what="the plain task")
        for h in holders:
            durable.send(h.workflow_id, "go", topic="go")
        for h in queued:
            h.result(timeout=300)
    finally:
        with_worker.stop()
    ((_, pinged_at),) = module.marks("ping")
    starts = {seq: start for seq, start, _ in held(module)["busy"]}
    assert len(starts) == 52
    assert pinged_at < min(starts[seq] for seq in range(2, 52)), "the plain task ran while all 50 waited"
    assert max_overlap(held(module)["busy"]) <= LIMIT
