"""The command line (cli.py): bad input gives exit code 2 and one `error:` line, no traceback;
annotate / train / predict / models work."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from cellannot_core._constants import OutKeys, RunFiles
from cellannot_core.cli import main
from conftest import make_synthetic

ROOT = Path(__file__).resolve().parents[2]
LABEL = "cell_type"
FAST = ["--model", "resnet", "--hparam", "hidden=8,4", "--hparam", "blocks=1,1", "--max-epochs", "1",
        "--n-top-genes", "50", "--min-shared-genes", "20", "--device", "cpu"]


def _write(adata: ad.AnnData, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    ref = make_synthetic(240, 60, 3, seed=1)
    q = make_synthetic(80, 60, 3, seed=2)
    f = {"dir": d, "ref": _write(ref, d / "ref.h5ad"), "query": _write(q, d / "query.h5ad")}

    raw = f["ref"].read_bytes()
    (d / "truncated.h5ad").write_bytes(raw[: len(raw) // 3])
    f["truncated"] = d / "truncated.h5ad"
    (d / "text.h5ad").write_text("this is not an HDF5 file\n")
    f["not_h5"] = d / "text.h5ad"

    empty = ad.AnnData(X=sp.csr_matrix((0, 60), dtype=np.float32),
                       obs=pd.DataFrame({LABEL: pd.Categorical([])}, index=pd.Index([], dtype=str)),
                       var=ref.var.copy())
    f["empty"] = _write(empty, d / "empty.h5ad")

    X = ref.X.toarray()
    X[0, 0] = np.nan
    f["nan"] = _write(ad.AnnData(X=sp.csr_matrix(X), obs=ref.obs.copy(), var=ref.var.copy()), d / "nan.h5ad")
    X[0, 0] = np.inf
    f["inf"] = _write(ad.AnnData(X=sp.csr_matrix(X), obs=ref.obs.copy(), var=ref.var.copy()), d / "inf.h5ad")
    X = ref.X.toarray()
    X[1, 2] = -3
    f["negative"] = _write(ad.AnnData(X=sp.csr_matrix(X), obs=ref.obs.copy(), var=ref.var.copy()), d / "neg.h5ad")
    zero = ad.AnnData(X=sp.csr_matrix(ref.shape, dtype=np.float32), obs=ref.obs.copy(), var=ref.var.copy())
    f["zeros"] = _write(zero, d / "zeros.h5ad")

    one = ref.copy()
    one.obs[LABEL] = pd.Categorical(["T"] * one.n_obs)
    f["single_class"] = _write(one, d / "single.h5ad")
    small = make_synthetic(15, 60, 3, seed=4)  # about 5 cells per class, fewer than 10
    f["small_classes"] = _write(small, d / "small.h5ad")

    other = make_synthetic(80, 60, 3, seed=2, gene_prefix="OTHER")
    f["other_genes"] = _write(other, d / "other_genes.h5ad")

    dup = q.copy()
    dup.obs_names = [f"c{i % 40}" for i in range(dup.n_obs)]
    f["dup_query"] = _write(dup, d / "dup_query.h5ad")
    return f


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_one_error(code: int, err: str, match: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0]  # the error is the last thing said
    assert "internal error" not in errors[0]
    assert match.lower() in errors[0].lower(), errors[0]
    return errors[0]


def annotate_args(f, ref="ref", query="query", out=None, extra=()):
    ref_path = f[ref] if ref in f else ref
    q_path = f[query] if query in f else query
    return ["annotate", "--reference", ref_path, "--query", q_path, "--label-key", LABEL,
            "--out", out or f["dir"] / "out.h5ad", *FAST, *extra]


# ---- bad input: exit 2, one line ---------------------------------------------------------------------

@pytest.mark.parametrize("ref, query, match", [
    ("/no/such/ref.h5ad", "query", "does not exist"),
    ("ref", "/no/such/query.h5ad", "does not exist"),
    ("truncated", "query", "could not read"),
    ("not_h5", "query", "could not read"),
    ("empty", "query", "empty"),
    ("ref", "empty", "empty"),
    ("nan", "query", "NaN"),
    ("ref", "nan", "NaN"),
    ("inf", "query", "infinite"),
    ("negative", "query", "negative"),
    ("zeros", "query", "no usable counts"),
    ("ref", "zeros", "no usable counts"),
    ("single_class", "query", "single class"),
    ("small_classes", "query", "at least 10 cells"),
    ("ref", "other_genes", "genes"),
])
def test_bad_data_is_one_line_exit_2(capsys, files, ref, query, match):
    code, _, err = run_main(capsys, *annotate_args(files, ref, query))
    assert_one_error(code, err, match)
    assert not (files["dir"] / "out.h5ad").exists()


def test_missing_label_column(capsys, files):
    args = annotate_args(files)
    args[args.index("--label-key") + 1] = "celltype_typo"
    line = assert_one_error(*run_main(capsys, *args)[::2], match="celltype_typo")
    assert LABEL in line  # lists the columns there are


@pytest.mark.parametrize("extra, match", [
    (["--model", "nope"], "clams"),
    (["--hparam", "lr=abc"], "lr"),
    (["--hparam", "no_equals_sign"], "NAME=VALUE"),
    (["--hparam", "bogus=1"], "bogus"),
    (["--hparam", "hidden=8,x"], "hidden"),
    (["--batch-key", "donor_typo"], "batch key 'donor_typo' is a column of neither"),
    (["--accept", "1.5"], "accept is the share"),
    (["--max-epochs", "0"], "max_epochs must be a whole number of at least 1"),
    (["--seed", "-1"], "seed must be a whole number"),
    (["--threshold", "nan"], "threshold must be a number"),
])
def test_bad_options(capsys, files, extra, match):
    code, _, err = run_main(capsys, *annotate_args(files, extra=extra))
    assert_one_error(code, err, match)
    if extra[0] == "--hparam" and "=" in extra[1] and "hidden" not in extra[1]:  # before any data is read
        args = [str(a) for a in annotate_args(files, extra=extra)]  # (a reference not there: its error came first)
        args[args.index("--reference") + 1] = str(files["dir"] / "no_such_reference.h5ad")
        assert_one_error(*run_main(capsys, *args)[::2], match)


def test_cuda_without_gpu(capsys, files):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is available")
    code, _, err = run_main(capsys, *annotate_args(files, extra=["--device", "cuda"]))
    assert_one_error(code, err, "cuda")
    # said before any data is read (here a reference that is not there would be the error)
    args = [str(a) for a in annotate_args(files, extra=["--device", "cuda"])]
    args[args.index("--reference") + 1] = str(files["dir"] / "no_such_reference.h5ad")
    code, _, err = run_main(capsys, *args)
    assert_one_error(code, err, "no CUDA GPU")


def test_devices_are_spelled_as_torch_spells_them(capsys, files):
    """``cuda:N`` (one GPU of several) and any case are accepted; another name is refused by name."""
    from cellannot_core.cli import build_parser

    def parsed(device: str):
        return build_parser().parse_args([str(a) for a in annotate_args(files, extra=["--device", device])])

    assert parsed("CPU").device == "cpu" and parsed("cuda:1").device == "cuda:1"
    with pytest.raises(SystemExit):
        parsed("gpu")
    assert "unknown device 'gpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        code, _, err = run_main(capsys, *annotate_args(files, extra=["--device", "cuda:1"]))
        assert_one_error(code, err, "no CUDA GPU")


def test_out_must_be_h5ad(capsys, files):
    code, _, err = run_main(capsys, *annotate_args(files, out=files["dir"] / "out.csv"))
    assert_one_error(code, err, ".h5ad")
    assert not (files["dir"] / "out.csv").exists()


def test_predict_with_non_model_directory(capsys, files, tmp_path):
    code, _, err = run_main(capsys, "predict", "--model", tmp_path, "--query", files["query"],
                            "--out", tmp_path / "p.h5ad")
    assert_one_error(code, err, "bundle")
    code, _, err = run_main(capsys, "predict", "--model", tmp_path / "missing", "--query", files["query"],
                            "--out", tmp_path / "p.h5ad")
    assert_one_error(code, err, "missing does not exist")
    # a failed run's folder, and the runs folder itself, are said to be so (both "had no bundle.json" until
    # 2026-12-07, a command-line user's probe)
    from cellannot_core.runs import RunDir

    rd = RunDir.create(tmp_path / "runs", model="logreg")
    rd.set_status("failed", model="logreg", message="out of memory")
    code, _, err = run_main(capsys, "predict", "--model", rd.path, "--query", files["query"], "--out", tmp_path / "p.h5ad")
    assert_one_error(code, err, "is a run that failed, with no saved model: pass a finished run's folder")
    code, _, err = run_main(capsys, "predict", "--model", tmp_path / "runs", "--query", files["query"],
                            "--out", tmp_path / "p.h5ad")
    assert_one_error(code, err, "is a folder of runs: pass one finished run's folder in it")


def test_no_traceback_in_a_real_process(files):
    """One real `python -m cellannot_core` run: the error reaches the user as one line."""
    env = {**os.environ, "CELLANNOT_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "cellannot_core", *map(str, annotate_args(files, "truncated"))],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "could not read" in lines[-1]
    assert sum(ln.startswith("error:") for ln in lines) == 1
    assert proc.stdout == ""


def test_debug_shows_traceback(files):
    from cellannot_core.errors import DataError

    with pytest.raises(DataError):
        main(["--debug", *map(str, annotate_args(files, "/no/such/file.h5ad"))])


# ---- success paths -----------------------------------------------------------------------------------------

def test_models_lists_registry(capsys):
    code, out, _ = run_main(capsys, "models")
    assert code == 0
    heads = [ln for ln in out.splitlines() if not ln.startswith(" ")]
    assert [h.split(":")[0].split(" ")[0] for h in heads][:4] == ["scanvi_svm", "clams", "jem", "resnet"]
    assert heads[0].startswith("scanvi_svm (default):")
    assert "    sgld_steps = 20" in out and "    blocks = '2,4'" in out


def test_annotate_writes_output(capsys, files, tmp_path):
    out = tmp_path / "annot.h5ad"
    code, _, err = run_main(capsys, *annotate_args(files, out=out, extra=[
        "--save-model", tmp_path / "model", "--runs-dir", tmp_path / "runs", "--seed", "3", "--hvg-flavor", "seurat"]))  # not the default
    assert code == 0, err
    assert "error:" not in err and f"wrote {out}" in err and "labelled 80 query cells" in err
    # where the counts and the genes' names were found is said (nothing until 2026-12-07)
    assert "\ncounts: reference " in err and "; query " in err and "\ngenes: " in err
    a = ad.read_h5ad(out)
    assert a.n_obs == 80 and list(a.obs_names) == [f"cell{i}" for i in range(80)]
    for k in (OutKeys.LABEL, OutKeys.LABEL_RAW, OutKeys.CONFIDENCE, OutKeys.OOD_SCORE, OutKeys.IS_UNKNOWN):
        assert k in a.obs
    assert a.obsm[OutKeys.PROBA].shape == (80, 3) and a.obsm[OutKeys.LATENT].shape == (80, 4)
    card = a.uns[OutKeys.UNS]
    assert card["model"] == "resnet" and int(card["seed"]) == 3 and card["hparams"]["hidden"] == "8,4"
    assert int(card["hparams"]["max_epochs"]) == 1
    assert card["options"]["hvg_flavor"] == "seurat" and "flavor 'seurat')" in card["preprocessing"]
    assert (tmp_path / "model" / "bundle.json").is_file()
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and json.loads((runs[0] / RunFiles.STATUS).read_text())["state"] == "done"
    # the run's folder labels a new query as its saved model does (its model is in <run>/model)
    code, _, err = run_main(capsys, "predict", "--model", runs[0], "--query", files["query"], "--out",
                            tmp_path / "again.h5ad", "--device", "cpu")
    assert code == 0, err
    again = ad.read_h5ad(tmp_path / "again.h5ad")
    assert list(again.obs[OutKeys.LABEL_RAW]) == list(a.obs[OutKeys.LABEL_RAW])
    # a query cut short is one line, as annotate says it (predict's reader in chunks said "internal error" until
    # 2026-12-07, a command-line user's probe)
    code, _, err = run_main(capsys, "predict", "--model", tmp_path / "model", "--query", files["truncated"], "--out",
                            tmp_path / "cut.h5ad", "--device", "cpu")
    assert_one_error(code, err, "could not read query file 'truncated.h5ad': the file is cut short")


def test_the_same_file_as_reference_and_query_is_said(capsys, files, tmp_path):
    """Found 2026-12-07 (a command-line user's probe): annotate with one file as both ran without a word."""
    code, _, err = run_main(capsys, *annotate_args(files, query="ref", out=tmp_path / "same.h5ad"))
    assert code == 0, err
    assert "warning: the reference and the query are the same file" in err and "(5%)" in err


def test_duplicate_cell_names_warn_not_fail(capsys, files, tmp_path):
    import warnings

    out = tmp_path / "dup.h5ad"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code, _, err = run_main(capsys, *annotate_args(files, query="dup_query", out=out))
    assert code == 0, err
    assert "warning:" in err and "duplicate cell names" in err
    # said once, in the run's words: anndata's own warning, with its file paths, came again as the results were
    # written (found 2026-12-07, a command-line user's probe)
    assert not [w for w in seen if "names are not unique" in str(w.message)]
    a = ad.read_h5ad(out)
    assert a.n_obs == 80 and list(a.obs_names) == [f"c{i % 40}" for i in range(80)]  # input order and names


def test_train_then_predict(capsys, files, tmp_path):
    model_dir = tmp_path / "bundle"
    code, _, err = run_main(capsys, "train", "--reference", files["ref"], "--label-key", LABEL,
                            "--save-model", model_dir, *FAST, "--max-epochs", "5", "--hparam", "lr=0.01")
    assert code == 0, err
    assert "validation accuracy" in err and "error:" not in err
    cfg = json.loads((model_dir / RunFiles.CONFIG).read_text())
    assert cfg["model"] == "resnet" and cfg["hparams"]["hidden"] == "8,4" and cfg["hparams"]["max_epochs"] == 5
    assert cfg["hparams"]["lr"] == 0.01
    out = tmp_path / "pred.h5ad"
    code, _, err = run_main(capsys, "predict", "--model", model_dir, "--query", files["query"], "--out", out,
                            "--device", "cpu")
    assert code == 0, err
    assert "labelled 80 cells" in err and "query metrics" not in err
    code, _, err = run_main(capsys, "predict", "--model", model_dir, "--query", files["query"], "--out", out,
                            "--device", "cpu", "--query-label-key", LABEL)  # measured against the query's labels
    assert code == 0, err
    assert "query metrics: acc_in" in err
    a = ad.read_h5ad(out)
    acc = (a.obs[OutKeys.LABEL_RAW].astype(str) == a.obs[LABEL].astype(str)).mean()
    assert a.uns[OutKeys.UNS]["query_metrics"]["acc_in"] == pytest.approx(acc)
    assert a.n_obs == 80 and a.obsm[OutKeys.PROBA].shape == (80, 3)
    assert set(a.obs[OutKeys.LABEL_RAW].astype(str)) <= {"type0", "type1", "type2"}
    # well above chance (1/3); the synthetic query has its own baseline expression, so not perfect
    acc = (a.obs[OutKeys.LABEL_RAW].astype(str) == a.obs[LABEL].astype(str)).mean()
    assert acc > 0.6
    # a threshold that calls every cell Unknown: the log and the card name what sets each group apart
    code, _, err = run_main(capsys, "predict", "--model", model_dir, "--query", files["query"], "--out", out,
                            "--device", "cpu", "--threshold=-1e9")
    assert code == 0, err
    groups = ad.read_h5ad(out).uns[OutKeys.UNS]["unknown_groups"]
    assert sum(int(g["n_cells"]) for g in groups.values()) == 80  # grouped by predicted class (not knn_class)
    assert "Unknown group of" in err and "against the reference's" in err
    # ... and says so once, with the model's own threshold (found 2026-12-07: -1 did it silently)
    note = ad.read_h5ad(out).uns[OutKeys.UNS]["rejection"]["threshold_note"]
    assert "is below every query cell's" in note and err.count("warning: the threshold given (-1e+09)") == 1
    # predicting on a query with other gene names fails cleanly
    code, _, err = run_main(capsys, "predict", "--model", model_dir, "--query", files["other_genes"],
                            "--out", tmp_path / "x.h5ad", "--device", "cpu")
    assert_one_error(code, err, "genes")


@pytest.mark.parametrize("extra", [["--runs-dir", "runs"], ["--query-label-key", "bogus"], ["--threshold", "2"]])
def test_train_refuses_options_it_would_not_use_and_writing_into_its_inputs(capsys, files, tmp_path, extra):
    """Found 2026-12-07 (a command-line user's probe): train took --runs-dir, --query-label-key and --threshold and
    did nothing with them (or looked for the query's label column in the reference), and wrote its model into a
    10x query folder, which annotate refuses."""
    code, _, err = run_main(capsys, "train", "--reference", files["ref"], "--label-key", LABEL, "--save-model",
                            tmp_path / "m", *FAST, *extra)
    assert code == 2 and f"train has no option '{extra[0]}' (it is an option of annotate" in err, err
    tenx = tmp_path / "tenx"
    tenx.mkdir()
    code, _, err = run_main(capsys, "train", "--reference", files["ref"], "--query", files["query"], "--label-key",
                            LABEL, "--save-model", files["ref"], *FAST)
    assert_one_error(code, err, "is the reference itself")
    code, _, err = run_main(capsys, "train", "--reference", tenx, "--label-key", LABEL, "--save-model", tenx / "model",
                            *FAST)
    assert_one_error(code, err, "is inside the reference's folder")


def test_train_says_what_reading_the_reference_did(capsys, tmp_path):
    """Found 2026-12-07: ``train`` (and ``benchmark``) dropped a class of too few cells without a word,
    where ``annotate`` says so; and a batch key given to a model with no batch covariate is named for
    what it does there."""
    ref = make_synthetic(240, 60, 3, seed=1)
    ref.obs[LABEL] = ref.obs[LABEL].cat.add_categories(["rare"])
    ref.obs.iloc[:4, 0] = "rare"
    ref.obs["sample"] = np.where(np.arange(ref.n_obs) % 2, "a", "b")
    refp = _write(ref, tmp_path / "ref.h5ad")
    code, _, err = run_main(capsys, "train", "--reference", refp, "--label-key", LABEL, "--save-model",
                            tmp_path / "m", "--batch-key", "sample", *FAST)
    assert code == 0, err
    assert "warning: 1 reference class with fewer than 10 cells was dropped: rare (4)" in err
    assert "warning: resnet takes no batch covariate: the batch key 'sample' only names" in err
    # resnet's rule (knn_logit) has no per-sample shift: the warning said it named the samples for one
    assert "its Unknown rule, knn_logit, has no per-sample shift" in err and "per-sample shifts and notes" not in err
    code, _, err = run_main(capsys, "benchmark", "--reference", refp, "--query", refp, "--label-key", LABEL,
                            "--models", "logreg", "--n-top-genes", "50", "--min-shared-genes", "20", "--device", "cpu")
    assert code == 0, err
    assert "dropped: rare (4)" in err


def test_an_unwritable_output_fails_before_training_in_one_line(tmp_path):
    """Issue 14: writability was checked only after training; PermissionError / FileExistsError
    came out as 'internal error'."""
    import subprocess
    import sys as _sys

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    r = subprocess.run([_sys.executable, "-m", "cellannot_core", "annotate", "--reference", "/nonexistent_never.h5ad",
                        "--query", "/nonexistent_never.h5ad", "--label-key", "cell_type",
                        "--out", str(blocker / "out.h5ad")],
                       cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert "cannot write the annotated query" in r.stderr  # said before the data is even read


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    import anndata as ad
    import errno

    from cellannot_core.errors import DataError
    from cellannot_core.pipeline import write_h5ad_atomic

    def full_disk(self, path, **kw):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", full_disk)
    with pytest.raises(DataError, match="the disk is full"):
        write_h5ad_atomic(ad.AnnData(np.zeros((2, 2), np.float32)), tmp_path / "out.h5ad")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_a_run_writes_its_model_or_arrays_is_one_line(capsys, files, tmp_path, monkeypatch):
    """Found 2026-12-07 (`annotate --runs-dir` on a small tmpfs): a full disk while the run's model or arrays were
    written was "internal error (SafetensorError: ... os error 28)" or "(OSError: [Errno 28] ...)", exit 1, and
    the arrays' temporary file was left, holding the space."""
    import errno

    import safetensors.numpy

    def full(arrays, filename, *a, **k):
        Path(filename).write_bytes(b"partial")
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    def full_arrays(fh, **arrays):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    for i, (target, name, fake) in enumerate(((safetensors.numpy, "save_file", full), (np, "savez_compressed", full_arrays))):
        monkeypatch.setattr(target, name, fake)
        runs_dir = tmp_path / f"runs{i}"
        code, _, err = run_main(capsys, "annotate", "--reference", files["ref"], "--query", files["query"],
                                "--label-key", LABEL, "--out", tmp_path / f"out{i}.h5ad", "--runs-dir", runs_dir, *FAST)
        monkeypatch.undo()
        assert code == 2 and "no space left on device" in err and "internal error" not in err, err
        assert [ln for ln in err.splitlines() if ln.startswith("error")] == [err.strip().splitlines()[-1]], err
        assert "Traceback" not in err
        left = [p.name for p in runs_dir.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
        assert not left, left
        # nor is --out written: a pipeline skipping a job whose output exists took this failure for done (2026-12-07)
        assert not (tmp_path / f"out{i}.h5ad").exists()


def _bundle_to_tamper(capsys, files, tmp_path, monkeypatch) -> Path:
    """A copy of one saved bundle (trained once per test session's folder) at a 0.5 GiB memory limit."""
    import shutil

    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "0.5")
    base = tmp_path.parent / "tamper_base"
    if not base.exists():
        code, _, err = run_main(capsys, "train", "--reference", files["ref"], "--label-key", LABEL,
                                "--save-model", base, *FAST, "--max-epochs", "1")
        assert code == 0, err
    d = tmp_path / "bundle"
    shutil.copytree(base, d)
    return d


@pytest.mark.parametrize("field, value, words", [
    ("temperature", 0, "temperature"),
    ("temperature", "hot", "temperature"),
    ("ood_method", "no_such_score", "novelty score"),
    ("n_features", 10**9, "n_features"),
    ("classes", ["only one"], "classes"),
    ("genes", None, "genes"),
    ("hparams", {"hidden": "4000,4000,64", "blocks": "1,1,1"}, "CELLANNOT_MEMORY_LIMIT_GB"),
    # bundle.json's own fields (found 2026-12-06: min_shared_genes "x" was an internal error)
    ("bundle.json:min_shared_genes", "x", "min_shared_genes is not a whole number"),
    ("bundle.json:norm_genes", "x", "norm_genes is not a list of gene names"),
    ("bundle.json:batch_key", 5, "batch_key is not a name"),
])
def test_a_tampered_bundle_is_refused_in_one_line(capsys, files, tmp_path, monkeypatch, field, value, words):
    """Issue 14: temperature 0 gave exit 0 with every confidence NaN; n_features 1e9 cost 82 s and
    8 GB; an unknown ood_method or genes null came out as 'internal error'. Widths past the memory
    limit (here 0.5 GiB; 1.4 GiB to train) are refused before the net is allocated."""
    import time as _time

    d = _bundle_to_tamper(capsys, files, tmp_path, monkeypatch)
    name = "bundle.json" if field == "genes" else RunFiles.CONFIG
    name, field = field.split(":") if ":" in field else (name, field)
    cfg = json.loads((d / name).read_text())
    cfg[field] = value
    (d / name).write_text(json.dumps(cfg))
    t0 = _time.time()
    code, _, err = run_main(capsys, "predict", "--model", d, "--query", files["query"], "--out", tmp_path / "o.h5ad",
                            "--device", "cpu")
    assert_one_error(code, err, words)
    assert "damaged" in err and _time.time() - t0 < 30
    assert not (tmp_path / "o.h5ad").exists()


def test_a_sweep_whose_trials_cannot_run_says_why_in_one_line_each(capfd, files, tmp_path):
    """Found 2026-12-06: a trial refused for its settings printed Optuna's traceback, a sweep whose
    trials all failed ended with exit 0 and no word, and `hidden=400000` (a 400,000-dimensional
    latent space) trained and then failed as 'internal error' asking for a 1.2 TiB covariance."""
    code = main(["sweep", "--reference", str(files["ref"]), "--query", str(files["query"]), "--label-key", LABEL,
                 "--model", "clams", "--param", "hidden=8,4000/400000", "--sampler", "grid", "--trials", "2",
                 "--storage", str(tmp_path / "s.db"), "--runs-dir", str(tmp_path / "runs"), "--n-top-genes", "50",
                 "--min-shared-genes", "20", "--device", "cpu"])
    err = capfd.readouterr().err
    assert_one_error(code, err, "no trial of the sweep finished")
    for n in (0, 1):
        assert f"trial {n} failed: the last hidden width is the latent space" in err


def test_a_sweeps_last_line_says_where_its_best_model_is(capfd, files, tmp_path):
    """Found 2026-12-07 (a pipeline author's probe): "best of N trials: trial 2, ..." named no run folder (it was
    in the trial's own line) and, without --runs-dir, no way to train it."""
    common = ["sweep", "--reference", str(files["ref"]), "--query", str(files["query"]), "--label-key", LABEL,
              "--model", "logreg", "--param", "C=0.5", "--trials", "1", "--n-top-genes", "50",
              "--min-shared-genes", "20", "--device", "cpu"]
    assert main([*common, "--storage", str(tmp_path / "a.db"), "--runs-dir", str(tmp_path / "runs")]) == 0
    last = capfd.readouterr().err.strip().splitlines()[-1]
    run = next((tmp_path / "runs").iterdir())
    assert last.startswith("best of 1 trials: trial 0") and last.endswith(f"its run and model: {run}")
    assert main([*common, "--storage", str(tmp_path / "b.db")]) == 0
    assert capfd.readouterr().err.strip().splitlines()[-1].endswith("train it: cellannot train ... --hparam C=0.5")


def test_running_out_of_memory_is_one_line_saying_what_to_do(capsys, files, monkeypatch, tmp_path):
    import cellannot_core.cli as cli
    from cellannot_core.errors import DataError, failure_message

    def oom(args):
        raise MemoryError("Unable to allocate 1.16 TiB for an array with shape (400000, 400000) and data type float64")

    monkeypatch.setitem(cli.COMMANDS, "annotate", oom)
    code, _, err = run_main(capsys, *annotate_args(files, out=tmp_path / "o.h5ad"))
    assert "1.16 TiB" in assert_one_error(code, err, "ran out of memory")
    alloc = RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried "
                         "to allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)")
    assert failure_message(alloc).startswith("ran out of memory")
    assert failure_message(DataError("the query has no cells")) == "the query has no cells"
    assert failure_message(KeyError("x")).startswith("internal error: KeyError")


@pytest.mark.parametrize("command, option", [("annotate", "--runs-dir"), ("annotate", "--save-model"),
                                             ("train", "--save-model"), ("sweep", "--runs-dir"),
                                             ("sweep", "--storage"), ("app", "--runs-dir")])
def test_an_output_folder_that_cannot_be_written_is_one_line_before_training(capsys, files, tmp_path, monkeypatch,
                                                                             command, option):
    """Found 2026-12-06: --runs-dir or --save-model naming a file (or a place that cannot be made)
    ended as 'internal error', --save-model only after the whole training."""
    def no_server(*a):
        raise AssertionError("the app was started")

    monkeypatch.setattr(os, "execve", no_server)  # `app` must stop before it becomes the server
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    target = blocker / "inside.db" if option == "--storage" else blocker
    common = ["--reference", files["ref"], "--label-key", LABEL, *FAST]
    argv = {"annotate": ["annotate", *common, "--query", files["query"], "--out", tmp_path / "o.h5ad"],
            "train": ["train", *common],
            "sweep": ["sweep", *common, "--query", files["query"], "--trials", "1",
                      *(["--storage", tmp_path / "s.db"] if option != "--storage" else [])],
            "app": ["app", "--port", "8597"]}[command]
    code, out, err = run_main(capsys, *argv, option, target)
    line = assert_one_error(code, err, "a_file")
    assert "is a file, not a folder" in line or "a folder on the way is a file" in line
    assert "training" not in out.lower() and not (tmp_path / "o.h5ad").exists()


def test_benchmark_refuses_a_bad_hyper_parameter_or_table_path_before_training(capsys, files, tmp_path, monkeypatch):
    """An --out that could not be written was an internal error after every model had trained, and
    a misspelt hyper-parameter a failed row of the table after the data was read."""
    import cellannot_core.pipeline as pipeline

    def never(*a, **k):
        raise AssertionError("the data was read")

    monkeypatch.setattr(pipeline, "prepare_data", never)
    base = ["benchmark", "--reference", files["ref"], "--query", files["query"], "--label-key", LABEL,
            "--models", "logreg", "knn"]
    (tmp_path / "file").write_text("")
    for extra, match in [(["--out", tmp_path / "file" / "t.csv"], "cannot write the benchmark table"),
                         (["--hparam", "logreg.nope=1"], "has no hyper-parameter 'nope'"),
                         (["--hparam", "knn.n_neighbors=-3"], "n_neighbors")]:
        assert_one_error(*run_main(capsys, *base, *extra)[::2], match)


def test_an_address_or_port_the_app_cannot_listen_on_is_one_line(capsys, monkeypatch):
    """A port out of range or an address that does not resolve were Streamlit's traceback, and a
    port in use a line among its logs."""
    import socket

    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("the server was started"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for argv, match in [(["--port", "70000"], "from 1 to 65535"),
                            (["--address", "999.1.1.1"], "not an address of this machine"),
                            (["--address", "127.0.0.1", "--port", str(port)], f"port {port} is in use")]:
            assert_one_error(*run_main(capsys, "app", *argv)[::2], match)


def test_an_output_is_never_written_over_an_input(capsys, files, tmp_path):
    """`predict --out` naming the query overwrote the user's query file, and `--out model/bundle.json`
    the saved model; `annotate --out` naming the reference overwrote it after training."""
    import cellannot_core as ca

    query = tmp_path / "query.h5ad"
    query.write_bytes(files["query"].read_bytes())
    link = tmp_path / "link.h5ad"
    link.symlink_to(query)
    model = tmp_path / "model"
    code, _, err = run_main(capsys, "train", "--reference", files["ref"], "--label-key", LABEL, "--save-model", model,
                            *FAST)
    assert code == 0, err
    saved = {p.name: p.read_bytes() for p in model.iterdir()}
    before = query.read_bytes()
    for argv, match in [(["--out", query], "is the query itself"), (["--out", link], "is the query itself"),
                        (["--out", model / "bundle.json"], "must end in .h5ad"),
                        (["--out", model / "labelled.h5ad"], "inside the saved model's folder")]:
        assert_one_error(*run_main(capsys, "predict", "--model", model, "--query", link, *argv)[::2], match)
    reference = files["ref"].read_bytes()
    assert_one_error(*run_main(capsys, *annotate_args(files, query=str(query), out=files["ref"]))[::2],
                     "is the reference itself")
    assert_one_error(*run_main(capsys, *annotate_args(files, query=str(query), out=tmp_path / "o.h5ad",
                                                      extra=["--save-model", link]))[::2], "is the query itself")
    assert files["ref"].read_bytes() == reference
    with pytest.raises(ca.errors.DataError, match="is the query itself"):
        ca.Annotator.load(model).predict_file(link, out=query)
    with pytest.raises(ca.errors.DataError, match="inside the saved model's folder"):
        ca.Annotator.load(model).predict_file(query, out=model / "x.h5ad")
    assert query.read_bytes() == before and {p.name: p.read_bytes() for p in model.iterdir()} == saved


def test_a_model_is_not_saved_over_files_that_are_not_a_saved_models(capsys, files, tmp_path):
    """`--save-model .` in a project folder replaced its config.json with the model's."""
    import cellannot_core as ca

    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"my": "settings"}')
    (project / "notes.txt").write_text("mine")
    train = ["train", "--reference", files["ref"], "--label-key", LABEL, *FAST]
    assert_one_error(*run_main(capsys, *train, "--save-model", project)[::2], "not a saved model's")
    assert (project / "config.json").read_text() == '{"my": "settings"}'
    assert run_main(capsys, *train, "--save-model", tmp_path / "m")[0] == 0
    annotator = ca.Annotator.load(tmp_path / "m")
    with pytest.raises(ca.errors.DataError, match="not a saved model's"):
        annotator.save(project)
    assert run_main(capsys, *train, "--save-model", tmp_path / "m")[0] == 0  # a saved model is replaced
    (tmp_path / "m" / "extra.txt").write_text("kept")
    annotator.save(tmp_path / "m")
    assert (tmp_path / "m" / "extra.txt").read_text() == "kept"
    # a save stopped part way (killed after the weights, before bundle.json) is named as the likely cause
    (tmp_path / "m" / "bundle.json").unlink()
    with pytest.raises(ca.errors.DataError, match="a save that was stopped part way leaves such a folder"):
        annotator.save(tmp_path / "m")


def test_names_with_a_slash_are_written_flat_not_as_nested_groups(capsys, tmp_path):
    """Cell types are often named with a "/" ("T/NK", "Endothelial/pericyte"). HDF5 reads a "/" in a
    key as a path: the run card in the output's uns came back with {"T": {"NK": 181}} for
    predicted_counts["T/NK"], and anndata warns it will refuse such keys, which would fail the
    write after training. Keys and the user's own columns are written with the division slash."""
    import warnings

    ref = make_synthetic(240, 60, 3, seed=1)
    q = make_synthetic(80, 60, 4, seed=2)  # type3: a type the reference lacks
    for a in (ref, q):
        a.obs[LABEL] = a.obs[LABEL].astype(str).replace({"type0": "T/NK", "type1": "B/plasma", "type3": "NK/ILC"})
    q.obs["qc/flag"] = 1
    refp, qp, out = _write(ref, tmp_path / "r.h5ad"), tmp_path / "q.h5ad", tmp_path / "o.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q.write_h5ad(qp)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*[Ss]lash")
        code, _, err = run_main(capsys, "annotate", "--reference", refp, "--query", qp, "--label-key", LABEL,
                                "--query-label-key", LABEL, "--out", out, *FAST)
        assert code == 0, err
        a = ad.read_h5ad(out)
    card = a.uns[OutKeys.UNS]
    counts = card["predicted_counts"]
    assert all(not isinstance(v, dict) for v in counts.values()), counts
    assert {"T\u2215NK", "B\u2215plasma"} <= set(counts) and sum(counts.values()) == 80
    assert set(card["classes"]) == {"T/NK", "B/plasma", "type2"}  # values are kept as they are
    assert set(a.obs[OutKeys.LABEL_RAW].astype(str)) <= {"T/NK", "B/plasma", "type2"}
    assert "qc\u2215flag" in a.obs and (a.obs["qc\u2215flag"] == 1).all()
    from cellannot_core.pipeline import h5_names  # the names HDF5 takes for the group itself
    odd = ad.AnnData(np.ones((2, 2), dtype=np.float32))
    odd.uns["c"] = {".": 1, "": 2, "a\0b": 3}
    with h5_names(odd):
        odd.write_h5ad(tmp_path / "odd.h5ad")
    assert dict(ad.read_h5ad(tmp_path / "odd.h5ad").uns["c"]) == {"(.)": 1, "(empty)": 2, "ab": 3}
    assert set(odd.uns["c"]) == {".", "", "a\0b"}  # the object itself as it was
    # a file labelled a chunk at a time by a saved model: the same
    model = tmp_path / "m"
    assert run_main(capsys, "train", "--reference", refp, "--label-key", LABEL, "--save-model", model, *FAST)[0] == 0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*[Ss]lash")
        code, _, err = run_main(capsys, "predict", "--model", model, "--query", qp, "--out", tmp_path / "p.h5ad",
                                "--device", "cpu", "--query-label-key", LABEL)
        assert code == 0, err
        p = ad.read_h5ad(tmp_path / "p.h5ad")
    per_type = p.uns[OutKeys.UNS]["query_metrics"]["per_type_auroc"]
    assert list(per_type) == ["NK\u2215ILC"] and not isinstance(per_type["NK\u2215ILC"], dict)
    assert "qc\u2215flag" in p.obs


