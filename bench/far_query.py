"""How far a whole query lies from its reference (``rejection.query_far_factor``: a baseline's median
novelty score over the reference's held-out cells', ``knn_class``'s lower-quartile query shift), and the
share called Unknown, for the public pairs of one tissue and for pairs of two tissues (blood and
pancreas, human and mouse), with ``logreg`` (seconds a pair) or another model. Shifts up to
``calibration.FAR_QUERY_FACTOR`` are allowed for; beyond it a run warns that the query is mostly unlike
its reference, and (since 2026-12-07) the threshold is widened no further, so a query of another
tissue is Unknown rather than labelled whole. ``markers``: the share of each predicted type's reference markers
highest in the query cells given that type (``rejection.marker_agreement``; below 0.5 a run warns).

    CELLANNOT_NUM_THREADS=2 .venv/bin/python bench/far_query.py
    CELLANNOT_NUM_THREADS=2 .venv/bin/python bench/far_query.py --model scanvi_svm
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CELLANNOT_SHARED_DATA", ROOT.parent / "shared" / "data"))
FILES = {"kang_ctrl": "kang_pbmc_ctrl_8684", "kang_sce": "kang_pbmc_example_sce_1556", "pbmc3k": "pbmc3k_seurat_2638",
         "pbmc68k": "pbmc68k_reduced_counts_700", "baron1": "baron_mouse1_pancreas_822",
         "baron2": "baron_mouse2_pancreas_1064"}
SAME = [("kang_ctrl", "pbmc3k"), ("kang_sce", "pbmc3k"), ("pbmc3k", "kang_sce"), ("pbmc3k", "kang_ctrl"),
        ("kang_ctrl", "kang_sce"), ("pbmc3k", "pbmc68k"), ("baron1", "baron2"), ("baron2", "baron1")]
OTHER = [("baron1", "pbmc3k"), ("pbmc3k", "baron1"), ("baron2", "kang_ctrl"), ("kang_sce", "baron2"),
         ("kang_sce", "baron1"), ("baron2", "kang_sce"), ("baron2", "pbmc3k")]


def main() -> None:
    import argparse

    import anndata as ad

    import cellannot_core as ca
    from cellannot_core.pipeline import FAR_QUERY_FACTOR

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="logreg", help="the model labelling each pair (default logreg: seconds a pair; "
                    "scanvi_svm: about a minute)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = {k: ad.read_h5ad(DATA / f"{v}.h5ad") for k, v in FILES.items()}
    print(f"{'reference -> query':28s} {'tissues':8s} {'factor':>7s} {'Unknown':>8s} {'markers':>8s}  warned (factor >= "
          f"{FAR_QUERY_FACTOR}; markers: the labels' markers highest where the labels put them)")
    for kind, pairs in (("same", SAME), ("two", OTHER)):
        for r, q in pairs:
            out = ca.annotate(data[r], data[q], label_key="cell_type_harmonized", model=args.model, seed=args.seed, copy=True,
                              progress_bar=False, log=lambda s: None)
            rej = out.uns["cellannot"]["rejection"]
            markers = (rej.get("marker_agreement") or {}).get("share", float("nan"))
            print(f"{r + ' -> ' + q:28s} {kind:8s} {rej['query_far_factor']:7.2f} {out.obs['cellannot_is_unknown'].mean():8.1%}"
                  f" {markers:8.2f}  {'yes' if rej.get('far_query') else 'no'}"
                  f"{', markers' if rej.get('markers_note') else ''}", flush=True)


if __name__ == "__main__":
    main()
