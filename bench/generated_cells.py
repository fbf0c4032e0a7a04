"""Where each model's generated cells land (issue 13): for every registered model that generates
cells, trained on the bundled demo pair with its defaults, the share of generated cells whose 15
nearest real reference cells (in the model's latent space) are mostly of the generated cell's
class, and their distance to the nearest real cell relative to the real cells' own spacing
(:func:`cellannot_core.metrics.generated_placement`; above 3 = apart from every real cluster,
which the Latent space page then says).

    .venv/bin/python bench/generated_cells.py [--models clams vae ...] [--n-per-class 100] [--max-epochs N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABEL = "cell_type_harmonized"


def main() -> None:
    import anndata as ad

    from cellannot_core.metrics import generated_placement
    from cellannot_core.models import MODELS, model_names
    from cellannot_core.pipeline import AnnotateOptions, annotate, view_arrays

    sampling = [n for n in model_names() if MODELS[n].supports.samples and MODELS[n].unavailable_reason() is None]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=sampling, choices=sampling)
    ap.add_argument("--n-per-class", type=int, default=100)
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ref = ad.read_h5ad(ROOT / "assets" / "kang_pbmc_example_sce_1556.h5ad")
    qry = ad.read_h5ad(ROOT / "assets" / "pbmc3k_seurat_2638.h5ad")
    print(f"{'model':<12} {'class agreement':>16} {'distance ratio':>15}  apart  seconds", flush=True)
    for name in args.models:
        t0 = time.perf_counter()
        opts = AnnotateOptions(label_key=LABEL, model=name, seed=args.seed, max_epochs=args.max_epochs,
                               n_generate=args.n_per_class, device="cpu")
        res = annotate(ref, qry, opts)
        a = view_arrays(res.model, res.prepared, res.predictions, opts)
        p = generated_placement(a["gen_latent"], a["gen_y"], a["ref_latent"], a["ref_y"])
        print(f"{name:<12} {p['class_agreement']:>16.3f} {p['distance_ratio']:>15.2f}  {'yes' if p['apart'] else 'no ':>5}"
              f"  {time.perf_counter() - t0:7.0f}", flush=True)


if __name__ == "__main__":
    main()
