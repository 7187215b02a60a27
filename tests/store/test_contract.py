"""The store contract (celery_durable/store/base.py), checked sentence by sentence on SQLite and PostgreSQL.

Every test uses the parametrised ``store`` fixture (a real SQLite file, a real PostgreSQL
database) and passes its own ``now`` values: nothing sleeps, nothing is mocked.
"""

from __future__ import annotations

import threading

import pytest

from celery_durable.errors import WorkflowCancelled, WorkflowNotFound
from celery_durable.store import Dispatch, StepRecord, Suspended, WaitRequest, WorkflowStatus, open_store
from celery_durable.store.schema import LATEST_VERSION

from .conftest import T0, Harness, event_wait, fresh_prefix, recv, step, store_url


# -- schema ---------------------------------------------------------------------------------------------
def test_migrate_is_idempotent_and_reports_the_latest_version(h: Harness) -> None:
    store = h.store
    assert store.schema_version() == LATEST_VERSION
    h.create("keep-me")
    assert store.migrate() == LATEST_VERSION
    assert store.migrate() == LATEST_VERSION
    assert store.schema_version() == LATEST_VERSION
    assert store.get_workflow("keep-me") is not None  # re-migrating keeps the data


def test_schema_version_is_zero_before_migrate(h: Harness) -> None:
    other = open_store(store_url(h.store), fresh_prefix())
    try:
        assert other.schema_version() == 0
        assert other.migrate() == LATEST_VERSION
        assert other.schema_version() == LATEST_VERSION
    finally:
        other.close()


