"""End-to-end tests of child workflows (issue 9) with real ``celery worker`` processes on Redis and RabbitMQ.

Children run on every worker; the parent leaves its worker while it waits and is woken once. The
kill test fans out a few hundred children and kills a worker with SIGKILL in the middle: every child
finishes once and the parent gets every result.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from celery_durable import ChildWorkflowCancelled, WorkflowStatus, WorkflowTimedOut
from tests.services import Worker, count_lines, running_worker, wait_for

ROOT = Path(__file__).resolve().parents[2]


def record(wf: Any, workflow_id: str) -> Any:
    rec = wf.durable.store.get_workflow(workflow_id)
    assert rec is not None, f"no workflow {workflow_id!r}"
    return rec


def kids(wf: Any, parent: str) -> list[Any]:
    return wf.durable.list_workflows(parent_id=parent, limit=10_000)


def test_child_result_error_messages_and_map(wf: Any, e2e_env: dict[str, str], tmp_path: Path) -> None:
    with running_worker(e2e_env):
        handle = wf.parent_of_everything.start(7, workflow_id="family")
        result = handle.result(timeout=90)
    assert result == {
        "child": "family-0",
        "value": 49,
        "caught": ["builtins.ValueError", "bad input"],
        "heard": ["hello parent", "sent"],
        "mapped": [1, 4, 9],
    }
    children = kids(wf, "family")
    # square_wf, failing_child, child_tells_parent, and 3 map_step children: a replay started none twice.
    assert Counter(c.name.rsplit(".", 1)[-1] for c in children) == Counter(
        {"square_wf": 1, "failing_child": 1, "child_tells_parent": 1, f"{wf.durable.config.table_prefix}map_step": 3}
    )
    assert all(c.parent_id == "family" for c in children)
    lines = (Path(e2e_env["CD_COUNTER_DIR"]) / "child_square").read_text().split()
    assert sorted(int(v) for v in lines[1::2]) == [1, 2, 3, 7], "each child's step ran once"
    # `celery durable show` names the children and counts them by status.
    shown = subprocess.run(
        [str(Path(sys.executable).with_name("celery")), "-A", "tests.apps.wfapp", "durable", "show", "family"],
        env={**os.environ, **e2e_env, "PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    (line,) = [x for x in shown.stdout.splitlines() if x.startswith("children")]
    assert "family-0" in line and "(6: 1 ERROR, 5 SUCCESS)" in line, shown.stdout + shown.stderr


def test_cancel_and_timeout_cascade(wf: Any, e2e_env: dict[str, str]) -> None:
    store = wf.durable.store
    with running_worker(e2e_env):
        # Cancelling a parent cancels its unfinished children.
        wf.parent_of_waiters.start(3, workflow_id="tree")
        wait_for(lambda: len([c for c in kids(wf, "tree") if c.status == WorkflowStatus.WAITING]) == 3, timeout=60)
        wait_for(lambda: record(wf, "tree").status == WorkflowStatus.WAITING, timeout=60)
        assert wf.durable.cancel("tree") == WorkflowStatus.CANCELLED
        assert {c.status for c in kids(wf, "tree")} == {WorkflowStatus.CANCELLED}

        # Cancelling one child alone: the parent's gather raises (uncaught: ERROR) or returns the error.
        strict = wf.parent_of_waiters.start(2, workflow_id="strict")
        lenient = wf.parent_of_waiters.start(1, True, workflow_id="lenient")
        for parent in ("strict", "lenient"):
            wait_for(lambda p=parent: record(wf, p).status == WorkflowStatus.WAITING, timeout=60)
        wf.durable.cancel("strict-0")
        wf.durable.cancel("lenient-0")
        with pytest.raises(ChildWorkflowCancelled, match="strict-0"):
            strict.result(timeout=60)
        assert lenient.result(timeout=60) == ["ChildWorkflowCancelled"]
        assert record(wf, "strict-1").status == WorkflowStatus.WAITING, "a sibling is not cancelled by an error"
        wf.durable.cancel("strict-1")

        # A parent's timeout stops its children.
        timed = wf.parent_of_waiters.start(2, workflow_id="timed", timeout=4)
        with pytest.raises(WorkflowTimedOut):
            timed.result(timeout=90)
        wait_for(lambda: {c.status for c in kids(wf, "timed")} == {WorkflowStatus.CANCELLED}, timeout=60)
    assert store.waiting_count() == 0


def test_gather_with_a_worker_killed_midway(wf: Any, e2e_env: dict[str, str], tmp_path: Path) -> None:
    """A parent fans out N children over two workers; one is killed with SIGKILL mid-way. Every child
    finishes exactly once (one SUCCESS row each), the parent gets every result, and it executed a
    bounded number of times (woken once at the end; one more if the kill hit its own execution)."""
    n = 1000  # the size issue 9 names
    env = {**e2e_env, "CD_CHILD_SLEEP": "0.01", "CD_GRACE": "5", "CD_SWEEP_INTERVAL": "1"}
    counter = Path(e2e_env["CD_COUNTER_DIR"]) / "child_square"
    workers = [Worker(env, concurrency=2).start(), Worker(env, concurrency=2).start()]
    try:
        handle = wf.fan_out.start(n, workflow_id="fan")
        wait_for(lambda: count_lines(counter) >= n // 3, timeout=120, what="a third of the children to run")
        workers[0].kill()
        assert handle.result(timeout=240) == sum(i * i for i in range(n))
    finally:
        for w in workers:
            w.stop()
    children = kids(wf, "fan")
    assert len(children) == n and {c.status for c in children} == {WorkflowStatus.SUCCESS}
    values = [int(v) for v in counter.read_text().split()[1::2]]
    assert set(values) == set(range(n)), "every child's step ran"
    assert len(values) - n <= 4, "only steps cut off by the kill ran twice"
    parent = record(wf, "fan")
    assert parent.executions <= 3, f"the parent executed {parent.executions} times"
