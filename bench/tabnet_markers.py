"""TabNet (SIMS) explain matrices on a bench reference: per-class top genes vs known markers.

Usage::

    CELLANNOT_NUM_THREADS=2 .venv/bin/python bench/tabnet_markers.py              # kang_ctrl reference
    .venv/bin/python bench/tabnet_markers.py --task kang_sce --top 20

Trains ``tabnet`` with its defaults on the task's reference exactly as ``annotate`` does, takes
the explain matrix of the reference training cells, the per-class mean mask normalised per
gene by its maximum over classes (SIMS thesis), and prints each class's top genes with the
canonical PBMC markers among them. Exits 1 when a class with listed markers has none of them in
its top genes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_transfer import DATA, LABEL_KEY, TASKS  # noqa: E402

MARKERS = {  # canonical PBMC markers (Seurat PBMC 3k tutorial)
    "B": {"MS4A1", "CD79A", "CD79B"},
    "CD14 Mono": {"LYZ", "S100A8", "S100A9", "CD14"},
    "NK": {"GNLY", "NKG7"},
    "CD4 T": {"IL7R", "CD3E", "CCR7", "LDHB"},
    "CD8 T": {"CD8A", "CD8B"},
    "FCGR3A Mono": {"FCGR3A", "MS4A7"},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="kang_ctrl", choices=list(TASKS))
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from cellannot_core.models.tabnet import class_importance, top_genes_per_class
    from cellannot_core.pipeline import AnnotateOptions, prepare_data, train_model

    ref_f, q_f = TASKS[args.task]
    opts = AnnotateOptions(label_key=LABEL_KEY, model="tabnet", seed=args.seed)
    prep = prepare_data(DATA / ref_f, DATA / q_f, opts)
    m = train_model(prep, opts)
    acc = float(np.mean(m.predict_proba(prep.val.X).argmax(1) == prep.val.y))
    print(f"{args.task}: tabnet validation accuracy {acc:.3f}, {len(m.history.get('epochs', []))} epochs")
    labels = np.asarray(prep.classes)[prep.train.y]
    per_class = class_importance(m.explain(prep.train.X), labels, prep.genes, classes=prep.classes)
    top = top_genes_per_class(per_class, args.top)
    missing = []
    for cls in prep.classes:
        genes = top[top["class"] == cls]["gene"].tolist()
        hits = sorted(MARKERS.get(cls, set()) & set(genes))
        print(f"{cls}: markers in top {args.top}: {', '.join(hits) or 'none'} | top: {', '.join(genes)}")
        if MARKERS.get(cls) and not hits:
            missing.append(cls)
    if missing:
        print(f"no known marker in the top {args.top} of: {', '.join(missing)}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
