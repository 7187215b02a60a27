"""Deduplication as a user sees it: ``start(..., dedup_key=...)`` from threads, from processes and from
``DurableClient``, with real ``celery worker`` processes on Redis and RabbitMQ and the store on PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from celery_durable import DuplicateWorkflow, DurableClient, InvalidArgument, WorkflowStatus
from tests.conftest import load_app
from tests.services import ROOT, Worker, wait_for


def load(env: dict[str, str]) -> Any:
    """tests.apps.flowapp configured by *env* in this (producer) process."""
    return load_app(env, "tests.apps.flowapp")


@pytest.fixture
def flow(e2e_env: dict[str, str]) -> Iterator[tuple[Any, dict[str, str]]]:
    module = load(e2e_env)
    module.durable.migrate()
    worker = Worker(e2e_env, app="tests.apps.flowapp").start()
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


def status(module: Any, workflow_id: str) -> WorkflowStatus:
    return module.durable.handle(workflow_id).status()  # type: ignore[no-any-return]


def test_one_workflow_per_key_from_threads_and_every_api_until_it_finishes(flow: tuple[Any, dict[str, str]]) -> None:
    module, env = flow
    barrier = threading.Barrier(12)

    def start(i: int) -> str:
        barrier.wait()
        return module.held.start(f"t{i}", dedup_key="order-7").workflow_id  # type: ignore[no-any-return]

    with ThreadPoolExecutor(12) as pool:
        ids = set(pool.map(start, range(12)))
    assert len(ids) == 1, f"concurrent starts made {ids}"
    (first,) = ids
    wait_for(lambda: status(module, first) is WorkflowStatus.WAITING, 60, what="the one workflow waits")
    assert len(module.marks("ran")) == 1, "exactly one body ran"

    # While it waits: every way of starting it returns it, or refuses with a clear error.
    assert module.held.start("again", dedup_key="order-7").workflow_id == first
    assert module.held.apply_async(("again",), dedup_key="order-7").id == first
    with pytest.raises(DuplicateWorkflow, match=rf"order-7.*{first}"):
        module.held.start("again", dedup_key="order-7", on_conflict="raise")
    with DurableClient(env["CD_DATABASE_URL"], env["CD_BROKER"], table_prefix=env["CD_PREFIX"]) as client:
        assert client.start("tests.apps.flowapp.held", "c", dedup_key="order-7").workflow_id == first
        with pytest.raises(DuplicateWorkflow):
            client.start("tests.apps.flowapp.held", "c", dedup_key="order-7", on_conflict="raise")
    # Another key, or no key, is another workflow.
    other = module.held.start("o", dedup_key="order-8").workflow_id
    assert other != first
    with pytest.raises(InvalidArgument, match="on_conflict"):
        module.held.start("x", dedup_key="order-7", on_conflict="ignore")

    module.durable.send(first, "done", topic="go")
    assert module.durable.handle(first).result(timeout=60) == module.marks("ran")[0]
    # Finished: the key is free, and the next start is a new workflow that runs with its own arguments.
    second = module.held.start("next", dedup_key="order-7").workflow_id
    assert second != first
    wait_for(lambda: "next" in module.marks("ran"), 60, what="the second workflow ran")
    # Cancelled, it frees the key; once a third holds it, the second cannot be resumed.
    module.durable.cancel(second)
    third = module.held.start("third", dedup_key="order-7").workflow_id
    assert third not in (first, second)
    with pytest.raises(DuplicateWorkflow, match=third):
        module.durable.resume(second)
    assert status(module, second) is WorkflowStatus.CANCELLED
    module.durable.cancel(third)
    module.durable.send(other, "done", topic="go")
    assert module.durable.handle(other).result(timeout=60) == "o"


_PRODUCER = """
import os, sys, time
from celery_durable import DurableClient
env_url, broker, prefix, queue, n, go = sys.argv[1:7]
client = DurableClient(env_url, broker, table_prefix=prefix, queue=queue)
while not os.path.exists(go):
    time.sleep(0.001)
for i in range(10):
    print(i, client.start("tests.apps.flowapp.held", f"p{n}-{i}", dedup_key=f"key-{i}").workflow_id, flush=True)
client.close()
"""


def test_processes_starting_the_same_keys_get_one_workflow_each(flow: tuple[Any, dict[str, str]], tmp_path: Path) -> None:
    module, env = flow
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PRODUCER, env["CD_DATABASE_URL"], env["CD_BROKER"], env["CD_PREFIX"], env["CD_QUEUE"], str(n), str(go)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for n in range(4)
    ]
    go.write_text("")
    got: dict[int, set[str]] = {}
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        for line in out.splitlines():
            i, wid = line.split()
            got.setdefault(int(i), set()).add(wid)
    assert len(got) == 10 and all(len(ids) == 1 for ids in got.values()), got
    wait_for(lambda: len(module.marks("ran")) >= 10, 90, what="ten bodies ran")
    for ids in got.values():
        (wid,) = ids
        wait_for(lambda wid=wid: status(module, wid) is WorkflowStatus.WAITING, 60, what="each waits")
    ran = module.marks("ran")
    assert len(ran) == 10, f"one body per key, got {ran}"
    for ids in got.values():
        module.durable.cancel(next(iter(ids)))
