from django.db import transaction
from django.http import HttpRequest, HttpResponse
from proj.celery import durable

from .models import Payment


class PaymentRejected(Exception):
    """Raised after the send, to show that the send rolls back with the view's own writes."""


def pay(request: HttpRequest, order_id: str) -> HttpResponse:
    """Record a payment and tell the order's workflow, in one transaction."""
    with transaction.atomic():
        Payment.objects.create(order_id=order_id, status="paid")
        durable.send(order_id, "paid", topic="payment")
        if request.GET.get("fail"):
            raise PaymentRejected(order_id)
    return HttpResponse("ok")