def test_concurrent_migrate_from_several_threads(h: Harness) -> None:
    url, prefix = store_url(h.store), fresh_prefix()
    stores = [open_store(url, prefix) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    results: list[int] = []
    errors: list[BaseException] = []

    def run(s: object) -> None:
        try:
            barrier.wait()
            results.append(s.migrate())  # type: ignore[attr-defined]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        assert results == [LATEST_VERSION] * len(stores)
        assert stores[0].schema_version() == LATEST_VERSION
        record, created = stores[1].create_workflow("after-migrate", "wf", "[]", None, T0)
        assert created and stores[2].get_workflow("after-migrate") == record
    finally:
        for s in stores:
            s.close()


def test_upgrade_from_version_1_keeps_rows_and_adds_the_new_columns(h: Harness) -> None:
    """A database created by version 1 of the schema is upgraded in place by migrate()."""
    import sqlalchemy as sa

    from celery_durable.store.schema import MIGRATIONS, build_tables

    url, prefix = store_url(h.store), fresh_prefix()
    old = open_store(url, prefix)
    try:
        engine = old.engine  # type: ignore[attr-defined]
        v1 = build_tables(prefix, version=1)
        with engine.begin() as conn:
            v1.version.create(conn)
            conn.execute(v1.version.insert().values(version=1))
            MIGRATIONS[0](conn, build_tables(prefix))
            conn.execute(
                v1.workflows.insert().values(
                    workflow_id="from-v1", name="wf", status="WAITING", inputs="[]", ticket=3,
                    executions=2, created_at=T0, updated_at=T0,
                )
            )
        assert old.schema_version() == 1
        assert old.migrate() == LATEST_VERSION
        record = old.get_workflow("from-v1")
        assert record is not None and record.status is WorkflowStatus.WAITING and record.ticket == 3
        assert record.version is None and record.parent_id is None and record.timeout_at is None
        names = {c["name"] for c in sa.inspect(engine).get_columns(f"{prefix}workflows")}
        assert {"version", "parent_id", "forked_from", "timeout_at", "attempts", "trace_context"} <= names
    finally:
        old.close()


# -- workflows ------------------------------------------------------------------------------------------
def test_create_workflow_stores_version_parent_timeout_and_trace_context(h: Harness) -> None:
    record, created = h.store.create_workflow(
        "child-1", "wf", "[]", None, T0, version="v7", parent_id="parent", timeout_at=T0 + 60, trace_context='{"a":1}'
    )
    assert created
    assert (record.version, record.parent_id, record.timeout_at, record.trace_context) == (
        "v7", "parent", T0 + 60, '{"a":1}'
    )
    assert h.store.get_workflow("child-1") == record
    plain, _ = h.store.create_workflow("plain", "wf", "[]", None, T0)
    assert (plain.version, plain.parent_id, plain.timeout_at, plain.trace_context) == (None, None, None, None)


def test_create_workflow_inserts_a_pending_workflow_with_ticket_zero(h: Harness) -> None:
    record, created = h.store.create_workflow("w1", "shop.checkout", '["o-1"]', "orders", T0)
    assert created is True
    assert record.workflow_id == "w1"
    assert record.name == "shop.checkout"
    assert record.inputs == '["o-1"]'
    assert record.queue == "orders"
    assert record.status is WorkflowStatus.PENDING
    assert record.ticket == 0
    assert record.executions == 0
    assert record.output is None and record.error is None
    assert record.created_at == T0
    assert h.store.get_workflow("w1") == record


def test_create_workflow_returns_the_existing_row_unchanged(h: Harness) -> None:
    first, created = h.store.create_workflow("w1", "a", '["x"]', "qa", T0)
    assert created
    again, created_again = h.store.create_workflow("w1", "another.name", '["y"]', "qb", T0 + 50)
    assert created_again is False
    assert again == first
    assert h.store.get_workflow("w1") == first


def test_get_workflow_of_an_unknown_id_is_none(h: Harness) -> None:
    assert h.store.get_workflow("nope") is None


def test_list_workflows_newest_first_with_filters_and_limit(h: Harness) -> None:
    store = h.store
    for i, name in enumerate(["a", "b", "a", "b", "a"]):
        store.create_workflow(f"w{i}", name, "[]", None, T0 + i)
    lease = h.acquire("w1")
    assert lease is not None and store.begin(lease, 0, T0 + 10) is not None
    lease3 = h.acquire("w3")
    assert lease3 is not None and store.begin(lease3, 0, T0 + 10) is not None
    store.finish(lease3, WorkflowStatus.SUCCESS, '"ok"', None, T0 + 11)

    def ids(records: list) -> list[str]:
        return [r.workflow_id for r in records]

    assert ids(store.list_workflows()) == ["w4", "w3", "w2", "w1", "w0"]
    assert ids(store.list_workflows(name="a")) == ["w4", "w2", "w0"]
    assert ids(store.list_workflows(status=WorkflowStatus.PENDING)) == ["w4", "w2", "w0"]
    assert ids(store.list_workflows(status=WorkflowStatus.RUNNING)) == ["w1"]
    assert ids(store.list_workflows(status=WorkflowStatus.SUCCESS, name="b")) == ["w3"]
    assert ids(store.list_workflows(status=WorkflowStatus.SUCCESS, name="a")) == []
    assert ids(store.list_workflows(limit=2)) == ["w4", "w3"]
    assert ids(store.list_workflows(status=WorkflowStatus.PENDING, name="a", limit=1)) == ["w4"]


def test_list_steps_is_ordered_by_step_id(h: Harness) -> None:
    lease = h.running("w")
    for sid in (3, 1, 10, 2):
        h.store.record_step(lease, step("w", sid, output=f'"s{sid}"'))
    steps = h.store.list_steps("w")
    assert [s.step_id for s in steps] == [1, 2, 3, 10]
    assert steps[0] == step("w", 1, output='"s1"')
    assert h.store.list_steps("unknown") == []


def test_waiting_count(h: Harness) -> None:
    h.running("busy")
    assert h.store.waiting_count() == 0
    h.waiting("w1", "t")
    h.waiting("w2", "t")
    assert h.store.waiting_count() == 2


# -- execution lock -------------------------------------------------------------------------------------
def test_acquire_is_exclusive_until_release(h: Harness) -> None:
    h.create("w")
    lease = h.acquire("w")
    assert lease is not None and lease.workflow_id == "w"
    assert h.acquire("w") is None
    assert h.other_store().acquire("w") is None  # another instance (as another process) is excluded too
    h.release(lease)
    again = h.acquire("w")
    assert again is not None


def test_acquire_of_different_ids_is_independent(h: Harness) -> None:
    a = h.acquire("a")
    b = h.acquire("b")
    assert a is not None and b is not None
    h.release(a)
    assert h.acquire("b") is None
    assert h.acquire("a") is not None


def test_lock_is_per_prefix(h: Harness) -> None:
    """Two stores with different prefixes are different namespaces: same workflow id, separate locks."""
    assert h.acquire("w") is not None
    other = open_store(store_url(h.store), fresh_prefix())
    try:
        lease = other.acquire("w")
        assert lease is not None
        other.release(lease)
    finally:
        other.close()


# -- begin ----------------------------------------------------------------------------------------------
def test_begin_with_a_wrong_ticket_returns_none_and_changes_nothing(h: Harness) -> None:
    h.create("w")
    lease = h.acquire("w")
    assert lease is not None
    before = h.store.get_workflow("w")
    assert h.store.begin(lease, 1, T0 + 5) is None
    assert h.store.begin(lease, -1, T0 + 5) is None
    assert h.store.get_workflow("w") == before


def test_begin_marks_running_counts_executions_and_returns_every_checkpoint(h: Harness) -> None:
    h.create("w", now=T0)
    lease = h.acquire("w")
    assert lease is not None
    first = h.store.begin(lease, 0, T0 + 1)
    assert first is not None
    assert first.workflow.status is WorkflowStatus.RUNNING
    assert first.workflow.executions == 1
    assert first.steps == {}
    s1 = h.store.record_step(lease, step("w", 1, output='"one"'))
    s2 = h.store.record_step(lease, step("w", 2, output=None, error='{"type": "ValueError"}'))
    h.release(lease)

    # A redelivery of the same message (same ticket) runs again and sees the checkpoints.
    lease = h.acquire("w")
    assert lease is not None
    second = h.store.begin(lease, 0, T0 + 2)
    assert second is not None
    assert second.workflow.executions == 2
    assert second.workflow.status is WorkflowStatus.RUNNING
    assert second.steps == {1: s1, 2: s2}
    assert h.store.get_workflow("w").executions == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("status", [WorkflowStatus.SUCCESS, WorkflowStatus.ERROR])
def test_begin_on_a_finished_workflow_returns_none(h: Harness, status: WorkflowStatus) -> None:
    lease = h.running("w")
    h.store.finish(lease, status, '"r"' if status is WorkflowStatus.SUCCESS else None, "boom", T0 + 1)
    done = h.store.get_workflow("w")
    assert done is not None and done.status is status
    assert h.store.begin(lease, done.ticket, T0 + 2) is None
    h.release(lease)
    again = h.acquire("w")  # a later delivery can still take the lock, and finds nothing to do
    assert again is not None
    assert h.store.begin(again, done.ticket, T0 + 3) is None
    assert h.store.get_workflow("w") == done


def test_begin_forgets_the_timer(h: Harness) -> None:
    lease = h.running("w")
    suspended = h.store.wait_step(lease, recv(1, "t", timeout=10, now=T0))
    assert isinstance(suspended, Suspended) and suspended.dispatch is not None
    assert h.store.get_workflow("w").timer_due == T0 + 10  # type: ignore[union-attr]
    execution = h.store.begin(lease, suspended.dispatch.ticket, T0 + 10)
    assert execution is not None
    assert execution.workflow.status is WorkflowStatus.RUNNING
    assert execution.workflow.timer_due is None


# -- record_step and finish -------------------------------------------------------------------------------
def test_record_step_is_write_once(h: Harness) -> None:
    lease = h.running("w")
    first = step("w", 1, output='"first"')
    assert h.store.record_step(lease, first) == first
    second = step("w", 1, output='"second"', name="other", ended_at=T0 + 9)
    assert h.store.record_step(lease, second) == first
    assert h.store.list_steps("w") == [first]


def test_record_step_on_a_cancelled_workflow_raises_and_writes_nothing(h: Harness) -> None:
    lease = h.running("w")
    cancelled = h.store.cancel("w", T0 + 1)
    assert cancelled is not None and cancelled.status is WorkflowStatus.CANCELLED
    with pytest.raises(WorkflowCancelled):
        h.store.record_step(lease, step("w", 1))
    assert h.store.list_steps("w") == []


def test_finish_records_the_end(h: Harness) -> None:
    lease = h.running("w")
    h.store.finish(lease, WorkflowStatus.SUCCESS, '"done"', None, T0 + 3)
    wf = h.store.get_workflow("w")
    assert wf is not None
    assert (wf.status, wf.output, wf.error, wf.updated_at) == (WorkflowStatus.SUCCESS, '"done"', None, T0 + 3)


def test_finish_after_cancel_keeps_cancelled(h: Harness) -> None:
    lease = h.running("w")
    h.store.cancel("w", T0 + 1)
    h.store.finish(lease, WorkflowStatus.SUCCESS, '"done"', None, T0 + 2)
    wf = h.store.get_workflow("w")
    assert wf is not None and wf.status is WorkflowStatus.CANCELLED and wf.output is None


# -- wait_step: recv --------------------------------------------------------------------------------------
def test_recv_is_fifo_by_sequence_number_per_topic(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    seqs = [
        store.send("w", topic, payload, T0).seq
        for topic, payload in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("b", "b2"), ("a", "a3")]
    ]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # identical timestamps: only the sequence number orders them
    got_b = [store.wait_step(lease, recv(i, "b", now=T0 + 1)) for i in (1, 2)]
    got_a = [store.wait_step(lease, recv(i, "a", now=T0 + 1)) for i in (3, 4, 5)]
    assert [(r.output, r.topic) for r in got_b] == [("b1", "b"), ("b2", "b")]  # type: ignore[union-attr]
    assert [(r.output, r.topic) for r in got_a] == [("a1", "a"), ("a2", "a"), ("a3", "a")]  # type: ignore[union-attr]
    assert [s.step_id for s in store.list_steps("w")] == [1, 2, 3, 4, 5]
    assert store.list_steps("w")[0] == got_b[0]


def test_fifo_per_destination(h: Harness) -> None:
    """Messages for another workflow are not in this one's queue."""
    la = h.running("a")
    lb = h.running("b")
    h.store.send("b", "t", "for-b", T0)
    h.store.send("a", "t", "for-a", T0)
    assert h.drain(la, "t", 1) == ["for-a"]
    assert h.drain(lb, "t", 1) == ["for-b"]


def test_recv_default_topic_is_empty_string_and_topics_are_not_wildcards(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    store.send("w", "x", "on-x", T0)
    store.send("w", "", "on-default", T0)
    store.send("w", "xy", "on-xy", T0)
    got = store.wait_step(lease, recv(1, "", now=T0))
    assert isinstance(got, StepRecord) and (got.output, got.topic) == ("on-default", "")
    # '' is only matched by '' and 'x' is not a prefix match.
    assert h.drain(lease, "", 2) == []
    assert h.drain(lease, "x", 10) == ["on-x"]
    assert h.drain(lease, "%", 20) == []
    assert h.drain(lease, "xy", 30) == ["on-xy"]


def test_consumed_message_is_never_returned_again(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    store.send("w", "t", "only", T0)
    got = store.wait_step(lease, recv(1, "t", now=T0))
    assert isinstance(got, StepRecord) and got.output == "only"
    h.release(lease)
    # a new execution (same ticket: a redelivery) at the next step sees an empty queue
    lease = h.acquire("w")
    assert lease is not None
    execution = store.begin(lease, 0, T0 + 1)
    assert execution is not None and execution.steps[1] == got
    assert h.drain(lease, "t", 2, now=T0 + 1) == []


def test_recv_with_nothing_suspends_and_returns_the_timer(h: Harness) -> None:
    store = h.store
    lease = h.running("w", name="shop.wf", queue="orders")
    before = store.get_workflow("w")
    assert before is not None
    result = store.wait_step(lease, recv(4, "t", timeout=42, now=T0 + 8))
    assert isinstance(result, Suspended)
    after = store.get_workflow("w")
    assert after is not None
    assert after.ticket == before.ticket + 1
    assert result.dispatch == Dispatch("w", "shop.wf", "orders", after.ticket, pytest.approx(42.0))
    assert after.status is WorkflowStatus.WAITING
    assert after.wait_kind == "recv"
    assert after.wait_topics == ("t",)
    assert after.wait_step == 4
    assert after.deadline == pytest.approx(T0 + 50)
    assert after.timer_due == pytest.approx(T0 + 50)
    assert store.list_steps("w") == []


def test_the_deadline_is_recorded_the_first_time_a_step_waits(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    first = store.wait_step(lease, recv(1, "t", timeout=100, now=T0))
    assert isinstance(first, Suspended) and first.dispatch is not None
    assert store.begin(lease, first.dispatch.ticket, T0 + 30) is not None  # e.g. a retry, a recovery
    second = store.wait_step(lease, recv(1, "t", timeout=100, now=T0 + 30))
    assert isinstance(second, Suspended) and second.dispatch is not None
    assert second.dispatch.countdown == pytest.approx(70.0)  # what is left, not a fresh 100
    wf = store.get_workflow("w")
    assert wf is not None and wf.deadline == pytest.approx(T0 + 100)
    assert second.dispatch.ticket == wf.ticket == first.dispatch.ticket + 1


def test_a_passed_deadline_writes_a_timed_out_checkpoint(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    first = store.wait_step(lease, recv(1, "t", timeout=10, now=T0))
    assert isinstance(first, Suspended) and first.dispatch is not None
    assert store.begin(lease, first.dispatch.ticket, T0 + 10) is not None
    timed_out = store.wait_step(lease, recv(1, "t", timeout=10, now=T0 + 10))
    assert isinstance(timed_out, StepRecord)
    assert (timed_out.step_id, timed_out.output, timed_out.error) == (1, None, None)
    assert store.list_steps("w") == [timed_out]
    wf = store.get_workflow("w")
    assert wf is not None and wf.status is WorkflowStatus.RUNNING
    assert (wf.wait_kind, wf.deadline, wf.timer_due) == (None, None, None)
    # a message arriving later stays in the queue for a later recv
    store.send("w", "t", "late", T0 + 11)
    assert h.drain(lease, "t", 2, now=T0 + 11) == ["late"]


def test_a_message_wins_over_a_passed_deadline(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    first = store.wait_step(lease, recv(1, "t", timeout=10, now=T0))
    assert isinstance(first, Suspended)
    store.send("w", "t", "m", T0 + 5)
    h.resume(lease, T0 + 60)
    got = store.wait_step(lease, recv(1, "t", timeout=10, now=T0 + 60))
    assert isinstance(got, StepRecord) and got.output == "m"


def test_a_deadline_beyond_the_horizon_arms_no_timer(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    result = store.wait_step(lease, recv(1, "t", timeout=7 * 86400, now=T0, horizon=300))
    assert result == Suspended(None)
    wf = store.get_workflow("w")
    assert wf is not None
    assert wf.status is WorkflowStatus.WAITING
    assert wf.deadline == pytest.approx(T0 + 7 * 86400)
    assert wf.timer_due is None
    assert wf.ticket == 1  # the wait still makes every earlier message stale


def test_no_timeout_waits_without_a_timer(h: Harness) -> None:
    lease = h.running("w")
    assert h.store.wait_step(lease, recv(1, "t", timeout=None)) == Suspended(None)
    wf = h.store.get_workflow("w")
    assert wf is not None and wf.status is WorkflowStatus.WAITING and wf.deadline is None


def test_timeout_zero_is_a_poll(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    empty = store.wait_step(lease, recv(1, "t", timeout=0, now=T0))
    assert isinstance(empty, StepRecord) and empty.output is None and empty.error is None
    store.send("w", "t", "m", T0)
    got = store.wait_step(lease, recv(2, "t", timeout=0, now=T0))
    assert isinstance(got, StepRecord) and got.output == "m"
    wf = store.get_workflow("w")
    assert wf is not None and wf.status is WorkflowStatus.RUNNING and wf.ticket == 0


def test_recv_on_several_topics_returns_the_oldest_across_them(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    store.send("w", "b", "b1", T0)
    store.send("w", "c", "c1", T0)
    store.send("w", "a", "a1", T0)
    store.send("w", "b", "b2", T0)
    got = [store.wait_step(lease, recv(i, "a", "b", now=T0)) for i in (1, 2, 3)]
    assert [(r.output, r.topic) for r in got] == [("b1", "b"), ("a1", "a"), ("b2", "b")]  # type: ignore[union-attr]
    assert h.drain(lease, "c", 4) == ["c1"]


def test_wait_step_on_a_cancelled_workflow_raises(h: Harness) -> None:
    lease = h.running("w")
    h.store.send("w", "t", "m", T0)
    h.store.cancel("w", T0 + 1)
    with pytest.raises(WorkflowCancelled):
        h.store.wait_step(lease, recv(1, "t", now=T0 + 2))
    assert h.store.list_steps("w") == []


# -- send -----------------------------------------------------------------------------------------------
def test_send_to_an_unknown_workflow_raises_and_writes_nothing(h: Harness) -> None:
    with pytest.raises(WorkflowNotFound):
        h.store.send("ghost", "t", "m", T0)
    lease = h.running("ghost")  # created later: no message is waiting for it
    assert h.drain(lease, "t", 1) == []


def test_send_with_create_mailbox_keeps_the_message_for_a_later_workflow(h: Harness) -> None:
    result = h.store.send("later", "t", "early", T0, create_mailbox=True)
    assert result.created is True and result.wakeups == ()
    assert h.store.get_workflow("later") is None  # a mailbox is not a workflow
    lease = h.running("later", now=T0 + 5)
    got = h.store.wait_step(lease, recv(1, "t", now=T0 + 5))
    assert isinstance(got, StepRecord) and got.output == "early"


def test_repeated_idempotency_key_stores_one_message(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    first = store.send("w", "t", "one", T0, idempotency_key="k1")
    again = store.send("w", "t", "two", T0 + 1, idempotency_key="k1")
    other = store.send("w", "t", "three", T0 + 2, idempotency_key="k2")
    assert first.created is True
    assert (again.seq, again.created, again.wakeups) == (first.seq, False, ())
    assert other.created is True and other.seq != first.seq
    assert h.drain(lease, "t", 1) == ["one", "three"]


def test_idempotency_keys_are_per_destination(h: Harness) -> None:
    la = h.running("a")
    lb = h.running("b")
    ra = h.store.send("a", "t", "to-a", T0, idempotency_key="same")
    rb = h.store.send("b", "t", "to-b", T0, idempotency_key="same")
    assert ra.created and rb.created and ra.seq != rb.seq
    assert h.drain(la, "t", 1) == ["to-a"]
    assert h.drain(lb, "t", 1) == ["to-b"]


def test_repeated_idempotency_key_to_a_mailbox(h: Harness) -> None:
    first = h.store.send("later", "t", "one", T0, idempotency_key="k", create_mailbox=True)
    again = h.store.send("later", "t", "one", T0, idempotency_key="k", create_mailbox=True)
    assert (again.seq, again.created) == (first.seq, False)
    lease = h.running("later")
    assert h.drain(lease, "t", 1) == ["one"]


def test_send_to_a_waiting_workflow_wakes_it_once(h: Harness) -> None:
    store = h.store
    store.create_workflow("w", "shop.wf", "[]", "orders", T0)
    lease = h.acquire("w")
    assert lease is not None and store.begin(lease, 0, T0) is not None
    suspended = store.wait_step(lease, recv(1, "t", timeout=60, now=T0))
    assert isinstance(suspended, Suspended) and suspended.dispatch is not None
    timer_ticket = suspended.dispatch.ticket
    h.release(lease)  # the task left: a waiting workflow holds no lock

    woke = store.send("w", "t", "m1", T0 + 1)
    assert woke.created is True
    assert len(woke.wakeups) == 1
    wakeup = woke.wakeups[0]
    assert wakeup == Dispatch("w", "shop.wf", "orders", timer_ticket + 1, 0.0)
    wf = store.get_workflow("w")
    assert wf is not None
    assert wf.status is WorkflowStatus.PENDING
    assert wf.ticket == wakeup.ticket
    assert wf.timer_due is None

    assert store.send("w", "t", "m2", T0 + 2).wakeups == ()  # already woken
    assert store.get_workflow("w").ticket == wakeup.ticket  # type: ignore[union-attr]

    # stale tickets do nothing; the wake-up's ticket runs and receives the first message
    lease = h.acquire("w")
    assert lease is not None
    assert store.begin(lease, timer_ticket, T0 + 3) is None
    assert store.begin(lease, 0, T0 + 3) is None
    assert store.get_workflow("w").status is WorkflowStatus.PENDING  # type: ignore[union-attr]
    assert store.begin(lease, wakeup.ticket, T0 + 3) is not None
    got = store.wait_step(lease, recv(1, "t", timeout=60, now=T0 + 3))
    assert isinstance(got, StepRecord) and got.output == "m1"


def test_send_on_another_topic_does_not_wake(h: Harness) -> None:
    store = h.store
    h.waiting("w", "t")
    before = store.get_workflow("w")
    assert store.send("w", "other", "m", T0 + 1).wakeups == ()
    assert store.send("w", "", "m", T0 + 1).wakeups == ()
    after = store.get_workflow("w")
    assert after is not None and before is not None
    assert (after.status, after.ticket) == (WorkflowStatus.WAITING, before.ticket)


def test_send_to_a_multi_topic_waiter_wakes_on_any_of_them(h: Harness) -> None:
    h.waiting("w", "a", "b")
    assert len(h.store.send("w", "b", "m", T0 + 1).wakeups) == 1


def test_send_to_a_workflow_that_is_not_waiting_returns_no_wakeup(h: Harness) -> None:
    store = h.store
    h.create("pending")
    h.running("running")
    done = h.running("done")
    store.finish(done, WorkflowStatus.SUCCESS, "null", None, T0)
    sleeper = h.running("sleeper")
    sleep = store.wait_step(sleeper, WaitRequest(step_id=1, name="sleep", kind="sleep", timeout=30, now=T0))
    assert isinstance(sleep, Suspended)
    for wid in ("pending", "running", "done", "sleeper"):
        before = store.get_workflow(wid)
        assert store.send(wid, "t", "m", T0 + 1).wakeups == ()
        assert store.get_workflow(wid) == before


def test_send_with_a_checkpoint_writes_both_in_one_transaction(h: Harness) -> None:
    store = h.store
    h.create("dest")
    sender = h.running("sender")
    mark = step("sender", 1, output="null", kind="send")
    result = store.send("dest", "t", "m", T0, lease=sender, checkpoint=mark)
    assert result.created
    assert store.list_steps("sender") == [mark]
    # destination unknown: nothing is written, neither the message nor the checkpoint
    with pytest.raises(WorkflowNotFound):
        store.send("ghost", "t", "m", T0, lease=sender, checkpoint=step("sender", 2, output="null", kind="send"))
    assert store.list_steps("sender") == [mark]


def test_send_checkpoint_of_a_cancelled_sender_raises_and_stores_no_message(h: Harness) -> None:
    store = h.store
    dest = h.running("dest")
    sender = h.running("sender")
    store.cancel("sender", T0 + 1)
    with pytest.raises(WorkflowCancelled):
        store.send("dest", "t", "m", T0 + 2, lease=sender, checkpoint=step("sender", 1, output="null", kind="send"))
    assert store.list_steps("sender") == []
    assert h.drain(dest, "t", 1) == []


# -- events -----------------------------------------------------------------------------------------------
def test_set_event_and_get_event_last_value_wins(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    assert store.get_event("w", "k") is None
    assert store.set_event(lease, "k", '"v1"', step("w", 1, output="null", kind="set_event")) == []
    assert store.get_event("w", "k") == '"v1"'
    store.set_event(lease, "k", '"v2"', step("w", 2, output="null", kind="set_event"))
    assert store.get_event("w", "k") == '"v2"'
    assert store.get_event("w", "other") is None
    assert store.get_event("other", "k") is None
    assert [s.step_id for s in store.list_steps("w")] == [1, 2]


def test_event_already_set_completes_the_wait(h: Harness) -> None:
    store = h.store
    setter = h.running("setter")
    store.set_event(setter, "k", '"v"', step("setter", 1, output="null", kind="set_event"))
    waiter = h.running("waiter")
    got = store.wait_step(waiter, event_wait(1, "setter", "k"))
    assert isinstance(got, StepRecord) and got.output == '"v"' and got.kind == "event"
    assert store.list_steps("waiter") == [got]


def test_set_event_wakes_the_workflows_waiting_on_it(h: Harness) -> None:
    store = h.store
    setter = h.running("setter")
    store.create_workflow("waiter", "shop.waiter", "[]", "wq", T0)
    waiter = h.acquire("waiter")
    assert waiter is not None and store.begin(waiter, 0, T0) is not None
    suspended = store.wait_step(waiter, event_wait(1, "setter", "k", timeout=60))
    assert isinstance(suspended, Suspended) and suspended.dispatch is not None
    other_key = h.running("other-key")
    assert isinstance(store.wait_step(other_key, event_wait(1, "setter", "nope", timeout=60)), Suspended)
    h.release(waiter)

    wakeups = store.set_event(setter, "k", '"v"', step("setter", 1, output="null", kind="set_event", ended_at=T0 + 5))
    assert wakeups == [Dispatch("waiter", "shop.waiter", "wq", suspended.dispatch.ticket + 1, 0.0)]
    wf = store.get_workflow("waiter")
    assert wf is not None and wf.status is WorkflowStatus.PENDING and wf.ticket == wakeups[0].ticket
    assert store.get_workflow("other-key").status is WorkflowStatus.WAITING  # type: ignore[union-attr]
    # setting it again does not wake it twice
    assert store.set_event(setter, "k", '"v2"', step("setter", 2, output="null", kind="set_event")) == []

    waiter = h.acquire("waiter")
    assert waiter is not None
    assert store.begin(waiter, suspended.dispatch.ticket, T0 + 6) is None  # the timer is stale
    assert store.begin(waiter, wakeups[0].ticket, T0 + 6) is not None
    got = store.wait_step(waiter, event_wait(1, "setter", "k", timeout=60, now=T0 + 6))
    assert isinstance(got, StepRecord) and got.output == '"v2"'


def test_event_wait_times_out(h: Harness) -> None:
    store = h.store
    h.running("setter")
    waiter = h.running("waiter")
    first = store.wait_step(waiter, event_wait(1, "setter", "k", timeout=5, now=T0))
    assert isinstance(first, Suspended) and first.dispatch is not None
    assert first.dispatch.countdown == pytest.approx(5.0)
    assert store.begin(waiter, first.dispatch.ticket, T0 + 5) is not None
    got = store.wait_step(waiter, event_wait(1, "setter", "k", timeout=5, now=T0 + 5))
    assert isinstance(got, StepRecord) and got.output is None


# -- cancel -----------------------------------------------------------------------------------------------
def test_cancel_a_waiting_workflow(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    suspended = store.wait_step(lease, recv(1, "t", timeout=60))
    assert isinstance(suspended, Suspended) and suspended.dispatch is not None
    h.release(lease)
    record = store.cancel("w", T0 + 1)
    assert record is not None
    assert record.status is WorkflowStatus.CANCELLED
    assert record.ticket == suspended.dispatch.ticket + 1
    assert record.deadline is None and record.timer_due is None
    assert store.get_workflow("w") == record
    assert store.waiting_count() == 0
    lease = h.acquire("w")
    assert lease is not None
    assert store.begin(lease, suspended.dispatch.ticket, T0 + 60) is None  # the timer fires: nothing runs
    assert store.begin(lease, record.ticket, T0 + 60) is None  # finished
    # a message sent to a cancelled workflow wakes nothing
    assert store.send("w", "t", "m", T0 + 2).wakeups == ()
    assert store.get_workflow("w") == record


def test_cancel_a_pending_workflow_makes_its_message_stale(h: Harness) -> None:
    h.create("w")
    record = h.store.cancel("w", T0 + 1)
    assert record is not None and record.status is WorkflowStatus.CANCELLED and record.ticket == 1
    lease = h.acquire("w")
    assert lease is not None
    assert h.store.begin(lease, 0, T0 + 2) is None


def test_cancel_leaves_finished_workflows_unchanged(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    store.finish(lease, WorkflowStatus.SUCCESS, '"r"', None, T0 + 1)
    done = store.get_workflow("w")
    assert store.cancel("w", T0 + 2) == done
    assert store.get_workflow("w") == done
    cancelled = store.cancel(h.running("c").workflow_id, T0 + 3)
    assert store.cancel("c", T0 + 4) == cancelled  # cancelling twice changes nothing


def test_cancel_of_an_unknown_workflow_is_none(h: Harness) -> None:
    assert h.store.cancel("nope", T0) is None


# -- sweep ------------------------------------------------------------------------------------------------
HORIZON, GRACE = 300.0, 30.0


def test_sweep_arms_a_far_deadline_once_it_comes_within_the_horizon(h: Harness) -> None:
    store = h.store
    store.create_workflow("w", "shop.wf", "[]", "orders", T0)
    lease = h.acquire("w")
    assert lease is not None and store.begin(lease, 0, T0) is not None
    assert store.wait_step(lease, recv(1, "t", timeout=3600, now=T0, horizon=HORIZON)) == Suspended(None)
    h.release(lease)
    deadline = T0 + 3600

    assert store.sweep(deadline - HORIZON - 1, HORIZON, GRACE) == []  # not yet within the horizon
    now = deadline - 200
    before = store.get_workflow("w")
    assert before is not None
    dispatches = store.sweep(now, HORIZON, GRACE)
    assert dispatches == [Dispatch("w", "shop.wf", "orders", before.ticket + 1, pytest.approx(200.0))]
    after = store.get_workflow("w")
    assert after is not None
    assert after.status is WorkflowStatus.WAITING
    assert after.ticket == before.ticket + 1
    assert after.timer_due == pytest.approx(deadline)
    assert store.sweep(now, HORIZON, GRACE) == []  # already armed
    assert store.sweep(deadline + GRACE - 1, HORIZON, GRACE) == []  # armed and not overdue past grace


def test_sweep_leaves_an_armed_timer_alone(h: Harness) -> None:
    lease = h.running("w")
    suspended = h.store.wait_step(lease, recv(1, "t", timeout=60, now=T0, horizon=HORIZON))
    assert isinstance(suspended, Suspended) and suspended.dispatch is not None
    h.release(lease)
    before = h.store.get_workflow("w")
    assert h.store.sweep(T0 + 1, HORIZON, GRACE) == []
    assert h.store.sweep(T0 + 60 + GRACE - 1, HORIZON, GRACE) == []
    assert h.store.get_workflow("w") == before


def test_sweep_redispatches_an_overdue_timer(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    suspended = store.wait_step(lease, recv(1, "t", timeout=60, now=T0, horizon=HORIZON))
    assert isinstance(suspended, Suspended) and suspended.dispatch is not None
    h.release(lease)
    now = T0 + 60 + GRACE + 1  # the timer message was lost
    dispatches = store.sweep(now, HORIZON, GRACE)
    assert dispatches == [Dispatch("w", "wf", "q", suspended.dispatch.ticket + 1, 0.0)]
    wf = store.get_workflow("w")
    assert wf is not None
    assert wf.status is WorkflowStatus.PENDING and wf.ticket == dispatches[0].ticket
    assert store.sweep(now, HORIZON, GRACE) == []  # just dispatched
    lease = h.acquire("w")
    assert lease is not None
    assert store.begin(lease, suspended.dispatch.ticket, now) is None  # the lost timer, if it shows up, is stale
    assert store.begin(lease, dispatches[0].ticket, now) is not None
    timed_out = store.wait_step(lease, recv(1, "t", timeout=60, now=now))
    assert isinstance(timed_out, StepRecord) and timed_out.output is None


def test_sweep_redispatches_a_pending_workflow_after_grace(h: Harness) -> None:
    store = h.store
    h.create("w", now=T0)
    assert store.sweep(T0 + GRACE - 1, HORIZON, GRACE) == []
    dispatches = store.sweep(T0 + GRACE + 1, HORIZON, GRACE)
    assert dispatches == [Dispatch("w", "wf", "q", 1, 0.0)]
    wf = store.get_workflow("w")
    assert wf is not None and wf.status is WorkflowStatus.PENDING and wf.ticket == 1
    assert store.sweep(T0 + GRACE + 2, HORIZON, GRACE) == []  # dispatched again just now
    again = store.sweep(T0 + 2 * GRACE + 2, HORIZON, GRACE)
    assert [d.ticket for d in again] == [2]


def test_sweep_redispatches_a_running_workflow_whose_lock_is_free(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    store.record_step(lease, step("w", 1))
    h.release(lease)  # as if its worker died
    dispatches = store.sweep(T0 + 1, HORIZON, GRACE)
    assert dispatches == [Dispatch("w", "wf", "q", 1, 0.0)]
    wf = store.get_workflow("w")
    assert wf is not None and wf.status is WorkflowStatus.PENDING and wf.ticket == 1
    lease = h.acquire("w")
    assert lease is not None
    assert store.begin(lease, 0, T0 + 2) is None
    execution = store.begin(lease, 1, T0 + 2)
    assert execution is not None and list(execution.steps) == [1]


def test_sweep_never_touches_a_workflow_whose_lock_is_held(h: Harness) -> None:
    store = h.store
    h.running("running")  # lease kept: a live execution
    h.create("pending", now=T0)
    assert h.acquire("pending") is not None  # overdue, but somebody holds it
    waiting = h.running("waiting")
    assert isinstance(store.wait_step(waiting, recv(1, "t", timeout=60, now=T0)), Suspended)
    far = h.running("far")
    assert store.wait_step(far, recv(1, "t", timeout=3600, now=T0, horizon=HORIZON)) == Suspended(None)
    before = {w.workflow_id: w for w in store.list_workflows()}
    now = T0 + 3600  # everything is overdue
    assert store.sweep(now, HORIZON, GRACE) == []
    assert store.sweep(now, HORIZON, GRACE) == []
    assert {w.workflow_id: w for w in store.list_workflows()} == before


def test_every_sweep_dispatch_bumps_the_ticket(h: Harness) -> None:
    store = h.store
    h.create("pending", now=T0)
    h.release(h.running("running"))
    overdue = h.running("overdue")
    assert isinstance(store.wait_step(overdue, recv(1, "t", timeout=10, now=T0)), Suspended)
    h.release(overdue)
    far = h.running("far")
    assert store.wait_step(far, recv(1, "t", timeout=1000, now=T0, horizon=HORIZON)) == Suspended(None)
    h.release(far)
    h.running("held")
    before = {w.workflow_id: w.ticket for w in store.list_workflows()}
    now = T0 + 1000 - 100  # far's deadline is within the horizon; the rest are overdue past grace
    dispatches = store.sweep(now, HORIZON, GRACE)
    assert sorted(d.workflow_id for d in dispatches) == ["far", "overdue", "pending", "running"]
    for d in dispatches:
        assert d.ticket == before[d.workflow_id] + 1
        assert store.get_workflow(d.workflow_id).ticket == d.ticket  # type: ignore[union-attr]
        assert d.countdown == (pytest.approx(100.0) if d.workflow_id == "far" else 0.0)
    assert store.get_workflow("held").ticket == before["held"]  # type: ignore[union-attr]


def test_sweep_respects_its_limit(h: Harness) -> None:
    for i in range(5):
        h.create(f"w{i}", now=T0)
    assert len(h.store.sweep(T0 + GRACE + 1, HORIZON, GRACE, limit=2)) == 2
    assert len(h.store.sweep(T0 + GRACE + 1, HORIZON, GRACE, limit=10)) == 3


def test_release_never_raises_even_twice_and_never_frees_another_lock(h: Harness) -> None:
    a = h.acquire("a")
    assert a is not None
    h.release(a)
    b = h.acquire("b")  # may reuse whatever resource a's lock used
    assert b is not None
    h.store.release(a)  # a second release of a released lease: a no-op
    assert h.other_store().acquire("b") is None  # b is still held
    assert h.acquire("a") is not None


def test_sleep_waits_until_its_deadline(h: Harness) -> None:
    store = h.store
    lease = h.running("w")
    nap = WaitRequest(step_id=1, name="sleep", kind="sleep", timeout=30, now=T0)
    suspended = store.wait_step(lease, nap)
    assert isinstance(suspended, Suspended) and suspended.dispatch is not None
    assert suspended.dispatch.countdown == pytest.approx(30.0)
    assert store.send("w", "", "m", T0 + 1).wakeups == ()  # a message does not end a sleep
    assert store.begin(lease, suspended.dispatch.ticket, T0 + 10) is not None  # an early (stale-free) run
    again = store.wait_step(lease, WaitRequest(step_id=1, name="sleep", kind="sleep", timeout=30, now=T0 + 10))
    assert isinstance(again, Suspended) and again.dispatch is not None
    assert again.dispatch.countdown == pytest.approx(20.0)
    assert store.begin(lease, again.dispatch.ticket, T0 + 30) is not None
    done = store.wait_step(lease, WaitRequest(step_id=1, name="sleep", kind="sleep", timeout=30, now=T0 + 30))
    assert isinstance(done, StepRecord) and done.kind == "sleep" and done.output is None
