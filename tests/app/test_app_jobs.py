"""The job runner (ui/jobs.py) without a browser: concurrent jobs keep their own run directory,
status, history and results; cancel hits only its own job; orphaned runs are flagged."""
from __future__ import annotations

import os
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from cellannot_core.errors import Cancelled
from cellannot_core.pipeline import AnnotateOptions
from cellannot_core.runs import RunDir, list_runs
from ui import jobs

ROOT = Path(__file__).resolve().parents[2]
LABEL = "cell_type_harmonized"


@pytest.fixture(scope="module")
def demo():
    return (ad.read_h5ad(ROOT / "assets" / "kang_pbmc_example_sce_1556.h5ad"),
            ad.read_h5ad(ROOT / "assets" / "pbmc3k_seurat_2638.h5ad"))


def _subset(adata, n, seed):
    rng = np.random.default_rng(seed)
    return adata[np.sort(rng.choice(adata.n_obs, n, replace=False))].copy()


def _opts(model, epochs, **kw):
    from cellannot_core.models import get_spec

    hp = {"hidden": "32,16", **({"blocks": "1,1"} if model == "resnet" else {})}
    hp = {k: v for k, v in hp.items() if k in get_spec(model).hparams}  # (options are checked as they are made)
    return AnnotateOptions(label_key=LABEL, model=model, hparams=hp, max_epochs=epochs, n_top_genes=200,
                           n_generate=0, **kw)


@pytest.fixture(autouse=True)
def _runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLANNOT_RUNS", str(tmp_path / "runs"))


def test_two_concurrent_jobs_do_not_mix(demo):
    ref, qry = demo
    id_a = jobs.start_job(_subset(ref, 300, 1), _subset(qry, 150, 1), _opts("resnet", 6, seed=1))
    id_b = jobs.start_job(_subset(ref, 300, 2), _subset(qry, 250, 2), _opts("clams", 4, seed=2,
                                                                               query_label_key=LABEL))
    assert id_a != id_b
    assert {id_a, id_b} <= set(jobs.active_jobs())  # both threads alive at once
    both_running = False
    deadline = time.time() + 240
    while time.time() < deadline and set(jobs.active_jobs()) & {id_a, id_b}:
        states = {jobs.run_status(i)["state"] for i in (id_a, id_b)}
        both_running |= states == {"running"}
        time.sleep(0.05)
    sa, sb = jobs.wait(id_a, 60), jobs.wait(id_b, 60)
    assert sa["state"] == sb["state"] == "done", (sa, sb)
    assert both_running, "the two trainings never ran at the same time"
    ja, jb = jobs.get_job(id_a), jobs.get_job(id_b)
    assert max(ja.started, jb.started) < min(ja.finished, jb.finished)
    # each run directory holds its own job's results
    ra, rb = RunDir.open(jobs.runs_root(), id_a), RunDir.open(jobs.runs_root(), id_b)
    ca, cb = ra.card(), rb.card()
    assert (ca["model"], ca["n_query"], ca["seed"]) == ("resnet", 150, 1)
    assert (cb["model"], cb["n_query"], cb["seed"]) == ("clams", 250, 2)
    assert ca["query_metrics"] == {} and "acc_in" in cb["query_metrics"]
    assert len(ra.load_arrays()["query_latent"]) == 150 and len(rb.load_arrays()["query_latent"]) == 250
    assert 1 <= len(ra.history()) <= 6 and 1 <= len(rb.history()) <= 4
    assert sa["model"] == "resnet" and sb["model"] == "clams"
    assert {r["id"] for r in list_runs(jobs.runs_root())} == {id_a, id_b}


def test_cancel_only_stops_its_own_job(demo):
    ref, qry = demo
    keep = jobs.start_job(_subset(ref, 300, 3), _subset(qry, 100, 3), _opts("resnet", 3))
    stop = jobs.start_job(_subset(ref, 300, 4), _subset(qry, 100, 4), _opts("clams", 500))
    assert jobs.cancel(stop)
    assert jobs.wait(stop, 120)["state"] == "cancelled"
    assert jobs.wait(keep, 240)["state"] == "done"
    assert not jobs.cancel(stop)  # nothing left to cancel
    assert "cancel" in jobs.run_status(stop)["message"]


def test_orphaned_active_run_is_flagged(tmp_path):
    rd = RunDir.create(jobs.runs_root(), model="clams")
    rd.set_status("running", message="training")
    s = jobs.run_status(rd.id)
    # its process (this one) is alive but no training thread of the app works on it: another process's run
    assert s["stale"] and not s["live"] and "another process" in s["stale_note"]


