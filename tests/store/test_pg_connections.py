"""How many PostgreSQL connections a process opens: one pool per store, capped by pool_size, and one
listener connection for every ``handle.result()`` of the process (not one per call)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from celery_durable import DurableClient, core
from celery_durable.serialization import JSONSerializer
from celery_durable.store import open_store
from celery_durable.store.postgres import PostgresStore
from celery_durable.worker import pool_defaults
from tests import services


def _sessions(dbname: str) -> int:
    """Connections ever opened to *dbname* (PostgreSQL 14+ counts them in pg_stat_database)."""
    with psycopg.connect(services.PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (dbname,)).fetchone()
    assert row is not None
    return int(row[0])


def _open(dbname: str, name: str) -> int:
    with psycopg.connect(services.PG_ADMIN_DSN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s", (dbname, name)
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def pg_store(pg_database: str, unique_prefix: str) -> Iterator[tuple[PostgresStore, str, str]]:
    name = f"cdtest-{uuid.uuid4().hex[:8]}"
    options = {**pool_defaults(1, False), "connect_args": {"application_name": name}}  # a prefork child's pool
    store = open_store(pg_database, unique_prefix, options)
    assert isinstance(store, PostgresStore)
    store.migrate()
    yield store, pg_database.rsplit("/", 1)[-1], name
    store.close()


def test_transactions_and_executions_share_one_capped_pool(pg_store: tuple[PostgresStore, str, str]) -> None:
    store, dbname, name = pg_store
    record, _ = store.create_workflow("wf-pool", "body", JSONSerializer().dumps({"args": [], "kwargs": {}}), None, 1.0)
    lease = store.acquire("wf-pool")  # an execution's connection, held
    assert lease is not None
    peak = [0]
    stop = threading.Event()

    def busy() -> None:  # reads (AUTOCOMMIT) and transactions (SQLAlchemy's) from several threads at once
        while not stop.is_set():
            store.get_workflow("wf-pool")
            store.leave_to_sweep(core.Dispatch("wf-pool", "body", None, record.ticket))

    threads = [threading.Thread(target=busy) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            peak[0] = max(peak[0], _open(dbname, name))
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join()
        store.release(lease)
    assert 1 <= peak[0] <= 2, f"a store sized for one task at a time held {peak[0]} connections"


def test_result_calls_do_not_open_a_connection_each(pg_store: tuple[PostgresStore, str, str]) -> None:
    store, dbname, name = pg_store
    client = DurableClient(store=store)
    inputs = JSONSerializer().dumps({"args": [], "kwargs": {}})
    engine = core.Engine(store, JSONSerializer(), client.config, lambda d: None)
    done, _ = store.create_workflow("wf-done", "body", inputs, None, 1.0)
    assert isinstance(engine.execute("wf-done", done.ticket, "body", lambda: "ok"), core.Finished)
    store.create_workflow("wf-open", "body", inputs, None, 1.0)
    before = _sessions(dbname)
    for _ in range(100):
        assert client.handle("wf-done").result(timeout=1) == "ok"
        with pytest.raises(TimeoutError):
            client.handle("wf-open").result(timeout=0.001)
    opened = _sessions(dbname) - before
    assert opened <= 3, f"200 result() calls opened {opened} connections"
    assert _open(dbname, name) <= 3  # the pool (at most 2) and the one listener


def test_a_waiting_result_is_woken_by_the_finish_even_after_the_listener_lost_its_connection(
    pg_store: tuple[PostgresStore, str, str],
) -> None:
    store, dbname, name = pg_store
    client = DurableClient(store=store)
    inputs = JSONSerializer().dumps({"args": [], "kwargs": {}})
    engine = core.Engine(store, JSONSerializer(), client.config, lambda d: None)

    def finish_while_waiting(workflow_id: str) -> float:
        record, _ = store.create_workflow(workflow_id, "body", inputs, None, 1.0)
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(client.handle(workflow_id).result(poll_interval=60)))
        waiter.start()
        time.sleep(0.3)  # result() waits; its polls are a minute apart
        started = time.monotonic()
        assert isinstance(engine.execute(workflow_id, record.ticket, "body", lambda: "done"), core.Finished)
        waiter.join(timeout=30)
        assert got == ["done"]
        return time.monotonic() - started

    assert finish_while_waiting("wf-a") < 10  # woken by the NOTIFY, not by a poll a minute later
    with psycopg.connect(services.PG_ADMIN_DSN, autocommit=True) as conn:  # the listener's connection dies
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND application_name = %s "
            "AND query LIKE 'LISTEN%%' OR (datname = %s AND application_name = %s AND query LIKE 'UNLISTEN%%')",
            (dbname, name, dbname, name),
        )
    assert finish_while_waiting("wf-b") < 10  # a new listener connection took over
    assert store.finish_listener().connections_opened == 2
