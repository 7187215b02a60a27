"""Every public entry point outside workflows, fed hostile values, on SQLite and PostgreSQL.

Each call either succeeds and the value comes back exactly, or raises the documented DurableError
subclass; after a refused call every table is unchanged and nothing was published.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from celery_durable import InvalidArgument, SerializationError, WorkflowHandle, WorkflowNotFound, WorkflowStatus
from celery_durable.integration import MESSAGE_HEADER, TICKET_KW
from tests.properties.conftest import Harness
from tests.properties.strategies import (
    PROPS,
    as_stored,
    limits,
    names,
    payloads,
    same,
    statuses,
    texts,
    timeouts,
    valid_limit,
    valid_name,
    valid_payload,
    valid_status,
    valid_timeout,
)


def refused(h: Harness, error: type[Exception], call: Callable[[], Any]) -> None:
    """*call* raises *error*, changes no row and publishes nothing."""
    before = h.dump()
    h.published.reset()
    with pytest.raises(error):
        call()
    assert h.dump() == before
    assert h.published.messages == []


@PROPS
@given(value=names)
def test_start_with_any_workflow_id(h: Harness, value: Any) -> None:
    if value is None:  # no id: one is made up
        assert h.store.get_workflow(h.echo.start(1, workflow_id=None).workflow_id) is not None
        return
    if not valid_name(value):
        refused(h, InvalidArgument, lambda: h.echo.start(1, workflow_id=value))
        refused(h, InvalidArgument, lambda: h.echo.apply_async((1,), task_id=value))
        return
    existed = h.store.get_workflow(value) is not None
    h.published.reset()
    handle = h.echo.start(1, workflow_id=value)
    assert handle.workflow_id == value
    record = h.durable.handle(value).record()
    assert record.workflow_id == value and record.name == h.echo.name
    assert len(h.published.messages) == (0 if existed else 1)


@PROPS
@given(value=names)
def test_lookups_with_any_workflow_id(h: Harness, value: Any) -> None:
    calls: dict[str, Callable[[], Any]] = {
        "handle": lambda: h.durable.handle(value),
        "WorkflowHandle": lambda: WorkflowHandle(h.durable, value),
        "list_steps": lambda: h.durable.list_steps(value),
        "get_event": lambda: h.durable.get_event(value, "k", timeout=0),
        "send": lambda: h.durable.send(value, 1),
        "cancel": lambda: h.durable.cancel(value),
    }
    if not valid_name(value):
        for call in calls.values():
            refused(h, InvalidArgument, call)
        return
    exists = h.store.get_workflow(value) is not None
    assert h.durable.list_steps(value) == [] or exists
    assert h.durable.get_event(value, "k", timeout=0, default="none") == "none"
    if not exists:
        for name in ("handle", "send", "cancel"):
            refused(h, WorkflowNotFound, calls[name])


@PROPS
@given(topic=st.one_of(st.none(), names), key=st.one_of(st.none(), names), message=payloads)
def test_send_with_any_topic_key_and_payload(h: Harness, topic: Any, key: Any, message: Any) -> None:
    destination = "mailbox"
    call = lambda: h.durable.send(destination, message, topic=topic, idempotency_key=key, create_mailbox=True)  # noqa: E731
    if not (topic is None or valid_name(topic)) or not (key is None or valid_name(key)):
        refused(h, InvalidArgument, call)
        return
    if not valid_payload(message):
        refused(h, SerializationError, call)
        return
    m = h.store.t.messages  # type: ignore[attr-defined]
    with h.store.engine.connect() as conn:  # type: ignore[attr-defined]
        repeat = (
            key is not None
            and conn.execute(
                sa.select(m.c.seq).where(m.c.destination == destination, m.c.idempotency_key == key)
            ).first()
        )
    if repeat:
        before = h.dump()
        call()
        assert h.dump() == before, "a repeated idempotency key stores nothing"
        return
    call()
    with h.store.engine.connect() as conn:  # type: ignore[attr-defined]
        row = conn.execute(sa.select(m).where(m.c.destination == destination).order_by(m.c.seq.desc()).limit(1)).one()
    assert row.topic == (topic or "") and row.idempotency_key == key
    assert same(h.durable.serializer.loads(row.payload), as_stored(message))


@PROPS
@given(args=st.lists(payloads, max_size=2))
def test_start_with_any_arguments(h: Harness, args: list[Any]) -> None:
    if not all(valid_payload(a) for a in args):
        refused(h, SerializationError, lambda: h.echo.start(*args))
        return
    handle = h.echo.start(*args)
    inputs = h.durable.serializer.loads(handle.record().inputs)
    assert same(inputs, {"args": as_stored(args), "kwargs": {}})


@PROPS
@given(
    key=st.one_of(
        names.filter(lambda k: not isinstance(k, list)), st.sampled_from(["__durable_ticket__", "__durable_busy__"])
    ),
    value=payloads,
)
def test_keyword_names_never_collide_with_internal_ones(h: Harness, key: Any, value: Any) -> None:
    call = lambda: h.echo.apply_async((), {key: value})  # noqa: E731
    if not isinstance(key, str):
        refused(h, InvalidArgument, call)
        return
    if not valid_payload({key: value}):
        refused(h, SerializationError, call)
        return
    h.published.reset()
    result = call()
    record = h.durable.handle(result.id).record()
    assert same(h.durable.serializer.loads(record.inputs), {"args": [], "kwargs": {key: as_stored(value)}})
    (message,) = h.published.messages
    assert message["headers"][MESSAGE_HEADER] == 1
    assert message["body"][1] == {TICKET_KW: record.ticket}, "the message carries our ticket, not the user's kwargs"


@PROPS
@given(timeout=timeouts)
def test_timeouts_outside_workflows(h: Harness, timeout: Any) -> None:
    pending = h.echo.start(workflow_id="never-runs")  # the memory broker has no worker: it stays PENDING
    if not valid_timeout(timeout):
        refused(h, InvalidArgument, lambda: h.durable.get_event("never-runs", "k", timeout=timeout))
        refused(h, InvalidArgument, lambda: pending.result(timeout=timeout))
        return
    if timeout is not None and float(timeout) <= 0.01:  # a valid timeout that ends at once: nothing hangs
        assert h.durable.get_event("never-runs", "k", timeout=timeout, default="none") == "none"
        with pytest.raises(TimeoutError):
            pending.result(timeout=timeout)


@PROPS
@given(status=statuses, name=st.one_of(st.none(), names), limit=limits)
def test_list_workflows_filters(h: Harness, status: Any, name: Any, limit: Any) -> None:
    call = lambda: h.durable.list_workflows(status=status, name=name, limit=limit)  # noqa: E731
    if not (valid_status(status) and (name is None or valid_name(name)) and valid_limit(limit)):
        refused(h, InvalidArgument, call)
        return
    found = call()
    assert len(found) <= limit
    assert all(status is None or r.status == WorkflowStatus(status) for r in found)
    assert all(name is None or r.name == name for r in found)


@PROPS
@given(poll=timeouts)
def test_result_poll_interval(h: Harness, poll: Any) -> None:
    pending = h.echo.start(workflow_id="never-runs")
    if valid_timeout(poll, allow_none=False) and float(poll) > 0:
        with pytest.raises(TimeoutError):
            pending.result(timeout=0, poll_interval=poll)
    else:
        refused(h, InvalidArgument, lambda: pending.result(timeout=0, poll_interval=poll))


@PROPS
@given(name=texts)
def test_error_messages_name_the_argument_and_stay_short(h: Harness, name: str) -> None:
    bad = "\x00" + name * 1000
    with pytest.raises(InvalidArgument) as info:
        h.durable.send("mailbox", 1, topic=bad)
    message = str(info.value)
    assert message.startswith("topic ") and len(message) < 400
    json.dumps(message)  # printable and storable as is
