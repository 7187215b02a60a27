"""ENQUEUED (waiting for a concurrency slot) as operators see it: ``celery-durable list``/``show`` (a
subprocess) and the dashboard (Starlette's test client), on a real SQLite store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from celery_durable import DurableClient, WorkflowStatus
from celery_durable.dashboard import create_app
from celery_durable.store import FlowLimit

from .test_cli_standalone import run_cli


@pytest.fixture
def queued(sqlite_url: str, unique_prefix: str) -> Iterator[tuple[DurableClient, Any]]:
    with DurableClient(sqlite_url, table_prefix=unique_prefix) as client:
        store = client.store
        store.migrate()
        for i in range(3):
            store.create_workflow(f"r-{i}", "reports.build", "{}", None, 1_000_000.0 + i, flow=FlowLimit("reports.build[acme]", 2))
        yield client, sqlite_url


def test_the_cli_lists_and_shows_enqueued_workflows(queued: tuple[DurableClient, Any], unique_prefix: str) -> None:
    client, url = queued
    assert client.handle("r-2").status() is WorkflowStatus.ENQUEUED
    listed = run_cli(url, unique_prefix, "--json", "list", "--status", "ENQUEUED")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["workflow_id"], r["status"]) for r in rows] == [("r-2", "ENQUEUED")]
    shown = run_cli(url, unique_prefix, "show", "r-2")
    assert shown.returncode == 0, shown.stderr
    assert "status       ENQUEUED" in shown.stdout
    assert "concurrency  key reports.build[acme], priority 0, waiting for a slot" in shown.stdout


def test_the_dashboard_filters_and_shows_enqueued_workflows(queued: tuple[DurableClient, Any]) -> None:
    client, _ = queued
    web = TestClient(create_app(client))
    listing = web.get("/", params={"status": "ENQUEUED"})
    assert listing.status_code == 200 and "r-2" in listing.text and "r-0" not in listing.text
    page = web.get("/workflow", params={"id": "r-2"})
    assert "ENQUEUED" in page.text and "waiting for a slot" in page.text
    assert web.get("/api/counts").json()["counts"]["ENQUEUED"] == 1
