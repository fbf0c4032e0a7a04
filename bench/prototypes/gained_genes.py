"""Prototype probe (2026-12-06, second session; not part of the package): do genes a query cluster
turns on, that its predicted type's reference cells do not express, tell a missing type from a
known type in another state?  The reason: a type the reference lacks brings marker genes of its
own, off in the sibling type it is called; a known type in another state (stimulated, activated,
another study or technology) mostly changes the level of genes its type already expresses, and
what it turns on (interferon genes, a technology's capture) it turns on in the query's other types
too.  Every earlier signal was a distance in a latent space or a loss of the type's markers
(BENCHMARKS.md, "Novelty stress suite"); none counted genes gained.

Written before it ran.  Per query cluster of the rule (``pipeline.rule_groups``, >= 20 cells),
its type is its cells' majority raw label; a gene is *gained* when it is detected (count > 0) in
>= 40% of the cluster's cells and <= 5% of that type's reference cells; it is *shared* when it is
gained by at least half of the clusters (>= 20 cells) called another type, and at least two of
them; ``k`` = gained genes not shared.  Three variants of the default's decision (as ``annotate``
decides, handling states accepted):

  R   a cluster's accepted cells are Unknown when k >= 3;
  A   a cluster's Unknown cells get their raw label when k == 0;
  RA  both.

Gate: a variant is built into the rule (and then checked on a second seed) only if on this seed
(i) the median novel rejection where novel >= 20% rises by >= 0.05 or the closed sets' median
reject_in falls by >= 0.03, (ii) neither of those two moves the wrong way by more than 0.01, and
(iii) the median acc_open is at least the default's and the worst acc_open at least the default's
worst - 0.02.  It reads the stress suite's cached default models and never trains.

Measured: all three fail (BENCHMARKS.md, "Genes a cluster gains").  Written after that, before its run, a
fourth variant, Q, that compares within the query, so that what a study or a technology does to a
type's genes cancels: a rule cluster of >= 20 cells, at least half of them accepted, whose type (the
majority raw label of its accepted cells) has >= 20 accepted cells in the query outside it; a gene
is gained when detected in >= 40% of the cluster's cells and <= 5% of those other cells; genes of a
state any type can be in (``evidence.STATE_PROGRAMS``: handling, interferon, cell cycle,
mitochondrial, ribosomal) and genes gained likewise by at least half of the clusters of other types
compared so (two or more) do not count; the cluster's accepted cells are Unknown when it gains >= 3.
Its gate: the novel rejection where novel >= 20% rises by >= 0.05, the closed sets rise by <= 0.01,
the median acc_open is at least the default's and the worst at least the default's worst - 0.02;
then the same on a second seed before it is built.

    CELLANNOT_NUM_THREADS=2 .venv/bin/python bench/prototypes/gained_genes.py --seed 1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import novelty_stress as ns  # noqa: E402

ON, OFF, K_NOVEL, MIN_CELLS = 0.40, 0.05, 3, 20


def detection(X, rows: np.ndarray) -> np.ndarray:
    sub = X[rows]
    return np.asarray((sub > 0).mean(axis=0)).ravel()


def specific(gained: dict[int, tuple[int, np.ndarray]]) -> dict[int, tuple[int, int, list[int]]]:
    """Per cluster, (its type, k, its gained genes) without the genes gained by at least half of the
    clusters of other types (and two or more)."""
    out = {}
    for g, (c, mask) in gained.items():
        others = [m for h, (d, m) in gained.items() if d != c]
        shared = (np.sum(others, axis=0) >= max(2, len(others) / 2)) if len(others) >= 2 else np.zeros_like(mask)
        spec = np.flatnonzero(mask & ~shared)
        out[g] = (c, len(spec), spec.tolist())
    return out


def gained_counts(prep, p, clusters: np.ndarray) -> dict[int, tuple[int, int, list[int]]]:
    """Per cluster of >= MIN_CELLS cells: (its type, k, the indices of its specific gained genes)."""
    raw = p.proba.argmax(1)
    ref_det = {}
    gained = {}
    for g in np.unique(clusters):
        cells = np.flatnonzero(clusters == g)
        if len(cells) < MIN_CELLS:
            continue
        c = int(np.bincount(raw[cells]).argmax())
        if c not in ref_det:
            ref_rows = np.flatnonzero(prep.train.y == c)
            ref_det[c] = detection(prep.train.X, ref_rows) if len(ref_rows) else None
        if ref_det[c] is None:
            continue
        gained[int(g)] = (c, (detection(prep.query.X, cells) >= ON) & (ref_det[c] <= OFF))
    return specific(gained)


def within_query(prep, p, clusters: np.ndarray) -> dict[int, tuple[int, int, list[int]]]:
    """Variant Q's count per cluster: genes it gains against its type's accepted query cells outside it."""
    from cellannot_core.evidence import STATE_PROGRAMS

    members = [m.upper() for ms in STATE_PROGRAMS.values() for m in ms]
    exact = {m for m in members if not m.endswith("*")}
    prefixes = tuple(m[:-1] for m in members if m.endswith("*"))
    state = np.array([str(g).upper() in exact or str(g).upper().startswith(prefixes) for g in prep.genes])
    raw, acc = p.proba.argmax(1), ~p.is_unknown
    gained = {}
    for g in np.unique(clusters):
        cells = clusters == g
        if cells.sum() < MIN_CELLS or 2 * (cells & acc).sum() < cells.sum():
            continue
        c = int(np.bincount(raw[cells & acc]).argmax())
        other = np.flatnonzero(acc & (raw == c) & ~cells)
        if len(other) < MIN_CELLS:
            continue
        mask = (detection(prep.query.X, np.flatnonzero(cells)) >= ON) & (detection(prep.query.X, other) <= OFF)
        gained[int(g)] = (c, mask & ~state)
    return specific(gained)


def decided(p, clusters: np.ndarray, info: dict, variant: str):
    from cellannot_core._constants import UNKNOWN

    unknown = p.is_unknown.copy()
    for g, (_, k, _) in info.items():
        cells = clusters == g
        if variant == "Q" and k >= K_NOVEL:
            unknown[cells] = True
        if "R" in variant and k >= K_NOVEL:
            unknown[cells] = True
        if "A" in variant and k == 0:
            unknown[cells] = False
    # accepted cells keep the rule's label (smoothed over the query's graph), newly accepted ones their raw label
    label = np.where(unknown, UNKNOWN, np.where(p.is_unknown, p.label_raw, p.label)).astype(object)
    return label, unknown


def main() -> None:
    import cellannot_core.pipeline as pl
    from cellannot_core.evidence import class_means
    from cellannot_core.metrics import label_transfer_metrics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    seed = ap.parse_args().seed

    variants = ("default", "R", "A", "RA", "Q")
    rows, clus, clus_q = [], [], []
    for exp, prep, qry, m in ns.cached_models(seed):
        samples = ns.samples_of(qry, prep, None)
        p, _ = pl.label_query(m, prep.query.X, genes=prep.genes, samples=samples,
                              ref_mean=class_means(prep.train.X, prep.train.y, len(m.classes)))
        clusters = pl.rule_groups(m, p)
        info, info_q = gained_counts(prep, p, clusters), within_query(prep, p, clusters)
        labels = np.asarray(prep.query.labels)
        known = labels != ""
        novel = known & ~np.isin(labels, m.classes)
        row = {"exp": exp.name, "kind": exp.kind, "share": float(novel[known].mean())}
        for v in variants:
            label, unknown = (p.label, p.is_unknown) if v == "default" else decided(
                p, clusters, info_q if v == "Q" else info, v)
            res = label_transfer_metrics(labels[known], p.label_raw[known], np.asarray(label)[known],
                                         p.confidence[known], p.ood_score[known], m.classes)
            row[v] = {k: res[k] for k in ("acc_open", "reject_in", "reject_novel")}
        rows.append(row)
        for g, (c, k, spec) in info_q.items():
            cells = clusters == g
            clus_q.append({"exp": exp.name, "n": int(cells.sum()), "k": k, "type": m.classes[c],
                           "novel": float(novel[cells].sum() / max(1, (cells & known).sum())),
                           "genes": [prep.genes[i] for i in spec[:6]]})
        for g, (c, k, spec) in info.items():
            cells = clusters == g
            frac_novel = float(novel[cells].sum() / max(1, (cells & known).sum()))
            clus.append({"exp": exp.name, "n": int(cells.sum()), "novel": frac_novel, "k": k,
                         "accepted": float((~p.is_unknown[cells]).mean()), "type": m.classes[c],
                         "genes": [prep.genes[i] for i in spec[:6]]})
        print(f"{exp.name:44s} {row['share']:5.1%}  " + "  ".join(
            f"{v} {row[v]['acc_open']:.3f}/{row[v]['reject_in']:.3f}/{row[v]['reject_novel']:.3f}"
            for v in variants), flush=True)
    print("\nclusters (>= 20 cells): k by whether most of their labelled cells are novel")
    for name, sel in (("mostly novel", [c for c in clus if c["novel"] > 0.5]),
                      ("mostly known", [c for c in clus if c["novel"] <= 0.5])):
        ks = np.array([c["k"] for c in sel])
        if len(ks):
            print(f"  {name:13s} {len(ks):4d} clusters  k=0 {np.mean(ks == 0):.2f}  k>=3 {np.mean(ks >= 3):.2f}  "
                  f"median k {np.median(ks):.0f}")
    for c in sorted(clus, key=lambda c: -c["k"])[:25]:
        print(f"  {c['exp']:40s} {c['type']:18s} n={c['n']:4d} novel {c['novel']:.2f} accepted {c['accepted']:.2f} "
              f"k={c['k']:3d} {', '.join(c['genes'])}")
    print("\nvariant Q's clusters (mostly accepted, their type's other accepted cells >= 20): k by novelty")
    for name, sel in (("mostly novel", [c for c in clus_q if c["novel"] > 0.5]),
                      ("mostly known", [c for c in clus_q if c["novel"] <= 0.5])):
        ks = np.array([c["k"] for c in sel])
        if len(ks):
            print(f"  {name:13s} {len(ks):4d} clusters  k=0 {np.mean(ks == 0):.2f}  k>=3 {np.mean(ks >= 3):.2f}")
    for c in sorted(clus_q, key=lambda c: -c["k"])[:20]:
        print(f"  {c['exp']:40s} {c['type']:18s} n={c['n']:4d} novel {c['novel']:.2f} k={c['k']:3d} "
              f"{', '.join(c['genes'])}")
    ns.print_variants(rows, variants)


if __name__ == "__main__":
    main()
