"""Every durable operation inside a workflow body, fed hostile values, on SQLite and PostgreSQL.

The engine is driven by hand (as a worker would, one execution per message). A body that catches
the error gets the documented DurableError subclass; a body that does not ends in ERROR. Never is
a workflow left RUNNING or retried by a poison value.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from celery_durable import DurableError, WorkflowStatus, core
from tests.properties.conftest import Harness
from tests.properties.strategies import (
    PROPS,
    as_stored,
    names,
    payloads,
    same,
    timeouts,
    valid_name,
    valid_payload,
    valid_timeout,
)

_ids = itertools.count()
_last: list[str] = []  # the id of the workflow run_body started last


def run_body(h: Harness, operation: Callable[[], Any], catch: bool) -> tuple[core.Outcome, WorkflowStatus]:
    """Start a workflow, execute *operation* as its body once; return the outcome and the stored status."""
    handle = h.echo.start(workflow_id=f"body-{next(_ids)}")
    _last[:] = [handle.workflow_id]
    ticket = handle.record().ticket

    def body() -> Any:
        if not catch:
            return operation()
        try:
            return operation()
        except DurableError as exc:
            return type(exc).__name__

    outcome = h.durable.engine.execute(handle.workflow_id, ticket, h.echo.name, body)
    return outcome, handle.status()


def check(h: Harness, operation: Callable[[], Any], expected_error: str | None, waits: bool | None = False) -> Any:
    """Run *operation* in a body twice (caught, uncaught) and check both ends; return the caught run's value.

    *waits*: whether a valid call must wait (True), must not (False), or may do either (None: a timeout
    so short that ``now + timeout`` may round to ``now``).
    """
    outcome, status = run_body(h, operation, catch=True)
    assert status != WorkflowStatus.RUNNING
    if waits is None and isinstance(outcome, core.Waiting):
        waits = True
    if waits and expected_error is None:
        assert isinstance(outcome, core.Waiting) and status == WorkflowStatus.WAITING
        return None
    assert isinstance(outcome, core.Finished), outcome
    if expected_error is not None:
        assert outcome.value == expected_error
        failed, status = run_body(h, operation, catch=False)
        assert isinstance(failed, core.Failed) and type(failed.error).__name__ == expected_error
        assert status == WorkflowStatus.ERROR
    return outcome.value


def waits(timeout: Any) -> bool | None:
    """Whether a wait with a valid *timeout* leaves the worker: None (forever) and long ones do, 0 does not."""
    if timeout is None:
        return True
    if not valid_timeout(timeout):
        return False  # refused: nothing waits
    seconds = float(timeout)
    return False if seconds == 0 else True if seconds >= 1e-3 else None


@PROPS
@given(key=names, value=payloads)
def test_set_event(h: Harness, key: Any, value: Any) -> None:
    expected = None if valid_name(key) else "InvalidArgument"
    if expected is None and not valid_payload(value):
        expected = "SerializationError"

    def op() -> Any:
        h.durable.set_event(key, value)
        return h.durable.workflow_id

    workflow_id = check(h, op, expected)
    if expected is None:
        assert same(h.durable.get_event(workflow_id, key, timeout=0), as_stored(value))


@PROPS
@given(topic=st.one_of(st.none(), names), message=payloads)
def test_send_inside_a_workflow(h: Harness, topic: Any, message: Any) -> None:
    expected = None if topic is None or valid_name(topic) else "InvalidArgument"
    if expected is None and not valid_payload(message):
        expected = "SerializationError"
    check(h, lambda: h.durable.send("mailbox", message, topic=topic, create_mailbox=True), expected)


@PROPS
@given(topic=st.one_of(st.none(), names), timeout=timeouts)
def test_recv(h: Harness, topic: Any, timeout: Any) -> None:
    ok = (topic is None or valid_name(topic)) and valid_timeout(timeout)
    value = check(
        h,
        lambda: h.durable.recv(topic, timeout=timeout, default="none"),
        None if ok else "InvalidArgument",
        waits(timeout),
    )
    assert value in (None, "none", "InvalidArgument")


@PROPS
@given(topics=st.one_of(st.lists(st.one_of(st.none(), names), max_size=3), names), timeout=timeouts)
def test_recv_any(h: Harness, topics: Any, timeout: Any) -> None:
    ok = (
        isinstance(topics, list)
        and len(topics) > 0
        and all(t is None or valid_name(t) for t in topics)
        and valid_timeout(timeout)
    )
    check(h, lambda: h.durable.recv_any(topics, timeout=timeout), None if ok else "InvalidArgument", waits(timeout))


@PROPS
@given(workflow_id=names, key=names, timeout=timeouts)
def test_get_event(h: Harness, workflow_id: Any, key: Any, timeout: Any) -> None:
    ok = valid_name(workflow_id) and valid_name(key) and valid_timeout(timeout)
    op = lambda: h.durable.get_event(workflow_id, key, timeout=timeout, default="none")  # noqa: E731
    value = check(h, op, None if ok else "InvalidArgument", waits(timeout))
    assert value in (None, "none", "InvalidArgument")


@PROPS
@given(seconds=timeouts)
def test_sleep(h: Harness, seconds: Any) -> None:
    ok = valid_timeout(seconds, allow_none=False)
    check(h, lambda: h.durable.sleep(seconds), None if ok else "InvalidArgument", waits(seconds))


@PROPS
@given(value=payloads)
def test_step_and_workflow_outputs(h: Harness, value: Any) -> None:
    step = h.durable.step(name="props.identity")(lambda: value)
    expected = None if valid_payload(value) else "SerializationError"
    check(h, step, expected)
    if expected is None:
        (recorded,) = h.durable.list_steps(_last[0])
        assert recorded.output is not None and same(h.durable.serializer.loads(recorded.output), as_stored(value))
        assert same(h.durable.handle(_last[0]).result(timeout=0), as_stored(value))
