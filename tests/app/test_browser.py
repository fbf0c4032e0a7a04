"""Real-browser end-to-end test: the click path of a new user, in headless Debian chromium.

A real ``streamlit run app.py`` server (runs in a temporary ``$CELLANNOT_RUNS``) is driven with
Playwright: Home -> *Try the demo* -> Train (the default scanvi_svm, quick run: a 60 s training budget) -> Label transfer ->
Latent space (PCA, generated cells) -> Calibration & novelty -> download of the annotated
``.h5ad``, which is opened with anndata -> reload (data and run still there) -> every result page
-> a second model -> Compare using both existing runs -> the query labelled with a finished run's model. Every page is checked for Streamlit exception and
error boxes, and full-page screenshots are written to ``$CELLANNOT_SCREENSHOTS`` when set (the
README's images: ``bash bench/screenshots.sh``), else to a temporary folder, so a test run never
changes tracked files.

Uses the system chromium (``/usr/bin/chromium``); ``playwright install`` is never needed.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
STREAMLIT = Path(sys.executable).with_name("streamlit")
_SHOTS_ASKED = bool(os.environ.get("CELLANNOT_SCREENSHOTS"))
SHOTS = Path(os.environ.get("CELLANNOT_SCREENSHOTS") or tempfile.mkdtemp(prefix="cellannot_screenshots_"))
VIEWPORT = {"width": 1400, "height": 1000}
N_QUERY = 2638  # cells of the demo query (pbmc3k_seurat_2638)
TRAIN_TIMEOUT_S = 600  # 3 latent-model epochs on 1,556 + 2,638 cells: ~50 s quiet, 4+ min on a loaded 2-core box
PAGE_TIMEOUT_MS = 120_000  # a page's first render (the first UMAP compiles numba code)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian chromium not installed at /usr/bin/chromium "
                                                      "(run_tests.sh installs it with apt-get when root)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")


# ------------------------------------------------------------------------------ server + browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no server log)"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``streamlit run app.py`` on a free local port with a fresh runs directory; yields its URL."""
    if not STREAMLIT.is_file():
        pytest.skip(f"streamlit executable not found next to {sys.executable}")
    tmp = tmp_path_factory.mktemp("browser")
    port = _free_port()
    env = dict(os.environ, CELLANNOT_RUNS=str(tmp / "runs"), PYTHONUNBUFFERED="1")
    env.setdefault("CELLANNOT_NUM_THREADS", "1")  # the machine is shared with the browser
    log_path = tmp / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [str(STREAMLIT), "run", "app.py", "--server.address", "127.0.0.1", "--server.port", str(port),
         "--server.headless", "true", "--server.fileWatcherType", "none",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with code {proc.returncode}:\n{_tail(log_path)}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200 and r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"streamlit did not answer /_stcore/health within 120 s:\n{_tail(log_path)}")
            time.sleep(0.5)
        yield {"url": url, "log": log_path, "tmp": tmp}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                     "--disable-background-networking"])
        try:
            yield b
        finally:
            b.close()


# ------------------------------------------------------------------------------ helpers


def _key(key: str) -> str:
    """CSS selector of the element container Streamlit gives a widget/element with ``key=``."""
    return f".st-key-{key}"


def wait_idle(page, timeout_ms: int = PAGE_TIMEOUT_MS) -> None:
    """Wait until the script run finished (the app root reports ``notRunning``) and no spinner
    is showing. Call it after waiting for something the run must produce: right after a click
    the rerun may not have started yet."""
    page.wait_for_function(
        """() => { const app = document.querySelector('[data-testid="stApp"]');
                   return app && app.getAttribute('data-test-script-state') === 'notRunning'
                          && !document.querySelector('[data-testid="stSpinner"]'); }""",
        timeout=timeout_ms)
    page.wait_for_timeout(300)  # let the last deltas paint


def assert_no_errors(page, where: str) -> None:
    exc = page.locator('[data-testid="stException"]')
    assert exc.count() == 0, f"{where}: Streamlit exception box: {exc.first.inner_text()}"
    err = page.locator('[data-testid="stAlertContentError"]')
    assert err.count() == 0, f"{where}: error box: {err.first.inner_text()}"


def wait_plot(page, key: str, timeout_ms: int = PAGE_TIMEOUT_MS):
    """The plotly chart of ``st.plotly_chart(key=...)`` (or of a CSS selector starting with
    ``[``), once plotly drew its SVG."""
    chart = page.locator(f'{key if key.startswith("[") else _key(key)} [data-testid="stPlotlyChart"]')
    chart.locator(".main-svg").first.wait_for(state="visible", timeout=timeout_ms)
    return chart


@pytest.fixture(scope="module", autouse=True)
def _temporary_screenshots_removed():
    """Screenshots nobody asked for (no ``$CELLANNOT_SCREENSHOTS``) are removed with their folder."""
    yield
    if not _SHOTS_ASKED:
        shutil.rmtree(SHOTS, ignore_errors=True)


