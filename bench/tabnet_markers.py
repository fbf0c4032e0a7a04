"""TabNet (SIMS) explain matrices on a bench reference: per-class top genes vs known markers.

Usage::

    CELLANNOT_NUM_THREADS=1 .venv/bin/python bench/tabnet_markers.py              # kang_ctrl reference
    CELLANNOT_NUM_THREADS=1 .venv/bin/python bench/tabnet_markers.py --task kang_sce --top 20
    CELLANNOT_NUM_THREADS=1 .venv/bin/python bench/tabnet_markers.py --seed 1 --hparam gene_dropout=0.3

Trains ``tabnet`` with its defaults on the task's reference exactly as ``annotate`` does, takes
the explain matrix of the reference training cells and prints, under each gene ranking
(``cellannot_core.models.tabnet.RANKINGS``: the default positive evidence, then the SIMS
thesis' attention), each class's top genes with the canonical PBMC markers among them, and the
markers of another lineage (B / myeloid / T-NK) that made it into a class's top genes: a gene
ranked for a class because the class lacks it. Exits 1 when, under the default ranking, a class
with listed markers has none of them in its top genes.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from label_transfer import DATA, LABEL_KEY, TASKS  # noqa: E402

MARKERS = {  # canonical PBMC markers (Seurat PBMC 3k tutorial)
    "B": {"MS4A1", "CD79A", "CD79B"},
    "CD14 Mono": {"LYZ", "S100A8", "S100A9", "CD14"},
    "NK": {"GNLY", "NKG7"},
    "CD4 T": {"IL7R", "CD3E", "CCR7", "LDHB"},
    "CD8 T": {"CD8A", "CD8B"},
    "FCGR3A Mono": {"FCGR3A", "MS4A7"},
}
LINEAGE = {"B": "B", "CD14 Mono": "myeloid", "FCGR3A Mono": "myeloid", "NK": "T/NK", "CD4 T": "T/NK", "CD8 T": "T/NK"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="kang_ctrl", choices=list(TASKS))
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hparam", action="append", default=[], metavar="NAME=VALUE", help="a tabnet setting")
    args = ap.parse_args()
    pairs = [h.split("=", 1) for h in args.hparam]
    if any(len(p) != 2 for p in pairs):
        sys.exit("error: --hparam takes NAME=VALUE")

    from cellannot_core.models.tabnet import DEFAULT_RANKING, RANKINGS, class_importance, top_genes_per_class
    from cellannot_core.pipeline import AnnotateOptions, prepare_data, train_model

    ref_f, q_f = TASKS[args.task]
    opts = AnnotateOptions(label_key=LABEL_KEY, model="tabnet", seed=args.seed, hparams=dict(pairs))
    prep = prepare_data(DATA / ref_f, DATA / q_f, opts)
    m = train_model(prep, opts)
    acc = float(np.mean(m.predict_proba(prep.val.X).argmax(1) == prep.val.y))
    print(f"{args.task}: tabnet validation accuracy {acc:.3f}, {len(m.history.get('epochs', []))} epochs")
    labels = np.asarray(prep.classes)[prep.train.y]
    M, Z = m.explain(prep.train.X), m.standardized(prep.train.X)
    missing: dict[str, list[str]] = {}
    off: dict[str, int] = {}
    for ranking in sorted(RANKINGS, key=lambda r: r != DEFAULT_RANKING):  # the default first
        per_class = class_importance(M, labels, prep.genes, Z=Z, ranking=ranking, classes=prep.classes)
        top = top_genes_per_class(per_class, args.top)
        print(f"\n== ranking {ranking}{' (default)' if ranking == DEFAULT_RANKING else ''}: {RANKINGS[ranking]}")
        missing[ranking], off[ranking] = [], 0
        for cls in prep.classes:
            genes = top[top["class"] == cls]["gene"].tolist()
            hits = sorted(MARKERS.get(cls, set()) & set(genes))
            foreign = sorted({g for c, ms in MARKERS.items() if c in prep.classes and LINEAGE[c] != LINEAGE.get(cls)
                              for g in ms} & set(genes))
            off[ranking] += len(foreign)
            print(f"{cls}: markers in top {args.top}: {', '.join(hits) or 'none'}; other lineages' markers: "
                  f"{', '.join(foreign) or 'none'} | top: {', '.join(genes)}")
            if MARKERS.get(cls) and not hits:
                missing[ranking].append(cls)
    print()
    for ranking, classes in missing.items():
        print(f"{ranking}: classes without a known marker in their top {args.top}: {', '.join(classes) or 'none'}; "
              f"other lineages' markers in the top genes: {off[ranking]}")
    return 1 if missing[DEFAULT_RANKING] else 0


if __name__ == "__main__":
    sys.exit(main())
