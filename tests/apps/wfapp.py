"""The Celery app the end-to-end tests run in real ``celery worker`` processes.

Everything comes from the environment so a test can point a worker at its own database,
broker and queue: CD_BROKER, CD_DATABASE_URL, CD_QUEUE, CD_PREFIX, CD_COUNTER_DIR,
CD_HORIZON, CD_SWEEP_INTERVAL, CD_GRACE.

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
)
COUNTER_DIR = os.environ.get("CD_COUNTER_DIR", "/tmp")


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
