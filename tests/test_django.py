"""Django integration: the URL built from a DATABASES entry (here), and the test project under
``tests/django_project`` run in one process per database (SQLite, PostgreSQL), since Django's
settings can be configured only once per process."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests import services

pytest.importorskip("django", reason="install the django extra: pip install -e '.[test,django]'")

from celery_durable.contrib.django.conf import url_from_settings
from celery_durable.errors import ConfigurationError


def test_postgresql_entry_becomes_a_psycopg_url() -> None:
    url = url_from_settings(
        "postgresql",
        {
            "NAME": "shop",
            "USER": "app",
            "PASSWORD": "p@ss:word",
            "HOST": "db.internal",
            "PORT": "6432",
            "OPTIONS": {"sslmode": "require", "connect_timeout": 5, "server_side_binding": True, "pool": True},
        },
    )
    assert url == "postgresql+psycopg://app:p%40ss%3Aword@db.internal:6432/shop?connect_timeout=5&sslmode=require"


def test_postgresql_socket_directory_and_defaults() -> None:
    assert url_from_settings("postgresql", {"NAME": "shop", "HOST": "/var/run/postgresql", "USER": "", "PORT": ""}) == (
        "postgresql+psycopg:///shop?host=%2Fvar%2Frun%2Fpostgresql"
    )


def test_sqlite_entry_becomes_an_absolute_file_url(tmp_path: Path) -> None:
    assert url_from_settings("sqlite", {"NAME": tmp_path / "db.sqlite3"}) == f"sqlite:///{tmp_path}/db.sqlite3"


@pytest.mark.parametrize(
    ("vendor", "params", "message"),
    [
        ("sqlite", {"NAME": ":memory:"}, "in-memory"),
        ("postgresql", {"NAME": "shop", "OPTIONS": {"context": object(), "sslcert": ["x"]}}, "sslcert"),
        ("mysql", {"NAME": "shop"}, "mysql database"),
    ],
)
def test_unusable_entries_are_refused(vendor: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        url_from_settings(vendor, params, "default")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_django_project(database: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CD_DJANGO_DB": database,
        "CD_BROKER": f"{services.REDIS_URL}/{uuid.uuid4().int % 14 + 1}",
        "CD_QUEUE": f"q{uuid.uuid4().hex[:10]}",
        "CD_PREFIX": f"t{uuid.uuid4().hex[:8]}_",
        "CD_DJANGO_SQLITE": str(tmp_path / "db.sqlite3"),
    }
    pg_name = services.create_database() if database == "postgresql" else None
    if pg_name:
        env["CD_DJANGO_PG_NAME"] = pg_name
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/django_project"],
            cwd=services.ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        if pg_name:
            services.drop_database(pg_name)
    assert done.returncode == 0, f"the Django project's tests failed on {database}:\n{done.stdout}\n{done.stderr}"
    summary = done.stdout.strip().splitlines()[-1]
    # A skipped test in the project would pass here unseen: every one of them must have run.
    assert "skipped" not in summary and "deselected" not in summary, f"not every Django test ran: {summary}"
