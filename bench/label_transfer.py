"""Label-transfer benchmark: reference -> query tasks from ../shared/data, DESIGN.md metrics.

Usage::

    .venv/bin/python bench/label_transfer.py                         # clams, both tasks, seed 0
    .venv/bin/python bench/label_transfer.py --models clams jem resnet --seeds 5
    .venv/bin/python bench/label_transfer.py --tasks kang_ctrl --hparam ood_score=maxprob
    .venv/bin/python bench/label_transfer.py --models clams scanvi --hparam scanvi.max_epochs=20
    .venv-bench/bin/python bench/label_transfer.py --tasks kang_ctrl --models scanvi scvi-tools-scanvi

``--hparam NAME=VALUE`` applies to every model; ``--hparam MODEL.NAME=VALUE`` to one.
``scvi-tools-scanvi`` is scvi-tools' SCANVI on the same prepared data (needs the bench extra,
see bench/scvi_tools_scanvi.py).

Prints one line per run, then per task and model the median and spread (min-max) over seeds
of acc_in, f1_in, ece_in, auroc_ood, acc_open, reject_in, reject_novel, diverged and train
seconds, and with ``seurat`` among the models each model's prepare + train + label seconds as a
multiple of Seurat's (issue 15: ``--models scanvi_svm seurat --tasks kang_ctrl``), plus the AUROC of every novelty score and per novel type. ``--json FILE`` saves all runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from cellannot_core._constants import DEFAULT_HVG_FLAVOR, HVG_FLAVORS

ROOT = Path(__file__).resolve().parents[1]
import scvi_tools_scanvi  # noqa: E402

DATA = Path(os.environ.get("CELLANNOT_SHARED_DATA", ROOT.parent / "shared" / "data"))
TASKS = {
    "kang_ctrl": ("kang_pbmc_ctrl_8684.h5ad", "pbmc3k_seurat_2638.h5ad"),
    "kang_sce": ("kang_pbmc_example_sce_1556.h5ad", "pbmc3k_seurat_2638.h5ad"),
    "pbmc3k_to_kang_sce": ("pbmc3k_seurat_2638.h5ad", "kang_pbmc_example_sce_1556.h5ad"),
    # another tissue and species: mouse pancreas, donor 1 -> donor 2; reference classes under the
    # minimum class size (alpha 9 cells, the immune and rare types) are dropped, so they are novel
    "baron_mouse": ("baron_mouse1_pancreas_822.h5ad", "baron_mouse2_pancreas_1064.h5ad"),
}
LABEL_KEY = "cell_type_harmonized"
METRICS = ("acc_in", "f1_in", "ece_in", "auroc_ood", "acc_open", "reject_in", "reject_novel")


def run_one(task: str, model: str, seed: int, hparams: dict, accept: float, max_epochs: int | None,
            shift_correction: str = "median", batch_key: str | None = None, hvg_flavor: str = DEFAULT_HVG_FLAVOR) -> dict:
    from cellannot_core.data import read_dataset

    ref_f, q_f = TASKS[task]
    ref, q = read_dataset(DATA / ref_f, name="reference"), read_dataset(DATA / q_f, name="query")
    return run_pair(ref, q, task, model, seed, hparams, accept, max_epochs, shift_correction, batch_key, hvg_flavor)


def run_pair(ref, q, task: str, model: str, seed: int, hparams: dict, accept: float = 0.95,
             max_epochs: int | None = None, shift_correction: str = "median", batch_key: str | None = None,
             hvg_flavor: str = DEFAULT_HVG_FLAVOR) -> dict:
    """:func:`run_one` on a reference and a query in memory (e.g. with a type left out);
    ``batch_key`` is used where either dataset has that column."""
    from cellannot_core.metrics import auroc
    from cellannot_core.evidence import class_means
    from cellannot_core.pipeline import AnnotateOptions, label_query, prepare_data, query_metrics, train_model
    from novelty_stress import samples_of

    if model == scvi_tools_scanvi.NAME:
        opts = AnnotateOptions(label_key=LABEL_KEY, query_label_key=LABEL_KEY, seed=seed)
        return {"task": task, **scvi_tools_scanvi.run(prepare_data(ref, q, opts), seed, accept,
                                                       scvi_epochs=int(hparams.get("scvi_epochs", 100)),
                                                       scanvi_epochs=int(hparams.get("scanvi_epochs", 20)))}
    opts = AnnotateOptions(label_key=LABEL_KEY, query_label_key=LABEL_KEY, model=model, hparams=dict(hparams),
                           seed=seed, device="auto", accept=accept, max_epochs=max_epochs,
                           shift_correction=shift_correction, hvg_flavor=hvg_flavor,
                           batch_key=batch_key if batch_key and (batch_key in ref.obs or batch_key in q.obs) else None)
    t_start = time.time()
    prep = prepare_data(ref, q, opts)
    t0 = time.time()
    m = train_model(prep, opts)
    secs = time.time() - t0
    # as annotate decides: validation threshold, the query's samples, handling states accepted
    p, _ = label_query(m, prep.query.X, genes=prep.genes, samples=samples_of(q, prep, opts.batch_key),
                       ref_mean=class_means(prep.train.X, prep.train.y, len(m.classes)))
    total = time.time() - t_start  # prepare + train + label the query: what annotate costs
    qm = query_metrics(prep, p, m.classes)
    labels = prep.query.labels
    known = labels != ""
    novel = ~np.isin(labels, m.classes) & known
    score_auroc = {k: auroc(v[known], novel[known]) for k, v in p.scores.items()}
    score_acc_open = open_accuracy_per_score(m, prep, p, accept, shift_correction)
    return {"task": task, "model": model, "seed": seed, "train_seconds": round(secs, 1),
            "annotate_seconds": round(total, 1),
            "diverged": bool(m.history.get("diverged", False)), "recoveries": m.history.get("recoveries", 0),
            "epochs": len(m.history.get("epochs", [])), "ood_method": m.ood_method,
            **{k: qm.get(k) for k in METRICS}, "per_type_auroc": qm.get("per_type_auroc", {}),
            "score_auroc": score_auroc, "score_acc_open": score_acc_open, "temperature": m.temperature,
            "shift_factor": p.shift_factor, "_scores": p.scores, "_labels": np.asarray(labels)}


def open_accuracy_per_score(m, prep, p, accept: float, shift_correction: str) -> dict[str, float]:
    """acc_open had each novelty score been the model's: the same rule (accept ``accept`` of the
    validation scores, the shift correction for distance scores) on that score."""
    from cellannot_core.calibration import query_threshold, threshold_for_acceptance
    from cellannot_core.metrics import label_transfer_metrics

    val = m.validation_scores(prep.val.X, list(p.scores))
    known = np.asarray(prep.query.labels) != ""
    out = {}
    for k, q in p.scores.items():
        if k == m.ood_method:
            thr = p.threshold
        else:
            v = val[k]
            thr = query_threshold(threshold_for_acceptance(v, accept), k, shift_correction, float(np.median(v)), q)[0]
        final = np.where(q > thr, "Unknown", p.label_raw)
        out[k] = label_transfer_metrics(np.asarray(prep.query.labels)[known], p.label_raw[known], final[known],
                                        p.confidence[known], q[known], m.classes)["acc_open"]
    return out


def fmt(v) -> str:
    return "  nan" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["kang_ctrl", "kang_sce"], choices=list(TASKS))
    ap.add_argument("--models", nargs="+", default=["clams"])
    ap.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1)")
    ap.add_argument("--hparam", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--accept", type=float, default=0.95)
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--shift-correction", default="median", choices=("median", "none"))
    ap.add_argument("--json", default=None, help="write all runs to this JSON file")
    ap.add_argument("--batch-key", default=None, help="obs column of each cell's sample, where a dataset has it")
    ap.add_argument("--hvg-flavor", default=DEFAULT_HVG_FLAVOR, choices=HVG_FLAVORS,
                    help="how the variable genes are ranked (annotate's --hvg-flavor; 'seurat' before 2026-12-05)")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"error: benchmark data not found in {DATA}; set CELLANNOT_SHARED_DATA")
    pairs = [h.split("=", 1) for h in args.hparam]
    if any(len(p) != 2 for p in pairs):
        sys.exit("error: --hparam takes NAME=VALUE or MODEL.NAME=VALUE")

    def hparams_for(model: str) -> dict:
        out = {k: v for k, v in pairs if "." not in k}
        out.update({k.split(".", 1)[1]: v for k, v in pairs if k.startswith(model + ".")})
        return out

    for model in args.models:
        if model == scvi_tools_scanvi.NAME and (why := scvi_tools_scanvi.available()):
            sys.exit(f"error: {why}")
    runs = []
    print("task       model             seed " + " ".join(f"{k:>12s}" for k in METRICS) + "  diverged  train_s  epochs")
    for task in args.tasks:
        for model in args.models:
            for seed in range(args.seeds):
                r = run_one(task, model, seed, hparams_for(model), args.accept, args.max_epochs, args.shift_correction,
                            args.batch_key, args.hvg_flavor)
                runs.append(r)
                print(f"{task:10s} {model:17s} {seed:4d} " + " ".join(f"{fmt(r[k]):>12s}" for k in METRICS)
                      + f"  {str(r['diverged']):>8s} {r['train_seconds']:8.1f} {r['epochs']:7d}", flush=True)
                print("    acc_open by score: " + "  ".join(f"{k} {fmt(v)}" for k, v in r["score_acc_open"].items()))
                print("    novelty-score AUROC: " + "  ".join(f"{k} {fmt(v)}" for k, v in r["score_auroc"].items())
                      + "  | per novel type (" + r["ood_method"] + "): "
                      + "  ".join(f"{k} {fmt(v)}" for k, v in r["per_type_auroc"].items()), flush=True)
    print("\nmedian [min, max] over seeds")
    for task in args.tasks:
        for model in args.models:
            rs = [r for r in runs if r["task"] == task and r["model"] == model]
            cells = []
            for k in METRICS + ("train_seconds",):
                v = np.array([r[k] if r[k] is not None else np.nan for r in rs], dtype=float)
                cells.append(f"{k} {np.nanmedian(v):.3f} [{np.nanmin(v):.3f}, {np.nanmax(v):.3f}]")
            div = sum(r["diverged"] for r in rs)
            rec = sum(r.get("recoveries", 0) > 0 for r in rs)  # diverged, then went on from the last good state
            print(f"{task} {model} (n={len(rs)}, diverged {div}/{len(rs)}, recovered from divergence {rec}/{len(rs)}): "
                  + "; ".join(cells))
        by_model = {m: [r["annotate_seconds"] for r in runs if r["task"] == task and r["model"] == m
                        and "annotate_seconds" in r] for m in args.models}
        if "seurat" in by_model and by_model["seurat"]:
            ref_s = float(np.median(by_model["seurat"]))
            print(f"{task} prepare + train + label, median seconds (runs back to back in this process): "
                  + "; ".join(f"{m} {np.median(v):.1f} (x{np.median(v) / ref_s:.2f} Seurat's)"
                              for m, v in by_model.items() if v))
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
                                              indent=1, default=float))


if __name__ == "__main__":
    main()
