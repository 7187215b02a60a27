"""A user's project, as the plugin's tests write it into a fresh directory: workflows and their tests."""

PYTEST_INI = """
[pytest]
pythonpath = .
durable_app = shop.workflows:durable
filterwarnings =
    error
    ignore::DeprecationWarning
    ignore::PendingDeprecationWarning
"""

WORKFLOWS = '''
from celery import Celery

from celery_durable import Durable

# Production settings: a broker the tests never reach (the plugin swaps it for an in-memory one).
app = Celery("shop", broker="redis://broker.invalid:6379/0")
durable = Durable(app, queue="workflows")
attempts = []


@durable.step()
def reserve(order_id):
    return f"reserved {order_id}"


@durable.step(retries=1, retry_interval=600)
def charge(order_id):
    attempts.append(order_id)
    if len(attempts) == 1:
        raise ConnectionError("payment provider down")
    return "charged"


@durable.workflow()
def checkout(order_id):
    reserve(order_id)
    status = durable.recv("payment_status", timeout=3600)
    return "done" if status == "paid" else "cancelled"


@durable.workflow()
def reminder(order_id):
    durable.sleep(86400)
    return f"reminded {order_id}"


@durable.workflow()
def pay(order_id):
    return charge(order_id)


@durable.workflow()
def reserve_only(order_id):
    return reserve(order_id)


@durable.workflow(timeout=7200)
def approval(order_id):
    return durable.recv("approved", timeout=None)
'''

#: How many tests TESTS holds (all pass).
TEST_COUNT = 7

TESTS = '''
import pytest

from celery_durable import WorkflowStatus, WorkflowTimedOut
from celery_durable.testing import run_workflow, wait_until_waiting
from shop.workflows import approval, checkout, pay, reminder, reserve_only


def test_checkout_waits_for_payment(durable, durable_worker):
    h = checkout.start("o-1", workflow_id="order-1")
    wait_until_waiting(h)
    durable.send("order-1", "paid", topic="payment_status")
    assert h.result(timeout=10) == "done"


def test_checkout_gives_up_after_an_hour(durable_clock):
    h = checkout.start("o-2", workflow_id="order-2")
    assert durable_clock.advance(3600) == 1
    assert h.result(timeout=10) == "cancelled"


def test_half_the_time_is_not_enough(durable_clock):
    h = checkout.start("o-3", workflow_id="order-3")
    durable_clock.advance(1800)
    assert wait_until_waiting(h).status is WorkflowStatus.WAITING
    durable_clock.advance(1800)
    assert h.result(timeout=10) == "cancelled"


def test_a_day_of_sleep(durable_clock):
    h = reminder.start("o-4")
    durable_clock.advance(86400)
    assert h.result(timeout=10) == "reminded o-4"


def test_a_retry_pause(durable_clock):
    h = pay.start("o-5")
    durable_clock.advance(600)
    assert h.result(timeout=10) == "charged"


def test_a_workflow_timeout(durable_clock):
    h = approval.start("o-6")
    durable_clock.advance(7200)
    with pytest.raises(WorkflowTimedOut):
        h.result(timeout=10)


def test_each_test_has_its_own_store(durable, durable_worker):
    assert durable.list_workflows() == []
    assert run_workflow(reserve_only, "o-7", workflow_id="order-1") == "reserved o-7"
'''
