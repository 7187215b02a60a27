"""Concurrency limits in the store contract (sql_concurrency.py), on SQLite and PostgreSQL.

The invariant: a key never has more than its limit of slots, a slot exists exactly while its workflow
is admitted and unfinished (never leaked, never granted twice), and the ENQUEUED of a key are
admitted in order (priority, then start order).
"""

from __future__ import annotations

import queue
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from celery_durable import ConcurrencyLimitExceeded
from celery_durable.store import Dispatch, FlowLimit, Store, WorkflowStatus

from .conftest import T0, Harness

S = WorkflowStatus


def start(store: Store, wid: str, flow: FlowLimit, now: float = T0) -> WorkflowStatus:
    record, created = store.create_workflow(wid, "wf", "[]", "q", now, flow=flow)
    assert created and record.flow_key == flow.key and record.priority == flow.priority
    return record.status


def finish(h: Harness, wid: str, ticket: int, now: float = T0) -> list[Dispatch]:
    lease = h.acquire(wid)
    assert lease is not None
    assert h.store.begin(lease, ticket, now) is not None
    wakeups = h.store.finish(lease, S.SUCCESS, '"ok"', None, now)
    h.release(lease)
    return wakeups


def status(store: Store, wid: str) -> WorkflowStatus:
    record = store.get_workflow(wid)
    assert record is not None
    return record.status


def test_admits_up_to_the_limit_then_enqueues(h: Harness) -> None:
    flow = FlowLimit("wf:a", 2)
    assert [start(h.store, w, flow, T0 + i) for i, w in enumerate("abcd")] == [S.PENDING, S.PENDING, S.ENQUEUED, S.ENQUEUED]
    assert h.store.flow_slots("wf:a") == ["a", "b"]
    # Another key has its own slots.
    assert start(h.store, "x", FlowLimit("wf:b", 2)) is S.PENDING
    assert h.store.list_workflows(S.ENQUEUED) and {r.workflow_id for r in h.store.list_workflows(S.ENQUEUED)} == {"c", "d"}


def test_a_finish_admits_the_next_in_start_order_and_returns_its_message(h: Harness) -> None:
    flow = FlowLimit("k", 1)
    for i, w in enumerate(["a", "c", "b"]):  # ids out of order: start order decides
        start(h.store, w, flow, T0 + i)
    wakeups = finish(h, "a", 0, T0 + 10)
    assert [(d.workflow_id, d.ticket) for d in wakeups] == [("c", 1)]
    assert status(h.store, "c") is S.PENDING and status(h.store, "b") is S.ENQUEUED
    assert h.store.flow_slots("k") == ["c"]
    assert [d.workflow_id for d in finish(h, "c", 1, T0 + 11)] == ["b"]
    assert finish(h, "b", 1, T0 + 12) == []
    assert h.store.flow_slots("k") == []


def test_priority_goes_first_then_start_order(h: Harness) -> None:
    start(h.store, "holder", FlowLimit("k", 1))
    start(h.store, "late", FlowLimit("k", 1, priority=5), T0 + 1)
    start(h.store, "urgent", FlowLimit("k", 1, priority=-1), T0 + 2)
    start(h.store, "normal", FlowLimit("k", 1), T0 + 3)
    order = []
    wid, ticket = "holder", 0
    while True:
        wakeups = finish(h, wid, ticket)
        if not wakeups:
            break
        wid, ticket = wakeups[0].workflow_id, wakeups[0].ticket
        order.append(wid)
    assert order == ["urgent", "normal", "late"]


def test_cancel_newest_refuses_and_stores_nothing(h: Harness) -> None:
    flow = FlowLimit("k", 1, strategy="cancel_newest")
    start(h.store, "a", flow)
    with pytest.raises(ConcurrencyLimitExceeded, match="cancel_newest"):
        h.store.create_workflow("b", "wf", "[]", "q", T0, flow=flow)
    assert h.store.get_workflow("b") is None
    finish(h, "a", 0)
    assert start(h.store, "b", flow) is S.PENDING  # the slot is free again


@pytest.mark.parametrize("strategy", ["queue", "cancel_newest", "cancel_in_progress"])
def test_a_repeated_start_returns_the_existing_workflow_and_changes_nothing(h: Harness, strategy: str) -> None:
    flow = FlowLimit("k", 1, strategy=strategy)
    start(h.store, "a", flow)
    again, created = h.store.create_workflow("a", "wf", "[]", "q", T0 + 1, flow=flow)
    assert not created and again.workflow_id == "a" and again.status is S.PENDING
    assert h.store.flow_slots("k") == ["a"]


