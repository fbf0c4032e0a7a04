"""The CLAMS poster's two tables for this project's energy models (issue 17), the poster's figures beside ours.

    CELLANNOT_NUM_THREADS=2 .venv/bin/python bench/poster.py                      # both tables, 5 seeds
    .venv/bin/python bench/poster.py --table 1 --models clams hdge --seeds 2     # a part
    .venv/bin/python bench/poster.py --table 2 --loo-seeds 1                      # leave-one-type-out, 1 seed

Table 1 (the poster's PBMC table): kang_ctrl -> pbmc3k (the poster does not name its pair; this is
the project's PBMC task), per model over ``--seeds`` seeds: Div. % (share of runs whose training
diverged: the loop's divergence guard fired, whether training then stopped or, as
CLAMS here does, went on from its last good state at half the learning rate), In Acc and In ECE (x100, on query cells of reference
types), and the AUROC of the p(x) score (energy, -logsumexp of the logits) and of the p(y|x) score
(1 - max probability) for the query's novel types (CD8 T, FCGR3A Mono, DC, Platelet), plus the
AUROC of the model's own default novelty score. Medians over seeds, [min, max] beside.

Table 2 (the poster's leave-one-class-out OOD experiment): each reference type of kang_ctrl
(CD4 T, CD14 Mono, B, NK) is left out of the reference in turn; the model is trained on the rest,
and the AUROC of the p(x) and p(y|x) scores separates the query's cells of the left-out type from
the query's cells of the remaining reference types (the query's own novel types are left out of
this AUROC). Medians over types x ``--loo-seeds`` seeds (n in the table).

Models not in the poster print "-" in the poster's columns; models that are not energy models
(resnet, svm_reject) have no p(x) score ("-"), as in the poster.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_transfer import DATA, LABEL_KEY, TASKS, run_pair  # noqa: E402

# METHODS.md 7.1: the poster's tables (PBMC; Div %, In Acc, In ECE, AUROC p(x), AUROC p(y|x)); LOO: p(x), p(y|x)
POSTER = {
    "clams": (0, 92.89, 5.39, 0.92, 0.77), "jem": (100, 90.32, 2.61, 0.61, 0.86),
    "vera": (0, 88.76, 6.56, 0.87, 0.80), "hdge": (0, 93.58, 3.45, 0.81, 0.78),
    "hdge_jem": (100, 92.29, 6.25, 0.42, 0.70), "resnet": (0, 91.53, 4.73, None, 0.79),
    "svm_reject": (None, 91.55, 22.82, None, 0.72),
}
POSTER_LOO = {"clams": (0.78, 0.68), "jem": (0.64, 0.58), "vera": (0.65, 0.63), "hdge": (0.66, 0.68),
              "hdge_jem": (0.70, 0.69), "resnet": (None, 0.63), "svm_reject": (None, 0.75)}
ENERGY_MODELS = ["clams", "jem", "vera", "hdge", "hdge_jem"]  # p(x) = exp(-E(x)) is theirs only
PX, PYX = "energy", "maxprob"


def _auroc(scores: dict, labels: np.ndarray, pos: np.ndarray, neg: np.ndarray, key: str) -> float:
    from cellannot_core.metrics import auroc

    if key not in scores:
        return float("nan")
    keep = pos | neg
    return float(auroc(np.asarray(scores[key])[keep], pos[keep]))


def med(vals) -> str:
    v = np.array([x for x in vals if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return "-"
    return f"{np.median(v):.2f} [{v.min():.2f}, {v.max():.2f}]" if len(v) > 1 else f"{v[0]:.2f}"


def pf(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _fired(r: dict) -> bool:
    """Whether the divergence guard fired in a run: it diverged, or (CLAMS) it diverged and training went
    on from its last good state, which CLAMS' own method does not do (until 2026-12-07 only the first counted)."""
    return bool(r["diverged"]) or r.get("recoveries", 0) > 0


