"""Concurrency parts of the store contract: locks that die with their process, and the no-lost-wake-up race.

Run on both backends through the parametrised ``store`` fixture.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from celery_durable.store import Dispatch, SendResult, StepRecord, Suspended, WorkflowStatus

from .conftest import T0, Harness, event_wait, eventually, recv, step, store_url

ROOT = Path(__file__).resolve().parents[2]

_HOLDER = """
import sys, time
from celery_durable.store import StepRecord, open_store
url, prefix, wid = sys.argv[1:4]
store = open_store(url, prefix)
lease = store.acquire(wid)
if lease is None or store.begin(lease, 0, 1000000.0) is None:
    print("busy", flush=True)
    sys.exit(1)
store.record_step(lease, StepRecord(wid, 1, "step1", "step", '"done"', None, None, 1000000.0, 1000000.0))
print("held", flush=True)
time.sleep(600)
"""


def test_a_lock_held_by_a_killed_process_is_released(h: Harness) -> None:
    store = h.store
    h.create("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, store_url(store), store.prefix, "w"],  # type: ignore[attr-defined]
        stdout=subprocess.PIPE,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        assert h.acquire("w") is None  # held by the other process
        wf = store.get_workflow("w")
        assert wf is not None and wf.status is WorkflowStatus.RUNNING
        assert store.sweep(T0 + 3600, 300, 30) == []  # a live holder is never swept
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    # The kernel closes the dead process's file (SQLite flock) or socket (PostgreSQL session);
    # PostgreSQL notices the closed socket on its own, so give it a moment (not a timing assertion).
    lease = eventually(lambda: h.acquire("w"))
    assert lease is not None
    h.release(lease)
    # The workflow it left RUNNING is what the sweep recovers; the finished step stays recorded.
    dispatches = store.sweep(T0 + 1, 300, 30)
    assert dispatches == [Dispatch("w", "wf", "q", 1, 0.0)]
    lease = h.acquire("w")
    assert lease is not None
    execution = store.begin(lease, 1, T0 + 2)
    assert execution is not None and execution.steps[1].output == '"done"'


def test_no_lost_wakeup_between_wait_and_send(h: Harness) -> None:
    """Invariant (no lost wake-up, no duplicate): when a workflow decides to wait on topic t while a
    message is sent to it on t, exactly one of two things happens -- the wait sees the message and
    records it as its checkpoint (and the send returns no wake-up), or the wait is recorded first and
    the send returns exactly one wake-up dispatch (whose ticket is the workflow's current one, and
    which then receives the message). Never neither (the workflow would sleep until its timeout with a
    message in its queue) and never both (a spurious execution).
    """
    store = h.store
    rounds = 200
    barrier = threading.Barrier(2)
    outcomes: Counter[str] = Counter()

    def wait(lease: object, now: float) -> StepRecord | Suspended:
        barrier.wait(30)
        return store.wait_step(lease, recv(1, "t", timeout=60, now=now))  # type: ignore[arg-type]

    def send(wid: str, payload: str, now: float) -> SendResult:
        barrier.wait(30)
        return store.send(wid, "t", payload, now)

    with ThreadPoolExecutor(2) as pool:
        for i in range(rounds):
            wid, payload, now = f"race-{i}", f'"m{i}"', T0 + i
            lease = h.running(wid, now=now)
            waited = pool.submit(wait, lease, now)
            sent = pool.submit(send, wid, payload, now)
            result, send_result = waited.result(60), sent.result(60)
            got = isinstance(result, StepRecord)
            assert send_result.created
            assert len(send_result.wakeups) <= 1
            woke = len(send_result.wakeups) == 1
            assert got != woke, f"round {i}: checkpoint={result!r} wakeups={send_result.wakeups!r}"
            wf = store.get_workflow(wid)
            assert wf is not None
            if got:
                outcomes["wait saw the message"] += 1
                assert result.output == payload  # type: ignore[union-attr]
                assert wf.status is WorkflowStatus.RUNNING
            else:
                outcomes["send woke the waiter"] += 1
                assert isinstance(result, Suspended)
                assert wf.status is WorkflowStatus.PENDING
                assert wf.ticket == send_result.wakeups[0].ticket
                assert store.begin(lease, send_result.wakeups[0].ticket, now) is not None
                again = store.wait_step(lease, recv(1, "t", timeout=60, now=now))
                assert isinstance(again, StepRecord) and again.output == payload
            h.release(lease)
    assert sum(outcomes.values()) == rounds


def test_many_concurrent_senders_to_one_waiter_wake_it_exactly_once(h: Harness) -> None:
    """Invariant: whatever the interleaving of one wait and N sends on its topic, the workflow gets
    exactly one way forward -- the wait's checkpoint or exactly one wake-up among all N sends -- and
    every one of the N messages is stored (one consumed by the wait or waiting in the queue).
    """
    store = h.store
    senders = 6
    rounds = 60
    barrier = threading.Barrier(senders + 1)

    def wait(lease: object, now: float) -> StepRecord | Suspended:
        barrier.wait(30)
        return store.wait_step(lease, recv(1, "t", timeout=60, now=now))  # type: ignore[arg-type]

    def send(wid: str, payload: str, now: float) -> SendResult:
        barrier.wait(30)
        return store.send(wid, "t", payload, now)

    with ThreadPoolExecutor(senders + 1) as pool:
        for i in range(rounds):
            wid, now = f"many-{i}", T0 + i
            lease = h.running(wid, now=now)
            waited = pool.submit(wait, lease, now)
            sent = [pool.submit(send, wid, f'"m{i}-{k}"', now) for k in range(senders)]
            result = waited.result(60)
            results = [f.result(60) for f in sent]
            wakeups = [d for r in results for d in r.wakeups]
            got = isinstance(result, StepRecord)
            assert int(got) + len(wakeups) == 1, f"round {i}: checkpoint={result!r} wakeups={wakeups!r}"
            # FIFO: a received message is the oldest one
            by_seq = sorted(results, key=lambda r: r.seq)
            payloads = {r.seq: f'"m{i}-{k}"' for k, r in enumerate(results)}
            ordered = [payloads[r.seq] for r in by_seq]
            if got:
                assert result.output == ordered[0]  # type: ignore[union-attr]
                remaining = ordered[1:]
            else:
                wf = store.get_workflow(wid)
                assert wf is not None and wf.status is WorkflowStatus.PENDING and wf.ticket == wakeups[0].ticket
                assert store.begin(lease, wakeups[0].ticket, now) is not None
                remaining = ordered
            assert h.drain(lease, "t", 2, now=now) == remaining
            h.release(lease)


def test_no_lost_wakeup_between_event_wait_and_set_event(h: Harness) -> None:
    """Invariant, for events: a workflow deciding to wait on event k of W while W sets k either sees
    the value (checkpoint, no wake-up) or is woken by exactly that set_event -- never neither, never both.
    """
    store = h.store
    rounds = 100
    barrier = threading.Barrier(2)

    def wait(lease: object, target: str, now: float) -> StepRecord | Suspended:
        barrier.wait(30)
        return store.wait_step(lease, event_wait(1, target, "k", timeout=60, now=now))  # type: ignore[arg-type]

    def set_event(lease: object, wid: str, now: float) -> list[Dispatch]:
        barrier.wait(30)
        return store.set_event(lease, "k", '"v"', step(wid, 1, output="null", kind="set_event", ended_at=now))  # type: ignore[arg-type]

    with ThreadPoolExecutor(2) as pool:
        for i in range(rounds):
            now = T0 + i
            setter = h.running(f"setter-{i}", now=now)
            waiter = h.running(f"waiter-{i}", now=now)
            waited = pool.submit(wait, waiter, setter.workflow_id, now)
            set_ = pool.submit(set_event, setter, setter.workflow_id, now)
            result, wakeups = waited.result(60), set_.result(60)
            got = isinstance(result, StepRecord)
            assert int(got) + len(wakeups) == 1, f"round {i}: checkpoint={result!r} wakeups={wakeups!r}"
            if got:
                assert result.output == '"v"'  # type: ignore[union-attr]
            else:
                assert wakeups[0].workflow_id == waiter.workflow_id
                assert store.get_workflow(waiter.workflow_id).ticket == wakeups[0].ticket  # type: ignore[union-attr]
            h.release(setter)
            h.release(waiter)


def test_acquire_from_many_threads_has_one_winner(h: Harness) -> None:
    """Exclusive execution: of N threads (each with its own store instance) racing for one lock, one wins."""
    threads = 6
    stores = [h.other_store() for _ in range(threads)]
    barrier = threading.Barrier(threads)
    for i in range(20):
        wid = f"lock-{i}"

        def take(s: object, wid: str = wid) -> object:
            barrier.wait(30)
            return s.acquire(wid)  # type: ignore[attr-defined]

        with ThreadPoolExecutor(threads) as pool:
            leases = list(pool.map(take, stores))
        won = [(s, lease) for s, lease in zip(stores, leases) if lease is not None]
        assert len(won) == 1
        won[0][0].release(won[0][1])  # type: ignore[attr-defined]


def test_concurrent_create_workflow_creates_once(h: Harness) -> None:
    threads = 6
    barrier = threading.Barrier(threads)

    def create(k: int) -> tuple[object, bool]:
        barrier.wait(30)
        return h.store.create_workflow("same-id", f"name-{k}", f'["{k}"]', None, T0 + k)

    for _ in range(3):
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(create, range(threads)))
        assert sum(created for _, created in results) <= 1
        records = {record for record, _ in results}
        assert len(records) == 1
        assert h.store.get_workflow("same-id") in records
    assert len(h.store.list_workflows()) == 1


def test_concurrent_sends_with_one_idempotency_key_store_one_message(h: Harness) -> None:
    threads = 6
    barrier = threading.Barrier(threads)
    lease = h.running("w")

    def send(k: int) -> SendResult:
        barrier.wait(30)
        return h.store.send("w", "t", f'"m{k}"', T0, idempotency_key="once")

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(send, range(threads)))
    assert sum(r.created for r in results) == 1
    assert len({r.seq for r in results}) == 1
    assert len(h.drain(lease, "t", 1)) == 1


def test_concurrent_sweeps_dispatch_each_workflow_once(h: Harness) -> None:
    """Two recoverers sweeping at once (two workers starting) claim each lost workflow exactly once."""
    store = h.store
    for i in range(20):
        h.create(f"lost-{i}", now=T0)
    for i in range(5):
        h.release(h.running(f"dead-{i}", now=T0))
    threads = 3
    barrier = threading.Barrier(threads)

    def sweep(_: int) -> list[Dispatch]:
        barrier.wait(30)
        return store.sweep(T0 + 100, 300, 30)

    with ThreadPoolExecutor(threads) as pool:
        dispatches = [d for result in pool.map(sweep, range(threads)) for d in result]
    ids = sorted(d.workflow_id for d in dispatches)
    assert ids == sorted([f"lost-{i}" for i in range(20)] + [f"dead-{i}" for i in range(5)])
    for d in dispatches:
        wf = store.get_workflow(d.workflow_id)
        assert wf is not None and wf.status is WorkflowStatus.PENDING and wf.ticket == d.ticket
