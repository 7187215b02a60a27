"""Talk to durable workflows from any process: a web view, a script, another service.

:class:`DurableClient` needs the database URL and, to publish task messages, a broker URL (or a
Celery app). It never imports workflow code: workflows are started by their task name and
run by the workers that have the code. :class:`Client` is what it shares with
:class:`~celery_durable.Durable`, which is a client too.

Without a broker (``DurableClient(database_url)``) nothing is published: every started, woken,
resumed or forked workflow is left PENDING for the sweep, which each worker runs every
``sweep_interval`` seconds (30 by default), so it starts within that time instead of at once.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import core, flow_debounce
from .config import DurableConfig
from .flow_schedule import ScheduleAPI
from .handle import WorkflowHandle
from .hooks import Observer, Observers
from .management import Management
from .serialization import get_serializer
from .store import Dispatch, MessageRecord, StepRecord, Store, WorkflowRecord, WorkflowStatus, open_store
from .validation import Duration, When

if TYPE_CHECKING:
    from celery import Celery

#: The default store, relative to the directory of the module that creates the Durable (see default_database_url).
DEFAULT_URL = "sqlite:///celery_durable.sqlite3"
ENV_URL = "CELERY_DURABLE_DATABASE_URL"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def default_database_url() -> str:
    """The store used when no URL is given and ``$CELERY_DURABLE_DATABASE_URL`` is unset.

    The SQLite file ``celery_durable.sqlite3`` in the directory of the module whose code creates the
    ``Durable`` (or client): a worker, beat and a script of one project then agree on one file
    whatever directory each was started from. Code with no file (an interactive session,
    ``python -c``) uses the working directory. The path returned is absolute.
    """
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        inside = os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)
        if not inside:
            if filename.startswith("<") or not os.path.exists(filename):
                break  # no file: <stdin>, <string>, a REPL
            return f"sqlite:///{os.path.join(os.path.dirname(os.path.abspath(filename)), 'celery_durable.sqlite3')}"
        frame = frame.f_back  # type: ignore[assignment]
    return f"sqlite:///{os.path.abspath('celery_durable.sqlite3')}"


class Client(ScheduleAPI):
    """Everything that needs only the store and a way to publish: start by name, send, handles, operations.

    The store is opened on first use, so creating a client touches no database.
    """

    #: Exceptions that pass through workflow executions unrecorded (the task system's control flow).
    passthrough: tuple[type[BaseException], ...] = ()

    def __init__(self, database_url: str | None, config: DurableConfig, store: Store | None = None) -> None:
        self.config = config
        self.database_url = database_url or os.environ.get(ENV_URL) or default_database_url()
        self.serializer = get_serializer(config.serializer)
        self._store = store
        self._given_store = store is not None
        self._store_lock = threading.Lock()
        self._engine: core.Engine | None = None
        self._management: Management | None = None
        self.observers = Observers()  # see hooks.py and add_observer

    def _publish(self, dispatch: Dispatch) -> None:
        """Publish the task message *dispatch* describes."""
        raise NotImplementedError

    def _outcome_reporter(self) -> Callable[[core.Outcome], None] | None:
        """What the engine calls with each execution's outcome before releasing its lock (a task system's
        report of it; see ``Engine.on_outcome``); None: nothing."""
        return None

    # -- store, engine and operations (opened lazily) ------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    store = open_store(
                        self.database_url,
                        self.config.table_prefix,
                        self._engine_options(),
                        durability=self.config.durability,
                    )
                    if self.config.auto_migrate:
                        store.migrate()
                    self._store = store
        return self._store

    def _engine_options(self) -> dict[str, Any]:
        """Keyword arguments for the store's ``sqlalchemy.create_engine`` (a worker adds pool sizing)."""
        return dict(self.config.engine_options)

    @property
    def store_location(self) -> str:
        """Where the workflows are stored: the SQLite file's absolute path, or the URL without its password."""
        import sqlalchemy as sa

        try:
            url = sa.make_url(self.database_url)
        except Exception:
            return self.database_url
        if url.get_backend_name() == "sqlite" and url.database:
            return os.path.abspath(url.database)
        return url.render_as_string(hide_password=True)

    @property
    def engine(self) -> core.Engine:
        if self._engine is None:
            self._engine = core.Engine(
                self.store, self.serializer, self.config, self._publish, passthrough=self.passthrough,
                observers=self.observers, on_outcome=self._outcome_reporter(),
            )
        return self._engine

    @property
    def management(self) -> Management:
        if self._management is None:
            self._management = Management(self.engine)
        return self._management

    def add_observer(self, observer: Observer) -> None:
        """Call *observer*'s hooks (see :mod:`celery_durable.hooks`) from now on, in this process."""
        self.observers.append(observer)

    def migrate(self) -> int:
        """Create or upgrade the schema; return its version."""
        return self.store.migrate()

    def close(self) -> None:
        """Release the store's connections (it reopens on next use)."""
        if self._store is not None:
            self._store.close()

    def reconfigure(self, database_url: str | None = None, *, config: DurableConfig | None = None, **options: Any) -> None:
        """Use another database (``None``: the same) and/or options from now on; for tests.

        The pytest plugin (``celery_durable.testing``) points your ``Durable`` at a test store this
        way and back afterwards. The store opened so far is closed (nothing is copied); the next use
        opens the new one. Options read when a workflow is declared (``queue``) keep their value there.
        """
        self.close()
        self.config = DurableConfig.from_options(config or self.config, options)
        self.database_url = database_url or self.database_url
        self.serializer = get_serializer(self.config.serializer)
        self._store = self._engine = self._management = None

    # -- starting and handles ----------------------------------------------------------------------------
    def start(
        self,
        name: str,
        *args: Any,
        workflow_id: str | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        dedup_key: str | None = None,
        on_conflict: str = "return_existing",
        **kwargs: Any,
    ) -> WorkflowHandle:
        """Start the workflow registered under the task *name* with ``*args``/``**kwargs``; return its handle.

        The id is an idempotency key: an existing id returns its handle and starts nothing (another
        workflow name under that id raises ``WorkflowConflict``). *queue* defaults to the ``queue``
        option; *timeout* (seconds) fixes the workflow's own deadline. With *dedup_key*, at most one
        workflow of *name* with that key is unfinished at a time: while one is, this returns its handle
        and starts nothing (*on_conflict* ``"return_existing"``) or raises ``DuplicateWorkflow``
        (``"raise"``); once it finished, the key is free again.
        """
        record = self.management.start(
            name,
            args,
            kwargs,
            workflow_id=workflow_id,
            queue=queue,
            timeout=timeout,
            dedup_key=dedup_key,
            on_conflict=on_conflict,
        )
        return WorkflowHandle(self, record.workflow_id)

    def debounce(
        self,
        name: str,
        key: str,
        *args: Any,
        delay: Duration,
        max_delay: Duration | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle:
        """Debounce the workflow registered under the task *name*: calls with the same *key* within
        *delay* seconds of each other start one workflow, *delay* after the last call, with the last
        call's ``*args``/``**kwargs``; return the handle of that round (the same for every call of it).

        *max_delay* (from the round's first call) bounds how far a steady stream of calls pushes the
        start back. Once the round's workflow has started, the next call opens a new round. A waiting
        round holds no worker slot: it is a WAITING workflow (wait kind ``"debounce"``) whose timer
        starts it. *queue* and *timeout* are as for :meth:`start` (the timeout counts from the start
        the round's first call planned). See flow_debounce.py.
        """
        record = flow_debounce.debounce(
            self.management, name, key, args, kwargs, delay=delay, max_delay=max_delay, **self._start_defaults(name, queue, timeout)
        )
        return WorkflowHandle(self, record.workflow_id)

    def _start_defaults(self, name: str, queue: str | None, timeout: float | None) -> dict[str, Any]:
        """The queue, version and timeout a start of workflow *name* gets (a Durable knows its registered ones)."""
        return {"queue": queue or self.config.queue, "version": None, "timeout": timeout}

    def handle(self, workflow_id: str) -> WorkflowHandle:
        """Return a handle on an existing workflow; an unknown id raises ``WorkflowNotFound``."""
        self.management.get(workflow_id)
        return WorkflowHandle(self, workflow_id)

    def decode_result(self, record: WorkflowRecord) -> Any:
        """Return a finished workflow's value or raise its error."""
        return self.management.decode_result(record)

    # -- messaging ---------------------------------------------------------------------------------------
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

        Args:
            workflow_id: The workflow to send to.
            message: The payload (JSON by default; at most ``max_payload`` bytes serialized).
            topic: The topic a ``recv`` takes it from; ``None`` is the default topic.
            idempotency_key: Outside a workflow only (inside one it raises ``InvalidArgument``): a
                second send with the same key to the same workflow is dropped silently.
            create_mailbox: Keep the message for a workflow id that has not started yet.

        Raises:
            WorkflowNotFound: No workflow has that id (and ``create_mailbox`` is off).
        """
        self.management.send(workflow_id, message, topic, idempotency_key, create_mailbox)

    def get_event(self, workflow_id: str, key: str, timeout: float | None = 60, default: Any = None) -> Any:
        """Return a workflow's event *key*, waiting up to *timeout* seconds for it to be set; *default* on timeout.

        Inside a workflow it is checkpointed and waits without holding a worker; outside, it polls.

        Args:
            workflow_id: The workflow that sets the event.
            key: The event's key.
            timeout: Seconds to wait for it to be set; ``0`` looks once, ``None`` waits forever.
            default: What to return when the timeout passes first.
        """
        return self.management.get_event(workflow_id, key, timeout, default)

    def get_events(self, workflow_id: str) -> dict[str, Any]:
        """Return every event of a workflow: key -> latest value."""
        return self.management.get_events(workflow_id)

    # -- listings ----------------------------------------------------------------------------------------
    def list_workflows(
        self,
        status: WorkflowStatus | str | Iterable[WorkflowStatus | str] | None = None,
        name: str | None = None,
        *,
        created_after: When | None = None,
        created_before: When | None = None,
        id_prefix: str | None = None,
        parent_id: str | None = None,
        version: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[WorkflowRecord]:
        """Return workflows, newest first; every filter given narrows the list.

        Records carry ``error_summary`` for failed ones.

        Args:
            status: One status or several (a ``WorkflowStatus`` or its value, ``"WAITING"``).
            name: The exact workflow (task) name.
            created_after: Timezone-aware datetime or epoch seconds; a naive datetime raises
                ``InvalidArgument``.
            created_before: Likewise.
            id_prefix: Ids that start with this, matched literally.
            parent_id: Children of this workflow.
            version: Workflows started on this code version.
            limit: At most this many, from 1.
            offset: Skip this many (for paging).
        """
        return self.management.list_workflows(
            status,
            name,
            created_after=created_after,
            created_before=created_before,
            id_prefix=id_prefix,
            parent_id=parent_id,
            version=version,
            limit=limit,
            offset=offset,
        )

    def list_steps(self, workflow_id: str) -> list[StepRecord]:
        """Return a workflow's checkpoints: step id, name, output or error, start and end times."""
        return self.management.list_steps(workflow_id)

    def list_messages(self, workflow_id: str) -> list[MessageRecord]:
        """Return the messages sent to a workflow, oldest first, with decoded payloads and whether each was consumed."""
        return self.management.list_messages(workflow_id)

    # -- operations --------------------------------------------------------------------------------------
    def cancel(self, workflow_id: str) -> WorkflowStatus:
        """Cancel a workflow that has not finished; return its status afterwards.

        A waiting or queued workflow ends at once (its queued messages go stale); a running one
        stops at its next durable operation. Unknown ids raise ``WorkflowNotFound``.
        """
        return self.management.cancel(workflow_id)

    def resume(self, workflow_id: str) -> WorkflowHandle:
        """Run a CANCELLED or failed workflow again with the current code; return its handle.

        CANCELLED: it continues from its checkpoints. ERROR: the checkpoint of the step whose error
        ended it, and every later one, is dropped, so that step runs again (steps before it do
        not); when the workflow body raised the error, the body runs again with every checkpoint
        kept. A message a dropped ``recv`` had consumed is received again; a ``send`` after the
        failed step is sent again. A deadline (``timeout``) that has passed is cleared. Any other
        status changes nothing. Unknown ids raise ``WorkflowNotFound``; a workflow started with a
        ``dedup_key`` that another unfinished workflow holds now raises ``DuplicateWorkflow``.
        """
        return WorkflowHandle(self, self.management.resume(workflow_id).workflow_id)

    def fork(self, workflow_id: str, start_step: int, *, new_workflow_id: str | None = None) -> WorkflowHandle:
        """Start a new workflow that replays *workflow_id* up to *start_step* and runs on from there with the current code.

        The fork has the same name, inputs, queue and version, copies of the checkpoints with step
        id < *start_step* (a copied ``send`` is not sent again, a copied ``recv`` returns its
        recorded message) and the events they set; it has no parent and no deadline, and records
        ``forked_from``/``forked_from_step``. The original is untouched. *start_step* past the end
        copies everything; a negative one is ``InvalidArgument``. *new_workflow_id* is an
        idempotency key like a start's.
        """
        record = self.management.fork(workflow_id, start_step, new_workflow_id)
        return WorkflowHandle(self, record.workflow_id)

    def prune(self, older_than: Duration) -> int:
        """Delete finished workflows not updated for *older_than* (seconds or timedelta) with everything
        that belongs to them (checkpoints, events, messages sent to them); return how many.

        Works in short batches that touch only finished workflows, so running ones are never blocked.
        """
        return self.management.prune(older_than)

    def recover(self) -> int:
        """Publish every workflow that should be moving but has no live message; return how many.

        Harmless on running workflows (their lock is held, so they are skipped) and on
        duplicates (every re-publish gets a new ticket; older messages become no-ops).
        """
        return self.management.recover()


class DurableClient(Client):
    """A client for processes that do not import workflow code: web apps, scripts, other services.

    ``DurableClient(database_url, broker_url)`` publishes task messages by name through a bare
    Celery app on *broker_url* (pass ``celery_app=`` to publish through an app of yours instead,
    with its routing). Without either, nothing is published and the workers' sweep starts the
    work (within ``sweep_interval``). Keyword options are those of
    :class:`~celery_durable.DurableConfig`; use the same ``table_prefix`` and ``serializer`` as
    the workers, and ``queue`` for the queue they consume when it is not Celery's default.
    """

    def __init__(
        self,
        database_url: str | None = None,
        broker_url: str | None = None,
        *,
        celery_app: Celery | None = None,
        config: DurableConfig | None = None,
        store: Store | None = None,
        **options: Any,
    ) -> None:
        super().__init__(database_url, DurableConfig.from_options(config, options), store)
        self.broker_url = broker_url
        self._publisher: Callable[[Dispatch], None] | None = None
        if celery_app is not None or broker_url is not None:
            from .tasks import broker_publisher  # Celery is needed only to publish

            self._publisher = broker_publisher(broker_url, celery_app, self.config.queue)

    @property
    def can_publish(self) -> bool:
        """Whether this client publishes task messages (else the sweep picks its work up)."""
        return self._publisher is not None

    def _publish(self, dispatch: Dispatch) -> None:
        if self._publisher is not None:
            try:
                self._publisher(dispatch)
                return
            except Exception:
                # The broker is unreachable: the caller logs it; the sweep publishes it at its next run.
                self.store.leave_to_sweep(dispatch)
                raise
        self.store.leave_to_sweep(dispatch)

    def __enter__(self) -> DurableClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
