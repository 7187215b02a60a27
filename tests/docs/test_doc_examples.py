"""Every ```python block of README.md and docs/*.md runs, so the documentation cannot drift from the code.

The blocks of one page run in order, in one namespace, in this process:

* every Celery app is on the in-memory broker (``CELERY_BROKER_URL=memory://``, which Celery
  prefers to the URL a block passes) and every store, whatever URL a block names, is one SQLite
  file in the test's ``tmp_path`` (a ``DurableClient`` on the page sees what its ``Durable`` wrote);
* once a block has created a ``Durable``, a real Celery worker (a thread, solo pool, as the pytest
  plugin's ``durable_worker``) runs its workflows; workflows declared by later blocks are made known
  to it after each block;
* a ``test_*`` function a block defines is called as pytest would, with the plugin's fixtures
  ``durable``, ``durable_worker`` and ``durable_clock`` (each call on a store of its own);
* ``<!-- module: shop.workflows -->`` anywhere on a page registers the page's namespace as that
  module, so a block can ``from shop.workflows import checkout`` as a reader's project would.

A block that cannot run here (a fragment, a Django project, a signature list) is marked on the line
before its fence with ``<!-- excerpt: why -->``: it is only compiled, so its syntax still cannot
drift. Hidden set-up blocks are ordinary blocks inside ``<details>``: they run like the others.

docs/tutorial.md is the one exception: tests/plugin/test_tutorial.py writes its blocks out as a
project and runs it with the plugin, which is what the page tells a reader to do.
"""

from __future__ import annotations

import inspect
import linecache
import re
import sys
import textwrap
import threading
import traceback
import types
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
#: Pages whose Python runs elsewhere, and where.
RUN_ELSEWHERE = {"docs/tutorial.md": "tests/plugin/test_tutorial.py"}
#: Pages whose every block is an excerpt, and why: Django's settings can be configured once per process,
#: and pytest-django is not a dependency. Their blocks still compile.
EXCERPTS_ONLY = {"docs/django-testing.md": "a Django project with pytest-django; tests/django_project runs the same behaviour"}

FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
EXCERPT = re.compile(r"^\s*<!--\s*excerpt:\s*(?P<why>\S.*?)\s*-->\s*$")
MODULE = re.compile(r"^\s*<!--\s*module:\s*(?P<name>[\w.]+)\s*-->\s*$", re.M)


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based line of the block's first line of code in the page
    code: str
    excerpt: str | None  # why it only compiles; None: it runs

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    def compiled(self) -> types.CodeType:
        # Padded so that a traceback names the page's own line numbers (the source is in linecache).
        return compile("\n" * (self.line - 1) + self.code, f"<{self.page}>", "exec")


def python_blocks(page: str) -> list[Block]:
    """The page's ```python blocks, in order, each with its line and its excerpt marker (if any)."""
    lines = (ROOT / page).read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not re.match(r"^\s*```\s*$", lines[end]):
            end += 1
        assert end < len(lines), f"{page}:{i + 1}: a code fence that is never closed"
        if opening.group(2) == "python":
            before = i - 1
            while before >= 0 and not lines[before].strip():
                before -= 1
            marker = EXCERPT.match(lines[before]) if before >= 0 else None
            code = textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n"
            blocks.append(Block(page, i + 2, code, marker.group("why") if marker else None))
        i = end + 1
    return blocks


def _register_source(page: str) -> None:
    text = (ROOT / page).read_text()
    name = f"<{page}>"
    linecache.cache[name] = (len(text), None, text.splitlines(True), name)


# -- the environment a page runs in ------------------------------------------------------------------------
class PageRun:
    """The namespace, the Durables the blocks create and the workers that run their workflows."""

    def __init__(self, page: str, tmp_path: Path, stack: ExitStack) -> None:
        self.page = page
        self.tmp_path = tmp_path
        self.stack = stack
        self.store_url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
        self.durables: list[Any] = []
        self.workers: dict[Any, tuple[Any, list[str]]] = {}  # app -> (worker, its queues)
        self.tests_run = 0
        module_name = MODULE.search((ROOT / page).read_text())
        self.module = types.ModuleType(module_name.group("name") if module_name else f"doc_{Path(page).stem}")

    @property
    def namespace(self) -> dict[str, Any]:
        return self.module.__dict__

    def run(self, block: Block) -> None:
        before = set(self.namespace)
        try:
            exec(block.compiled(), self.namespace)
        except Exception:
            pytest.fail(f"{block.where}: this example fails:\n{traceback.format_exc()}", pytrace=False)
        self.start_workers()
        for name in [n for n in self.namespace if n not in before and n.startswith("test_")]:
            fn = self.namespace[name]
            if inspect.isfunction(fn):
                self.call_test(block, fn)

    def start_workers(self) -> None:
        from celery.contrib.testing.worker import start_worker

        from celery_durable.testing import _workflow_queues

        for durable in self.durables:
            app = durable.app
            queues = _workflow_queues(durable)
            if app in self.workers:
                worker, consumed = self.workers[app]
                missing = set(queues) - set(consumed)
                assert not missing, (
                    f"{self.page}: queues {sorted(missing)} appear after the worker started; "
                    "declare them (Durable(app, queue=...)) in the page's first block"
                )
                continue
            # The in-memory queue is polled: 1 s by default would add up to a second per wake-up.
            app.conf.broker_transport_options = {"polling_interval": 0.01}
            worker = self.stack.enter_context(
                start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30.0, queues=queues)
            )
            self.workers[app] = (worker, queues)
            self.stack.callback(self.purge, app, queues)

    def know_new_tasks(self, **_: Any) -> None:
        """Before a block publishes a message: start the worker, or make it know the tasks declared since
        it started (a block may declare a workflow and start it at once). Publishes from other threads
        (the worker's sweep) only queue their message."""
        if threading.current_thread() is not threading.main_thread():
            return
        self.start_workers()
        for app, (worker, _queues) in self.workers.items():
            if set(app.tasks) - set(worker.consumer.strategies):
                worker.consumer.update_strategies()

    @staticmethod
    def purge(app: Any, queues: list[str]) -> None:
        with app.connection_for_write() as conn:
            for queue in queues:
                conn.default_channel.queue_purge(queue)

    def call_test(self, block: Block, fn: Callable[..., Any]) -> None:
        """Call a test function the block defines, with the pytest plugin's fixtures, on a store of its own."""
        from celery_durable.testing import DurableClock

        assert len(self.durables) == 1, f"{block.where}: {fn.__name__} needs the page to create one Durable"
        durable = self.durables[0]
        worker = self.workers[durable.app][0]
        fixtures: dict[str, Callable[[], Any]] = {
            "durable": lambda: durable,
            "durable_worker": lambda: worker,
            "durable_clock": lambda: DurableClock(durable),
        }
        names = list(inspect.signature(fn).parameters)
        unknown = [n for n in names if n not in fixtures]
        assert not unknown, f"{block.where}: {fn.__name__} asks for fixtures this harness lacks: {unknown}"
        saved = durable.database_url, durable.config
        durable.reconfigure(f"sqlite:///{self.tmp_path / (fn.__name__ + '.sqlite3')}")
        try:
            fn(**{n: fixtures[n]() for n in names})
        except Exception:
            pytest.fail(f"{block.where}: the example test {fn.__name__} fails:\n{traceback.format_exc()}", pytrace=False)
        finally:
            self.purge(durable.app, self.workers[durable.app][1])
            durable.reconfigure(saved[0], config=saved[1])
        self.tests_run += 1


