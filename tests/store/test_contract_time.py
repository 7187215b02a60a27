"""The store contract for time skipping in tests (``shift_deadlines``), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from celery_durable.store import Dispatch, StepRecord, Suspended, WorkflowStatus

from .conftest import T0, Harness, recv

HORIZON = 300.0


def test_shift_deadlines_moves_waits_and_timeouts_earlier_and_forgets_armed_timers(h: Harness) -> None:
    store = h.store
    far = h.waiting("far", "t", timeout=86400)  # beyond the horizon: no timer armed
    near = h.running("near")
    armed = store.wait_step(near, recv(1, "t", timeout=60, now=T0, horizon=HORIZON))
    assert isinstance(armed, Suspended) and armed.dispatch is not None
    store.create_workflow("timed", "wf", "[]", "q", T0, timeout_at=T0 + 7200)
    store.create_workflow("done", "wf", "[]", "q", T0, timeout_at=T0 + 7200)
    store.cancel("done", T0)
    for lease in (far, near):
        h.release(lease)

    assert store.shift_deadlines(3600) == 3

    assert store.get_workflow("far").deadline == pytest.approx(T0 + 86400 - 3600)  # type: ignore[union-attr]
    moved = store.get_workflow("near")
    assert moved is not None and moved.status is WorkflowStatus.WAITING
    assert moved.deadline == pytest.approx(T0 + 60 - 3600) and moved.timer_due is None
    assert moved.ticket == armed.dispatch.ticket, "nothing else changes: the sweep bumps the ticket"
    assert store.get_workflow("timed").timeout_at == pytest.approx(T0 + 3600)  # type: ignore[union-attr]
    assert store.get_workflow("done").timeout_at == pytest.approx(T0 + 7200), "finished ones keep theirs"  # type: ignore[union-attr]


def test_after_a_shift_the_sweep_fires_the_due_timer_now_and_the_old_one_is_stale(h: Harness) -> None:
    store = h.store
    h.release(h.waiting("w", "t", timeout=60))  # its timer is armed, due in 60 s
    armed = store.get_workflow("w")
    assert armed is not None and armed.timer_due is not None

    store.shift_deadlines(60)
    (dispatch,) = store.sweep(T0, HORIZON, 0.0)
    assert dispatch == Dispatch("w", "wf", "q", armed.ticket + 1, 0.0)

    lease = h.acquire("w")
    assert lease is not None
    assert store.begin(lease, armed.ticket, T0) is None, "the old countdown message does nothing"
    assert store.begin(lease, dispatch.ticket, T0) is not None
    timed_out = store.wait_step(lease, recv(1, "t", timeout=60, now=T0))
    assert isinstance(timed_out, StepRecord) and timed_out.output is None


def test_shift_deadlines_on_an_empty_store_changes_nothing(h: Harness) -> None:
    h.create("plain")
    assert h.store.shift_deadlines(10) == 0
