"""The demo's quick run against its full run (issue 13): wall time of train + annotate for the
recommended model on the bundled demo pair, open-set accuracy, and the Unknown share of each type
the reference lacks (NK, DC, platelets).

    .venv/bin/python bench/quick_run.py [--model scanvi_svm] [--budget 60] [--quick-epochs N] [--seeds 1]

The quick run is what the app's *Quick run* toggle does: a training time budget (default 60 s;
training ends after the epoch that passes it, keeping the best state). ``--quick-epochs N``
instead caps the epochs (what the toggle did before: 3 epochs). The full run uses the model's
own epoch budget. Threads: ``CELLANNOT_NUM_THREADS`` or
all cores. Prints one row per run and the gap in acc_open.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LABEL = "cell_type_harmonized"
NOVEL = ("NK", "DC", "Platelet")


def run(model: str, max_epochs: int | None, seed: int, budget: float | None = None) -> dict:
    import anndata as ad

    from cellannot_core.pipeline import AnnotateOptions, annotate

    ref = ad.read_h5ad(ROOT / "assets" / "kang_pbmc_example_sce_1556.h5ad")
    qry = ad.read_h5ad(ROOT / "assets" / "pbmc3k_seurat_2638.h5ad")
    t0 = time.perf_counter()
    res = annotate(ref, qry, AnnotateOptions(label_key=LABEL, query_label_key=LABEL, model=model, seed=seed,
                                             max_epochs=max_epochs, max_train_seconds=budget, device="cpu"))
    secs = time.perf_counter() - t0
    qm = res.card["query_metrics"]
    mixing = ref_share_among_query_neighbours(res)
    on_map = map_placement(res, qry.obs[LABEL].astype(str).to_numpy())
    truth = qry.obs[LABEL].astype(str).to_numpy()
    unknown = res.predictions.is_unknown
    name = f"quick ({budget:g} s budget)" if budget else f"quick ({max_epochs} epochs)" if max_epochs else "full"
    row = {"run": name, "seed": seed, "seconds": secs,
           "epochs": res.card["training"]["n_epochs"], "acc_open": qm["acc_open"], "acc_in": qm["acc_in"],
           "auroc_ood": qm["auroc_ood"], "reject_in": qm["reject_in"]}
    for t in NOVEL:
        row[f"unknown_{t}"] = float(unknown[truth == t].mean())
    row["mixing"] = mixing
    row.update(on_map)
    return row


def ref_share_among_query_neighbours(res) -> float:
    """Reference/query integration in the model's latent space (1 = as mixed as random, 0 = apart):
    :func:`cellannot_core.metrics.dataset_mixing` of the query cells not called Unknown."""
    from cellannot_core.metrics import dataset_mixing
    from cellannot_core.pipeline import AnnotateOptions, view_arrays

    a = view_arrays(res.model, res.prepared, res.predictions, AnnotateOptions(label_key=LABEL, n_generate=0))
    return dataset_mixing(a["ref_latent"], a["query_latent"][~res.predictions.is_unknown])


def map_placement(res, truth: np.ndarray) -> dict:
    """The Latent page's two UMAP layouts (ui/latent.py): where the query's cells of reference types
    land, by their true type. ``*_agree``: the share whose 15 nearest reference cells on the map are
    mostly of their own type; ``*_ratio``: their median distance to the nearest reference cell over
    the reference cells' own spacing (about 1 = among them)."""
    from cellannot_core.embed import embed, embed_onto
    from cellannot_core.metrics import generated_placement
    from cellannot_core.pipeline import AnnotateOptions, view_arrays

    a = view_arrays(res.model, res.prepared, res.predictions, AnnotateOptions(label_key=LABEL, n_generate=0))
    R, Q, ry = a["ref_latent"], a["query_latent"], a["ref_y"]
    classes = list(res.model.classes)
    known = np.isin(truth, classes)
    qy = np.array([classes.index(t) for t in truth[known]])
    joint = embed(np.vstack([R, Q]), method="umap", seed=0)
    y_ref, y_q = embed_onto(R, Q, method="umap", seed=0)
    out = {}
    for name, (r2, q2) in (("joint", (joint[:len(R)], joint[len(R):])), ("map", (y_ref, y_q))):
        p = generated_placement(q2[known], qy, r2, ry)
        out[f"{name}_agree"], out[f"{name}_ratio"] = p["class_agreement"], p["distance_ratio"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="scanvi_svm")
    ap.add_argument("--budget", type=float, default=60.0, help="the quick run's training time budget, seconds")
    ap.add_argument("--quick-epochs", type=int, default=None, help="cap the epochs instead of a time budget")
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()
    rows = []
    for seed in range(args.seeds):
        quick = dict(max_epochs=args.quick_epochs) if args.quick_epochs else dict(max_epochs=None, budget=args.budget)
        for kw in (quick, dict(max_epochs=None)):
            rows.append(run(args.model, seed=seed, **kw))
            r = rows[-1]
            print(f"{r['run']:>17} seed {seed}: {r['seconds']:6.1f} s, {r['epochs']} epochs, acc_open {r['acc_open']:.3f}, "
                  f"acc_in {r['acc_in']:.3f}, auroc {r['auroc_ood']:.3f}, known->Unknown {r['reject_in']:.3f}, "
                  + ", ".join(f"{t} Unknown {r[f'unknown_{t}']:.0%}" for t in NOVEL)
                  + f", reference/query mixing {r['mixing']:.2f} (1 = mixed, 0 = apart); query cells of reference "
                  f"types among reference cells of their type: joint UMAP {r['joint_agree']:.0%} (distance ratio "
                  f"{r['joint_ratio']:.1f}), reference map {r['map_agree']:.0%} ({r['map_ratio']:.1f})",
                  flush=True)
    quick = [r for r in rows if r["run"] != "full"]
    full = [r for r in rows if r["run"] == "full"]
    gap = np.median([f["acc_open"] - q["acc_open"] for q, f in zip(quick, full)])
    print(f"\n{args.model}: quick run median {np.median([r['seconds'] for r in quick]):.1f} s "
          f"(target < 90 s), full run {np.median([r['seconds'] for r in full]):.1f} s; "
          f"acc_open full - quick = {gap:+.3f} (target within 0.02)")


if __name__ == "__main__":
    main()
