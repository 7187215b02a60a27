"""The schedule entry points fed hostile values, on SQLite and PostgreSQL: a name, arguments and a
rule either come back exactly from the store, or are refused with ``InvalidArgument`` (or
``SerializationError``) and nothing is stored or published."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_durable import InvalidArgument, ScheduleNotFound, SerializationError
from celery_durable.schedules import MAX_INTERVAL
from tests.properties.conftest import Harness
from tests.properties.strategies import PROPS, as_stored, names, payloads, same, valid_name, valid_payload

rules = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-10, max_value=10**12),
    st.sampled_from(["2s", None, True, [], object()]),
)


def schedules(h: Harness) -> list[Any]:
    return [(s.name, s.workflow, s.schedule) for s in h.durable.list_schedules()]


def refused(h: Harness, error: type[Exception], call: Any) -> None:
    before, rows = schedules(h), h.dump()
    h.published.reset()
    with pytest.raises(error):
        call()
    assert schedules(h) == before and h.dump() == rows and h.published.messages == []


@PROPS
@given(name=names)
def test_schedule_names(h: Harness, name: Any) -> None:
    call = lambda: h.durable.schedule(name, h.echo, 60)  # noqa: E731
    if not valid_name(name) or len(f"sched:{name}:2026-01-01T00:00:00.500Z") > 255:
        refused(h, InvalidArgument, call)
        refused(h, (InvalidArgument, ScheduleNotFound), lambda: h.durable.trigger_schedule(name))  # type: ignore[arg-type]
        return
    info = call()
    assert info.name == name and h.durable.get_schedule(name).name == name
    h.durable.delete_schedule(name)


@PROPS
@given(args=st.lists(payloads, max_size=2))
def test_schedule_arguments_come_back_in_each_run(h: Harness, args: list[Any]) -> None:
    call = lambda: h.durable.schedule("props-args", h.echo, 60, args=args)  # noqa: E731
    if not all(valid_payload(a) for a in args):
        refused(h, SerializationError, call)
        return
    call()
    run = h.durable.trigger_schedule("props-args")
    assert same(h.durable.serializer.loads(run.record().inputs), {"args": as_stored(args), "kwargs": {}})


@PROPS
@given(rule=rules)
def test_schedule_rules(h: Harness, rule: Any) -> None:
    call = lambda: h.durable.schedule("props-rule", h.echo, rule)  # noqa: E731
    valid = not isinstance(rule, bool) and isinstance(rule, (int, float)) and 0.1 <= rule <= MAX_INTERVAL
    if not valid:
        refused(h, InvalidArgument, call)
        return
    assert call().schedule.startswith("every ")
