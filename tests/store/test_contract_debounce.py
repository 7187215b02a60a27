"""Debouncing in the store contract (``Store.debounce``), on SQLite and PostgreSQL.

Invariants, each hammered below by threads (calls racing the round's start) and by processes
(each opening its own store): one workflow per round; every call of a round gets the same id; a
round runs the inputs of its last call, so no call is lost (each call's inputs either ran or were
replaced by a later call of the same round); no round's deadline is past its first call + max_delay.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from celery_durable.errors import WorkflowConflict
from celery_durable.store import Store, WorkflowStatus

from .conftest import T0, Harness, store_url

ROOT = Path(__file__).resolve().parents[2]
HORIZON = 300.0


def call(store: Store, inputs: str, now: float, *, key: str = "k", delay: float = 5.0, max_delay: float | None = None, name: str = "wf"):  # type: ignore[no-untyped-def]
    return store.debounce(name, key, inputs, "q", now, delay, max_delay, HORIZON)


def test_the_first_call_opens_a_round_waiting_for_its_start(h: Harness) -> None:
    record, timer, opened = call(h.store, "[1]", T0)
    assert opened
    assert record.workflow_id == "debounce:wf:k:1"
    assert record.status is WorkflowStatus.WAITING and record.wait_kind == "debounce"
    assert record.inputs == "[1]" and record.queue == "q" and record.executions == 0
    assert record.deadline == pytest.approx(T0 + 5)
    assert timer is not None and timer.workflow_id == record.workflow_id and timer.ticket == record.ticket
    assert timer.countdown == pytest.approx(5.0)
    assert h.store.get_workflow(record.workflow_id) == record


def test_later_calls_join_the_round_replace_its_inputs_and_push_its_start(h: Harness) -> None:
    store = h.store
    first, timer1, _ = call(store, "[1]", T0)
    second, timer2, opened = call(store, "[2]", T0 + 3)
    assert not opened and second.workflow_id == first.workflow_id
    assert second.inputs == "[2]" and second.deadline == pytest.approx(T0 + 8)
    assert timer1 is not None and timer2 is not None and timer2.ticket > timer1.ticket
    assert timer2.countdown == pytest.approx(5.0)
    # The first call's timer went stale: it starts nothing.
    lease = h.acquire(first.workflow_id)
    assert lease is not None
    assert store.begin(lease, timer1.ticket, T0 + 5) is None
    # The live one starts the round with the last call's inputs.
    execution = store.begin(lease, timer2.ticket, T0 + 8)
    assert execution is not None and execution.workflow.inputs == "[2]"
    assert execution.workflow.status is WorkflowStatus.RUNNING and execution.workflow.executions == 1


def test_max_delay_bounds_how_far_a_stream_of_calls_pushes_the_start(h: Harness) -> None:
    store = h.store
    first, _, _ = call(store, "[0]", T0, delay=5, max_delay=12)
    assert first.deadline == pytest.approx(T0 + 5)
    deadlines = []
    for i in range(1, 6):
        record, timer, opened = call(store, f"[{i}]", T0 + 2 * i, delay=5, max_delay=12)
        assert not opened
        deadlines.append(record.deadline)
        assert timer is not None and timer.countdown == pytest.approx(record.deadline - (T0 + 2 * i))
    assert deadlines == pytest.approx([T0 + 7, T0 + 9, T0 + 11, T0 + 12, T0 + 12]), "never past first call + max_delay"
    # A later call with a smaller max_delay tightens the bound of the round (from its first call).
    record, timer, _ = call(store, "[9]", T0 + 10.5, delay=5, max_delay=11)
    assert record.deadline == pytest.approx(T0 + 11) and timer is not None
    assert timer.countdown == pytest.approx(0.5)


def test_once_the_round_began_the_next_call_opens_a_new_round(h: Harness) -> None:
    store = h.store
    first, timer, _ = call(store, "[1]", T0)
    assert timer is not None
    lease = h.acquire(first.workflow_id)
    assert lease is not None and store.begin(lease, timer.ticket, T0 + 5) is not None
    second, timer2, opened = call(store, "[2]", T0 + 6)
    assert opened and second.workflow_id == "debounce:wf:k:2"
    assert second.inputs == "[2]" and timer2 is not None
    assert store.get_workflow(first.workflow_id).inputs == "[1]"  # type: ignore[union-attr]
    # Finished: still a new round for the next call.
    store.finish(lease, WorkflowStatus.SUCCESS, "null", None, T0 + 7)
    third, _, _ = call(store, "[3]", T0 + 8)
    assert third.workflow_id == second.workflow_id, "round 2 still waits"


def test_a_cancelled_round_is_closed(h: Harness) -> None:
    store = h.store
    first, _, _ = call(store, "[1]", T0)
    store.cancel(first.workflow_id, T0 + 1)
    second, _, opened = call(store, "[2]", T0 + 2)
    assert opened and second.workflow_id != first.workflow_id


def test_keys_and_workflow_names_are_separate(h: Harness) -> None:
    store = h.store
    a = call(store, "[1]", T0, key="a")[0]
    b = call(store, "[1]", T0, key="b")[0]
    c = call(store, "[1]", T0, key="a", name="other")[0]
    assert len({a.workflow_id, b.workflow_id, c.workflow_id}) == 3
    assert c.name == "other"


def test_a_long_name_and_key_get_a_hashed_id_within_the_limit(h: Harness) -> None:
    store = h.store
    name, key = "n" * 200, "k" * 200
    record, _, _ = call(store, "[1]", T0, key=key, name=name)
    assert len(record.workflow_id) <= 255 and record.workflow_id.startswith("debounce:")
    assert call(store, "[2]", T0 + 1, key=key, name=name)[0].workflow_id == record.workflow_id


def test_an_id_taken_by_another_workflow_is_a_conflict(h: Harness) -> None:
    store = h.store
    store.create_workflow("debounce:wf:k:1", "wf", "[]", "q", T0)
    with pytest.raises(WorkflowConflict, match="debounce:wf:k:1"):
        call(store, "[1]", T0)


def test_a_far_start_is_armed_by_the_sweep_and_a_lost_timer_is_run(h: Harness) -> None:
    store = h.store
    record, timer, _ = store.debounce("wf", "k", "[1]", "q", T0, 1000.0, None, HORIZON)
    assert timer is None and record.timer_due is None, "beyond the horizon: no message yet"
    armed = store.sweep(T0 + 800, HORIZON, 30.0)
    assert [d.workflow_id for d in armed] == [record.workflow_id]
    assert armed[0].countdown == pytest.approx(200.0)
    # That timer is lost: once overdue past the grace, the sweep runs it now.
    rerun = store.sweep(T0 + 1000 + 31, HORIZON, 30.0)
    assert [d.workflow_id for d in rerun] == [record.workflow_id] and rerun[0].countdown == 0
    lease = h.acquire(record.workflow_id)
    assert lease is not None
    execution = store.begin(lease, rerun[0].ticket, T0 + 1032)
    assert execution is not None and execution.workflow.inputs == "[1]"


def test_the_timeout_is_stored_and_wakes_the_round_first(h: Harness) -> None:
    record, timer, _ = h.store.debounce("wf", "k", "[1]", "q", T0, 60.0, None, HORIZON, timeout_at=T0 + 10, version="v1")
    assert record.timeout_at == T0 + 10 and record.version == "v1"
    assert timer is not None and timer.countdown == pytest.approx(10.0)


def test_threads_calling_while_rounds_start_lose_no_call(h: Harness) -> None:
    """Callers race the round's start: every call lands in a round that runs its inputs or a later call's."""
    store = h.store
    calls: list[tuple[str, int, str]] = []  # (round id, ticket after the call, inputs)
    ran: dict[str, str] = {}  # round id -> inputs its execution began with
    errors: list[BaseException] = []
    done = threading.Event()
    lock = threading.Lock()

    def caller(n: int) -> None:
        try:
            i = 0
            # At least 40 calls each, and on until the starter has run a few rounds (bounded).
            while i < 40 or (len(ran) < 3 and i < 2000):
                inputs = json.dumps([n, i], separators=(",", ":"))
                record, _, _ = store.debounce("wf", "k", inputs, "q", T0, 5.0, None, HORIZON)
                with lock:
                    calls.append((record.workflow_id, record.ticket, inputs))
                i += 1
                time.sleep(0.001)  # let the starter in between calls (SQLite's writers queue on one lock)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def starter() -> None:
        """The timer firing again and again: begin the open round with its current ticket, then finish it."""
        try:
            while not done.is_set():
                for record in store.list_workflows(WorkflowStatus.WAITING, "wf", limit=10):
                    lease = store.acquire(record.workflow_id)
                    if lease is None:
                        continue
                    try:
                        execution = store.begin(lease, record.ticket, T0 + 5)
                        if execution is not None:
                            with lock:
                                assert record.workflow_id not in ran, "a round ran twice"
                                ran[record.workflow_id] = execution.workflow.inputs
                            store.finish(lease, WorkflowStatus.SUCCESS, "null", None, T0 + 6)
                    finally:
                        store.release(lease)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    callers = [threading.Thread(target=caller, args=(n,)) for n in range(6)]
    start = threading.Thread(target=starter)
    start.start()
    for t in callers:
        t.start()
    for t in callers:
        t.join(180)
    done.set()
    start.join(60)
    assert not errors, errors
    # The last round may still wait: run it now.
    for record in store.list_workflows(WorkflowStatus.WAITING, "wf", limit=10):
        lease = h.acquire(record.workflow_id)
        assert lease is not None
        execution = store.begin(lease, record.ticket, T0 + 5)
        assert execution is not None
        ran[record.workflow_id] = execution.workflow.inputs
    rounds: dict[str, list[tuple[int, str]]] = {}
    for wid, ticket, inputs in calls:
        rounds.setdefault(wid, []).append((ticket, inputs))
    assert len(calls) >= 240
    assert set(rounds) == set(ran), "every round ran, once"
    assert len(store.list_workflows(name="wf", limit=1000)) == len(rounds), "one workflow per round"
    for wid, seen in rounds.items():
        tickets = [t for t, _ in seen]
        assert len(set(tickets)) == len(tickets), f"{wid}: two calls got the same ticket (not serialised)"
        assert ran[wid] == max(seen)[1], f"{wid} ran {ran[wid]}, not its last call's inputs {max(seen)[1]}"
    assert len(rounds) > 1, "the starter never closed a round: the race was not exercised"


_CALLER = """
import json, os, sys, time
from celery_durable.store import open_store
url, prefix, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
store = open_store(url, prefix)
while not os.path.exists(go):
    time.sleep(0.001)