def test_the_apps_model_download_is_read_as_it_is(capsys, files, tmp_path):
    """The app offers a run's model as "Model bundle (.zip)"; `predict --model` and
    `Annotator.load` wanted the folder ("has no bundle.json"). The zip is now read as it is, unpacked
    with the same guards as a dataset's archive, with the labels the folder gives."""
    import zipfile

    import cellannot_core as ca

    model_dir = tmp_path / "bundle"
    assert run_main(capsys, "train", "--reference", files["ref"], "--label-key", LABEL, "--save-model", model_dir,
                    *FAST)[0] == 0
    zipped = tmp_path / "run_model.zip"
    with zipfile.ZipFile(zipped, "w") as zf:  # as ui.results.model_zip writes it
        for p in sorted(model_dir.rglob("*")):
            zf.write(p, Path("model") / p.relative_to(model_dir))
    outs = {}
    for name, model in (("folder", model_dir), ("zip", zipped)):
        outs[name] = tmp_path / f"{name}.h5ad"
        code, _, err = run_main(capsys, "predict", "--model", model, "--query", files["query"], "--out", outs[name],
                                "--device", "cpu")
        assert code == 0, err
    a, b = (ad.read_h5ad(outs[k]) for k in ("folder", "zip"))
    np.testing.assert_array_equal(a.obs[OutKeys.LABEL].astype(str), b.obs[OutKeys.LABEL].astype(str))
    np.testing.assert_allclose(a.obsm[OutKeys.PROBA], b.obsm[OutKeys.PROBA], rtol=1e-6)
    assert ca.Annotator.load(zipped, device="cpu").classes == ["type0", "type1", "type2"]
    # an archive of no model, a damaged one, one whose member climbs out: one line each, naming the archive
    empty = tmp_path / "nothing.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "x")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(zipped.read_bytes()[: zipped.stat().st_size // 2])
    escape = tmp_path / "escape.zip"
    with zipfile.ZipFile(escape, "w") as zf:
        zf.writestr("../bundle.json", "{}")
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(damaged, "w") as zf:
        for p in sorted(model_dir.rglob("*")):
            zf.writestr(f"model/{p.name}", b"not weights" if p.suffix == ".safetensors" else p.read_bytes())
    for path, words in ((empty, "holds no saved model"), (broken, "cannot unpack"), (escape, "unsafe path"),
                        (damaged, "damaged.zip")):
        code, _, err = run_main(capsys, "predict", "--model", path, "--query", files["query"],
                                "--out", tmp_path / "x.h5ad", "--device", "cpu")
        line = assert_one_error(code, err, words)
        assert "cellannot_archive_" not in line, line  # the archive by its name, never the temporary folder
    assert not (tmp_path / "x.h5ad").exists() and not (tmp_path.parent / "bundle.json").exists()


