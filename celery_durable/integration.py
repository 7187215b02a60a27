"""Everything that knows Celery: the ``Durable`` plugin, the workflow task class, wake-ups, signals.

A workflow is a Celery task whose message carries no arguments, only a *ticket* in a
keyword argument: the inputs live in the store, so recovery can re-enqueue a workflow from
the store alone and a producer needs nothing but the task's name. Our own messages carry a
header (:data:`MESSAGE_HEADER`) that user arguments cannot reach; a message without it is a
start published by name (``app.send_task``), whatever its keyword arguments are called.

Workflow tasks are ``acks_late`` with ``reject_on_worker_lost``: a worker killed mid-step
puts the message back, and another worker replays the workflow. Waiting is leaving: a
``recv`` with nothing to read records the wait, publishes its timer (a Celery retry whose
countdown is the deadline, when within the horizon) and ends the task with ``Ignore``, so no
worker slot is held and Celery records no result for it (celery_results.py). The task class
and the messages themselves are in tasks.py.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, overload

from celery import Celery, Task
from celery.exceptions import Ignore
from celery.signals import task_postrun, task_revoked

from . import celery_results as results
from . import core, flow_concurrency, flow_rate, versioning, workflow_api
from . import validation as v
from .client import DEFAULT_URL, ENV_URL, Client
from .config import DurableConfig
from .errors import ConfigurationError, DurableError, InvalidArgument, SerializationError
from .retries import RetryPolicy
from .store import Dispatch, Store, WorkflowStatus
from .tasks import (
    _CONTROL_FLOW,
    BUSY_KW,
    MESSAGE_HEADER,
    TICKET_KW,
    WorkflowTask,
    _internal,
    _our_message,
    _QueuedTask,
    broker_publisher,
    publish_dispatch,
)
from .timers import DeferredTimers
from .worker import WorkerHooks
from .workflow_api import WorkflowAPI

log = logging.getLogger("celery_durable")
F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["DEFAULT_URL", "ENV_URL", "MESSAGE_HEADER", "Durable", "WorkflowTask", "broker_publisher"]


class Durable(results.CeleryResults, WorkflowAPI, Client):
    """Durable workflows for a Celery app.

    ``Durable(app)`` stores workflows in an SQLite file, ``celery_durable.sqlite3`` next to the
    module that creates the Durable (whatever the working directory; see
    :func:`~celery_durable.client.default_database_url`), unless ``database_url`` or the
    ``CELERY_DURABLE_DATABASE_URL`` environment variable names another database. Keyword options are the fields of
    :class:`~celery_durable.config.DurableConfig`. Everything a producer or an operator calls
    (send, handles, listings, resume, fork, prune...) comes from :class:`~celery_durable.client.Client`;
    what a workflow body calls (recv, set_event, sleep, patched, gather, map...) from
    :class:`~celery_durable.workflow_api.WorkflowAPI`.

    It registers itself on *app*: :meth:`Durable.of` finds it there (``celery -A proj durable``
    does so).
    """

    passthrough = _CONTROL_FLOW

    def __init__(
        self,
        app: Celery,
        database_url: str | None = None,
        *,
        config: DurableConfig | None = None,
        store: Store | None = None,
        version: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(database_url, DurableConfig.from_options(config, options), store)
        self.app = app
        # The code version each workflow records; see `version`.
        self._explicit_version = version
        self._version: str | None = None
        self._functions: list[tuple[str, Callable[..., Any]]] = []
        self._task_base = type("WorkflowTask", (WorkflowTask,), {"durable": self, "abstract": True})
        self.recover_task = self._recover_task()
        self.tick_task = self._tick_task()
        # Children (children.py): durable.map(step, items) runs each item as a child of this workflow.
        self._steps: dict[str, Callable[..., Any]] = {}
        self._step_workflow = self.workflow(name=f"celery_durable.{self.config.table_prefix}map_step")(self._map_step)
        grace = self.config.timer_grace
        self._timers = DeferredTimers(grace, self._still_waiting, self._publish) if grace > 0 else None
        self._eager = results.EagerRunner(self._apply_eagerly)  # task_always_eager (see EagerRunner)
        self._worker = WorkerHooks(self)  # pool sizing, queue check, sweep (worker.py)
        self._worker.connect()
        _REGISTRY.setdefault(app, weakref.WeakSet()).add(self)
        _install_revoke_hook()

    @classmethod
    def of(cls, app: Celery, table_prefix: str | None = None) -> Durable:
        """Return the Durable created for *app* (the one with *table_prefix* when there are several).

        Raises ``ConfigurationError`` when there is none, or several and no prefix tells them apart.
        """
        registered = list(_REGISTRY.get(app, ()))
        found = [d for d in registered if table_prefix is None or d.config.table_prefix == table_prefix]
        if not found:
            which = f" with table prefix {table_prefix!r}" if table_prefix else ""
            raise ConfigurationError(f"the Celery app {app.main!r} has no Durable{which}")
        if len(found) > 1:
            prefixes = ", ".join(sorted(d.config.table_prefix for d in found))
            raise ConfigurationError(
                f"the Celery app {app.main!r} has {len(found)} Durables (table prefixes {prefixes}); name one"
            )
        return found[0]

    @property
    def version(self) -> str:
        """The version of the workflow code, recorded by each workflow this process starts.

        ``Durable(app, version=...)`` if given, else ``$CELERY_DURABLE_VERSION``, else a hash of the
        source of every registered workflow and step function, computed at first use (after the
        decorators ran) and again after any later registration.
        """
        if self._version is None:
            self._version = versioning.resolve_version(self._explicit_version, list(self._functions))
        return self._version

    def _register(self, name: str, fn: Callable[..., Any]) -> None:
        self._functions.append((name, fn))
        self._version = None  # hashed again at next use

    # -- decorators ---------------------------------------------------------------------------------
    @overload
    def workflow(self, fn: F) -> Any: ...
    @overload
    def workflow(self, fn: None = None, **task_options: Any) -> Callable[[F], Any]: ...
    def workflow(self, fn: F | None = None, **task_options: Any) -> Any:
        """Make a function a durable workflow: a Celery task whose steps are checkpointed.

        ``timeout=`` (seconds) is the default deadline of each workflow, counted from its start
        (``start(..., timeout=)`` overrides it). ``queue=`` (default: the ``queue`` option) is where its
        messages go; it is stored with each workflow, so wake-ups and recovery publish there too.
        ``rate_limit="20/s"`` (``N/s``, ``N/m``, ``N/h``) admits at most N workflows of this name per
        period across every worker and host, spaced evenly (their first execution waits for its turn;
        a wait over a second leaves the worker); ``rate_key=`` (a parameter name or a callable of the
        arguments) makes it one limit per value (see flow_rate.py). It replaces Celery's per-worker
        ``rate_limit`` task option. Other Celery task options (``name=``, ``priority=``, ...) pass through.

        ``concurrency=N``: at most N workflows of this name in flight (admitted and not finished) across
        the cluster; ``concurrency_key=`` (a parameter's name, or a function ``(*args, **kwargs) -> str``)
        makes it N per value of that key. Over the limit, ``limit_strategy=`` decides: ``"queue"``
        (default: stored ENQUEUED, holding no worker, admitted in order when a slot frees),
        ``"cancel_newest"`` (``start`` raises ``ConcurrencyLimitExceeded``) or ``"cancel_in_progress"``
        (the oldest in flight for that key is cancelled). See flow_concurrency.py.
        """
        if fn is None:
            return lambda f: self.workflow(f, **task_options)
        timeout = core.check_timeout(task_options.pop("timeout", None))
        limits = [task_options.pop(o, None) for o in ("concurrency", "concurrency_key", "limit_strategy")]
        durable = self
        # Not Celery's per-worker rate_limit: the cluster-wide one of flow_rate.py (declared below, by task name).
        rate_limit, rate_key = task_options.pop("rate_limit", None), task_options.pop("rate_key", None)
        # The body with its admission (concurrency) and its turn (rate limit) when it has them (set below).
        body: list[Callable[..., Any]] = [fn]

        @functools.wraps(fn)
        def run(task: Task, *args: Any, **kwargs: Any) -> Any:
            return durable._run(task, body[0], args, kwargs)

        options: dict[str, Any] = {
            "bind": True,
            "base": self._task_base,
            "acks_late": True,  # a worker lost mid-execution leaves the message to be redelivered
            "reject_on_worker_lost": True,
            "max_retries": None,  # waits leave through retries: never run out of them
            "shared": False,
        }
        options.update(task_options)
        # Not Celery's `queue` task attribute (deprecated in Celery 5.7): _start publishes there itself.
        options["durable_queue"] = v.check_queue(options.pop("queue", None) or self.config.queue)
        options["durable_timeout"] = timeout  # becomes an attribute of the task class, read by _start
        task = self.app.task(**options)(run)
        v.check_name(task.name, "workflow name")  # stored with every workflow: refuse it now, not at start
        rate = flow_rate.declare("workflow", task.name, fn, rate_limit, rate_key)
        if rate is not None:
            body[0] = workflow_api.rate_limited_body(fn, rate)
        task.durable_concurrency = flow_concurrency.concurrency(task.name, fn, *limits)
        if task.durable_concurrency is not None:  # admitted first, then it waits for its rate turn (if any)
            body[0] = flow_concurrency.admitting(body[0], task.durable_concurrency)
        self._register(task.name, fn)
        return task

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
        max_interval: float = 3600.0,
        retry_on: type[Exception] | tuple[type[Exception], ...] = (Exception,),
        rate_limit: str | float | None = None,
        rate_key: str | Callable[..., Any] | None = None,
    ) -> Callable[[F], F]: ...
    def step(
        self,
        fn: F | None = None,
        *,
        name: str | None = None,
        retries: int = 0,
        retry_interval: float = 1.0,
        backoff: float = 2.0,
        max_interval: float = 3600.0,
        retry_on: type[Exception] | tuple[type[Exception], ...] = (Exception,),
        rate_limit: str | float | None = None,
        rate_key: str | Callable[..., Any] | None = None,
    ) -> Any:
        """Make a function a checkpointed step. Outside a workflow it runs as a plain function.

        A step is at-least-once: one cut off by a crash runs again; one that finished never does.
        ``retries=N`` allows N more attempts when it raises one of ``retry_on``, the n-th pause
        ``min(retry_interval * backoff**(n-1), max_interval)`` seconds. Pauses over one second
        leave the worker like a ``recv`` wait, and the attempt count is stored, so a crash neither
        resets nor repeats it (see retries.py). The final error keeps its type and message and
        notes how many attempts were made.

        ``rate_limit="20/s"`` (``N/s``, ``N/m``, ``N/h``): across every worker and host, calls of this
        step start at most N per period, spaced evenly; a call waits for its turn before it runs (in
        place up to a second, else it leaves the worker like a retry pause). ``rate_key=`` (a
        parameter name or a callable of the arguments) makes it one limit per value. A replay of a
        finished call takes no turn (see flow_rate.py).
        """
        errors = retry_on if isinstance(retry_on, tuple) else (retry_on,)
        policy = RetryPolicy(retries, retry_interval, backoff, max_interval, errors)
        if fn is None:
            return lambda f: self._step(f, name, policy, rate_limit, rate_key)
        return self._step(fn, name, policy, rate_limit, rate_key)

    def _step(self, fn: F, name: str | None, policy: RetryPolicy, rate_limit: Any = None, rate_key: Any = None) -> F:
        step_name = v.check_id(name or f"{fn.__module__}.{fn.__qualname__}", "step name")
        rate = flow_rate.declare("step", step_name, fn, rate_limit, rate_key)
        wrapper = workflow_api.as_step(fn, step_name, policy, rate)
        self._steps[step_name] = wrapper  # hook (children): map runs steps by name
        self._register(step_name, fn)
        return wrapper

    # -- starting and running -------------------------------------------------------------------------
    def _start_defaults(self, name: str, queue: str | None, timeout: float | None) -> dict[str, Any]:
        task = self.app.tasks.get(name)
        if not isinstance(task, WorkflowTask):
            return super()._start_defaults(name, queue, timeout)
        return {
            "queue": queue or task.durable_queue or self.config.queue,
            "version": self.version,
            "timeout": timeout if timeout is not None else task.durable_timeout,
        }

    def _start(
        self,
        task: Task,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task_id: str | None,
        options: dict[str, Any],
        *,
        timeout: float | None = None,
        priority: int | None = None,
    ) -> results.WorkflowResult:
        limit: flow_concurrency.Concurrency | None = getattr(task, "durable_concurrency", None)
        flow = limit.flow(args, kwargs, priority) if limit is not None else None  # hook (concurrency)
        queue = v.check_queue(options.get("queue") or getattr(task, "durable_queue", None) or self.config.queue)
        options = dict(options)
        # The canvas fires when the workflow finishes, from the execution that finishes it: stored
        # with the workflow, never carried by its messages (celery_results.py).
        canvas = results.take_canvas(options)
        dedup_key, on_conflict = options.pop("dedup_key", None), options.pop("on_conflict", "return_existing")
        record, created = self.management.create(
            task.name,
            args,
            kwargs,
            workflow_id=task_id,
            queue=queue,
            timeout=timeout if timeout is not None else getattr(task, "durable_timeout", None),
            version=self.version,
            parent_id=None,
            task_options=canvas,
            dedup_key=dedup_key,
            on_conflict=on_conflict,
            flow=flow,
        )
        workflow_id = record.workflow_id
        result = results.WorkflowResult(workflow_id, self, app=self.app, backend=task.backend)
        if not created or record.status is WorkflowStatus.ENQUEUED:  # ENQUEUED: admission sends its message
            return result
        if self.app.conf.task_always_eager:
            self._eager.run(Dispatch(workflow_id, record.name, record.queue, record.ticket))
            return result
        options.setdefault("argsrepr", repr(args))
        options.setdefault("kwargsrepr", repr(kwargs))
        if queue is not None:
            options["queue"] = queue
        options["headers"] = {**(options.get("headers") or {}), MESSAGE_HEADER: 1}
        # Created but not published (broker down): the row is PENDING and the sweep publishes it.
        Task.apply_async(task, (), {TICKET_KW: record.ticket}, task_id=workflow_id, **options)
        return result

    def _run(self, task: Task, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run one workflow task message; what Celery records of it is what a Celery user expects.

        Only a verdict ends the Celery task as a verdict: the finish returns the workflow's value
        (SUCCESS, its canvas fired) or raises its error (FAILURE). Every other outcome ends it with
        ``Ignore``: no result is stored, no link fires and no success event is sent for a workflow
        that only waits (a wait's ``WAITING`` state is stored under the lock, see ``_report``).
        Retries use ``task.retry(throw=False)``: the same Celery retry message with a countdown.
        """
        request = task.request
        workflow_id = request.id
        if _our_message(request):
            ticket, busy = kwargs.get(TICKET_KW), kwargs.get(BUSY_KW, 0)
            if type(ticket) is not int or type(busy) is not int:
                log.error("dropping a %s message for %r with a malformed ticket %r", task.name, workflow_id, ticket)
                raise Ignore()
        else:
            # A message sent without our apply_async (app.send_task by name, a canvas): start from it.
            started = self._start_from_message(task, fn, args, kwargs)
            if started is None:
                raise Ignore()
            ticket, fn = started
            busy = 0
        results.strip_canvas(request)  # restored from the store by the execution that finishes
        token = results.RUNNING_TASK.set(task)
        try:
            outcome = self.engine.execute(workflow_id, ticket, task.name, fn)
        finally:
            results.RUNNING_TASK.reset(token)
        if isinstance(outcome, core.Finished):
            results.restore_canvas(request, outcome.workflow)
            return outcome.value
        if isinstance(outcome, core.Failed):
            results.restore_canvas(request, outcome.workflow)
            raise outcome.error
        if isinstance(outcome, core.Waiting):
            timer = outcome.dispatch
            if timer is not None and request.is_eager:
                self._eager.run(timer)
            elif timer is not None and self._timers is not None and timer.countdown > self._timers.grace:
                self._timers.defer(timer)  # published after the grace if it still waits (timers.py)
            elif timer is not None:
                # The lock is already released, so a timer that fires at once finds the workflow free.
                self._retry(task, {TICKET_KW: timer.ticket}, timer.countdown)
            # else: a far deadline; the sweep arms the timer when it comes within the horizon.
            if task.app.conf.worker_send_task_events and not request.is_eager:
                # Monitors (Flower) show a custom event type as a state: WAITING, not the task's last STARTED.
                task.send_event("task-waiting", **(outcome.wait or {}))
            raise Ignore()
        if isinstance(outcome, core.Interrupted) and isinstance(outcome.error, _CONTROL_FLOW):
            raise outcome.error
        if isinstance(outcome, (core.Busy, core.Interrupted)):
            # Held by another live execution (most often: the one that just recorded a wait and is
            # releasing its lock), or the store is unreachable: try again soon, then less often.
            if isinstance(outcome, core.Interrupted):
                log.warning("workflow %s interrupted (%r); retrying", workflow_id, outcome.error)
            if request.is_eager:
                self._eager.run(Dispatch(workflow_id, task.name, None, ticket, self._backoff(busy)))
            else:
                self._retry(task, {TICKET_KW: ticket, BUSY_KW: busy + 1}, self._backoff(busy))
        if isinstance(outcome, core.Refused):
            log.error("workflow %s: the database refused it for good (%r); dropping the message", workflow_id, outcome.error)
        elif isinstance(outcome, (core.Busy, core.Stale)) and task.track_started and results.stores_results(task):
            results.restate(task, self, workflow_id)  # Celery wrote STARTED for a message with nothing to run
        raise Ignore()  # Stale, Cancelled (reported by _report) or Refused: nothing to do, nothing to schedule

    def _backoff(self, busy: int) -> float:
        return min(self.config.busy_backoff * 2 ** min(busy, 64), self.config.horizon, 60.0)

    def _retry(self, task: Task, kwargs: dict[str, Any] | None, countdown: float) -> None:
        """Publish the next message of this workflow as a Celery retry (*kwargs* None: the same message again).

        Every retry of a workflow task goes through here: a bare ``task.retry()`` would reach
        ``WorkflowTask.apply_async`` without the internal flag and be taken for a user's start.
        """
        with _internal():
            if kwargs is None:
                task.retry(countdown=countdown, throw=False)
            else:
                task.retry(args=(), kwargs=kwargs, countdown=countdown, throw=False, headers={MESSAGE_HEADER: 1})

    def _start_from_message(
        self, task: Task, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[int, Callable[..., Any]] | None:
        """Store the workflow a message published by name starts; return its ticket and body, or None: nothing to run.

        The same rules as ``start`` apply. An id that cannot be stored is logged in one line and the
        message dropped; arguments that cannot be stored leave the workflow in ERROR saying why
        (returned as a body that raises that error); a store that is unreachable retries the message.
        """
        workflow_id = task.request.id
        try:
            v.check_id(workflow_id)
        except DurableError as exc:
            log.error("dropping a %s message published by name: %s", task.name, exc)
            return None
        create = functools.partial(
            self.management.create,
            task.name,
            workflow_id=workflow_id,
            queue=None,
            timeout=getattr(task, "durable_timeout", None),
            version=self.version,
            parent_id=None,
            task_options=results.canvas_of_request(task.request),
        )
        refused: SerializationError | None = None
        try:
            try:
                record, created = create(args, kwargs)
            except SerializationError as exc:  # arguments that cannot be stored: the row records why
                refused = exc
                record, created = create((), {})
        except Exception as exc:  # a bad id or name, a conflict, or the store: nothing to run
            if isinstance(exc, DurableError):
                log.error("dropping a %s message published by name for %r: %s", task.name, workflow_id, exc)
            elif self.store.is_transient(exc):
                log.warning("workflow %s: could not store its start (%r); retrying", workflow_id, exc)
                self._retry(task, None, self._backoff(task.request.retries or 0))
            else:
                log.error("workflow %s: the database refused its start for good (%r); dropping it", workflow_id, exc)
            return None
        if not created:
            return None
        if refused is None:
            return record.ticket, fn
        error = refused

        def refuse(*_: Any, **__: Any) -> Any:
            raise type(error)(f"cannot start workflow {task.name!r} published by name: {error}")

        return record.ticket, refuse

    def _publish(self, dispatch: Dispatch) -> None:
        if self.app.conf.task_always_eager:
            self._eager.run(dispatch)
        else:
            publish_dispatch(self.app, dispatch)

    def _apply_eagerly(self, dispatch: Dispatch) -> None:
        self.app.tasks[dispatch.name].apply(
            kwargs={TICKET_KW: dispatch.ticket}, task_id=dispatch.workflow_id, headers={MESSAGE_HEADER: 1}
        )

    def _outcome_reporter(self) -> Callable[[core.Outcome], None] | None:
        return self._report

    def _map_step(self, step_name: str, item: Any) -> Any:
        """The body of the child workflows ``map`` starts for a step: run that step once, as a step."""
        step = self._steps.get(step_name)
        if step is None:
            raise ConfigurationError(f"no step named {step_name!r} is registered in this worker")
        return step(item)

    # -- recovery (recover() itself: Client) ---------------------------------------------------------------
    def _recover_task(self) -> Task:
        """Register the task beat runs: a plain function (a bound method would fail Celery's argument
        check), on the workflows' queue so the workers that run workflows receive it."""
        durable = self

        def recover() -> int:
            """Publish every workflow that should be moving but has no live message; return how many."""
            return durable.recover()

        task: Task = self.app.task(
            name=f"celery_durable.{self.config.table_prefix}recover",
            shared=False,
            base=_QueuedTask,
            durable_queue=self.config.queue,
        )(recover)
        return task

    def _tick_task(self) -> Task:
        """Register the task beat runs to fire the schedules' due ticks (see flow_schedule.py)."""
        durable = self

        def fire_schedules() -> float:
            """Start every due tick of the stored schedules; return when the next one is due."""
            return durable.fire_schedules()

        task: Task = self.app.task(
            name=f"celery_durable.{self.config.table_prefix}fire_schedules",
            shared=False,
            base=_QueuedTask,
            durable_queue=self.config.queue,
            ignore_result=True,
        )(fire_schedules)
        return task

    def beat_schedule(self, every: float = 60.0, ticks_every: float | None = 1.0) -> dict[str, dict[str, Any]]:
        """Entries for ``app.conf.beat_schedule``: ``app.conf.beat_schedule.update(durable.beat_schedule())``.

        The recover task runs every *every* seconds, and the task that fires the schedules' due ticks
        every *ticks_every* seconds (``None``: not from beat), published to the workflows' queue
        (``queue``, else the app's routing), so workers started with ``-Q`` that queue receive them.
        Several beats may run: a tick still starts one workflow.
        """
        entries: dict[str, dict[str, Any]] = {}
        for task, seconds, what, key in (
            (self.recover_task, every, "every", "recover"),
            (self.tick_task, ticks_every, "ticks_every", "fire-schedules"),
        ):
            if seconds is None and task is self.tick_task:
                continue
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < float("inf"):
                raise InvalidArgument(f"{what} must be a positive number of seconds, got {seconds!r}")
            entry: dict[str, Any] = {"task": task.name, "schedule": float(seconds)}
            options: dict[str, Any] = {}
            queue = getattr(task, "durable_queue", None)
            if queue:
                options["queue"] = queue
            if task is self.tick_task:
                options["expires"] = max(float(seconds) * 5, 5.0)  # a tick message late by more is useless
            if options:
                entry["options"] = options
            entries[f"celery-durable-{self.config.table_prefix}{key}"] = entry
        return entries

    # -- worker processes (the signal handlers: worker.py) ------------------------------------------------
    def _engine_options(self) -> dict[str, Any]:
        return {**self._worker.pool_defaults(), **self.config.engine_options}  # the user's options win

    def _resize_pool(self, *, forked: bool) -> None:
        """Size the pool for this worker process: a store opened before (at import, in the parent) is
        dropped (*forked*: without closing the parent's connections) and reopens on next use."""
        store = self._store
        if store is None:
            return
        if forked:
            store.after_fork()
        if self._given_store:
            return  # a store passed in by the caller is theirs to size
        if not forked:
            store.close()
        self._store = self._engine = self._management = None

    def _still_waiting(self, dispatch: Dispatch) -> bool:
        record = self.store.get_workflow(dispatch.workflow_id)
        return record is not None and record.status == WorkflowStatus.WAITING and record.ticket == dispatch.ticket


def _install_revoke_hook() -> None:
    results.install_revoke_hook(lambda app: list(_REGISTRY.get(app, ())))


@task_revoked.connect(weak=False)
def _on_task_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    """A worker discarded a message of a revoked id (say it learnt of the revoke from its state file):
    cancel the workflow too."""
    task_id = getattr(request, "id", None)
    durable = getattr(sender, "durable", None)
    if isinstance(durable, Durable) and isinstance(task_id, str):
        durable._cancel_revoked([task_id])


@task_postrun.connect(weak=False)
def _drop_ignore_traceback(sender: Any = None, retval: Any = None, **_: Any) -> None:
    """Free what a workflow task that ended with ``Ignore`` (a wait) leaves behind, now.

    Celery's tracer keeps the exception in locals of its own frame, which the exception's traceback
    references: a reference cycle of about 150 kB (frames, Celery's exception info) that only a full
    garbage collection frees. Measured on a prefork child: +148 kB per wait, 1,000 waits took it
    from 129 to 274 MB. Dropping the traceback here breaks the cycle, so it is freed at once.
    """
    if isinstance(retval, Ignore) and isinstance(sender, WorkflowTask):
        retval.__traceback__ = None


# Each app's Durables, for Durable.of (the `celery durable` command finds them there).
_REGISTRY: weakref.WeakKeyDictionary[Celery, weakref.WeakSet[Durable]] = weakref.WeakKeyDictionary()
