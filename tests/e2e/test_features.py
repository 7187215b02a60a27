"""Durable retries, workflow timeouts and deploying new code, on real ``celery worker`` processes.

Redis and RabbitMQ, store on PostgreSQL. Step bodies append a line per call to a counter file,
so attempts are counted across processes and kills (tests/apps/wfapp.py, section "workflow
features"). The deploy test runs each case of docs/changing-workflow-code.md: a worker with
``CD_CODE_VERSION=old`` runs workflows until they wait, is stopped, and a worker with
``CD_CODE_VERSION=new`` finishes them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from celery_durable import WorkflowStatus
from celery_durable.errors import NonDeterministicWorkflow, WorkflowCancelled, WorkflowTimedOut
from tests.conftest import configured_app
from tests.services import Worker, count_lines, running_worker, wait_for

# Quick recovery, so a killed worker's work is picked up by the next one within a second or two.
FAST = {"CD_GRACE": "1", "CD_SWEEP_INTERVAL": "0.5"}


@pytest.fixture
def counters(tmp_path: Path) -> Path:
    return tmp_path / "counters"


def wait_status(handle: Any, status: WorkflowStatus, timeout: float = 60) -> None:
    wait_for(lambda: handle.status() == status, timeout=timeout, what=f"{handle.workflow_id} to be {status}")


# -- durable retries ------------------------------------------------------------------------------------------
def test_durable_retries_hold_no_worker_and_survive_kills(e2e_env, counters, tmp_path):
    """Attempts are counted exactly across a kill -9 during an attempt and one during a pause."""
    env = {**e2e_env, **FAST}
    with configured_app(env) as wf:
        first = Worker(env, concurrency=1).start()
        try:
            # A pause of an hour holds no worker slot: the only slot runs another workflow meanwhile.
            slow = wf.long_backoff.start("hour", workflow_id="hour")
            wait_for(lambda: slow.record().wait_kind == "retry", what="the hour-long pause")
            assert slow.status() == WorkflowStatus.WAITING
            assert wf.three_adds.start(1, workflow_id="meanwhile").result(timeout=60) == 4
            assert count_lines(counters / "hour.attempt") == 1
            slow.cancel()

            handle = wf.durable_retries.start("kill", 2, str(tmp_path / "never"), workflow_id="retries")
            # Attempt 1 fails, a 2 s pause leaves the worker, attempt 2 holds: kill the worker in it.
            wait_for(lambda: count_lines(counters / "kill.attempt") == 2, what="attempt 2 to start")
            assert handle.record().attempts == 2, "attempt 2 was stored before it ran"
        finally:
            first.kill()
        second = Worker(env, concurrency=1).start()
        try:
            # Attempt 3 (not 1, not 2 again) runs on the new worker, fails, and pauses 5 s: kill it there.
            wait_for(
                lambda: handle.record().attempts == 3 and handle.status() == WorkflowStatus.WAITING,
                what="the pause after attempt 3",
            )
        finally:
            second.kill()
        assert count_lines(counters / "kill.attempt") == 3
        with running_worker(env, concurrency=1):
            assert handle.result(timeout=60) == 4
        assert count_lines(counters / "kill.attempt") == 4, "an attempt was repeated or the count reset"
        record = handle.record()
        assert (record.attempt_step, record.attempts) == (0, 4)
        assert count_lines(counters / "hour.attempt") == 1


# -- workflow timeout -------------------------------------------------------------------------------------------
def test_timeouts_stop_waiting_and_running_workflows(e2e_env, counters, tmp_path):
    with configured_app(e2e_env) as wf, running_worker(e2e_env):
        waiting = wf.receiver.start(["go"], 1, 3600, workflow_id="t-wait", timeout=2)
        flag = tmp_path / "release-first-step"
        # The running case must not depend on how soon a loaded worker picks it up: its step holds
        # until the test has seen it start AND seen the deadline pass, then the next boundary stops it.
        running = wf.held_then_next.start(str(flag), workflow_id="t-run", timeout=4)
        wait_for(lambda: count_lines(counters / "timed.first.start") == 1, timeout=60, what="the step to start")
        timeout_at = running.record().timeout_at
        assert timeout_at is not None
        wait_for(lambda: time.time() > timeout_at + 0.2, timeout=60, what="the deadline to pass mid-step")
        flag.touch()
        default = wf.waits_past_its_default_timeout.start(workflow_id="t-default")
        for handle in (waiting, running, default):
            with pytest.raises(WorkflowTimedOut) as info:
                handle.result(timeout=60)
            record = handle.record()
            assert record.status == WorkflowStatus.CANCELLED
            assert info.value.deadline == record.timeout_at
            assert f"{record.timeout_at:.3f}" in str(info.value), "the error names the deadline"
            assert json.loads(record.error)["type"] == "celery_durable.errors.WorkflowTimedOut"
        assert waiting.record().timeout_at == pytest.approx(waiting.record().created_at + 2)
        assert default.record().timeout_at == pytest.approx(default.record().created_at + 2)
        # The step that was running when the deadline passed finished; the next never started.
        assert count_lines(counters / "timed.first.end") == 1
        assert count_lines(counters / "timed.second.start") == 0
        assert [s.name for s in running.steps()] == ["tests.apps.wfapp.hold_until"]
        assert count_lines(counters / "receiver.got") == 0


# -- deploying new code with workflows in flight -----------------------------------------------------------------
ADD = "tests.apps.wfapp.add"
CASES: dict[str, tuple[str, tuple[Any, ...]]] = {
    "append": ("deploy_append", (1,)),
    "insert": ("deploy_insert", (1,)),
    "insert_patched": ("deploy_insert_patched", (1,)),
    "rename": ("deploy_rename", ("tea",)),
    "rename_pinned": ("deploy_rename_pinned", ("tea",)),
    "body": ("deploy_body", ()),
    "topic": ("deploy_topic", ()),
    "topic_patched": ("deploy_topic_patched", ()),
    "deprecate": ("deploy_deprecate", (1,)),
    "removed": ("deploy_removed", ()),
}


def test_workflows_started_on_old_code_finish_on_new_code(e2e_env, counters):
    old_env = {**e2e_env, "CD_CODE_VERSION": "old"}
    new_env = {**e2e_env, "CD_CODE_VERSION": "new"}
    with configured_app(old_env) as wf:
        old_version = wf.durable.version
        with running_worker(old_env):
            handles = {case: getattr(wf, fn).start(*args, workflow_id=case) for case, (fn, args) in CASES.items()}
            for handle in handles.values():
                wait_status(handle, WorkflowStatus.WAITING)
        assert {h.record().version for h in handles.values()} == {old_version}

        with running_worker(new_env) as worker:
            for case in CASES:
                if case != "topic":
                    wf.durable.send(case, f"{case}-message", topic="go")

            # A step added at the end runs after the wait.
            assert handles["append"].result(timeout=60) == [2, "append-message", 102]
            # A step inserted between steps that ran: the replay meets another step at id 1.
            with pytest.raises(NonDeterministicWorkflow) as info:
                handles["insert"].result(timeout=60)
            assert "step 1" in str(info.value) and ADD in str(info.value) and "label" in str(info.value)
            # ... unless patched: the old history takes the old branch.
            assert handles["insert_patched"].result(timeout=60) == {
                "sum": 12,
                "patched": False,
                "message": "insert_patched-message",
            }
            # A renamed step: a determinism error, unless it keeps its old name.
            with pytest.raises(NonDeterministicWorkflow, match="price_v2"):
                handles["rename"].result(timeout=60)
            assert handles["rename_pinned"].result(timeout=60) == "price:tea"
            # A changed step body: recorded outputs stay, steps that run after the deploy use the new body.
            assert handles["body"].result(timeout=60) == ["old:before", "new:after"]
            # A changed recv topic: the waiting workflow now waits on the new topic only...
            wf.durable.send("topic", "old-topic-message", topic="go")
            wait_for(
                lambda: (
                    handles["topic"].record().wait_topics == ("go2",)
                    and handles["topic"].status() == WorkflowStatus.WAITING
                ),
                what="the waiting recv to move to the new topic",
            )
            wf.durable.send("topic", "new-topic-message", topic="go2")
            assert handles["topic"].result(timeout=60) == "new-topic-message"
            # ... while a patched recv on both topics still takes the message sent to the old one.
            assert handles["topic_patched"].result(timeout=60) == ["go", "topic_patched-message"]
            # deprecate_patch replays a history that recorded the patch.
            assert handles["deprecate"].result(timeout=60) == 1002
            # A removed workflow: the new worker does not know its task; it stays queued until cancelled.
            wait_for(lambda: "deploy.removed" in worker.output(), what="the worker to refuse deploy.removed")
            assert "unregistered task" in worker.output().lower()
            assert handles["removed"].status() == WorkflowStatus.PENDING
            assert wf.durable.cancel("removed") == WorkflowStatus.CANCELLED
            with pytest.raises(WorkflowCancelled):
                handles["removed"].result(timeout=5)

            # A workflow started on the new code takes the patched branch and records the new version.
            wf.app.send_task("deploy.insert_patched", args=(1,), task_id="fresh")
            wait_for(lambda: wf.durable.store.get_workflow("fresh") is not None, what="the fresh workflow")
            fresh = wf.durable.handle("fresh")
            wait_status(fresh, WorkflowStatus.WAITING)
            wf.durable.send("fresh", "hi", topic="go")
            assert fresh.result(timeout=60) == {"sum": 12, "patched": True, "message": "hi"}
            assert fresh.record().version not in (None, old_version)
            assert [s.kind for s in fresh.steps()] == ["step", "patch", "step", "step", "recv"]
        labels = [line.split(" ", 1)[1] for line in (counters / "label").read_text().splitlines()]
        assert labels == ["before", "after", "inserted"], "old: before; new: after, and the fresh one's patch"