def _seuratdisk_like(adata: ad.AnnData, path: Path) -> Path:
    """``adata`` written as SeuratDisk's Convert writes raw.var: its index under another name and a
    column ``_index``, which anndata reads but refuses to write back."""
    import h5py

    a = adata.copy()
    a.raw = a.copy()
    a.write_h5ad(path)
    with h5py.File(path, "r+") as f:
        g = f["raw/var"]
        g.copy(g[g.attrs["_index"]], "features")
        g.attrs["_index"] = "features"
        g.attrs["column-order"] = list(g.attrs["column-order"]) + ["_index"]
    assert "_index" in ad.read_h5ad(path).raw.var
    return path


def test_a_query_converted_from_seurat_is_labelled_and_written(capsys, files, tmp_path):
    """A query converted from a Seurat object with SeuratDisk has a raw.var column '_index', which
    anndata reads and will not write: annotate trained, then failed with 'internal error' at
    'writing results', the run marked failed (scverse/anndata#990, mojaveazure/seurat-disk#71). The
    column is written as '_index_column'; what else anndata would refuse is one line before training."""
    from cellannot_core.errors import DataError
    from cellannot_core.pipeline import AnnotateOptions, annotate

    query = _seuratdisk_like(make_synthetic(80, 60, 3, seed=2), tmp_path / "converted.h5ad")
    out = tmp_path / "o.h5ad"
    code, _, err = run_main(capsys, "annotate", "--reference", files["ref"], "--query", query, "--label-key", LABEL,
                            "--out", out, "--runs-dir", tmp_path / "runs", *FAST)
    assert code == 0, err
    a = ad.read_h5ad(out)
    assert a.raw.var.columns.tolist() == ["_index_column"] and a.n_obs == 80 and OutKeys.LABEL in a.obs
    # something anndata cannot store: said before any training, naming the part, not its contents
    q = make_synthetic(80, 60, 3, seed=2)
    q.uns["notes"] = {"made_by": object()}
    lines: list[str] = []
    with pytest.raises(DataError, match="query's uns cannot be written to an .h5ad file") as e:
        annotate(ad.read_h5ad(files["ref"]), q, AnnotateOptions(label_key=LABEL, model="logreg", n_top_genes=50,
                                                                 min_shared_genes=20, device="cpu"),
                 out=tmp_path / "o2.h5ad", log=lines.append)
    assert "object at 0x" not in str(e.value) and not any("training" in line for line in lines), lines


