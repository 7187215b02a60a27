"""What a :class:`~celery_durable.Durable` does inside a ``celery worker``, through the worker's signals.

* Sizes the store's connection pool from what the process can run at once (:func:`pool_defaults`):
  a prefork child runs one task at a time, a ``-P threads -c N`` worker N. A user's
  ``engine_options`` (``pool_size``, ``max_overflow``) win over these defaults.
* Warns at start when the worker consumes none of the queues the workflows use: such a worker
  never runs a workflow, and nothing else would say so.
* Logs where the store is, once, so two processes that disagree about it can be told apart.
* Runs the sweep in the main process every ``sweep_interval`` seconds; ``None``: no sweep at all.
* Drives the schedules' ticks from the main process (unless ``sweep_interval`` is ``None``): a thread
  that wakes at the next due tick of any stored schedule, and at least every ``sweep_interval``
  seconds to see schedules other processes stored. Any number of such drivers may run (see
  flow_schedule.py): each tick starts one workflow.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from celery.signals import worker_init, worker_process_init, worker_process_shutdown, worker_ready, worker_shutdown

if TYPE_CHECKING:
    from celery import Celery

    from .integration import Durable

log = logging.getLogger("celery_durable")

# Worker pools whose tasks run in the main process, concurrently (one slot per thread or greenlet).
_IN_PROCESS_POOLS = ("threads", "gevent", "eventlet")


def pool_defaults(slots: int, sweeps: bool) -> dict[str, Any]:
    """The connection pool for a process that runs *slots* executions at once (and the sweep if *sweeps*).

    An execution holds its lease connection for its whole run and may need one more for a short
    read (a handle, a start from a step, the timer thread's check), so ``slots + 1`` connections
    (+2 for the sweep and the schedules' tick driver, which run beside it) let every thread of the
    process make progress; no overflow, so that number is also the most the process ever opens.
    ``handle.result()`` waits on one listener connection of its own per process (see
    store/pg_listen.py), outside this pool.
    """
    return {"pool_size": max(slots, 0) + 1 + 2 * int(sweeps), "max_overflow": 0}


def _pool_kind(pool_cls: Any) -> str:
    """``prefork``, ``threads``, ``solo``, ``gevent``, ``eventlet`` (or the class's module name)."""
    if isinstance(pool_cls, str):
        return pool_cls
    module = getattr(pool_cls, "__module__", "") or ""
    return module.rsplit(".", 1)[-1] or "prefork"


def _concurrency(controller: Any) -> int:
    autoscale = getattr(controller, "max_concurrency", None)
    value = autoscale or getattr(controller, "concurrency", None)
    return value if isinstance(value, int) and value > 0 else 1


def workflow_queues(durable: Durable) -> set[str]:
    """The queues this Durable's workflow messages and its recover task go to, routing applied."""
    app = durable.app
    names = [t.name for t in app.tasks.values() if getattr(t, "durable", None) is durable]
    names.append(durable.recover_task.name)
    queues = set()
    for name in names:
        task = app.tasks[name]
        explicit = getattr(task, "durable_queue", None) or durable.config.queue
        try:
            route = app.amqp.router.route({"queue": explicit} if explicit else {}, name)
            queue = route["queue"]
            queues.add(getattr(queue, "name", None) or str(queue))
        except Exception:  # an odd router: fall back to what the task says, else the default queue
            queues.add(explicit or app.conf.task_default_queue)
    return queues


def consumed_queues(consumer: Any, app: Celery) -> set[str]:
    """The queues a worker's consumer reads from (its ``-Q``, else the app's default)."""
    task_consumer = getattr(consumer, "task_consumer", None)
    queues = getattr(task_consumer, "queues", None)
    if queues:
        return {q.name for q in queues}
    return set(app.amqp.queues.consume_from or app.amqp.queues)


class WorkerHooks:
    """The worker signal handlers of one Durable (connected once, in ``Durable.__init__``)."""

    def __init__(self, durable: Durable) -> None:
        self._durable = durable  # held, as the signal connections hold these handlers
        self._controller: Any = None
        self._child = False
        self._sweeper: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    def connect(self) -> None:
        worker_init.connect(self._on_worker_init, weak=False)
        worker_process_init.connect(self._on_process_init, weak=False)
        worker_process_shutdown.connect(self._flush_timers, weak=False)
        worker_ready.connect(self._on_ready, weak=False)
        worker_shutdown.connect(self._on_shutdown, weak=False)

    # -- the connection pool ----------------------------------------------------------------------
    def pool_defaults(self) -> dict[str, Any]:
        """Pool options for this process when it is part of a worker, else ``{}`` (SQLAlchemy's own)."""
        sweeps = self._durable.config.sweep_interval is not None
        if self._child:  # a prefork child: one task at a time, no sweep
            return pool_defaults(1, False)
        if self._controller is None:
            return {}  # not a worker: a producer, a web app, a script
        kind = _pool_kind(getattr(self._controller, "pool_cls", None))
        if kind in _IN_PROCESS_POOLS:
            return pool_defaults(_concurrency(self._controller), sweeps)
        if kind == "solo":
            return pool_defaults(1, sweeps)
        return pool_defaults(0, sweeps)  # prefork's main process: the sweep and the timers it flushes

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self._durable.app:
            return
        # Read when the store opens: the pool class and concurrency are resolved after this signal.
        self._controller = sender
        self._durable._resize_pool(forked=False)

    def _on_process_init(self, **_: Any) -> None:
        self._child = True
        self._durable._resize_pool(forked=True)

    # -- start and stop -----------------------------------------------------------------------------
    def _on_ready(self, sender: Any = None, **_: Any) -> None:
        durable = self._durable
        name = durable.app.main
        if getattr(sender, "app", None) is not durable.app:
            return
        log.info("celery_durable: workflows of app %r are stored in %s", name, durable.store_location)
        self._check_queues(sender)
        if durable.config.sweep_interval is None:
            return  # sweeps are off: recovery is beat's job (durable.beat_schedule())
        self._stop.clear()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="celery-durable-sweep", daemon=True)
        self._sweeper.start()
        self._ticker = threading.Thread(target=self._tick_loop, name="celery-durable-ticks", daemon=True)
        self._ticker.start()

    def _check_queues(self, consumer: Any) -> None:
        durable = self._durable
        try:
            used = workflow_queues(durable)
            consumed = consumed_queues(consumer, durable.app)
        except Exception:  # a check must never stop a worker
            log.debug("celery_durable: could not compare the worker's queues", exc_info=True)
            return
        if used and not used & consumed:
            log.warning(
                "celery_durable: this worker consumes none of the queues the workflows of app %r use (%s): "
                "it will run no workflow and no recovery. Start it with -Q %s (it consumes: %s)",
                durable.app.main,
                ", ".join(sorted(used)),
                ",".join(sorted(used)),
                ", ".join(sorted(consumed)) or "nothing",
            )

    def _on_shutdown(self, **_: Any) -> None:
        self._stop.set()
        self._flush_timers()

    def _flush_timers(self, **_: Any) -> None:
        timers = self._durable._timers
        if timers is not None:
            timers.flush()

    def _sweep_loop(self) -> None:
        interval = self._durable.config.sweep_interval
        while interval is not None:
            try:
                self._durable.recover()
            except Exception:
                log.warning("celery_durable sweep failed; will try again", exc_info=True)
            if self._stop.wait(interval):
                return

    def _tick_loop(self) -> None:
        cap = self._durable.config.sweep_interval
        while cap is not None:
            try:
                wake = self._durable.fire_schedules()
                delay = min(max(wake - time.time(), 0.0) + 0.005, cap)
            except Exception:
                log.warning("celery_durable: firing schedules failed; will try again", exc_info=True)
                delay = min(1.0, cap)
            if self._stop.wait(delay):
                return


__all__ = ["WorkerHooks", "consumed_queues", "pool_defaults", "workflow_queues"]
