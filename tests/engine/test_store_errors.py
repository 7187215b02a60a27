"""Store errors inside executions: transient ones interrupt (and are retried), permanent ones fail the operation.

The engine is driven by hand against a real store (SQLite and PostgreSQL). Errors are injected by a
wrapper that raises a real driver error (psycopg's or sqlite3's, wrapped by SQLAlchemy as the store
would raise it) from one store method, and poison values are written through the real store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from celery_durable import core
from celery_durable.config import DurableConfig
from celery_durable.errors import StoreRejected
from celery_durable.serialization import JSONSerializer
from celery_durable.store import Store, WorkflowStatus


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def transient_error(store: Store) -> Exception:
    """A deadlock (PostgreSQL) or "database is locked" (SQLite), as SQLAlchemy raises it."""
    if store.engine.dialect.name == "postgresql":  # type: ignore[attr-defined]
        orig: Exception = psycopg.errors.DeadlockDetected("deadlock detected")
    else:
        orig = sqlite3.OperationalError("database is locked")
        orig.sqlite_errorcode = 5  # type: ignore[attr-defined]  # SQLITE_BUSY, as sqlite3 sets it
    return sa.exc.OperationalError("INSERT ...", {}, orig)


def permanent_error(store: Store) -> Exception:
    """A check violation (PostgreSQL) or a constraint failure (SQLite), as SQLAlchemy raises it."""
    if store.engine.dialect.name == "postgresql":  # type: ignore[attr-defined]
        return sa.exc.IntegrityError("INSERT ...", {}, psycopg.errors.CheckViolation("violates check constraint"))
    return sa.exc.IntegrityError("INSERT ...", {}, sqlite3.IntegrityError("CHECK constraint failed"))


class FaultyStore:
    """Delegates to a real store; ``fail(method, error, times)`` makes that method raise *error* the next *times* calls."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._faults: dict[str, list[Exception]] = {}

    def fail(self, method: str, error: Exception, times: int = 1) -> None:
        self._faults[method] = [error] * times

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            pending = self._faults.get(name)
            if pending:
                raise pending.pop()
            return attr(*args, **kwargs)

        return call


@pytest.fixture
def faulty(store: Store) -> FaultyStore:
    return FaultyStore(store)


@pytest.fixture
def engine(faulty: FaultyStore) -> core.Engine:
    return core.Engine(faulty, JSONSerializer(), DurableConfig(horizon=60), lambda d: None, clock=Clock())  # type: ignore[arg-type]


def start(engine: core.Engine, workflow_id: str) -> int:
    record, _ = engine.store.create_workflow(workflow_id, "body", '{"args":[],"kwargs":{}}', None, 1.0)
    return record.ticket


def step_body(calls: list[str]) -> Callable[[], str]:
    def body() -> str:
        ctx = core.require_context("test")
        return ctx.run_step("s", lambda: calls.append("s") or "out", (), {})

    return body


def test_transient_error_interrupts_and_the_retry_finishes(engine: core.Engine, faulty: FaultyStore) -> None:
    calls: list[str] = []
    ticket = start(engine, "wf")
    faulty.fail("record_step", transient_error(faulty._store))
    outcome = engine.execute("wf", ticket, "body", step_body(calls))
    assert isinstance(outcome, core.Interrupted)
    assert engine.store.get_workflow("wf").status == WorkflowStatus.RUNNING
    again = engine.execute("wf", ticket, "body", step_body(calls))  # the same ticket: the task system's retry
    assert isinstance(again, core.Finished) and again.value == "out"
    assert calls == ["s", "s"], "the step whose checkpoint was not written runs again (at-least-once)"


def test_permanent_error_fails_the_operation_and_the_workflow(engine: core.Engine, faulty: FaultyStore) -> None:
    ticket = start(engine, "wf")
    faulty.fail("record_step", permanent_error(faulty._store))
    outcome = engine.execute("wf", ticket, "body", step_body([]))
    assert isinstance(outcome, core.Failed) and isinstance(outcome.error, StoreRejected)
    assert "refused step 's' of workflow 'wf' for good" in str(outcome.error)
    record = engine.store.get_workflow("wf")
    assert record.status == WorkflowStatus.ERROR and "StoreRejected" in record.error


def test_body_can_catch_a_permanent_error_and_go_on(engine: core.Engine, faulty: FaultyStore) -> None:
    def body() -> str:
        ctx = core.require_context("test")
        try:
            ctx.set_event("k", '"v"')
        except StoreRejected:
            ctx.set_event("k", '"fallback"')
            return "recovered"
        return "unexpected"

    ticket = start(engine, "wf")
    faulty.fail("set_event", permanent_error(faulty._store))
    outcome = engine.execute("wf", ticket, "body", body)
    assert isinstance(outcome, core.Finished) and outcome.value == "recovered"
    assert engine.store.get_event("wf", "k") == '"fallback"'


