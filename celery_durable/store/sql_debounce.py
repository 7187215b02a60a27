"""Debouncing in the SQL store: calls with the same (workflow name, key) collapse into one round.

A mixin of :class:`~celery_durable.store.sql.SQLStore`.

A **round** is one workflow row, created by the round's first call already WAITING, with wait kind
``"debounce"`` and a deadline at the time it should start: the ordinary timer machinery (the timer
this call returns, re-armed by the sweep within the horizon, re-run when lost) starts it, and it
holds no worker slot while it waits. One row per (name, key) in the ``debounces`` table points at
the latest round. Each call is one transaction:

1. upsert the (name, key) row and lock it (``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``), so
   the calls of one key are serialised (PostgreSQL: the row lock; SQLite: ``BEGIN IMMEDIATE``);
2. lock the latest round's workflow row; while it is still WAITING for its debounce, the round is
   open: the call replaces its inputs, moves its deadline to ``min(now + delay, max_at)`` and bumps
   its ticket (the earlier timer goes stale);
3. otherwise (no round yet, or its workflow began, finished or was cancelled) the call opens the
   next round under the id ``debounce:{name}:{key}:{n}``.

**Why nothing else closes a round**: an execution begins (``Store.begin``) only with the current
ticket, moving the row from WAITING to RUNNING in the statement that reads its inputs. A call and
that begin both lock the workflow row, so one comes first: a call first bumps the ticket (the timer
it raced is now stale; the new timer runs the new inputs); a begin first leaves the row RUNNING,
and the call opens the next round. A call is never lost, and a round runs exactly once, with the
inputs of its last call.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..errors import WorkflowConflict
from ..timeouts import earliest
from .records import Dispatch, WorkflowRecord, WorkflowStatus
from .schema import MAX_ID_LENGTH

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from .base import Lease
    from .schema import Tables

#: The wait kind of a round's workflow until it starts.
DEBOUNCE_WAIT = "debounce"


def round_id(name: str, key: str, number: int) -> str:
    """The workflow id of round *number* of (*name*, *key*): readable when it fits, else hashed."""
    readable = f"debounce:{name}:{key}:{number}"
    if len(readable) <= MAX_ID_LENGTH:
        return readable
    digest = hashlib.sha256(f"{name}\0{key}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"debounce:{digest}:{number}"


class SQLDebounce:
    """``debounce`` of the SQL store."""

    if TYPE_CHECKING:  # provided by SQLStore
        t: Tables

        def _insert(self, table: sa.Table) -> Any: ...
        def _tx(self, lease: Lease | None = None) -> AbstractContextManager[sa.Connection]: ...
        def _select_workflow(
            self, conn: sa.Connection, workflow_id: str, for_update: bool = False
        ) -> WorkflowRecord | None: ...
        @staticmethod
        def _workflow(row: Any) -> WorkflowRecord: ...

    def debounce(
        self,
        name: str,
        key: str,
        inputs: str,
        queue: str | None,
        now: float,
        delay: float,
        max_delay: float | None,
        horizon: float,
        *,
        version: str | None = None,
        timeout_at: float | None = None,
        trace_context: str | None = None,
        task_options: str | None = None,
    ) -> tuple[WorkflowRecord, Dispatch | None, bool]:
        d = self.t.debounces
        with self._tx() as conn:
            latest = conn.execute(
                self._insert(d)
                .values(name=name, key=key, rounds=0)
                # A no-op update, for its row lock: every call of this key waits for the one before.
                .on_conflict_do_update(index_elements=[d.c.name, d.c.key], set_={"rounds": d.c.rounds})
                .returning(d.c.rounds, d.c.workflow_id, d.c.first_at, d.c.max_at)
            ).one()
            if latest.workflow_id is not None:
                wf = self._select_workflow(conn, latest.workflow_id, for_update=True)
                if wf is not None and wf.status is WorkflowStatus.WAITING and wf.wait_kind == DEBOUNCE_WAIT:
                    max_at = earliest(latest.max_at, None if max_delay is None else latest.first_at + max_delay)
                    if max_at != latest.max_at:
                        conn.execute(d.update().where(d.c.name == name, d.c.key == key).values(max_at=max_at))
                    deadline = earliest(now + delay, max_at)
                    assert deadline is not None
                    wake = earliest(deadline, wf.timeout_at)
                    assert wake is not None
                    armed = wake - now <= horizon
                    w = self.t.workflows
                    joined = conn.execute(
                        w.update()
                        .where(w.c.workflow_id == wf.workflow_id)  # locked above: no one changed it since
                        .values(
                            ticket=wf.ticket + 1,  # the earlier timer goes stale
                            inputs=inputs,
                            deadline=deadline,
                            timer_due=wake if armed else None,
                            updated_at=now,
                        )
                        .returning(*w.c)
                    ).one()
                    record = self._workflow(joined)
                    return record, self._timer(record, wake, now) if armed else None, False
            number = latest.rounds + 1
            workflow_id = round_id(name, key, number)
            max_at = None if max_delay is None else now + max_delay
            deadline = earliest(now + delay, max_at)
            assert deadline is not None
            wake = earliest(deadline, timeout_at)
            assert wake is not None
            armed = wake - now <= horizon
            w = self.t.workflows
            row = conn.execute(
                self._insert(w)
                .values(
                    workflow_id=workflow_id,
                    name=name,
                    status=WorkflowStatus.WAITING.value,
                    inputs=inputs,
                    queue=queue,
                    ticket=0,
                    executions=0,
                    wait_kind=DEBOUNCE_WAIT,
                    wait_topics=json.dumps([key]),
                    deadline=deadline,
                    timer_due=wake if armed else None,
                    created_at=now,
                    updated_at=now,
                    version=version,
                    timeout_at=timeout_at,
                    trace_context=trace_context,
                    task_options=task_options,
                )
                .on_conflict_do_nothing()
                .returning(*w.c)
            ).first()
            if row is None:
                raise WorkflowConflict(
                    f"cannot open debounce round {number} of workflow {name!r} with key {key!r}: "
                    f"the workflow id {workflow_id!r} is already used"
                )
            conn.execute(
                d.update()
                .where(d.c.name == name, d.c.key == key)
                .values(rounds=number, workflow_id=workflow_id, first_at=now, max_at=max_at)
            )
            record = self._workflow(row)
            return record, self._timer(record, wake, now) if armed else None, True

    @staticmethod
    def _timer(record: WorkflowRecord, wake: float, now: float) -> Dispatch:
        return Dispatch(record.workflow_id, record.name, record.queue, record.ticket, max(0.0, wake - now))
