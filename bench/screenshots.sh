#!/usr/bin/env bash
# The README's screenshots: the real-browser test's click path, its images written to assets/screenshots/.
# (A plain test run writes them to a temporary folder and never changes tracked files.)
set -euo pipefail
cd "$(dirname "$0")/.."
CELLANNOT_SCREENSHOTS="$PWD/assets/screenshots" .venv/bin/python -m pytest -q tests/app/test_browser.py "$@"
