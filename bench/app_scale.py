"""The app with a million-cell query, in a real browser (issue 15): how long each result page takes.

    CELLANNOT_NUM_THREADS=2 .venv/bin/python bench/app_scale.py                 # 1M-cell query
    .venv/bin/python bench/app_scale.py --query bench/results/scale/query_100000.h5ad

Starts ``streamlit run app.py`` as the README does (a fresh runs folder under
``bench/results/app_scale``), and drives Debian's chromium with Playwright through what a user
does: Data page -> reference by server path (kang_ctrl, 8,684 cells) -> query by server path (the
resampled pbmc3k file of ``bench/scale.py``, 1,000,000 cells by default, 5.6 GB: above
``CELLANNOT_STREAM_QUERY_MB`` it is held as a seeded sample of 20,000 cells) -> Train the default
model -> wait until the run is done (every cell labelled in chunks) -> each result page twice. It
prints, per page, the seconds from the click in the navigation to the page's main figure drawn and
the script idle: the first visit (which computes and caches what the page needs, e.g. the UMAP)
and the second (the target: within 5 s), plus the load, training and labelling times and the
server's peak resident memory.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CELLANNOT_SHARED_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "bench" / "results" / "app_scale"
sys.path.insert(0, str(ROOT / "tests" / "app"))

from test_browser import (CHROMIUM, STREAMLIT, VIEWPORT, _free_port, _key, _select, goto_page,  # noqa: E402
                          sync_api, wait_idle, wait_plot)

PAGES = {  # page title -> (its URL path, what shows that it is ready)
    "Label transfer": ("results", ("plot", "heatmap")),
    "Latent space": ("latent", ("plot", "latent")),
    "Calibration & novelty": ("calibration", ("plot", "reliability")),
    "Explain": ("explain", ("text", "reference markers")),
    "Runs": ("runs", ("table", None)),
}


def _nav(page, title: str, path: str) -> None:
    """A click on the page's link in the sidebar (found by its address: after a run this server's
    sidebar sometimes lists the pages by file name), then its heading."""
    page.locator(f'[data-testid="stSidebarNav"] a[href$="/{path}"]').first.click()
    page.get_by_role("heading", name=title, exact=False).first.wait_for(timeout=LONG_MS)
LONG_MS = int(float(os.environ.get("APP_SCALE_TIMEOUT_S", "3600")) * 1000)


def _peak_rss_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def _ready(page, what: tuple[str, str | None]) -> None:
    kind, arg = what
    if kind == "plot":
        wait_plot(page, arg, LONG_MS)
    elif kind == "text":
        page.get_by_text(arg).first.wait_for(timeout=LONG_MS)
    else:
        page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=LONG_MS)
    wait_idle(page, LONG_MS)


def _load_path(page, role: str, path: Path, nth: int) -> float:
    t0 = time.time()
    page.get_by_role("tab", name="Path on the server").nth(nth).click()  # one pair of tabs per role
    page.locator(f"{_key(f'w_path_{role}')} input").fill(str(path))
    page.locator(f"{_key(f'w_path_load_{role}')} button").click()
    page.locator('[data-testid="stCaptionContainer"]', has_text=path.name).first.wait_for(timeout=LONG_MS)
    wait_idle(page, LONG_MS)
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", default=str(DATA / "kang_pbmc_ctrl_8684.h5ad"))
    ap.add_argument("--query", default=str(ROOT / "bench" / "results" / "scale" / "query_1000000.h5ad"))
    ap.add_argument("--label", default="cell_type_harmonized")
    args = ap.parse_args()
    ref, qry = Path(args.reference).resolve(), Path(args.query).resolve()
    if not qry.is_file():
        sys.exit(f"error: {qry} not found; make it with: .venv/bin/python bench/scale.py --sizes 1000000")
    runs = OUT / f"runs-{time.strftime('%Y%m%d-%H%M%S')}"
    runs.mkdir(parents=True)
    port = _free_port()
    env = dict(os.environ, CELLANNOT_RUNS=str(runs), PYTHONUNBUFFERED="1")
    log = open(runs / "server.log", "w")
    server = subprocess.Popen([str(STREAMLIT), "run", "app.py", "--server.port", str(port), "--server.headless", "true",
                               "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        time.sleep(3)
        with sync_api.sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                   args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                         "--disable-background-networking"])
            page = b.new_context(viewport=VIEWPORT).new_page()
            page.set_default_timeout(LONG_MS)
            try:
                _walk(page, url, ref, qry, args, server, rows)
            except Exception:
                page.screenshot(path=str(runs / "failure.png"), full_page=True)
                print(f"failed: screenshot {runs / 'failure.png'}", flush=True)
                raise
            b.close()
    finally:
        peak = _peak_rss_gb(server.pid)
        server.terminate()
        server.wait(timeout=30)
        log.close()
    second = [s for t, v, s, e in rows if v == "second"]
    print(f"\nserver peak RSS {peak:.2f} GB; second visits: max {max(second):.1f} s over {len(second)} pages "
          f"(target <= 5 s); errors on pages: {sum(e for *_, e in rows)}")


def _walk(page, url: str, ref: Path, qry: Path, args, server, rows: list) -> None:
    for _ in range(60):
        try:
            page.goto(f"{url}/data")
            break
        except Exception:  # noqa: BLE001 - the server is still starting
            time.sleep(1)
    page.get_by_role("heading", name="Data").first.wait_for()
    wait_idle(page, LONG_MS)
    t_ref = _load_path(page, "reference", ref, 0)
    t_q = _load_path(page, "query", qry, 1)
    print(f"loaded the reference ({ref.name}) in {t_ref:.1f} s and the query ({qry.name}, "
          f"{qry.stat().st_size / 1e9:.1f} GB) in {t_q:.1f} s", flush=True)
    _select(page, "w_label_key", args.label)
    _select(page, "w_query_label_key", args.label)
    goto_page(page, "Train")
    page.wait_for_function("() => { const b = document.querySelector('.st-key-w_start button');"
                           " return b && !b.disabled; }", timeout=LONG_MS)
    t0 = time.time()
    page.locator(f"{_key('w_start')} button").click()
    page.get_by_text("See the label transfer").or_(page.get_by_text("Training failed")).first.wait_for(
        timeout=LONG_MS)
    run_secs = time.time() - t0
    if page.get_by_text("Training failed").count():
        sys.exit("error: the run failed: " + page.locator('[data-testid="stMain"]').inner_text()[:2000])
    wait_idle(page, LONG_MS)
    print(f"trained and labelled every cell in {run_secs:.0f} s (server peak RSS so far "
          f"{_peak_rss_gb(server.pid):.2f} GB)", flush=True)
    for visit in ("first", "second"):
        for title, (path, what) in PAGES.items():
            t0 = time.time()
            _nav(page, title, path)
            _ready(page, what)
            secs = time.time() - t0
            errors = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]').count()
            rows.append((title, visit, secs, errors))
            print(f"  {title:24s} {visit:6s} visit {secs:6.1f} s" + (f"  ERRORS {errors}" if errors else ""),
                  flush=True)


if __name__ == "__main__":
    main()
