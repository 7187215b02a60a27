"""Rate limits in the SQL store: turns reserved one atomic statement at a time.

A mixin of :class:`~celery_durable.store.sql.SQLStore`.

A rate limit of N per period P spaces the starts it grants ``P / N`` apart (the emission interval
of a GCRA with no burst, the way Celery's own ``rate_limit`` spaces a worker's tasks). One row per
(limit, key value) holds the latest start time it granted; a turn is one statement::

    INSERT INTO rate_limits (limit_name, key, reserved) VALUES (:limit, :key, :now)
    ON CONFLICT (limit_name, key) DO UPDATE
        SET reserved = CASE WHEN reserved + :interval > :now THEN reserved + :interval ELSE :now END
    RETURNING reserved

**Invariant: the turns of one (limit, key) are at least ``interval`` apart.** The statement reads and
writes the row under the row's lock (PostgreSQL: the conflicting row is locked until commit, and the
``DO UPDATE`` sees the newest committed version; SQLite: the write lock of ``BEGIN IMMEDIATE``), so
concurrent callers are serialised and each gets ``max(previous + interval, now)``. Hence any window
of one period (N intervals) holds at most N granted starts, across every worker and host.

The caller sleeps until its turn, or records a wait of kind ``"rate"`` (:meth:`wait_rate`) and leaves
the worker; the reservation is kept either way, so a workflow that comes back for it does not take
another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .records import Suspended
from .sql_lease import SQLLease

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from .base import Lease
    from .records import WorkflowRecord
    from .schema import Tables

#: The wait kind recorded on a workflow row while it waits for its turn of a rate limit.
RATE_WAIT = "rate"


class SQLRateLimits:
    """``take_turn`` and ``wait_rate`` of the SQL store."""

    if TYPE_CHECKING:  # provided by SQLStore
        t: Tables

        def _insert(self, table: sa.Table) -> Any: ...
        def _connect(self) -> AbstractContextManager[sa.Connection]: ...
        def _single(self, lease: Lease) -> AbstractContextManager[sa.Connection]: ...
        def _tx(self, lease: Lease | None = None) -> AbstractContextManager[sa.Connection]: ...
        def _lock_channel(self, conn: sa.Connection, kind: str, workflow_id: str) -> None: ...
        def _running_row(self, conn: sa.Connection, workflow_id: str) -> WorkflowRecord: ...
        def _suspend(
            self,
            conn: sa.Connection,
            wf: WorkflowRecord,
            kind: str,
            target: str | None,
            topics: tuple[str, ...],
            step_id: int,
            deadline: float | None,
            now: float,
            horizon: float,
            **extra: Any,
        ) -> Suspended: ...

    _q_take_turn: Any = None

    def _take_turn_statement(self) -> Any:
        r = self.t.rate_limits
        if self._q_take_turn is None:
            interval, now = sa.bindparam("p_interval", type_=sa.Float), sa.bindparam("p_now", type_=sa.Float)
            insert = self._insert(r).values(limit_name=sa.bindparam("p_limit"), key=sa.bindparam("p_key"), reserved=now)
            # `reserved` in SET is the existing row's value (not excluded.reserved, which is :now).
            later = r.c.reserved + interval
            self._q_take_turn = insert.on_conflict_do_update(
                index_elements=[r.c.limit_name, r.c.key],
                set_={"reserved": sa.case((later > now, later), else_=now)},
            ).returning(r.c.reserved)
        return self._q_take_turn

    def take_turn(self, limit: str, key: str, interval: float, now: float, lease: Lease | None = None) -> float:
        params = {"p_limit": limit, "p_key": key, "p_interval": interval, "p_now": now}
        statement = self._take_turn_statement()
        connection = self._single(lease) if lease is not None else self._connect()
        with connection as conn:
            return float(conn.execute(statement, params).scalar_one())

    def wait_rate(self, lease: Lease, step_id: int, name: str, until: float, now: float, horizon: float) -> Suspended:
        wid = lease.workflow_id
        with self._tx(lease) as conn:
            # The same channel lock as a recv's wait: a send to this workflow then sees a consistent row.
            self._lock_channel(conn, "m", wid)
            wf = self._running_row(conn, wid)
            suspended = self._suspend(conn, wf, RATE_WAIT, wid, (name,), step_id, until, now, horizon)
        assert isinstance(lease, SQLLease)
        lease.waited = (RATE_WAIT, step_id)  # committed: see step_cache.py
        return suspended
