"""docs/tutorial.md runs: its Python and ini blocks are the files of a project, written out here; the
script of step 4 runs against the plugin's worker, and the tests of step 6 pass.

The bash blocks are commands (install, start a worker, the CLI) and are not run; what they run is
the code tested here and the CLI's own tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tutorial.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
RUN_SCRIPT = '''
import runpy


def test_the_script_of_step_4(durable, durable_worker, capsys):
    runpy.run_path("try_it.py", run_name="__main__")
    assert capsys.readouterr().out.splitlines()[-1] == "shipped order-1"
'''


def tutorial_files() -> dict[str, str]:
    """Every python and ini block, by the path its first line names (a block without one is an error)."""
    files: dict[str, str] = {}
    for language, code in BLOCK.findall(TUTORIAL.read_text()):
        if language == "bash":
            continue
        first = code.splitlines()[0]
        assert first.startswith("# ") and "." in first, f"a {language} block that names no file: {first!r}"
        files[first[2:].strip()] = code
    return files


def test_the_tutorial_runs(pytester: pytest.Pytester) -> None:
    files = tutorial_files()
    assert set(files) == {"shop/workflows.py", "try_it.py", "pytest.ini", "tests/test_checkout.py"}
    for path, code in files.items():
        target = pytester.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code)
    (pytester.path / "shop" / "__init__.py").touch()
    (pytester.path / "tests" / "test_script.py").write_text(RUN_SCRIPT)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:celery")
    result.assert_outcomes(passed=3)
