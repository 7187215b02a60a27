"""pytest plugin for testing your own durable workflows: a test store, an embedded worker, time skipping.

Install ``celery-durable[pytest]`` and say where your ``Durable`` is, in ``pytest.ini`` (or
``[tool.pytest.ini_options]``)::

    [pytest]
    durable_app = shop.workflows:durable     # a Durable, or a Celery app that has one

or by overriding the session-scoped ``durable_app`` fixture in ``conftest.py``. A test then
requests ``durable`` (your Durable on the test's own store), ``durable_worker`` and ``durable_clock``;
docs/testing.md has a complete example.

Fixtures:

* ``durable`` — your Durable on the test's own store, a fresh SQLite file in ``tmp_path``
  (``durable_database_url``; return a PostgreSQL URL from it to test there: each test then gets its
  own table prefix, dropped afterwards). For the whole session its Celery app runs on an in-memory
  broker and result backend (``durable_celery_config``, under pytest-celery's ``celery_config``),
  and between tests on a scratch store: the database your Durable is configured with is never opened.
  Everything is put back when the session ends.
* ``durable_worker`` — a real Celery worker (a thread, solo pool) consuming your workflows' queues,
  so waits leave it through countdown retries as in production. It is started once per session
  (``durable_session_worker``: stopping one takes seconds); each test's messages are purged after it.
* ``durable_clock`` — ``advance(seconds)`` skips time: every wait, sleep, retry pause and workflow
  timeout due within *seconds* fires now (see :class:`DurableClock`).
* ``durable_app`` — your Durable as declared (session scope): from the ini option, or override it.

Helpers: :func:`wait_until_waiting`, :func:`wait_for_status`, :func:`run_workflow`; send a message
with ``durable.send(...)`` as in production.

Eager mode (``task_always_eager``) runs workflows in-process: a start runs the workflow until it
finishes or waits, ``durable.send`` runs the woken workflow before it returns, and a timer fires
when ``DurableClock(durable).advance(seconds)`` skips to it. That suits a project whose tests
already run Celery eagerly; the plugin's fixtures turn eager mode off and run a real worker, which
exercises what production does (task messages, countdowns, several executions of one workflow).

The plugin is loaded by every pytest run of a project that installs the package (a ``pytest11``
entry point), so this module imports nothing but pytest and the standard library, and changes
nothing until a test requests one of its fixtures. ``-p no:celery_durable`` unloads it.
"""

from __future__ import annotations

import importlib
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from celery import Celery
    from celery.worker import WorkController

    from .handle import WorkflowHandle
    from .integration import Durable
    from .store import WorkflowRecord

__all__ = ["DurableClock", "run_workflow", "wait_for_status", "wait_until_waiting"]

INI_APP = "durable_app"

