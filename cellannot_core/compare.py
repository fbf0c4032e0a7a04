"""Model comparison on one prepared reference/query pair, and CLAMS' leave-one-class-out
novelty experiment.

``compare_models`` trains every model on the same prepared data (same genes, same train /
validation split, same seed) and scores it where labels exist: on the query's cells of
reference types when the query has labels, otherwise on the reference validation cells (the
``evaluated_on`` column says which). ``leave_one_class_out`` removes one reference class from
training and validation, trains, and measures how well each novelty score separates that
class's held-out validation cells from the other validation cells (CLAMS, Liu et al. 2022).
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .data._types import Prepared, Split
from .errors import Cancelled, CellannotError, ConfigError, failure_message
from .novelty import OOD_METHODS
from ._constants import UNKNOWN, str_array

#: Columns of :func:`compare_models`, in display order.
#: ``acc_open`` / ``reject_in`` / ``reject_novel``: the final labels' (a known cell right and not Unknown, a novel
#: cell Unknown), on a labelled query only: "accuracy" alone, before the Unknown call, ranked a model that
#: rejected 8% of the novel cells first (found 2026-12-07).
COMPARE_COLUMNS = ("model", "status", "evaluated_on", "n_cells", "accuracy", "acc_open", "reject_in", "reject_novel",
                   "balanced_accuracy", "median_f1", "macro_f1", "ece", "novelty_auroc", "ood_method", "n_novel",
                   "unknown_fraction", "latent_asw", "active_dims", "train_seconds", "n_epochs")
#: Metric columns (numbers; higher is better except ece, reject_in and train_seconds).
METRIC_COLUMNS = ("accuracy", "acc_open", "reject_in", "reject_novel", "balanced_accuracy", "median_f1", "macro_f1",
                  "ece", "novelty_auroc", "unknown_fraction", "latent_asw", "train_seconds")
EVAL_QUERY = "query (cells of reference types)"
EVAL_VAL = "reference validation"


def _train(prepared: Prepared, name: str, *, seed: int, device: str, hparams: dict[str, Any],
           max_epochs: int | None, callbacks: Sequence[Any], accept: float = 0.95,
           shift_correction: str = "median"):
    """Train and calibrate one model exactly as ``annotate`` does (pipeline.train_model)."""
    from .pipeline import AnnotateOptions, train_model

    opts = AnnotateOptions(label_key="", model=name, hparams=dict(hparams or {}), seed=seed, device=device,
                           max_epochs=max_epochs, accept=accept, shift_correction=shift_correction)
    return train_model(prepared, opts, callbacks)


def evaluate(model, prepared: Prepared) -> dict[str, Any]:
    """The comparison metrics of a trained, calibrated model (see :data:`COMPARE_COLUMNS`)."""
    from .metrics import balanced_accuracy, ece, latent_quality, macro_f1, median_f1
    from .metrics import accuracy as acc_fn
    from .metrics import auroc
    from .pipeline import predict

    classes = np.asarray(model.classes, dtype=object)
    labels = prepared.query.labels
    if labels is not None and np.isin(str_array(labels), model.classes).any():
        preds = predict(model, prepared.query.X)
        truth = str_array(labels)
        labelled = truth != ""
        known = labelled & np.isin(truth, model.classes)
        novel = labelled & ~known
        raw, conf, ood, unknown = preds.label_raw, preds.confidence, preds.ood_score, preds.is_unknown
        where = EVAL_QUERY
        auc = auroc(ood[labelled], novel[labelled]) if novel.any() else float("nan")
    else:
        X = prepared.val.X
        proba = model.predict_proba(X)
        raw = str_array(classes[proba.argmax(1)])
        conf = proba.max(1)
        truth = str_array(classes[np.asarray(prepared.val.y)])
        known = np.ones(len(truth), dtype=bool)
        novel = ~known
        # the scores in their validation form and the threshold taken on them (the query's form of the
        # graph scores smoothed these cells over each other: knn_graph called none Unknown, found 2026-12-07)
        ood = model.validation_scores(X, [model.ood_method])[model.ood_method]
        unknown = ood > model.threshold
        where = EVAL_VAL
        auc = float("nan")
    if where == EVAL_QUERY:  # the final labels' figures, as annotate's card gives them
        from .metrics import label_transfer_metrics

        final = np.where(unknown, UNKNOWN, raw)
        qm = label_transfer_metrics(truth[labelled], raw[labelled], final[labelled], conf[labelled], ood[labelled],
                                    model.classes)
        opened = {k: qm[k] for k in ("acc_open", "reject_in", "reject_novel")}
    else:
        opened = {"acc_open": np.nan, "reject_in": float(np.mean(unknown)), "reject_novel": np.nan}
    t, r = truth[known], raw[known]
    lq = latent_quality(model.latent(prepared.val.X), classes[np.asarray(prepared.val.y)]) \
        if model.spec.supports.latent and prepared.val.n_obs else {}
    return {"latent_asw": lq.get("asw_reference", np.nan), "active_dims": lq.get("active_dims", np.nan),
            "evaluated_on": where, "n_cells": int(known.sum()), "n_novel": int(novel.sum()),
            "accuracy": acc_fn(t, r), "balanced_accuracy": balanced_accuracy(t, r), "median_f1": median_f1(t, r),
            "macro_f1": macro_f1(t, r), "ece": ece(conf[known], r == t), "novelty_auroc": auc,
            "ood_method": model.ood_method, "unknown_fraction": float(np.mean(unknown)) if len(unknown) else np.nan,
            **opened}


class _ModelProgress:
    """Wraps callbacks so each model's progress maps into its slice of the whole comparison."""

    def __init__(self, callbacks: Sequence[Any], i: int, n: int, name: str) -> None:
        self.callbacks, self.i, self.n, self.name = list(callbacks), i, n, name

    def should_stop(self) -> bool:
        from .training.callbacks import any_stop

        return any_stop(self.callbacks)

    def on_train_begin(self, info: dict[str, Any]) -> None:
        from .training.callbacks import call

        call(self.callbacks, "on_model_begin", self.name, self.i, self.n)
        call(self.callbacks, "on_train_begin", info)

    def on_step(self, step: int, total: int, logs: dict[str, float]) -> None:
        from .training.callbacks import call

        call(self.callbacks, "on_step", step, total, logs)
        call(self.callbacks, "on_progress", (self.i + min(1.0, step / max(1, total))) / self.n,
             f"{self.name} ({self.i + 1}/{self.n})")

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        from .training.callbacks import call

        call(self.callbacks, "on_epoch_end", epoch, logs)

    def on_train_end(self, logs: dict[str, Any]) -> None:
        from .training.callbacks import call

        call(self.callbacks, "on_train_end", logs)


