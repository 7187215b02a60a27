"""Fixtures on real services: PostgreSQL (a fresh database per run), SQLite files, Redis, RabbitMQ.

``e2e_env`` parametrises a test over brokers; a test starts ``Worker(e2e_env)`` processes
itself and imports ``tests.apps.wfapp`` to start workflows with the same configuration.
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import services


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    name = services.create_database()
    yield services.pg_url(name)
    services.drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/store.sqlite3"


@pytest.fixture
def unique_prefix() -> str:
    """A table prefix per test, so tests sharing the session database never see each other's rows."""
    return f"t{uuid.uuid4().hex[:10]}_"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path, unique_prefix: str) -> Iterator[Any]:
    """A migrated store on each backend."""
    from celery_durable.store import open_store

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/store.sqlite3"
    else:
        url = request.getfixturevalue("pg_database")
    s = open_store(url, unique_prefix)
    s.migrate()
    yield s
    s.close()


BROKERS = {
    "redis": lambda: f"{services.REDIS_URL}/{uuid.uuid4().int % 14 + 1}",
    "rabbitmq": lambda: services.RABBIT_URL,
}


def make_env(broker: str, database_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    counters = tmp_path / "counters"
    counters.mkdir(exist_ok=True)
    env = {
        "CD_BROKER": broker,
        "CD_DATABASE_URL": database_url,
        "CD_QUEUE": f"q{uuid.uuid4().hex[:10]}",
        "CD_PREFIX": f"t{uuid.uuid4().hex[:10]}_",
        "CD_COUNTER_DIR": str(counters),
    }
    env.update(extra)
    return env


def load_app(env: dict[str, str], module: str = "tests.apps.wfapp") -> Any:
    """Import the test app *module* (tests/apps) configured by *env* in this (producer) process; return it."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return importlib.reload(importlib.import_module(module))
    finally:
        # The module read its settings at import: leave no test's settings behind for the next.
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(params=["redis", "rabbitmq"])
def e2e_env(request: pytest.FixtureRequest, pg_database: str, tmp_path: Path) -> dict[str, str]:
    """Environment for a worker and a producer: a broker, the session's PostgreSQL database, own queue and tables."""
    return make_env(BROKERS[request.param](), pg_database, tmp_path)


@contextmanager
def configured_app(env: dict[str, str]) -> Iterator[Any]:
    """tests.apps.wfapp configured by *env*; afterwards its queue is deleted and its store closed."""
    module = load_app(env)
    try:
        yield module
    finally:
        try:
            with module.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(env["CD_QUEUE"])
        except Exception:
            pass
        if module.durable._store is not None:
            module.durable._store.close()


@pytest.fixture
def wf(e2e_env: dict[str, str]) -> Iterator[Any]:
    """The test app module (tests.apps.wfapp) configured for this test."""
    with configured_app(e2e_env) as module:
        yield module
