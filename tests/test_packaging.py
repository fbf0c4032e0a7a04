"""The package as a user gets it (issue 16): build a wheel from a clean copy of the sources,
install it into a fresh virtualenv, then, from a folder outside the checkout, run
``cellannot --version``, ``cellannot models``, the README's Python example (``ca.annotate`` on
the bundled demo pair, in memory) and ``cellannot app`` (the packaged web app answers and draws
its home page).

The fresh virtualenv gets the already-installed dependencies through a ``.pth`` line (no
download; the wheel's own ``Requires-Dist`` are checked with ``pip check``), and the wheel is
installed with ``--no-deps``: what is tested is the package, not the index.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_BLOCK = re.compile(r"<!-- readme-example: start.*?-->\s*```python\n(.*?)```\s*<!-- readme-example: end -->",
                          re.S)
IGNORE = shutil.ignore_patterns(".venv*", ".git", "runs", "build", "dist", "*.egg-info", "__pycache__", "results",
                                ".pytest_cache", "screenshots", "tests")


def readme_example() -> str:
    m = README_BLOCK.search((ROOT / "README.md").read_text())
    assert m, "README has no marked Python example"
    return m.group(1)


def _run(cmd, *, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtualenv with the wheel built from a clean copy of the sources."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", src],
         cwd=tmp)
    wheels = list((tmp / "dist").glob("cellannot-*.whl"))
    assert len(wheels) == 1
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip())
    (site / "_cellannot_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheels[0]], cwd=tmp)
    work = tmp / "work"
    (work / "assets").mkdir(parents=True)
    for f in ("kang_pbmc_example_sce_1556.h5ad", "pbmc3k_seurat_2638.h5ad"):
        shutil.copy(ROOT / "assets" / f, work / "assets" / f)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(CELLANNOT_RUNS=str(tmp / "runs"), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return {"venv": venv, "py": py, "work": work, "env": env, "tmp": tmp}


def test_the_wheel_installs_and_its_requirements_hold(installed):
    r = subprocess.run([installed["py"], "-m", "pip", "check"], cwd=installed["work"], env=installed["env"],
                       capture_output=True, text=True, timeout=300)
    # the overlay venv's own setuptools may be older than torch asks; only cellannot's requirements matter here
    assert not [line for line in r.stdout.splitlines() if line.startswith("cellannot")], r.stdout
    r = _run([installed["py"], "-c", "import cellannot_core, cellannot_app; print(cellannot_core.__file__); "
              "print(list(cellannot_app.__path__))"], cwd=installed["work"], env=installed["env"])
    assert all(str(installed["venv"]) in line for line in r.stdout.splitlines()), r.stdout  # not the checkout
    r = _run([installed["py"], "-c", "from cellannot_core.models.baselines.seurat import R_SCRIPT; "
              "print(R_SCRIPT.is_file(), R_SCRIPT.read_text().count('FindTransferAnchors'))"],
             cwd=installed["work"], env=installed["env"])
    assert r.stdout.split() == ["True", "2"], r.stdout  # seurat's R script ships as a package file


def test_cellannot_version_and_models(installed):
    exe = installed["venv"] / "bin" / "cellannot"
    r = _run([exe, "--version"], cwd=installed["work"], env=installed["env"])
    assert re.fullmatch(r"cellannot \d+\.\d+\.\d+\s*", r.stdout), r.stdout
    r = _run([exe, "models"], cwd=installed["work"], env=installed["env"])
    assert r.stdout.startswith("scanvi_svm (default)") and "logreg" in r.stdout
    r = _run([installed["py"], "-m", "cellannot_core", "--version"], cwd=installed["work"], env=installed["env"])
    assert r.stdout.startswith("cellannot ")


def test_the_readme_python_example_runs_from_the_installed_package(installed):
    script = installed["work"] / "example.py"
    script.write_text("import cellannot_core as ca\nassert 'venv' in ca.__file__, ca.__file__\n" + readme_example())
    r = _run([installed["py"], script], cwd=installed["work"], env=installed["env"], timeout=900)
    assert "Unknown:" in r.stdout and "scanvi_svm" in r.stdout
    assert (installed["work"] / "my_model" / "bundle.json").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cellannot_app_serves_the_packaged_app(installed):
    port = _free_port()
    log = installed["tmp"] / "app.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([installed["venv"] / "bin" / "cellannot", "app", "--port", str(port)],
                                cwd=installed["work"], env=installed["env"], stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            assert time.time() < deadline, log.read_text()
            time.sleep(0.5)
        chromium = Path("/usr/bin/chromium")
        sync_api = pytest.importorskip("playwright.sync_api")
        if not chromium.is_file():
            pytest.skip("no chromium to open the page")
        with sync_api.sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=str(chromium), headless=True,
                                   args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                         "--disable-background-networking"])
            try:
                page = b.new_page()
                page.goto(f"http://127.0.0.1:{port}")
                page.get_by_role("heading", name="cellannot").first.wait_for(timeout=120_000)
                page.locator(".st-key-w_demo button").click()  # the demo pair shipped in the wheel
                page.get_by_text("Demo data loaded").wait_for(timeout=120_000)
                assert page.locator('[data-testid="stException"]').count() == 0
            finally:
                b.close()
    finally:
        proc.terminate()  # `cellannot app` is the server itself: the stop reaches Streamlit
        proc.wait(timeout=30)
    time.sleep(1)
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
        pytest.fail("the app still answers after `cellannot app` was stopped (an orphaned server)")
    except OSError:
        pass
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "127.0.0.1" in text
