"""Atlas-scale figures (issue 15): wall time and peak memory of ``cellannot predict`` with a saved
default-model bundle over a series of query sizes, and the fitted growth exponent.

    CELLANNOT_NUM_THREADS=2 .venv/bin/python bench/scale.py                       # 10k, 100k, 1M cells
    .venv/bin/python bench/scale.py --sizes 10000 100000                          # a shorter series
    .venv/bin/python bench/scale.py --sizes --annotate-sizes 2638 10000 100000    # annotate, trained with each query
    .venv/bin/python bench/scale.py --sizes --api-sizes 100000 1000000            # ca.annotate on an in-memory query
    .venv/bin/python bench/scale.py --sizes --api-sizes 100000 1000000 --seed 1   # the same, another training draw
    .venv/bin/python bench/scale.py --sizes --api-predict-sizes 1000000           # Annotator.predict on one
    .venv/bin/python bench/scale.py --sizes --train-sizes 10000 50000 100000      # training only
    .venv/bin/python bench/scale.py --sizes --relabel-sizes 2638 100000 1000000   # a finished run's model, into runs

The bundle is the default model (``scanvi_svm``) trained on kang_ctrl (8,684 cells) with pbmc3k
as its query (cached in ``bench/results/scale/bundle``). Query files are made by resampling
pbmc3k's 2,638 cells with replacement and thinning each new cell's counts binomially (a
per-cell keep rate drawn from U(0.5, 1), so no two cells are equal and libraries vary), all
13,714 genes kept, written as CSR ``.h5ad`` without compression in chunks (cached in
``bench/results/scale/``; about 5 GB at a million cells). Each ``predict`` runs in its own
process (``python -m cellannot_core predict``); peak RSS is that process's maximum resident
set (``wait4``), time is its wall time, both printed per size with the open-set accuracy (each
resampled cell carries its source cell's label; kang_ctrl lacks CD8 T, FCGR3A Mono, DC and
platelets, so about 18% should be Unknown), then the exponent ``b`` of the
least-squares fit ``time = a * n^b`` over the series.

``--relabel-sizes`` times what the app's *Label with a finished run's model* does, through the command
line that does the same (``predict --model <run folder> --runs-dir``): the query labelled with a
finished run's model into a new run with every view. The source run is the default model trained by
``annotate --runs-dir`` on kang_ctrl with pbmc3k as its query (cached in
``bench/results/scale/source_runs``); each size is one process, its new run deleted after it is measured.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CELLANNOT_SHARED_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "bench" / "results" / "scale"
LABEL_KEY = "cell_type_harmonized"


def bundle(seed: int = 0) -> Path:
    d = OUT / "bundle"
    if (d / "bundle.json").is_file():
        return d
    from cellannot_core.pipeline import AnnotateOptions, bundle_info, prepare_data, save_bundle, train_model

    opts = AnnotateOptions(label_key=LABEL_KEY, seed=seed)
    t0 = time.time()
    prep = prepare_data(str(DATA / "kang_pbmc_ctrl_8684.h5ad"), str(DATA / "pbmc3k_seurat_2638.h5ad"), opts)
    model = train_model(prep, opts)
    save_bundle(d, model, bundle_info(model, prep, opts))
    print(f"trained the bundle in {time.time() - t0:.0f} s", flush=True)
    return d


def make_query(n: int, seed: int = 0, chunk: int = 50_000) -> Path:
    """``n`` cells resampled from pbmc3k with binomial thinning, as a CSR .h5ad (cached)."""
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    path = OUT / f"query_{n}.h5ad"
    if path.is_file():
        return path
    src = ad.read_h5ad(DATA / "pbmc3k_seurat_2638.h5ad")
    X = src.X.tocsr().astype(np.float32)
    src_labels = src.obs[LABEL_KEY].astype(str).to_numpy()
    labels = []
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    OUT.mkdir(parents=True, exist_ok=True)
    with h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        g = f.create_group("X")
        g.attrs["encoding-type"], g.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        g.attrs["shape"] = (n, X.shape[1])
        data = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype="f4", chunks=(1 << 18,))
        indices = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype="i4", chunks=(1 << 18,))
        indptr = g.create_dataset("indptr", shape=(n + 1,), dtype="i8")
        indptr[0] = 0
        nnz = 0
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            pick = rng.integers(0, X.shape[0], m)
            labels.append(src_labels[pick])
            rows = X[pick]
            keep = np.repeat(rng.uniform(0.5, 1.0, m), np.diff(rows.indptr))
            rows.data = rng.binomial(rows.data.astype(np.int64), keep).astype(np.float32)
            rows.eliminate_zeros()
            data.resize((nnz + rows.nnz,))
            indices.resize((nnz + rows.nnz,))
            data[nnz:] = rows.data
            indices[nnz:] = rows.indices
            indptr[start + 1:start + m + 1] = nnz + rows.indptr[1:]
            nnz += rows.nnz
        write_elem(f, "obs", pd.DataFrame({LABEL_KEY: pd.Categorical(np.concatenate(labels))},
                                          index=pd.Index([f"cell{i}" for i in range(n)])))
        write_elem(f, "var", pd.DataFrame(index=src.var_names.copy()))
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})
    os.replace(tmp, path)
    return path


def open_accuracy(out: Path, classes: list[str]) -> float:
    """acc_open of an annotated query (its cells carry their source cell's label): known types
    labelled right, novel ones called Unknown. Reads only ``obs``."""
    import h5py
    from anndata.io import read_elem

    with h5py.File(out, "r") as f:
        obs = read_elem(f["obs"])
    truth = obs[LABEL_KEY].astype(str).to_numpy()
    truth = np.where(np.isin(truth, classes), truth, "Unknown")
    return float(np.mean(obs["cellannot_label"].astype(str).to_numpy() == truth))


def run_predict(model_dir: Path, query: Path, out: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GB) and the last log line of one ``predict`` process."""
    return run_cli(["predict", "--model", str(model_dir), "--query", str(query), "--out", str(out), "--device", "cpu"],
                   query)


def run_annotate(query: Path, out: Path) -> tuple[float, float, str]:
    """The same for one ``annotate`` process: the default model trained on kang_ctrl with the whole
    query (read whole below ``CELLANNOT_STREAM_QUERY_MB``), its own labels as the query's truth."""
    return run_cli(["annotate", "--reference", str(DATA / "kang_pbmc_ctrl_8684.h5ad"), "--query", str(query),
                    "--label-key", LABEL_KEY, "--query-label-key", LABEL_KEY, "--out", str(out), "--device", "cpu"],
                   query)


API_SCRIPT = """
import json, sys
import anndata as ad
import cellannot_core as ca
ref, q = ad.read_h5ad(sys.argv[1]), ad.read_h5ad(sys.argv[2])
ca.annotate(ref, q, label_key=sys.argv[3], query_label_key=sys.argv[3], device="cpu", progress_bar=False, log=print,
            seed=int(sys.argv[4]))
print(json.dumps(q.uns["cellannot"]["query_metrics"]))
"""


API_PREDICT_SCRIPT = """
import json, sys
import anndata as ad
import numpy as np
import cellannot_core as ca
annotator, q = ca.Annotator.load(sys.argv[1], device="cpu"), ad.read_h5ad(sys.argv[2])
annotator.predict(q, log=print)
truth = q.obs[sys.argv[3]].astype(str).to_numpy()
known = np.isin(truth, annotator.classes)
label = q.obs["cellannot_label"].astype(str).to_numpy()
print(json.dumps({"acc_open": float(np.mean(label == np.where(known, truth, "Unknown"))),
                  "reject_in": float(np.mean(label[known] == "Unknown")),
                  "reject_novel": float(np.mean(label[~known] == "Unknown"))}))
"""


def run_api(query: Path, *, model_dir: Path | None = None, seed: int = 0) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS (GB) and the query metrics of ``ca.annotate`` in its own process, the
    query read into memory whole (as a scanpy user holds it) and kang_ctrl as the reference; with
    ``model_dir``, of ``Annotator.load(model_dir).predict`` on it instead. ``seed``: annotate's (the
    training, its sample of the query and the reference's split)."""
    import json

    args = (["-c", API_SCRIPT, str(DATA / "kang_pbmc_ctrl_8684.h5ad")] if model_dir is None else
            ["-c", API_PREDICT_SCRIPT, str(model_dir)])
    secs, rss, last = run_cli([*args, str(query), LABEL_KEY, *([str(seed)] if model_dir is None else [])], query,
                              module=False)
    return secs, rss, json.loads(last)


def run_cli(args: list[str], query: Path, *, module: bool = True) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GB) and the last log line of one ``cellannot`` process (``module=False``:
    ``args`` are the interpreter's)."""
    t0 = time.time()
    p = subprocess.Popen([sys.executable, *(["-m", "cellannot_core"] if module else []), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert p.stdout is not None
    for line in p.stdout:
        lines.append(line.rstrip())
    _, status, usage = os.wait4(p.pid, 0)
    secs = time.time() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        print("\n".join(lines[-20:]))
        raise SystemExit(f"{args[0]} failed on {query.name} (exit {p.returncode})")
    return secs, usage.ru_maxrss / 1024 ** 2, lines[-1] if lines else ""


def source_run() -> Path:
    """A finished run of the default model (kang_ctrl, pbmc3k as its query), made once by ``annotate
    --runs-dir`` and cached: the model the relabel series labels with."""
    import json

    from cellannot_core._constants import RunFiles

    runs = OUT / "source_runs"
    for d in sorted(runs.glob("*")) if runs.is_dir() else []:
        if (d / RunFiles.STATUS).is_file() and json.loads((d / RunFiles.STATUS).read_text()).get("state") == "done":
            return d
    q = DATA / "pbmc3k_seurat_2638.h5ad"
    secs, _, _ = run_cli(["annotate", "--reference", str(DATA / "kang_pbmc_ctrl_8684.h5ad"), "--query", str(q),
                          "--label-key", LABEL_KEY, "--out", str(OUT / "source_annotated.h5ad"), "--device", "cpu",
                          "--runs-dir", str(runs)], q)
    (OUT / "source_annotated.h5ad").unlink(missing_ok=True)
    print(f"trained the source run in {secs:.0f} s", flush=True)
    return source_run()


def run_relabel(query: Path) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS (GB) and the query metrics of one ``predict --runs-dir`` process
    labelling ``query`` with :func:`source_run`'s model into a new run (deleted after)."""
    import json
    import shutil

    from cellannot_core._constants import RunFiles

    runs, out = OUT / "relabel_runs", OUT / f"relabelled_{query.stem}.h5ad"
    shutil.rmtree(runs, ignore_errors=True)
    secs, rss, _ = run_cli(["predict", "--model", str(source_run()), "--query", str(query), "--out", str(out),
                            "--runs-dir", str(runs), "--query-label-key", LABEL_KEY, "--device", "cpu"], query)
    (run,) = [d for d in runs.iterdir() if (d / RunFiles.CARD).is_file()]
    metrics = json.loads((run / RunFiles.CARD).read_text())["query_metrics"]
    shutil.rmtree(runs)
    out.unlink(missing_ok=True)
    return secs, rss, metrics


def make_reference(n: int, seed: int = 0) -> Path:
    """``n`` labelled cells resampled from kang_ctrl with binomial thinning (cached .h5ad)."""
    import anndata as ad

    path = OUT / f"reference_{n}.h5ad"
    if path.is_file():
        return path
    src = ad.read_h5ad(DATA / "kang_pbmc_ctrl_8684.h5ad")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, src.n_obs, n)
    X = src.X.tocsr()[pick].astype(np.float32)
    keep = np.repeat(rng.uniform(0.5, 1.0, n), np.diff(X.indptr))
    X.data = rng.binomial(X.data.astype(np.int64), keep).astype(np.float32)
    X.eliminate_zeros()
    out = ad.AnnData(X, obs=src.obs.iloc[pick][[LABEL_KEY]].reset_index(drop=True), var=src.var[[]].copy())
    out.obs_names = [f"ref{i}" for i in range(n)]
    OUT.mkdir(parents=True, exist_ok=True)
    out.write_h5ad(path)
    return path


def run_train(ref: Path, out: Path) -> tuple[float, float, dict]:
    """Wall seconds and peak RSS (GB) of one ``train`` process (the default model, pbmc3k as its
    query), and the saved model's history."""
    import json

    t0 = time.time()
    p = subprocess.Popen([sys.executable, "-m", "cellannot_core", "train", "--reference", str(ref), "--query",
                          str(DATA / "pbmc3k_seurat_2638.h5ad"), "--label-key", LABEL_KEY, "--device", "cpu",
                          "--save-model", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.stdout is not None
    lines = [line.rstrip() for line in p.stdout]
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        print("\n".join(lines[-20:]))
        raise SystemExit(f"train failed on {ref.name}")
    hist = json.loads((out / "config.json").read_text())["history"]
    return time.time() - t0, usage.ru_maxrss / 1024 ** 2, hist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--keep-outputs", action="store_true", help="keep the annotated files (large)")
    ap.add_argument("--train-sizes", type=int, nargs="*", default=[],
                    help="also train the default model on references of these sizes (kang_ctrl resampled), e.g. "
                         "10000 50000 100000: wall time, peak RSS, epochs (the cells budget) and seconds per epoch")
    ap.add_argument("--annotate-sizes", type=int, nargs="*", default=[],
                    help="also run `cellannot annotate` (the default model trained with the whole query, kang_ctrl "
                         "as the reference) on queries of these sizes, e.g. 2638 10000 100000: wall time, peak RSS, "
                         "acc_open and the known and novel cells called Unknown")
    ap.add_argument("--api-sizes", type=int, nargs="*", default=[],
                    help="also run `ca.annotate` in one process per size with the query read into memory whole "
                         "(the default model, kang_ctrl as the reference), e.g. 100000 1000000: the same columns")
    ap.add_argument("--api-predict-sizes", type=int, nargs="*", default=[],
                    help="also label in-memory queries of these sizes with the cached bundle "
                         "(`Annotator.load(...).predict(adata)`, one process per size): the same columns")
    ap.add_argument("--relabel-sizes", type=int, nargs="*", default=[],
                    help="also label queries of these sizes with a finished run's model into a new run "
                         "(`predict --model <run> --runs-dir`, what the app's relabel does): the same columns")
    ap.add_argument("--seed", type=int, default=0,
                    help="with --api-sizes: annotate's seed (the training, its sample of the query, the reference's "
                         "split), to see how far one run's figures move")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"error: benchmark data not found in {DATA}; set CELLANNOT_SHARED_DATA")
    for how, sizes in (("annotate", args.annotate_sizes), ("ca.annotate", args.api_sizes),
                       ("predict", args.api_predict_sizes), ("relabel", args.relabel_sizes)):
        if not sizes:
            continue
        import anndata as ad

        print(f"{how:>12s} {'wall s':>8s} {'peak RSS GB':>12s} {'acc_open':>9s} {'reject_in':>10s} "
              f"{'reject_novel':>13s}  (query cells)", flush=True)
        for n in sizes:
            if how == "annotate":
                out = OUT / f"annotate_{n}.h5ad"
                secs, rss, _ = run_annotate(make_query(n), out)
                m = ad.read_h5ad(out, backed="r").uns["cellannot"]["query_metrics"]
                out.unlink(missing_ok=True)
            elif how == "relabel":
                secs, rss, m = run_relabel(make_query(n))
            else:
                secs, rss, m = run_api(make_query(n), model_dir=bundle() if how == "predict" else None,
                                       seed=args.seed)
            print(f"{n:12,d} {secs:8.1f} {rss:12.2f} {m['acc_open']:9.3f} {m['reject_in']:10.3f} "
                  f"{m['reject_novel']:13.3f}", flush=True)
    if args.train_sizes:
        print(f"{'reference':>10s} {'wall s':>8s} {'peak RSS GB':>12s} {'epochs':>7s} {'s/epoch':>8s} "
              f"{'us/cell/epoch':>14s} {'val_acc':>8s}", flush=True)
        per_epoch = []
        for n in args.train_sizes:
            secs, rss, hist = run_train(make_reference(n), OUT / f"trained_{n}")
            ep = hist["epochs"]
            spe = float(np.median([e["epoch_seconds"] for e in ep]))
            per_epoch.append((n, spe))
            print(f"{n:10,d} {secs:8.1f} {rss:12.2f} {len(ep):7d} {spe:8.2f} {spe / (n + 2638) * 1e6:14.1f} "
                  f"{ep[-1].get('val_acc', float('nan')):8.3f}", flush=True)
        if len(per_epoch) >= 2:
            b = np.polyfit(np.log([r[0] for r in per_epoch]), np.log([r[1] for r in per_epoch]), 1)[0]
            print(f"seconds per epoch ~ n^{b:.2f}\n")
    if not args.sizes:
        return
    model_dir = bundle()
    rows = []
    import json

    classes = json.loads((model_dir / "bundle.json").read_text())["classes"]
    print(f"{'query cells':>12s} {'file GB':>8s} {'wall s':>8s} {'peak RSS GB':>12s} {'us/cell':>8s} {'acc_open':>9s}"
          "  result", flush=True)
    for n in args.sizes:
        q = make_query(n)
        out = OUT / f"annotated_{n}.h5ad"
        secs, rss, last = run_predict(model_dir, q, out)
        acc = open_accuracy(out, classes)
        if not args.keep_outputs:
            out.unlink(missing_ok=True)
        rows.append((n, secs, rss))
        print(f"{n:12,d} {q.stat().st_size / 1e9:8.2f} {secs:8.1f} {rss:12.2f} {secs / n * 1e6:8.1f} {acc:9.3f}  {last}",
              flush=True)
    if len(rows) >= 2:
        n, t = np.log([r[0] for r in rows]), np.log([r[1] for r in rows])
        b = np.polyfit(n, t, 1)[0]
        print(f"\nfitted time ~ n^{b:.2f} over {', '.join(f'{r[0]:,}' for r in rows)} cells; "
              f"peak RSS max {max(r[2] for r in rows):.2f} GB")


if __name__ == "__main__":
    main()
