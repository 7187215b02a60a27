"""The dashboard's guards, in process (Starlette's test client): actions only when allowed, and only from its own forms.

tests/e2e/test_dashboard.py drives the whole dashboard in a browser.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from celery_durable import DurableClient, WorkflowStatus
from celery_durable.dashboard import create_app


@pytest.fixture
def client(sqlite_url: str) -> Iterator[DurableClient]:
    with DurableClient(sqlite_url) as c:  # no broker: started workflows stay PENDING
        c.start("shop.checkout", "o-1", workflow_id="order-1")
        yield c


def token_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "the page has no action form"
    return found.group(1)


def test_without_allow_actions_there_are_no_buttons_and_posts_are_refused(client: DurableClient) -> None:
    web = TestClient(create_app(client))
    page = web.get("/workflow", params={"id": "order-1"})
    assert page.status_code == 200 and "Cancel</button>" not in page.text
    refused = web.post("/workflow/cancel", data={"id": "order-1", "csrf": "x"})
    assert refused.status_code == 403 and "--allow-actions" in refused.text
    assert client.handle("order-1").status() == WorkflowStatus.PENDING


def test_an_action_needs_the_pages_token_and_a_same_origin_request(client: DurableClient) -> None:
    web = TestClient(create_app(client, allow_actions=True), base_url="http://dash.local")
    token = token_of(web.get("/workflow", params={"id": "order-1"}).text)
    assert web.post("/workflow/cancel", data={"id": "order-1", "csrf": "forged"}).status_code == 403
    cross_site = web.post("/workflow/cancel", data={"id": "order-1", "csrf": token}, headers={"Origin": "http://evil.example"})
    assert cross_site.status_code == 403
    assert client.handle("order-1").status() == WorkflowStatus.PENDING

    done = web.post("/workflow/cancel", data={"id": "order-1", "csrf": token}, headers={"Origin": "http://dash.local"})
    assert done.status_code == 200 and "it is now CANCELLED" in done.text  # followed the redirect to the page
    assert client.handle("order-1").status() == WorkflowStatus.CANCELLED


def test_unknown_ids_and_bad_filters_say_so(client: DurableClient) -> None:
    web = TestClient(create_app(client))
    missing = web.get("/workflow", params={"id": "nope"})
    assert missing.status_code == 404 and "no workflow with id 'nope'" in html.unescape(missing.text)
    bad = web.get("/", params={"status": "SLEEPY"})
    assert bad.status_code == 400 and "SLEEPY" in bad.text
    assert web.get("/api/counts").json()["counts"]["PENDING"] == 1
