"""PostgreSQL's claimed lease: the hot path runs on the pooled DBAPI connection, and the SQLAlchemy
connection generic code asks for later is built around that same session (the one holding the lock)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from celery_durable.store import WorkflowStatus, open_store
from celery_durable.store.postgres import PostgresStore
from celery_durable.store.sql_lease import SQLLease

from .conftest import T0, fresh_prefix, step


@pytest.fixture
def pg(pg_database: str) -> Iterator[PostgresStore]:
    store = open_store(pg_database, fresh_prefix())
    assert isinstance(store, PostgresStore)
    store.migrate()
    yield store
    store.close()


def _claim(store: PostgresStore, workflow_id: str) -> SQLLease:
    record, created = store.create_workflow(workflow_id, "wf", "[]", None, T0)
    assert created
    lease, execution = store.claim(workflow_id, record.ticket, T0)
    assert isinstance(lease, SQLLease) and execution is not None
    return lease


def test_generic_code_runs_on_the_session_that_holds_the_lock(pg: PostgresStore) -> None:
    lease = _claim(pg, "w")
    raw_pid = pg._cursor(lease).execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    # A second claim fails while this one holds the lock (not only a second execution of the same session).
    other, _ = pg.claim("w", 0, T0)
    assert other is None
    pg.record_step(lease, step("w", 0))
    pg.set_event(lease, "k", '"v"', step("w", 1, output="null", kind="set_event"))  # generic code: builds lease.conn
    assert lease.conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == raw_pid
    pg.finish(lease, WorkflowStatus.SUCCESS, '"ok"', None, T0)
    pg.release(lease)
    assert pg.exec_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    record = pg.get_workflow("w")
    assert record is not None and record.status is WorkflowStatus.SUCCESS


def test_a_released_lease_unlocks_and_returns_its_connection(pg: PostgresStore) -> None:
    lease = _claim(pg, "w")  # executions=1: no history read
    pg.record_step(lease, step("w", 0))
    pg.release(lease)  # unfinished: unlock, then back to the pool
    assert pg.exec_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    record = pg.get_workflow("w")
    assert record is not None
    again, execution = pg.claim("w", record.ticket, T0)
    assert again is not None and execution is not None
    assert sorted(execution.steps) == [0]
    pg.release(again)
    assert pg.exec_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_claim_that_finds_the_lock_taken_returns_its_connection(pg: PostgresStore) -> None:
    lease = _claim(pg, "w")
    before = pg.exec_engine.pool.checkedout()  # type: ignore[attr-defined]
    other, execution = pg.claim("w", 0, T0)
    assert other is None and execution is None
    assert pg.exec_engine.pool.checkedout() == before  # type: ignore[attr-defined]
    pg.release(lease)
