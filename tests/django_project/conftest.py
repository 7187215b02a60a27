"""The Django project's tests run in a process of their own per database: Django's settings can be
configured once per process. ``tests/test_django.py`` starts them with CD_DJANGO_DB and the
database, broker and queue in the environment; a plain ``pytest`` run does not collect them here.

Session set-up, as a user would do it: ``manage.py migrate`` on the fresh database, a superuser,
and one real ``celery -A proj worker`` for the workflows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent

if not os.environ.get("CD_DJANGO_DB"):
    collect_ignore_glob = ["test_*.py"]
else:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
    sys.path.insert(0, str(HERE))


def manage(*args: str) -> str:
    """Run ``python manage.py ARGS`` in a subprocess, as a user would; return its output."""
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=HERE, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="session")
def migrate_output() -> str:
    """``manage.py migrate`` on the fresh database (before Django is set up in this process)."""
    return manage("migrate", "--no-input")


@pytest.fixture(scope="session")
def django_ready(migrate_output: str) -> None:
    import django

    django.setup()


@pytest.fixture(scope="session")
def worker(django_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.services import Worker

    log = tmp_path_factory.mktemp("worker") / "worker.log"
    w = Worker({}, concurrency=1, pool="solo", log=log, app="proj", cwd=HERE).start()
    yield w
    w.stop()


@pytest.fixture(scope="session")
def durable(django_ready: None) -> Any:
    from proj.celery import durable

    return durable


@pytest.fixture(scope="session")
def superuser(django_ready: None) -> Any:
    from django.contrib.auth.models import User

    return User.objects.create_superuser("admin", "admin@example.com", "pw")


@pytest.fixture
def admin_client(superuser: Any) -> Any:
    from django.test import Client

    client = Client()
    client.force_login(superuser)
    return client


@pytest.fixture
def order_id() -> str:
    return f"order-{uuid.uuid4().hex[:10]}"