def test_cancel_in_progress_cancels_the_oldest_holder_and_admits_the_new_one(h: Harness) -> None:
    flow = FlowLimit("k", 2, strategy="cancel_in_progress")
    start(h.store, "old", flow, T0)
    start(h.store, "mid", flow, T0 + 1)
    assert start(h.store, "new", flow, T0 + 2) is S.PENDING
    assert status(h.store, "old") is S.CANCELLED and status(h.store, "mid") is S.PENDING
    assert h.store.flow_slots("k") == ["mid", "new"]


def test_cancel_frees_the_slot_and_admits_the_next(h: Harness) -> None:
    flow = FlowLimit("k", 1)
    start(h.store, "a", flow)
    start(h.store, "b", flow, T0 + 1)
    start(h.store, "c", flow, T0 + 2)
    record, wakeups = h.store.cancel_tree("c", T0 + 3)  # an ENQUEUED one: cancelled, frees nothing
    assert record is not None and record.status is S.CANCELLED and wakeups == []
    record, wakeups = h.store.cancel_tree("a", T0 + 3)
    assert record is not None and record.status is S.CANCELLED
    assert [d.workflow_id for d in wakeups] == ["b"] and h.store.flow_slots("k") == ["b"]


def test_a_timeout_by_the_sweep_frees_the_slot(h: Harness) -> None:
    flow = FlowLimit("k", 1)
    h.store.create_workflow("a", "wf", "[]", "q", T0, timeout_at=T0 + 5, flow=flow)
    start(h.store, "b", flow, T0 + 1)
    dispatches = h.store.sweep(T0 + 10, 300, 30)
    assert status(h.store, "a") is S.CANCELLED
    assert [d.workflow_id for d in dispatches if d.workflow_id == "b"] == ["b"]
    assert h.store.flow_slots("k") == ["b"]


def test_a_raised_limit_is_filled_by_the_sweep(h: Harness) -> None:
    start(h.store, "a", FlowLimit("k", 1))
    start(h.store, "b", FlowLimit("k", 1), T0 + 1)
    # A deploy raised the limit: the new start queues behind "b" (FIFO), the sweep fills the new slots.
    assert start(h.store, "c", FlowLimit("k", 3, priority=-1), T0 + 2) is S.ENQUEUED
    assert sorted(d.workflow_id for d in h.store.sweep(T0 + 3, 300, 30)) == ["b", "c"]
    assert h.store.flow_slots("k") == ["a", "b", "c"]
    assert h.store.admit_enqueued(T0 + 4) == []


def test_admission_of_a_workflow_started_without_its_limit(h: Harness) -> None:
    flow = FlowLimit("k", 1)
    first = h.running("a")  # started by name: the row has no key yet
    assert h.store.admit_started(first, flow, T0) == "admitted"
    assert h.store.admit_started(first, flow, T0) == "admitted"  # decided once: the row has its key
    second = h.running("b", now=T0 + 1)
    assert h.store.admit_started(second, flow, T0 + 1) == "enqueued"
    record = h.store.get_workflow("b")
    assert record is not None and record.status is S.ENQUEUED and record.ticket == 1
    h.release(second)
    assert h.store.admit_started(h.running("c"), FlowLimit("k", 1, "cancel_newest"), T0) == "refused"
    wakeups = h.store.finish(first, S.SUCCESS, '"ok"', None, T0 + 2)
    assert [(d.workflow_id, d.ticket) for d in wakeups] == [("b", 2)]
    assert h.store.flow_slots("k") == ["b"]


def test_resume_goes_through_admission_again(h: Harness) -> None:
    flow = FlowLimit("k", 1)
    start(h.store, "a", flow)
    h.store.cancel_tree("a", T0 + 1)
    record, dispatch = h.store.resume("a", 1, None, T0 + 2)
    assert record is not None and record.flow_key is None and dispatch is not None
    assert h.store.flow_slots("k") == []


def test_a_cancelled_parent_frees_its_childrens_slots(h: Harness) -> None:
    parent = h.running("p")
    from celery_durable.store.child_records import ChildSpec

    from .conftest import step

    h.store.start_children(parent, [ChildSpec("child", "wf", "[]", "q")], step("p", 1, kind="start"))
    child = h.acquire("child")
    assert child is not None and h.store.begin(child, 0, T0) is not None
    assert h.store.admit_started(child, FlowLimit("k", 1), T0) == "admitted"
    h.release(child)
    start(h.store, "next", FlowLimit("k", 1), T0 + 1)
    _, wakeups = h.store.cancel_tree("p", T0 + 2)
    assert status(h.store, "child") is S.CANCELLED
    assert [d.workflow_id for d in wakeups] == ["next"] and h.store.flow_slots("k") == ["next"]


