"""What a Django user sees: ``manage.py migrate`` made the tables, the admin lists workflows,
filters them, shows a workflow's steps, messages and events, and cancels or resumes it."""

from __future__ import annotations

import time
from typing import Any

from celery_durable import WorkflowStatus
from celery_durable.store.schema import LATEST_VERSION
from tests.services import wait_for

LIST_URL = "/admin/celery_durable/workflow/"


def start_waiting(durable: Any, order_id: str) -> None:
    """Start a checkout and let the worker run it up to its ``recv``."""
    from shop.workflows import checkout

    handle = checkout.start(order_id, workflow_id=order_id)
    wait_for(lambda: handle.status() == WorkflowStatus.WAITING, what=f"{order_id} waiting")


def test_migrate_creates_the_library_tables(migrate_output: str, durable: Any) -> None:
    from django.db import connection

    from celery_durable.contrib.django.models import Event, Message, Step, Workflow

    assert "Applying celery_durable.0001_initial... OK" in migrate_output
    tables = set(connection.introspection.table_names())
    prefix = durable.config.table_prefix
    assert {f"{prefix}{t}" for t in ("workflows", "steps", "messages", "events", "schema_version")} <= tables
    assert durable.store.schema_version() == LATEST_VERSION
    # One source of truth: the admin's models read exactly the columns the library's schema declares.
    declared = durable.store.t
    for model, table in ((Workflow, declared.workflows), (Step, declared.steps), (Message, declared.messages)):
        assert model._meta.db_table == table.name
        assert {f.column for f in model._meta.concrete_fields} == set(table.c.keys())
    assert {f.column for f in Event._meta.concrete_fields} == set(declared.events.c.keys())


def test_durable_is_configured_from_settings(durable: Any) -> None:
    from django.db import connection

    assert durable.config.sweep_interval == 2  # from settings.CELERY_DURABLE
    assert durable.config.auto_migrate is False  # manage.py migrate owns the schema
    name = connection.settings_dict["NAME"]
    assert durable.database_url.startswith("sqlite:///" if connection.vendor == "sqlite" else "postgresql+psycopg://")
    assert durable.database_url.split("?")[0].endswith(str(name))


def test_list_shows_workflows_and_filters_narrow_it(
    worker: Any, durable: Any, admin_client: Any, order_id: str
) -> None:
    from shop.workflows import refund

    from celery_durable.contrib.django.models import Workflow

    start_waiting(durable, order_id)
    old = f"{order_id}-refund"
    refund.start(order_id, workflow_id=old).result(timeout=30)
    # Given the refund was made 40 days ago:
    Workflow.objects.filter(pk=old).update(created_at=time.time() - 40 * 86400)

    page = admin_client.get(LIST_URL).content.decode()
    assert order_id in page and old in page
    assert '<option value="cancel">' in page and '<option value="resume">' in page

    waiting = admin_client.get(LIST_URL, {"status__exact": "WAITING"}).content.decode()
    assert order_id in waiting and old not in waiting
    by_name = admin_client.get(LIST_URL, {"name": "shop.refund"}).content.decode()
    assert old in by_name and f">{order_id}<" not in by_name
    recent = admin_client.get(LIST_URL, {"created": "7d"}).content.decode()
    assert order_id in recent and old not in recent
    found = admin_client.get(LIST_URL, {"q": old}).content.decode()
    assert old in found and f">{order_id}<" not in found


def test_workflow_page_shows_steps_messages_and_events(
    worker: Any, durable: Any, admin_client: Any, order_id: str
) -> None:
    start_waiting(durable, order_id)
    durable.send(order_id, {"note": "gift wrap"}, topic="notes")  # not the topic it waits on

    response = admin_client.get(f"{LIST_URL}{order_id}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "shop.workflows.reserve" in page and f"reserved {order_id}" in page  # the step and its output
    assert "stage" in page and "awaiting payment" in page  # the event
    assert "notes" in page and "gift wrap" in page  # the message
    assert "WAITING" in page and "payment" in page  # what it waits for
    assert 'name="_save"' not in page  # read-only: nothing to save


def select(client: Any, action: str, *workflow_ids: str) -> str:
    response = client.post(
        LIST_URL, {"action": action, "_selected_action": list(workflow_ids), "index": 0}, follow=True
    )
    assert response.status_code == 200
    return response.content.decode()


def test_cancel_action_cancels_in_the_store(worker: Any, durable: Any, admin_client: Any, order_id: str) -> None:
    start_waiting(durable, order_id)

    page = select(admin_client, "cancel", order_id)

    assert "Cancelled 1 workflow(s)." in page
    assert durable.handle(order_id).status() == WorkflowStatus.CANCELLED


def test_actions_need_the_change_permission(durable: Any, django_ready: None) -> None:
    from django.contrib.auth.models import Permission, User
    from django.test import Client

    viewer = User.objects.create_user(f"viewer-{time.time_ns()}", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_workflow"))
    client = Client()
    client.force_login(viewer)

    page = client.get(LIST_URL).content.decode()

    assert "Select workflow to view" in page  # the viewer sees the list ...
    assert '<option value="cancel">' not in page  # ... without the actions


def test_resume_action_resumes_a_cancelled_workflow(
    worker: Any, durable: Any, admin_client: Any, order_id: str
) -> None:
    start_waiting(durable, order_id)
    durable.cancel(order_id)

    page = select(admin_client, "resume", order_id)

    assert "Resumed 1 workflow(s)." in page
    handle = durable.handle(order_id)
    wait_for(lambda: handle.status() == WorkflowStatus.WAITING, what="the resumed workflow back at its recv")
    durable.send(order_id, "paid", topic="payment")
    assert handle.result(timeout=30) == f"{order_id}: paid"
