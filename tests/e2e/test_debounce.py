"""Debouncing as a user sees it: ``wf.debounce(key, ...)`` from threads and from ``DurableClient``, with a
real ``celery worker`` on Redis and RabbitMQ and the store on PostgreSQL. Start times are the ones the
workflows record (tests/apps/debounceapp.py), compared with generous bounds.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from celery_durable import DurableClient, InvalidArgument, WorkflowStatus
from tests.services import Worker, wait_for

#: How late a round may start after it is due, on a loaded 2-core machine (broker and worker pick-up).
SLACK = 10.0


def load(env: dict[str, str]) -> Any:
    """tests.apps.debounceapp configured by *env* in this (producer) process."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        import tests.apps.debounceapp as module

        return importlib.reload(module)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def flow(e2e_env: dict[str, str]) -> Iterator[tuple[Any, dict[str, str]]]:
    module = load(e2e_env)
    module.durable.migrate()
    worker = Worker(e2e_env, app="tests.apps.debounceapp").start()
    try:
        yield module, e2e_env
    finally:
        worker.stop()
        try:
            with module.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(e2e_env["CD_QUEUE"])
        except Exception:
            pass
        module.durable.close()


def runs(module: Any, key: str) -> list[dict[str, Any]]:
    return [m for m in module.marks("flushed") if m["key"] == key]


def test_a_burst_runs_once_with_the_last_arguments_delay_after_the_last_call(flow: tuple[Any, dict[str, str]]) -> None:
    module, env = flow
    # Concurrent callers: one round, one handle.
    barrier = threading.Barrier(8)

    def call(i: int) -> str:
        barrier.wait()
        return module.flush.debounce("doc-1", "doc-1", f"t{i}", delay=2.0).workflow_id  # type: ignore[no-any-return]

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(call, range(8)))
    assert len(ids) == 1, f"concurrent calls made {ids}"
    (round_id,) = ids
    # Then a few more, one after another, from this process and from a DurableClient: the last one wins.
    # (queue=: the workers' queue, which a bare client's Celery app does not route to by itself.)
    with DurableClient(
        env["CD_DATABASE_URL"], env["CD_BROKER"], table_prefix=env["CD_PREFIX"], queue=env["CD_QUEUE"]
    ) as client:
        for i in range(3):
            assert module.flush.debounce("doc-1", "doc-1", f"s{i}", delay=2.0).workflow_id == round_id
            assert client.debounce(module.flush.name, "doc-1", "doc-1", f"c{i}", delay=2.0).workflow_id == round_id
        last_call = time.time()
    assert module.durable.handle(round_id).status() is WorkflowStatus.WAITING
    result = module.durable.handle(round_id).result(timeout=60)
    assert result["tag"] == "c2", "the last call's arguments"
    assert 2.0 - 0.05 <= result["at"] - last_call <= 2.0 + SLACK, f"started {result['at'] - last_call:.2f} s after the last call"
    time.sleep(1.0)
    assert len(runs(module, "doc-1")) == 1, "exactly one run for the whole burst"

    # Once the round ran, the next call opens a new round with its own arguments.
    again = module.flush.debounce("doc-1", "doc-1", "later", delay=0.5)
    assert again.workflow_id != round_id
    assert again.result(timeout=60)["tag"] == "later"
    assert [r["tag"] for r in runs(module, "doc-1")] == ["c2", "later"]


def test_a_steady_stream_is_cut_by_max_delay(flow: tuple[Any, dict[str, str]]) -> None:
    module, _ = flow
    first_call = time.time()
    handles = []
    # A call every 0.3 s for about 9 s, each pushing the start 1.5 s on; max_delay 4 s cuts each round.
    i = 0
    while time.time() - first_call < 9.0:
        handles.append(module.flush.debounce("feed", "feed", i, delay=1.5, max_delay=4.0))
        i += 1
        time.sleep(0.3)
    last_call = time.time()
    rounds = list(dict.fromkeys(h.workflow_id for h in handles))
    assert len(rounds) >= 2, "the stream never let a round start: max_delay did not hold"
    first = module.durable.handle(rounds[0]).result(timeout=60)
    assert first["at"] < last_call, "the first round started while the stream still ran"
    assert 4.0 - 0.05 <= first["at"] - first_call <= 4.0 + SLACK
    # Each round ran once, with the last arguments given to it.
    for wid in rounds:
        result = module.durable.handle(wid).result(timeout=60)
        mine = [i for i, h in enumerate(handles) if h.workflow_id == wid]
        assert result["tag"] == max(mine)
    wait_for(lambda: len(runs(module, "feed")) == len(rounds), 30, what="one run per round")
    time.sleep(1.0)
    assert len(runs(module, "feed")) == len(rounds)


def test_bad_arguments_are_refused_at_the_call(flow: tuple[Any, dict[str, str]]) -> None:
    module, _ = flow
    with pytest.raises(InvalidArgument, match="delay"):
        module.flush.debounce("k", "k", 1, delay=-1)
    with pytest.raises(InvalidArgument, match="max_delay"):
        module.flush.debounce("k", "k", 1, delay=5, max_delay=1)
    with pytest.raises(InvalidArgument, match="debounce key"):
        module.flush.debounce("", "k", 1, delay=1)
    with pytest.raises(TypeError):
        module.flush.debounce("k", "k", 1)  # delay is required


def test_waiting_rounds_hold_no_worker_slot(e2e_env: dict[str, str]) -> None:
    """A worker with one slot runs a workflow at once while 30 rounds wait for their start.

    Their start is beyond the horizon (300 s), so they have no timer message yet either: the sweep
    arms it when it comes within the horizon. (Rounds due sooner hold a countdown message like any
    wait's timer; on RabbitMQ, Celery raises a worker's prefetch for such messages only every few
    seconds, so many of them published at once delay a -c 1 worker's next message: a property of
    Celery's ETA messages, the same for every timer of this package.)
    """
    module = load(e2e_env)
    module.durable.migrate()
    worker = Worker(e2e_env, concurrency=1, app="tests.apps.debounceapp").start()
    try:
        waiting = [module.flush.debounce(f"idle-{i}", f"idle-{i}", i, delay=600.0) for i in range(30)]
        assert len({h.workflow_id for h in waiting}) == 30
        started = time.time()
        result = module.flush.start("now", "plain").result(timeout=60)
        assert result["tag"] == "plain" and result["at"] - started < 30.0
        assert all(h.status() is WorkflowStatus.WAITING for h in waiting)
        assert runs(module, "idle-0") == []
    finally:
        worker.stop()
        try:
            with module.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(e2e_env["CD_QUEUE"])
        except Exception:
            pass
        module.durable.close()
