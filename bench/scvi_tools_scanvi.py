"""scvi-tools' SCANVI on the bench's prepared data (a bench extra, never an app dependency).

Install the extra into its own environment (it pulls lightning, jax and more)::

    python3 -m venv .venv-bench && .venv-bench/bin/pip install -r requirements.txt -r bench/requirements-scvi.txt
    .venv-bench/bin/python bench/label_transfer.py --tasks kang_ctrl --models scanvi scvi-tools-scanvi

It gets exactly what our ``scanvi`` gets: the raw counts of the same reference training cells
(labelled) and query cells (unlabelled), the same genes, the dataset (reference / query) as the
batch covariate; reference validation cells are held out and only predicted (they set the
rejection threshold: accept ``accept`` of them on max p(y|x); no shift correction). The
scvi-tools recipe is its documented one: SCVI (n_latent 10, one hidden layer of 128, ZINB),
then ``SCANVI.from_scvi_model``; epochs are given here because scvi-tools' defaults (up to
400 + 200) are slow on a CPU.
"""
from __future__ import annotations

import numpy as np

NAME = "scvi-tools-scanvi"
UNLABELLED = "__unlabelled__"


def available() -> str | None:
    try:
        import scvi  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means "not installed here"
        return f"scvi-tools is not importable ({type(err).__name__}: {err}); see bench/scvi_tools_scanvi.py"
    return None


def _adata(split, batch: str, labels):
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame({"batch": pd.Categorical([batch] * split.n_obs, categories=["reference", "query"]),
                        "label": np.asarray(labels, dtype=object)}, index=[str(c) for c in split.obs_names])
    return ad.AnnData(split.counts.astype(np.float32).tocsr(), obs=obs)


def fit_predict(prep, seed: int, scvi_epochs: int = 100, scanvi_epochs: int = 20, accept: float = 0.95) -> dict:
    """Train SCVI -> SCANVI on ``prep``; return probabilities for val and query, and the threshold."""
    import anndata as ad
    import scvi

    scvi.settings.seed = seed
    classes = list(prep.classes)
    train_labels = np.asarray(classes, dtype=object)[prep.train.y]
    adata = ad.concat([_adata(prep.train, "reference", train_labels),
                       _adata(prep.query, "query", [UNLABELLED] * prep.query.n_obs)], index_unique=None)
    adata.obs_names_make_unique()
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch", labels_key="label")
    vae = scvi.model.SCVI(adata, n_latent=10, n_hidden=128, n_layers=1, gene_likelihood="zinb")
    vae.train(max_epochs=scvi_epochs, accelerator="cpu", devices=1, enable_progress_bar=False)
    lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=UNLABELLED, labels_key="label")
    lvae.train(max_epochs=scanvi_epochs, accelerator="cpu", devices=1, enable_progress_bar=False)

    def proba(split, batch):
        a = _adata(split, batch, [UNLABELLED] * split.n_obs)
        p = lvae.predict(a, soft=True)
        return p.reindex(columns=classes).fillna(0.0).to_numpy(dtype=float)

    p_val = proba(prep.val, "reference")
    p_q = lvae.predict(adata[adata.obs["batch"] == "query"], soft=True).reindex(columns=classes).fillna(0.0)
    p_q = p_q.to_numpy(dtype=float)
    threshold = float(np.quantile(p_val.max(1), 1.0 - accept))
    return {"classes": classes, "proba_val": p_val, "proba_query": p_q, "threshold": threshold}


def run(prep, seed: int, accept: float = 0.95, scvi_epochs: int = 100, scanvi_epochs: int = 20) -> dict:
    """Bench row for scvi-tools' SCANVI (same keys as bench/label_transfer.run_one)."""
    import time

    from cellannot_core._constants import UNKNOWN
    from cellannot_core.metrics import auroc, label_transfer_metrics

    t0 = time.time()
    out = fit_predict(prep, seed, scvi_epochs, scanvi_epochs, accept)
    secs = time.time() - t0
    classes, p = out["classes"], out["proba_query"]
    conf = p.max(1)
    raw = np.asarray(classes, dtype=object)[p.argmax(1)]
    final = np.where(conf >= out["threshold"], raw, UNKNOWN)
    labels = np.asarray(prep.query.labels)
    known = labels != ""
    m = label_transfer_metrics(labels[known], raw[known], final[known], conf[known], -conf[known], classes)
    novel = ~np.isin(labels, classes) & known
    val_acc = float(np.mean(out["proba_val"].argmax(1) == prep.val.y))
    return {"model": NAME, "seed": seed, "train_seconds": round(secs, 1), "diverged": False, "recoveries": 0,
            "epochs": scvi_epochs + scanvi_epochs, "ood_method": "maxprob", **m,
            "per_type_auroc": {}, "score_auroc": {"maxprob": auroc(-conf[known], novel[known])},
            "temperature": 1.0, "shift_factor": 1.0, "val_acc": val_acc}
