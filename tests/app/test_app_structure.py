"""Layout rules of the app: thin pages, pages -> ui -> core, the core never imports streamlit."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pages_are_thin_and_import_no_torch():
    pages = sorted((ROOT / "pages").glob("*.py"))
    assert len(pages) >= 6
    for p in pages:
        text = p.read_text()
        assert len(text.splitlines()) < 120, p.name
        assert "import torch" not in text and "cellannot_core.pipeline" not in text, p.name


def test_app_py_only_configures():
    text = (ROOT / "app.py").read_text()
    assert "st.navigation" in text and "init_state()" in text
    assert len(text.splitlines()) < 40


def test_core_never_imports_streamlit():
    code = ("import sys, cellannot_core.pipeline, cellannot_core.runs, cellannot_core.plots, "
            "cellannot_core.data, cellannot_core.embed; assert 'streamlit' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_upload_limit_configured():
    text = (ROOT / ".streamlit" / "config.toml").read_text()
    assert "maxUploadSize = 2000" in text


def test_job_runner_is_streamlit_free():
    code = "import sys, ui.jobs; assert 'streamlit' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