# -- the race hammer ---------------------------------------------------------------------------------
KEYS, LIMIT, PER_KEY = ("k0", "k1", "k2"), 2, 40


def test_hammer_never_more_than_the_limit_and_no_slot_leaked(h: Harness) -> None:
    """Threads start (with the limit, or by name and admitted at the first execution), run, finish and
    cancel workflows of three keys at once, with the sweep running too. A watcher reads the slots
    throughout; at the end every workflow finished, every one not cancelled ran, and no slot is left."""
    store = h.store
    others = [h.other_store() for _ in range(3)]
    broker: queue.Queue[Dispatch] = queue.Queue()
    running: dict[str, set[str]] = {k: set() for k in KEYS}
    guard = threading.Lock()
    violations: list[str] = []
    cancelled: set[str] = set()
    ran: set[str] = set()
    ids = [(f"{k}-{i:03d}", k) for i in range(PER_KEY) for k in KEYS]
    stop = threading.Event()

    def produce(part: int) -> None:
        s = others[part % len(others)]
        for wid, key in ids[part::4]:
            if random.random() < 0.25:  # started by name: admitted at its first execution
                s.create_workflow(wid, f"wf-{key}", "[]", "q", time.time())
                broker.put(Dispatch(wid, f"wf-{key}", "q", 0))
                continue
            record, _ = s.create_workflow(wid, f"wf-{key}", "[]", "q", time.time(), flow=FlowLimit(key, LIMIT))
            if record.status is S.PENDING:
                broker.put(Dispatch(wid, record.name, record.queue, record.ticket))

    def execute(s: Store) -> None:
        while not stop.is_set():
            try:
                d = broker.get(timeout=0.05)
            except queue.Empty:
                continue
            key = d.name.removeprefix("wf-")
            lease, execution = s.claim(d.workflow_id, d.ticket, time.time())
            if lease is None:
                broker.put(d)  # busy: try again
                continue
            try:
                if execution is None:
                    continue
                if execution.workflow.flow_key is None:
                    if s.admit_started(lease, FlowLimit(key, LIMIT), time.time()) != "admitted":
                        continue
                with guard:
                    running[key].add(d.workflow_id)
                    if len(running[key]) > LIMIT:
                        violations.append(f"{key} ran {sorted(running[key])} at once")
                time.sleep(random.random() * 0.005)
                with guard:
                    running[key].discard(d.workflow_id)
                    ran.add(d.workflow_id)
                for w in s.finish(lease, S.SUCCESS, '"ok"', None, time.time()):
                    broker.put(w)
            except Exception as exc:
                if "cancelled" not in str(exc):
                    violations.append(repr(exc))
            finally:
                s.release(lease)

    def cancel() -> None:
        for _ in range(20):
            wid, _key = random.choice(ids)
            try:
                record, wakeups = others[0].cancel_tree(wid, time.time())
            except Exception as exc:
                violations.append(repr(exc))
                continue
            if record is not None and record.status is S.CANCELLED:
                with guard:
                    cancelled.add(wid)
            for w in wakeups:
                broker.put(w)
            time.sleep(0.01)

    def watch() -> None:
        while not stop.is_set():
            for key in KEYS:
                held = store.flow_slots(key)
                if len(held) > LIMIT:
                    violations.append(f"{key} has {len(held)} slots: {held}")

    with ThreadPoolExecutor(12) as pool:
        watcher = pool.submit(watch)
        executors = [pool.submit(execute, s) for s in (store, *others)]
        for f in [*(pool.submit(produce, p) for p in range(4)), pool.submit(cancel)]:
            f.result()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            unfinished = store.list_workflows([S.PENDING, S.RUNNING, S.WAITING, S.ENQUEUED], limit=1)
            if not unfinished:
                break
            if broker.empty():
                for d in store.sweep(time.time() + 60, 300, 0):  # lost or stale: the sweep sends them again
                    broker.put(d)
            time.sleep(0.1)
        stop.set()
        watcher.result()
        for f in executors:
            f.result()
    assert violations == []
    assert store.list_workflows([S.PENDING, S.RUNNING, S.WAITING, S.ENQUEUED], limit=5) == []
    assert all(store.flow_slots(k) == [] for k in KEYS)
    records = {wid: store.get_workflow(wid) for wid, _ in ids}
    succeeded = {wid for wid, r in records.items() if r is not None and r.status is S.SUCCESS}
    assert succeeded <= ran and ran - succeeded <= cancelled  # a run cut by a cancel does not finish
    assert len(succeeded) + len(cancelled) == len(ids)
