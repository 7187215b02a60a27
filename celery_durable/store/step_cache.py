"""A per-process cache of the checkpoints a workflow's last execution in this process ended with.

Every execution replays the workflow from the top, so it needs every checkpoint; reading them all
again on each wake-up makes a workflow that receives n messages cost O(n^2) rows in total. This
cache lets an execution read only the checkpoints written since this process last ran the workflow.

Invariant (why a cached history can be trusted): an entry is stored only when an execution of this
process *recorded a wait* (the workflow became WAITING with ``wait_step`` s, after its execution
count became E). It is used by the next claim of that workflow only when the claimed row has
``executions == E + 1``, the same ``created_at`` and still ``wait_kind``/``wait_step`` of that wait.

* Only executions write checkpoints, and every execution increments ``executions`` when it claims.
  ``E + 1`` therefore means no execution ran in between anywhere, so nothing was added.
* Checkpoints are deleted only by ``resume`` (of an ERROR or CANCELLED workflow), ``prune`` (of a
  finished one) and ``continue_as_new`` (inside an execution, which counted itself when it claimed).
  Resume clears the wait fields, prune deletes the row (a re-created id has another ``created_at``)
  and continue_as_new never lowers ``executions``, so none of them can leave the row looking like
  the one cached. (``executions`` must never go down: a reset would let a cached history of an old
  run pass for the new run's; tests/engine/test_continue_as_new.py caught exactly that.)
* Anything else (an execution that ended interrupted, failed, finished, or never recorded its wait)
  drops the entry: the next claim reads every checkpoint.

The cache is bounded (least recently used workflows go first) and keeps only serialized text.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from .records import StepRecord, WorkflowRecord


@dataclass
class CachedHistory:
    """The checkpoints of one workflow as its last execution here left them."""

    created_at: float
    executions: int
    wait_kind: str | None
    wait_step: int | None
    steps: dict[int, StepRecord]


class StepCache:
    """Bounded LRU of :class:`CachedHistory` by workflow id, safe to share between threads."""

    def __init__(self, max_workflows: int = 1000, max_steps: int = 200_000) -> None:
        self.max_workflows = max_workflows
        self.max_steps = max_steps
        self._entries: OrderedDict[str, CachedHistory] = OrderedDict()
        self._steps = 0
        self._lock = threading.Lock()

    def take(self, record: WorkflowRecord) -> dict[int, StepRecord] | None:
        """Remove and return the cached checkpoints of *record* if they are still its history (see the module doc)."""
        with self._lock:
            entry = self._entries.pop(record.workflow_id, None)
            if entry is None:
                return None
            self._steps -= len(entry.steps)
        if (
            entry.created_at == record.created_at
            and entry.executions + 1 == record.executions
            and entry.wait_kind == record.wait_kind
            and entry.wait_step == record.wait_step
        ):
            return entry.steps
        return None

    def put(self, record: WorkflowRecord, executions: int, kind: str, step_id: int, steps: dict[int, StepRecord]) -> None:
        """Keep *steps* as the history of *record* after its execution number *executions* waited at *step_id*."""
        if len(steps) > self.max_steps:
            return
        entry = CachedHistory(record.created_at, executions, kind, step_id, steps)
        with self._lock:
            old = self._entries.pop(record.workflow_id, None)
            if old is not None:
                self._steps -= len(old.steps)
            self._entries[record.workflow_id] = entry
            self._steps += len(steps)
            while self._entries and (len(self._entries) > self.max_workflows or self._steps > self.max_steps):
                _, dropped = self._entries.popitem(last=False)
                self._steps -= len(dropped.steps)

    def drop(self, workflow_id: str) -> None:
        with self._lock:
            old = self._entries.pop(workflow_id, None)
            if old is not None:
                self._steps -= len(old.steps)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._steps = 0
