"""Two candidates measured for issue 12 and not kept: rules that stop punishing a known type that
is rare in the reference.

A type cut to 25 reference cells while common in the query loses many of its cells to Unknown
(kang_ctrl -> pbmc3k, CD4 T: 36% of its query cells), as the issue's unseen pancreas pair did.
Two reasons, each with a candidate:

* ``small``: ``knn_class`` smooths each reference cell's leave-one-out distance over its 15
  nearest reference cells, so a class of 20 cells is averaged almost whole and its 95th percentile
  (the class's unit) sits near its median, while the query's cells of the type, averaged over their
  own neighbours, keep the type's spread. Candidate: a class of fewer than ``2 * GRAPH_K`` cells
  takes at least its median times the pooled reference's ``Q95 / median`` as its unit.
* ``own``: the doubt factor ``2 - p`` punishes a type the labeller is never sure of (a rare one:
  its held-out reference cells get p = 0.2 for their own type). Candidate: a cell's doubt counts
  against its predicted class's doubt on held-out reference cells, ``max(1, (2 - p) / (2 -
  median p(c | x) over the class's validation cells))``.

Both are measured with the default's own code (``LatentReference.knn_class`` on the query as it
measured it, study shift removed; the threshold recomputed on the validation cells as
``calibrate`` does) on the stress suite's cached ``scanvi_svm`` models (``bench/novelty_stress.py
--models scanvi_svm`` trains them first; experiments without a cached model are skipped)::

    CELLANNOT_NUM_THREADS=2 .venv/bin/python bench/novelty_rare_types.py        # ~10 min
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import novelty_stress as ns  # noqa: E402

from cellannot_core.novelty import GRAPH_K, LatentReference  # noqa: E402

VARIANTS = ("as is", "small", "own", "small+own")


class SmallClassReference(LatentReference):
    """The ``small`` candidate: a class of fewer than ``2 * GRAPH_K`` reference cells takes at
    least its median times the pooled ``Q95 / median`` of the null as its unit."""

    def _class_null(self):
        if self._null is None:
            unit, med = super()._class_null()
            small = np.bincount(self.y, minlength=len(unit)) < 2 * GRAPH_K
            spread = float(np.quantile(self._null_scores / med[self.y], 0.95))
            self._null = (np.where(small, np.maximum(unit, med * spread), unit), med)
        return self._null


def variant_reference(ref: LatentReference, small: bool) -> LatentReference:
    r = copy.copy(ref)
    r._null = r._null_scores = None
    if small:
        r.__class__ = SmallClassReference
    return r


def own_confidence(conf: np.ndarray, pred: np.ndarray, val_proba: np.ndarray, val_y: np.ndarray) -> np.ndarray:
    """The confidence ``p'`` with ``2 - p' = max(1, (2 - p) / class doubt)`` (the ``own`` candidate,
    written as a confidence so that ``knn_class`` applies it unchanged)."""
    own = val_proba[np.arange(len(val_y)), val_y]
    k = val_proba.shape[1]
    doubt = np.array([2 - np.median(own[val_y == c]) if (val_y == c).any() else 2 - np.median(own) for c in range(k)])
    return 2 - np.maximum((2 - np.clip(conf, 0, 1)) / doubt[pred], 1.0)


def main() -> None:
    from cellannot_core._constants import UNKNOWN
    from cellannot_core.calibration import softmax
    from cellannot_core.metrics import label_transfer_metrics
    from cellannot_core.pipeline import AnnotateOptions, predict, prepare_data

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    first_six = [p for p in ns.PAIRS if p not in ns.LATER_PAIRS]
    ap.add_argument("--pairs", nargs="+", default=first_six, choices=list(ns.PAIRS),
                    help="default: the six pairs its BENCHMARKS.md figures were measured on")
    args = ap.parse_args()
    rows = []
    print(f"{'experiment':40s} {'variant':10s} {'auroc_ood':>9s} {'acc_open':>9s} {'reject_in':>9s} {'rej_novel':>9s}")
    for pair in args.pairs:
        ref0, q0 = ns._load(ns.DATA / ns.PAIRS[pair][0], 4000, 0), ns._load(ns.DATA / ns.PAIRS[pair][1], 3000, 0)
        for exp in ns.experiments(pair, ref0, q0, min_drop=50, rare_n=25):
            key = ns.CACHE / exp.name.replace(":", "__").replace(" ", "_").replace(",", "") / "scanvi_svm-s0"
            if not (key / "config.json").is_file():
                print(f"{exp.name:40s} (no cached model: skipped)")
                continue
            ref, qry = ns.make_data(exp, ref0, q0, 0)
            prep = prepare_data(ref, qry, AnnotateOptions(label_key=ns.LABEL_KEY, query_label_key=ns.LABEL_KEY, seed=0))
            m, _ = ns.train_or_load(exp, "scanvi_svm", prep, 0, False)
            p = predict(m, prep.query.X)
            R = m.reference
            z = R.measured_latent(len(p.latent))
            z = p.latent if z is None else z
            graph, pred = R.last_decision["graph"], p.logits.argmax(1)
            val_logits = m.logits(prep.val.X)
            val_proba, val_z = softmax(val_logits, m.temperature), m.latent(prep.val.X)
            labels = np.asarray(prep.query.labels)
            known = labels != ""
            share = float((~np.isin(labels[known], m.classes)).mean())
            for variant in VARIANTS:
                r = variant_reference(R, "small" in variant)
                thr = float(np.quantile(r.knn_class_reference(val_z, val_logits.argmax(1)), 0.95))
                conf = own_confidence(p.confidence, pred, val_proba, prep.val.y) if "own" in variant else p.confidence
                s = r.knn_class(z, pred, graph=graph, threshold=thr, confidence=conf)
                final = np.where(s > thr, UNKNOWN, p.label_raw)
                res = label_transfer_metrics(labels[known], p.label_raw[known], final[known], p.confidence[known],
                                             s[known], m.classes)
                rows.append({"experiment": exp.name, "variant": variant, "share": share, **res})
                print(f"{exp.name:40s} {variant:10s} {res['auroc_ood']:9.3f} {res['acc_open']:9.3f} "
                      f"{res['reject_in']:9.3f} {res['reject_novel']:9.3f}", flush=True)
    print("\nmedian / worst over the experiments (worst: min, reject_in max); novel >= 20%: median reject_novel;"
          " closed: median reject_in where nothing is novel")
    for variant in VARIANTS:
        rr = [r for r in rows if r["variant"] == variant]
        if not rr:
            continue

        def mw(k, worst=np.nanmin):
            v = np.array([r[k] for r in rr], dtype=float)
            v = v[np.isfinite(v)]
            return f"{np.median(v):.3f} / {worst(v):.3f}" if len(v) else "-"
        big = [r["reject_novel"] for r in rr if r["share"] >= 0.2]
        closed = [r["reject_in"] for r in rr if r["share"] == 0]
        print(f"{variant:10s} n={len(rr)} auroc_ood {mw('auroc_ood')}  acc_open {mw('acc_open')}  "
              f"reject_in {mw('reject_in', np.nanmax)}  novel>=20% {np.median(big) if big else float('nan'):.3f}  "
              f"closed {np.median(closed) if closed else float('nan'):.3f}")


if __name__ == "__main__":
    main()