def test_one_session_cannot_fill_the_queue(demo, monkeypatch):
    """A session holds at most CELLANNOT_MAX_JOBS_PER_SESSION runs waiting or running; another
    session (and the command line's runs, no owner) still start; a finished run frees its place."""
    from cellannot_core.errors import ConfigError

    monkeypatch.setenv("CELLANNOT_MAX_JOBS_PER_SESSION", "1")
    ref, qry = _subset(demo[0], 300, 5), _subset(demo[1], 100, 5)
    first = jobs.start_job(ref, qry, _opts("clams", 500), owner="visitor-a")
    with pytest.raises(ConfigError, match="already have 1 training run waiting or running"):
        jobs.start_job(ref, qry, _opts("clams", 500), owner="visitor-a")
    assert [r["id"] for r in list_runs(jobs.runs_root())] == [first]  # the refused run left no folder
    other = jobs.start_job(ref, qry, _opts("clams", 500), owner="visitor-b")
    unowned = jobs.start_job(ref, qry, _opts("clams", 500))
    for rid in (first, other, unowned):
        assert jobs.cancel(rid)
    for rid in (first, other, unowned):
        assert jobs.wait(rid, 120)["state"] == "cancelled"
    again = jobs.start_job(ref, qry, _opts("clams", 500), owner="visitor-a")
    assert jobs.owner_active_runs("visitor-a") == [again]
    assert jobs.cancel(again) and jobs.wait(again, 120)["state"] == "cancelled"


def test_a_free_training_slot_goes_to_the_session_holding_fewest_then_to_the_longest_waiting():
    """Two slots held by visitor A; A queues a third run, then B queues one: when A's first run
    ends the slot goes to B (A already holds one), then to A's; with equal holdings, first come."""
    import threading

    slots = jobs.Slots(2)
    order: list[str] = []
    never = lambda: False  # noqa: E731
    slots.acquire("a", never, lambda: None)
    slots.acquire("a", never, lambda: None)

    def wait_for(name: str, owner: str, waiting: threading.Event) -> threading.Thread:
        def run() -> None:
            slots.acquire(owner, never, waiting.set)
            order.append(name)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        assert waiting.wait(5)  # queued, in this order
        return t

    a3 = wait_for("a3", "a", threading.Event())
    b1 = wait_for("b1", "b", threading.Event())
    slots.release("a")
    b1.join(5)
    assert order == ["b1"] and a3.is_alive()  # A holds one slot, B none: B first though it came later
    slots.release("a")
    a3.join(5)
    assert order == ["b1", "a3"]
    # equal holdings: first come, first served; a job cancelled while waiting leaves the queue
    c1 = wait_for("c1", "c", threading.Event())
    stop = threading.Event()
    gone: list[str] = []

    def cancelled() -> None:
        try:
            slots.acquire("d", stop.is_set, lambda: None)
        except Cancelled:
            gone.append("d")
    d = threading.Thread(target=cancelled, daemon=True)
    d.start()
    stop.set()
    d.join(5)
    assert gone == ["d"]
    slots.release("b")
    c1.join(5)
    assert order == ["b1", "a3", "c1"]


