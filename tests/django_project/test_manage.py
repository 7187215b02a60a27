"""``manage.py durable ...``: the ``celery durable`` commands on the project's Durable, run as a user runs them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from celery_durable import WorkflowStatus
from tests.services import wait_for

HERE = Path(__file__).resolve().parent


def manage_py(*args: str) -> subprocess.CompletedProcess[str]:
    """``python manage.py ARGS`` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "manage.py", *args], cwd=HERE, capture_output=True, text=True, timeout=120)


def manage(*args: str) -> str:
    done = manage_py(*args)
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_list_and_show_a_waiting_and_a_finished_workflow(worker: Any, durable: Any, order_id: str) -> None:
    from shop.workflows import checkout, refund

    waiting = checkout.start(order_id, workflow_id=order_id)
    wait_for(lambda: waiting.status() == WorkflowStatus.WAITING, what=f"{order_id} waiting")
    assert refund.start(order_id, workflow_id=f"{order_id}-refund").result(timeout=30) == f"refunded {order_id}"

    listed = json.loads(manage("durable", "list", "--json", "--id-prefix", order_id))
    assert {(w["workflow_id"], w["status"], w["name"]) for w in listed} == {
        (order_id, "WAITING", "shop.checkout"),
        (f"{order_id}-refund", "SUCCESS", "shop.refund"),
    }

    shown = manage("durable", "show", order_id)
    assert f"workflow     {order_id}" in shown
    assert "status       WAITING" in shown
    assert "waiting for  a message on 'payment'" in shown
    assert json.loads(manage("durable", "show", "--json", f"{order_id}-refund"))["output"] == f"refunded {order_id}"

    assert "sent to" in manage("durable", "send", order_id, "--topic", "payment", "--json", '"paid"')
    assert waiting.result(timeout=30) == f"{order_id}: paid"


def test_an_unknown_id_exits_1_with_one_line(django_ready: None) -> None:
    done = manage_py("durable", "show", "no-such-workflow")
    assert done.returncode == 1
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "no-such-workflow" in done.stderr


def test_call_command_runs_the_same_commands(django_ready: None, durable: Any, order_id: str) -> None:
    from django.core.management import CommandError, call_command

    out = io.StringIO()
    with redirect_stdout(out):
        call_command("durable", "list", "--json", "--id-prefix", "nobody-")
    assert json.loads(out.getvalue()) == []
    try:
        call_command("durable", "cancel", "no-such-workflow")
    except CommandError as exc:
        assert "no-such-workflow" in str(exc)
    else:
        raise AssertionError("cancelling an unknown workflow must fail")
