#!/usr/bin/env bash
# Set up (first time) and run the whole test suite, browser tests included.
# Usage: bash run_tests.sh [extra pytest args]
set -uo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv || exit 1
fi
# The package as the README installs it (editable, with the test extra); again when pyproject.toml changed.
if ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in
    ('cellannot_core', 'streamlit', 'torch', 'scanpy', 'umap', 'plotly', 'safetensors', 'pytest', 'playwright', 'dask', 'xarray')))" \
    2>/dev/null || [ ! -x .venv/bin/cellannot ] || [ pyproject.toml -nt .venv/bin/cellannot ]; then
  .venv/bin/pip install --disable-pip-version-check -q -e ".[test]" || exit 1
fi
# Real-browser tests use Debian's chromium (never `playwright install`).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; browser tests will be skipped"
fi
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" = "5" ]; then
  echo "pytest collected no tests"; exit 0
fi
exit "$rc"
