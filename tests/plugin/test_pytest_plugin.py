"""The pytest plugin as a user meets it: a project with its own workflows and tests, run by pytest in a subprocess."""

from __future__ import annotations

import pytest

from . import user_project

pytest_plugins = ["pytester"]

POSTGRES_CONFTEST = """
import os

import pytest


@pytest.fixture
def durable_database_url():
    return os.environ["SHOP_TEST_DATABASE_URL"]
"""


def write_project(pytester: pytest.Pytester) -> None:
    pytester.makeini(user_project.PYTEST_INI)
    pytester.mkpydir("shop")
    pytester.makepyfile(**{"shop/workflows": user_project.WORKFLOWS, "test_checkout": user_project.TESTS})


def test_a_users_workflow_tests_pass_with_time_skipped(pytester: pytest.Pytester) -> None:
    write_project(pytester)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=user_project.TEST_COUNT)
    assert not (pytester.path / "celery_durable.sqlite3").exists(), "the Durable's own store was never opened"


def test_the_same_tests_on_postgresql(
    pytester: pytest.Pytester, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_project(pytester)
    pytester.makeconftest(POSTGRES_CONFTEST)
    monkeypatch.setenv("SHOP_TEST_DATABASE_URL", pg_database)
    # Two of them are enough to show the per-test tables; -p no:celery: runs without pytest-celery too.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:celery", "-k", "payment or hour")
    result.assert_outcomes(passed=2, deselected=user_project.TEST_COUNT - 2)


def test_a_project_that_uses_no_fixture_imports_nothing_and_changes_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
        import sys

        def test_plain(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("celery_durable")
            loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("celery", "sqlalchemy", "kombu"))
            assert loaded == []
        """
    )
    # pytest-celery's own plugin imports Celery: leave it out to see what ours imports.
    pytester.runpytest_subprocess("-p", "no:celery").assert_outcomes(passed=1)


def test_without_durable_app_the_error_says_what_to_set(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_missing="def test_it(durable):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:celery")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*set `durable_app = yourpackage.module:durable`*"])
