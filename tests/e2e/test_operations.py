"""End-to-end operations (issue 7): resume, fork, the `celery durable` CLI and the client for any producer.

One real ``celery worker`` per broker (Redis, RabbitMQ) with the store on PostgreSQL serves
every test of this module; each test uses its own workflow ids and counter names. The CLI
and the client run as subprocesses, and their output and exit status are what is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from celery_durable import WorkflowStatus
from tests.conftest import BROKERS, configured_app, make_env
from tests.services import ROOT, Worker, count_lines, running_worker, wait_for

CELERY = str(Path(sys.executable).with_name("celery"))


@dataclass
class Ops:
    env: dict[str, str]
    wf: Any
    worker: Worker
    tmp: Path

    def counter(self, name: str) -> int:
        return count_lines(Path(self.env["CD_COUNTER_DIR"]) / name)

    def wait_status(self, workflow_id: str, status: WorkflowStatus, timeout: float = 60) -> None:
        handle = self.wf.durable.handle(workflow_id)
        wait_for(lambda: handle.status() == status, timeout=timeout, what=f"{workflow_id} to be {status}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``celery -A tests.apps.wfapp durable ARGS`` in a subprocess, with this module's settings."""
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT)}
        return subprocess.run(
            [CELERY, "-A", "tests.apps.wfapp", "durable", *args],
            env=env,
            cwd=str(ROOT),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def cli_json(self, *args: str) -> Any:
        done = self.cli(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def ops(request: pytest.FixtureRequest, pg_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    tmp = tmp_path_factory.mktemp(f"ops-{request.param}")
    env = make_env(BROKERS[request.param](), pg_database, tmp, CD_SWEEP_INTERVAL="1")
    with configured_app(env) as wf, running_worker(env) as worker:
        yield Ops(env, wf, worker, tmp)


# -- resume ----------------------------------------------------------------------------------------------
def test_resume_after_error_runs_the_fixed_step_and_not_the_finished_ones(ops: Ops) -> None:
    flag = ops.tmp / "fix-r1.flag"
    handle = ops.wf.fix_me.start("r1", str(flag), workflow_id="r1")
    with pytest.raises(ValueError, match="r1: not fixed yet"):
        handle.result(timeout=60)
    assert (ops.counter("r1.counted"), ops.counter("r1.fixable")) == (1, 1)
    (failed,) = ops.wf.durable.list_workflows(status=["ERROR"], id_prefix="r1")
    assert failed.error_summary == "ValueError: r1: not fixed yet"

    flag.touch()  # the fix is deployed
    resumed = ops.wf.durable.resume("r1")
    assert resumed.result(timeout=60) == ["first", "fixed", "last"]
    assert ops.counter("r1.counted") == 2, "step 0 ran once; only the last step ran after the resume"
    assert ops.counter("r1.fixable") == 2
    assert [s.step_id for s in resumed.steps()] == [0, 1, 2]


def test_resume_after_cancel_continues_from_the_checkpoints(ops: Ops) -> None:
    handle = ops.wf.approvals.start("c1", "c1-box", workflow_id="c1")
    ops.wait_status("c1", WorkflowStatus.WAITING)
    assert handle.cancel() == WorkflowStatus.CANCELLED
    ops.wf.durable.send("c1", "yes", topic="approval")  # kept; a cancelled workflow is not woken
    assert ops.wf.durable.resume("c1").status() in (WorkflowStatus.PENDING, WorkflowStatus.RUNNING, WorkflowStatus.WAITING)
    ops.wait_status("c1", WorkflowStatus.WAITING)  # now at the recv of "final"
    ops.wf.durable.send("c1", "done", topic="final")
    assert handle.result(timeout=60) == {
        "first": "first",
        "approval": "yes",
        "second": "after yes",
        "final": "done",
        "id": "c1",
    }
    assert ops.counter("c1.counted") == 2, "the first step did not run again"


# -- fork --------------------------------------------------------------------------------------------------
def test_fork_from_the_middle_after_messages_replays_them_and_does_not_send_again(ops: Ops) -> None:
    durable = ops.wf.durable
    ops.wf.approvals.start("f1", "f1-box", workflow_id="f1")
    ops.wait_status("f1", WorkflowStatus.WAITING)
    durable.send("f1", "yes", topic="approval")
    wait_for(lambda: durable.get_event("f1", "stage", timeout=0) == "approved", what="f1's stage event")
    ops.wait_status("f1", WorkflowStatus.WAITING)  # at step 5, the recv of "final"
    assert ops.counter("f1.counted") == 2

    fork = durable.fork("f1", 4, new_workflow_id="f1-fork")
    ops.wait_status("f1-fork", WorkflowStatus.WAITING)  # ran step 4 again and waits on its own "final"
    assert ops.counter("f1.counted") == 3, "only step 4 ran in the fork"
    assert durable.get_events("f1-fork") == {"stage": "approved"}
    durable.send("f1-fork", "from the fork", topic="final")
    assert fork.result(timeout=60) == {
        "first": "first",
        "approval": "yes",
        "second": "after yes",
        "final": "from the fork",
        "id": "f1-fork",
    }
    assert [m.payload for m in durable.list_messages("f1-box")] == [{"from": "f1", "approval": "yes"}], (
        "the copied send was not sent again"
    )
    assert [(m.topic, m.payload, m.consumed) for m in durable.list_messages("f1")] == [("approval", "yes", True)]
    assert durable.handle("f1").status() == WorkflowStatus.WAITING, "the original is untouched"
    record = fork.record()
    assert (record.forked_from, record.forked_from_step) == ("f1", 4)


# -- the CLI -------------------------------------------------------------------------------------------------
def test_cli_as_a_celery_subcommand(ops: Ops) -> None:
    flag = ops.tmp / "fix-cli.flag"
    ops.wf.fix_me.start("cli", str(flag), workflow_id="cli-fail")
    ops.wait_status("cli-fail", WorkflowStatus.ERROR)
    ops.wf.approvals.start("cli-chat", "cli-box", workflow_id="cli-chat")
    ops.wait_status("cli-chat", WorkflowStatus.WAITING)

    listed = ops.cli_json("list", "--status", "ERROR", "--status", "WAITING", "--id-prefix", "cli-", "--since", "1h")
    assert [(w["workflow_id"], w["status"]) for w in listed] == [("cli-chat", "WAITING"), ("cli-fail", "ERROR")]
    assert listed[1]["error_summary"] == "ValueError: cli: not fixed yet"

    table = ops.cli("list", "--id-prefix", "cli-")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["WORKFLOW", "ID", "STATUS"]
    assert "cli-fail" in table.stdout and "ValueError: cli: not fixed yet" in table.stdout

    sent = ops.cli("send", "cli-chat", "--topic", "approval", "--json", '"ok"')
    assert sent.returncode == 0, sent.stderr
    ops.wait_status("cli-chat", WorkflowStatus.WAITING)
    wait_for(lambda: ops.wf.durable.get_event("cli-chat", "stage", timeout=0) == "approved", what="the stage event")
    shown = ops.cli_json("show", "cli-chat")
    assert shown["status"] == "WAITING" and shown["inputs"] == {"args": ["cli-chat", "cli-box"], "kwargs": {}}
    assert [s["kind"] for s in shown["steps"]] == ["step", "recv", "send", "set_event", "step"]
    assert shown["wait_topics"] == ["final"] and shown["events"] == {"stage": "approved"}
    text = ops.cli("show", "cli-fail")
    assert text.returncode == 0 and "ValueError: cli: not fixed yet" in text.stdout and "fixable" in text.stdout

    flag.touch()
    assert ops.cli_json("resume", "cli-fail")["workflow_id"] == "cli-fail"
    assert ops.wf.durable.handle("cli-fail").result(timeout=60) == ["first", "fixed", "last"]
    forked = ops.cli_json("fork", "cli-chat", "--from-step", "5", "--new-id", "cli-fork")
    assert forked["workflow_id"] == "cli-fork" and forked["forked_from_step"] == 5
    assert ops.cli_json("cancel", "cli-chat") == {"workflow_id": "cli-chat", "status": "CANCELLED"}
    ops.wait_status("cli-fork", WorkflowStatus.WAITING)
    ops.wf.durable.send("cli-fork", "bye", topic="final")
    assert ops.wf.durable.handle("cli-fork").result(timeout=60)["final"] == "bye"

    for args in (("show", "no-such-id"), ("send", "no-such-id", "--json", "1"), ("fork", "cli-chat", "--from-step", "-1")):
        failed = ops.cli(*args)
        assert failed.returncode == 1, (args, failed.stdout, failed.stderr)
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
        assert "Traceback" not in failed.stderr
    assert "no-such-id" in ops.cli("show", "no-such-id").stderr


# -- the client --------------------------------------------------------------------------------------------------
CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from celery_durable.client import DurableClient

    db, broker, prefix, queue = sys.argv[1:5]
    with DurableClient(db, broker, table_prefix=prefix, queue=queue) as client:
        handle = client.start("tests.apps.wfapp.steps_then_recv", 1, 60, workflow_id="client-1")
        assert client.start("tests.apps.wfapp.steps_then_recv", 1, 60, workflow_id="client-1").workflow_id == "client-1"
        while handle.status().value != "WAITING":
            time.sleep(0.05)
        client.send("client-1", {"from": "a web view"}, topic="go")
        first = handle.result(timeout=60)
    # Without a broker nothing is published: the workers' sweep starts the workflow.
    with DurableClient(db, table_prefix=prefix, queue=queue) as offline:
        late = offline.start("tests.apps.wfapp.three_adds", 10, workflow_id="client-2")
        second = late.result(timeout=60)
    print(json.dumps({"first": first, "second": second, "workflow_code": "tests.apps.wfapp" in sys.modules}))
    """
)


def test_client_in_a_process_without_workflow_code(ops: Ops, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CD_") and k != "PYTHONPATH"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CLIENT_SCRIPT,
            ops.env["CD_DATABASE_URL"],
            ops.env["CD_BROKER"],
            ops.env["CD_PREFIX"],
            ops.env["CD_QUEUE"],
        ],
        env=env,
        cwd=str(tmp_path),  # tests/ is not importable from here
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "first": {"sum": 111, "message": {"from": "a web view"}},
        "second": 13,
        "workflow_code": False,
    }
