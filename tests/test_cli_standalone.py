"""The standalone ``celery-durable`` command (no Celery app, only a database URL), run as a subprocess.

The workflows are executed by hand through the engine (as tests/engine does), so the commands
see real checkpoints and messages in a real SQLite store; the e2e tests run the same click group
as ``celery -A app durable`` against workers.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_durable import Durable, WorkflowStatus
from celery_durable.store import Dispatch

CLI = shutil.which("celery-durable", path=str(Path(sys.executable).parent))


class Recording(Durable):
    """A Durable whose task messages are kept in a list instead of going to a broker."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(Celery("cli", set_as_current=False), url, table_prefix=prefix)
        self.published: list[Dispatch] = []

    def _publish(self, dispatch: Dispatch) -> None:
        self.published.append(dispatch)


@pytest.fixture
def shop(sqlite_url: str, unique_prefix: str) -> Any:
    d = Recording(sqlite_url, unique_prefix)

    @d.step(name="reserve")
    def reserve(order: str) -> str:
        return f"reserved {order}"

    def checkout(order: str) -> dict[str, Any]:
        return {"reserved": reserve(order), "paid": d.recv("payment", timeout=3600)}

    d.workflow(name="shop.checkout")(checkout)
    d.migrate()  # the store exists, as the workers' first use would have made it
    yield d, checkout  # the plain body: the test executes it through the engine, as a worker would
    d.close()


def run_cli(url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert CLI is not None, "celery-durable is not installed in this virtualenv"
    return subprocess.run(
        [CLI, "--database-url", url, "--prefix", prefix, *args], capture_output=True, text=True, timeout=60
    )


def test_standalone_cli_reads_steps_messages_and_prunes(shop: Any, sqlite_url: str, unique_prefix: str) -> None:
    d, checkout = shop
    handle = d.start("shop.checkout", "o-1", workflow_id="order-1")  # by name: published through _publish
    dispatch = d.published.pop()
    d.engine.execute(dispatch.workflow_id, dispatch.ticket, dispatch.name, checkout)  # waits in recv
    assert handle.status() == WorkflowStatus.WAITING

    def cli_json(*args: str) -> Any:
        done = run_cli(sqlite_url, unique_prefix, "--json", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert cli_json("migrate")["schema_version"] >= 2
    steps = cli_json("steps", "order-1")
    assert [(s["step_id"], s["kind"], s["name"]) for s in steps] == [(0, "step", "reserve")]
    sent = run_cli(sqlite_url, unique_prefix, "send", "order-1", "--topic", "payment", "--json", '{"amount": 42}')
    assert sent.returncode == 0, sent.stderr
    messages = cli_json("messages", "order-1")
    assert [(m["topic"], m["payload"], m["consumed"]) for m in messages] == [("payment", {"amount": 42}, False)]

    # Without a broker the CLI publishes nothing: the send left the woken workflow to the sweep,
    # which a worker runs (here, recover() publishes into the list and the test executes it).
    assert handle.status() == WorkflowStatus.PENDING and d.published == []
    assert d.recover() == 1
    (wakeup,) = d.published
    d.engine.execute(wakeup.workflow_id, wakeup.ticket, wakeup.name, checkout)
    assert handle.result(timeout=0) == {"reserved": "reserved o-1", "paid": {"amount": 42}}
    assert cli_json("messages", "order-1")[0]["consumed"] is True

    assert cli_json("prune", "--older-than", "1h") == {"deleted": 0}  # finished just now: kept
    assert cli_json("prune", "--older-than", "0s") == {"deleted": 1}
    assert cli_json("list") == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("steps", "nope"), "nope"),
        (("list", "--limit", "0"), "limit"),
        (("prune", "--older-than", "soon"), "older-than"),
        (("send", "nope", "--json", "{not json"), "JSON"),
        (("recover",), "broker"),
    ],
)
def test_standalone_cli_refuses_bad_input_in_one_line(
    shop: Any, sqlite_url: str, unique_prefix: str, args: tuple[str, ...], says: str
) -> None:
    done = run_cli(sqlite_url, unique_prefix, *args)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert says.lower() in done.stderr.lower(), done.stderr


def _env_without_url() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "CELERY_DURABLE_DATABASE_URL"}


@pytest.mark.parametrize("args", [("cancel", "order-1"), ("list",), ("prune", "--older-than", "1d")])
def test_standalone_cli_without_a_database_url_names_the_option_and_creates_nothing(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    assert CLI is not None
    done = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=_env_without_url())
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "--database-url" in done.stderr and "CELERY_DURABLE_DATABASE_URL" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []  # no celery_durable.sqlite3 (nor its lock directory) appeared


def test_standalone_cli_never_creates_a_store_it_is_pointed_at(tmp_path: Path, unique_prefix: str) -> None:
    missing = tmp_path / "typo.sqlite3"
    done = run_cli(f"sqlite:///{missing}", unique_prefix, "cancel", "order-1")
    assert done.returncode == 1 and "no SQLite store" in done.stderr and str(missing) in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []

    # A database that exists but holds no workflow tables (another app's, or the wrong --prefix): refused, untouched.
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    done = run_cli(f"sqlite:///{other}", unique_prefix, "list")
    assert done.returncode == 1 and "no celery_durable tables" in done.stderr and unique_prefix in done.stderr, done.stderr
    with sqlite3.connect(other) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["notes"]

    # migrate is the command that creates it.
    done = run_cli(f"sqlite:///{missing}", unique_prefix, "migrate")
    assert done.returncode == 0 and missing.exists(), done.stderr
    assert run_cli(f"sqlite:///{missing}", unique_prefix, "list").stdout.strip() == "(none)"
