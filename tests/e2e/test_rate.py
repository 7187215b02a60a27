"""Rate limits across real worker processes (Redis and RabbitMQ, PostgreSQL), measured from the times
the workflows record.

The timing goal (a saturating run within 10 % of the ideal) is measured by benchmarks/bench_flow.py;
here the bound on starts per window is exact and the bound on the total is generous.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import load_app
from tests.services import Worker, wait_for
from tests.store.test_contract_rate import most_in_a_window

#: Scheduling jitter of a loaded 2-core machine: a start may come a little after its turn, so a window
#: may hold one or two starts of its neighbour (the turns themselves never do: the store contract).
JITTER = 2


def load(env: dict[str, str]) -> Any:
    """tests.apps.rateapp configured by *env* in this (producer) process."""
    return load_app(env, "tests.apps.rateapp")


@pytest.fixture
def rateapp(e2e_env: dict[str, str]) -> Iterator[tuple[Any, list[Worker]]]:
    module = load(e2e_env)
    module.durable.store.migrate()
    workers = [Worker(e2e_env, concurrency=2, app="tests.apps.rateapp").start() for _ in range(2)]
    try:
        yield module, workers
    finally:
        for worker in workers:
            worker.stop()
        try:
            with module.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(e2e_env["CD_QUEUE"])
        except Exception:
            pass
        module.durable.store.close()


def results(module: Any, handles: list[Any], timeout: float = 120) -> list[Any]:
    return [h.result(timeout=timeout) for h in handles]


def test_a_step_limited_to_20_per_second_called_200_times_from_2_workers(rateapp: tuple[Any, list[Worker]]) -> None:
    module, _ = rateapp
    began = time.time()
    handles = [module.one_call.start(i) for i in range(200)]
    starts = results(module, handles)
    assert len(starts) == 200
    assert most_in_a_window(starts, 1.0) <= 20 + JITTER
    assert min(starts) >= began
    span = max(starts) - min(starts)
    assert span >= 199 / 20 - 0.5, "the calls are spaced by the limit, not bunched"
    assert span <= 3 * 199 / 20, "a generous bound: the timing goal is in benchmarks/bench_flow.py"


def test_rate_key_limits_each_account_on_its_own(rateapp: tuple[Any, list[Worker]]) -> None:
    module, _ = rateapp
    handles = [module.charge_twice.start(account, i) for i in range(30) for account in ("a", "b")]
    by_account: dict[str, list[float]] = {"a": [], "b": []}
    for i, starts in enumerate(results(module, handles)):
        by_account["ab"[i % 2]].extend(starts)
    for starts in by_account.values():
        assert len(starts) == 60
        assert most_in_a_window(starts, 1.0) <= 20 + JITTER
    # Two accounts together go faster than one limit would allow: they are not one limit.
    together = by_account["a"] + by_account["b"]
    assert most_in_a_window(together, 1.0) > 20 + JITTER


def test_a_rate_limited_workflow_is_admitted_at_the_rate(rateapp: tuple[Any, list[Worker]]) -> None:
    module, _ = rateapp
    handles = [module.admitted.start(i) for i in range(60)]
    starts = results(module, handles)
    assert most_in_a_window(starts, 1.0) <= 20 + JITTER
    assert max(starts) - min(starts) >= 59 / 20 - 0.5
    wait_for(lambda: module.durable.store.waiting_count() == 0, timeout=30)