def test_a_query_read_whole_that_could_not_be_written_is_refused_before_labelling(files, tmp_path, monkeypatch):
    """predict_file reads a query that is not an .h5ad whole and writes it back annotated: what anndata
    could not write is said before labelling (check_h5ad_writable), as annotate says it before training."""
    import cellannot_core.data as cdata
    import cellannot_core.pipeline as pl
    from cellannot_core.errors import DataError
    from cellannot_core.streaming import predict_file

    model_dir = tmp_path / "m"
    assert main(["train", "--reference", str(files["ref"]), "--label-key", LABEL, "--save-model", str(model_dir),
                 *FAST]) == 0
    q = make_synthetic(80, 60, 3, seed=2)
    q.uns["made_by"] = {"tool": object()}
    csv = tmp_path / "q.csv"
    csv.write_text("cell,GENE0\nc1,1\n")
    monkeypatch.setattr(cdata, "read_dataset", lambda *a, **k: q)
    called = []
    monkeypatch.setattr(pl, "predict_query", lambda *a, **k: called.append(1))
    with pytest.raises(DataError, match="query's uns cannot be written to an .h5ad file"):
        predict_file(model_dir, csv, out=tmp_path / "o.h5ad", device="cpu")
    assert not called and not (tmp_path / "o.h5ad").exists()


