"""``DjangoDurable``: a :class:`~celery_durable.Durable` configured from Django settings whose
sends join the caller's database transaction.

A send from outside a workflow (a view, a signal handler, a management command) writes the
message, and the wake-up's change of the workflow row, through *Django's own connection*, inside
the caller's transaction; the wake-up task is published by ``transaction.on_commit``. So:

* the transaction rolls back: no message, the workflow still waits, nothing is published;
* it commits: the message is stored with the caller's data, and the workflow is woken;
* the process dies between the commit and the publish: the message is stored and the workflow
  row already says it was woken (PENDING), so the sweep publishes it after ``recovery_grace``.
  Nothing is lost; the wake-up is late.

``transaction.on_commit(lambda: durable.send(...))`` alone would lose the message in that last
case, and would not make the message part of the caller's data.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

import sqlalchemy as sa
from celery import Celery
from django.db import connections, transaction

from ...errors import ConfigurationError
from ...integration import Durable
from ...store import Store
from ...store.sql import SQLLease
from . import conf

_instances: list[DjangoDurable] = []
_instances_lock = threading.Lock()


class DjangoDurable(Durable):
    """Durable workflows stored in a Django database (``CELERY_DURABLE["database"]``, default ``"default"``).

    Options come from ``settings.CELERY_DURABLE`` (every :class:`~celery_durable.DurableConfig`
    field); keyword *options* given here win over them. ``auto_migrate`` defaults to ``False``:
    ``manage.py migrate`` creates and upgrades the tables, as for every other Django app.
    """

    def __init__(self, app: Celery, *, database: str | None = None, **options: Any) -> None:
        self.database = database or conf.database_alias()
        merged: dict[str, Any] = {"auto_migrate": False, **conf.config_options(), **options}
        super().__init__(app, conf.database_url(self.database), **merged)
        self._lent: sa.Engine | None = None
        with _instances_lock:
            _instances.append(self)

    @property
    def store(self) -> Store:
        if self._store is None:
            # Read the database's settings again when the store opens: Django's test runner renames
            # the database after celery.py was imported, and the store must follow it.
            self.database_url = conf.database_url(self.database)
        return super().store

    def _send_outside(
        self, workflow_id: str, topic: str, payload: str, idempotency_key: str | None, create_mailbox: bool
    ) -> None:
        store = self.store
        now = time.time()
        # A savepoint inside the caller's transaction (a failed send leaves it usable), or a
        # transaction of its own when there is none: the store's send is several statements.
        with transaction.atomic(using=self.database):
            with self._lent_engine().connect() as conn:
                # The store runs a send on the connection of the lease it is given; a send needs
                # nothing else of a lease. Here that connection is Django's, in its transaction.
                result = store.send(
                    workflow_id,
                    topic,
                    payload,
                    now,
                    idempotency_key=idempotency_key,
                    create_mailbox=create_mailbox,
                    lease=SQLLease(workflow_id, conn),
                )
            if result.wakeups:
                transaction.on_commit(functools.partial(self.engine.publish_all, result.wakeups), using=self.database)

    def _lent_engine(self) -> sa.Engine:
        """An engine whose every connection is the current thread's Django connection to our database."""
        if self._lent is None:
            alias = self.database
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


def get_durable() -> DjangoDurable:
    """The :class:`DjangoDurable` this process built (the last one), for the admin's actions."""
    with _instances_lock:
        if _instances:
            return _instances[-1]
    raise ConfigurationError(
        "no DjangoDurable in this process: build one in your project's celery.py "
        "(durable = DjangoDurable(app)) and import that module from your project's __init__.py, "
        "as Celery's Django guide does for the app"
    )


__all__ = ["DjangoDurable", "get_durable"]
