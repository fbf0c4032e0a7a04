#!/usr/bin/env bash
# Set up (first time) and serve the cellannot app on http://127.0.0.1:8501 .
# Usage: bash run_app.sh [--port N] [--address A] [--runs-dir DIR]  (any option of `cellannot app`)
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# find_spec, not import: importing umap compiles numba code (half a minute) before the server starts
if ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in
    ('cellannot_core', 'streamlit', 'torch', 'scanpy', 'umap', 'plotly', 'safetensors')))" 2>/dev/null \
    || [ ! -x .venv/bin/cellannot ]; then
  echo "installing cellannot and its dependencies into .venv (first run only) ..."
  .venv/bin/pip install --disable-pip-version-check -q -e .
fi
# options given here come after the defaults, and argparse keeps the last (--port=N works as --port N)
exec .venv/bin/cellannot app --address 127.0.0.1 --port 8501 "$@"