def screenshot(page, name: str) -> None:
    """Full-page screenshot. Streamlit scrolls inside its main container (the document is one
    viewport high), so the viewport is stretched to the content height for the shot."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.mouse.move(VIEWPORT["width"] - 5, VIEWPORT["height"] - 5)  # no hover effects in the shot
    height = page.evaluate(
        """() => { const m = document.querySelector('[data-testid="stMain"]');
                   return m ? m.scrollHeight : document.body.scrollHeight; }""")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], min(int(height), 8000))})
    page.wait_for_timeout(800)  # plotly re-lays out to the new size
    try:
        page.screenshot(path=str(SHOTS / name), full_page=True)
    finally:
        page.set_viewport_size(VIEWPORT)


STALL_S = 90  # a run finished on disk this long ago that the page still does not show: its websocket was lost
RELOADS: list[str] = []  # pages a load-test visitor had to reload (printed by the load test)


def _wait_or_reload(page, shown, runs_root: Path) -> None:
    """Wait for ``shown`` (the finished run's panel). Under the five-session load a visitor's
    websocket was seen dropped by the server (starlette "send once a close message has been
    sent") and that page kept showing the run as queued after it had finished; a visitor then
    reloads, and the run reopens (the session test covers the reload). This does the same once
    the run's status.json has said done for :data:`STALL_S`, and records it in :data:`RELOADS`."""
    deadline, done_since, reloaded = time.time() + TRAIN_TIMEOUT_S, None, False
    while True:
        try:
            shown.wait_for(timeout=10_000)
            return
        except sync_api.TimeoutError:
            if time.time() > deadline:
                raise
        run = _param(page.url, "run")
        status = runs_root / run / "status.json" if run else None
        if status is not None and status.is_file() and '"done"' in status.read_text():
            done_since = done_since or time.time()
            if not reloaded and time.time() - done_since > STALL_S:
                RELOADS.append(run)
                page.reload()
                reloaded = True


def start_and_wait(page, previous: str | None = None, runs_dir: Path | None = None,
                   runs_root: Path | None = None) -> None:
    """Click *Start training* and wait until the run is done (fails on a failed or cancelled run);
    ``previous``: the run shown before (then the new run's status is read from ``runs_dir``, since
    the previous run's panel also says it is done); ``runs_root``: the server's runs folder, to
    reload a page that stalled after its run finished (:func:`_wait_or_reload`)."""
    page.locator(f"{_key('w_start')} button").click()
    if previous:  # the new run's panel replaces the previous run's (whose "done" must not count)
        page.wait_for_function("p => { const r = new URLSearchParams(location.search).get('run');"
                               " return r && r !== p; }", arg=previous, timeout=PAGE_TIMEOUT_MS)
        status = runs_dir / _param(page.url, "run") / "status.json"
        deadline = time.time() + TRAIN_TIMEOUT_S
        while '"done"' not in (status.read_text() if status.is_file() else "") and time.time() < deadline:
            time.sleep(1)
    page.get_by_role("heading", name="Current run").wait_for()  # the page's default timeout (longer under load)
    done = page.get_by_text("See the label transfer")
    failed = page.get_by_text("The run failed").or_(page.get_by_text("The run was cancelled"))
    if runs_root is None:
        done.or_(failed).first.wait_for(timeout=TRAIN_TIMEOUT_S * 1000)
    else:
        _wait_or_reload(page, done.or_(failed).first, runs_root)
    assert failed.count() == 0, f"training did not finish: {failed.first.inner_text()}"
    wait_idle(page)
    assert_no_errors(page, "Train after the run")


def download_annotated(page, run_id: str, timeout_ms: int):
    """Label transfer page: *Prepare* the annotated query, then download it (one click each)."""
    button = page.locator(f"{_key(f'dl_h5ad_{run_id}')} button")
    prepare = page.locator(f"{_key(f'dl_h5ad_{run_id}_prepare')} button")
    for attempt in range(3):  # under load (the five-session test) a click during a rerun was seen to be lost once
        if button.count() == 0 and prepare.count() > 0:
            prepare.click()
        try:
            button.wait_for(timeout=timeout_ms // 3)
            break
        except sync_api.TimeoutError:
            if attempt == 2:
                raise
            wait_idle(page, timeout_ms)
    wait_idle(page, timeout_ms)
    with page.expect_download(timeout=timeout_ms) as dl_info:
        button.click()
    return dl_info.value


def goto_page(page, title: str) -> None:
    """Open a page from the sidebar navigation (client-side: the session is kept). The page's URL
    is waited for first: a heading of the page left can hold the title's words (Compare models'
    headings name runs), and the Runs page was once read while Compare models was still shown."""
    from urllib.parse import urlparse

    link = page.locator('[data-testid="stSidebarNav"] a', has_text=title).first
    path = urlparse(link.get_attribute("href") or "").path.rstrip("/")
    link.click()
    page.wait_for_url(lambda url: urlparse(url).path.rstrip("/").endswith(path), timeout=PAGE_TIMEOUT_MS)
    page.get_by_role("heading", name=title, exact=False).first.wait_for(timeout=PAGE_TIMEOUT_MS)


# ------------------------------------------------------------------------------ the click path


def test_a_page_named_first_on_a_fresh_server_gets_the_apps_menu(server, browser):
    """The first request after a server start that names a page (a reload of an open tab) ran that
    page by itself, under Streamlit's menu of file names ("app", "latent", ...), until someone loaded
    the home page. It must run through app.py: the app's own menu. (First in this module, so that
    the module's fresh server has seen no request before.)"""
    ctx = browser.new_context(viewport=VIEWPORT)
    page = ctx.new_page()
    try:
        page.goto(f"{server['url']}/latent", timeout=60_000)
        nav = page.locator('[data-testid="stSidebarNav"]')
        nav.get_by_text("Label transfer").wait_for(timeout=60_000)
        text = nav.inner_text()
        assert "Latent space" in text and "Calibration" in text, text
        assert "app" not in text.split() and "latent" not in text.split(), text
    finally:
        ctx.close()


def test_new_user_click_path(server, browser, tmp_path):
    import anndata as ad

    t0 = time.time()
    ctx = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    try:
        _click_path(page, server["url"], tmp_path, ad, server["tmp"] / "runs")
    except Exception as err:  # add the server's side of the story to any failure
        try:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        except Exception:  # noqa: BLE001
            pass
        raise AssertionError(f"{err}\n--- server log (tail) ---\n{_tail(server['log'])}\n"
                             f"(failure screenshot: {tmp_path / 'failure.png'})") from err
    finally:
        ctx.close()
    log = server["log"].read_text(errors="replace")
    assert "Traceback" not in log, f"the server logged an exception:\n{_tail(server['log'], 80)}"
    print(f"\nbrowser click path: {time.time() - t0:.0f} s")


def _click_path(page, url: str, tmp_path: Path, ad, runs_dir: Path) -> None:
    t0 = time.time()

    def step(name: str) -> None:
        print(f"  {time.time() - t0:6.1f} s  {name}")

    page.goto(url)

    # 1. Home: the pitch, the workflow, "Try the demo".
    page.get_by_role("heading", name="cellannot").first.wait_for(timeout=PAGE_TIMEOUT_MS)
    wait_idle(page)
    assert_no_errors(page, "Home")
    page.locator(f"{_key('w_demo')} button").click()
    page.get_by_text("Demo data loaded").wait_for(timeout=PAGE_TIMEOUT_MS)
    wait_idle(page)
    assert_no_errors(page, "Home after the demo")
    screenshot(page, "home.png")
    step("home + demo")

    # 2. Train: scanvi_svm (the default), quick run (60 s budget), start, wait until done.
    page.locator('[data-testid="stPageLink"] a', has_text="Go to training").first.click()
    page.get_by_role("heading", name="New training").wait_for(timeout=PAGE_TIMEOUT_MS)
    wait_idle(page)
    assert_no_errors(page, "Train")
    assert page.locator(f"{_key('w_model')} input").input_value().startswith("scanvi_svm")
    page.get_by_text("1,556 cells").first.wait_for()  # the demo pair is what will be trained on
    page.get_by_text("2,638 cells").first.wait_for()
    quick = page.locator(f'{_key("w_quick")} input[type="checkbox"]')
    if not quick.is_checked():
        page.locator(f"{_key('w_quick')} label").first.click()
    page.wait_for_function(
        """() => { const i = document.querySelector('.st-key-w_quick_seconds input');
                   return i && !i.disabled; }""")
    budget = page.locator(f"{_key('w_quick_seconds')} input")
    assert budget.input_value() == "60"  # a quick run is a time budget, not a cut in epochs
    wait_idle(page)
    start_and_wait(page)
    panel = page.locator('[data-testid="stMain"]').inner_text()
    assert "done" in panel and "epoch" in panel
    wait_plot(page, '[class*="st-key-curves_"]')  # loss / accuracy curves of the run
    screenshot(page, "train.png")
    step("trained (scanvi_svm, quick run)")

    # 3. Label transfer: heatmap with the Unknown row, counts, cells table.
    page.locator('[data-testid="stPageLink"] a', has_text="See the label transfer").first.click()
    page.get_by_role("heading", name="Label transfer").first.wait_for(timeout=PAGE_TIMEOUT_MS)
    heat = wait_plot(page, "heatmap")
    wait_plot(page, "counts")
    wait_plot(page, "confidence")
    wait_idle(page)
    assert_no_errors(page, "Label transfer")
    assert heat.locator("text", has_text="Unknown").count() > 0, "no Unknown row in the heatmap"
    assert page.get_by_text("Called Unknown").first.is_visible()
    assert page.get_by_text(f"{N_QUERY:,} of {N_QUERY:,} cells").first.is_visible()
    screenshot(page, "label_transfer.png")
    step("label transfer")

    # 4. Latent space: PCA (the fast one), generated cells on.
    goto_page(page, "Latent space")
    page.locator(_key("w_embed_method")).get_by_text("PCA (fast)").click()
    page.wait_for_function(
        """() => [...document.querySelectorAll('.st-key-latent .gtitle')]
                 .some(t => t.textContent.includes('PCA'))""", timeout=PAGE_TIMEOUT_MS * 2)
    wait_idle(page, PAGE_TIMEOUT_MS * 2)
    gen = page.locator(f'{_key("w_show_generated")} input[type="checkbox"]')
    if not gen.is_checked():
        page.locator(f"{_key('w_show_generated')} label").first.click()
        page.get_by_text("generated cells", exact=False).first.wait_for()
        wait_idle(page)
    assert gen.is_checked()
    latent = wait_plot(page, "latent")
    assert_no_errors(page, "Latent space")
    caption = page.locator('[data-testid="stCaptionContainer"]', has_text="query cells").first.inner_text()
    assert f"{N_QUERY:,} query cells" in caption and "generated cells" in caption, caption
    legend = latent.locator(".legendtext")
    for name in ("reference", "query", "generated"):
        assert legend.filter(has_text=name).count() > 0, f"no '{name}' in the latent legend"
    screenshot(page, "latent.png")
    step("latent space (PCA)")

    # 5. Calibration & novelty: reliability diagram and the Unknown count.
    goto_page(page, "Calibration & novelty")
    rel = wait_plot(page, "reliability")
    wait_plot(page, "novelty_hist")
    wait_plot(page, "cal_heatmap")
    wait_idle(page)
    assert_no_errors(page, "Calibration & novelty")
    assert rel.locator("text", has_text=re.compile("ECE|calibrat", re.I)).count() > 0
    metric = page.locator('[data-testid="stMetric"]', has_text="Unknown query cells")
    n_unknown = int(metric.locator('[data-testid="stMetricValue"]').inner_text().replace(",", ""))
    assert 0 < n_unknown < N_QUERY
    screenshot(page, "calibration.png")
    step("calibration & novelty")

    # 6. Back to Label transfer: download the annotated query and open it.
    goto_page(page, "Label transfer")
    wait_plot(page, "heatmap")
    wait_idle(page)
    dl = download_annotated(page, _param(page.url, "run"), PAGE_TIMEOUT_MS)
    assert dl.suggested_filename.endswith("_annotated.h5ad")
    out = tmp_path / dl.suggested_filename
    dl.save_as(out)
    assert dl.failure() is None
    a = ad.read_h5ad(out)
    assert a.n_obs == N_QUERY
    assert "cellannot_label" in a.obs
    labels = a.obs["cellannot_label"].astype(str)
    assert (labels == "Unknown").sum() > 0
    assert (labels == "Unknown").sum() == n_unknown  # same calls as the Calibration page's default
    assert_no_errors(page, "Label transfer after the download")
    step(f"downloaded {out.name}: {a.n_obs:,} cells, {n_unknown:,} Unknown")

    # 7. Reload (a new browser session on the private link): data and run are still there; every
    #    result page opens, Explain included (it explains any model's calls).
    first_run = _param(page.url, "run")
    page.reload()
    page.get_by_role("heading", name="Label transfer").first.wait_for(timeout=PAGE_TIMEOUT_MS)
    wait_plot(page, "heatmap")
    wait_idle(page)
    assert _param(page.url, "run") == first_run
    for title in ("Latent space", "Calibration & novelty", "Explain"):
        goto_page(page, title)
        wait_idle(page, PAGE_TIMEOUT_MS * 2)
        assert_no_errors(page, f"{title} after the reload")
    page.get_by_text("reference markers").first.wait_for(timeout=PAGE_TIMEOUT_MS)
    step("reload: run and every result page")

    # 8. A second model on the same (restored) data, then Compare with both existing runs.
    goto_page(page, "Train")
    wait_idle(page)
    _select(page, "w_model", "logreg")
    page.wait_for_function("() => { const b = document.querySelector('.st-key-w_start button');"
                           " return b && !b.disabled; }", timeout=PAGE_TIMEOUT_MS)
    start_and_wait(page, previous=first_run, runs_dir=runs_dir)
    second_run = _param(page.url, "run")
    assert second_run and second_run != first_run
    goto_page(page, "Compare models")
    wait_idle(page)
    table = page.locator('[data-testid="stDataFrame"]').first
    table.wait_for(timeout=PAGE_TIMEOUT_MS)
    page.wait_for_function("() => { const t = document.querySelector('[data-testid=\"stDataFrame\"]');"
                           " return t && /Open-set accuracy/.test(t.textContent); }", timeout=PAGE_TIMEOUT_MS)
    assert set(RUN_ID_IN_TEXT.findall(table.text_content())) == {first_run, second_run}
    wait_plot(page, '[class*="st-key-cmp_runs_agreement"]')
    assert_no_errors(page, "Compare with both runs")
    screenshot(page, "compare.png")
    step("second model (logreg) and Compare of both runs")

    # 9. The query labelled with a finished run's model, without training (the newest run is offered first)
    goto_page(page, "Train")
    wait_idle(page)
    page.get_by_role("heading", name="Label with a finished run's model").wait_for(timeout=PAGE_TIMEOUT_MS)
    page.locator(f"{_key('w_relabel_start')} button").click()
    page.wait_for_function("p => { const r = new URLSearchParams(location.search).get('run');"
                           " return r && r !== p; }", arg=second_run, timeout=PAGE_TIMEOUT_MS)
    third_run = _param(page.url, "run")
    status = runs_dir / third_run / "status.json"
    deadline = time.time() + TRAIN_TIMEOUT_S
    while '"done"' not in (status.read_text() if status.is_file() else "") and time.time() < deadline:
        time.sleep(1)
    assert '"done"' in status.read_text(), status.read_text()
    goto_page(page, "Label transfer")
    page.get_by_text(f"labelled with the model of run {second_run}").first.wait_for(timeout=PAGE_TIMEOUT_MS)
    wait_plot(page, "heatmap")
    wait_idle(page)
    assert_no_errors(page, "Label transfer of a query labelled with a finished run's model")
    step("the query labelled with the second run's model, without training")


# ------------------------------------------------------------------------------ a sweep from the app

SWEEP_TRIALS = 8


def test_a_sweep_of_eight_trials_is_launched_followed_and_compared(server, browser):
    """Issue 17: a sweep of 8 trials launched from the Compare page, followed while it runs
    (progress, the trials' table and plots growing) and compared when done (best trial, objective
    against each parameter, parallel coordinates), then on the Runs page where every trial is a run."""
    ctx = browser.new_context(viewport=VIEWPORT)
    t0 = time.time()
    try:
        page = ctx.new_page()
        page.set_default_timeout(60_000)
        page.goto(server["url"])
        page.get_by_role("heading", name="cellannot").first.wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_idle(page)
        page.locator(f"{_key('w_demo')} button").click()
        page.get_by_text("Demo data loaded").wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_idle(page)
        goto_page(page, "Compare models")
        wait_idle(page)
        page.get_by_role("heading", name="Hyper-parameter sweep").wait_for()
        _select(page, "w_sweep_model", QUICK_MODEL)
        assert page.locator(f"{_key('w_sweep_trials')} input").input_value() == str(SWEEP_TRIALS)
        start = page.locator(f"{_key('w_sweep_start')} button")
        page.wait_for_function("() => { const b = document.querySelector('.st-key-w_sweep_start button');"
                               " return b && !b.disabled; }", timeout=PAGE_TIMEOUT_MS)
        start.click()
        # followed: the job runs with a progress bar, then the finished trials and their plots grow
        page.get_by_text(re.compile(r"Job sweep-\d+-[0-9a-f]+: running")).first.wait_for(timeout=PAGE_TIMEOUT_MS)
        # the bar may arrive in a later message than the status line (seen once the server answered
        # at once, with its post-run garbage collection off)
        page.locator('[data-testid="stProgress"]').first.wait_for(state="attached", timeout=PAGE_TIMEOUT_MS)
        cancel = page.locator(".st-key-w_cmp_cancel_sweep button")
        cancel.wait_for(state="visible", timeout=PAGE_TIMEOUT_MS)
        assert cancel.count() == 1 and cancel.is_enabled()
        wait_plot(page, '[class*="st-key-sweep_live_"]', TRAIN_TIMEOUT_S * 1000)  # >= 2 trials finished
        assert_no_errors(page, "Compare while the sweep runs")
        # compared: the best trial, the table of all 8, objective against each parameter, parallel coordinates
        best = page.get_by_text(re.compile(r"Best: trial \d+, val_accuracy"))
        best.wait_for(timeout=TRAIN_TIMEOUT_S * 1000)
        wait_idle(page)
        assert_no_errors(page, "Compare after the sweep")
        figs = page.locator('[class*="st-key-sweep_fig_"] [data-testid="stPlotlyChart"]')
        figs.last.locator(".main-svg").first.wait_for(state="visible", timeout=PAGE_TIMEOUT_MS)
        # the figures arrive one by one: wait for the last of them (parallel coordinates) too
        figs.locator(".parcoords").first.wait_for(state="attached", timeout=PAGE_TIMEOUT_MS)
        titles = " ".join(figs.locator(".gtitle").all_text_contents())
        assert "val_accuracy against C" in titles, titles  # the objective against a swept parameter
        assert figs.locator(".parcoords").count() == 1  # and every trial in parallel coordinates
        runs = set(RUN_ID_IN_TEXT.findall(page.locator('[data-testid="stMain"]').text_content()))
        # the Runs page: every trial is a run of this session, with the sweep's plots
        goto_page(page, "Runs")
        listed = _listed_runs(page)
        assert len(listed) == SWEEP_TRIALS and runs <= listed, (runs, listed)
        wait_plot(page, '[class*="st-key-runs_sweep_"]')
        page.wait_for_function("() => { const t = document.querySelectorAll('[data-testid=\"stDataFrame\"]');"
                               " return t.length >= 2 && /param C/.test(t[1].textContent); }",
                               timeout=PAGE_TIMEOUT_MS)  # the sweep's trials, side by side
        # a trial can be run again with its own settings (the session holds the data it was trained on)
        page.wait_for_function("() => { const b = document.querySelector('.st-key-w_runs_rerun button');"
                               " return b && !b.disabled; }", timeout=PAGE_TIMEOUT_MS)
        assert_no_errors(page, "Runs with the sweep")
        screenshot(page, "runs.png")
        # a reload of the Compare page finds the finished sweep again (kept with the session)
        goto_page(page, "Compare models")
        wait_idle(page)
        page.reload()
        page.get_by_text(re.compile(r"Best: trial \d+, val_accuracy")).wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_idle(page)
        assert_no_errors(page, "Compare after a reload")
    finally:
        ctx.close()
    print(f"\nsweep of {SWEEP_TRIALS} trials from the app: {time.time() - t0:.0f} s")
    assert "Traceback" not in server["log"].read_text(errors="replace"), _tail(server["log"], 80)


# ------------------------------------------------------------------------------ sessions: isolation, reload, load


LOAD_SESSIONS = 5
QUICK_MODEL = "logreg"  # fitted in seconds: the load test is about the server, not the model


def _launch(pw):
    return pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                    "--disable-background-networking"])


def _param(url: str, name: str) -> str | None:
    from urllib.parse import parse_qs, urlparse

    vals = parse_qs(urlparse(url).query).get(name)
    return vals[0] if vals else None


def _select(page, key: str, option: str) -> None:
    """Pick ``option`` in a selectbox (the list is opened again if a rerun closed it)."""
    wait_idle(page)
    box = page.locator(f"{_key(key)} input").first
    choice = page.get_by_role("option", name=re.compile(rf"^{re.escape(option)}")).first
    for attempt in range(3):
        box.click()
        try:
            choice.wait_for(timeout=10_000)
            break
        except sync_api.TimeoutError:
            page.keyboard.press("Escape")
            wait_idle(page)
    choice.click()
    wait_idle(page)


def _shown_or_reload(page, shown, what: str, *, reloads: int, link=None, goto: str | None = None) -> None:
    """Wait for ``shown``; a page still on Streamlit's loading skeleton (its websocket dropped
    under the five-session load) is reloaded up to ``reloads`` times, as a visitor would, each
    recorded in :data:`RELOADS`. ``link``: the page link that should have led to ``shown``; when
    it is still on the page the click went nowhere, so it is clicked once more, and then (seen on
    CI: three clicks on a page whose websocket had gone quiet) the page is opened by its address
    ``goto`` (the session's private link brings its data back), or reloaded. ``reloads=0``: one
    plain wait."""
    for attempt in range(reloads):
        try:
            shown.wait_for(timeout=PAGE_TIMEOUT_MS // 2)
            return
        except sync_api.TimeoutError:
            if attempt == 0 and link is not None and link.count() > 0:
                RELOADS.append(f"{what} (the link clicked again)")
                link.click()
            elif goto is not None:
                RELOADS.append(f"{what} (opened by its address)")
                page.goto(goto)
            else:
                RELOADS.append(what)
                page.reload()
    try:
        shown.wait_for(timeout=PAGE_TIMEOUT_MS)
    except sync_api.TimeoutError as err:  # say what the visitor saw instead
        seen = page.locator("body").inner_text(timeout=5_000)[:400].replace("\n", " | ")
        raise AssertionError(f"{what} not shown at {page.url}; the page showed: {seen!r}") from err


def _demo_and_quick_run(page, url: str, model: str = QUICK_MODEL, runs_root: Path | None = None) -> str:
    """Home -> demo -> Train -> ``model`` -> Start -> done; returns the run id (from ``?run=``).
    With ``runs_root`` (the load test) a first page that never got past Streamlit's loading
    skeleton is reloaded up to twice, and the Train page once, as a visitor would (seen under the
    five-session load; recorded in :data:`RELOADS`)."""
    page.goto(url)
    home = page.get_by_role("heading", name="cellannot").first
    _shown_or_reload(page, home, "first page", reloads=2 if runs_root is not None else 0)
    wait_idle(page)
    demo = page.locator(f"{_key('w_demo')} button")
    demo.click()
    if runs_root is None:
        page.get_by_text("Demo data loaded").wait_for(timeout=PAGE_TIMEOUT_MS)
    else:  # under the load a click was seen to go nowhere (CI): click again, then reload and click
        for attempt in range(3):
            try:
                page.get_by_text("Demo data loaded").wait_for(timeout=PAGE_TIMEOUT_MS // 2)
                break
            except sync_api.TimeoutError:
                if attempt == 2:
                    raise
                RELOADS.append("demo button" + (" (clicked again)" if attempt == 0 else " (page reloaded)"))
                if attempt == 1:
                    page.reload()
                    page.get_by_role("heading", name="cellannot").first.wait_for(timeout=PAGE_TIMEOUT_MS)
                demo.click()
    wait_idle(page)
    to_train = page.locator('[data-testid="stPageLink"] a', has_text="Go to training").first
    to_train.click()
    _shown_or_reload(page, page.get_by_role("heading", name="New training"), "Train page",
                     reloads=3 if runs_root is not None else 0, link=to_train,
                     goto=f"{url}/train?s={_param(page.url, 's')}")  # the session's data reopen there
    wait_idle(page)
    _select(page, "w_model", model)
    page.wait_for_function("() => { const b = document.querySelector('.st-key-w_start button');"
                           " return b && !b.disabled; }", timeout=PAGE_TIMEOUT_MS)
    start_and_wait(page, runs_root=runs_root)
    run_id = _param(page.url, "run")
    assert run_id and page.get_by_text(run_id).count() > 0, page.url
    return run_id


RUN_ID_IN_TEXT = re.compile(r"\d{8}-\d{6}-[a-z0-9_]+?-[0-9a-f]{16}")


def _listed_runs(page) -> set[str]:
    """The run ids in the Runs page's table (its grid's accessible text), once the page's run
    has finished (no table of the page left is read)."""
    wait_idle(page)
    table = page.locator('[data-testid="stDataFrame"]')
    table.or_(page.get_by_text("No runs yet")).first.wait_for(timeout=PAGE_TIMEOUT_MS)
    if table.count():
        page.wait_for_function("() => /\\d{8}-\\d{6}-/.test(document.querySelector("
                               "'[data-testid=\"stDataFrame\"]').textContent)", timeout=PAGE_TIMEOUT_MS)
    text = " ".join(page.locator('[data-testid="stDataFrame"]').all_text_contents())
    return set(RUN_ID_IN_TEXT.findall(text))


def _open_train(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("heading", name="New training").wait_for(timeout=PAGE_TIMEOUT_MS)
    wait_idle(page)


def _open_runs(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("heading", name="Runs", exact=True).wait_for(timeout=PAGE_TIMEOUT_MS)
    wait_idle(page)


def test_two_sessions_never_see_each_other_and_a_reload_keeps_data_and_run(server, browser):
    """Issue 14: a second browser listed and opened the first one's runs by ``?run=``. Issue 13:
    a reload lost the uploaded data. Session A trains; B sees none of it, not even by A's run
    link; A's private link (``?s=``) brings back its data and its run after a reload."""
    url = server["url"]
    a_ctx = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    b_ctx = browser.new_context(viewport=VIEWPORT)
    try:
        a = a_ctx.new_page()
        a.set_default_timeout(60_000)
        rid = _demo_and_quick_run(a, url)
        token = _param(a.url, "s")
        assert token
        b = b_ctx.new_page()
        b.set_default_timeout(60_000)
        _open_runs(b, f"{url}/runs")
        assert rid not in _listed_runs(b)
        assert b.get_by_text(rid).count() == 0
        _open_train(b, f"{url}/train?run={rid}")  # A's run link without A's session
        assert b.get_by_text(rid).count() == 0 and _param(b.url, "run") is None
        assert b.get_by_role("heading", name="Current run").count() == 0
        b.goto(f"{url}/data")
        b.get_by_text("No reference loaded yet").wait_for(timeout=PAGE_TIMEOUT_MS)
        b.get_by_text("No query loaded yet").wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_idle(b)
        assert b.locator('[data-testid="stMetric"]').count() == 0
        # A reloads (a new browser tab on its private link): data and run come back
        a.reload()
        a.get_by_role("heading", name="Current run").wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_idle(a)
        assert a.get_by_text(rid).count() > 0
        goto_page(a, "Runs")
        assert rid in _listed_runs(a)
        a.goto(f"{url}/data?s={token}")
        cells = a.locator('[data-testid="stMetric"]', has_text="Cells").locator('[data-testid="stMetricValue"]')
        cells.nth(1).wait_for(timeout=PAGE_TIMEOUT_MS)
        assert cells.all_inner_texts() == ["1,556", f"{N_QUERY:,}"]
        assert a.get_by_text("(demo; restored after a reload)").count() == 2
        assert a.get_by_text("another browser used").count() == 0
        assert_no_errors(a, "Data after reload")
        # A's private link in B's browser (session fixation): nothing of A's until B says it is B's
        b.goto(f"{url}/data?s={token}")
        b.get_by_text("another browser used").wait_for(timeout=PAGE_TIMEOUT_MS)
        b.get_by_text("No reference loaded yet").wait_for(timeout=PAGE_TIMEOUT_MS)
        assert _param(b.url, "s") != token
        b.get_by_role("button", name="Open that session").click()
        cells = b.locator('[data-testid="stMetric"]', has_text="Cells").locator('[data-testid="stMetricValue"]')
        cells.nth(1).wait_for(timeout=PAGE_TIMEOUT_MS)
        assert cells.all_inner_texts() == ["1,556", f"{N_QUERY:,}"]
        assert _param(b.url, "s") == token and b.get_by_text("another browser used").count() == 0
        assert_no_errors(b, "Data after opening another browser's link")
    finally:
        a_ctx.close()
        b_ctx.close()
    assert "Traceback" not in server["log"].read_text(errors="replace"), _tail(server["log"], 80)



def test_the_bare_address_brings_a_browser_back_to_its_own_session(server, browser):
    """A sidebar page opened in a new tab, or a bookmark of the bare address, has no ``?s=``: it
    began an empty session, and the visitor's data and runs seemed lost. The same browser comes back
    to its last session; another browser at the bare address gets a new, empty one."""
    url = server["url"]
    a_ctx = browser.new_context(viewport=VIEWPORT)
    b_ctx = browser.new_context(viewport=VIEWPORT)
    try:
        a = a_ctx.new_page()
        a.set_default_timeout(60_000)
        a.goto(url)
        a.locator(f"{_key('w_demo')} button").click()
        a.get_by_text("Demo data loaded").wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_idle(a)
        token = _param(a.url, "s")
        assert token
        again = a_ctx.new_page()  # a new tab of the same browser, at the bare address of a page
        again.goto(f"{url}/data")
        cells = again.locator('[data-testid="stMetric"]', has_text="Cells").locator('[data-testid="stMetricValue"]')
        cells.nth(1).wait_for(timeout=PAGE_TIMEOUT_MS)
        assert _param(again.url, "s") == token and again.get_by_text("another browser used").count() == 0
        assert_no_errors(again, "Data at the bare address")
        b = b_ctx.new_page()
        b.goto(f"{url}/data")
        b.get_by_text("No reference loaded yet").wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_idle(b)
        assert _param(b.url, "s") not in (None, token)
    finally:
        a_ctx.close()
        b_ctx.close()


def _server_errors(log: str) -> tuple[list[str], int]:
    """The exceptions in a server log, less those of Streamlit's own websocket endpoint when a
    browser's connection drops (starlette ``WebSocketDisconnected`` raised inside
    ``streamlit/web/server/starlette/starlette_websocket.py``, no frame of this project: seen under
    the five-session load, with the page then stalled until reloaded); returns (the others, how
    many were dropped connections)."""
    blocks = re.split(r"\n(?=Exception in ASGI application|\S.*Traceback \(most recent call last\))", log)
    blocks = [b for b in blocks if "Traceback" in b]
    ours = ("cellannot_core/", "/ui/", "/pages/", "app.py")
    dropped = [b for b in blocks if "starlette_websocket.py" in b and "WebSocketDisconnected" in b.strip().splitlines()[-1]
               and not any(o in b for o in ours)]
    return [b for b in blocks if b not in dropped], len(dropped)

class _HealthProbe:
    """Asks the server's ``/_stcore/health`` every 2 s during the load test and keeps the
    slowest answer: a server whose event loop is starved answers late or not at all."""

    def __init__(self, url: str):
        import threading

        self.url, self.times, self.failed = url, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(2):
            t = time.time()
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=30) as r:
                    r.read()
                self.times.append(time.time() - t)
            except OSError:
                self.failed += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=40)

    def summary(self) -> str:
        t = sorted(self.times) or [float("nan")]
        return (f"server health during the load: {len(self.times)} answers, median {t[len(t) // 2]:.2f} s, "
                f"slowest {t[-1]:.2f} s, {self.failed} unanswered within 30 s")


def _load_session(url: str, out_dir: Path, result: dict, runs_root: Path) -> None:
    """One visitor of the load test, in its own thread with its own browser."""
    import anndata as ad

    t0 = time.time()
    try:
        with sync_api.sync_playwright() as pw:
            b = _launch(pw)
            page = None
            try:
                ctx = b.new_context(viewport=VIEWPORT, accept_downloads=True)
                page = ctx.new_page()
                page.set_default_timeout(TRAIN_TIMEOUT_S * 1000)
                rid = _demo_and_quick_run(page, url, runs_root=runs_root)
                result["run_id"], result["token"] = rid, _param(page.url, "s")
                to_transfer = page.locator('[data-testid="stPageLink"] a', has_text="See the label transfer").first
                to_transfer.click()
                _shown_or_reload(page, page.get_by_role("heading", name="Label transfer").first, "Label transfer page",
                                 reloads=2, link=to_transfer, goto=f"{url}/results?s={result['token']}&run={rid}")
                wait_plot(page, "heatmap", TRAIN_TIMEOUT_S * 1000)
                wait_idle(page, TRAIN_TIMEOUT_S * 1000)
                assert_no_errors(page, "Label transfer")
                dl = download_annotated(page, rid, 120_000)
                result["file"] = dl.suggested_filename
                path = out_dir / f"{rid}.h5ad"
                dl.save_as(path)
                result["n_obs"] = ad.read_h5ad(path).n_obs
            except Exception:
                if page is not None:  # what this visitor saw, for the report
                    shot = out_dir / f"failure_{int(t0 * 1000)}.png"
                    page.screenshot(path=str(shot), full_page=True)
                    result["screenshot"] = str(shot)
                raise
            finally:
                b.close()
    except Exception as err:  # noqa: BLE001 - reported by the test
        result["error"] = f"{type(err).__name__}: {err} (screenshot: {result.get('screenshot')})"
    result["seconds"] = time.time() - t0


def test_five_concurrent_sessions_load_train_and_download_without_cross_talk(server, browser, tmp_path):
    """Issue 14's load test: five visitors at once load the demo, train a quick model and
    download the annotated query; none sees an error, each gets its own run, and each lists only
    its own runs.

    It found that a download could fail under load ("Deferred file ... not found", or the
    download cancelled): another session's script run collected the file of a deferred download
    between the click and the transfer. Large downloads are now prepared on request and offered
    as bytes bound to the page (``ui.results.prepared_download``).

    It also found the server too busy to answer: on fresh clones on the 2-core CI machine it failed
    3 times in 4 runs with visitors whose pages stopped answering (a click that went nowhere, a page
    left on Streamlit's loading skeleton, a finished run shown as queued), the health check
    answering in 2-12 s. A py-spy profile of the server during this test put 79% of its samples in
    the full ``gc.collect(2)`` Streamlit runs after every script run (every session's Train page
    polls each second); with ``runner.postScriptGC = false`` (.streamlit/config.toml) the five
    visitors took 66-69 s instead of 256 s and the health check answered in a median 0.02 s
    (slowest 0.4-0.9 s) instead of 0.7-7.7 s (2026-12-03, two runs each)."""
    import threading

    url = server["url"]
    results = [dict() for _ in range(LOAD_SESSIONS)]
    threads = [threading.Thread(target=_load_session, args=(url, tmp_path, r, server["tmp"] / "runs"), daemon=True) for r in results]
    probe = _HealthProbe(url)
    probe.start()
    t0 = time.time()
    for t in threads:
        t.start()
        time.sleep(2)  # visitors arrive a little apart, as people do
    for t in threads:
        t.join(timeout=TRAIN_TIMEOUT_S * 3)
    probe.stop()
    errors = [r.get("error") for r in results if r.get("error") or "n_obs" not in r]
    if errors:  # pytest shortens the assertion; the whole story goes to the captured output
        print("\n".join(errors), f"\nreloads: {RELOADS}\n{probe.summary()}")
    assert not errors, (errors, f"reloads: {RELOADS}", probe.summary())
    ids = [r["run_id"] for r in results]
    assert len(set(ids)) == LOAD_SESSIONS and len({r["token"] for r in results}) == LOAD_SESSIONS
    for r in results:
        assert r["file"] == f"{r['run_id']}_annotated.h5ad" and r["n_obs"] == N_QUERY
    ctx = browser.new_context(viewport=VIEWPORT)
    try:
        page = ctx.new_page()
        page.set_default_timeout(60_000)
        for r in results:  # each visitor's private link lists its run and nobody else's
            _open_runs(page, f"{url}/runs?s={r['token']}")
            page.get_by_text("another browser used").wait_for(timeout=PAGE_TIMEOUT_MS)  # asked first:
            assert not (_listed_runs(page) & set(ids))  # this browser never used that session
            page.get_by_role("button", name="Open that session").click()
            page.get_by_text("another browser used").wait_for(state="detached", timeout=PAGE_TIMEOUT_MS)
            wait_idle(page)
            listed = _listed_runs(page)
            assert r["run_id"] in listed and not (listed & (set(ids) - {r["run_id"]})), (r["run_id"], listed)
    finally:
        ctx.close()
    each = ", ".join(f"{r['seconds']:.0f}" for r in results)
    print(f"\n{LOAD_SESSIONS} concurrent sessions: {time.time() - t0:.0f} s (each {each} s); pages a visitor had to "
          f"reload (stuck loading, or a finished run shown as queued): {RELOADS or 'none'}")
    app_errors, dropped = _server_errors(server["log"].read_text(errors="replace"))
    print(f"websockets Streamlit's own server dropped with a logged exception: {dropped}")
    print(probe.summary())
    assert not app_errors, "\n\n".join(app_errors)