for i in range(25):
    record, timer, opened = store.debounce("wf", "k", json.dumps([n, i], separators=(",", ":")), "q", 1000000.0 + i, 5.0, 12.0, 300.0)
    print(record.workflow_id, record.ticket, json.dumps([n, i], separators=(",", ":")), int(opened), record.deadline, flush=True)
store.close()
"""


def test_processes_calling_one_key_at_once_make_one_round_with_the_last_inputs(h: Harness, tmp_path: Path) -> None:
    store = h.store
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CALLER, store_url(store), store.prefix, str(n), str(go)],  # type: ignore[attr-defined]
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for n in range(4)
    ]
    go.write_text("")
    seen: list[tuple[str, int, str, int, float]] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        for line in out.splitlines():
            wid, ticket, inputs, opened, deadline = line.split()
            seen.append((wid, int(ticket), inputs, int(opened), float(deadline)))
    assert len(seen) == 100
    assert {s[0] for s in seen} == {"debounce:wf:k:1"}, "one round"
    assert sum(s[3] for s in seen) == 1, "opened once"
    assert sorted(s[1] for s in seen) == list(range(100)), "every call serialised: one ticket each"
    last = max(seen, key=lambda s: s[1])
    record = store.get_workflow("debounce:wf:k:1")
    assert record is not None and record.inputs == last[2] and record.ticket == last[1]
    first_at = min(s for s in seen if s[3])[4] - 5.0
    assert all(s[4] <= first_at + 12.0 + 1e-6 for s in seen), "max_delay holds"
    assert len(store.list_workflows(name="wf", limit=1000)) == 1
