"""Everything that knows Celery: the ``Durable`` plugin, the workflow task class, wake-ups, signals.

A workflow is a Celery task whose message carries no arguments, only a *ticket* in a
reserved keyword argument: the inputs live in the store, so recovery can re-enqueue a
workflow from the store alone and a producer needs nothing but the task's name.

Workflow tasks are ``acks_late`` with ``reject_on_worker_lost``: a worker killed mid-step
puts the message back, and another worker replays the workflow. Waiting is leaving: a
``recv`` with nothing to read records the wait and the task ends with a Celery retry whose
countdown is the deadline (when within the horizon), so no worker slot is held.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

from celery import Celery, Task
from celery.exceptions import Ignore, Reject, Retry
from celery.result import AsyncResult
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from . import core
from .config import DurableConfig
from .errors import ConfigurationError, WorkflowConflict, WorkflowNotFound
from .handle import WorkflowHandle, decode_result
from .serialization import get_serializer
from .store import Dispatch, StepRecord, Store, WorkflowRecord, WorkflowStatus, open_store

log = logging.getLogger("celery_durable")
F = TypeVar("F", bound=Callable[..., Any])

#: The reserved keyword argument that carries a workflow message's ticket.
TICKET_KW = "__durable_ticket__"
#: The reserved keyword argument that counts how often a delivery found the workflow busy.
BUSY_KW = "__durable_busy__"
DEFAULT_URL = "sqlite:///celery_durable.sqlite3"
ENV_URL = "CELERY_DURABLE_DATABASE_URL"
# Celery's control-flow signals: they pass through workflows and steps unrecorded. A soft time
# limit is not one of them: it is recorded as the failure of the step it cut off.
_CONTROL_FLOW = (Retry, Ignore, Reject)


class WorkflowTask(Task):
    """Base class of workflow tasks. ``delay``/``apply_async``/``start`` start a durable workflow."""

    abstract = True
    durable: Durable
    typing = False  # the message carries only the ticket; inputs come from the store

    def start(self, *args: Any, workflow_id: str | None = None, **kwargs: Any) -> WorkflowHandle:
        """Start the workflow (or find it: the id is an idempotency key) and return its handle."""
        result = self.apply_async(args, kwargs, task_id=workflow_id)
        return WorkflowHandle(self.durable, result.id)  # it exists: apply_async just stored or found it

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> AsyncResult:
        kwargs = dict(kwargs or {})
        if TICKET_KW in kwargs:  # a message of ours (wake-up, timer, retry): publish as is
            return super().apply_async((), kwargs, task_id=task_id, **options)
        return self.durable._start(self, tuple(args or ()), kwargs, task_id, options)


class Durable:
    """Durable workflows for a Celery app.

    ``Durable(app)`` stores workflows in an SQLite file (``celery_durable.sqlite3`` in the
    working directory) unless ``database_url`` or the ``CELERY_DURABLE_DATABASE_URL``
    environment variable names another database. Keyword options are the fields of
    :class:`~celery_durable.config.DurableConfig`.
    """

    def __init__(
        self,
        app: Celery,
        database_url: str | None = None,
        *,
        config: DurableConfig | None = None,
        store: Store | None = None,
        **options: Any,
    ) -> None:
        self.app = app
        self.config = DurableConfig.from_options(config, options)
        self.database_url = database_url or os.environ.get(ENV_URL) or DEFAULT_URL
        self.serializer = get_serializer(self.config.serializer)
        self._store = store
        self._store_lock = threading.Lock()
        self._engine: core.Engine | None = None
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()
        self._task_base = type("WorkflowTask", (WorkflowTask,), {"durable": self, "abstract": True})
        self.recover_task = app.task(name=f"celery_durable.{self.config.table_prefix}recover", shared=False)(
            self.recover
        )
        worker_process_init.connect(self._after_fork, weak=False)
        worker_ready.connect(self._on_worker_ready, weak=False)
        worker_shutdown.connect(self._on_worker_shutdown, weak=False)

    # -- store and engine (opened lazily: importing a module with a Durable touches no database) --
    @property
    def store(self) -> Store:
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    store = open_store(self.database_url, self.config.table_prefix, self.config.engine_options)
                    if self.config.auto_migrate:
                        store.migrate()
                    self._store = store
        return self._store

    @property
    def engine(self) -> core.Engine:
        if self._engine is None:
            self._engine = core.Engine(
                self.store,
                self.serializer,
                self.config,
                self._publish,
                passthrough=_CONTROL_FLOW,
            )
        return self._engine

    def migrate(self) -> int:
        """Create or upgrade the schema; return its version."""
        return self.store.migrate()

    # -- decorators ---------------------------------------------------------------------------------
    @overload
    def workflow(self, fn: F) -> Any: ...
    @overload
    def workflow(self, fn: None = None, **task_options: Any) -> Callable[[F], Any]: ...
    def workflow(self, fn: F | None = None, **task_options: Any) -> Any:
        """Make a function a durable workflow: a Celery task whose steps are checkpointed.

        Celery task options (``name=``, ``queue=``, ``priority=``, ...) pass through.
        """
        if fn is None:
            return lambda f: self.workflow(f, **task_options)
        durable = self

        @functools.wraps(fn)
        def run(task: Task, *args: Any, **kwargs: Any) -> Any:
            return durable._run(task, fn, args, kwargs)

        options: dict[str, Any] = {
            "bind": True,
            "base": self._task_base,
            "acks_late": True,  # a worker lost mid-execution leaves the message to be redelivered
            "reject_on_worker_lost": True,
            "max_retries": None,  # waits leave through retries: never run out of them
            "shared": False,
        }
        if self.config.queue is not None:
            options["queue"] = self.config.queue
        options.update(task_options)
        return self.app.task(**options)(run)

    @overload
    def step(self, fn: F) -> F: ...
    @overload
    def step(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        retries: int = 0,
        retry_interval: float = 1.0,
        backoff: float = 2.0,
    ) -> Callable[[F], F]: ...
    def step(
        self,
        fn: F | None = None,
        *,
        name: str | None = None,
        retries: int = 0,
        retry_interval: float = 1.0,
        backoff: float = 2.0,
    ) -> Any:
        """Make a function a checkpointed step. Outside a workflow it runs as a plain function.

        A step is at-least-once: one cut off by a crash runs again; one that finished never does.
        ``retries`` reruns a raising step in place, ``retry_interval * backoff**n`` seconds apart.
        """
        if fn is None:
            return lambda f: self.step(f, name=name, retries=retries, retry_interval=retry_interval, backoff=backoff)
        if not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(f"retries must be a whole number >= 0, got {retries!r}")
        step_name = core.check_id(name or f"{fn.__module__}.{fn.__qualname__}", "step name")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = core.current_context()
            if ctx is None or ctx.in_step:
                return fn(*args, **kwargs)
            return ctx.run_step(step_name, fn, args, kwargs, retries + 1, retry_interval, backoff)

        wrapper.step_name = step_name  # type: ignore[attr-defined]
        return wrapper

    # -- starting and running -------------------------------------------------------------------------
    def _start(
        self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], task_id: str | None, options: dict[str, Any]
    ) -> AsyncResult:
        workflow_id = core.check_id(task_id) if task_id is not None else str(uuid.uuid4())
        try:
            inputs = self.serializer.dumps({"args": list(args), "kwargs": kwargs})
        except Exception as exc:
            raise type(exc)(f"cannot start workflow {task.name!r}: its arguments are not serializable: {exc}") from None
        queue = options.get("queue") or getattr(task, "queue", None) or self.config.queue
        record, created = self.store.create_workflow(workflow_id, task.name, inputs, queue, time.time())
        if not created:
            if record.name != task.name:
                raise WorkflowConflict(
                    f"workflow id {workflow_id!r} is already used by workflow {record.name!r}, not {task.name!r}"
                )
            return AsyncResult(workflow_id, app=self.app)
        options.setdefault("argsrepr", repr(args))
        options.setdefault("kwargsrepr", repr(kwargs))
        if queue is not None:
            options["queue"] = queue
        # Created but not published (broker down): the row is PENDING and the sweep publishes it.
        return Task.apply_async(task, (), {TICKET_KW: record.ticket}, task_id=workflow_id, **options)

    def _run(self, task: Task, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run one workflow task message.

        Outcomes other than a verdict end the task by *returning* (Celery sees a success with
        ``None``; the workflow's state is in the store): Celery keeps every ``Ignore``/``Retry``
        exception's traceback and frames alive as cyclic garbage, which cost a worker child about
        100 MB for a few hundred waits. Retries use ``task.retry(throw=False)``: the same Celery
        retry message with a countdown, without the exception.
        """
        ticket = kwargs.pop(TICKET_KW, None)
        busy = kwargs.pop(BUSY_KW, 0)
        workflow_id = task.request.id
        if ticket is None:
            # A message sent without our apply_async (app.send_task by name, a canvas): start from it.
            inputs = self.serializer.dumps({"args": list(args), "kwargs": kwargs})
            record, created = self.store.create_workflow(workflow_id, task.name, inputs, None, time.time())
            if not created:
                return None
            ticket = record.ticket
        outcome = self.engine.execute(workflow_id, ticket, task.name, fn)
        if isinstance(outcome, core.Finished):
            return outcome.value
        if isinstance(outcome, core.Failed):
            raise outcome.error
        if isinstance(outcome, core.Waiting):
            if outcome.dispatch is not None:
                # The lock is already released, so a timer that fires at once finds the workflow free.
                task.retry(
                    args=(),
                    kwargs={TICKET_KW: outcome.dispatch.ticket},
                    countdown=outcome.dispatch.countdown,
                    throw=False,
                )
            # else: a far deadline; the sweep arms the timer when it comes within the horizon.
            return None
        if isinstance(outcome, core.Interrupted) and isinstance(outcome.error, _CONTROL_FLOW):
            raise outcome.error
        if isinstance(outcome, (core.Busy, core.Interrupted)):
            # Held by another live execution (most often: the one that just recorded a wait and is
            # releasing its lock), or the store is unreachable: try again soon, then less often.
            if isinstance(outcome, core.Interrupted):
                log.warning("workflow %s interrupted (%r); retrying", workflow_id, outcome.error)
            countdown = min(self.config.busy_backoff * 2**busy, self.config.horizon, 60.0)
            task.retry(args=(), kwargs={TICKET_KW: ticket, BUSY_KW: busy + 1}, countdown=countdown, throw=False)
        return None  # Stale or Cancelled: nothing to do, nothing to schedule

    def _publish(self, dispatch: Dispatch) -> None:
        options: dict[str, Any] = {"task_id": dispatch.workflow_id, "kwargs": {TICKET_KW: dispatch.ticket}}
        if dispatch.queue:
            options["queue"] = dispatch.queue
        if dispatch.countdown > 0:
            options["countdown"] = dispatch.countdown
        self.app.send_task(dispatch.name, **options)

    # -- handles and listings -----------------------------------------------------------------------
    def handle(self, workflow_id: str) -> WorkflowHandle:
        """Return a handle on an existing workflow; an unknown id raises ``WorkflowNotFound``."""
        core.check_id(workflow_id)
        if self.store.get_workflow(workflow_id) is None:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
        return WorkflowHandle(self, workflow_id)

    def list_workflows(
        self, status: WorkflowStatus | str | None = None, name: str | None = None, limit: int = 100
    ) -> list[WorkflowRecord]:
        """Return workflows, newest first, optionally only those with *status* and/or *name*."""
        if status is not None:
            try:
                status = WorkflowStatus(status)
            except ValueError:
                raise core.InvalidArgument(
                    f"unknown status {status!r}; use one of {', '.join(s.value for s in WorkflowStatus)}"
                ) from None
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise core.InvalidArgument(f"limit must be a positive whole number, got {limit!r}")
        return self.store.list_workflows(status, name, limit)

    def list_steps(self, workflow_id: str) -> list[StepRecord]:
        """Return a workflow's checkpoints: step id, name, output or error, start and end times."""
        return self.store.list_steps(core.check_id(workflow_id))

    def decode_result(self, record: WorkflowRecord) -> Any:
        return decode_result(record, self.serializer.loads)

    def cancel(self, workflow_id: str) -> WorkflowStatus:
        """Cancel a workflow that has not finished; return its status afterwards.

        A waiting or queued workflow ends at once (its queued messages go stale); a running one
        stops at its next durable operation. Unknown ids raise ``WorkflowNotFound``.
        """
        record = self.store.cancel(core.check_id(workflow_id), time.time())
        if record is None:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
        return record.status

    # -- messaging ------------------------------------------------------------------------------------
    def send(
        self,
        workflow_id: str,
        message: Any,
        topic: str | None = None,
        *,
        idempotency_key: str | None = None,
        create_mailbox: bool = False,
    ) -> None:
        """Send *message* to a workflow's queue for *topic* and wake it if it waits on that topic.

        Anywhere: inside a workflow it is checkpointed (a replay never sends again); outside, a
        repeated *idempotency_key* for the same destination delivers once. The message is stored
        when this returns. ``create_mailbox=True`` accepts a workflow id that does not exist yet.
        """
        core.check_id(workflow_id)
        stored_topic = core.check_topic(topic)
        if idempotency_key is not None:
            core.check_id(idempotency_key, "idempotency_key")
        engine = self.engine
        payload = engine.encode_payload(message, "message")
        ctx = core.current_context()
        if ctx is not None and not ctx.in_step:
            if idempotency_key is not None:
                raise core.InvalidArgument(
                    "idempotency_key is for sends outside workflows; inside one, send is already exactly-once"
                )
            ctx.send(workflow_id, stored_topic, payload, create_mailbox)
            return
        result = self.store.send(
            workflow_id,
            stored_topic,
            payload,
            time.time(),
            idempotency_key=idempotency_key,
            create_mailbox=create_mailbox,
        )
        engine.publish_all(result.wakeups)

    def recv(self, topic: str | None = None, timeout: float | None = 60, default: Any = None) -> Any:
        """Return the oldest unread message on *topic*, waiting up to *timeout* seconds; *default* on timeout.

        Only inside a workflow. The deadline is recorded when it first waits, so a replay waits only for what
        is left; ``timeout=0`` polls, ``None`` waits forever. While it waits the workflow holds no worker.
        """
        stored_topic = core.check_topic(topic)
        seconds = core.check_timeout(timeout)
        _, value = core.require_context("recv").recv((stored_topic,), seconds)
        return default if value is core.TIMED_OUT else value

    def recv_any(self, topics: Sequence[str | None], timeout: float | None = 60, default: Any = None) -> Any:
        """Like :meth:`recv` on several topics: return ``(topic, message)`` for the oldest message of any, or *default*."""
        if isinstance(topics, str) or not topics:
            raise core.InvalidArgument(f"topics must be a non-empty list of topics, got {topics!r}")
        stored = tuple(dict.fromkeys(core.check_topic(t) for t in topics))
        seconds = core.check_timeout(timeout)
        topic, value = core.require_context("recv_any").recv(stored, seconds)
        return default if value is core.TIMED_OUT else (topic or None, value)

    def set_event(self, key: str, value: Any) -> None:
        """Publish *value* under *key* for this workflow (checkpointed; the last value wins). Only inside a workflow."""
        core.check_id(key, "event key")
        payload = self.engine.encode_payload(value, "event value")
        core.require_context("set_event").set_event(key, payload)

    def get_event(self, workflow_id: str, key: str, timeout: float | None = 60, default: Any = None) -> Any:
        """Return a workflow's event *key*, waiting up to *timeout* seconds for it to be set; *default* on timeout.

        Inside a workflow it is checkpointed and waits without holding a worker; outside, it polls.
        """
        core.check_id(workflow_id)
        core.check_id(key, "event key")
        seconds = core.check_timeout(timeout)
        ctx = core.current_context()
        if ctx is not None and not ctx.in_step:
            value = ctx.get_event(workflow_id, key, seconds)
            return default if value is core.TIMED_OUT else value
        deadline = None if seconds is None else time.monotonic() + seconds
        delay = 0.01
        while True:
            text = self.store.get_event(workflow_id, key)
            if text is not None:
                return self.serializer.loads(text)
            if deadline is not None and time.monotonic() >= deadline:
                return default
            pause = delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic()))
            time.sleep(pause)
            delay = min(delay * 2, 0.5)

    def sleep(self, seconds: float) -> None:
        """Sleep durably inside a workflow: the workflow leaves its worker and resumes after *seconds*."""
        value = core.check_timeout(seconds, "seconds")
        if value is None:
            raise core.InvalidArgument("sleep needs a number of seconds")
        core.require_context("sleep").sleep(value)

    @property
    def workflow_id(self) -> str | None:
        """The id of the workflow executing here, or ``None`` outside workflows."""
        ctx = core.current_context()
        return ctx.workflow_id if ctx is not None else None

    # -- recovery ----------------------------------------------------------------------------------------
    def recover(self) -> int:
        """Publish every workflow that should be moving but has no live message; return how many.

        Harmless on running workflows (their lock is held, so they are skipped) and on
        duplicates (every re-publish gets a new ticket; older messages become no-ops).
        """
        dispatches = self.store.sweep(time.time(), self.config.horizon, self.config.recovery_grace)
        self.engine.publish_all(dispatches)
        if dispatches:
            log.info("celery_durable recover: published %d workflow(s)", len(dispatches))
        return len(dispatches)

    def beat_schedule(self, every: float = 60.0) -> dict[str, dict[str, Any]]:
        """Entries for ``app.conf.beat_schedule``: ``app.conf.beat_schedule.update(durable.beat_schedule())``."""
        return {
            f"celery-durable-{self.config.table_prefix}recover": {"task": self.recover_task.name, "schedule": every}
        }

    # -- worker signals ----------------------------------------------------------------------------------
    def _after_fork(self, **_: Any) -> None:
        if self._store is not None:
            self._store.after_fork()

    def _on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app:
            return
        self._stop.clear()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="celery-durable-sweep", daemon=True)
        self._sweeper.start()

    def _on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        self._stop.set()

    def _sweep_loop(self) -> None:
        interval = self.config.sweep_interval
        while True:
            try:
                self.recover()
            except Exception:
                log.warning("celery_durable sweep failed; will try again", exc_info=True)
            if interval is None or self._stop.wait(interval):
                return