def test_a_typo_in_a_server_setting_falls_back_with_a_warning_not_a_crash():
    """CELLANNOT_MAX_JOBS=two stopped every page at import (int('two')); CELLANNOT_MEMORY_LIMIT_GB=inf
    overflowed; zero or negative limits refused every input."""
    import subprocess
    import sys

    code = ("import ui.jobs as j; from cellannot_core.data.io import memory_limit_bytes as m; "
            "from cellannot_core.data.stream import large_query_bytes as q; "
            "print(j.MAX_PARALLEL, j.session_job_limit(), m() > 0, q() > 0)")
    env = {**os.environ, "CELLANNOT_MAX_JOBS": "two", "CELLANNOT_MAX_JOBS_PER_SESSION": "2.5",
           "CELLANNOT_MEMORY_LIMIT_GB": "inf", "CELLANNOT_STREAM_QUERY_MB": "-1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "2", "True", "True"]
    for name in ("CELLANNOT_MAX_JOBS=", "CELLANNOT_MEMORY_LIMIT_GB=", "CELLANNOT_STREAM_QUERY_MB="):
        assert name in r.stderr and "Traceback" not in r.stderr


def test_an_unexpected_failure_goes_to_the_servers_log_not_the_visitors(demo, monkeypatch, caplog):
    """Found 2026-12-07 (a probe of the app served to a lab): an unexpected failure wrote its traceback,
    with the server's paths, into the run's log, which the Train page shows the visitor."""
    import logging

    from cellannot_core._constants import RunFiles

    def broken(*args, **kwargs):
        raise RuntimeError("boom in /srv/lab/secret_code.py")

    monkeypatch.setattr("cellannot_core.pipeline.annotate", broken)
    ref, qry = demo
    with caplog.at_level(logging.ERROR, logger="cellannot.app"):
        rid = jobs.start_job(_subset(ref, 100, 1), _subset(qry, 50, 1), _opts("logreg", 1))
        status = jobs.wait(rid, 60)
    assert status["state"] == "failed"
    log = RunDir.open(jobs.runs_root(), rid).file(RunFiles.LOG).read_text()
    assert "RuntimeError" in log and "Traceback" not in log and 'File "' not in log
    assert any("Traceback" in r.getMessage() and rid in r.getMessage() for r in caplog.records)


def test_a_full_disk_mid_run_is_one_line_without_paths_and_never_running_for_good(demo, monkeypatch):
    """Found 2026-12-07 (a probe with the runs folder on a small tmpfs): a full disk while a run wrote its results
    was "internal error: OSError: [Errno 28] ..." or "cannot write /srv/.../annotated.h5ad: ... choose another
    place" on the Train page; and when its status could not be written either, the run stayed "running" for
    good, the thread gone and the server alive ("another process works on this run"), and could not be deleted."""
    import errno

    import cellannot_core.runs as runs

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    ref, qry = _subset(demo[0], 100, 1), _subset(demo[1], 50, 1)
    monkeypatch.setattr(RunDir, "save_arrays", full)
    rid = jobs.start_job(ref, qry, _opts("logreg", 1))
    status = jobs.wait(rid, 120)
    root = str(jobs.runs_root())
    assert status["state"] == "failed" and "no space left on device" in status["message"], status
    assert root not in status["message"] and "internal error" not in status["message"]
    assert root not in "".join(jobs.read_log(rid))

    disk = {"full": False}
    real_write = runs.write_bytes_atomic

    def write(path, data):
        if disk["full"]:
            full()
        real_write(path, data)

    def fill(*args, **kwargs):  # the disk fills as the results are written: no state can be written after
        disk["full"] = True
        full()

    monkeypatch.setattr(runs, "write_bytes_atomic", write)
    monkeypatch.setattr(RunDir, "save_arrays", fill)
    rid = jobs.start_job(ref, qry, _opts("logreg", 1))
    jobs.wait(rid, 120)
    assert not jobs.get_job(rid).alive
    status = jobs.run_status(rid)  # said even while the disk stays full
    assert status["state"] == "interrupted" and not status["stale"], status
    disk["full"] = False
    assert RunDir.open(jobs.runs_root(), rid).check_interrupted()["state"] == "interrupted"
    RunDir.open(jobs.runs_root(), rid).delete()  # not "still training: cancel it first"


def test_a_damaged_model_named_by_a_relabel_run_is_said_without_the_servers_path(demo):
    """Found 2026-12-07: labelling a query with a finished run whose model was damaged said "the model folder
    /srv/.../<run id>/model does not exist" to the visitor."""
    source = RunDir.create(jobs.runs_root(), model="logreg")
    source.set_status("done", model="logreg")
    rid = jobs.start_relabel_job(source.id, _subset(demo[1], 50, 1))
    status = jobs.wait(rid, 120)
    assert status["state"] == "failed" and f"{source.id}/model" in status["message"], status
    assert str(jobs.runs_root()) not in status["message"]
    # said of the run, with what to do in the app (not the command line's "pass a directory written by `train`")
    assert f"the saved model of run {source.id} cannot be read" in status["message"]
    assert "Delete that run and train again" in status["message"] and "`train`" not in status["message"]


def test_a_server_stopped_while_a_run_trains_exits_cleanly_and_marks_it_interrupted(tmp_path):
    """Found 2026-12-07: `kill -TERM` of the server while a run trained ended it by SIGABRT ("terminate called
    without an active exception", exit code -6: the training thread was inside torch as the interpreter shut
    down), and the run stayed "running" on disk. A stopping server now cancels its jobs (a comparison's too) and
    waits for them: each is interrupted, as a restart finds it."""
    import json
    import signal
    import subprocess
    import sys

    code = f"""
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))  # as Streamlit stops: the main thread returns
import anndata as ad, numpy as np
from cellannot_core.pipeline import AnnotateOptions
from ui import jobs
ref = ad.read_h5ad({str(ROOT / "assets" / "kang_pbmc_example_sce_1556.h5ad")!r})[:300].copy()
qry = ad.read_h5ad({str(ROOT / "assets" / "pbmc3k_seurat_2638.h5ad")!r})[:100].copy()
opts = AnnotateOptions(label_key={LABEL!r}, model="clams", hparams={{"hidden": "32,16"}}, max_epochs=1000,
                       n_top_genes=200, n_generate=0)
from ui import compare
compare.start("compare", ref, qry, opts, save_to={str(tmp_path / "compare.json")!r}, models=["clams"], max_epochs=1000)
rid = jobs.start_job(ref, qry, opts, root={str(tmp_path / "runs")!r})
while not str(jobs.run_status(rid, {str(tmp_path / "runs")!r}).get("message")).startswith("epoch "):
    assert jobs.get_job(rid).alive
    time.sleep(0.1)
print(rid, flush=True)
time.sleep(600)
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT), CELLANNOT_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        rid = proc.stdout.readline().strip()
        assert rid, "the run did not start"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    status = json.loads((tmp_path / "runs" / rid / "status.json").read_text())
    assert status["state"] == "interrupted" and "server was stopped" in status["message"], (status["message"], proc.returncode)
    record = json.loads((tmp_path / "compare.json").read_text())  # a comparison: interrupted, as after a restart
    assert record["state"] == "interrupted" and "server was stopped" in record["message"], record
