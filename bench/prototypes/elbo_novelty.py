"""Prototype probe (2026-12-06; not part of the package): is the scANVI decoder's negative ELBO a
novelty signal the default's score lacks?  Written before it ran, the gate: per novel experiment
of the stress suite, the AUROC (novel vs known query cells) of

  (a) the default's score (``knn_class``, the run's ``ood_score``),
  (b) the latent model's negative ELBO (``elbo_score``; depth-normalised pseudo-counts),
  (c) (b) over its 95th percentile among the predicted class's reference cells (as ``knn_class``'s unit),
  (d) the mean of the ranks of (a) and (c);

a rule from it is pursued only if (c) or (d) has a median AUROC at least (a)'s and a worst AUROC
above (a)'s.  It reads the stress suite's cached default models and never trains (an experiment
without one is skipped).  Measured in BENCHMARKS.md ("The decoder's likelihood").

    CELLANNOT_NUM_THREADS=2 .venv/bin/python bench/prototypes/elbo_novelty.py --seed 1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import novelty_stress as ns  # noqa: E402


def main() -> None:
    import cellannot_core.pipeline as pl
    from scipy.stats import rankdata, spearmanr
    from sklearn.metrics import roc_auc_score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    seed = ap.parse_args().seed
    rows = []
    for exp, prep, qry, m in ns.cached_models(seed, closed=False):
        labels = np.asarray(prep.query.labels)
        known = labels != ""
        novel = ~np.isin(labels, prep.classes)
        if not novel[known].any():
            continue
        p = pl.predict(m, prep.query.X, samples=ns.samples_of(qry, prep, None))
        e_q, e_r = m.latent_model.elbo_score(prep.query.X), m.latent_model.elbo_score(prep.train.X)
        unit = np.array([np.percentile(e_r[prep.train.y == c], 95) if (prep.train.y == c).sum() >= 5
                         else np.percentile(e_r, 95) for c in range(len(m.classes))])
        rel = e_q / unit[p.proba.argmax(1)]
        y, a, c = novel[known], p.ood_score[known], rel[known]
        r = {"exp": exp.name, "share": float(y.mean()), "a": roc_auc_score(y, a), "b": roc_auc_score(y, e_q[known]),
             "c": roc_auc_score(y, c), "d": roc_auc_score(y, rankdata(a) + rankdata(c)),
             "rho": spearmanr(a, c).correlation}
        rows.append(r)
        print(f"{r['exp']:44s} {r['share']:5.1%}  knn_class {r['a']:.3f}  elbo {r['b']:.3f}  "
              f"elbo/class {r['c']:.3f}  both {r['d']:.3f}  rho {r['rho']:.2f}", flush=True)
    for k, name in (("a", "knn_class (default)"), ("b", "neg ELBO"), ("c", "neg ELBO / class unit"),
                    ("d", "rank mean of a and c")):
        v = [r[k] for r in rows]
        print(f"{name:24s} AUROC median {np.median(v):.3f}  worst {np.min(v):.3f}  ({len(v)} experiments)")
    print(f"Spearman rho of (a) and (c) over a query's cells, median {np.median([r['rho'] for r in rows]):.2f}")


if __name__ == "__main__":
    main()
