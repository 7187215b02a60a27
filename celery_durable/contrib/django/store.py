"""Stores whose sends from outside workflows join the caller's Django transaction.

Such a send (from a view, a signal handler, a management command) runs the store's own send —
the same statements, locks and wake-up rule — on *Django's* connection to the store's database,
inside a savepoint of the caller's transaction; the wake-up is published by
``transaction.on_commit``. So:

* the transaction rolls back: no message, the workflow still waits, nothing is published;
* it commits: the message is stored with the caller's data, and the workflow is woken;
* the process dies between the commit and the publish: the message is stored and the workflow
  row already says it was woken (PENDING), so the sweep publishes it after ``recovery_grace``.
  Nothing is lost; the wake-up is late.

``transaction.on_commit(lambda: durable.send(...))`` would lose the message in that last case,
and would not make the message part of the caller's data. Sends inside workflows (given a lease)
are untouched: they write through the execution's own connection, as always.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from django.db import connections, transaction

from ...errors import ConfigurationError
from ...store import Dispatch, Lease, SendResult, StepRecord
from ...store.postgres import PostgresStore
from ...store.sql import SQLLease, SQLStore
from ...store.sqlite import SQLiteStore

Publish = Callable[[Sequence[Dispatch]], None]


class JoinsDjangoTransaction(SQLStore):
    """Mixin over a SQL store: sends from outside workflows join Django's transaction on *alias*."""

    alias: str
    publish: Publish
    _lent: sa.Engine | None = None

    def send(
        self,
        destination: str,
        topic: str,
        payload: str,
        now: float,
        *,
        idempotency_key: str | None = None,
        create_mailbox: bool = False,
        lease: Lease | None = None,
        checkpoint: StepRecord | None = None,
    ) -> SendResult:
        send = functools.partial(
            super().send,
            destination,
            topic,
            payload,
            now,
            idempotency_key=idempotency_key,
            create_mailbox=create_mailbox,
        )
        if lease is not None:
            return send(lease=lease, checkpoint=checkpoint)
        # A savepoint inside the caller's transaction (a failed send leaves it usable), or a
        # transaction of its own when there is none: a send is several statements.
        with transaction.atomic(using=self.alias):
            with self._lent_engine().connect() as conn:
                # The store runs a send on the connection of the lease it is given, and needs
                # nothing else of a lease: here that connection is Django's, in its transaction.
                result = send(lease=SQLLease(destination, conn))
            if result.wakeups:
                transaction.on_commit(functools.partial(self.publish, result.wakeups), using=self.alias)
        return dataclasses.replace(result, wakeups=())  # published on commit, not by the caller

    def close(self) -> None:
        super().close()
        if self._lent is not None:
            self._lent.dispose()

    def _lent_engine(self) -> sa.Engine:
        """An engine whose every connection is the current thread's Django connection to *alias*."""
        if self._lent is None:
            alias = self.alias
            connection = connections[alias]
            options: dict[str, Any] = {}
            if connection.vendor == "postgresql":
                driver = "psycopg2" if connection.Database.__name__ == "psycopg2" else "psycopg"
                url = f"postgresql+{driver}://"
                options["use_native_hstore"] = False  # it would register an adapter on Django's connection
            else:
                url = "sqlite://"

            def lend() -> _LentConnection:
                django_connection = connections[alias]
                django_connection.ensure_connection()
                return _LentConnection(django_connection.connection)

            self._lent = sa.create_engine(url, creator=lend, poolclass=sa.pool.NullPool, **options)
        return self._lent


class DjangoPostgresStore(JoinsDjangoTransaction, PostgresStore):
    """The PostgreSQL store, joining Django's transaction for sends from outside workflows."""


class DjangoSQLiteStore(JoinsDjangoTransaction, SQLiteStore):
    """The SQLite store, joining Django's transaction for sends from outside workflows."""


def open_django_store(
    alias: str,
    url: str,
    prefix: str,
    engine_options: dict[str, Any] | None,
    publish: Publish,
    *,
    durability: str = "full",
) -> JoinsDjangoTransaction:
    """Open the store at *url* (the ``DATABASES`` entry *alias*); *publish* publishes wake-ups after commits.

    *durability* is ``DurableConfig.durability`` (PostgreSQL; SQLite has no such choice).
    """
    # The rule of store.open_store: the prefix is part of every table name in the SQL.
    if not prefix.replace("_", "").isalnum() or not prefix[0].isalpha():
        raise ConfigurationError(
            f"table prefix {prefix!r} must start with a letter and hold only letters, digits and _"
        )
    store: JoinsDjangoTransaction
    if connections[alias].vendor == "postgresql":
        store = DjangoPostgresStore(url, prefix, engine_options, durability=durability)
    else:
        store = DjangoSQLiteStore(url, prefix, engine_options)
    store.alias = alias
    store.publish = publish
    return store


class _LentConnection:
    """Django's DB-API connection lent to SQLAlchemy: Django keeps the transaction and the connection.

    SQLAlchemy ends its transaction blocks with commit or rollback and closes what its pool
    returns; here those are no-ops, so the writes stay in Django's transaction (or savepoint) and
    ``transaction.atomic`` decides whether they happen.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return self._raw.cursor(*args, **kwargs)

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass

    def add_notice_handler(self, handler: Any) -> None:
        pass  # psycopg: SQLAlchemy adds one per checkout, which would pile up on a long-lived connection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


__all__ = ["DjangoPostgresStore", "DjangoSQLiteStore", "JoinsDjangoTransaction", "open_django_store"]
