"""``handle.result()`` waits without a tight poll: on PostgreSQL the finishing statement wakes it (NOTIFY)."""

from __future__ import annotations

import threading
import time
from typing import Any

from celery_durable import DurableClient, core
from celery_durable.serialization import JSONSerializer
from celery_durable.store import Store


def test_result_returns_when_the_workflow_finishes_and_reads_little(store: Store) -> None:
    client = DurableClient(store=store)
    reads = [0]
    get = store.get_workflow

    def counted(workflow_id: str) -> Any:
        reads[0] += 1
        return get(workflow_id)

    store.get_workflow = counted  # type: ignore[method-assign]
    record, _ = store.create_workflow("wf", "body", JSONSerializer().dumps({"args": [], "kwargs": {}}), None, 1.0)
    got: list[Any] = []
    poll = 20.0 if store.notifies_finish else 0.05
    waiter = threading.Thread(target=lambda: got.append(client.handle("wf").result(timeout=60, poll_interval=poll)))
    waiter.start()
    time.sleep(0.5)  # result() is waiting
    engine = core.Engine(store, JSONSerializer(), client.config, lambda d: None)
    assert isinstance(engine.execute("wf", record.ticket, "body", lambda: "done"), core.Finished)
    waiter.join(timeout=15)
    assert got == ["done"], "result() must return once the workflow finished (NOTIFY on PostgreSQL, polling else)"
    if store.notifies_finish:
        assert reads[0] <= 4, f"result() read the workflow {reads[0]} times: it should wait for the NOTIFY"