def test_how_a_file_was_read_is_said_in_the_log(capsys, files, tmp_path):
    """A table's orientation is guessed from its names and the Data page said so; the command line
    did not, so a table read the wrong way round failed later for no visible reason."""
    q = ad.read_h5ad(files["query"])
    table = tmp_path / "query.csv"
    q.to_df().to_csv(table)
    code, _, err = run_main(capsys, "annotate", "--reference", files["ref"], "--query", table, "--label-key", LABEL,
                            "--out", tmp_path / "o.h5ad", "--save-model", tmp_path / "model", *FAST)
    assert code == 0, err
    assert "note: the query: the table was read with cells as rows (" in err and "save it transposed" in err
    code, _, err = run_main(capsys, "predict", "--model", tmp_path / "model", "--query", table,
                            "--out", tmp_path / "p.h5ad")  # and when a saved model labels it
    assert code == 0, err
    assert "note: the query: the table was read with cells as rows (" in err and "save it transposed" in err


def test_a_tables_orientation_can_be_set_where_the_guess_is_wrong(capsys, files, tmp_path):
    """Samples named after the markers they were sorted on ("CD4_1", "CD8_2") look like genes, so a
    genes x samples table was read the wrong way round; the note said to save it transposed, and
    nothing else helped. Now the command line takes the orientation."""
    q = ad.read_h5ad(files["query"])
    q.obs_names = [f"CD{i % 9}_{i}" for i in range(q.n_obs)]
    table = tmp_path / "genes_x_samples.csv"
    q.to_df().T.to_csv(table)
    code, _, err = run_main(capsys, "annotate", "--reference", files["ref"], "--query", table, "--label-key", LABEL,
                            "--out", tmp_path / "guessed.h5ad", *FAST)
    assert code == 2 and "Traceback" not in err  # the samples were taken for genes: none shared
    assert "the table was read with cells as rows (column names look like genes)" in err
    code, _, err = run_main(capsys, "annotate", "--reference", files["ref"], "--query", table, "--label-key", LABEL,
                            "--query-orientation", "genes_x_cells", "--out", tmp_path / "set.h5ad",
                            "--save-model", tmp_path / "model", *FAST)
    assert code == 0, err
    assert "the table was read with genes as rows (set by the user)" in err and "transposed" not in err
    out = ad.read_h5ad(tmp_path / "set.h5ad")
    assert out.n_obs == q.n_obs and list(out.obs_names) == list(q.obs_names)
    h5 = tmp_path / "query.h5ad"
    q.write_h5ad(h5)
    code, _, err = run_main(capsys, "predict", "--model", tmp_path / "model", "--query", table,
                            "--query-orientation", "genes_x_cells", "--out", tmp_path / "p.h5ad")
    assert code == 0, err
    code, _, err = run_main(capsys, "predict", "--model", tmp_path / "model", "--query", h5, "--out", tmp_path / "h.h5ad")
    assert code == 0, err
    got, want = (ad.read_h5ad(tmp_path / n).obs[OutKeys.LABEL].astype(str).tolist() for n in ("p.h5ad", "h.h5ad"))
    assert got == want


