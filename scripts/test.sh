#!/usr/bin/env bash
# Install everything and run the whole test suite (lint, types, tests) on a fresh machine.
# Extra arguments go to pytest, e.g. scripts/test.sh -k messaging
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,django,pytest,otel,dashboard,docs]'
bash scripts/chromium.sh  # the dashboard's browser test (skipped, saying so, when it cannot be installed)
.venv/bin/ruff check celery_durable tests examples benchmarks
.venv/bin/mypy
# The documentation site, warnings as errors (a broken link, a docstring naming a parameter the
# signature lacks); built into a temporary directory, never committed.
site="$(mktemp -d)"
.venv/bin/mkdocs build --strict --quiet --site-dir "$site"
rm -rf "$site"
.venv/bin/pytest "$@"
