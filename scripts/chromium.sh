#!/usr/bin/env bash
# Install Debian's chromium for the dashboard's browser test, once (Playwright drives it through its
# executable path: `playwright install` downloads are not used). Never fails the run: when chromium
# cannot be installed, tests/e2e/test_dashboard.py is skipped with a message saying why.
set -uo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
  echo "chromium is missing and this user cannot install it: the dashboard's browser test will be skipped" >&2; exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is missing and there is no apt-get: the dashboard's browser test will be skipped" >&2; exit 0
fi
echo "installing chromium (once) for the dashboard's browser test..." >&2
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium; } >/tmp/celery_durable-chromium.log 2>&1; then
  echo "could not install chromium (see /tmp/celery_durable-chromium.log): the dashboard's browser test will be skipped" >&2
fi
exit 0