def test_a_run_that_fails_leaves_no_empty_folders_behind(capsys, files, tmp_path):
    """The output's folders were created when they were checked, before training, so a run that
    failed (here: a label column the reference lacks) left empty folders where the results were to go."""
    out, model = tmp_path / "new" / "out.h5ad", tmp_path / "models" / "m1"
    code, _, err = run_main(capsys, "annotate", "--reference", files["ref"], "--query", files["query"],
                            "--label-key", "no_such_column", "--out", out, "--save-model", model, *FAST)
    assert code == 2 and "no_such_column" in err
    assert not (tmp_path / "new").exists() and not (tmp_path / "models").exists()
    code, _, err = run_main(capsys, "annotate", "--reference", files["ref"], "--query", files["query"],
                            "--label-key", LABEL, "--out", out, "--save-model", model, *FAST)
    assert code == 0, err
    assert out.is_file() and (model / "bundle.json").is_file()  # the writers make the folders they need


def test_predict_writes_a_run_the_app_reopens_when_given_a_runs_folder(capsys, files, tmp_path, monkeypatch):
    """annotate --runs-dir wrote a run the app reopens; predict wrote only the annotated file, so a query
    labelled later with that run's model could not be looked at in the app. With --runs-dir (and a
    run's folder as --model) it is labelled into a new run there, the app's own relabel."""
    from cellannot_core.runs import RunDir, list_runs

    runs = tmp_path / "runs"
    code, _, err = run_main(capsys, "annotate", "--reference", files["ref"], "--query", files["query"],
                            "--label-key", LABEL, "--out", tmp_path / "a.h5ad", "--runs-dir", runs, *FAST)
    assert code == 0, err
    (trained,) = [r["id"] for r in list_runs(runs)]
    code, _, err = run_main(capsys, "predict", "--model", runs / trained, "--query", files["query"],
                            "--out", tmp_path / "p.h5ad", "--runs-dir", runs, "--query-label-key", LABEL)
    assert code == 0, err
    new = [r for r in list_runs(runs) if r["id"] != trained]
    assert len(new) == 1 and new[0]["state"] == "done"
    card = RunDir.open(runs, new[0]["id"]).card()
    assert card["labelled_with"]["run"] == trained and card["query_metrics"]["acc_in"] > 0
    from cellannot_core._constants import RunFiles
    from cellannot_core.runs import read_json

    names = {r: read_json(RunDir.open(runs, r).file(RunFiles.REQUEST))["names"] for r in (trained, new[0]["id"])}
    assert names == {trained: {"reference": Path(files["ref"]).name, "query": Path(files["query"]).name},  # the Runs
                     new[0]["id"]: {"query": Path(files["query"]).name}}  # table's columns; file names, no folders
    code, _, err = run_main(capsys, "predict", "--model", runs / trained, "--query", files["query"],
                            "--out", tmp_path / "plain.h5ad")
    assert code == 0, err
    got, want = (ad.read_h5ad(tmp_path / n).obs[OutKeys.LABEL].astype(str).tolist() for n in ("p.h5ad", "plain.h5ad"))
    assert got == want  # the same labels as predict gives
    code, _, err = run_main(capsys, "predict", "--model", tmp_path / "none", "--query", files["query"],
                            "--out", tmp_path / "x.h5ad", "--runs-dir", runs)
    assert_one_error(code, err, "needs --model to be a run's folder")
    import shutil

    shutil.copytree(runs / trained, tmp_path / "modelless" / trained)  # a run whose model was deleted by hand:
    shutil.rmtree(tmp_path / "modelless" / trained / RunFiles.MODEL_DIR)  # told so, not "no run's folder" (2026-12-07)
    code, _, err = run_main(capsys, "predict", "--model", tmp_path / "modelless" / trained, "--query", files["query"],
                            "--out", tmp_path / "x.h5ad", "--runs-dir", runs)
    assert_one_error(code, err, "finished, but its saved model")
    import cellannot_core.data.stream as stream

    monkeypatch.setenv("CELLANNOT_STREAM_QUERY_MB", "0")  # a query too large to hold: a sample, every cell labelled
    monkeypatch.setattr(stream, "SAMPLE_CELLS", 30)
    code, _, err = run_main(capsys, "predict", "--model", runs / trained, "--query", files["query"],
                            "--out", tmp_path / "s.h5ad", "--runs-dir", runs)
    assert code == 0, err
    streamed = ad.read_h5ad(tmp_path / "s.h5ad")  # the whole file, its matrices copied, with the annotations
    assert streamed.n_obs == 80 and streamed.obs[OutKeys.LABEL].astype(str).tolist() == want
    latest = RunDir.open(runs, list_runs(runs)[0]["id"]).card()
    assert latest["query_read_in_chunks"]["n_sample"] == 30 and latest["n_query"] == 80