def table1(models, seeds: int, ref, qry) -> None:
    rows = {}
    for model in models:
        for seed in range(seeds):
            r = run_pair(ref, qry, "kang_ctrl", model, seed, {})
            labels = r["_labels"]
            known = labels != ""
            novel = known & ~np.isin(labels, sorted(set(ref.obs[LABEL_KEY].astype(str))))
            inn = known & ~novel
            r["px"] = _auroc(r["_scores"], labels, novel, inn, PX) if model in ENERGY_MODELS else None
            r["pyx"] = _auroc(r["_scores"], labels, novel, inn, PYX)
            rows.setdefault(model, []).append(r)
            print(f"  table 1 {model} seed {seed}: acc_in {r['acc_in']:.4f} ece_in {r['ece_in']:.4f} "
                  f"auroc p(x) {pf(r['px'], 3)} p(y|x) {r['pyx']:.3f} default ({r['ood_method']}) "
                  f"{r['auroc_ood']:.3f} diverged {r['diverged']} recoveries {r['recoveries']} train {r['train_seconds']:.0f} s", flush=True)
    print(f"\nTable 1: kang_ctrl -> pbmc3k, {seeds} seeds, median [min, max]; poster figures after the slash")
    print("| model | n | Div. % | In Acc | In ECE | AUROC p(x) | AUROC p(y|x) | AUROC, model's default score |")
    print("|---|---|---|---|---|---|---|---|")
    for model, rs in rows.items():
        p = POSTER.get(model, (None,) * 5)
        div = 100.0 * np.mean([_fired(x) for x in rs])
        print(f"| `{model}` | {len(rs)} | {div:.0f} / {pf(p[0], 0)} | {med([100 * x['acc_in'] for x in rs])} / {pf(p[1])} "
              f"| {med([100 * x['ece_in'] for x in rs])} / {pf(p[2])} | {med([x['px'] for x in rs])} / {pf(p[3])} "
              f"| {med([x['pyx'] for x in rs])} / {pf(p[4])} | {med([x['auroc_ood'] for x in rs])} ({rs[0]['ood_method']}) |",
              flush=True)


def table2(models, seeds: int, ref, qry, min_cells: int) -> None:
    types = [t for t, n in ref.obs[LABEL_KEY].astype(str).value_counts().items() if n >= min_cells]
    ref_types = set(ref.obs[LABEL_KEY].astype(str))
    rows = {}
    for model in models:
        for t in types:
            sub = ref[ref.obs[LABEL_KEY].astype(str).to_numpy() != t].copy()
            for seed in range(seeds):
                r = run_pair(sub, qry, f"kang_ctrl without {t}", model, seed, {})
                labels = r["_labels"]
                pos = labels == t
                neg = np.isin(labels, sorted(ref_types - {t}))
                r["px"] = _auroc(r["_scores"], labels, pos, neg, PX) if model in ENERGY_MODELS else None
                r["pyx"] = _auroc(r["_scores"], labels, pos, neg, PYX)
                r["own"] = _auroc(r["_scores"], labels, pos, neg, r["ood_method"])
                rows.setdefault(model, []).append(r)
                print(f"  table 2 {model} without {t} seed {seed}: auroc p(x) {pf(r['px'], 3)} p(y|x) {r['pyx']:.3f} "
                      f"default ({r['ood_method']}) {r['own']:.3f} diverged {r['diverged']} recoveries {r['recoveries']}", flush=True)
    print(f"\nTable 2: leave one type out of kang_ctrl ({', '.join(types)}) -> pbmc3k, {seeds} seed(s) each; "
          "AUROC of the left-out type's query cells against the remaining types', median [min, max]; poster after the slash")
    print("| model | n | Div. % | AUROC p(x) | AUROC p(y|x) | AUROC, model's default score |")
    print("|---|---|---|---|---|---|")
    for model, rs in rows.items():
        p = POSTER_LOO.get(model, (None, None))
        div = 100.0 * np.mean([_fired(x) for x in rs])
        print(f"| `{model}` | {len(rs)} | {div:.0f} | {med([x['px'] for x in rs])} / {pf(p[0])} "
              f"| {med([x['pyx'] for x in rs])} / {pf(p[1])} | {med([x['own'] for x in rs])} ({rs[0]['ood_method']}) |",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", choices=("1", "2", "both"), default="both")
    ap.add_argument("--models", nargs="+", default=ENERGY_MODELS + ["resnet", "svm_reject"])
    ap.add_argument("--seeds", type=int, default=5, help="seeds of table 1")
    ap.add_argument("--loo-seeds", type=int, default=5, help="seeds per left-out type in table 2")
    ap.add_argument("--min-cells", type=int, default=100, help="table 2 leaves out reference types with this many cells")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"error: benchmark data not found in {DATA}; set CELLANNOT_SHARED_DATA")
    from cellannot_core.data import read_dataset

    ref_f, q_f = TASKS["kang_ctrl"]
    ref, qry = read_dataset(DATA / ref_f, name="reference"), read_dataset(DATA / q_f, name="query")
    if args.table in ("1", "both"):
        table1(args.models, args.seeds, ref, qry)
    if args.table in ("2", "both"):
        table2(args.models, args.loo_seeds, ref, qry, args.min_cells)


if __name__ == "__main__":
    main()
