"""What the form a query comes in does to the default model's labels and Unknown calls.

Two checks on the bundled demo pair (kang example -> pbmc3k, cell_type_harmonized), each printing
the accuracy on the query's known types, the median confidence, and the share called Unknown
among all cells and among the cells of types the reference lacks:

1. the query as counts, and as CPM (normalised to a million per cell, not logged): the reader
   turns CPM back into counts, so the two rows should be equal (until 2026-12-06 CPM was taken as
   counts at a depth of a million per cell);
2. a model trained on the reference, labelling the query with a share of the model's genes
   removed at random (seeded, several draws per share): ``predict`` warns above 20% missing and refuses above 50%
   (``cellannot_core.data.prepare.check_model_genes``); the rows below 50% show what the warning
   is about, the rows above it what ``predict`` would have returned (measured with the refusal
   lifted) and what ``adapt=True``, the remedy the refusal names, returns.

    CELLANNOT_NUM_THREADS=2 .venv/bin/python bench/input_forms.py [--seed 0] [--draws 3]

About four minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cellannot_core as ca  # noqa: E402  (torch before scanpy's numba)
import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

LABEL = "cell_type_harmonized"


def row(name: str, out: ad.AnnData, truth: np.ndarray, classes: list[str]) -> None:
    lab = out.obs["cellannot_label"].astype(str).to_numpy()
    unknown = out.obs["cellannot_is_unknown"].to_numpy(dtype=bool)
    known = np.isin(truth, classes)
    print(f"{name:<44} acc_known {np.mean(lab[known] == truth[known]):.3f}  "
          f"confidence {np.median(out.obs['cellannot_confidence']):.3f}  "
          f"Unknown {unknown.mean():.3f}  Unknown_novel {unknown[~known].mean():.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=3, help="random sets of missing genes per share")
    args = ap.parse_args()
    ref = ad.read_h5ad(ROOT / "assets" / "kang_pbmc_example_sce_1556.h5ad")
    query = ad.read_h5ad(ROOT / "assets" / "pbmc3k_seurat_2638.h5ad")
    truth = query.obs[LABEL].astype(str).to_numpy()
    quiet = dict(progress_bar=False, log=lambda s: None, seed=args.seed)

    print("1. the query as counts and as CPM (annotate, the default model)")
    X = sp.csr_matrix(query.X, dtype=np.float64)
    cpm = sp.diags(1e6 / np.maximum(np.asarray(X.sum(axis=1)).ravel(), 1)) @ X
    as_cpm = ad.AnnData(sp.csr_matrix(cpm, dtype=np.float32), obs=query.obs.copy(), var=query.var.copy())
    for name, q in (("counts", query), ("CPM", as_cpm)):
        out = ca.annotate(ref, q.copy(), label_key=LABEL, copy=True, **quiet)
        row(name, out, truth, list(out.uns["cellannot"]["classes"]))

    print("2. a saved model's genes missing from the query (train, then predict)")
    annotator = ca.train(ref, label_key=LABEL, **quiet)
    genes = annotator.genes
    import importlib

    prepare = importlib.import_module("cellannot_core.data.prepare")  # (the package exports a function of that name)
    refuse = prepare.MISSING_GENES_REFUSE
    row("all genes: predict", annotator.predict(query, copy=True, progress_bar=False, log=lambda s: None), truth,
        annotator.classes)
    for share in (0.2, 0.45, 0.6, 0.8):
        for draw in range(args.draws):  # which genes are missing moves the labels a long way
            rng = np.random.default_rng([args.seed, int(share * 100), draw])
            drop = set(rng.choice(genes, int(share * len(genes)), replace=False))
            q = query[:, [g for g in query.var_names if g not in drop]].copy()
            prepare.MISSING_GENES_REFUSE = 1.0  # lifted, to show what the refusal prevents
            try:
                row(f"{share:.0%} missing, draw {draw}: predict",
                    annotator.predict(q, copy=True, progress_bar=False, log=lambda s: None), truth, annotator.classes)
            finally:
                prepare.MISSING_GENES_REFUSE = refuse
            if share > 0.4:
                row(f"{share:.0%} missing, draw {draw}: predict(adapt=True)",
                    annotator.predict(q, copy=True, adapt=True, progress_bar=False, log=lambda s: None), truth,
                    annotator.classes)


if __name__ == "__main__":
    main()