def test_counts_in_a_layer_of_another_name_are_named_with_layer(capsys, files, tmp_path):
    """A reference whose X holds scaled values and whose counts are in layers['umis'] (as a scanpy user
    saves one): refused with the layer named, then read with --layer umis, the query's counts (in X)
    found as usual; predict takes --layer for its query too, and the annotated copy keeps its X."""
    import anndata as ad

    ref = ad.read_h5ad(files["ref"])
    ref.layers["umis"] = ref.X.copy()
    ref.X = sp.csr_matrix(np.where(ref.X.toarray() > 0, -0.5, 0.5).astype(np.float32))  # scaled: negatives
    layered = _write(ref, tmp_path / "layered.h5ad")

    def args(reference, out):
        return ["annotate", "--reference", reference, "--query", files["query"], "--label-key", LABEL, "--out", out,
                "--model", "logreg", "--n-top-genes", "50", "--min-shared-genes", "20", "--device", "cpu"]

    code, _, err = run_main(capsys, *args(layered, tmp_path / "a.h5ad"))
    assert_one_error(code, err, "layers['umis'] holds counts")
    code, out, err = run_main(capsys, *args(layered, tmp_path / "a.h5ad"), "--layer", "umis", "--save-model", tmp_path / "m")
    assert code == 0, err
    assert "the query has no layer 'umis'" in out + err
    assert run_main(capsys, *args(files["ref"], tmp_path / "b.h5ad"))[0] == 0
    a, b = ad.read_h5ad(tmp_path / "a.h5ad"), ad.read_h5ad(tmp_path / "b.h5ad")
    assert list(a.obs["cellannot_label"].astype(str)) == list(b.obs["cellannot_label"].astype(str))
    q = ad.read_h5ad(files["query"])
    q.layers["umis"] = q.X.copy()
    q.X = sp.csr_matrix(-q.X.toarray().astype(np.float32))
    lq = _write(q, tmp_path / "layered_query.h5ad")
    code, out, err = run_main(capsys, "predict", "--model", tmp_path / "m", "--query", lq, "--out", tmp_path / "p.h5ad",
                              "--layer", "umis", "--device", "cpu")
    assert code == 0, err
    p = ad.read_h5ad(tmp_path / "p.h5ad")
    assert list(p.obs["cellannot_label"].astype(str)) == list(a.obs["cellannot_label"].astype(str))
    assert "umis" in p.layers and p.X.min() < 0  # the user's file, annotated
    # annotate --layer too (until 2026-12-07 it wrote the layer as X and dropped the query's layers), and the card
    # names the layer the counts came from (it said "X")
    code, out, err = run_main(capsys, *args(layered, tmp_path / "c.h5ad")[:4], lq, *args(layered, tmp_path / "c.h5ad")[5:],
                              "--layer", "umis")
    assert code == 0, err
    c = ad.read_h5ad(tmp_path / "c.h5ad")
    assert "umis" in c.layers and c.X.min() < 0 and c.n_obs == q.n_obs
    assert list(c.obs["cellannot_label"].astype(str)) == list(b.obs["cellannot_label"].astype(str))
    assert c.uns["cellannot"]["data_report"]["query"]["counts_source"].startswith("raw counts from layers['umis']")


@pytest.mark.parametrize("field, value, words", [
    ("model", "GENE_" * 200_000, "unknown model"),
    ("format_version", "SECRET\x1b[31mX\x07\n" * 5, "newer format"),
    ("ood_method", "SECRET\x1b]0;x\x07" * 20, "novelty score"),
    ("weights link", None, "is a link to a file outside the model's folder"),
    ("config link", None, "is a link to a file outside the model's folder"),
])
def test_a_bundle_quoting_escapes_or_a_long_name_or_linking_out_is_refused_in_one_clean_line(
        capsys, files, tmp_path, monkeypatch, field, value, words):
    """Found 2026-12-07 by a third probe: a config's model name was quoted whole (a 1,000,178-byte error
    line), its format_version with its escape sequences, and weights.safetensors linked to a file outside
    the bundle folder was read. Names from a file are quoted cleaned and short; links out are refused."""
    import os

    d = _bundle_to_tamper(capsys, files, tmp_path, monkeypatch)
    if value is None:
        name = RunFiles.WEIGHTS if field == "weights link" else RunFiles.CONFIG
        (d / name).rename(tmp_path / f"outside_{name}")
        os.symlink(tmp_path / f"outside_{name}", d / name)
    else:
        cfg = json.loads((d / RunFiles.CONFIG).read_text())
        cfg[field] = value
        (d / RunFiles.CONFIG).write_text(json.dumps(cfg))
    code, _, err = run_main(capsys, "predict", "--model", d, "--query", files["query"], "--out", tmp_path / "o.h5ad",
                            "--device", "cpu")
    assert_one_error(code, err, words)
    assert len(err) < 1000 and "\x1b" not in err and "\x07" not in err
    assert not (tmp_path / "o.h5ad").exists()


