"""Store contract for child workflows: batch starts, joins, the wake-up of a parent, the cascades.

Run on both backends through the parametrised ``store`` fixture. The hammer at the end checks the
join's no-lost-wake-up invariant (store/sql_children.py) under real concurrency.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from celery_durable.errors import InvalidArgument, WorkflowCancelled, WorkflowConflict
from celery_durable.store import Dispatch, Lease, StepRecord, Suspended, WorkflowStatus
from celery_durable.store.child_records import ChildSpec, Joined, JoinRequest

from .conftest import T0, Harness, step


def spawn(h: Harness, parent: Lease, ids: list[str], step_id: int = 0, name: str = "child") -> list[Dispatch]:
    specs = [ChildSpec(cid, name, "[]", "q") for cid in ids]
    return h.store.start_children(parent, specs, step(parent.workflow_id, step_id, kind="children"))


def join(
    ids: list[str], step_id: int = 1, fail_fast: bool = False, timeout: float | None = None, now: float = T0
) -> JoinRequest:
    return JoinRequest(step_id, f"join:{step_id}", tuple(ids), fail_fast, timeout, now, 300.0)


def claim(h: Harness, workflow_id: str) -> Lease:
    lease = h.acquire(workflow_id)
    assert lease is not None
    wf = h.store.get_workflow(workflow_id)
    assert wf is not None and h.store.begin(lease, wf.ticket, T0) is not None
    return lease


def end(
    h: Harness, lease: Lease, status: WorkflowStatus = WorkflowStatus.SUCCESS, output: str = '"ok"'
) -> list[Dispatch]:
    error = None if status is WorkflowStatus.SUCCESS else '{"type": "builtins.ValueError", "message": "boom"}'
    wakeups = h.store.finish(lease, status, output if error is None else None, error, T0 + 1)
    h.release(lease)
    return wakeups


def test_start_children_writes_rows_and_checkpoint_together(h: Harness) -> None:
    parent = h.running("p")
    dispatches = spawn(h, parent, ["p-0.0", "p-0.1"])
    assert dispatches == [Dispatch("p-0.0", "child", "q", 0), Dispatch("p-0.1", "child", "q", 0)]
    kids = h.store.list_workflows(parent_id="p")
    assert sorted(k.workflow_id for k in kids) == ["p-0.0", "p-0.1"]
    assert all(k.status is WorkflowStatus.PENDING and k.parent_id == "p" for k in kids)
    assert [s.step_id for s in h.store.list_steps("p")] == [0]
    # The same ids as children of the same workflow are kept and not published again.
    assert spawn(h, parent, ["p-0.1", "p-1"], step_id=1) == [Dispatch("p-1", "child", "q", 0)]


def test_start_children_conflict_writes_nothing(h: Harness) -> None:
    h.create("taken", name="other")
    parent = h.running("p")
    with pytest.raises(WorkflowConflict):
        spawn(h, parent, ["p-0", "taken"])
    assert h.store.get_workflow("p-0") is None, "the batch is one transaction"
    assert h.store.list_steps("p") == []


def test_start_children_of_a_cancelled_parent_is_refused(h: Harness) -> None:
    parent = h.running("p")
    h.store.cancel("p", T0 + 1)
    with pytest.raises(WorkflowCancelled):
        spawn(h, parent, ["p-0"])
    assert h.store.get_workflow("p-0") is None


def test_a_batch_of_children_is_inserted_in_chunks(h: Harness) -> None:
    parent = h.running("p")
    ids = [f"p-0.{i}" for i in range(2500)]
    assert len(spawn(h, parent, ids)) == 2500
    result = h.store.wait_children(parent, join(ids))
    assert isinstance(result, Suspended)
    assert len(h.store.list_workflows(parent_id="p", limit=3000)) == 2500


def test_join_wakes_the_parent_once_when_the_last_child_ends(h: Harness) -> None:
    parent = h.running("p")
    ids = ["p-0.0", "p-0.1", "p-0.2"]
    spawn(h, parent, ids)
    assert isinstance(h.store.wait_children(parent, join(ids)), Suspended)
    wf = h.store.get_workflow("p")
    assert wf is not None and wf.status is WorkflowStatus.WAITING and wf.wait_kind == "join"
    h.release(parent)
    assert end(h, claim(h, "p-0.0")) == []
    assert end(h, claim(h, "p-0.1"), WorkflowStatus.ERROR) == [], "without fail_fast a failure does not wake"
    (wake,) = end(h, claim(h, "p-0.2"))
    wf = h.store.get_workflow("p")
    assert wf is not None and wf.status is WorkflowStatus.PENDING and wake == Dispatch("p", "wf", "q", wf.ticket)
    parent = claim(h, "p")
    done = h.store.wait_children(parent, join(ids))
    assert isinstance(done, Joined) and not done.timed_out
    assert [(o.workflow_id, o.status) for o in done.outcomes] == [
        ("p-0.0", WorkflowStatus.SUCCESS),
        ("p-0.1", WorkflowStatus.ERROR),
        ("p-0.2", WorkflowStatus.SUCCESS),
    ]
    assert done.outcomes[0].output == '"ok"' and done.outcomes[1].failed


def test_fail_fast_join_wakes_at_the_first_failure(h: Harness) -> None:
    parent = h.running("p")
    ids = ["p-0.0", "p-0.1"]
    spawn(h, parent, ids)
    assert isinstance(h.store.wait_children(parent, join(ids, fail_fast=True)), Suspended)
    h.release(parent)
    assert len(end(h, claim(h, "p-0.1"), WorkflowStatus.ERROR)) == 1
    parent = claim(h, "p")
    done = h.store.wait_children(parent, join(ids, fail_fast=True))
    assert isinstance(done, Joined) and done.outcomes[1].failed
    assert done.outcomes[0].status is WorkflowStatus.PENDING


def test_join_deadline_and_refusal_of_strangers(h: Harness) -> None:
    h.create("stranger")
    parent = h.running("p")
    spawn(h, parent, ["p-0"])
    with pytest.raises(InvalidArgument):
        h.store.wait_children(parent, join(["p-0", "stranger"]))
    first = h.store.wait_children(parent, join(["p-0"], timeout=10))
    assert isinstance(first, Suspended) and first.dispatch is not None and first.dispatch.countdown == 10
    h.resume(parent)
    late = h.store.wait_children(parent, join(["p-0"], timeout=10, now=T0 + 11))
    assert isinstance(late, Joined) and late.timed_out, "the deadline recorded at the first wait holds"


def test_cancel_cascades_to_descendants_and_wakes_a_waiting_parent(h: Harness) -> None:
    top = h.running("top")
    spawn(h, top, ["top-0"])
    assert isinstance(h.store.wait_children(top, join(["top-0"])), Suspended)
    h.release(top)
    mid = claim(h, "top-0")
    spawn(h, mid, ["top-0-0.0", "top-0-0.1"])
    h.release(mid)
    record, wakeups = h.store.cancel_tree("top-0", T0 + 2)
    assert record is not None and record.status is WorkflowStatus.CANCELLED
    assert [d.workflow_id for d in wakeups] == ["top"]
    for cid in ("top-0-0.0", "top-0-0.1"):
        assert h.store.get_workflow(cid).status is WorkflowStatus.CANCELLED  # type: ignore[union-attr]
    # Cancelling the top now cancels nothing more and wakes nobody.
    assert h.store.cancel_tree("top", T0 + 3)[1] == []


def test_sweep_timing_out_a_child_cancels_its_children_and_wakes_its_parent(h: Harness) -> None:
    parent = h.running("p")
    h.store.start_children(parent, [ChildSpec("p-0", "child", "[]", "q", timeout_at=T0 + 5)], step("p", 0))
    assert isinstance(h.store.wait_children(parent, join(["p-0"])), Suspended)
    h.release(parent)
    child = claim(h, "p-0")
    spawn(h, child, ["p-0-0"])
    h.release(child)
    dispatches = h.store.sweep(T0 + 6, 300, 30)
    assert [d.workflow_id for d in dispatches if d.workflow_id == "p"] == ["p"]
    assert h.store.get_workflow("p-0").status is WorkflowStatus.CANCELLED  # type: ignore[union-attr]
    assert h.store.get_workflow("p-0-0").status is WorkflowStatus.CANCELLED  # type: ignore[union-attr]


@pytest.mark.parametrize("fail_fast", [False, True])
def test_no_lost_wakeup_between_join_and_finishing_children(h: Harness, fail_fast: bool) -> None:
    """Invariant (join): whatever the interleaving of a parent's join on K children and those K children
    finishing, the parent gets exactly one way forward -- the join completes at once (and no finish
    returns a wake-up), or the join is recorded and exactly one finish (the last; with fail_fast, the
    failed one or the last) returns the wake-up, with the parent's current ticket. Never neither (a
    parent asleep forever) nor both. With fail_fast one child (a different one each round) fails.
    """
    store = h.store
    kids, rounds = 4, 40
    barrier = threading.Barrier(kids + 1)

    def wait(lease: Lease, ids: list[str]) -> Any:
        barrier.wait(30)
        return store.wait_children(lease, join(ids, fail_fast=fail_fast))

    def finish(lease: Lease, failed: bool) -> list[Dispatch]:
        barrier.wait(30)
        if failed:
            return store.finish(lease, WorkflowStatus.ERROR, None, '{"type": "x", "message": "y"}', T0 + 1)
        return store.finish(lease, WorkflowStatus.SUCCESS, '"ok"', None, T0 + 1)

    with ThreadPoolExecutor(kids + 1) as pool:
        for i in range(rounds):
            parent = h.running(f"r{i}")
            ids = [f"r{i}-0.{k}" for k in range(kids)]
            spawn(h, parent, ids)
            leases = [claim(h, cid) for cid in ids]
            waited = pool.submit(wait, parent, ids)
            ended = [pool.submit(finish, lease, fail_fast and k == i % kids) for k, lease in enumerate(leases)]
            result = waited.result(60)
            wakeups = [d for f in ended for d in f.result(60)]
            for lease in leases:
                h.release(lease)
            wf = store.get_workflow(f"r{i}")
            assert wf is not None
            if isinstance(result, Joined):
                assert wakeups == [], f"round {i}: joined at once, yet woken: {wakeups!r}"
                assert wf.status is WorkflowStatus.RUNNING
            else:
                assert isinstance(result, Suspended)
                assert len(wakeups) == 1, f"round {i}: waited, woken {len(wakeups)} times"
                assert wf.status is WorkflowStatus.PENDING and wakeups[0].ticket == wf.ticket
            h.release(parent)


def test_checkpoint_row_is_a_step_record(h: Harness) -> None:
    parent = h.running("p")
    spawn(h, parent, ["p-0"])
    (recorded,) = h.store.list_steps("p")
    assert isinstance(recorded, StepRecord) and recorded.kind == "children"