def compare_models(prepared: Prepared, models: Sequence[str], *, seed: int = 0, device: str = "auto",
                   hparams_by_model: dict[str, dict[str, Any]] | None = None, max_epochs: int | None = None,
                   accept: float = 0.95, callbacks: Sequence[Any] = (),
                   log: Callable[[str], None] = lambda s: None) -> pd.DataFrame:
    """Train each model on the same prepared data and compare them.

    Parameters
    ----------
    prepared
        From :func:`cellannot_core.pipeline.prepare_data`.
    models
        Registry names.
    seed, device
        Shared by every model.
    hparams_by_model
        ``{model: {hparam: value}}`` overrides.
    max_epochs
        Caps the epochs of the models that have epochs (others ignore it).
    accept
        Share of reference validation cells accepted (the Unknown threshold).
    callbacks
        Training callbacks (progress, cancel). Besides the training hooks they receive
        ``on_model_begin(name, i, n)``, ``on_progress(fraction, text)`` and
        ``on_model_end(name, row)`` when they define them.

    Returns
    -------
    pandas.DataFrame
        One row per model, columns :data:`COMPARE_COLUMNS`. Metrics are on the query's cells
        of reference types when the query has labels (``evaluated_on`` says so), else on the
        reference validation cells (then ``novelty_auroc`` is NaN: there is no novel cell).
        A model that cannot run (unavailable, bad hyper-parameters, diverged to failure) gets
        ``status`` = the one-line reason and NaN metrics; cancelling raises :class:`Cancelled`.
    """
    from .models import get_spec
    from .training.callbacks import any_stop, call

    rows = []
    names = list(dict.fromkeys(models))
    if not names:
        raise ConfigError("choose at least one model to compare")
    for name in names:
        get_spec(name)  # unknown names fail before any training
    for i, name in enumerate(names):
        if any_stop(callbacks):
            raise Cancelled("comparison was cancelled")
        row: dict[str, Any] = {"model": name}
        log(f"training {name} ({i + 1}/{len(names)})")
        call(callbacks, "on_progress", i / len(names), f"{name} ({i + 1}/{len(names)})")
        t0 = time.time()
        try:
            model = _train(prepared, name, seed=seed, device=device, hparams=(hparams_by_model or {}).get(name),
                           max_epochs=max_epochs, callbacks=[_ModelProgress(callbacks, i, len(names), name)], accept=accept)
            row["train_seconds"] = time.time() - t0
            row["n_epochs"] = len((model.history or {}).get("epochs", []))
            row.update(evaluate(model, prepared))
            row["status"] = "diverged (last good state used)" if (model.history or {}).get("diverged") else "ok"
        except Cancelled:
            raise
        except CellannotError as err:
            row["status"] = str(err)
            row["train_seconds"] = time.time() - t0
        except Exception as err:  # noqa: BLE001 - one broken model must not lose the others' results
            row["status"] = failure_message(err)
            row["train_seconds"] = time.time() - t0
        rows.append(row)
        call(callbacks, "on_model_end", name, row)
        log(f"{name}: {row.get('status')}")
    call(callbacks, "on_progress", 1.0, "done")
    df = pd.DataFrame(rows)
    for c in COMPARE_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    return df[list(COMPARE_COLUMNS)]