def test_the_app_served_is_the_one_beside_the_core_running(tmp_path, monkeypatch):
    """Found 2026-12-07: a second checkout run with PYTHONPATH served the installed checkout's app."""
    import importlib.machinery
    import importlib.util

    from cellannot_core.cli import app_script

    (tmp_path / "app.py").write_text("# another copy's app\n")
    other = importlib.machinery.ModuleSpec("cellannot_app", None, is_package=True)
    other.submodule_search_locations = [str(tmp_path)]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: other if name == "cellannot_app" else real(name, *a))
    assert app_script() == Path(__file__).resolve().parents[2] / "app.py"


def test_the_log_writes_class_names_without_control_characters(capsys):
    """Found 2026-12-07 by an eighth probe: a saved model's class "B\\x1b[31m..." went to the terminal as it was in
    `predict`'s log ("Unknown group of 20 cells looking most like B..."), colouring it, and a newline in one faked
    a line of its own. The command line's log drops control and format characters (a line break is a space)."""
    from cellannot_core.cli import _log

    _log("Unknown group of 20 cells looking most like B\x1b[31m<script>\nerror: fake\x07 \u202eline\tend")
    assert capsys.readouterr().err == "Unknown group of 20 cells looking most like B[31m<script> error: fake line end\n"


def test_output_piped_into_a_reader_that_stops_is_not_an_error():
    """Found 2026-12-07 (a README walkthrough): `cellannot models | head -1` printed "internal error
    (BrokenPipeError...)" and exited 1. The reader stopping is no fault: nothing on stderr, SIGPIPE's code."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader gone before the first line (head stops after it: the same, without the race)
    proc = subprocess.run([sys.executable, "-m", "cellannot_core", "models"], stdout=write, stderr=subprocess.PIPE,
                          timeout=120)
    os.close(write)
    assert proc.returncode == 141 and proc.stderr.decode() == "", proc.stderr.decode()


def test_a_log_reader_that_stops_does_not_stop_the_run_and_sigterm_is_a_cancel(files, tmp_path, monkeypatch, capsys):
    """Found 2026-12-07 (a pipeline author's probe): `annotate ... 2>&1 | grep -m1 'run directory'` failed the
    run ("internal error: BrokenPipeError") and wrote nothing; `--out=~/o.h5ad` wrote into a folder named "~"
    (bash expands ~ only where it stands alone); SIGTERM exited 143 without a word. Now the run goes on unlogged
    and writes its output, every path option takes ~ as the home folder, and SIGTERM is one line and 143."""
    read, write = os.pipe()
    os.close(read)  # the log's reader gone
    out = tmp_path / "out.h5ad"
    proc = subprocess.run([sys.executable, "-m", "cellannot_core", "annotate", "--reference", str(files["ref"]),
                           "--query", str(files["query"]), "--out", str(out), "--label-key", LABEL, *FAST],
                          stdout=subprocess.PIPE, stderr=write, timeout=300)
    os.close(write)
    assert proc.returncode == 0 and ad.read_h5ad(out).obs[OutKeys.LABEL].notna().all()
    from cellannot_core import cli
    from cellannot_core.errors import Terminated

    seen = {}

    def fake(args):
        seen.update(vars(args))
        raise Terminated

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "annotate", fake)
    code, _, err = run_main(capsys, "annotate", "--reference=~/r.h5ad", "--query", "~/q.h5ad", "--out=~/o.h5ad",
                            "--label-key", LABEL)
    assert seen["reference"] == str(tmp_path / "r.h5ad") and seen["out"] == str(tmp_path / "o.h5ad")
    assert seen["query"] == str(tmp_path / "q.h5ad")
    assert code == 143 and err.strip() == "error: terminated (SIGTERM)"


@pytest.mark.parametrize("argv, said", [
    (["anotate", "--reference", "r.h5ad"], "no command 'anotate': did you mean 'annotate'?"),
    (["annotate", "--refrence", "r.h5ad", "--query", "q.h5ad"], "annotate has no option '--refrence': did you mean --reference?"),
    (["train", "--out", "o.h5ad"], "train has no option '--out' (it is an option of annotate, predict"),
    (["annotate", "--label_key", "cell_type"], "did you mean --label-key?"),  # scanpy's spelling
    (["predict", "--model", "m", "--theshold=1"], "predict has no option '--theshold': did you mean --threshold?"),
])
def test_a_misspelt_command_or_option_is_named_with_the_nearest_right_one(capsys, argv, said):
    """Found 2026-12-07: `annotate --refrence x` said only that --reference, --query, --label-key and --out were
    required (argparse checks those first), and a misspelt command listed the commands without a suggestion."""
    code, _, err = run_main(capsys, *argv)
    assert code == 2 and said in err and "required" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_options_spelt_right_or_shortened_are_not_taken_for_misspellings(capsys, files, tmp_path):
    from cellannot_core.cli import _misspelt, build_parser

    parser = build_parser()
    for argv in (["annotate", "--reference=r", "--query", "q", "--label-key", "x", "--out", "o", "--thresh", "1"],
                 ["--debug", "models"], ["--help"], [], ["train", "--hparam", "lr=0.1", "--max-epochs", "2"]):
        assert _misspelt(parser, argv) is None, argv


def test_runs_lists_a_runs_folder_with_sizes_and_deletes_the_old_ones(capsys, tmp_path):
    """Found 2026-12-07 (a lab admin's probe): the app keeps every run (15 MB a demo run, 77 MB for 26,000
    cells) and nothing told an admin which runs, whose, how large, or freed the old ones."""
    import time

    from cellannot_core import runs as runs_mod
    from cellannot_core.runs import RunDir

    root = tmp_path / "runs"
    old = RunDir.create(root, model="logreg", run_id="old-run", owner="a" * 64)
    old.set_status("done", created=time.time() - 40 * 86400)
    (old.path / "annotated.h5ad").write_bytes(b"\0" * 3_000_000)
    new = RunDir.create(root, model="clams", run_id="new-run")
    new.set_status("failed")
    busy = RunDir.create(root, model="scanvi", run_id="busy-run")
    busy.set_status("running", created=time.time() - 50 * 86400)
    runs_mod.claim_run(busy)  # trained by this process: kept
    try:
        code, out, err = run_main(capsys, "runs", "--runs-dir", root)
        assert code == 0, err
        lines = out.strip().splitlines()
        assert [ln.split()[0] for ln in lines[1:4]] == ["new-run", "old-run", "busy-run"]  # newest first
        assert "visitor aaaaaaaa" in lines[2] and "command line" in lines[1] and " 3.0 " in lines[2]
        assert lines[-1].startswith("3 runs listed, 3.0 MB (runs folder ")
        code, out, err = run_main(capsys, "runs", "--runs-dir", root, "--delete")
        assert_one_error(code, err, "--delete needs --older-than")
        code, out, err = run_main(capsys, "runs", "--runs-dir", root, "--older-than", "30", "--delete")
        assert code == 0, err
        assert "old-run" in out and "deleted" in out and "still training" in out and "new-run" not in out
        assert out.strip().splitlines()[-1].startswith("1 of 2 runs deleted, 3.0 MB freed")
        assert not old.path.exists() and busy.path.is_dir() and new.path.is_dir()
        code, out, err = run_main(capsys, "runs", "--runs-dir", root, "--state", "failed", "--delete")
        assert code == 0 and not new.path.exists() and busy.path.is_dir()
    finally:
        runs_mod.release_run(busy)
