"""Store contract for rate limits (``take_turn``, ``wait_rate``), on SQLite and PostgreSQL.

The invariant: the starts reserved for one (limit, key) are at least one interval apart, so no window
of one period holds more than N of them, whoever takes them (threads, other processes).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from celery_durable.errors import WorkflowCancelled
from celery_durable.store import StepRecord, Suspended, WorkflowStatus

from .conftest import T0, Harness, store_url

ROOT = Path(__file__).resolve().parents[2]


def most_in_a_window(starts: list[float], period: float) -> int:
    """The largest number of *starts* in any half-open window [t, t + period) (to within float rounding)."""
    ordered = sorted(starts)
    best, first = 0, 0
    for last, start in enumerate(ordered):
        while ordered[first] <= start - period + 1e-6:
            first += 1
        best = max(best, last - first + 1)
    return best


def test_the_first_turn_is_now_and_the_next_ones_are_one_interval_apart(h: Harness) -> None:
    take = h.store.take_turn
    assert take("step:s", "", 0.5, T0) == T0
    assert take("step:s", "", 0.5, T0) == T0 + 0.5
    assert take("step:s", "", 0.5, T0 + 0.1) == T0 + 1.0
    # Once the reserved turns are in the past, the next one is now.
    assert take("step:s", "", 0.5, T0 + 10) == T0 + 10


def test_limits_and_keys_are_independent(h: Harness) -> None:
    take = h.store.take_turn
    assert take("step:s", "a", 1.0, T0) == T0
    assert take("step:s", "b", 1.0, T0) == T0  # another key value
    assert take("step:t", "a", 1.0, T0) == T0  # another limit
    assert take("step:s", "a", 1.0, T0) == T0 + 1.0


def test_a_changed_interval_applies_from_the_next_turn(h: Harness) -> None:
    take = h.store.take_turn
    assert take("step:s", "", 1.0, T0) == T0
    assert take("step:s", "", 0.25, T0) == T0 + 0.25


def test_a_turn_taken_through_a_lease_counts_like_any_other(h: Harness) -> None:
    lease = h.running("w")
    assert h.store.take_turn("step:s", "", 2.0, T0, lease) == T0
    assert h.store.take_turn("step:s", "", 2.0, T0) == T0 + 2.0
    assert h.store.take_turn("step:s", "", 2.0, T0, lease) == T0 + 4.0


def test_wait_rate_records_a_timed_wait_like_a_retry_pause(h: Harness) -> None:
    lease = h.running("w")
    result = h.store.wait_rate(lease, 3, "step:s", T0 + 5, T0, 300.0)
    assert isinstance(result, Suspended)
    assert result.dispatch is not None and result.dispatch.countdown == pytest.approx(5)
    wf = h.store.get_workflow("w")
    assert wf is not None
    assert (wf.status, wf.wait_kind, wf.wait_step, wf.deadline) == (WorkflowStatus.WAITING, "rate", 3, T0 + 5)
    assert result.dispatch.ticket == wf.ticket
    assert h.store.list_steps("w") == []  # no checkpoint
    # A send does not wake it: only its timer does.
    sent = h.store.send("w", "", '"x"', T0 + 1)
    assert sent.wakeups == ()
    # The next execution sees the wait it was woken from.
    h.resume(lease, T0 + 5)
    wf = h.store.get_workflow("w")
    assert wf is not None and (wf.status, wf.wait_kind, wf.wait_step) == (WorkflowStatus.RUNNING, "rate", 3)


def test_a_far_rate_wait_is_left_to_the_sweep(h: Harness) -> None:
    lease = h.running("w")
    result = h.store.wait_rate(lease, -1, "wf", T0 + 3600, T0, 300.0)
    assert result.dispatch is None
    h.release(lease)
    armed = h.store.sweep(T0 + 3400, 300.0, 30.0)
    assert [d.workflow_id for d in armed] == ["w"]
    assert armed[0].countdown == pytest.approx(200)


def test_wait_rate_on_a_cancelled_workflow_raises(h: Harness) -> None:
    lease = h.running("w")
    h.store.cancel("w", T0)
    with pytest.raises(WorkflowCancelled):
        h.store.wait_rate(lease, 0, "step:s", T0 + 5, T0, 300.0)
    wf = h.store.get_workflow("w")
    assert wf is not None and wf.status is WorkflowStatus.CANCELLED


def test_turns_taken_by_many_threads_are_an_interval_apart(h: Harness) -> None:
    """Race hammer: 8 threads (each with its own store, as workers on several hosts) take 400 turns of
    one limit of 20 per second at the same clock: no window of one second holds more than 20."""
    stores = [h.other_store() for _ in range(7)] + [h.store]
    interval = 1 / 20

    def take(i: int) -> list[float]:
        store = stores[i % len(stores)]
        return [store.take_turn("step:hammer", "k", interval, T0 + j * 0.001) for j in range(50)]

    with ThreadPoolExecutor(len(stores)) as pool:
        turns = [t for batch in pool.map(take, range(len(stores))) for t in batch]
    assert len(turns) == 400
    ordered = sorted(turns)
    assert all(b - a >= interval - 1e-9 for a, b in itertools.pairwise(ordered))
    assert most_in_a_window(turns, 1.0) == 20  # never more, and the limit is used
    assert ordered[-1] == pytest.approx(T0 + 399 * interval)  # nothing wasted: 400 turns in 20 s


_TAKER = """
import sys
from celery_durable.store import open_store
url, prefix = sys.argv[1:3]
store = open_store(url, prefix)
for j in range(40):
    print(repr(store.take_turn("step:procs", "", 0.1, 1000000.0 + j * 0.001)), flush=True)
store.close()
"""


def test_turns_taken_by_several_processes_are_an_interval_apart(h: Harness) -> None:
    """Race hammer across processes: 4 processes take 40 turns each of a limit of 10 per second."""
    url, prefix = store_url(h.store), h.store.prefix  # type: ignore[attr-defined]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _TAKER, url, prefix], stdout=subprocess.PIPE, cwd=str(ROOT), env=env, text=True)
        for _ in range(4)
    ]
    turns: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        turns += [float(line) for line in out.split()]
    assert len(turns) == 160
    assert len(set(turns)) == 160
    assert most_in_a_window(turns, 1.0) == 10


def test_the_turn_table_is_dropped_with_the_schema(h: Harness) -> None:
    """The table belongs to the store's metadata (the pytest plugin drops per-test prefixes with it)."""
    assert h.store.t.rate_limits.name == f"{h.store.prefix}rate_limits"  # type: ignore[attr-defined]
    assert h.store.t.rate_limits in h.store.t.metadata.sorted_tables  # type: ignore[attr-defined]


def test_a_checkpoint_after_a_rate_wait_clears_nothing_it_should_not(h: Harness) -> None:
    """After the wake-up the step runs and records its checkpoint as usual."""
    lease = h.running("w")
    h.store.wait_rate(lease, 0, "step:s", T0 + 2, T0, 300.0)
    h.resume(lease, T0 + 2)
    stored = h.store.record_step(lease, StepRecord("w", 0, "s", "step", '"ok"', None, None, T0 + 2, T0 + 2))
    assert stored.output == '"ok"'
    assert h.store.finish(lease, WorkflowStatus.SUCCESS, '"ok"', None, T0 + 3) == []
