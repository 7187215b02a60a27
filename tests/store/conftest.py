"""Helpers for the store contract suite: a harness around the parametrised ``store`` fixture."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from celery_durable.store import (
    Lease,
    StepRecord,
    Store,
    Suspended,
    WaitRequest,
    WorkflowStatus,
    open_store,
)

T0 = 1_000_000.0  # every test's clock starts here; the store takes ``now`` as an argument
_T = TypeVar("_T")


def store_url(store: Store) -> str:
    """The URL the fixture opened *store* with (for a second instance or a subprocess)."""
    return store.engine.url.render_as_string(hide_password=False)  # type: ignore[attr-defined]


def fresh_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}_"


def eventually(fn: Callable[[], _T | None], timeout: float = 30.0) -> _T | None:
    """Call *fn* until it returns something other than ``None`` or *timeout* passes (not a timing assertion)."""
    end = time.monotonic() + timeout
    while True:
        value = fn()
        if value is not None or time.monotonic() > end:
            return value
        time.sleep(0.05)


def recv(
    step_id: int, *topics: str, timeout: float | None = 60.0, now: float = T0, horizon: float = 300.0
) -> WaitRequest:
    return WaitRequest(
        step_id=step_id,
        name=f"recv:{','.join(topics)}",
        kind="recv",
        topics=topics or ("",),
        timeout=timeout,
        now=now,
        horizon=horizon,
    )


def event_wait(
    step_id: int, target: str, key: str, timeout: float | None = 60.0, now: float = T0, horizon: float = 300.0
) -> WaitRequest:
    return WaitRequest(
        step_id=step_id,
        name=f"get_event:{key}",
        kind="event",
        topics=(key,),
        target=target,
        timeout=timeout,
        now=now,
        horizon=horizon,
    )


def step(
    workflow_id: str, step_id: int, output: str | None = '"out"', name: str | None = None, **kw: Any
) -> StepRecord:
    return StepRecord(
        workflow_id=workflow_id,
        step_id=step_id,
        name=name or f"step{step_id}",
        kind=kw.pop("kind", "step"),
        output=output,
        started_at=kw.pop("started_at", T0),
        ended_at=kw.pop("ended_at", T0 + 1),
        **kw,
    )


class Harness:
    """The store under test plus bookkeeping, so every lease a test takes is released at teardown."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.leases: list[Lease] = []
        self.others: list[Store] = []

    def acquire(self, workflow_id: str) -> Lease | None:
        lease = self.store.acquire(workflow_id)
        if lease is not None:
            self.leases.append(lease)
        return lease

    def release(self, lease: Lease) -> None:
        self.leases.remove(lease)
        self.store.release(lease)

    def other_store(self) -> Store:
        """A second store instance on the same database and prefix (as another process would open it)."""
        other = open_store(store_url(self.store), self.store.prefix)  # type: ignore[attr-defined]
        self.others.append(other)
        return other

    def create(self, workflow_id: str, name: str = "wf", now: float = T0, queue: str | None = "q") -> None:
        _, created = self.store.create_workflow(workflow_id, name, "[]", queue, now)
        assert created

    def running(self, workflow_id: str, name: str = "wf", now: float = T0, queue: str | None = "q") -> Lease:
        """Create *workflow_id*, take its lock and begin its first execution (ticket 0): it is RUNNING."""
        self.create(workflow_id, name, now, queue)
        lease = self.acquire(workflow_id)
        assert lease is not None
        assert self.store.begin(lease, 0, now) is not None
        return lease

    def resume(self, lease: Lease, now: float = T0) -> None:
        """Begin a new execution with the workflow's current ticket (as the live message would)."""
        wf = self.store.get_workflow(lease.workflow_id)
        assert wf is not None
        assert self.store.begin(lease, wf.ticket, now) is not None

    def waiting(self, workflow_id: str, *topics: str, timeout: float | None = 60.0, now: float = T0) -> Lease:
        """A RUNNING workflow that then waits on *topics*; its lease is returned still held."""
        lease = self.running(workflow_id, now=now)
        result = self.store.wait_step(lease, recv(1, *topics, timeout=timeout, now=now))
        assert isinstance(result, Suspended)
        assert self.store.get_workflow(workflow_id).status is WorkflowStatus.WAITING  # type: ignore[union-attr]
        return lease

    def drain(self, lease: Lease, topic: str, first_step: int, now: float = T0) -> list[str | None]:
        """Poll (timeout 0) *topic* until it is empty; return the payloads received, oldest first."""
        got: list[str | None] = []
        step_id = first_step
        while True:
            result = self.store.wait_step(lease, recv(step_id, topic, timeout=0, now=now))
            assert isinstance(result, StepRecord)
            if result.output is None:
                return got
            got.append(result.output)
            step_id += 1

    def close(self) -> None:
        for lease in list(self.leases):
            self.store.release(lease)
        self.leases.clear()
        for other in self.others:
            other.close()


@pytest.fixture
def h(store: Store) -> Iterator[Harness]:
    harness = Harness(store)
    yield harness
    harness.close()