def test_a_swallowed_transient_error_still_interrupts(engine: core.Engine, faulty: FaultyStore) -> None:
    def body() -> str:
        ctx = core.require_context("test")
        try:
            ctx.send("wf", "t", '"m"', False)
        except Exception:
            pass  # user code that hides errors must not turn a lost write into SUCCESS
        return "done"

    ticket = start(engine, "wf")
    faulty.fail("send", transient_error(faulty._store))
    assert isinstance(engine.execute("wf", ticket, "body", body), core.Interrupted)
    assert engine.store.get_workflow("wf").status == WorkflowStatus.RUNNING


def test_claim_errors_interrupt_or_refuse(engine: core.Engine, faulty: FaultyStore) -> None:
    ticket = start(engine, "wf")
    faulty.fail("claim", transient_error(faulty._store))
    assert isinstance(engine.execute("wf", ticket, "body", lambda: 1), core.Interrupted)
    faulty.fail("claim", permanent_error(faulty._store))
    assert isinstance(engine.execute("wf", ticket, "body", lambda: 1), core.Refused)
    assert isinstance(engine.execute("wf", ticket, "body", lambda: 1), core.Finished)


def test_refused_output_ends_in_error(engine: core.Engine, faulty: FaultyStore) -> None:
    ticket = start(engine, "wf")
    faulty.fail("finish", permanent_error(faulty._store))
    outcome = engine.execute("wf", ticket, "body", lambda: "value")
    assert isinstance(outcome, core.Failed) and isinstance(outcome.error, StoreRejected)
    assert engine.store.get_workflow("wf").status == WorkflowStatus.ERROR


@pytest.mark.parametrize("poison", ["k\x00", "\ud800", "x" * 300])
def test_real_poison_values_end_in_error_on_both_stores(engine: core.Engine, poison: str) -> None:
    """Bypassing validation (the engine API takes stored forms), a value a store cannot hold fails the
    workflow instead of retrying forever; on a store that can hold it, the workflow simply finishes."""

    def body() -> str:
        core.require_context("test").set_event(poison, "1")
        return "done"

    ticket = start(engine, "wf")
    outcome = engine.execute("wf", ticket, "body", body)
    assert isinstance(outcome, (core.Finished, core.Failed)), outcome
    status = engine.store.get_workflow("wf").status
    if isinstance(outcome, core.Failed):
        assert isinstance(outcome.error, StoreRejected) and status == WorkflowStatus.ERROR
    else:
        assert status == WorkflowStatus.SUCCESS and engine.store.get_event("wf", poison) == "1"


# -- the classification itself, on real errors -----------------------------------------------------
def real_errors(store: Store) -> dict[str, Exception]:
    """Provoke real errors of each kind from the store's own database."""
    engine: sa.Engine = store.engine  # type: ignore[attr-defined]
    errors: dict[str, Exception] = {}

    def catch(kind: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as exc:
            errors[kind] = exc

    def run(sql: str, params: dict[str, Any] | None = None) -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(sql), params or {})

    catch("missing table", lambda: run("SELECT * FROM no_such_table_here"))
    run("CREATE TABLE IF NOT EXISTS cls_probe (k INTEGER PRIMARY KEY, v VARCHAR(5))")
    run("DELETE FROM cls_probe")
    run("INSERT INTO cls_probe VALUES (1, 'a')")
    catch("duplicate key", lambda: run("INSERT INTO cls_probe VALUES (1, 'b')"))
    catch("surrogate", lambda: run("INSERT INTO cls_probe VALUES (2, :v)", {"v": "\ud800"}))
    url = engine.url
    if engine.dialect.name == "postgresql":
        catch("NUL", lambda: run("INSERT INTO cls_probe VALUES (3, :v)", {"v": "a\x00"}))
        catch("too long", lambda: run("INSERT INTO cls_probe VALUES (4, 'abcdefgh')"))
        catch("connection refused", lambda: sa.create_engine(url.set(port=1)).connect())
        with engine.connect() as holder:
            holder.execute(sa.text("LOCK TABLE cls_probe"))
            catch("lock timeout", lambda: run("SET LOCAL lock_timeout = '10ms'; LOCK TABLE cls_probe"))
            holder.rollback()
    else:
        holder = sqlite3.connect(url.database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            locked = sa.create_engine(url, connect_args={"timeout": 0})
            with locked.connect() as conn:
                catch("locked", lambda: conn.exec_driver_sql("BEGIN IMMEDIATE"))
            locked.dispose()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    return errors


def test_real_errors_are_classified(store: Store) -> None:
    errors = real_errors(store)
    transient = {"connection refused", "lock timeout", "locked"}
    expected = {"missing table", "duplicate key", "surrogate"} | (
        {"NUL", "too long", "connection refused", "lock timeout"}
        if store.engine.dialect.name == "postgresql"  # type: ignore[attr-defined]
        else {"locked"}
    )
    assert set(errors) == expected, errors
    verdicts = {kind: store.is_transient(exc) for kind, exc in errors.items()}
    assert verdicts == {kind: kind in transient for kind in errors}, {k: repr(e)[:120] for k, e in errors.items()}
    assert store.is_transient(transient_error(store)) and not store.is_transient(permanent_error(store))
    assert store.is_transient(ConnectionResetError()) and not store.is_transient(ValueError())