@pytest.fixture
def page_run(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PageRun]:
    from celery.signals import before_task_publish

    from celery_durable import client
    from celery_durable.integration import Durable

    page: str = request.param
    monkeypatch.chdir(tmp_path)  # Durable(app) alone makes celery_durable.sqlite3 in the working directory
    monkeypatch.setenv("CELERY_BROKER_URL", "memory://")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "cache+memory://")
    _register_source(page)
    with ExitStack() as stack:
        run = PageRun(page, tmp_path, stack)
        monkeypatch.setenv("CELERY_DURABLE_DATABASE_URL", run.store_url)
        original_init = client.Client.__init__

        def init(self: Any, database_url: str | None, *args: Any, **kwargs: Any) -> None:
            original_init(self, run.store_url, *args, **kwargs)  # whatever URL the block names
            if isinstance(self, Durable):
                run.durables.append(self)

        monkeypatch.setattr(client.Client, "__init__", init)
        if run.module.__name__ in sys.modules:
            pytest.fail(f"{page}: <!-- module: {run.module.__name__} --> names a module that exists already")
        parents = run.module.__name__.split(".")[:-1]
        for i in range(len(parents)):
            monkeypatch.setitem(sys.modules, ".".join(parents[: i + 1]), types.ModuleType(".".join(parents[: i + 1])))
        monkeypatch.setitem(sys.modules, run.module.__name__, run.module)
        stack.callback(lambda: [d.close() for d in run.durables])
        before_task_publish.connect(run.know_new_tasks, weak=False)
        stack.callback(before_task_publish.disconnect, run.know_new_tasks)
        yield run


def _pages_with_python() -> list[str]:
    return [p for p in PAGES if python_blocks(p)]


@pytest.mark.parametrize("page", _pages_with_python())
def test_every_block_compiles(page: str) -> None:
    """Excerpts included: syntax drift is caught even where a block cannot run."""
    _register_source(page)
    for block in python_blocks(page):
        try:
            block.compiled()
        except SyntaxError as exc:
            pytest.fail(f"{page}:{exc.lineno}: this example does not compile: {exc.msg}", pytrace=False)


@pytest.mark.parametrize(
    "page_run", [p for p in _pages_with_python() if p not in RUN_ELSEWHERE and p not in EXCERPTS_ONLY], indirect=True
)
def test_the_examples_of_a_page_run(page_run: PageRun) -> None:
    blocks = python_blocks(page_run.page)
    runnable = [b for b in blocks if b.excerpt is None]
    assert runnable, (
        f"{page_run.page}: every Python block is an excerpt; make at least one run "
        "(a hidden set-up block inside <details> gives it what it needs)"
    )
    for block in runnable:
        page_run.run(block)
    defined = sum(len(re.findall(r"^def test_", b.code, re.M)) for b in runnable)
    assert page_run.tests_run == defined, f"{page_run.page}: {defined} example tests, {page_run.tests_run} run"


def test_excerpt_only_pages_are_only_excerpts() -> None:
    for page in EXCERPTS_ONLY:
        blocks = python_blocks(page)
        assert blocks and all(b.excerpt for b in blocks), f"{page}: a block that runs belongs in the harness"


def test_pages_run_elsewhere_still_have_their_test() -> None:
    for page, test in RUN_ELSEWHERE.items():
        assert python_blocks(page) and (ROOT / test).exists(), f"{page} is said to run in {test}"
        assert Path(page).name in (ROOT / test).read_text(), f"{test} does not read {page}"


def test_the_parser_finds_blocks_and_excerpts() -> None:
    """The harness itself: a page with no blocks found would pass every test above."""
    assert len(_pages_with_python()) >= 10
    reasons = [b.excerpt for p in PAGES for b in python_blocks(p) if b.excerpt]
    assert reasons and all(reasons)