# ------------------------------------------------------------------------------ leave one class out


def _subset(split: Split, keep: np.ndarray, remap: np.ndarray | None = None) -> Split:
    y = split.y[keep] if split.y is not None else None
    if y is not None and remap is not None:
        y = remap[y]
    return replace(split, X=split.X[keep], counts=split.counts[keep] if split.counts is not None else None, y=y,
                   obs_names=np.asarray(split.obs_names)[keep],
                   labels=np.asarray(split.labels)[keep] if split.labels is not None else None,
                   index=np.asarray(split.index)[keep] if split.index is not None else None,
                   batch=np.asarray(split.batch)[keep] if split.batch is not None else None)


def without_class(prepared: Prepared, cls: str) -> tuple[Prepared, np.ndarray]:
    """``prepared`` with reference class ``cls`` removed from train and val (classes re-indexed),
    and the X of that class's validation cells (the held-out "novel" cells)."""
    if cls not in prepared.classes:
        raise ConfigError(f"class {cls!r} is not a reference class; choose from {', '.join(prepared.classes)}")
    if len(prepared.classes) < 3:
        raise ConfigError("leave-one-class-out needs at least 3 reference classes (2 remain to train on)")
    k = prepared.classes.index(cls)
    remap = np.full(len(prepared.classes), -1, dtype=np.int64)
    kept = [c for c in prepared.classes if c != cls]
    remap[[j for j in range(len(prepared.classes)) if j != k]] = np.arange(len(kept))
    tr = _subset(prepared.train, prepared.train.y != k, remap)
    va = _subset(prepared.val, prepared.val.y != k, remap)
    held = prepared.val.X[prepared.val.y == k]
    return replace(prepared, train=tr, val=va, classes=kept, genes=list(prepared.genes), report=dict(prepared.report)), held


def leave_one_class_out(prepared: Prepared, model: str, classes: Sequence[str], *, seed: int = 0,
                        device: str = "auto", hparams: dict[str, Any] | None = None, max_epochs: int | None = None,
                        accept: float = 0.95, callbacks: Sequence[Any] = (),
                        log: Callable[[str], None] = lambda s: None) -> pd.DataFrame:
    """CLAMS' novelty self-check: for each class, train without it and score its cells.

    For every class ``c`` in ``classes``: class ``c`` is removed from the reference training
    and validation cells, ``model`` is trained and calibrated on the rest, and every novelty
    score (:data:`~cellannot_core.novelty.OOD_METHODS`) is computed on the validation cells:
    ``c``'s held-out validation cells are positives, the other validation cells negatives.

    Returns
    -------
    pandas.DataFrame
        One row per class: ``held_out``, ``model``, ``n_held_out``, ``n_known``,
        ``acc_known`` (accuracy on the remaining validation cells), ``auroc_<score>`` for
        every novelty score, ``model_score`` (the model's own score) and its
        ``auroc_model_score``, ``flagged_held_out`` / ``flagged_known`` (share called Unknown
        at the model's threshold) and ``train_seconds``.
    """
    from .metrics import auroc
    from .training.callbacks import any_stop, call

    classes = list(dict.fromkeys(classes))
    if not classes:
        raise ConfigError("choose at least one class to leave out")
    rows = []
    for i, cls in enumerate(classes):
        if any_stop(callbacks):
            raise Cancelled("the novelty self-check was cancelled")
        sub, held = without_class(prepared, cls)
        log(f"leaving out {cls} ({i + 1}/{len(classes)})")
        call(callbacks, "on_progress", i / len(classes), f"without {cls} ({i + 1}/{len(classes)})")
        t0 = time.time()
        m = _train(sub, model, seed=seed, device=device, hparams=hparams, max_epochs=max_epochs,
                   callbacks=[_ModelProgress(callbacks, i, len(classes), f"{model} without {cls}")], accept=accept)
        secs = time.time() - t0
        Xv = np.vstack([sub.val.X, held])
        is_novel = np.r_[np.zeros(sub.val.n_obs, dtype=bool), np.ones(len(held), dtype=bool)]
        scores = m.ood_scores(Xv, OOD_METHODS)
        proba = m.predict_proba(sub.val.X)
        thr, _ = m.query_threshold(scores[m.ood_method])
        flagged = scores[m.ood_method] > thr
        row = {"held_out": cls, "model": model, "n_held_out": int(len(held)), "n_known": int(sub.val.n_obs),
               "acc_known": float((proba.argmax(1) == sub.val.y).mean()) if sub.val.n_obs else np.nan}
        for k in OOD_METHODS:
            row[f"auroc_{k}"] = auroc(scores[k], is_novel) if len(held) else np.nan
        row["model_score"] = m.ood_method
        row["auroc_model_score"] = row[f"auroc_{m.ood_method}"]
        row["flagged_held_out"] = float(flagged[is_novel].mean()) if len(held) else np.nan
        row["flagged_known"] = float(flagged[~is_novel].mean()) if sub.val.n_obs else np.nan
        row["train_seconds"] = secs
        rows.append(row)
        call(callbacks, "on_model_end", f"{model} without {cls}", row)
    call(callbacks, "on_progress", 1.0, "done")
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# comparing runs that exist (no training)
# --------------------------------------------------------------------------------------------

