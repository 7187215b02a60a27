"""With no database URL, every process of a project uses one SQLite file, next to the module that
creates the Durable, whatever directory each process was started from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TASKS = """
from celery import Celery
from celery_durable import Durable

app = Celery("proj", set_as_current=False)
durable = Durable(app)  # no URL: the default store
"""


def _run(code: str, cwd: Path, project: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "CELERY_DURABLE_DATABASE_URL"}
    env["PYTHONPATH"] = str(project)
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_processes_started_in_different_directories_share_the_default_store(tmp_path: Path) -> None:
    project, here, there = tmp_path / "proj", tmp_path / "here", tmp_path / "there"
    for d in (project, here, there):
        d.mkdir()
    (project / "tasks.py").write_text(TASKS)

    where = _run(
        "import tasks; tasks.durable.send('box', 'hello', create_mailbox=True); print(tasks.durable.store_location)",
        here,
        project,
    )
    read = _run("import tasks; print([m.payload for m in tasks.durable.list_messages('box')])", there, project)

    assert where == str(project / "celery_durable.sqlite3")
    assert read == "['hello']"  # the other process, elsewhere, sees the message
    assert list(here.iterdir()) == [] and list(there.iterdir()) == []  # no store in either working directory