#: What the Celery app runs on during a test (merged under the ``celery_config`` fixture, if any).
TEST_CELERY_CONFIG: dict[str, Any] = {
    "broker_url": "memory://",
    "broker_read_url": None,
    "broker_write_url": None,
    # The empty in-memory queue is polled: 1 s by default would add up to a second per wake-up.
    "broker_transport_options": {"polling_interval": 0.01},
    "result_backend": "cache+memory://",
    "task_always_eager": False,  # a real worker, as in production (see the module's docstring)
    "worker_hijack_root_logger": False,
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(INI_APP, "your Durable as module:attribute (a Durable, or a Celery app with one)", default="")


# -- helpers --------------------------------------------------------------------------------------
def wait_for_status(handle: WorkflowHandle, *statuses: str, timeout: float = 10.0) -> WorkflowRecord:
    """Wait until the workflow has one of *statuses* (``"WAITING"``, ``"SUCCESS"``...); return its record.

    Fails the test, showing the status it has, when that does not happen within *timeout* seconds.

    Args:
        handle: The workflow's handle.
        *statuses: The statuses to wait for, by value.
        timeout: Seconds before the test fails.
    """
    wanted = {str(s).upper() for s in statuses}
    end = time.monotonic() + timeout
    delay = 0.005
    while True:
        record = handle.record()
        if record.status.value in wanted:
            return record
        if time.monotonic() > end:
            pytest.fail(
                f"workflow {handle.workflow_id!r} is {record.status.value}, not {' or '.join(sorted(wanted))}, "
                f"after {timeout} s (is the durable_worker fixture requested?)"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def wait_until_waiting(handle: WorkflowHandle, timeout: float = 10.0) -> WorkflowRecord:
    """Wait until the workflow waits (recv, sleep, get_event, a retry pause): it has left the worker.

    Args:
        handle: The workflow's handle.
        timeout: Seconds before the test fails.
    """
    return wait_for_status(handle, "WAITING", timeout=timeout)


def run_workflow(workflow: Any, *args: Any, timeout: float = 30.0, **kwargs: Any) -> Any:
    """Start *workflow* with ``*args``/``**kwargs`` (``workflow_id=`` too), wait until it finishes, return its value.

    Raises what ``result()`` raises: the workflow's error, ``WorkflowCancelled``, ``TimeoutError``.
    """
    return workflow.start(*args, **kwargs).result(timeout=timeout)


class DurableClock:
    """Skips time for the workflows of one test (the ``durable_clock`` fixture).

    ``advance(seconds)`` moves the stored deadline of every unfinished workflow (its wait's
    deadline and its own timeout) *seconds* earlier and runs the sweep with no grace, so whatever
    falls due fires now through the worker, with a new ticket (the countdown messages already
    queued go stale). Nothing else is faked: the clock inside steps, ``created_at`` and step
    durations are real time, and a wait recorded after ``advance`` counts from the real now.
    """

    def __init__(self, durable: Durable, settle_timeout: float = 10.0) -> None:
        self.durable = durable
        self.settle_timeout = settle_timeout
        #: Seconds skipped so far in this test.
        self.skipped = 0.0

    def settle(self) -> None:
        """Wait until no workflow is PENDING or RUNNING: each one has finished or waits."""
        end = time.monotonic() + self.settle_timeout
        while True:
            busy = self.durable.list_workflows(["PENDING", "RUNNING"], limit=5)
            if not busy:
                return
            if time.monotonic() > end:
                shown = ", ".join(f"{r.workflow_id} ({r.status.value})" for r in busy)
                pytest.fail(f"durable_clock: workflows still moving after {self.settle_timeout} s: {shown}")
            time.sleep(0.01)

    def advance(self, seconds: float) -> int:
        """Skip *seconds*: timers of waits, sleeps, retry pauses and workflow timeouts due within them fire now.

        First waits until every workflow finished or waits (so a wait about to be recorded is not
        missed). Returns how many workflows were woken; a workflow past its own timeout is
        cancelled by the sweep directly, without waking.
        """
        if seconds < 0:
            raise ValueError(f"time only moves forward: advance({seconds!r})")
        self.settle()
        durable = self.durable
        durable.store.shift_deadlines(seconds)
        dispatches = durable.store.sweep(durable.engine.clock(), durable.config.horizon, 0.0)
        durable.engine.publish_all(dispatches)
        self.skipped += seconds
        return len(dispatches)


# -- setting up the Durable under test -----------------------------------------------------------------
def load_durable(spec: str) -> Durable:
    """Import ``module:attribute`` and return the Durable it names (or the one its Celery app has)."""
    from celery import Celery

    from .integration import Durable

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise pytest.UsageError(f"{INI_APP} must be module:attribute, e.g. shop.workflows:durable; got {spec!r}")
    target = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if isinstance(target, Durable):
        return target
    if isinstance(target, Celery):
        return Durable.of(target)
    raise pytest.UsageError(f"{INI_APP} = {spec} names a {type(target).__name__}, not a Durable or a Celery app")


@contextmanager
def _celery_config(app: Celery, config: dict[str, Any]) -> Iterator[None]:
    """Apply *config* to *app* for the duration, and drop the connections it already opened both times."""
    saved = {key: app.conf.get(key) for key in config}
    app.conf.update(config)
    _drop_connections(app)
    try:
        yield
    finally:
        app.conf.update(saved)
        _drop_connections(app)


def _drop_connections(app: Celery) -> None:
    # Celery caches the broker pool, the producer pool and the result backend per app and has no
    # public way to drop them; without this, messages would still go to the broker used before. The
    # pools are not closed: kombu keeps them in a registry per broker URL and would hand out the closed one.
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
    app._backend_cache = None
    if getattr(app._local, "backend", None) is not None:
        del app._local.backend


def _drop_tables(durable: Durable) -> None:
    """Drop the tables of a per-test prefix (PostgreSQL): the next test uses new ones."""
    store: Any = durable.store
    tables = getattr(store, "t", None)
    if tables is not None:
        tables.metadata.drop_all(store.engine)


def _workflow_queues(durable: Durable) -> list[str]:
    """The queues the worker must consume: those of the durable's workflows, and Celery's default."""
    from .integration import WorkflowTask

    app = durable.app
    queues = {app.conf.task_default_queue}
    if durable.config.queue:
        queues.add(durable.config.queue)
    for task in app.tasks.values():
        queue = getattr(task, "durable_queue", None)
        if isinstance(task, WorkflowTask) and getattr(task, "durable", None) is durable and queue:
            queues.add(queue)
    return sorted(queues)


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def durable_app(pytestconfig: pytest.Config) -> Durable:
    """Your Durable as declared, named by the ``durable_app`` ini option.

    Or override this fixture (session-scoped) in ``conftest.py`` to return your Durable.
    """
    spec = str(pytestconfig.getini(INI_APP)).strip()
    if not spec:
        raise pytest.UsageError(
            f"celery_durable.testing: set `{INI_APP} = yourpackage.module:durable` in your pytest configuration, "
            "or override the session-scoped `durable_app` fixture in conftest.py to return your Durable"
        )
    return load_durable(spec)


@pytest.fixture(scope="session")
def durable_celery_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Celery settings applied to your app while the plugin's fixtures are in use: an in-memory broker
    and result backend. pytest-celery's ``celery_config`` fixture, when present, is applied over them."""
    config = dict(TEST_CELERY_CONFIG)
    try:
        config.update(request.getfixturevalue("celery_config"))
    except pytest.FixtureLookupError:
        pass  # pytest-celery not loaded (e.g. -p no:celery): our defaults alone
    return config


@pytest.fixture(scope="session")
def durable_session(
    durable_app: Durable, durable_celery_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Durable]:
    """Your Durable and its Celery app set up for tests until the session ends, then put back as they were.

    Between tests its store is a scratch SQLite file and its sweep is off, so the worker, which lives
    for the whole session, never touches the database your Durable is configured with.
    """
    saved_url, saved_config = durable_app.database_url, durable_app.config
    scratch = tmp_path_factory.mktemp("celery_durable") / "between-tests.sqlite3"
    durable_app.reconfigure(f"sqlite:///{scratch}", sweep_interval=None, auto_migrate=True)
    try:
        with _celery_config(durable_app.app, durable_celery_config):
            yield durable_app
    finally:
        durable_app.reconfigure(saved_url, config=saved_config)


@pytest.fixture
def durable_database_url(tmp_path: Path) -> str:
    """The store of each test: an SQLite file in ``tmp_path``. Return a PostgreSQL URL to test there."""
    return f"sqlite:///{tmp_path / 'durable.sqlite3'}"


@pytest.fixture
def durable(durable_session: Durable, durable_database_url: str) -> Iterator[Durable]:
    """Your Durable on this test's own store (``durable_database_url``) and the in-memory broker.

    Migrations run on first use; the sweep is off (``durable_clock.advance`` runs it).
    """
    between = durable_session.database_url, durable_session.config
    own_tables = not durable_database_url.startswith("sqlite")
    # A shared database (PostgreSQL): a table prefix per test keeps tests apart.
    options: dict[str, Any] = {"table_prefix": f"t{uuid.uuid4().hex[:10]}_"} if own_tables else {}
    durable_session.reconfigure(durable_database_url, **options)
    try:
        yield durable_session
    finally:
        try:
            _purge(durable_session)
            if own_tables:
                _drop_tables(durable_session)
        finally:
            durable_session.reconfigure(between[0], config=between[1])


def _purge(durable: Durable) -> None:
    """Drop this test's task messages not yet received, so they never reach the next test's store."""
    with durable.app.connection_for_write() as conn:
        for queue in _workflow_queues(durable):
            conn.default_channel.queue_purge(queue)


@pytest.fixture(scope="session")
def durable_session_worker(durable_session: Durable) -> Iterator[WorkController]:
    """The Celery worker thread (solo pool) behind ``durable_worker``, started once per session:
    starting one is quick, stopping one takes seconds."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        durable_session.app,
        pool="solo",
        perform_ping_check=False,
        shutdown_timeout=30.0,
        queues=_workflow_queues(durable_session),
    ) as worker:
        yield worker


@pytest.fixture
def durable_worker(durable: Durable, durable_session_worker: WorkController) -> WorkController:
    """A real Celery worker (a thread, solo pool) running your workflows on this test's store."""
    return durable_session_worker


@pytest.fixture
def durable_clock(durable: Durable, durable_worker: WorkController) -> DurableClock:
    """Skip time: ``durable_clock.advance(3600)`` fires what is due within the hour now (see :class:`DurableClock`)."""
    return DurableClock(durable)
