"""A send from a view joins the view's transaction: a rollback sends and wakes nothing; a commit
stores the message with the view's own data, and the workflow is woken after the commit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from celery_durable import WorkflowNotFound, WorkflowStatus
from tests.services import wait_for


@pytest.fixture
def published(durable: Any) -> Iterator[list[tuple[str, WorkflowStatus | None]]]:
    """Every task message this process publishes: (workflow id, its status as *another* connection sees it)."""
    from celery.signals import before_task_publish

    seen: list[tuple[str, WorkflowStatus | None]] = []

    def record(headers: dict[str, Any] | None = None, **_: Any) -> None:
        workflow_id = (headers or {}).get("id")
        record_ = durable.store.get_workflow(workflow_id)  # the store's own connection: committed data only
        seen.append((workflow_id, record_.status if record_ is not None else None))

    before_task_publish.connect(record, weak=False)
    yield seen
    before_task_publish.disconnect(record)


@pytest.fixture
def waiting(worker: Any, durable: Any, order_id: str) -> Any:
    from shop.workflows import checkout

    handle = checkout.start(order_id, workflow_id=order_id)
    wait_for(lambda: handle.status() == WorkflowStatus.WAITING, what="the checkout waiting for its payment")
    return durable.store.get_workflow(order_id)


def test_rolled_back_send_stores_nothing_and_wakes_nothing(
    waiting: Any, durable: Any, published: list[Any], order_id: str
) -> None:
    from django.test import Client
    from shop.models import Payment
    from shop.views import PaymentRejected

    from celery_durable.contrib.django.models import Message

    with pytest.raises(PaymentRejected):
        Client().get(f"/orders/{order_id}/pay/", {"fail": 1})

    assert not Payment.objects.filter(order_id=order_id).exists()
    assert not Message.objects.filter(destination=order_id).exists()
    after = durable.store.get_workflow(order_id)
    assert after.status == WorkflowStatus.WAITING
    assert after.ticket == waiting.ticket  # a wake-up would have taken a new ticket
    assert published == []


def test_committed_send_is_stored_with_the_data_and_wakes_the_workflow(
    waiting: Any, durable: Any, published: list[Any], order_id: str
) -> None:
    from django.test import Client
    from shop.models import Payment

    from celery_durable.contrib.django.models import Message

    assert Client().get(f"/orders/{order_id}/pay/").status_code == 200

    assert Payment.objects.filter(order_id=order_id, status="paid").exists()
    assert Message.objects.filter(destination=order_id, topic="payment").count() == 1
    # Published once, and only after the commit: another connection already saw it woken.
    assert published == [(order_id, WorkflowStatus.PENDING)]
    assert durable.handle(order_id).result(timeout=30) == f"{order_id}: paid"


def test_failed_send_leaves_the_callers_transaction_usable(durable: Any, django_ready: None, order_id: str) -> None:
    from django.db import transaction
    from shop.models import Payment

    with transaction.atomic():
        Payment.objects.create(order_id=order_id, status="paid")
        with pytest.raises(WorkflowNotFound):
            durable.send(f"{order_id}-unknown", "paid", topic="payment")
        Payment.objects.create(order_id=order_id, status="noted")  # the transaction goes on

    assert Payment.objects.filter(order_id=order_id).count() == 2
