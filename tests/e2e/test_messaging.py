"""End-to-end tests of durable messaging (issue 3): send / recv / recv_any, events, sleep.

Every test runs real ``celery worker`` subprocesses (prefork, concurrency 2) on Redis or
RabbitMQ with the store on PostgreSQL (and one on the SQLite default). Nothing is mocked.
Timing is only ever asserted as a lower bound ("no sooner than"); every wait for progress
goes through ``wait_for`` / ``result(timeout=...)`` with generous limits.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from celery_durable import (
    InvalidArgument,
    NotInWorkflow,
    PayloadTooLarge,
    SerializationError,
    WorkflowCancelled,
    WorkflowNotFound,
    WorkflowStatus,
)
from tests.conftest import BROKERS, configured_app, make_env
from tests.services import Worker, count_lines, running_worker, wait_for

TICKET_KW = "__durable_ticket__"


# -- helpers -------------------------------------------------------------------------------------
def record(wf: Any, workflow_id: str) -> Any:
    rec = wf.durable.store.get_workflow(workflow_id)
    assert rec is not None, f"no workflow {workflow_id!r}"
    return rec


def wait_status(wf: Any, workflow_id: str, status: WorkflowStatus, timeout: float = 60) -> Any:
    return wait_for(
        lambda: (r := record(wf, workflow_id)).status == status and r,
        timeout=timeout,
        what=f"{workflow_id} to be {status}",
    )


def messages(wf: Any, destination: str) -> list[dict[str, Any]]:
    """Rows of ``<prefix>messages`` for *destination*, oldest first."""
    store = wf.durable.store
    m = store.t.messages
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(m).where(m.c.destination == destination).order_by(m.c.seq))
        return [dict(r._mapping) for r in rows]


def all_message_count(wf: Any) -> int:
    store = wf.durable.store
    m = store.t.messages
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(m)).scalar_one())


def queue_length(wf: Any, queue: str) -> int:
    """Ready messages in the broker queue (works on Redis and RabbitMQ through kombu)."""
    with wf.app.connection_for_write() as conn:
        _, count, _ = conn.default_channel.queue_declare(queue=queue, passive=True)
        return int(count)


def counter(env: dict[str, str], name: str) -> Path:
    return Path(env["CD_COUNTER_DIR"]) / name


def done_deliveries(worker: Worker, workflow_id: str) -> int:
    """Task messages for *workflow_id* the worker has finished with (a no-op delivery returns None)."""
    return len(re.findall(rf"\[{re.escape(workflow_id)}\] (?:succeeded|ignored)", worker.output()))


# -- 1. FIFO per (destination, topic), topic separation -------------------------------------------
def test_fifo_per_topic_and_topic_separation(wf, e2e_env):
    with running_worker(e2e_env):
        h = wf.receiver.start(["a", "b", "a", None], 4, 60, workflow_id="fifo")
        wait_status(wf, "fifo", WorkflowStatus.WAITING)
        # The default-topic message is the oldest and 'a2' is older than 'b1': a receiver that
        # took the oldest message regardless of topic would get d1 first and a2 before b1.
        wf.durable.send("fifo", "d1")
        wf.durable.send("fifo", "a1", topic="a")
        wf.durable.send("fifo", "a2", topic="a")
        wf.durable.send("fifo", "b1", topic="b")
        assert h.result(timeout=60) == ["a1", "b1", "a2", "d1"]
        recvs = [s for s in h.steps() if s.kind == "recv"]
        assert [(s.topic, s.output) for s in recvs] == [("a", '"a1"'), ("b", '"b1"'), ("a", '"a2"'), ("", '"d1"')]

        # A topic is not a wildcard and no topic is not a wildcard either.
        only_default = wf.receiver.start([None], 1, 2, workflow_id="only-default")
        only_t = wf.receiver.start(["t"], 1, 2, workflow_id="only-t")
        wf.durable.send("only-default", "for-t", topic="t")
        wf.durable.send("only-t", "for-default")
        assert only_default.result(timeout=60) == ["<timeout>"]
        assert only_t.result(timeout=60) == ["<timeout>"]
        for wid, topic in (("only-default", "t"), ("only-t", "")):
            rows = messages(wf, wid)
            assert [(r["topic"], r["consumed_at"]) for r in rows] == [(topic, None)]
        assert all(r["consumed_at"] is not None for r in messages(wf, "fifo"))

        # Strict FIFO over a longer run, interleaved with another topic.
        for i in range(20):
            wf.durable.send("fifo-many", i, topic="f", create_mailbox=True)
            wf.durable.send("fifo-many", -i, topic="g", create_mailbox=True)
        many = wf.receiver.start(["f"], 20, 60, workflow_id="fifo-many")
        assert many.result(timeout=60) == list(range(20))


# -- 2. timeout returns the default after the timeout, no sooner ----------------------------------
def test_timeout_returns_default_no_sooner(wf, e2e_env):
    timeout = 3.0
    with running_worker(e2e_env):
        h = wf.receiver.start(["never"], 1, timeout, workflow_id="times-out")
        # timeout=0 is a non-blocking poll: a message already there is returned, none gives the default.
        wf.durable.send("poll-hit", "here", topic="p", create_mailbox=True)
        hit = wf.receiver.start(["p"], 1, 0, workflow_id="poll-hit")
        miss = wf.receiver.start(["p"], 1, 0, workflow_id="poll-miss")
        assert hit.result(timeout=60) == ["here"]
        assert miss.result(timeout=60) == ["<timeout>"]
        assert record(wf, "poll-miss").executions == 1  # a poll never waits

        # Without a default a timeout is None, like a message whose value is None: hence default=.
        plain = wf.recv_plain.start("q", 0.5, workflow_id="plain-timeout")
        none_msg = wf.receiver.start(["q"], 1, 60, workflow_id="none-message")
        wf.durable.send("none-message", None, topic="q")
        assert plain.result(timeout=60) == {"value": None}
        assert none_msg.result(timeout=60) == [None]

        assert h.result(timeout=60) == ["<timeout>"]
        rec = record(wf, "times-out")
        (step,) = h.steps()
        assert step.kind == "recv" and step.output is None
        # The deadline is recorded at the first wait, which is after the workflow was created.
        assert step.ended_at - rec.created_at >= timeout
        assert rec.updated_at - rec.created_at >= timeout


# -- 3. a replay after completion neither resends nor reconsumes ----------------------------------
def test_replay_after_completion_does_not_resend_or_reconsume(wf, e2e_env):
    queue = e2e_env["CD_QUEUE"]
    with running_worker(e2e_env) as worker:
        rcv = wf.receiver.start(["m"], 1, 60, workflow_id="replay-rcv")
        snd = wf.sender.start("replay-rcv", ["m1"], "m", 0.0, workflow_id="replay-snd")
        assert snd.result(timeout=60) == 1
        assert rcv.result(timeout=60) == ["m1"]
        before = {wid: record(wf, wid) for wid in ("replay-rcv", "replay-snd")}
        wf.durable.send("replay-rcv", "fresh", topic="m")  # allowed; nobody will ever consume it

        assert wf.durable.recover() == 0  # nothing to recover: both finished
        baseline = {wid: done_deliveries(worker, wid) for wid in before}
        for wid, task in (("replay-rcv", wf.receiver), ("replay-snd", wf.sender)):
            rec = before[wid]
            # an old ticket, the current ticket, and a plain Celery message without a ticket
            wf.app.send_task(task.name, task_id=wid, kwargs={TICKET_KW: 0}, queue=queue)
            wf.app.send_task(task.name, task_id=wid, kwargs={TICKET_KW: rec.ticket}, queue=queue)
            args = [["m"], 1, 60] if task is wf.receiver else ["replay-rcv", ["m1"], "m", 0.0]
            wf.app.send_task(task.name, task_id=wid, args=args, queue=queue)
        wait_for(
            lambda: all(done_deliveries(worker, wid) >= baseline[wid] + 3 for wid in before),
            timeout=60,
            what="the worker to process the replayed messages",
        )
        time.sleep(1.0)

        for wid, rec in before.items():
            after = record(wf, wid)
            assert after.status == WorkflowStatus.SUCCESS
            assert after.executions == rec.executions
            assert after.ticket == rec.ticket
            assert after.output == rec.output
        rows = messages(wf, "replay-rcv")
        assert [(r["payload"], r["consumed_at"] is None) for r in rows] == [('"m1"', False), ('"fresh"', True)]
        assert count_lines(counter(e2e_env, "receiver.got")) == 1
        assert count_lines(counter(e2e_env, "after_send.start")) == 1
        assert wf.durable.handle("replay-rcv").result(timeout=5) == ["m1"]


# -- 4. exactly-once send inside a workflow across a crash ----------------------------------------
def test_send_in_workflow_is_exactly_once_across_a_crash(wf, e2e_env, tmp_path):
    """`sender_held` sends m1, m2, then holds in a step until a flag file exists: kill -9 the
    worker there, start a second one, and the destination still has exactly one copy of each."""
    started, ended = counter(e2e_env, "held.start"), counter(e2e_env, "held.end")
    flag = tmp_path / "release"
    first = Worker(e2e_env, log=tmp_path / "w1.log").start()
    second: Worker | None = None
    try:
        rcv = wf.receiver.start(["x"], 2, 60, workflow_id="crash-rcv")
        snd = wf.sender_held.start("crash-rcv", ["m1", "m2"], "x", str(flag), workflow_id="crash-snd")
        wait_for(lambda: count_lines(started) == 1, timeout=60, what="the step after the sends")
        assert rcv.result(timeout=60) == ["m1", "m2"]  # delivered while the sender holds in its step
        first.kill()  # kill -9 the whole worker (main process and pool children) mid-step
        assert count_lines(ended) == 0
        assert record(wf, "crash-snd").status == WorkflowStatus.RUNNING

        flag.touch()
        second = Worker(e2e_env, log=tmp_path / "w2.log").start()
        assert snd.result(timeout=90) == 2
        assert count_lines(started) == 2  # the cut-off step ran again (at-least-once)...
        assert count_lines(ended) == 1
        rows = messages(wf, "crash-rcv")  # ...but the sends before it were not replayed
        assert [r["payload"] for r in rows] == ['"m1"', '"m2"']
        assert all(r["consumed_at"] is not None for r in rows)
        assert [s.kind for s in snd.steps()] == ["send", "send", "step"]
    finally:
        first.stop()
        if second is not None:
            second.stop()


# -- 5. idempotency keys --------------------------------------------------------------------------
def test_idempotency_key_delivers_once(wf, e2e_env):
    with running_worker(e2e_env):
        one = wf.receiver.start(["k"], 2, 3, workflow_id="idem-1")
        two = wf.receiver.start(["k"], 2, 3, workflow_id="idem-2")
        wf.durable.send("idem-1", "once", topic="k", idempotency_key="key-1")
        wf.durable.send("idem-1", "once-again", topic="k", idempotency_key="key-1")
        wf.durable.send("idem-1", "once", topic="k", idempotency_key="key-1")
        # the key is per destination: the same key to another workflow is another message
        wf.durable.send("idem-2", "other", topic="k", idempotency_key="key-1")
        wf.durable.send("idem-2", "second", topic="k", idempotency_key="key-2")
        assert one.result(timeout=60) == ["once", "<timeout>"]
        assert two.result(timeout=60) == ["other", "second"]
        assert [r["payload"] for r in messages(wf, "idem-1")] == ['"once"']
        with pytest.raises(InvalidArgument):
            wf.durable.send("idem-1", "x", idempotency_key="")


# -- 6. no lost wake-up, end to end ---------------------------------------------------------------
def test_send_racing_the_first_recv_is_never_lost(wf, e2e_env):
    """Send to each new workflow right as it goes to wait. recv waits forever (timeout None), so a
    lost wake-up can never be rescued by a timer: the workflow would simply never finish."""
    n = 100
    rng = random.Random(3)
    with running_worker(e2e_env):
        handles = []
        for i in range(n):
            handles.append(wf.receiver.start(["go"], 1, None, workflow_id=f"race-{i}"))
            time.sleep(rng.choice([0, 0, 0.001, 0.002, 0.005, 0.01, 0.02]))
            wf.durable.send(f"race-{i}", i, topic="go")
        for i, h in enumerate(handles):
            assert h.result(timeout=90) == [i]
        executions = [record(wf, f"race-{i}").executions for i in range(n)]
        # 1: the message was there at the first recv; 2: it was woken once; never more.
        assert set(executions) <= {1, 2}, executions
        print(f"race: {executions.count(1)} found at once, {executions.count(2)} woken")


# -- 7. execution counts --------------------------------------------------------------------------
def test_execution_count_one_at_a_time(wf, e2e_env):
    """Each message is sent only once the receiver waits for it, so every one goes through the
    whole cycle: record the wait, leave, get woken by the send, run once, consume."""
    n = 100
    with running_worker(e2e_env):
        h = wf.receiver.start(["n"], n, 60, workflow_id="count-rcv")
        for k in range(n):
            # recv number k is step k of the receiver
            wait_for(
                lambda k=k: (r := record(wf, "count-rcv")).status == WorkflowStatus.WAITING and r.wait_step == k,
                timeout=60,
                interval=0.01,
                what=f"the receiver to wait for message {k}",
            )
            wf.durable.send("count-rcv", k, topic="n")
        assert h.result(timeout=60) == list(range(n))
        executions = record(wf, "count-rcv").executions
        print(f"{n} messages one at a time: {executions} executions")
        # one wake-up per message (plus the first run) is what waiting-by-leaving costs; ~2 per message is the limit
        assert n + 1 <= executions <= 2 * n + 2, executions


def test_a_fast_conversation_continues_in_place(wf, e2e_env):
    """adaptive_linger (on by default, PostgreSQL): once a reply came within it, the next recvs wait in
    place, so a request/response loop costs no broker hop and no replay per message."""
    n = 40
    with running_worker(e2e_env):
        h = wf.receiver.start(["c"], n, 60, workflow_id="conv")
        wait_for(lambda: record(wf, "conv").status == WorkflowStatus.WAITING, timeout=60, what="the first wait")
        for k in range(n):
            wf.durable.send("conv", k, topic="c")  # the next one as soon as this one is received
            wait_for(
                lambda k=k: sum(m.consumed for m in wf.durable.store.list_messages("conv")) > k,
                timeout=60,
                interval=0.002,
                what=f"message {k} to be received",
            )
        assert h.result(timeout=60) == list(range(n))
        executions = record(wf, "conv").executions
        print(f"{n} messages, each sent once the previous was received: {executions} executions")
        # one at a time through the broker costs n + 1 executions (above); a linger that misses costs ~2 more
        assert executions <= n // 2, executions


def test_burst_of_sends_publishes_one_wakeup(wf, e2e_env, tmp_path):
    n = 50
    queue = e2e_env["CD_QUEUE"]
    with running_worker(e2e_env, log=tmp_path / "w1.log"):
        h = wf.receiver.start(["b"], n, 60, workflow_id="burst")
        wait_status(wf, "burst", WorkflowStatus.WAITING)
    # No worker now: whatever the sends publish stays in the broker queue where we can count it.
    assert record(wf, "burst").executions == 1
    before = queue_length(wf, queue)
    for i in range(n):
        wf.durable.send("burst", i, topic="b")
    wait_for(lambda: queue_length(wf, queue) > before, timeout=30, what="the wake-up message")
    time.sleep(1.0)
    assert queue_length(wf, queue) == before + 1  # 50 sends, one wake-up
    assert record(wf, "burst").status == WorkflowStatus.PENDING
    with running_worker(e2e_env, log=tmp_path / "w2.log"):
        assert h.result(timeout=60) == list(range(n))
        assert record(wf, "burst").executions == 2  # the first wait, then one wake-up for all 50


# -- 8. a wait longer than the horizon ------------------------------------------------------------
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_wait_beyond_the_horizon(broker, pg_database, tmp_path):
    env = make_env(BROKERS[broker](), pg_database, tmp_path, CD_HORIZON="2", CD_SWEEP_INTERVAL="0.5")
    with configured_app(env) as wf, running_worker(env):
        short = wf.receiver.start(["h"], 1, 5, workflow_id="beyond-timeout")
        far = wf.receiver.start(["h"], 1, 300, workflow_id="beyond-woken")
        for wid in ("beyond-timeout", "beyond-woken"):
            rec = wait_status(wf, wid, WorkflowStatus.WAITING)
            # Far from its deadline: kept in the store, no countdown message held anywhere.
            assert rec.deadline is not None and rec.timer_due is None, rec
        waited_at = time.monotonic()

        # The sweep arms the 5 s wait once its deadline is within the 2 s horizon.
        def armed_or_done() -> Any:
            r = record(wf, "beyond-timeout")
            return r if r.timer_due is not None or r.status.is_terminal else None

        armed = wait_for(
            armed_or_done,
            timeout=60,
            interval=0.02,
            what="the sweep to arm the timer",
        )
        assert armed.timer_due == armed.deadline, armed  # seen armed for ~2 s before the deadline
        assert short.result(timeout=60) == ["<timeout>"]
        rec = record(wf, "beyond-timeout")
        (step,) = short.steps()
        assert step.output is None and step.ended_at - rec.created_at >= 5

        # A send well after the horizon still wakes the far waiter through the broker signal.
        time.sleep(max(0.0, 3.0 - (time.monotonic() - waited_at)))
        far_rec = record(wf, "beyond-woken")
        assert far_rec.status == WorkflowStatus.WAITING and far_rec.timer_due is None
        wf.durable.send("beyond-woken", "late", topic="h")
        assert far.result(timeout=60) == ["late"]
        (step,) = far.steps()
        assert step.ended_at < far_rec.deadline  # woken by the send, not by a timer
        assert record(wf, "beyond-woken").executions == 2


# -- 9. cancellation during a wait ----------------------------------------------------------------
def test_cancel_during_a_wait(wf, e2e_env):
    with running_worker(e2e_env):
        h = wf.receiver.start(["c"], 1, 300, workflow_id="cancel-me")
        rec = wait_status(wf, "cancel-me", WorkflowStatus.WAITING)
        assert wf.durable.cancel("cancel-me") == WorkflowStatus.CANCELLED
        assert h.status() == WorkflowStatus.CANCELLED
        with pytest.raises(WorkflowCancelled):
            h.result(timeout=5)
        wf.durable.send("cancel-me", "too late", topic="c")
        wf.durable.recover()
        time.sleep(3.0)
        after = record(wf, "cancel-me")
        assert after.status == WorkflowStatus.CANCELLED
        assert after.executions == rec.executions == 1
        assert after.wait_kind is None and after.deadline is None
        assert [r["consumed_at"] for r in messages(wf, "cancel-me")] == [None]
        assert count_lines(Path(wf.COUNTER_DIR) / "receiver.got") == 0
        assert wf.durable.cancel("cancel-me") == WorkflowStatus.CANCELLED  # idempotent


# -- 10. bad input and mailboxes ------------------------------------------------------------------
def test_bad_sends_are_refused_and_store_nothing(wf, e2e_env):
    durable = wf.durable
    with pytest.raises(WorkflowNotFound, match="no-such-workflow"):
        durable.send("no-such-workflow", "x")
    assert messages(wf, "no-such-workflow") == []

    durable.send("box", "ok", create_mailbox=True)
    assert all_message_count(wf) == 1
    with pytest.raises(SerializationError, match="JSON"):
        durable.send("box", object(), create_mailbox=True)
    with pytest.raises(SerializationError, match="JSON"):
        durable.send("box", {"x": float("nan")}, create_mailbox=True)
    limit = durable.config.max_payload
    assert limit == 256 * 1024
    with pytest.raises(PayloadTooLarge, match=str(limit)):
        durable.send("box", "x" * limit, create_mailbox=True)  # JSON adds two quotes
    durable.send("box", "x" * (limit - 2), create_mailbox=True)  # exactly at the limit is accepted
    for topic in ("", "t" * 300, 5, b"bytes", ["a"]):
        with pytest.raises(InvalidArgument, match="topic"):
            durable.send("box", "x", topic=topic, create_mailbox=True)
    durable.send("box", "y", topic="t" * 255, create_mailbox=True)
    for bad_id in ("", "i" * 300, None, 7):
        with pytest.raises(InvalidArgument):
            durable.send(bad_id, "x", create_mailbox=True)
    assert [r["payload"][:5] for r in messages(wf, "box")] == ['"ok"', '"xxxx', '"y"']
    assert all_message_count(wf) == 3

    with pytest.raises(NotInWorkflow, match="recv"):
        durable.recv("t", timeout=0)
    with pytest.raises(NotInWorkflow):
        durable.recv_any(["a", "b"], timeout=0)
    with pytest.raises(NotInWorkflow):
        durable.sleep(1)
    with pytest.raises(NotInWorkflow):
        durable.set_event("k", 1)
    for bad in ("", "t" * 300, 3):
        with pytest.raises(InvalidArgument):
            durable.recv(bad)
    with pytest.raises(InvalidArgument):
        durable.recv("t", timeout=-1)


def test_mailbox_buffers_messages_for_a_later_start(wf, e2e_env):
    wf.durable.send("later", "first", topic="mb", create_mailbox=True)
    wf.durable.send("later", "second", topic="mb", create_mailbox=True)
    wf.durable.send("later", "untopiced", create_mailbox=True)
    with pytest.raises(WorkflowNotFound):
        wf.durable.handle("later")  # a mailbox is not a workflow
    with running_worker(e2e_env):
        h = wf.receiver.start(["mb", "mb", None], 3, 60, workflow_id="later")
        assert h.result(timeout=60) == ["first", "second", "untopiced"]
        assert record(wf, "later").executions == 1  # everything was there: it never waited


# -- 11. recv_any, sleep, events ------------------------------------------------------------------
def test_recv_any_sleep_and_events(wf, e2e_env):
    with running_worker(e2e_env):
        # recv_any returns (topic, message); the oldest message of any of the topics wins.
        any_wait = wf.receive_any.start(["a", "b"], 60, workflow_id="any-wait")
        wf.durable.send("any-buffered", "from-b", topic="b", create_mailbox=True)
        wf.durable.send("any-buffered", "from-a", topic="a", create_mailbox=True)
        any_buffered = wf.receive_any.start(["a", "b"], 60, workflow_id="any-buffered")
        any_default = wf.receive_any.start([None, "z"], 60, workflow_id="any-default")
        wait_status(wf, "any-wait", WorkflowStatus.WAITING)
        wf.durable.send("any-wait", "ignored", topic="c")
        wf.durable.send("any-wait", {"v": 1}, topic="b")
        wf.durable.send("any-default", "plain")
        assert any_wait.result(timeout=60) == ["b", {"v": 1}]  # a tuple, stored as JSON
        assert any_buffered.result(timeout=60) == ["b", "from-b"]
        assert any_default.result(timeout=60) == [None, "plain"]
        any_timeout = wf.receive_any.start(["a", "b"], 1, workflow_id="any-timeout")
        assert any_timeout.result(timeout=60) == "<timeout>"

        # durable.sleep leaves the worker and resumes after the time, no sooner.
        sleeper = wf.sleeper.start(1.5, workflow_id="sleeper")
        assert sleeper.result(timeout=60) == "woke"
        sleep_step, add_step = sleeper.steps()
        assert sleep_step.kind == "sleep" and add_step.kind == "step"
        assert sleep_step.ended_at - record(wf, "sleeper").created_at >= 1.5

        # get_event inside a workflow waits (without a worker) until another workflow sets it.
        getter = wf.event_getter.start("setter", "k", 60, workflow_id="getter")
        wait_status(wf, "getter", WorkflowStatus.WAITING)
        assert wf.durable.get_event("setter", "k", timeout=0.2, default="none yet") == "none yet"
        setter = wf.event_setter.start("k", {"value": 42}, 1.0, workflow_id="setter")
        assert getter.result(timeout=60) == {"value": 42}
        assert record(wf, "getter").executions == 2
        # and from outside
        assert wf.durable.get_event("setter", "k", timeout=30) == {"value": 42}
        assert setter.result(timeout=60) == "set"
        late_getter = wf.event_getter.start("setter", "k", 60, workflow_id="late-getter")
        assert late_getter.result(timeout=60) == {"value": 42}
        missing = wf.event_getter.start("setter", "other-key", 1, workflow_id="missing-getter")
        assert missing.result(timeout=60) == "<timeout>"


# -- 12. the SQLite default store -----------------------------------------------------------------
def test_send_recv_on_sqlite_store(tmp_path):
    env = make_env(BROKERS["redis"](), f"sqlite:///{tmp_path}/db.sqlite3", tmp_path)
    with configured_app(env) as wf, running_worker(env, concurrency=2):
        rcv = wf.receiver.start(["s", "s", None], 3, 60, workflow_id="sqlite-rcv")
        wait_status(wf, "sqlite-rcv", WorkflowStatus.WAITING)
        snd = wf.sender.start("sqlite-rcv", ["x", "y"], "s", 0.0, workflow_id="sqlite-snd")
        assert snd.result(timeout=60) == 2
        wf.durable.send("sqlite-rcv", "from-outside")
        assert rcv.result(timeout=60) == ["x", "y", "from-outside"]
        assert [r["payload"] for r in messages(wf, "sqlite-rcv")] == ['"x"', '"y"', '"from-outside"']
