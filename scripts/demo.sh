#!/usr/bin/env bash
# Install the package and run the checkout demo on the embedded default: an SQLite store and
# kombu's filesystem:// broker, so no server is needed. A real celery worker is started for it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e .
exec .venv/bin/python examples/run_demo.py
