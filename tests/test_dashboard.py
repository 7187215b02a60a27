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


def test_mounted_under_a_prefix_every_link_form_and_fetch_stays_under_it(client: DurableClient) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    site = Starlette(routes=[Mount("/ops/durable", app=create_app(client, allow_actions=True))])
    web = TestClient(site, base_url="http://dash.local")
    index = web.get("/ops/durable/")
    assert index.status_code == 200
    page = web.get("/ops/durable/workflow", params={"id": "order-1"})
    assert page.status_code == 200
    for text in (index.text, page.text):
        urls = re.findall(r'(?:href|action)="([^"]*)"', text) + re.findall(r'fetch\("([^"]*)"', text)
        local = [u for u in urls if u.startswith("/")]
        assert local and all(u.startswith("/ops/durable/") for u in local), local
    assert web.get("/ops/durable/api/counts").json()["counts"]["PENDING"] == 1

    done = web.post(
        "/ops/durable/workflow/cancel",
        data={"id": "order-1", "csrf": token_of(page.text)},
        headers={"Origin": "http://dash.local"},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == "/ops/durable/workflow?id=order-1&done=cancel"
    assert client.handle("order-1").status() == WorkflowStatus.CANCELLED


def test_the_schedules_page_lists_the_stored_schedules_read_only(client: DurableClient) -> None:
    web = TestClient(create_app(client))
    assert "No schedule is stored." in web.get("/schedules").text
    client.schedule("nightly-report", "shop.report", 3600, overlap="buffer_one")
    client.pause_schedule("nightly-report")
    page = web.get("/schedules")
    assert page.status_code == 200
    row = html.unescape(page.text)
    for shown in ("nightly-report", "shop.report", "every 3600s", "buffer_one", "paused"):
        assert shown in row, shown
    assert 'href="/schedules"' in web.get("/").text, "the header links to the schedules"
