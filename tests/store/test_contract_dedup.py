"""Deduplication in the store contract: at most one unfinished workflow per (name, dedup_key).

Checked on SQLite and PostgreSQL, with race hammers (threads on one store, and processes each
opening its own) that start the same key at once: exactly one workflow is created and every
caller gets it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from celery_durable.errors import DuplicateWorkflow
from celery_durable.store import WorkflowStatus

from .conftest import T0, Harness, store_url

ROOT = Path(__file__).resolve().parents[2]


def test_a_held_key_returns_the_unfinished_workflow_and_writes_nothing(h: Harness) -> None:
    store = h.store
    first, created = store.create_workflow("a", "wf", "[1]", "q", T0, dedup_key="k")
    assert created and first.dedup_key == "k"
    again, created = store.create_workflow("b", "wf", "[2]", "q", T0 + 1, dedup_key="k")
    assert not created
    assert again.workflow_id == "a" and again.inputs == "[1]"
    assert store.get_workflow("b") is None, "nothing is written for the refused start"


def test_the_key_is_per_workflow_name_and_absent_keys_never_collide(h: Harness) -> None:
    store = h.store
    assert store.create_workflow("a", "wf.one", "[]", None, T0, dedup_key="k")[1]
    assert store.create_workflow("b", "wf.two", "[]", None, T0, dedup_key="k")[1]
    assert store.create_workflow("c", "wf.one", "[]", None, T0)[1]
    assert store.create_workflow("d", "wf.one", "[]", None, T0)[1]


@pytest.mark.parametrize("ending", ["success", "error", "cancel"])
def test_the_key_is_free_again_once_its_workflow_finished(h: Harness, ending: str) -> None:
    store = h.store
    if ending == "cancel":
        store.create_workflow("a", "wf", "[]", "q", T0, dedup_key="k")
        store.cancel("a", T0 + 1)
    else:
        store.create_workflow("a", "wf", "[]", "q", T0, dedup_key="k")
        lease = h.acquire("a")
        assert lease is not None and store.begin(lease, 0, T0) is not None
        status = WorkflowStatus.SUCCESS if ending == "success" else WorkflowStatus.ERROR
        store.finish(lease, status, '"ok"' if ending == "success" else None, None if ending == "success" else "{}", T0 + 1)
    record, created = store.create_workflow("b", "wf", "[]", "q", T0 + 2, dedup_key="k")
    assert created and record.workflow_id == "b"


def test_a_running_or_waiting_workflow_keeps_its_key(h: Harness) -> None:
    store = h.store
    store.create_workflow("a", "wf", "[]", "q", T0, dedup_key="k")
    lease = h.acquire("a")
    assert lease is not None and store.begin(lease, 0, T0) is not None
    assert store.create_workflow("b", "wf", "[]", "q", T0, dedup_key="k")[0].workflow_id == "a"
    store.wait_retry(lease, 1, "step1", T0 + 60, T0, 300)
    assert store.get_workflow("a").status is WorkflowStatus.WAITING  # type: ignore[union-attr]
    assert store.create_workflow("b", "wf", "[]", "q", T0, dedup_key="k")[0].workflow_id == "a"


def test_the_id_comes_first(h: Harness) -> None:
    store = h.store
    store.create_workflow("a", "wf", "[1]", "q", T0, dedup_key="k")
    # Same id, same key: the id's idempotency.
    record, created = store.create_workflow("a", "wf", "[2]", "q", T0, dedup_key="k")
    assert not created and record.workflow_id == "a" and record.inputs == "[1]"
    # Same id, another key: still the existing row, unchanged.
    record, created = store.create_workflow("a", "wf", "[3]", "q", T0, dedup_key="other")
    assert not created and record.dedup_key == "k"
    # A finished id is returned as it is, even though its key is free now.
    store.cancel("a", T0 + 1)
    record, created = store.create_workflow("a", "wf", "[4]", "q", T0 + 2, dedup_key="k")
    assert not created and record.status is WorkflowStatus.CANCELLED


def test_resume_refuses_a_workflow_whose_key_another_holds(h: Harness) -> None:
    store = h.store
    store.create_workflow("a", "wf", "[]", "q", T0, dedup_key="k")
    a = store.cancel("a", T0 + 1)
    assert a is not None
    store.create_workflow("b", "wf", "[]", "q", T0 + 2, dedup_key="k")
    with pytest.raises(DuplicateWorkflow, match="'b'"):
        store.resume("a", a.ticket, None, T0 + 3)
    assert store.get_workflow("a").status is WorkflowStatus.CANCELLED  # type: ignore[union-attr]
    # Once b finished, a may run again and holds the key.
    store.cancel("b", T0 + 4)
    record, dispatch = store.resume("a", a.ticket, None, T0 + 5)
    assert dispatch is not None and record is not None and record.status is WorkflowStatus.PENDING
    assert store.create_workflow("c", "wf", "[]", "q", T0 + 6, dedup_key="k")[0].workflow_id == "a"


def test_a_fork_does_not_take_the_key(h: Harness) -> None:
    store = h.store
    store.create_workflow("a", "wf", "[]", "q", T0, dedup_key="k")
    fork, created = store.fork("a", "a2", 1, T0 + 1)
    assert created and fork is not None and fork.dedup_key is None


def test_threads_starting_one_key_at_once_create_exactly_one(h: Harness) -> None:
    store = h.store
    for round_ in range(5):
        barrier = threading.Barrier(16)

        def start(i: int, round_: int = round_, barrier: threading.Barrier = barrier) -> tuple[str, bool]:
            barrier.wait()
            record, created = store.create_workflow(f"r{round_}-{i}", "wf", "[]", "q", T0, dedup_key=f"k{round_}")
            return record.workflow_id, created

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(start, range(16)))
        assert sum(created for _, created in results) == 1
        winner = next(wid for wid, created in results if created)
        assert {wid for wid, _ in results} == {winner}, "every caller gets the one workflow"
        active = [w for w in store.list_workflows(name="wf", limit=1000) if w.dedup_key == f"k{round_}"]
        assert [w.workflow_id for w in active] == [winner]


def test_start_and_finish_racing_never_leave_two_unfinished(h: Harness) -> None:
    """Starts race with the holder's end: each start either gets the holder or creates the next one."""
    store = h.store
    store.create_workflow("w0", "wf", "[]", "q", T0, dedup_key="k")
    stop = threading.Event()
    errors: list[BaseException] = []

    def finisher() -> None:
        try:
            for _ in range(30):
                held = store.create_workflow("probe", "wf", "[]", "q", T0, dedup_key="k")[0]
                if held.workflow_id != "probe":
                    store.cancel(held.workflow_id, T0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    def starter(n: int) -> None:
        try:
            i = 0
            while not stop.is_set():
                store.create_workflow(f"s{n}-{i}", "wf", "[]", "q", T0, dedup_key="k")
                i += 1
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=starter, args=(n,)) for n in range(4)] + [threading.Thread(target=finisher)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    unfinished = [w for w in store.list_workflows(name="wf", limit=10_000) if not w.status.is_terminal]
    assert len(unfinished) <= 1


_STARTER = """
import sys
from celery_durable.store import open_store
url, prefix, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
store = open_store(url, prefix)
import os, time
while not os.path.exists(go):
    time.sleep(0.001)
for i in range(20):
    record, created = store.create_workflow(f"p{n}-{i}", "wf", "[]", "q", 1000000.0, dedup_key=f"k{i}")
    print(i, record.workflow_id, int(created), flush=True)
store.close()
"""


def test_processes_starting_the_same_keys_at_once_create_exactly_one_each(h: Harness, tmp_path: Path) -> None:
    store = h.store
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _STARTER, store_url(store), store.prefix, str(n), str(go)],  # type: ignore[attr-defined]
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for n in range(4)
    ]
    go.write_text("")
    seen: dict[int, set[str]] = {}
    created: dict[int, int] = {}
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        for line in out.splitlines():
            i, wid, made = line.split()
            seen.setdefault(int(i), set()).add(wid)
            created[int(i)] = created.get(int(i), 0) + int(made)
    assert len(seen) == 20
    for i in range(20):
        assert created[i] == 1, f"key k{i}: {created[i]} workflows created"
        assert len(seen[i]) == 1, f"key k{i}: callers got {seen[i]}"
        (winner,) = seen[i]
        assert store.get_workflow(winner).dedup_key == f"k{i}"  # type: ignore[union-attr]
    assert len(store.list_workflows(name="wf", limit=1000)) == 20
