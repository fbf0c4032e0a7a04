"""How far a whole query lies from its reference (``rejection.shift_factor``: the query's median
novelty score over the reference's held-out cells'), for the public pairs of one tissue and for
pairs of two tissues, with ``logreg`` (seconds a pair). Above ``pipeline.FAR_QUERY_FACTOR`` a run
warns that the query is mostly unlike its reference (the threshold is widened by that factor, so
a query of another tissue passes as known).

    CELLANNOT_NUM_THREADS=2 .venv/bin/python bench/far_query.py
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
OTHER = [("baron1", "pbmc3k"), ("pbmc3k", "baron1"), ("baron2", "kang_ctrl"), ("kang_sce", "baron2")]


def main() -> None:
    import anndata as ad

    import cellannot_core as ca
    from cellannot_core.pipeline import FAR_QUERY_FACTOR

    data = {k: ad.read_h5ad(DATA / f"{v}.h5ad") for k, v in FILES.items()}
    print(f"{'reference -> query':28s} {'tissues':8s} {'factor':>7s} {'Unknown':>8s}  warned (factor >= {FAR_QUERY_FACTOR})")
    for kind, pairs in (("same", SAME), ("two", OTHER)):
        for r, q in pairs:
            out = ca.annotate(data[r], data[q], label_key="cell_type_harmonized", model="logreg", copy=True,
                              progress_bar=False, log=lambda s: None)
            rej = out.uns["cellannot"]["rejection"]
            print(f"{r + ' -> ' + q:28s} {kind:8s} {rej['shift_factor']:7.2f} {out.obs['cellannot_is_unknown'].mean():8.1%}"
                  f"  {'yes' if rej.get('far_query') else 'no'}", flush=True)


if __name__ == "__main__":
    main()