#: Query metrics shown for runs whose query carried labels (from the run card).
RUN_LABELLED_COLUMNS = ("acc_in", "acc_open", "auroc_ood", "ece_in", "reject_in", "reject_novel")


def compare_runs(runs: Sequence[tuple[str, dict[str, Any], pd.DataFrame | None]]) -> dict[str, Any]:
    """Compare finished runs from their run cards and predictions, training nothing.

    Parameters
    ----------
    runs
        ``(run id, run card, predictions table or None)`` per run (the table of
        :func:`cellannot_core.pipeline.predictions_table`: ``cell``, ``cellannot_label``, ...).

    Returns
    -------
    dict
        ``table``: one row per run: model, query cells, Unknown share, and, only for runs whose
        query had labels, the query metrics (:data:`RUN_LABELLED_COLUMNS`); the reference
        validation accuracy is kept apart (``val_accuracy_reference``) and never stands for the
        query. ``agreement``: runs x runs, the share of the cells two runs share on which they
        give the same label (Unknown included): with an unlabelled query, agreement between
        models and the Unknown shares are the evidence there is. ``unknown_by_label``: per run,
        the share of Unknown among the cells of each raw label (where each model hesitates).
        ``labelled``: whether every run had query labels.
    """
    rows, labels = [], {}
    for rid, card, pred in runs:
        qm = card.get("query_metrics") or {}
        row = {"run": rid, "model": card.get("model"), "created": card.get("created"), "query_cells": card.get("n_query"),
               "unknown_fraction": card.get("unknown_fraction"),
               "val_accuracy_reference": (card.get("validation") or {}).get("val_accuracy"),
               "query_labelled": bool(qm)}
        row.update({k: qm.get(k) for k in RUN_LABELLED_COLUMNS} if qm else {})
        rows.append(row)
        if pred is not None and {"cell", "cellannot_label"} <= set(pred.columns):
            labels[rid] = pred.set_index("cell")
    table = pd.DataFrame(rows)
    ids = [r["run"] for r in rows]
    agreement = pd.DataFrame(np.nan, index=ids, columns=ids)
    for a in labels:
        for b in labels:
            common = labels[a].index.intersection(labels[b].index)
            if len(common):
                same = labels[a].loc[common, "cellannot_label"].astype(str).to_numpy() == \
                    labels[b].loc[common, "cellannot_label"].astype(str).to_numpy()
                agreement.loc[a, b] = float(same.mean())
    unknown_by_label = {}
    for rid, df in labels.items():
        if "cellannot_label_raw" in df.columns and "cellannot_is_unknown" in df.columns:
            unknown_by_label[rid] = df.groupby(df["cellannot_label_raw"].astype(str))["cellannot_is_unknown"].mean()
    return {"table": table, "agreement": agreement,
            "unknown_by_label": pd.DataFrame(unknown_by_label) if unknown_by_label else pd.DataFrame(),
            "labelled": bool(len(table)) and bool(table["query_labelled"].all())}
