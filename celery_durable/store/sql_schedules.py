"""Schedules in the SQL store: definitions upserted by the code, a cursor advanced by compare-and-set.

A mixin of :class:`~celery_durable.store.sql.SQLStore`.

Every worker (and every beat) drives the ticks of every schedule, so many drivers race for the same
tick. Two things keep that to one workflow per tick:

* the run of a tick has a deterministic id (``sched:{name}:{tick}``, see ``celery_durable.schedules``),
  and a workflow id is an idempotency key: a tick started twice is stored once;
* a driver claims a tick by moving the schedule's cursor past it with a compare-and-set on the row's
  ``revision`` (:meth:`advance_schedule`: ``UPDATE ... WHERE name = :name AND revision = :read``):
  of the drivers that read one revision, exactly one updates the row, so the overlap decision
  (start, skip, buffer) for a tick is made once, and drivers that lose do nothing more.

Both are single statements, atomic on PostgreSQL and on SQLite (``BEGIN IMMEDIATE`` serialises
writers), so no transaction spans the workflow's creation and the claim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .schedule_records import ScheduleRecord

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from .schema import Tables

_DEFINITION = ("workflow", "inputs", "queue", "spec", "overlap", "catchup")


class SQLSchedules:
    """``upsert_schedule``, ``get_schedule``, ``list_schedules``, ``advance_schedule``,
    ``pause_schedule`` and ``delete_schedule`` of the SQL store."""

    if TYPE_CHECKING:  # provided by SQLStore
        t: Tables

        def _insert(self, table: sa.Table) -> Any: ...
        def _connect(self) -> AbstractContextManager[sa.Connection]: ...
        def _tx(self, lease: Any = None) -> AbstractContextManager[sa.Connection]: ...

    @staticmethod
    def _schedule(row: Any) -> ScheduleRecord:
        m = row._mapping
        return ScheduleRecord(
            name=m["name"],
            workflow=m["workflow"],
            inputs=m["inputs"],
            queue=m["queue"],
            spec=m["spec"],
            overlap=m["overlap"],
            catchup=m["catchup"],
            paused=bool(m["paused"]),
            next_tick=m["next_tick"],
            pending=m["pending"],
            last_run=m["last_run"],
            revision=m["revision"],
            created_at=m["created_at"],
            updated_at=m["updated_at"],
        )

    def upsert_schedule(
        self,
        name: str,
        workflow: str,
        inputs: str,
        queue: str | None,
        spec: str,
        overlap: str,
        catchup: float | None,
        first_tick: float,
        now: float,
    ) -> ScheduleRecord:
        s = self.t.schedules
        definition = {
            "workflow": workflow, "inputs": inputs, "queue": queue, "spec": spec, "overlap": overlap, "catchup": catchup
        }
        insert = (
            self._insert(s)
            .values(name=name, **definition, paused=False, next_tick=first_tick, revision=0, created_at=now, updated_at=now)
            .on_conflict_do_nothing(index_elements=[s.c.name])
            .returning(*s.c)
        )
        while True:
            with self._connect() as conn:
                row = conn.execute(insert).first()
                if row is not None:
                    return self._schedule(row)
                found = conn.execute(sa.select(s).where(s.c.name == name)).first()
                if found is None:
                    continue  # deleted meanwhile: insert again
                current = self._schedule(found)
                if all(getattr(current, field) == value for field, value in definition.items()):
                    return current
                changes: dict[str, Any] = {**definition, "revision": current.revision + 1, "updated_at": now}
                if spec != current.spec:
                    changes["next_tick"] = first_tick
                    changes["pending"] = None
                updated = conn.execute(
                    s.update()
                    .where(s.c.name == name, s.c.revision == current.revision)
                    .values(**changes)
                    .returning(*s.c)
                ).first()
                if updated is not None:
                    return self._schedule(updated)
            # another writer changed it between our read and our update: read it again

    def get_schedule(self, name: str) -> ScheduleRecord | None:
        s = self.t.schedules
        with self._connect() as conn:
            row = conn.execute(sa.select(s).where(s.c.name == name)).first()
        return self._schedule(row) if row is not None else None

    def list_schedules(self) -> list[ScheduleRecord]:
        s = self.t.schedules
        with self._connect() as conn:
            rows = conn.execute(sa.select(s).order_by(s.c.name)).all()
        return [self._schedule(row) for row in rows]

    def advance_schedule(
        self, name: str, revision: int, next_tick: float, pending: float | None, last_run: str | None, now: float
    ) -> bool:
        s = self.t.schedules
        with self._connect() as conn:
            result = conn.execute(
                s.update()
                .where(s.c.name == name, s.c.revision == revision)
                .values(next_tick=next_tick, pending=pending, last_run=last_run, revision=revision + 1, updated_at=now)
            )
            return result.rowcount == 1

    def pause_schedule(self, name: str, paused: bool, next_tick: float | None, now: float) -> ScheduleRecord | None:
        s = self.t.schedules
        changes: dict[str, Any] = {"paused": paused, "revision": s.c.revision + 1, "updated_at": now}
        if next_tick is not None:
            changes["next_tick"] = next_tick
        with self._connect() as conn:
            row = conn.execute(s.update().where(s.c.name == name).values(**changes).returning(*s.c)).first()
        return self._schedule(row) if row is not None else None

    def delete_schedule(self, name: str) -> bool:
        s = self.t.schedules
        with self._connect() as conn:
            return conn.execute(s.delete().where(s.c.name == name)).rowcount == 1
