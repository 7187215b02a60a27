"""The shop's durable workflows (found by ``app.autodiscover_tasks(related_name="workflows")``)."""

from proj.celery import durable


@durable.step()
def reserve(order_id: str) -> str:
    return f"reserved {order_id}"


@durable.workflow(name="shop.checkout")
def checkout(order_id: str) -> str:
    reserve(order_id)
    durable.set_event("stage", "awaiting payment")
    status = durable.recv("payment", timeout=3600)
    return f"{order_id}: {status}"


@durable.workflow(name="shop.refund")
def refund(order_id: str) -> str:
    return f"refunded {order_id}"
