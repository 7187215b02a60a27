"""Fixtures of the property suite: a Durable per store (SQLite file, PostgreSQL), a publish counter, a table dump.

Celery publishes to an in-memory broker (``memory://``); every message a call publishes is counted
through ``before_task_publish``, so a refused call can be shown to have published nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.signals import before_task_publish

from celery_durable import Durable


class Published:
    """Task messages published in this process since the last ``reset``."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def __call__(self, sender: Any = None, headers: Any = None, body: Any = None, **_: Any) -> None:
        self.messages.append({"task": sender, "headers": headers or {}, "body": body})

    def reset(self) -> None:
        self.messages.clear()


class Harness:
    """A Durable on one store, its workflows, and ways to look at what a call changed."""

    def __init__(self, durable: Durable, published: Published) -> None:
        self.durable = durable
        self.published = published
        self.store = durable.store

        @durable.workflow(name="props.echo")
        def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return {"args": list(args), "kwargs": kwargs}

        self.echo = echo

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table of this store, in a stable order."""
        t = self.store.t  # type: ignore[attr-defined]
        tables = {"workflows": t.workflows, "steps": t.steps, "messages": t.messages, "events": t.events}
        with self.store.engine.connect() as conn:  # type: ignore[attr-defined]
            return {
                name: sorted((tuple(r) for r in conn.execute(sa.select(table))), key=repr)
                for name, table in tables.items()
            }


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('props') / 'store.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_database")
    app = Celery(f"props{uuid.uuid4().hex[:6]}", broker="memory://")
    durable = Durable(app, url, table_prefix=f"p{uuid.uuid4().hex[:8]}_", sweep_interval=None)
    published = Published()
    before_task_publish.connect(published, weak=False)
    try:
        yield Harness(durable, published)
    finally:
        before_task_publish.disconnect(published)
        durable.store.close()


@pytest.fixture
def h(harness: Harness) -> Harness:
    harness.published.reset()
    return harness
