"""The Celery app the end-to-end tests run in real ``celery worker`` processes.

Everything comes from the environment so a test can point a worker at its own database,
broker and queue: CD_BROKER, CD_DATABASE_URL, CD_QUEUE, CD_PREFIX, CD_COUNTER_DIR,
CD_HORIZON, CD_SWEEP_INTERVAL, CD_GRACE, CD_DURABLE_QUEUE, CD_BEAT_EVERY, CD_LOG_INFO, CD_APPNAME_PER_PROCESS.

Side effects are counted in CD_COUNTER_DIR: every step body appends one line to a file
named after it, so a test can prove which step bodies ran and how often, across processes.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

from celery_durable import Durable

app = Celery("wfapp", broker=os.environ.get("CD_BROKER", "redis://127.0.0.1:6379/9"))
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=int(os.environ.get("CD_PREFETCH", "1")),
    task_default_queue=os.environ.get("CD_QUEUE", "celery"),
)
if os.environ.get("CD_VISIBILITY_TIMEOUT"):
    app.conf.broker_transport_options = {"visibility_timeout": float(os.environ["CD_VISIBILITY_TIMEOUT"])}

_sweep = os.environ.get("CD_SWEEP_INTERVAL", "2")
durable = Durable(
    app,
    os.environ.get("CD_DATABASE_URL"),
    table_prefix=os.environ.get("CD_PREFIX", "durable_"),
    horizon=float(os.environ.get("CD_HORIZON", "300")),
    sweep_interval=None if _sweep == "none" else float(_sweep),
    recovery_grace=float(os.environ.get("CD_GRACE", "120")),
    busy_backoff=float(os.environ.get("CD_BUSY_BACKOFF", "0.2")),
    queue=os.environ.get("CD_DURABLE_QUEUE") or None,  # tests/e2e/test_worker_ops.py: workflows on their own queue
)
if os.environ.get("CD_BEAT_EVERY"):  # tests/e2e/test_worker_ops.py: recovery from a real celery beat
    app.conf.beat_schedule = durable.beat_schedule(every=float(os.environ["CD_BEAT_EVERY"]))
if os.environ.get("CD_LOG_INFO"):  # show celery_durable's INFO lines in the worker's log
    import logging

    logging.getLogger("celery_durable").setLevel(logging.INFO)
if os.environ.get("CD_APPNAME_PER_PROCESS"):  # tell each process's PostgreSQL connections apart (libpq reads PGAPPNAME)
    from celery.signals import worker_init, worker_process_init

    @worker_init.connect(weak=False)
    def _name_main_connections(**_: Any) -> None:
        os.environ["PGAPPNAME"] = f"{os.environ['CD_APPNAME_PER_PROCESS']}-main-{os.getpid()}"

    @worker_process_init.connect(weak=False)
    def _name_child_connections(**_: Any) -> None:
        os.environ["PGAPPNAME"] = f"{os.environ['CD_APPNAME_PER_PROCESS']}-child-{os.getpid()}"
COUNTER_DIR = os.environ.get("CD_COUNTER_DIR", "/tmp")
if os.environ.get("CD_OTEL_SPANS"):  # tests/e2e/test_otel.py: the worker writes its spans to this file
    from tests.apps.otel_export import install

    install(durable, os.environ["CD_OTEL_SPANS"], celery_instrumentor=os.environ.get("CD_OTEL_CELERY") == "1")


def mark(name: str, value: Any = "") -> None:
    """Append one line to the counter file *name* (atomic for short lines with O_APPEND)."""
    fd = os.open(os.path.join(COUNTER_DIR, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {value}\n".encode())
    finally:
        os.close(fd)


@durable.step()
def add(a: int, b: int) -> int:
    mark("add", f"{a}+{b}")
    return a + b


@durable.step()
def slow_step(name: str, seconds: float) -> str:
    """Marks its start and its end, so a test can kill the worker in between."""
    mark(f"{name}.start")
    time.sleep(seconds)
    mark(f"{name}.end")
    return name


@durable.step()
def fail_step(message: str) -> None:
    mark("fail_step")
    raise ValueError(message)


@durable.workflow()
def three_adds(x: int) -> int:
    return add(add(add(x, 1), 1), 1)


@durable.workflow()
def crashy(seconds: float) -> list[str]:
    """first (fast) -> second (slow: the test kills the worker here) -> third (fast)."""
    return [slow_step("first", 0.0), slow_step("second", seconds), slow_step("third", 0.0)]


@durable.workflow()
def failing(message: str) -> None:
    add(1, 1)
    fail_step(message)


@durable.workflow()
def echo_args(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


@durable.workflow()
def receiver(topics: list[str | None], count: int, timeout: float) -> list[Any]:
    """recv *count* messages, cycling over *topics*; a timeout records the string '<timeout>'."""
    got = []
    for i in range(count):
        got.append(durable.recv(topics[i % len(topics)], timeout=timeout, default="<timeout>"))
        mark("receiver.got", repr(got[-1]))
    return got


@durable.workflow()
def receive_any(topics: list[str], timeout: float) -> Any:
    return durable.recv_any(topics, timeout=timeout, default="<timeout>")


@durable.workflow()
def sender(destination: str, messages: list[Any], topic: str | None, pause: float) -> int:
    """send each message, then a slow step (a test can kill the worker in it), then finish."""
    for message in messages:
        durable.send(destination, message, topic=topic)
    slow_step("after_send", pause)
    return len(messages)


@durable.workflow()
def sleeper(seconds: float) -> str:
    durable.sleep(seconds)
    return add(0, 1) and "woke"


@durable.workflow()
def event_setter(key: str, value: Any, then_wait: float) -> str:
    durable.set_event(key, value)
    durable.sleep(then_wait)
    return "set"


@durable.workflow()
def event_getter(workflow_id: str, key: str, timeout: float) -> Any:
    return durable.get_event(workflow_id, key, timeout=timeout, default="<timeout>")


@durable.workflow()
def nondeterministic(flag_file: str) -> Any:
    """Calls `add` the first time and `slow_step` when *flag_file* exists: a replay then breaks."""
    if os.path.exists(flag_file):
        slow_step("changed", 0.0)
    else:
        add(2, 2)
    return durable.recv("go", timeout=60)


# --- Section: tests/e2e/test_workflows.py and tests/e2e/test_faults.py --------------------------


@durable.workflow()
def steps_then_recv(x: int, timeout: float) -> dict[str, Any]:
    """Two steps, then a recv on "go": the body runs again when a message wakes it.

    Marks "steps_then_recv.body" on every run of the body (not a step: it is not checkpointed).
    """
    mark("steps_then_recv.body")
    a = add(x, 10)
    b = add(a, 100)
    message = durable.recv("go", timeout=timeout, default="<timeout>")
    return {"sum": b, "message": message}


# --- End of section: tests/e2e/test_workflows.py and tests/e2e/test_faults.py -------------------


# ---- messaging e2e tests (tests/e2e/test_messaging.py) ---------------------------------------
@durable.step()
def hold_until(name: str, flag_file: str, limit: float) -> str:
    """Marks its start, then waits (up to *limit* s) for *flag_file* to exist, then marks its end."""
    mark(f"{name}.start")
    deadline = time.monotonic() + limit
    while not os.path.exists(flag_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    mark(f"{name}.end")
    return name


@durable.workflow()
def sender_held(destination: str, messages: list[Any], topic: str | None, flag_file: str) -> int:
    """Like `sender`, but its step after the sends holds until *flag_file* exists (a test kills the worker there)."""
    for message in messages:
        durable.send(destination, message, topic=topic)
    hold_until("held", flag_file, 120.0)
    return len(messages)


@durable.workflow()
def recv_plain(topic: str | None, timeout: float) -> dict[str, Any]:
    """recv without a default: a timeout and a message whose value is None both return None."""
    return {"value": durable.recv(topic, timeout=timeout)}


# --- End of section: tests/e2e/test_messaging.py ------------------------------------------------


# --- Section: tests/e2e/test_operations.py (resume, fork, the CLI and the client) -------------------
@durable.step()
def counted(name: str, value: Any) -> Any:
    """Returns *value*; marks "<name>.counted" on every run."""
    mark(f"{name}.counted", value)
    return value


@durable.step()
def fixable(name: str, flag_file: str) -> str:
    """Fails until *flag_file* exists (the fix is deployed); marks "<name>.fixable" on every run."""
    mark(f"{name}.fixable")
    if not os.path.exists(flag_file):
        raise ValueError(f"{name}: not fixed yet")
    return "fixed"


@durable.workflow()
def fix_me(name: str, flag_file: str) -> list[Any]:
    """counted (step 0) -> fixable (step 1: fails until the flag file exists) -> counted (step 2)."""
    first = counted(name, "first")
    middle = fixable(name, flag_file)
    return [first, middle, counted(name, "last")]


@durable.workflow()
def approvals(name: str, mailbox: str) -> dict[str, Any]:
    """Step ids: 0 counted, 1 recv "approval", 2 send to *mailbox*, 3 set_event "stage", 4 counted, 5 recv "final"."""
    first = counted(name, "first")
    approval = durable.recv("approval", timeout=300)
    durable.send(mailbox, {"from": name, "approval": approval}, topic="note", create_mailbox=True)
    durable.set_event("stage", "approved")
    second = counted(name, f"after {approval}")
    final = durable.recv("final", timeout=300)
    return {"first": first, "approval": approval, "second": second, "final": final, "id": durable.workflow_id}


# --- End of section: tests/e2e/test_operations.py ---------------------------------------------------


# --- Section: workflow features (tests/e2e/test_features.py): durable retries, timeouts, deploys ----------
def _count(name: str) -> int:
    path = os.path.join(COUNTER_DIR, name)
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return len(f.read().splitlines())


@durable.step(retries=3, retry_interval=2.0, backoff=3.0, max_interval=5.0, retry_on=(ConnectionError,))
def attempt_until_fourth(name: str, hold_on: int, flag_file: str) -> int:
    """Marks "<name>.attempt" at each attempt; attempts 1-3 fail, the 4th returns its number.

    Attempt *hold_on* first holds until *flag_file* exists (up to 60 s): a test kills the worker there.
    The pauses after attempts 1, 2, 3 are 2, 5 and 5 s: each leaves the worker.
    """
    mark(f"{name}.attempt")
    attempt = _count(f"{name}.attempt")
    if attempt == hold_on:
        deadline = time.monotonic() + 60
        while not os.path.exists(flag_file) and time.monotonic() < deadline:
            time.sleep(0.05)
    if attempt < 4:
        raise ConnectionError(f"attempt {attempt} failed")
    return attempt


@durable.step(retries=1, retry_interval=3600.0)
def fail_then_wait_an_hour(name: str) -> str:
    mark(f"{name}.attempt")
    if _count(f"{name}.attempt") == 1:
        raise ConnectionError("first attempt fails; the next one is an hour away")
    return "second attempt"


@durable.workflow()
def durable_retries(name: str, hold_on: int, flag_file: str) -> int:
    return attempt_until_fourth(name, hold_on, flag_file)


@durable.workflow()
def long_backoff(name: str) -> str:
    return fail_then_wait_an_hour(name)


@durable.workflow()
def two_slow_steps(first: float, second: float) -> list[str]:
    return [slow_step("timed.first", first), slow_step("timed.second", second)]


@durable.workflow()
def held_then_next(flag_file: str) -> list[str]:
    """A step that runs until *flag_file* exists (a test lets its deadline pass meanwhile), then another."""
    return [hold_until("timed.first", flag_file, 120.0), slow_step("timed.second", 0.0)]


@durable.workflow(timeout=2.0)
def waits_past_its_default_timeout() -> Any:
    return durable.recv("never", timeout=None)


# Deploying new code: a worker started with CD_CODE_VERSION=old runs these until they wait in recv("go");
# a worker started with CD_CODE_VERSION=new finishes them. Each case of docs/changing-workflow-code.md.
CODE_VERSION = os.environ.get("CD_CODE_VERSION", "old")


@durable.step()
def label(text: str) -> str:
    """A step whose behaviour depends on the code version: a changed step body."""
    mark("label", text)
    return f"{CODE_VERSION}:{text}"


NEW = CODE_VERSION == "new"


@durable.workflow(name="deploy.append")
def deploy_append(x: int) -> list[Any]:
    a = add(x, 1)
    message = durable.recv("go", timeout=300)
    return [a, message, add(a, 100)] if NEW else [a, message]  # new: a step added at the end


@durable.workflow(name="deploy.insert")
def deploy_insert(x: int) -> int:
    a = add(x, 1)
    if NEW:
        label("inserted")  # a step inserted between two that ran
    b = add(a, 10)
    durable.recv("go", timeout=300)
    return b


@durable.workflow(name="deploy.insert_patched")
def deploy_insert_patched(x: int) -> dict[str, Any]:
    a = add(x, 1)
    took = None
    if NEW:
        took = durable.patched("label-after-first-add")
        if took:
            label("inserted")
    b = add(a, 10)
    return {"sum": b, "patched": took, "message": durable.recv("go", timeout=300)}


@durable.workflow(name="deploy.topic")
def deploy_topic() -> Any:
    return durable.recv("go2" if NEW else "go", timeout=300)  # new: the topic changed


@durable.workflow(name="deploy.topic_patched")
def deploy_topic_patched() -> Any:
    if NEW and durable.patched("topic-go2"):
        return durable.recv_any(["go", "go2"], timeout=300)
    return durable.recv("go", timeout=300)


@durable.workflow(name="deploy.deprecate")
def deploy_deprecate(x: int) -> int:
    a = add(x, 1)
    if NEW:
        durable.deprecate_patch("add-a-thousand")  # old: patched("add-a-thousand") guarded the add
    if NEW or durable.patched("add-a-thousand"):
        a = add(a, 1000)
    durable.recv("go", timeout=300)
    return a


if NEW:

    @durable.step()
    def price_v2(item: str) -> str:  # renamed from `price`: its step name changed
        return f"price:{item}"

    @durable.step(name="tests.apps.wfapp.price")
    def price_pinned(item: str) -> str:  # renamed, but keeping the old step name
        return f"price:{item}"

    rename, pinned = price_v2, price_pinned
    # deploy.removed is no longer defined.

else:

    @durable.step()
    def price(item: str) -> str:
        return f"price:{item}"

    rename = pinned = price

    @durable.workflow(name="deploy.removed")
    def deploy_removed() -> Any:
        return durable.recv("go", timeout=300)


@durable.workflow(name="deploy.rename")
def deploy_rename(item: str) -> str:
    p = rename(item)
    durable.recv("go", timeout=300)
    return p


@durable.workflow(name="deploy.rename_pinned")
def deploy_rename_pinned(item: str) -> str:
    p = pinned(item)
    durable.recv("go", timeout=300)
    return p


@durable.workflow()
def deploy_body() -> list[str]:
    before = label("before")
    durable.recv("go", timeout=300)
    return [before, label("after")]


# --- End of section: workflow features (tests/e2e/test_features.py) ---------------------------------------


# --- Section: tests/e2e/test_fault_run.py ---------------------------------------------------------
@durable.step()
def ring_work(i: int, k: int) -> list[int]:
    """Marks "<pid> <i>:<k> <time>" in ring.work, so the fault run can tell which re-runs its faults explain."""
    mark("ring.work", f"{i}:{k} {time.time():.3f}")
    time.sleep(float(os.environ.get("CD_RING_STEP_SECONDS", "0.02")))
    return [i, k]


@durable.workflow()
def ring(i: int, n: int, rounds: int, prefix: str) -> list[Any]:
    """Member *i* of a ring of *n*: each round sends [i, k] to the next member, runs a step, and receives
    from the previous member, so every message is consumed in the order it was sent."""
    got = []
    successor = f"{prefix}{(i + 1) % n}"
    for k in range(rounds):
        durable.send(successor, [i, k], topic="ring", create_mailbox=True)
        ring_work(i, k)
        got.append(durable.recv("ring", timeout=None))
    return got


# --- End of section: tests/e2e/test_fault_run.py --------------------------------------------------


# -- issue 9: child workflows (append-only section) -------------------------------------------------
from celery_durable import WorkflowFailed  # noqa: E402


@durable.step()
def child_square(x: int) -> int:
    """A small step with a visible side effect: one counter line per run."""
    mark("child_square", x)
    time.sleep(float(os.environ.get("CD_CHILD_SLEEP", "0")))
    return x * x


@durable.workflow()
def square_wf(x: int) -> int:
    return child_square(x)


@durable.workflow()
def failing_child(message: str) -> None:
    raise ValueError(message)


@durable.workflow()
def waiting_child() -> Any:
    return durable.recv("never", timeout=None)


@durable.workflow()
def child_tells_parent(text: str) -> str:
    durable.send(durable.parent_workflow_id, text, topic="up")
    return "sent"


@durable.workflow()
def parent_of_everything(x: int) -> dict[str, Any]:
    """One parent exercising a child's result, a caught child error, child->parent messaging and map."""
    one = square_wf.start(x)
    value = one.result()
    try:
        failing_child.start("bad input").result()
        caught: list[str] = []
    except WorkflowFailed as exc:
        caught = [exc.error_type, exc.error_message]
    teller = child_tells_parent.start("hello parent")
    heard = durable.recv("up", timeout=60)
    mapped = durable.map(child_square, [1, 2, 3])
    return {"child": one.workflow_id, "value": value, "caught": caught, "heard": [heard, teller.result()], "mapped": mapped}


@durable.workflow()
def parent_of_waiters(n: int, return_exceptions: bool = False) -> list[Any]:
    handles = [waiting_child.start() for _ in range(n)]
    got = durable.gather(handles, return_exceptions=return_exceptions)
    return [type(g).__name__ if isinstance(g, BaseException) else g for g in got]


@durable.workflow()
def fan_out(n: int) -> int:
    """Sum of squares through one child workflow per item: the parent is woken once, at the end."""
    return sum(durable.map(square_wf, range(n)))
