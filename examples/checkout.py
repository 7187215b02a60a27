"""A checkout workflow on the embedded default: SQLite store, no server at all.

The broker is kombu's ``filesystem://`` transport: messages are files in a folder that every
process on the machine shares, so a producer and a ``celery worker`` talk without a server.
Countdown retries (how a waiting workflow leaves its worker) need nothing from the transport:
the worker holds a countdown message until it is due. The transport has no redelivery after a
crash, so it is for trying things out; production uses Redis or RabbitMQ.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

from celery_durable import Durable

DATA = Path(os.environ.get("DEMO_DATA", Path(__file__).resolve().parent.parent / "demo-data"))

# CHECKOUT_BROKER_URL points the same app at Redis or RabbitMQ (docker/docker-compose.yml does).
BROKER = os.environ.get("CHECKOUT_BROKER_URL", "filesystem://")
app = Celery("checkout", broker=BROKER)
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
if BROKER == "filesystem://":
    (DATA / "broker").mkdir(parents=True, exist_ok=True)
    app.conf.update(
        broker_transport_options={
            "data_folder_in": str(DATA / "broker"),
            "data_folder_out": str(DATA / "broker"),
            "control_folder": str(DATA / "control"),
            "polling_interval": 0.05,
        },
        worker_enable_remote_control=False,  # the filesystem transport has no broadcast
    )

# No database URL: the embedded SQLite store. (CELERY_DURABLE_DATABASE_URL overrides; the demo
# points it into its own folder.)
durable = Durable(app, os.environ.get("CELERY_DURABLE_DATABASE_URL", f"sqlite:///{DATA / 'workflows.sqlite3'}"))


@durable.step()
def reserve_stock(order_id: str, items: list[str]) -> dict:
    return {"order": order_id, "reserved": items}


@durable.step()
def request_payment(order_id: str, amount: float) -> str:
    return f"pay-{order_id}"


@durable.step()
def ship(order_id: str) -> str:
    return f"tracking-{order_id}"


@durable.step()
def release_stock(order_id: str) -> str:
    return f"released {order_id}"


@durable.workflow()
def checkout(order_id: str, items: list[str], amount: float) -> str:
    reserve_stock(order_id, items)
    request_payment(order_id, amount)
    # Wait for the payment provider's callback without holding a worker.
    status = durable.recv("payment_status", timeout=60, default="timed out")
    if status != "paid":
        release_stock(order_id)
        return f"cancelled ({status})"
    durable.sleep(0.5)  # e.g. a cooling-off period: durable, the worker is free meanwhile
    return f"shipped: {ship(order_id)}"
