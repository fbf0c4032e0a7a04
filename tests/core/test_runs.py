"""Run directories (runs.py): ids, atomic status, listing, arrays, live progress."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import cellannot_core.runs as runs
from cellannot_core._constants import RunFiles
from cellannot_core.errors import DataError
from cellannot_core.runs import RUN_ID_RE, RunDir, RunProgress, default_root, list_runs, new_run_id, read_json
from cellannot_core.training import TrainConfig, fit


def _tmp_files(path):
    return [p for p in path.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]


def test_create_and_open(tmp_path):
    rd = RunDir.create(tmp_path, model="clams")
    assert rd.path.parent == tmp_path and rd.path.is_dir()
    assert RUN_ID_RE.match(rd.id) and "clams" in rd.id
    st = rd.status()
    assert st["state"] == "queued" and st["created"] == st["updated"]
    again = RunDir.open(tmp_path, rd.id)
    assert again.path == rd.path and again.status() == st
    assert rd.model_dir == rd.path / RunFiles.MODEL_DIR
    assert rd.file(RunFiles.CARD) == rd.path / RunFiles.CARD
    assert rd.card() is None and rd.history() == []


def test_create_with_given_id_and_duplicates(tmp_path):
    rd = RunDir.create(tmp_path, run_id="my-run_1.0")
    assert rd.id == "my-run_1.0"
    with pytest.raises((DataError, FileExistsError)):
        RunDir.create(tmp_path, run_id="my-run_1.0")


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".", "", ".hidden", "/abs", "a\\b", "x" * 200, "a b",
                                 "-flag"])
def test_invalid_run_ids_rejected(tmp_path, bad):
    if bad:  # an empty id means "make one up" for create
        with pytest.raises(DataError):
            RunDir.create(tmp_path / "root", run_id=bad)
    with pytest.raises(DataError):
        RunDir.open(tmp_path, bad)
    assert not (tmp_path / "x").exists() and not (tmp_path / "root" / "a").exists()


def test_open_missing_run(tmp_path):
    with pytest.raises(DataError, match="no run"):
        RunDir.open(tmp_path, "nope")
    (tmp_path / "dir-without-status").mkdir()
    with pytest.raises(DataError):
        RunDir.open(tmp_path, "dir-without-status")


def test_new_run_id_is_safe():
    rid = new_run_id("../evil model/..")
    assert RUN_ID_RE.match(rid) and "/" not in rid and ".." not in rid and "evilmodel" in rid
    assert new_run_id("clams") != new_run_id("clams")
    assert RUN_ID_RE.match(new_run_id("///"))


def test_default_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CELLANNOT_RUNS", str(tmp_path / "r"))
    assert default_root() == (tmp_path / "r").resolve()
    rd = RunDir.create(model="x")
    assert rd.path.parent == (tmp_path / "r").resolve()


# ---- status --------------------------------------------------------------------------------------------

def test_set_status_merges_fields_and_keeps_created(tmp_path):
    rd = RunDir.create(tmp_path, run_id="r1")
    created = rd.status()["created"]
    rd.set_status("running", progress=0.5, message="training", model="clams")
    rd.set_status("running", epoch=2)
    st = rd.status()
    assert st["state"] == "running" and st["progress"] == 0.5 and st["epoch"] == 2 and st["model"] == "clams"
    assert st["created"] == created and st["updated"] >= created
    rd.set_status("done", progress=1.0)
    assert rd.status()["state"] == "done" and rd.status()["progress"] == 1.0
    with pytest.raises(ValueError):
        rd.set_status("finished")
    assert rd.status()["state"] == "done"
    assert _tmp_files(tmp_path) == []


def test_set_status_is_atomic(tmp_path, monkeypatch):
    rd = RunDir.create(tmp_path, run_id="r1")
    rd.set_status("running", progress=0.25)
    before = rd.file(RunFiles.STATUS).read_bytes()

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "replace", fail)
    with pytest.raises(OSError):
        rd.set_status("done", progress=1.0)
    monkeypatch.undo()
    # the visible file is the old, complete one
    assert rd.file(RunFiles.STATUS).read_bytes() == before
    assert json.loads(before)["progress"] == 0.25


def test_status_writes_use_a_temp_name_then_rename(tmp_path, monkeypatch):
    rd = RunDir.create(tmp_path, run_id="r1")
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append((os.path.basename(src), os.path.basename(dst)))
        return real(src, dst)

    monkeypatch.setattr(runs.os, "replace", spy)
    rd.set_status("running", progress=0.1)
    assert len(seen) == 1 and seen[0][1] == RunFiles.STATUS and seen[0][0] != RunFiles.STATUS
    assert _tmp_files(tmp_path) == []


def test_unreadable_status(tmp_path):
    rd = RunDir.create(tmp_path, run_id="r1")
    rd.file(RunFiles.STATUS).write_text("{half a file")
    assert rd.status() == {"state": "failed", "message": "status unreadable"}
    assert read_json(tmp_path / "missing.json", {"d": 1}) == {"d": 1}
    (tmp_path / "deep.json").write_text("[" * 200_000 + "]" * 200_000)  # past Python's recursion limit
    assert read_json(tmp_path / "deep.json", {"d": 2}) == {"d": 2}


def test_write_json_atomic_numpy_values(tmp_path):
    runs.write_json_atomic(tmp_path / "a.json", {"i": np.int64(3), "f": np.float32(0.5), "a": np.arange(3),
                                                 "p": tmp_path})
    assert json.loads((tmp_path / "a.json").read_text()) == {"i": 3, "f": 0.5, "a": [0, 1, 2], "p": str(tmp_path)}
    assert _tmp_files(tmp_path) == []


# ---- listing -------------------------------------------------------------------------------------------

def test_list_runs_newest_first(tmp_path):
    assert list_runs(tmp_path / "none") == []
    ids = ["old", "new", "mid"]
    for rid, created in zip(ids, [100.0, 300.0, 200.0]):
        rd = RunDir.create(tmp_path, run_id=rid, model="x")
        rd.set_status("done", created=created, model=f"m-{rid}")
    runs.write_json_atomic(RunDir.open(tmp_path, "new").file(RunFiles.CARD),
                           {"model": "clams", "n_query": 42, "unknown_fraction": 0.1})
    (tmp_path / "no-status").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "file.txt").write_text("x")
    rows = list_runs(tmp_path)
    assert [r["id"] for r in rows] == ["new", "mid", "old"]
    new = rows[0]
    assert new["state"] == "done" and new["model"] == "m-new" and new["n_query"] == 42
    assert new["unknown_fraction"] == 0.1 and new["created"] == 300.0
    assert rows[1]["n_query"] is None


def test_list_runs_real_creation_order(tmp_path, monkeypatch):
    t = iter([1000.0, 1000.0, 2000.0, 2000.0, 3000.0, 3000.0])
    monkeypatch.setattr(runs.time, "time", lambda: next(t))
    a = RunDir.create(tmp_path, run_id="a")
    b = RunDir.create(tmp_path, run_id="b")
    c = RunDir.create(tmp_path, run_id="c")
    assert [r["id"] for r in list_runs(tmp_path)] == [c.id, b.id, a.id]


# ---- arrays ----------------------------------------------------------------------------------------------

def test_arrays_round_trip_without_pickle(tmp_path):
    rd = RunDir.create(tmp_path, run_id="r1")
    arrays = {"z": np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32), "y": np.arange(5),
              "h": np.ones(4, dtype=np.float16)}
    rd.save_arrays(arrays)
    back = rd.load_arrays()
    assert set(back) == set(arrays)
    for k in arrays:
        np.testing.assert_array_equal(back[k], arrays[k])
        assert back[k].dtype == arrays[k].dtype
    assert _tmp_files(rd.path) == []
    # object arrays would need pickle to load: refused (one line, as any damaged arrays file)
    rd.save_arrays({"o": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(DataError, match="missing or damaged"):
        rd.load_arrays()


# ---- live progress -----------------------------------------------------------------------------------------

def test_run_progress_writes_status_and_history(tmp_path):
    rd = RunDir.create(tmp_path, run_id="r1")
    p = RunProgress(rd, every_seconds=0.0)
    p.on_train_begin({"max_epochs": 4, "steps_per_epoch": 5})
    st = rd.status()
    assert st["state"] == "running" and st["progress"] == 0.0 and st["max_epochs"] == 4 and st["epoch"] == 0
    p.on_step(10, 20, {"loss": 1.0})
    assert rd.status()["eta"] is None  # under 5 s of training: no estimate yet (issue 13: "1 h 02 min left")
    p.t0 -= 10.0
    p.on_step(0, 100, {"loss": 1.0})
    assert rd.status()["eta"] is None  # under 5% done: no estimate either
    p.on_step(10, 20, {"loss": 1.0})
    st = rd.status()
    assert st["progress"] == 0.5 and st["eta"] == pytest.approx(10.0, abs=1.0)
    p.on_epoch_end(0, {"loss": 1.5, "val_loss": 1.2})
    st = rd.status()
    assert st["epoch"] == 1 and st["progress"] == 0.25 and "epoch 1 of at most 4" in st["message"]
    assert rd.history() == [{"epoch": 1, "loss": 1.5, "val_loss": 1.2}]
    p.on_epoch_end(1, {"recovered_from_divergence": 1.0})
    assert "recovered" in rd.status()["message"] and len(rd.history()) == 1
    p.on_epoch_end(1, {"loss": 1.0, "val_loss": 1.1})
    assert [h["epoch"] for h in rd.history()] == [1, 2]
    p.on_train_end({})
    st = rd.status()
    assert st["progress"] == 1.0 and st["eta"] == 0.0 and st["state"] == "running"
    assert _tmp_files(rd.path) == []


def test_run_progress_throttles_steps(tmp_path):
    rd = RunDir.create(tmp_path, run_id="r1")
    p = RunProgress(rd, every_seconds=3600.0)
    p.on_train_begin({"max_epochs": 1, "steps_per_epoch": 10})
    p.on_step(1, 10, {})  # first step is written (never written before)
    first = rd.status()["progress"]
    p.on_step(9, 10, {})  # within the interval: not written
    assert first == pytest.approx(0.1) and rd.status()["progress"] == pytest.approx(0.1)


class _Lin:
    def __init__(self):
        self.w = torch.nn.Parameter(torch.zeros(2))

    def parameters(self):
        return [self.w]

    def training_step(self, xb, yb, step):
        loss = ((xb @ self.w - yb) ** 2).mean()
        return loss, {"loss": float(loss.detach())}

    def validation_metrics(self):
        return {"val_loss": float((self.w - torch.tensor([1.0, 2.0])).abs().sum())}

    def train_state(self):
        return {"w": self.w.detach().clone()}

    def load_train_state(self, s):
        with torch.no_grad():
            self.w.copy_(s["w"])

    def on_recover(self):
        pass


def test_run_progress_with_the_training_loop(tmp_path):
    rd = RunDir.create(tmp_path, run_id="r1")
    X = torch.randn(30, 2, generator=torch.Generator().manual_seed(0))
    y = X @ torch.tensor([1.0, 2.0])
    m = _Lin()
    hist = fit(m, X, y, TrainConfig(max_epochs=3, batch_size=10, lr=0.1, patience=0),
               callbacks=[RunProgress(rd, every_seconds=0.0)])
    h = rd.history()
    assert [e["epoch"] for e in h] == [1, 2, 3]
    assert [e["val_loss"] for e in h] == pytest.approx([e["val_loss"] for e in hist.epochs])
    assert rd.status()["progress"] == 1.0


def test_a_killed_training_process_leaves_its_run_marked_interrupted(tmp_path):
    """Issue 14: a training process killed with SIGKILL left a run 'about 2 min left' forever."""
    import signal
    import subprocess
    import sys
    import time as _time

    from cellannot_core.runs import RunDir

    root = tmp_path / "runs"
    code = ("import time\n"
            "from cellannot_core.runs import RunDir\n"
            "rd = RunDir.create(%r, model='clams', run_id='r1')\n"
            "rd.set_status('running', message='training', eta=120)\n"
            "print('ready', flush=True); time.sleep(600)\n") % (str(root),)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    rd = RunDir.open(root, "r1")
    assert rd.worker_alive() and rd.check_interrupted()["state"] == "running"
    with pytest.raises(DataError, match="still training"):
        rd.delete()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    _time.sleep(0.1)
    st = rd.check_interrupted()
    assert st["state"] == "interrupted" and "stopped" in st["message"]
    assert RunDir.open(root, "r1").status()["state"] == "interrupted"  # written, not only reported
    rd.delete()
    assert not (root / "r1").exists()


def test_a_run_whose_thread_ended_unrecorded_is_interrupted_and_a_full_or_read_only_folder_is_one_line(tmp_path,
                                                                                                         monkeypatch):
    """Found 2026-12-07 (a probe of the app with its runs folder filled or made read-only mid-run): the app's runs
    train in threads of the server, so a thread that could not write its run's last state left it "running" for
    good (the process alive), undeletable ("still training: cancel it first", with nothing to cancel); a listing
    or a delete on a read-only folder raised OSError (every visitor's Runs page); a write the disk refused left
    its temporary file, holding the space."""
    import errno

    rd = RunDir.create(tmp_path, model="clams", run_id="r1")
    runs.claim_run(rd)
    rd.set_status("running", message="training")
    assert rd.worker_alive() and rd.check_interrupted()["state"] == "running"
    with pytest.raises(DataError, match="still training"):
        rd.delete()
    runs.release_run(rd)  # the thread ended without writing the run's last state
    assert not rd.worker_alive()

    def refused(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(runs.Path, "write_bytes", refused)
    listed = list_runs(tmp_path)  # the folder cannot be written: interrupted said, not written, no OSError
    assert [(r["id"], r["state"]) for r in listed] == [("r1", "interrupted")]
    assert "could not record why" in listed[0]["message"]
    monkeypatch.setattr(runs.os, "replace", lambda *a: refused("x"))
    with pytest.raises(OSError):
        rd.save_arrays({"a": np.zeros(3)})
    monkeypatch.undo()
    assert _tmp_files(tmp_path) == []  # no temporary file left by the refused writes
    assert rd.check_interrupted()["state"] == "interrupted" and rd.status()["state"] == "interrupted"

    import shutil

    def cannot(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", cannot)
    with pytest.raises(DataError, match="could not be deleted \\(permission denied\\)") as err:
        rd.delete()
    assert str(tmp_path) not in str(err.value)
    monkeypatch.undo()
    rd.delete()
    assert not (tmp_path / "r1").exists()


def test_csv_files_open_in_a_spreadsheet_without_running_a_label_as_a_formula():
    """Found 2026-12-07 (a probe of the app served to a lab): a cell type named
    ``=HYPERLINK("http://...","click")`` went into predictions.csv and the app's downloads, and into
    their column names (``p_<type>``), as a formula a spreadsheet runs."""
    import io

    import pandas as pd

    from cellannot_core.runs import csv_bytes

    trap = '=HYPERLINK("http://127.0.0.1:9/","click")'
    df = pd.DataFrame({"label": [trap, "@SUM(A1)", "+cmd", "-1.5", "CD4+ T", "B"],
                       "cluster": pd.Categorical(["-2", "=1+1", "x", "y", "z", "w"]),
                       f"p_{trap}": [0.1, 0.2, 0.3, 0.4, 0.5, -0.6]},
                      index=pd.Index(["=c1", "c2", "c3", "c4", "c5", "c6"], name="cell"))
    back = pd.read_csv(io.BytesIO(csv_bytes(df)), index_col=0, dtype={"label": str, "cluster": str})
    assert list(back["label"]) == ["'" + trap, "'@SUM(A1)", "'+cmd", "-1.5", "CD4+ T", "B"]
    assert list(back["cluster"]) == ["-2", "'=1+1", "x", "y", "z", "w"]
    assert list(back.columns) == ["label", "cluster", f"p_{trap}"]  # "p_..." starts no formula
    assert back.index[0] == "'=c1" and back.iloc[:, 2].tolist() == [0.1, 0.2, 0.3, 0.4, 0.5, -0.6]
    assert csv_bytes(df.rename(columns={"label": "=x"}), index=False).startswith(b"'=x,")
    series = pd.read_csv(io.BytesIO(csv_bytes(df["label"], index=False)), dtype=str)  # a Series too
    assert series["label"].iloc[0] == "'" + trap


def test_a_run_linked_in_from_another_disk_is_told_as_such_on_delete(tmp_path):
    """Found 2026-12-07 (a lab admin's probe): a run moved to another disk and linked back listed and opened,
    but Delete asked for the runs folder to be made writable (rmtree refuses a link); the link is not followed."""
    elsewhere = tmp_path / "other_disk"
    RunDir.create(elsewhere, model="logreg", run_id="r1").set_status("done")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "r1").symlink_to(elsewhere / "r1")
    rd = RunDir.open(tmp_path / "runs", "r1")
    with pytest.raises(DataError, match="its folder is a link to another place") as err:
        rd.delete()
    assert str(tmp_path) not in str(err.value) and (elsewhere / "r1" / RunFiles.STATUS).is_file()
    from cellannot_core.runs import folder_bytes

    assert folder_bytes(rd.path) == 0 < folder_bytes(elsewhere / "r1")  # `cellannot runs` counts the link, not the disk
