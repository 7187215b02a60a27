"""Child workflows in the SQL store: starting them in batches, joins, and the cascades of cancel and timeout.

A mixin of :class:`~celery_durable.store.sql.SQLStore`.

**No lost wake-up for joins.** A parent waiting for children (a *join*) and a child finishing take
turns on the *child's* row, then on the parent's row, in that order on both sides (so they never
deadlock each other):

* the join marks each unfinished awaited child (``awaited`` = the join's step id) with an UPDATE that
  locks the child's row and counts only children still unfinished at that moment; then it records the
  wait on the parent's row with ``awaiting`` = that count;
* a child's finish (``finish``, ``cancel``, the sweep's timeout) updates
  the child's row, and when it carries ``awaited`` decrements ``awaiting`` on its parent's row, but only
  while the parent still waits in that very join (status WAITING, ``wait_kind`` 'join', ``wait_step`` =
  ``awaited``); it wakes the parent when the count reaches 0, or at once for a failed child when the join
  ends at the first error.

Both sides are transactions of several statements, so on PostgreSQL (READ COMMITTED) the child's
statement on its parent's row takes its snapshot after the child's row lock was granted, that is after
a join that marked it committed. (One fused statement would read the parent with a snapshot taken
before that, and miss the wait: the hammer in tests/store/test_children.py caught exactly that.)

Either the child finished before the join's UPDATE reached its row (the join does not count it: it
reads it as finished), or the join marked it first (the child's finish waits for the join's commit,
then sees the mark and the recorded wait, and decrements). A child finishing between the join's read
and its marking is simply not counted; the join reads again only when no child is left to wake it,
or when such a child may have failed a fail-fast join. A parent woken too early (a resumed child finishing twice)
only waits again: each join recounts from the children's rows, so extra wake-ups cost one execution
and never a wrong result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..errors import DurableError, InvalidArgument, WorkflowConflict
from .child_records import ALL, FIRST_ERROR, JOIN, ChildOutcome, ChildSpec, Joined, JoinRequest
from .records import Dispatch, StepRecord, Suspended, WorkflowRecord, WorkflowStatus
from .schema import CLEARED_WAIT, UNFINISHED_STATUSES
from .sql_lease import SQLLease

if TYPE_CHECKING:
    from .base import Lease
    from .schema import Tables

#: Rows per statement when a batch of children is inserted, marked or read: bounded statements for any
#: fan-out (10,000 children: 10 of each), and under SQLite's limit of bound parameters.
CHUNK = 1000
_FAILED = (WorkflowStatus.ERROR, WorkflowStatus.CANCELLED)


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class SQLChildren:
    """Queries for child workflows (see the module docstring for the join's invariant)."""

    if TYPE_CHECKING:  # provided by SQLStore
        t: Tables

        def _tx(self, lease: Lease | None = None) -> AbstractContextManager[sa.Connection]: ...
        def _insert(self, table: sa.Table) -> Any: ...
        def _insert_step(self, conn: sa.Connection, step: StepRecord) -> bool: ...
        def _lock_channel(self, conn: sa.Connection, kind: str, workflow_id: str) -> None: ...
        def _raise_if_cancelled(self, conn: sa.Connection, workflow_id: str) -> None: ...
        def _select_workflow(
            self, conn: sa.Connection, workflow_id: str, for_update: bool = False
        ) -> WorkflowRecord | None: ...

        _suspend: Callable[..., Suspended]  # SQLStore._suspend(conn, wf, kind, target, topics, step_id, ..., **extra)

        def is_transient(self, exc: BaseException) -> bool: ...
        def leave_to_sweep(self, dispatch: Dispatch) -> None: ...
        def _release_slots(
            self, conn: sa.Connection, ended: Sequence[tuple[str, str | None]], now: float
        ) -> list[Dispatch]: ...

    # -- starting ---------------------------------------------------------------------------------
    def start_children(self, lease: Lease, children: Sequence[ChildSpec], checkpoint: StepRecord) -> list[Dispatch]:
        w = self.t.workflows
        parent = lease.workflow_id
        now = checkpoint.ended_at
        with self._tx(lease) as conn:
            # A shared lock on the parent's row: a cancel (which updates that row before it looks for
            # children) either waits for this transaction and then finds the children it created,
            # or has committed and this one sees the parent CANCELLED and creates nothing.
            status = conn.execute(
                sa.select(w.c.status).where(w.c.workflow_id == parent).with_for_update(read=True)
            ).scalar()
            if status != WorkflowStatus.RUNNING.value or not self._insert_step(conn, checkpoint):
                self._raise_if_cancelled(conn, parent)
                raise DurableError(f"step {checkpoint.step_id} of {parent!r} was already recorded")
            # Every checkpoint an execution writes joins its history (step_cache.py relies on it).
            assert isinstance(lease, SQLLease)
            lease.remember(checkpoint)
            created: set[str] = set()
            for chunk in chunks(children):
                rows = [
                    {
                        "workflow_id": c.workflow_id,
                        "name": c.name,
                        "status": WorkflowStatus.PENDING.value,
                        "inputs": c.inputs,
                        "queue": c.queue,
                        "ticket": 0,
                        "executions": 0,
                        "created_at": now,
                        "updated_at": now,
                        "dispatched_at": now,
                        "version": c.version,
                        "parent_id": parent,
                        "timeout_at": c.timeout_at,
                        "trace_context": c.trace_context,
                    }
                    for c in chunk
                ]
                stmt = self._insert(w).values(rows).on_conflict_do_nothing(index_elements=[w.c.workflow_id])
                created.update(conn.execute(stmt.returning(w.c.workflow_id)).scalars())
            existing = [c for c in children if c.workflow_id not in created]
            for chunk in chunks(existing):
                found = conn.execute(
                    sa.select(w.c.workflow_id, w.c.name, w.c.parent_id).where(
                        w.c.workflow_id.in_([c.workflow_id for c in chunk])
                    )
                ).all()
                names = {r.workflow_id: (r.name, r.parent_id) for r in found}
                for c in chunk:
                    if names.get(c.workflow_id) != (c.name, parent):
                        # Raising rolls the checkpoint back too: the start did not happen.
                        raise WorkflowConflict(
                            f"cannot start child workflow {c.workflow_id!r} of {parent!r}: the id is already "
                            f"used by another workflow ({names.get(c.workflow_id)})"
                        )
            return [Dispatch(c.workflow_id, c.name, c.queue, 0) for c in children if c.workflow_id in created]

    # -- joins ----------------------------------------------------------------------------------------
    def _read_children(self, conn: sa.Connection, parent: str, ids: Sequence[str]) -> list[ChildOutcome]:
        w = self.t.workflows
        rows: dict[str, Any] = {}
        for chunk in chunks(ids):
            query = sa.select(w.c.workflow_id, w.c.status, w.c.output, w.c.error, w.c.timeout_at, w.c.parent_id).where(
                w.c.workflow_id.in_(list(chunk))
            )
            rows.update((r.workflow_id, r) for r in conn.execute(query))
        outcomes = []
        for child_id in ids:
            row = rows.get(child_id)
            if row is None:
                outcomes.append(ChildOutcome(child_id, None, None, None))
                continue
            if row.parent_id != parent:
                raise InvalidArgument(
                    f"workflow {child_id!r} is not a child of {parent!r}: a workflow waits durably only for its "
                    "own children (use recv or get_event to hear from others)"
                )
            outcomes.append(ChildOutcome(child_id, WorkflowStatus(row.status), row.output, row.error, row.timeout_at))
        return outcomes

    def wait_children(self, lease: Lease, request: JoinRequest) -> Joined | Suspended:
        w = self.t.workflows
        parent = lease.workflow_id
        now = request.now
        with self._tx(lease) as conn:
            while True:
                outcomes = self._read_children(conn, parent, request.child_ids)
                active = [o.workflow_id for o in outcomes if o.status is not None and not o.status.is_terminal]
                if not active or (request.fail_fast and any(o.failed for o in outcomes)):
                    return Joined(tuple(outcomes))
                marked: set[str] = set()
                for chunk in chunks(active):
                    marked.update(
                        conn.execute(
                            w.update()
                            .where(w.c.workflow_id.in_(list(chunk)), w.c.status.in_(UNFINISHED_STATUSES))
                            .values(awaited=request.step_id)
                            .returning(w.c.workflow_id)
                        ).scalars()
                    )
                # Children that finished between the read and the marking did not see the mark: they are
                # done and not counted. Read again only when that matters -- none is left to wake us, or
                # one of them may have failed a fail-fast join -- so a large fan-out whose children keep
                # finishing never makes this loop chase them.
                missed = [cid for cid in active if cid not in marked]
                if marked and not (request.fail_fast and missed and self._any_failed(conn, missed)):
                    break
            wf = self._select_workflow(conn, parent, for_update=True)
            if wf is None or wf.status != WorkflowStatus.RUNNING:
                self._raise_if_cancelled(conn, parent)
            assert wf is not None
            if wf.wait_step == request.step_id and (wf.deadline is not None or request.timeout is None):
                deadline = wf.deadline  # recorded when this join first waited: a replay waits only for what is left
            else:
                deadline = None if request.timeout is None else now + request.timeout
            if deadline is not None and now >= deadline:
                return Joined(tuple(outcomes), timed_out=True)
            target = FIRST_ERROR if request.fail_fast else ALL
            return self._suspend(
                conn, wf, JOIN, target, (), request.step_id, deadline, now, request.horizon, awaiting=len(marked)
            )

    def _any_failed(self, conn: sa.Connection, ids: Sequence[str]) -> bool:
        w = self.t.workflows
        failed = [s.value for s in _FAILED]
        return any(
            conn.execute(
                sa.select(w.c.workflow_id).where(w.c.workflow_id.in_(list(chunk)), w.c.status.in_(failed)).limit(1)
            ).first()
            for chunk in chunks(ids)
        )

    # -- a child ends: wake its parent -----------------------------------------------------------------
    def _child_finished(
        self, conn: sa.Connection, parent_id: str, awaited: int, failed: bool, now: float
    ) -> list[Dispatch]:
        """Count the end of a child marked by join step *awaited* of *parent_id*; return the parent's wake-up, if due.

        Runs in the transaction that ended the child, after its row was updated (see the module docstring).
        """
        w = self.t.workflows
        row = conn.execute(
            w.update()
            .where(
                w.c.workflow_id == parent_id,
                w.c.status == WorkflowStatus.WAITING.value,
                w.c.wait_kind == JOIN,
                w.c.wait_step == awaited,
            )
            .values(awaiting=w.c.awaiting - 1, updated_at=now)
            .returning(w.c.awaiting, w.c.wait_target, w.c.ticket, w.c.name, w.c.queue)
        ).first()
        if row is None or (row.awaiting > 0 and not (failed and row.wait_target == FIRST_ERROR)):
            return []
        conn.execute(
            w.update()
            .where(w.c.workflow_id == parent_id)
            .values(status=WorkflowStatus.PENDING.value, ticket=row.ticket + 1, timer_due=None, dispatched_at=now)
        )
        return [Dispatch(parent_id, row.name, row.queue, row.ticket + 1)]

    # -- cascades ---------------------------------------------------------------------------------------
    def _cancel_descendants(
        self, conn: sa.Connection, roots: Sequence[str], now: float, admitted: list[Dispatch]
    ) -> int:
        """Cancel the unfinished children of *roots*, and theirs, level by level; return how many.

        A cancelled descendant's parent is cancelled too, so none of them needs a wake-up. One that held
        a concurrency slot frees it (sql_concurrency.py): the workflows that admits go to *admitted*.
        """
        w = self.t.workflows
        frontier, count = list(roots), 0
        ended: list[tuple[str, str | None]] = []
        while frontier:
            found: list[tuple[str, str | None]] = []
            for chunk in chunks(frontier):
                found += conn.execute(
                    w.update()
                    .where(w.c.parent_id.in_(list(chunk)), w.c.status.in_(UNFINISHED_STATUSES))
                    .values(
                        status=WorkflowStatus.CANCELLED.value, ticket=w.c.ticket + 1, updated_at=now, **CLEARED_WAIT
                    )
                    .returning(w.c.workflow_id, w.c.flow_key)
                ).tuples()
            count += len(found)
            ended += found
            frontier = [workflow_id for workflow_id, _ in found]
        admitted += self._release_slots(conn, ended, now)  # hook (concurrency)
        return count

    def cancel_descendants(self, workflow_id: str, now: float) -> int:
        admitted: list[Dispatch] = []
        with self._tx() as conn:
            count = self._cancel_descendants(conn, [workflow_id], now, admitted)
        for dispatch in admitted:
            self.leave_to_sweep(dispatch)
        return count

    def _stopped(self, conn: sa.Connection, workflow_id: str, failed: bool, now: float) -> list[Dispatch]:
        """After *workflow_id* was stopped (cancel, timeout) in this transaction: cancel its descendants, free
        the concurrency slots they and it held, wake its parent."""
        w = self.t.workflows
        wakeups: list[Dispatch] = []
        self._cancel_descendants(conn, [workflow_id], now, wakeups)
        row = conn.execute(
            sa.select(w.c.parent_id, w.c.awaited, w.c.flow_key).where(w.c.workflow_id == workflow_id)
        ).first()
        if row is None:
            return wakeups
        wakeups += self._release_slots(conn, [(workflow_id, row.flow_key)], now)  # hook (concurrency)
        if row.awaited is None:
            return wakeups
        return wakeups + self._child_finished(conn, row.parent_id, row.awaited, failed, now)

    def cancel_tree(self, workflow_id: str, now: float) -> tuple[WorkflowRecord | None, list[Dispatch]]:
        w = self.t.workflows
        for attempt in range(5):
            try:
                with self._tx() as conn:
                    self._lock_channel(conn, "m", workflow_id)
                    changed = conn.execute(
                        w.update()
                        .where(w.c.workflow_id == workflow_id, w.c.status.in_(UNFINISHED_STATUSES))
                        .values(
                            status=WorkflowStatus.CANCELLED.value,
                            ticket=w.c.ticket + 1,
                            updated_at=now,
                            **CLEARED_WAIT,
                        )
                        .returning(w.c.workflow_id)
                    ).first()
                    wakeups = self._stopped(conn, workflow_id, True, now) if changed is not None else []
                    return self._select_workflow(conn, workflow_id), wakeups
            except Exception as exc:
                # A child finishing at this moment locks its row, then ours: PostgreSQL may pick this
                # transaction as a deadlock's victim. Nothing was written; do it again.
                if attempt == 4 or not self.is_transient(exc):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover
