"""The dashboard in a real headless browser (Debian's chromium driven by Playwright), on workflows run by a real worker.

The dashboard runs as users start it: ``celery -A tests.apps.wfapp durable dashboard --allow-actions``
in a subprocess. scripts/test.sh installs chromium with apt-get when it is missing; where that
is impossible this test is skipped, saying so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_durable import WorkflowStatus
from tests.conftest import BROKERS, configured_app, make_env
from tests.services import ROOT, running_worker, wait_for

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        pytest.skip(
            "the dashboard's browser test needs Debian's chromium, which is not installed and could not be "
            "installed here (scripts/test.sh runs `apt-get install chromium` when it can)"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def responds(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def dashboard(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """``celery -A tests.apps.wfapp durable dashboard --allow-actions`` on a free port; yields its URL."""
    port = free_port()
    log = open(tmp_path / "dashboard.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.apps.wfapp", "durable", "dashboard", "--port", str(port), "--allow-actions"],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: responds(url + "/api/counts") or proc.poll() is not None, what="the dashboard to listen")
        assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture
def env(pg_database: str, tmp_path: Path) -> dict[str, str]:
    return make_env(BROKERS["redis"](), pg_database, tmp_path)


@pytest.fixture
def wf(env: dict[str, str]) -> Iterator[Any]:
    with configured_app(env) as module, running_worker(env):
        yield module


def ids_on(page: Any) -> list[str]:
    return sorted(page.locator("tr.workflow").evaluate_all("rows => rows.map(r => r.dataset.id)"))


def test_the_dashboard_lists_filters_draws_and_acts(wf: Any, dashboard: str) -> None:
    from playwright.sync_api import sync_playwright

    executable = chromium()
    # Given: one workflow that finished, one waiting for a message (with another one pending), one that failed.
    assert wf.three_adds.start(1, workflow_id="dash-ok").result(timeout=30) == 4
    waiting = wf.steps_then_recv.start(1, 300, workflow_id="dash-wait")
    wait_for(lambda: waiting.status() == WorkflowStatus.WAITING, what="dash-wait to wait")
    wf.durable.send("dash-wait", {"note": "not the awaited topic"}, topic="other")
    failed = wf.failing.start("card declined", workflow_id="dash-bad")
    wait_for(lambda: failed.status() == WorkflowStatus.ERROR, what="dash-bad to fail")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        # The list loads, with the counts by status.
        page.goto(dashboard + "/")
        assert ids_on(page) == ["dash-bad", "dash-ok", "dash-wait"]
        assert page.locator('#counts a[data-status="WAITING"] .count').inner_text() == "1"
        page.screenshot(path="/tmp/celery_durable-dashboard-list.png", full_page=True)

        # Filters: status, id prefix, name.
        page.select_option("select[name=status]", "ERROR")
        page.click("form.filters button")
        assert ids_on(page) == ["dash-bad"]
        page.goto(dashboard + "/")
        page.fill("input[name=id_prefix]", "dash-w")
        page.click("form.filters button")
        assert ids_on(page) == ["dash-wait"]
        page.goto(dashboard + "/")
        page.fill("input[name=name]", "tests.apps.wfapp.three_adds")
        page.click("form.filters button")
        assert ids_on(page) == ["dash-ok"]

        # The workflow page: one bar per checkpoint, the wait going on, the pending message.
        page.goto(dashboard + "/")
        page.click("text=dash-wait")
        steps = wf.durable.list_steps("dash-wait")
        assert len(steps) == 2
        assert page.locator("#timeline rect.checkpoint").count() == len(steps)
        assert page.locator("#timeline rect.wait-open").count() == 1
        assert "not the awaited topic" in page.locator("#messages").inner_text()
        page.screenshot(path="/tmp/celery_durable-dashboard-workflow.png", full_page=True)

        # Actions change the workflow in the store.
        page.click("#cancel")
        assert page.locator("#status").inner_text() == "CANCELLED"
        assert waiting.status() == WorkflowStatus.CANCELLED
        page.click("#resume")
        wait_for(lambda: waiting.status() == WorkflowStatus.WAITING, what="the resumed workflow to wait again")

        # A failed workflow shows its error.
        page.goto(dashboard + "/workflow?id=dash-bad")
        assert page.locator("#error").inner_text() == "ValueError: card declined"
        assert page.locator("#timeline rect.checkpoint.failed").count() == 1
        browser.close()
