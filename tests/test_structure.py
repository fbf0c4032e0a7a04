"""Layering: the core never imports streamlit, and heavy optional libraries (umap) are imported
lazily, inside the functions that need them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "cellannot_core"

_PROBE = r"""
import importlib, json, pkgutil, sys
import cellannot_core
names = []
for info in pkgutil.walk_packages(cellannot_core.__path__, "cellannot_core."):
    if info.name.endswith("__main__"):
        continue  # runs the CLI
    importlib.import_module(info.name)
    names.append(info.name)
import cellannot_core.embed  # noqa: F401  (explicitly: it wraps umap)
print(json.dumps({"imported": names,
                  "streamlit": sorted(m for m in sys.modules if m == "streamlit" or m.startswith("streamlit.")),
                  "umap": sorted(m for m in sys.modules if m == "umap" or m.startswith("umap.")),
                  "pynndescent": "pynndescent" in sys.modules}))
"""


def test_core_imports_without_streamlit_or_umap():
    env = {**os.environ, "CELLANNOT_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    imported = set(res["imported"])
    # every subpackage was really imported
    subpackages = {f"cellannot_core.{p.name}" for p in CORE.iterdir() if (p / "__init__.py").is_file()}
    assert subpackages and subpackages <= imported, subpackages - imported
    for mod in ("cellannot_core.embed", "cellannot_core.pipeline", "cellannot_core.cli", "cellannot_core.runs",
                "cellannot_core.models.energy", "cellannot_core.samplers.sgld", "cellannot_core.training.loop"):
        assert mod in imported, mod
    assert res["streamlit"] == [], res["streamlit"]
    assert res["umap"] == [], f"umap imported at import time: {res['umap']}"
    assert res["pynndescent"] is False


def test_core_source_never_mentions_streamlit_imports():
    offenders = []
    for path in CORE.rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            s = line.strip()
            if s.startswith(("import streamlit", "from streamlit")) or "import_module(\"streamlit" in s:
                offenders.append(f"{path.relative_to(ROOT)}:{i}")
    assert offenders == []


def test_umap_only_imported_inside_functions():
    """A module-level `import umap` would compile numba code at import (20-60 s)."""
    offenders = []
    for path in CORE.rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.startswith(("import umap", "from umap")):  # column 0 = module level
                offenders.append(f"{path.relative_to(ROOT)}:{i}")
    assert offenders == []


def test_server_config_binds_locally_and_watches_no_files():
    """`streamlit run app.py` alone (not only run_app.sh) listens on 127.0.0.1, and no file watcher
    keeps a core busy while the app sits idle (bench/idle_cpu.py: 18.5 CPU-s per 20 s with the
    watcher, 0.08 without)."""
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert cfg["address"] == "127.0.0.1"
    assert cfg["fileWatcherType"] == "none"
    assert cfg.get("runOnSave", False) is False


def test_server_config_does_not_collect_all_garbage_after_every_script_run():
    """Streamlit's default full gc.collect after each script run (fragments included) held the
    server for seconds under five visitors (a py-spy profile of the load test: 79% of its samples;
    health check median 7.7 s): off, for `streamlit run app.py` and `cellannot app` alike."""
    import tomllib

    from cellannot_core.cli import app_command

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["runner"]
    assert cfg["postScriptGC"] is False
    assert "--runner.postScriptGC=false" in app_command(ROOT / "app.py", address="127.0.0.1", port=8501)


def test_the_servers_upload_size_is_the_uploaders_own_limit(monkeypatch):
    """Streamlit receives a request's whole body up to server.maxUploadSize before the app's guard
    sees it: `cellannot app` lowers it to the uploaders' limit (a third of the memory budget)."""
    from cellannot_core.cli import app_command

    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "1.5")
    assert "--server.maxUploadSize=512" in app_command(ROOT / "app.py", address="127.0.0.1", port=8501)
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "30")
    assert "--server.maxUploadSize=2000" in app_command(ROOT / "app.py", address="127.0.0.1", port=8501)
