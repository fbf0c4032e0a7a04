"""The annotate workflow shared by the CLI, the app and the benchmarks.

``annotate`` = read -> prepare -> train (+ calibrate) -> predict -> write, as in DESIGN.md's
annotate contract. Each step is a function the app calls on its own.
"""
from __future__ import annotations

import contextlib
import io
import math
import platform
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from . import __version__
from ._constants import DEFAULT_HVG_FLAVOR, DEFAULT_HVG_FROM, DEFAULT_MIN_SHARED_GENES, DEFAULT_MODEL, DEFAULT_N_TOP_GENES, UNKNOWN, OutKeys, RunFiles
from .data._types import Prepared, Split
from .calibration import FAR_QUERY_FACTOR
from .errors import CellannotError, ConfigError, Terminated, failure_message, raise_terminated
from ._constants import str_array

MAX_GENERATE = 10_000  # generated cells per class (the app's form offers up to 1,000)

REF_LATENT_KEEP = 4000  # reference cells kept for the latent-space views


@dataclass
class AnnotateOptions:
    """Everything a run depends on besides the data (recorded in the run card)."""

    label_key: str
    query_label_key: str | None = None
    model: str = DEFAULT_MODEL
    hparams: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    max_epochs: int | None = None
    n_top_genes: int = DEFAULT_N_TOP_GENES
    val_fraction: float = 0.15
    min_cells_per_class: int = 10
    min_shared_genes: int = DEFAULT_MIN_SHARED_GENES
    accept: float = 0.95
    shift_correction: str = "median"
    threshold: float | None = None
    n_generate: int = 100
    qc: dict[str, float] | None = None
    max_train_seconds: float | None = None  # a quick run: training ends after the epoch that passes this
    batch_key: str | None = None  # obs column of each cell's sample / batch (decoder covariate of generative models)
    hvg_from: str = DEFAULT_HVG_FROM  # variable genes chosen on the reference alone or "both" (reference or query)
    hvg_flavor: str = DEFAULT_HVG_FLAVOR  # how genes are ranked: scanpy's "seurat" (log values) or "seurat_v3" (counts)

    def __post_init__(self) -> None:
        """Options a run cannot use are one clear error here, before any data is read."""
        from .training.device import device_name

        def number(value: Any) -> float | None:
            try:
                return float(value)
            except (TypeError, ValueError):
                return None

        if not isinstance(self.label_key, str):  # "" where the data is prepared already (compare)
            raise ConfigError(f"label_key names the reference's obs column of cell types, e.g. 'cell_type'; not "
                              f"{str(self.label_key)[:40]!r}")
        if not isinstance(self.hparams, dict):
            raise ConfigError(f"hparams is a dict of the model's hyper-parameters, e.g. {{'max_epochs': 50}}; not a "
                              f"{type(self.hparams).__name__}")
        accept = number(self.accept)
        if accept is None or not 0 < accept <= 1:
            raise ConfigError(f"accept is the share of the reference's held-out cells the Unknown threshold keeps, in "
                              f"(0, 1], e.g. 0.95; not {self.accept!r}")
        epochs = number(self.max_epochs) if self.max_epochs is not None else 1.0
        if epochs is None or epochs < 1 or epochs != int(epochs):
            raise ConfigError(f"max_epochs must be a whole number of at least 1 (or None for the model's own); "
                              f"not {self.max_epochs!r}")
        seconds = number(self.max_train_seconds) if self.max_train_seconds is not None else 1.0
        if seconds is None or not seconds > 0:
            raise ConfigError(f"max_train_seconds must be a positive number of seconds; not {self.max_train_seconds!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be a whole number from 0 to 4294967295 (numpy's and torch's seeds); "
                              f"not {self.seed!r}")
        n_gen = number(self.n_generate)
        if n_gen is None or not 0 <= n_gen <= MAX_GENERATE or n_gen != int(n_gen):
            raise ConfigError(f"n_generate is the generated cells per class shown on the Latent page, a whole number "
                              f"from 0 to {MAX_GENERATE:,}; not {self.n_generate!r}")
        check_threshold(self.threshold)
        self.device = device_name(self.device)
        from .models.registry import resolve_hparams  # a misspelt or ill-typed hyper-parameter, before the data
        resolve_hparams(self.model, self.hparams)   # (it was said after reading and preparing them: found 2026-12-07)

    def model_hparams(self) -> dict[str, Any]:
        """The hyper-parameter overrides; ``max_epochs`` caps only models that train in epochs."""
        from .models import get_spec

        hp = dict(self.hparams)
        if self.max_epochs is not None and "max_epochs" in get_spec(self.model).hparams:
            hp["max_epochs"] = int(self.max_epochs)
        return hp


@dataclass
class Predictions:
    logits: np.ndarray
    proba: np.ndarray
    label_raw: np.ndarray
    label: np.ndarray
    threshold: float
    shift_factor: float
    confidence: np.ndarray
    ood_score: np.ndarray
    is_unknown: np.ndarray
    latent: np.ndarray
    scores: dict[str, np.ndarray]
    # per cell, its group's position in the card's ``unknown_groups`` (-1: none); set by attach_unknown_groups
    unknown_group: np.ndarray | None = None
    # the card's ``accepted_on_class_shift`` (:func:`shifted_classes_of`); set by describe_unknown_groups
    shifted_classes: list[dict[str, Any]] | None = None
    # False: the rule allows for the query's shift, but the query had too few predicted types to estimate it
    # from (:func:`query_shift_estimated`)
    shift_estimated: bool = True
    # the card's ``rejection.marker_agreement`` (:func:`marker_agreement_of`); set by describe_unknown_groups
    marker_agreement: dict[str, Any] | None = None
    # the query's shift factor the threshold was not widened by, its labels' markers saying the query is mostly
    # not of the reference's types (:func:`decide`); None when it was (or the rule has none)
    shift_refused: float | None = None


def prepare_data(reference, query, opts: AnnotateOptions) -> Prepared:
    """Validate and align a reference / query pair (paths or AnnData)."""
    from .data import prepare, read_dataset
    from .models import get_spec

    ref = reference if not isinstance(reference, (str, Path)) else read_dataset(reference, name="reference")
    qry = query if not isinstance(query, (str, Path)) else read_dataset(query, name="query")
    prepared = prepare(ref, qry, label_key=opts.label_key, query_label_key=opts.query_label_key,
                       n_top_genes=opts.n_top_genes, val_fraction=opts.val_fraction,
                       min_cells_per_class=opts.min_cells_per_class, min_shared_genes=opts.min_shared_genes,
                       seed=opts.seed, qc=opts.qc, batch_key=opts.batch_key, hvg_from=opts.hvg_from,
                       hvg_flavor=opts.hvg_flavor)
    if opts.batch_key and opts.model and "n_batches" not in get_spec(opts.model).hparams:
        spec = get_spec(opts.model).hparams
        default = getattr(spec.get("ood_score"), "default", spec.get("ood_score"))
        rule = (opts.hparams or {}).get("ood_score", default) or "maxprob"
        uses = ("the Unknown rule's per-sample shifts and notes" if rule == "knn_class" else
                f"the Unknown groups' notes; its Unknown rule, {rule}, has no per-sample shift, which knn_class has")
        prepared.report.setdefault("warnings", []).append(
            f"{opts.model} takes no batch covariate: the batch key {opts.batch_key!r} only names the query's samples "
            f"({uses}); the generative models, such as scanvi_svm, also train with it")
    return with_training_sample(prepared, opts.seed)


def with_training_sample(prepared: Prepared, seed: int = 0) -> Prepared:
    """``prepared`` with its training sample of the query (:func:`training_query`) set apart when the
    query is larger, and the query's counts dropped: only that sample trains on counts, labelling
    reads ``X`` alone (at a million cells the counts on the model's genes are about 2 GB)."""
    import dataclasses

    q = prepared.query
    if prepared.query_train is not None or q.counts is None:
        return prepared
    sample = training_query(prepared, seed)
    return prepared if sample is q else dataclasses.replace(prepared, query_train=sample,
                                                            query=dataclasses.replace(q, counts=None))


def counts_refusal(model: str, report: dict[str, Any]) -> str | None:
    """Why a model of counts cannot train on a prepared pair (None when it can): the counts it
    needs are those :func:`~cellannot_core.data.prepare` found, in ``X``, a layer or ``.raw``, or
    recovered from log values (``report['counts_available']``). Until 2026-12-07 this looked at ``X``
    alone and refused scanvi, gmvae, vae and m2flow for scanpy's usual layout (log values in ``X``,
    counts in ``layers['counts']``), which the pipeline itself reads."""
    from .models import get_spec

    if not get_spec(model).supports.needs_counts or report.get("counts_available", True):
        return None
    return (f"model {model} needs raw counts but the data holds only log-normalised values; give the raw counts "
            "(in X, a layer or .raw) or pick another model")


def train_model(prepared: Prepared, opts: AnnotateOptions, callbacks: Sequence[Any] = ()):
    """Build the model from the registry, fit it, then calibrate on reference validation."""
    from .models import create_model, get_spec

    spec = get_spec(opts.model)
    if msg := counts_refusal(opts.model, prepared.report):
        raise ConfigError(msg)
    hparams = opts.model_hparams()
    if prepared.batches is not None and "n_batches" in spec.hparams:  # the decoder's batch covariate levels
        hparams["n_batches"] = len(prepared.batches)
    model = create_model(opts.model, prepared.n_genes, prepared.classes, seed=opts.seed, device=opts.device,
                         hparams=hparams)
    if not spec.supports.sparse:
        prepared = densified(prepared, opts.model)
    if opts.max_train_seconds is not None:
        from .training import TimeBudget

        callbacks = [*callbacks, TimeBudget(opts.max_train_seconds)]
    model.fit(prepared.train, prepared.val, callbacks,
              **({"unlabelled": training_query(prepared, opts.seed)} if spec.supports.semi_supervised else {}))
    model.calibrate(prepared.val, accept=opts.accept, shift_correction=opts.shift_correction)
    return model


def sampled_query_of(hist: dict[str, Any], prepared: Prepared) -> dict[str, str]:
    """``{"query_sample_note": ...}`` when the model trained with a sample of the query
    (:func:`training_query`), else ``{}``."""
    n_used, n_query = hist.get("n_unlabelled"), prepared.query.n_obs
    if not hist.get("unlabelled_used") or n_used is None or n_used >= n_query:
        return {}
    return {"query_sample_note": f"the model trained with a seeded sample of {n_used:,} of the query's {n_query:,} "
                                 "cells (as many as the reference's training cells), so a large query does not "
                                 "outweigh the reference; every cell is labelled"}


def training_query(prepared: Prepared, seed: int = 0) -> Split:
    """The query cells a semi-supervised model trains with: every one, or for a query larger than
    the reference a seeded sample of as many cells as the reference trains with (at least
    :data:`~.novelty.QUERY_POOL_MIN`, at most :data:`~.novelty.QUERY_POOL_MAX`; the number the
    novelty rule smooths a query among). Every query cell is labelled either way. The reference's
    share of training then does not shrink as the query grows, and a query's calls do not depend on
    how many cells of the same populations it holds (BENCHMARKS.md, "A query larger than the reference")."""
    if prepared.query_train is not None:  # set apart by :func:`with_training_sample`
        return prepared.query_train
    from .novelty import query_pool_size

    q = prepared.query
    n = query_pool_size(prepared.train.n_obs)
    if q.n_obs <= n:
        return q
    return q.rows(np.sort(np.random.default_rng(seed).choice(q.n_obs, n, replace=False)))


def densified(prepared: Prepared, model_name: str) -> Prepared:
    """``prepared`` with dense splits, for a model that needs its data dense; a sparse (large)
    dataset is expanded only when it fits the memory limit, else one line says what to do."""
    import dataclasses

    from .data import dense
    from .data.io import memory_limit_bytes
    from .errors import DataError

    splits = {k: getattr(prepared, k) for k in ("train", "val", "query")}
    if not any(s.is_sparse for s in splits.values()):
        return prepared
    need = sum(s.n_obs for s in splits.values() if s.is_sparse) * prepared.n_genes * 4
    if need > memory_limit_bytes():
        raise DataError(f"model {model_name} needs the data dense in memory ({need / 1024**3:.1f} GiB), above this "
                        f"server's limit of {memory_limit_bytes() / 1024**3:.1f} GiB (CELLANNOT_MEMORY_LIMIT_GB): "
                        "use scanvi_svm or another model that reads large data sparse, or subsample the cells")
    out = {k: dataclasses.replace(s, X=dense(s.X)) if s.is_sparse else s for k, s in splits.items()}
    return dataclasses.replace(prepared, **out)


ALL_SCORES_MAX_CELLS = 50_000
"""Every novelty score (to compare them on the Calibration page) is computed for a query of at most
this many cells; a larger one gets its model's own score alone, as a query read in chunks does (the
others, the VAE family's ELBO over every class above all, cost more time than the model's score)."""


def score_names(model, n_cells: int) -> Sequence[str]:
    """The novelty scores :func:`predict` computes for ``n_cells`` query cells (see
    :data:`ALL_SCORES_MAX_CELLS`)."""
    from .novelty import OOD_METHODS

    return OOD_METHODS if n_cells <= ALL_SCORES_MAX_CELLS else [model.ood_method]


def predict(model, X: np.ndarray, *, threshold: float | None = None, samples: QuerySamples | None = None,
            ref_mean: np.ndarray | None = None) -> Predictions:
    """Label cells: calibrated probabilities, novelty scores (every score up to
    :data:`ALL_SCORES_MAX_CELLS` cells, else the model's own) and rejection.
    ``samples`` (:func:`query_samples`): each cell's query sample, for a rule that allows for each
    sample's own shift (``knn_class``)."""
    if hasattr(X, "toarray") and not model.spec.supports.sparse:
        from .data import dense

        X = dense(X)
    logits = model.logits(X)
    latent = model.latent(X)
    scores = model.ood_scores(X, score_names(model, X.shape[0]), logits=logits, latent=latent,
                              samples=None if samples is None else samples.codes)
    return decide(model, logits, latent, scores, threshold=threshold,
                  markers=lambda label_raw: marker_agreement_of(model, X, label_raw, ref_mean))


def gene_labels(of: Any) -> list[str]:
    """The model genes as the evidence names them (a group's genes up, markers, state programs): their symbols
    where the genes are Ensembl IDs and the data named them (``gene_symbols`` of a :class:`Prepared`, a bundle or a
    run card), else the genes themselves."""
    if isinstance(of, dict):
        return [str(g) for g in (of.get("gene_symbols") or of.get("genes") or [])]
    return list(of.gene_symbols or of.genes)


def label_query(model, X: Any, *, genes: Sequence[str] | None = None, ref_mean: np.ndarray | None = None,
                threshold: float | None = None,
                samples: QuerySamples | None = None) -> tuple[Predictions, list[dict[str, Any]]]:
    """Label a query held in memory as ``annotate`` does: :func:`predict`, the Unknown groups
    described (:func:`unknown_groups_of`, :func:`attach_unknown_groups`) and the handling states
    among them accepted (:func:`accept_handling_states`). Returns the predictions and the groups."""
    preds = predict(model, X, threshold=threshold, samples=samples, ref_mean=ref_mean)
    return preds, describe_unknown_groups(model, X, preds, ref_mean, genes, samples=samples)


def describe_unknown_groups(model, X: Any, preds: Predictions, ref_mean: np.ndarray | None = None,
                            genes: Sequence[str] | None = None, *,
                            samples: QuerySamples | None = None) -> list[dict[str, Any]]:
    """The steps after the Unknown calls, in one order for every path (in memory or in chunks: ``X``
    as :func:`unknown_groups_of` takes it): the groups described, their codes attached to ``preds``,
    the handling states among them accepted and, with the query's ``samples``, where each group that
    stays Unknown is among them (:func:`add_sample_evidence`). Returns the groups."""
    groups = unknown_groups_of(model, X, preds, ref_mean, genes)
    attach_unknown_groups(model, preds, groups)
    accept_handling_states(model, preds, groups)
    add_sample_evidence(preds, groups, samples)
    preds.shifted_classes = shifted_classes_of(model, X, preds, ref_mean, genes)
    if not callable(X) and preds.marker_agreement is None:  # (measured already where it decided the threshold; a
        preds.marker_agreement = marker_agreement_of(model, X, preds.label_raw, ref_mean)  # query read in chunks
        # measures a sample of its cells instead, streaming.py)
    return groups


def marker_agreement_of(model, X: Any, label_raw: np.ndarray,
                        ref_mean: np.ndarray | None = None) -> dict[str, Any] | None:
    """:func:`~.evidence.marker_agreement` of the labels before the Unknown call (``label_raw``) of the query
    cells ``X`` (the model's input; the reference's class means given, or from the cells the model kept), for
    every model: a check on the labels that no novelty score makes. None when it cannot be measured."""
    from .evidence import class_means, marker_agreement

    if X is None or callable(X) or X.shape[0] != len(label_raw) or not len(label_raw):
        return None
    ref_mean, _ = _reference_means(model, ref_mean, None, X.shape[1])
    if not np.isfinite(ref_mean).any():
        return None
    raw = pd.Categorical(label_raw, categories=list(model.classes)).codes
    return marker_agreement(ref_mean, class_means(X, raw, len(model.classes)),
                            np.bincount(raw[raw >= 0], minlength=len(model.classes)), list(model.classes))


def marker_note(preds: Predictions) -> dict[str, Any]:
    """The card's rejection entries from :attr:`Predictions.marker_agreement`: the measure, and ``markers_note``
    when the predicted types, weighted by their cells, have fewer than
    :data:`~.evidence.MARKER_AGREEMENT_MIN` of their reference markers highest in the cells given them."""
    from .errors import shown_name
    from .evidence import MARKER_AGREEMENT_MIN, MARKER_AGREEMENT_OTHER_TISSUE, MARKER_AGREEMENT_OWN_TYPES, MARKER_GENES

    m = preds.marker_agreement
    if not m:
        return {}
    out: dict[str, Any] = {"marker_agreement": m}
    refused = getattr(preds, "shift_refused", None)
    if m["share"] < MARKER_AGREEMENT_MIN:
        worst = sorted(m["by_class"].items(), key=lambda kv: kv[1])[:3]
        out["markers_note"] = (
            f"the query's cells do not express their labels' reference markers: of each predicted type's top "
            f"{MARKER_GENES} markers, {m['share']:.0%} are highest in the query cells given that type (weighted by "
            f"cells, over {m['n_classes']} types; fewest: "
            + ", ".join(f"{shown_name(k, 40)} {v:.0%}" for k, v in worst)
            + f"). Queries of the reference's types measured {_range(MARKER_AGREEMENT_OWN_TYPES)} (mouse -> human "
            f"pancreas included), queries of another tissue {_range(MARKER_AGREEMENT_OTHER_TISSUE)}: much of this "
            "query may be of types the reference lacks, labelled as the nearest type. Check the labels' marker "
            "evidence (the app's Explain page; the log's Unknown groups) before using them"
            + (f". So the threshold was not widened for the query's shift from the reference ({refused:.2f} "
               "times as far as its own cells), which assumes most of the query is of the reference's types: its cells "
               "were measured against the reference as it is" if refused else ""))
    return out


def add_sample_evidence(preds: Predictions, groups: list[dict[str, Any]], samples: QuerySamples | None) -> None:
    """Each Unknown group not accepted gets :func:`~.evidence.sample_evidence` (the samples it is
    absent from and the known type it may stand in for there) and the column it was read from
    (``sample_column``); nothing without samples. Call it after :func:`accept_handling_states`
    (the composition is that of the cells accepted)."""
    from .evidence import sample_evidence
    from .novelty import SAMPLE_MIN_CELLS

    if samples is None or preds.unknown_group is None:
        return
    for j, g in enumerate(groups):
        if g.get("accepted"):
            continue
        g.update(sample_evidence(preds.unknown_group == j, samples.codes, samples.names, preds.label_raw,
                                 preds.is_unknown, min_cells=SAMPLE_MIN_CELLS), sample_column=samples.column)


def check_threshold(threshold: Any) -> None:
    """A threshold given for the novelty score must be a number (infinity: nobody Unknown); NaN called
    no cell Unknown without a word, and minus infinity calls every cell Unknown whatever its score."""
    if threshold is None:
        return
    try:
        value = float(threshold)
    except (TypeError, ValueError, OverflowError):
        value = float("nan")
    if isinstance(threshold, bool) or math.isnan(value) or value == -math.inf:
        raise ConfigError(f"the threshold must be a number on the novelty score's scale (or none for the model's "
                          f"own); not {threshold!r}")


def decide(model, logits: np.ndarray, latent: np.ndarray, scores: dict[str, np.ndarray], *,
           threshold: float | None = None,
           markers: Callable[[np.ndarray], dict[str, Any] | None] | None = None) -> Predictions:
    """Probabilities, labels and Unknown calls from a query's logits and novelty scores
    (``scores[model.ood_method]`` is compared with the query's threshold).

    ``markers``: the :func:`marker_agreement_of` of labels before the Unknown call. A threshold widened by
    the query's median shift (the baselines' rule, :func:`~.calibration.query_threshold`) assumes most of the
    query is of the reference's types; where the labels' own markers say otherwise (share under
    :data:`~.evidence.MARKER_AGREEMENT_MIN`) it is not widened. Found 2026-12-07 (a scanpy user's probe):
    ``logreg`` labelled a mouse pancreas query of a human PBMC reference whole (0% Unknown): the query lay 1.96
    times as far as the reference's own cells, a study's shift by distance alone, but only 46% of its labels'
    markers were where the labels put them. ``knn_class`` needs no such check: its quartile shift put every
    two-tissue pair measured beyond the bound (2.56-6.4), and the stress suite's labels, one tissue, never
    fall under the share (lowest 0.50, BENCHMARKS.md)."""
    from .calibration import softmax

    proba = softmax(logits, model.temperature)
    classes = np.asarray(model.classes, dtype=object)
    label_raw = str_array(classes[proba.argmax(1)])
    ood = scores[model.ood_method]
    check_threshold(threshold)
    pred = proba.argmax(1)
    if threshold is None:
        thr, factor = model.query_threshold(ood, pred)
    else:
        thr, factor = float(threshold), 1.0
    far_by_markers = agreement = None
    if factor > 1 and model.ood_method != "knn_class" and markers is not None:
        from .evidence import MARKER_AGREEMENT_MIN

        agreement = markers(label_raw)
        if agreement and agreement["share"] < MARKER_AGREEMENT_MIN:
            far_by_markers = factor
            thr, factor = float(model.threshold), 1.0
    unknown = ood > thr
    label = np.where(unknown, UNKNOWN, label_raw)
    return Predictions(logits, proba, label_raw, label, thr, factor, proba.max(1), ood, unknown, latent, scores,
                       shift_estimated=threshold is not None or query_shift_estimated(model, pred),
                       marker_agreement=agreement, shift_refused=far_by_markers)  # (the card's share: the one decided on)


def query_shift_estimated(model, pred: np.ndarray) -> bool:
    """False when the model's rule allows for the query's shift from the reference (``knn_class``, or
    a distance score with ``shift_correction="median"``) but the query, predicted as ``pred``, has too
    few types to estimate it from (:func:`~.novelty.shift_estimable`): it was measured against the
    reference as it is."""
    from .calibration import SHIFTABLE_SCORES
    from .novelty import shift_estimable

    if model.ood_method == "knn_class":
        last = getattr(getattr(model, "reference", None), "last_decision", None) or {}
        return last.get("shift_estimated") is not False
    if model.shift_correction == "median" and model.ood_method in SHIFTABLE_SCORES:
        return shift_estimable(pred)
    return True


def provenance(model) -> dict[str, Any]:
    """What a card says of where and how its labels were made: the version, the time, the device,
    the threads and the library versions (float sums follow the threads: the same seed and threads
    give the same labels). ``predict``'s card carries it too (until 2026-12-07 only ``annotate``'s)."""
    import torch

    from importlib.metadata import PackageNotFoundError, version

    from ._constants import num_threads

    try:
        scanpy_v = version("scanpy")
    except PackageNotFoundError:
        scanpy_v = "unknown"
    return {"cellannot_version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "device": str(getattr(model, "device", "cpu")),
            # the setting where one is made: torch's own count is set only by the models that train with torch
            "threads": num_threads() or torch.get_num_threads(),
            "versions": {"python": platform.python_version(), "torch": str(torch.__version__), "scanpy": scanpy_v,
                         "numpy": np.__version__}}


def run_card(model, prepared: Prepared, opts: AnnotateOptions, preds: Predictions, *,
             train_seconds: float, query_metrics: dict[str, Any] | None = None,
             samples: QuerySamples | None = None) -> dict[str, Any]:
    hist = model.history or {}
    return {
        **provenance(model),
        "model": model.name,
        "hparams": model.hparams,
        "seed": opts.seed,
        "options": {k: v for k, v in asdict(opts).items() if k != "hparams"},
        OutKeys.CLASSES: list(model.classes),
        "genes": list(prepared.genes),
        **({"gene_symbols": list(prepared.gene_symbols)} if prepared.gene_symbols else {}),
        "n_genes": prepared.n_genes,
        "preprocessing": prepared.report.get("preprocessing", "") + "; "
                         + prepared.report.get("genes", {}).get("hvg", "highly variable genes of the reference")
                         + " among the genes shared with the query; model input standardised per gene "
                         "with reference mean/std (clipped to +-10)",
        "data_report": prepared.report,
        "n_train": prepared.train.n_obs, "n_val": prepared.val.n_obs, "n_query": prepared.query.n_obs,
        "temperature": model.temperature,
        "rejection": {"method": model.ood_method, "threshold": preds.threshold,
                      "validation_threshold": model.threshold,
                      "accept_fraction_on_validation": opts.accept,
                      "shift_correction": model.shift_correction, "shift_factor": preds.shift_factor,
                      "threshold_overridden": opts.threshold is not None,
                      **({"rule": rule} if (rule := (model.calibration or {}).get("rule")) else {}),
                      "how": (f"Cells whose {model.ood_method} novelty score exceeds the threshold are Unknown. "
                              + (f"The model's own rule: {rule} (the accepted share does not apply)" if rule else
                                 f"The threshold accepts {100 * opts.accept:.3g}% of reference validation cells")
                              + (f", scaled by {preds.shift_factor:.3f} = median(query score) / median(validation "
                                 f"score), at most {FAR_QUERY_FACTOR:g}, to allow for the study/technology shift"
                                 if preds.shift_factor != 1.0 else "")
                              + ("; overridden by the user" if opts.threshold is not None else "") + "."),
                      **study_shift_of(model, samples), **shift_note(preds), **scores_note(model, preds),
                      "query_far_factor": round(query_far_factor(model, preds), 4), **far_query_note(model, preds),
                      **threshold_note(model, opts.threshold, preds), **marker_note(preds)},
        "validation": model.calibration,
        **class_notes(model, preds),
        "training": {k: v for k, v in hist.items() if k != "epochs"} | {"n_epochs": len(hist.get("epochs", [])),
                                                                       "seconds": round(train_seconds, 2)}
                    | sampled_query_of(hist, prepared),
        "unknown_fraction": float(np.mean(preds.is_unknown)) if len(preds.is_unknown) else 0.0,
        "predicted_counts": pd.Series(preds.label).value_counts().to_dict(),
        "query_metrics": query_metrics or {},
        "latent_quality": latent_quality_of(model, prepared, preds),
    }


def query_far_factor(model, preds: Predictions) -> float:
    """How many times as far from the reference as the reference's own held-out cells the query lies, before
    the rule's bound (:data:`~cellannot_core.calibration.FAR_QUERY_FACTOR`): ``knn_class``'s query shift (its
    lower quartile), a baseline's median shift factor."""
    from .calibration import shift_factor

    last = getattr(getattr(model, "reference", None), "last_decision", None) or {}
    if model.ood_method == "knn_class":
        return float(last.get("query_far", 1.0)) if last.get("n") == len(preds.ood_score) else 1.0
    f = float(getattr(preds, "shift_refused", None) or preds.shift_factor)  # (a relabel passes its own record)
    return shift_factor(model.val_score_median, preds.ood_score) if f >= FAR_QUERY_FACTOR else f


#: the card's rejection entries that are warnings on the Unknown calls as a whole (log, and the top of the pages)
WARNING_KEYS = ("far_query", "genes_note", "threshold_note", "markers_note")


def far_query_note(model, preds: Predictions) -> dict[str, str]:
    """``{"far_query": ...}`` when the query lies so far from the reference that it is mostly unlike it
    (:func:`query_far_factor` at least :data:`FAR_QUERY_FACTOR`): the rule allows for a shift up to that bound
    only, so most of such a query is Unknown; a query of the reference's tissue shifted that far (another
    technology, a strong treatment) loses known cells with it."""
    f = query_far_factor(model, preds)
    if not f >= FAR_QUERY_FACTOR:
        return {}
    shown = f"{f:.1f}" if round(f, 1) > FAR_QUERY_FACTOR else f"{f:.2f}"  # not "2.5 times ..., beyond the 2.5-fold"
    return {"far_query": f"the query lies {shown} times as far from the reference as the reference's own held-out "
                         f"cells, beyond the {FAR_QUERY_FACTOR:g}-fold shifts between studies of one tissue: the "
                         f"threshold allowed for a {FAR_QUERY_FACTOR:g}-fold shift only, so cells of types the "
                         "reference lacks (another tissue or species) are Unknown. If the query is of the "
                         "reference's tissue and types (another technology, a strong treatment), its known cells are "
                         "Unknown too: check its Unknown groups and accept those that keep "
                         "their type's markers (the app's Calibration page, or ca.accept_groups), or give a threshold"
                         + _far_markers(preds)}


def _far_markers(preds: Predictions) -> str:
    """What the labels' markers say of a far query (:func:`marker_note`): of the reference's types or not."""
    from .evidence import MARKER_AGREEMENT_MIN, MARKER_AGREEMENT_OTHER_TISSUE, MARKER_AGREEMENT_OWN_TYPES

    m = getattr(preds, "marker_agreement", None)
    if not m:
        return ""
    measured = (f"queries of another tissue measured {_range(MARKER_AGREEMENT_OTHER_TISSUE)}, of the reference's "
                f"types {_range(MARKER_AGREEMENT_OWN_TYPES)}")
    if m["share"] > MARKER_AGREEMENT_OTHER_TISSUE[1]:
        return (f". Its labels' reference markers are mostly highest where the labels put them ({m['share']:.0%}; "
                f"{measured}), so it may well be of the reference's types, farther away (another species or technology)")
    if m["share"] >= MARKER_AGREEMENT_MIN:  # (a human PBMC query of a mouse pancreas model, 63%, was told it "may
        return (f". Its labels' reference markers are highest where the labels put them for {m['share']:.0%} of "  # well
                f"them, where both kinds of query were measured ({measured}): they do not tell")  # be" pancreas)
    return (f". Its labels' reference markers are not where the labels put them ({m['share']:.0%}), as in a query of "
            "other cells")


def _range(r: tuple[float, float]) -> str:
    return f"{r[0]:.0%}".rstrip("%") + f"-{r[1]:.0%}"


def threshold_note(model, threshold: float | None, preds: Predictions) -> dict[str, str]:
    """``{"threshold_note": ...}`` when a threshold given by hand lies below every query cell's novelty
    score, so that every cell is Unknown: nobody wants that, and a negative or mistyped threshold
    would otherwise do it without a word (infinity, calling nobody Unknown, is a choice); or when the model's
    own threshold, widened for the query's shift, lies above every cell's score while some lie above it
    unwidened (a bounded score, such as ``knn_logit``'s distance between unit vectors, can sit under any
    widened threshold)."""
    scores = np.asarray(preds.ood_score)
    if threshold is None and len(scores) and preds.shift_factor > 1 and bool((scores <= preds.threshold).all()):
        above = int((scores > float(model.threshold)).sum())  # (hdge on mouse pancreas 1 -> 2: its knn_logit, at
        if above:  # most 2, held 210 novel cells under a threshold of 2.008 and said nothing, found 2026-12-07)
            return {"threshold_note": f"the model's threshold ({float(model.threshold):.4g} on the reference's held-out "
                                      f"cells), widened {preds.shift_factor:.2f}-fold for the query's shift from the "
                                      f"reference, is {float(preds.threshold):.4g}: above every query cell's "
                                      f"{model.ood_method} novelty score (highest {float(scores.max()):.4g}), so no cell "
                                      "is Unknown, whatever the query holds. "
                                      f"{above:,} cells lie above the threshold before it was widened: move the "
                                      "threshold on the Calibration page, or give one (threshold= in Python, "
                                      "--threshold on the command line)"}
    if threshold is None or not len(scores) or not bool((scores > float(threshold)).all()):
        return {}
    return {"threshold_note": f"the threshold given ({float(threshold):.4g}) is below every query cell's "
                              f"{model.ood_method} novelty score (lowest {float(scores.min()):.4g}), so every cell is "
                              f"Unknown; the model's own threshold is {float(model.threshold):.4g} on the reference's "
                              "held-out cells: give a larger one, or none for the model's own"}


def scores_note(model, preds: Predictions) -> dict[str, str]:
    """``{"scores_note": ...}`` for the card's rejection entry when the query was scored by its model's
    own novelty score alone (:data:`ALL_SCORES_MAX_CELLS`), else ``{}``."""
    n = len(preds.is_unknown)
    if n <= ALL_SCORES_MAX_CELLS or len(preds.scores) > 1:
        return {}
    return {"scores_note": f"only the model's own novelty score ({model.ood_method}) was computed for these {n:,} "
                           f"query cells (the others are computed for queries of at most {ALL_SCORES_MAX_CELLS:,} "
                           "cells, to compare them on the Calibration page)"}


def shift_note(preds: Predictions) -> dict[str, str]:
    """``{"query_shift_not_estimated": ...}`` when the query had too few predicted types for the rule to
    estimate its shift from (:func:`query_shift_estimated`), else ``{}``."""
    from . import novelty

    if preds.shift_estimated:
        return {}
    return {"query_shift_not_estimated": (
        f"the query's cells were predicted as fewer than {novelty.SHIFT_MIN_CLASSES} types with "
        f"{novelty.STUDY_SHIFT_MIN_CELLS} cells each, so its shift from the reference was not estimated from them "
        "(a few types' own distance is what a population the reference lacks would show): they were measured "
        "against the reference as it is, and a type another study moved may be Unknown as a whole. Label such "
        "a population together with cells of other types (a whole sample), or accept its Unknown group as the "
        "type it looks like (the app's Calibration page, or ca.accept_groups) when it is that type")}


def study_shift_of(model, samples: QuerySamples | None = None) -> dict[str, Any]:
    """``{"study_shift": ..., "sample_shifts": ...}`` for the card's rejection entry when the rule
    is ``knn_class`` (``sample_shifts`` when the query's samples got shifts of their own)."""
    if model.ood_method != "knn_class" or getattr(model, "reference", None) is None:
        return {}
    out: dict[str, Any] = {"study_shift": model.reference.study_shift_summary()}
    last = model.reference.last_decision or {}
    per = last.get("sample_shifts") or {}
    if samples is not None and per and last.get("n") == len(samples.codes):
        out["sample_shifts"] = {
            "column": samples.column,
            "query_shift": round(float(last["query_shift"]), 4),
            "factors": {samples.names[c]: round(float(f), 4) for c, f in sorted(per.items())},
            "how": f"the query's {samples.column!r} samples were each measured against their own shift (the whole "
                   "query's times the median over the predicted classes of how much farther the sample's cells are "
                   "than the whole query's), so a sample in another condition or of another depth is not rejected "
                   "as a group"}
        present = np.unique(np.asarray(samples.codes)[np.asarray(samples.codes) >= 0])
        kept = [samples.names[int(c)] for c in present if int(c) not in per]
        if kept:  # too small, or too few predicted types of enough cells: the whole query's shift (novelty.sample_shifts)
            from .novelty import SAMPLE_MIN_CELLS, STUDY_SHIFT_MIN_CELLS, STUDY_SHIFT_MIN_CLASSES

            out["sample_shifts"]["kept_query_shift"] = kept
            out["sample_shifts"]["kept_note"] = (
                f"{', '.join(map(str, kept[:5]))}{', ...' if len(kept) > 5 else ''} kept the whole query's (under "
                f"{SAMPLE_MIN_CELLS} cells, or fewer than {STUDY_SHIFT_MIN_CLASSES} predicted types with "
                f"{STUDY_SHIFT_MIN_CELLS} of its cells)")
        capped = [samples.names[c] for c, f in sorted(per.items()) if f >= FAR_QUERY_FACTOR]
        if capped:
            out["sample_shifts"]["at_bound"] = capped
            out["sample_shifts"]["at_bound_note"] = (
                f"{len(capped)} sample(s) ({', '.join(map(str, capped[:5]))}{', ...' if len(capped) > 5 else ''}) lay "
                f"{FAR_QUERY_FACTOR:g}-fold or more as far from the reference as the reference's own held-out cells "
                f"(the whole query: {float(last['query_shift']):.2f}-fold) and were allowed for up to that bound only "
                "(the shifts between studies of one tissue): their known cells may be Unknown as a group; check "
                "whether such a sample is another tissue or failed, or, when the whole query lies near the bound "
                "too, whether the query is of another species or technology")
    return out


@dataclass(frozen=True)
class QuerySamples:
    """Each query cell's sample: the obs ``column``, per cell a code into ``names`` (-1: none)."""

    column: str
    codes: np.ndarray
    names: list[str]


def _sample_groups(values: pd.Series) -> tuple[list[str], np.ndarray]:
    """The named values of an obs column and, per cell, its value's code (-1: missing)."""
    from .data.validate import missing_label_mask

    named = ~missing_label_mask(values)
    names, inverse = np.unique(values[named].astype(str).to_numpy(), return_inverse=True)
    codes = np.full(len(values), -1, dtype=np.int64)
    codes[np.asarray(named)] = inverse
    return [str(n) for n in names], codes


def query_samples(obs: pd.DataFrame, *, batch_key: str | None = None,
                  exclude: Sequence[str] = ()) -> QuerySamples | None:
    """Each query cell's sample, for :meth:`~.novelty.LatentReference.sample_shifts`: the batch
    key's column when the query has it, else the first column named like a sample / donor / batch
    / condition (:func:`~.data.batch_candidates`) with two or more values of
    :data:`~.novelty.SAMPLE_MIN_CELLS` cells; None when there is none."""
    from .data import batch_candidates
    from .novelty import SAMPLE_MIN_CELLS

    if len(obs) == 0:
        return None
    if batch_key:
        cols = [batch_key] if batch_key in obs else []
    else:
        cols = batch_candidates(pd.DataFrame(), obs, exclude=tuple(k for k in exclude if k), max_levels=50,
                                named_only=True)
    for col in cols:
        names, codes = _sample_groups(obs[col])
        if (np.bincount(codes[codes >= 0], minlength=len(names)) >= SAMPLE_MIN_CELLS).sum() >= 2:
            return QuerySamples(str(col), codes, names)
    return None


def class_notes(model, preds: Predictions) -> dict[str, Any]:
    """The run card's per-class entries: the Unknown calls by class (:func:`unknown_by_class`), the
    classes accepted against their own shift and those with few reference cells."""
    rows = unknown_by_class(model, preds)
    return {"unknown_by_class": rows, "accepted_on_class_shift": preds.shifted_classes or [],
            "few_reference_cells": few_reference_classes(rows)}


def unknown_by_class(model, preds: Predictions) -> list[dict[str, Any]]:
    """Per predicted class: query cells, how many are Unknown and, for ``knn_class``, how that
    class's threshold was made (reference cells, the unit, the query shift, the threshold on the
    kNN distance); for other scores the one threshold applies to every class."""
    classes = list(model.classes)
    pred = preds.proba.argmax(1) if len(preds.proba) else np.zeros(0, dtype=int)
    rows: list[dict[str, Any]]
    graph = preds.scores.get("knn_graph")
    last = getattr(model.reference, "last_decision", None) or {}
    if graph is None and last.get("n") == len(pred):  # a query read in chunks keeps only the rule's own score
        graph = last.get("graph")
    if model.ood_method == "knn_class" and model.reference is not None and graph is not None:
        rows = model.reference.class_table(graph, pred, preds.threshold, confidence=preds.confidence)
    else:
        rows = [{"class": c} for c in range(len(classes))]
    for r in rows:
        sel = pred == r["class"]
        r["class"] = classes[r["class"]]
        r["n_predicted"] = int(sel.sum())
        r["n_unknown"] = int(preds.is_unknown[sel].sum())  # the run's own calls (group decisions included)
    return rows


def few_reference_classes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of :func:`unknown_by_class` whose class has fewer than
    :data:`~.novelty.FEW_REFERENCE_CELLS` reference cells (in the novelty index) and at least
    :data:`~.evidence.GROUP_MIN_CELLS` query cells called Unknown, each with a ``note``: the threshold
    of such a class is its reference cells' 95th percentile, which so few cells cannot pin down, so
    the rule may call the query's own cells of a type rare in the reference Unknown (the issue's
    pancreas pair: a stellate type of 27 reference cells lost all its query cells)."""
    from .evidence import GROUP_MIN_CELLS
    from .novelty import FEW_REFERENCE_CELLS

    out = []
    for r in rows:
        n_ref, n_unk = r.get("n_reference"), int(r.get("n_unknown", 0))
        if n_ref is None or n_ref >= FEW_REFERENCE_CELLS or n_unk < GROUP_MIN_CELLS:
            continue
        c = r["class"]
        note = (f"{n_unk:,} of the {int(r['n_predicted']):,} query cells that look most like {c} were called Unknown, "
                f"and the model measures them against only {int(n_ref)} reference {c} cells (those it trained on): "
                f"too few to tell how far {c} cells may lie (the "
                f"threshold is their 95th percentile, and with fewer than {FEW_REFERENCE_CELLS} cells even the farthest "
                f"may fall short of it). A type rare in the reference looks like this, and so does a type the reference "
                f"lacks that resembles {c}: the Unknown groups' genes tell which; accept the groups that keep {c}'s "
                f"genes.")
        out.append({"class": c, "n_reference": int(n_ref), "n_predicted": int(r["n_predicted"]), "n_unknown": n_unk,
                    "note": note})
    return out


def unknown_groups_of(model, X: Any, preds: Predictions, ref_mean: np.ndarray | None = None,
                      genes: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """:func:`~.evidence.unknown_groups` of a labelled query (``X``: its log-normalised expression,
    one row per prediction, or a function returning its chunks), grouped by :func:`rule_groups`;
    ``ref_mean`` the reference's class means (default: from the reference cells the model kept, if
    any). ``[]`` when ``X`` does not hold the predicted cells."""
    from .evidence import unknown_groups

    n_genes = _n_genes(X, preds, genes)
    if n_genes is None or not preds.is_unknown.any():
        return []
    ref_mean, names = _reference_means(model, ref_mean, genes, n_genes)
    return unknown_groups(X, rule_groups(model, preds), preds.is_unknown, preds.proba.argmax(1), list(model.classes),
                          names, ref_mean)


def _n_genes(X: Any, preds: Predictions, genes: Sequence[str] | None) -> int | None:
    """The genes of ``X`` when it holds the predicted cells (a matrix of one row each, or a function
    returning its chunks with ``genes`` given); else None."""
    n = len(preds.is_unknown)
    n_genes = len(genes) if genes is not None else (None if callable(X) else X.shape[1])
    if X is None or n_genes is None or (not callable(X) and X.shape[0] != n) or n == 0:
        return None
    return n_genes


def _reference_means(model, ref_mean: np.ndarray | None, genes: Sequence[str] | None,
                     n_genes: int) -> tuple[np.ndarray, list[str]]:
    """The reference's class means (given, or from the reference cells the model kept, or NaN) and
    the gene names."""
    from .evidence import class_means

    K = len(model.classes)
    if ref_mean is None:
        ref = getattr(model, "reference", None)
        if ref is not None and ref.expression is not None and ref.expression.shape[1] == n_genes:
            ref_mean = class_means(ref.expression, ref.y, K)
        else:
            ref_mean = np.full((K, n_genes), np.nan, dtype=np.float32)
    return ref_mean, list(genes) if genes is not None else [f"gene {i}" for i in range(n_genes)]


def shifted_classes_of(model, X: Any, preds: Predictions, ref_mean: np.ndarray | None = None,
                       genes: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The predicted classes ``knn_class`` measured against their own shift when it scored these
    cells (step 3: no query cluster of the class near the reference), their accepted cells described
    against the reference's cells of the class (:func:`~.evidence.shifted_class_evidence`: genes up
    and down, markers kept), each with a ``note`` for the run log. ``[]`` for other scores, or
    when no class was. For a query read in chunks it is one more pass over them, only then."""
    from .evidence import shifted_class_evidence

    last = getattr(getattr(model, "reference", None), "last_decision", None) or {}
    whole = last.get("whole")
    n_genes = _n_genes(X, preds, genes)
    if (getattr(model, "ood_method", None) != "knn_class" or whole is None or not np.any(whole)
            or last.get("n") != len(preds.is_unknown) or n_genes is None):
        return []
    ref_mean, names = _reference_means(model, ref_mean, genes, n_genes)
    rows = shifted_class_evidence(X, preds.proba.argmax(1), preds.is_unknown, list(model.classes), names, ref_mean,
                                  np.flatnonzero(whole))
    for r in rows:
        c, up, down = r["class"], ", ".join(r["genes_up"][:5]) or "none", ", ".join(r["genes_down"][:5]) or "none"
        r["note"] = (f"{r['n_cells']:,} cells were accepted as {c} against {c}'s own shift (no group of the query's "
                     f"{r['n_predicted']:,} {c} cells lies near the reference). "
                     + (f"They keep {r['markers_kept']} of {c}'s {r['n_markers']} reference markers; " if r["n_markers"]
                        else f"{c} has no reference marker to check (no gene sets it apart from every other type); ")
                     + f"against its reference cells, up {up}; down {down}. "
                     f"A type another study moved as a whole looks like this, and so does a type the reference "
                     f"lacks if the query has no {c} cells: these genes tell which.")
    return rows


def log_read_notes(name: str, adata, log: Callable[[str], None]) -> None:
    """What the reader did with a file that the user should know (a table's orientation guessed from
    its names, a MuData's modality, the annotation tables joined), one log line each."""
    from .data.prepare import read_notes

    for note in read_notes(adata):
        log(f"note: the {name}: {note}")


def log_warnings(report: dict[str, Any], log: Callable[[str], None], *, query: bool = True) -> None:
    """Say what reading the data did that the user should know (a report's ``warnings``), after where each
    dataset's counts and the shared genes' names were found (a counts layer, ``var['gene_symbols']``: the log
    said nothing of them until 2026-12-07). ``query=False``: a reference trained alone (its own query)."""
    from .errors import shown_name

    sources = [f"{name} {shown_name(str(report[name]['counts_source']), 400)}"  # (160 cut our own sentences)
               for name in ("reference", "query")[:2 if query else 1]
               if isinstance(report.get(name), dict) and report[name].get("counts_source")]
    if sources:
        log("counts: " + "; ".join(sources))
    if query and isinstance(report.get("genes"), dict) and report["genes"].get("message"):
        log(f"genes: {shown_name(str(report['genes']['message']), 300)}")
    for w in report.get("warnings", []):
        log(f"warning: {w}")


def log_class_notes(card: dict[str, Any], log: Callable[[str], None]) -> None:
    """One line per class the card has a note on: accepted against its own shift (:func:`shifted_classes_of`)
    or with few reference cells and Unknown query cells (:func:`few_reference_classes`); the
    note of a query labelled by a model not trained with it (:func:`unseen_query_note`), and of a
    query of too few types to estimate its shift from (:func:`shift_note`)."""
    log_shifted_classes(card.get("accepted_on_class_shift") or [], log)
    log_shifted_classes(card.get("few_reference_cells") or [], log)
    if card.get("unseen_query"):
        log(f"note: {card['unseen_query']}")
    if (card.get("rejection") or {}).get("query_shift_not_estimated"):
        log(f"note: {card['rejection']['query_shift_not_estimated']}")
    for key in WARNING_KEYS:
        if key != "genes_note" and (card.get("rejection") or {}).get(key):  # (said as the query was read)
            log(f"warning: {card['rejection'][key]}")


def log_shifted_classes(rows: list[dict[str, Any]], log: Callable[[str], None]) -> None:
    """One line per row's ``note`` (:func:`shifted_classes_of`, :func:`few_reference_classes`)."""
    for r in rows:
        log(f"note: {r['note']}")


def rule_groups(model, preds: Predictions) -> np.ndarray:
    """Per cell, the group :func:`unknown_groups_of` describes it with: the query cluster the last
    ``knn_class`` decision used when it scored these cells; for other scores (decided cell by cell)
    the Unknown cells' predicted class, each accepted cell a group of its own class apart (code
    ``-1 - class``), so that a class's Unknown cells form one group however many of it are accepted."""
    n = len(preds.is_unknown)
    last = getattr(getattr(model, "reference", None), "last_decision", None) or {}
    if getattr(model, "ood_method", None) == "knn_class" and last.get("n") == n and last.get("clusters") is not None:
        return np.asarray(last["clusters"])
    pred = preds.proba.argmax(1) if n else np.zeros(0, dtype=np.int64)
    return np.where(preds.is_unknown, pred, -1 - pred)


def attach_unknown_groups(model, preds: Predictions, groups: list[dict[str, Any]]) -> None:
    """Set ``preds.unknown_group``: per cell, its Unknown group's position in ``groups`` (the card's
    ``unknown_groups``; -1: none), written as ``obs["{key}_unknown_group"]`` and kept in the run's
    arrays, so a script or the app can accept a group as its type. Call it right after
    :func:`unknown_groups_of`, before anything scores again."""
    from .evidence import unknown_group_members

    preds.unknown_group = unknown_group_members(rule_groups(model, preds), preds.is_unknown, groups)


def accept_handling_states(model, preds: Predictions, groups: list[dict[str, Any]]) -> int:
    """Give the Unknown cells of each ``handling_state`` group (:func:`~.evidence.unknown_groups`)
    the type they look most like, and mark the group ``accepted``; returns the cells accepted.

    The rule measures distance to the reference; a known type whose cells went through a rougher
    dissociation (heat-shock and immediate-early genes up against the type's accepted query cells)
    is as far as a missing type, but keeps the type's markers. Only for ``knn_class``'s query
    clusters (the groups it was measured on, bench/novelty_stress.py); call it after
    :func:`attach_unknown_groups` (the group's cells keep their group code)."""
    if not groups or preds.unknown_group is None or getattr(model, "ood_method", None) != "knn_class":
        return 0
    n = 0
    for j, g in enumerate(groups):
        g["accepted"] = bool(g.get("handling_state"))
        if g["accepted"]:
            cells = (preds.unknown_group == j) & preds.is_unknown
            preds.is_unknown[cells] = False
            preds.label[cells] = preds.label_raw[cells]
            n += int(cells.sum())
    return n


def log_unknown_groups(groups: list[dict[str, Any]], log: Callable[[str], None], *, n: int = 3) -> None:
    """The largest Unknown groups and their top genes, one line each (CLI / run log). Type and gene names
    come from the data: quoted without control characters, at most 80 characters each (found 2026-12-07: a
    model's class name of 200,000 characters with escape sequences reached the terminal)."""
    from .errors import shown_name

    for g in groups[:n]:
        up = ", ".join(shown_name(v, 80) for v in g["genes_up"][:5]) or "none"
        programs = f"{' and '.join(g['state_programs'])} genes; " if g.get("state_programs") else ""
        like = shown_name(g["predicted_as"], 80)
        accepted = (f"; accepted as {like}, a handling state keeping {g['markers_kept']} of its "
                    f"{g['n_markers']} markers" if g.get("accepted") else "")
        empty = g.get("n_without_counts", 0)
        empty = f"; {empty:,} of its cells have no counts on the model's genes" if empty else ""
        log(f"Unknown group of {g['n_cells']:,} cells looking most like {like}: up {up} "
            f"({programs}against {shown_name(g['compared_with'], 120)}){empty}{accepted}{samples_note(g)}")
    if len(groups) > n:  # (found 2026-12-07: a whole known type rejected as a fifth group went unmentioned)
        rest = groups[n:]
        log(f"and {len(rest)} more Unknown group{'s' if len(rest) > 1 else ''} of "
            f"{sum(int(g['n_cells']) for g in rest):,} cells (looking most like "
            f"{', '.join(dict.fromkeys(shown_name(g['predicted_as'], 40) for g in rest))}): the annotated file's "
            "uns['cellannot']['unknown_groups'] and the app's Calibration page describe every group")


def samples_note(group: dict[str, Any]) -> str:
    """The clause of :func:`log_unknown_groups` (and the Calibration page's table) on where an
    Unknown group is among the query's samples (:func:`add_sample_evidence`); '' when it is in
    every one."""
    absent = [str(a) for a in group.get("absent_from", [])]  # a list, or an array when read back from .uns
    if not absent:
        return ""
    col = group.get("sample_column", "sample")
    note = f"; absent from {col} {', '.join(absent)}"
    if group.get("short_class"):
        note += (f"; where it is, {group['short_by']:,} {group['short_class']} cells are missing against the others' "
                 f"make-up, about the {group['state_would_leave']:,} a state of {group['short_class']} would leave "
                 f"(a hint: a type the reference lacks can do the same)")
    return note


SAMPLE_SPREAD = 0.25  # Unknown shares this far apart between two samples are worth a word


def unknown_by_sample(obs: pd.DataFrame, is_unknown: np.ndarray, opts: AnnotateOptions) -> dict[str, Any] | None:
    """When no batch key was given and the query's Unknown calls differ by sample: the first query
    column named like a sample / donor / condition (:func:`~.data.batch_candidates`) whose groups of
    at least :data:`~.novelty.SAMPLE_MIN_CELLS` cells have Unknown shares :data:`SAMPLE_SPREAD` or
    more apart, with those shares and a note saying what it may mean; else None.

    A condition or technology that only some query samples have (e.g. a stimulated half) makes
    their known cells unlike the reference. ``knn_class`` measures each sample against its own
    shift (:func:`query_samples`), which keeps most of them (bench/novelty_stress.py, kang_ctrl ->
    kang_sce, nothing novel: 37.5% of the known cells Unknown with one shift for the whole query,
    2.5% with each sample's own); what it cannot set aside still shows here, and so does a sample
    holding a type the others lack: the note says both."""
    import shlex

    from .data import batch_candidates
    from .models import get_spec
    from .novelty import SAMPLE_MIN_CELLS

    unk = np.asarray(is_unknown, dtype=bool)
    if opts.batch_key or len(obs) != len(unk) or len(unk) == 0:
        return None
    exclude = tuple(k for k in (opts.label_key, opts.query_label_key) if k)
    for col in batch_candidates(pd.DataFrame(), obs, exclude=exclude, max_levels=50, named_only=True):
        names, codes = _sample_groups(obs[col])  # a cell without a sample is in no group
        named = codes >= 0
        counts = np.bincount(codes[named], minlength=len(names))
        kept = np.flatnonzero(counts >= SAMPLE_MIN_CELLS)
        if len(kept) < 2:
            continue
        shares = np.bincount(codes[named], weights=unk[named], minlength=len(names)) / counts
        hi, lo = kept[np.argmax(shares[kept])], kept[np.argmin(shares[kept])]
        if shares[hi] - shares[lo] < SAMPLE_SPREAD:
            continue
        # only a model with a batch covariate sets the difference aside (found 2026-12-07: logreg was
        # advised a batch key that changed none of its labels)
        takes_batch = "n_batches" in get_spec(opts.model or DEFAULT_MODEL).hparams
        how = (f"train again with {col!r} as the batch column" if takes_batch else
               f"train again with a model that takes a batch covariate (such as {DEFAULT_MODEL}; "
               f"{opts.model or DEFAULT_MODEL} takes none) and {col!r} as the batch column")
        return {"column": col,
                "shares": {str(names[i]): round(float(shares[i]), 4) for i in kept},
                "cells": {str(names[i]): int(counts[i]) for i in kept},
                "note": f"Unknown calls differ between the query's {col!r} groups ({names[hi]}: {shares[hi]:.0%} "
                        f"Unknown, {names[lo]}: {shares[lo]:.0%}). If these samples differ in condition or "
                        f"technology rather than in cell types, {how} "
                        f"(batch_key={col!r} in Python, --batch-key {shlex.quote(col)} on the command line, the app's "
                        "Data page's \"Batch / sample column\"): the model "
                        "then sets that difference aside. If some samples hold cell types the others lack, the "
                        "difference is expected."}
    return None


def latent_quality_of(model, prepared: Prepared, preds: Predictions) -> dict[str, Any]:
    """Label ASW (reference validation; query by its labels) and active latent dimensions."""
    from .metrics import latent_quality

    if not model.spec.supports.latent or prepared.val.n_obs == 0:
        return {}
    val_labels = np.asarray(model.classes, dtype=object)[prepared.val.y]
    return latent_quality(model.latent(prepared.val.X), val_labels, preds.latent, prepared.query.labels,
                          seed=0)


def query_metrics(prepared: Prepared, preds: Predictions, classes: Sequence[str]) -> dict[str, Any]:
    """DESIGN.md metrics when the query carries labels (else empty)."""
    return metrics_of_labels(prepared.query.labels, preds, classes)


def move_counts(card: dict[str, Any], before: np.ndarray, after: np.ndarray, raw: np.ndarray) -> None:
    """The run card's counts after the labels of its query changed from ``before`` to ``after`` (cell by cell,
    ``raw`` their ``label_raw``): the Unknown share, the labels' counts and each class's Unknown cells move by
    the cells that changed (until 2026-12-07 ``accept_groups`` and the Calibration page's download kept the
    run's figures; moved rather than counted again, so a query cut to some of its cells keeps the run's
    figures for the rest). A card as stored in ``.uns`` (lists as dicts) or as written."""
    before, after, raw = (np.asarray(v).astype(str) for v in (before, after, raw))
    changed = before != after
    counts = card.get("predicted_counts")
    if not changed.any() or not isinstance(counts, Mapping):
        return
    counts = {str(k): int(v) for k, v in counts.items()}
    total = sum(counts.values())
    for (was, now), k in pd.Series(list(zip(before[changed], after[changed]))).value_counts().items():
        counts[was] = counts.get(was, 0) - int(k)
        counts[now] = counts.get(now, 0) + int(k)
    card["predicted_counts"] = {k: v for k, v in counts.items() if v > 0}
    if total:
        card["unknown_fraction"] = counts.get(UNKNOWN, 0) / total
    by_class = card.get("unknown_by_class")
    rows = by_class.values() if isinstance(by_class, Mapping) else by_class if isinstance(by_class, list) else []
    moved = (pd.Series(raw[changed & (after == UNKNOWN)]).value_counts()
             .sub(pd.Series(raw[changed & (before == UNKNOWN)]).value_counts(), fill_value=0))
    for r in rows:
        if isinstance(r, dict) and r.get("class") in moved.index and isinstance(r.get("n_unknown"), (int, np.integer)):
            r["n_unknown"] = max(int(r["n_unknown"]) + int(moved[r["class"]]), 0)


def metrics_of_labels(labels, preds: Predictions, classes: Sequence[str]) -> dict[str, Any]:
    """DESIGN.md metrics of the predictions against the query's own labels (``""``: a cell without
    one, left out); empty without labels."""
    from .metrics import label_transfer_metrics, per_type_ood_auroc

    if labels is None:
        return {}
    known = np.asarray(labels) != ""  # missing query labels are neither known nor novel
    labels = np.asarray(labels)[known]
    m = label_transfer_metrics(labels, preds.label_raw[known], preds.label[known], preds.confidence[known],
                               preds.ood_score[known], classes)
    m["per_type_auroc"] = per_type_ood_auroc(labels, preds.ood_score[known], classes)
    m["n_unlabelled"] = int((~known).sum())
    return m


#: an HDF5 name cannot hold "/" (h5py reads it as a path: the key "T/NK" came back as {"T": {"NK": ...}},
#: and anndata will refuse it): it is written as the division slash, which reads the same
H5_SLASH = "\u2215"


def h5_name(name: Any) -> str:
    """``name`` as a key of an ``.h5ad`` (``uns`` keys, ``obs`` / ``var`` columns): "/" as
    :data:`H5_SLASH`, NUL characters left out, and the two names HDF5 takes for the group itself,
    "." and "", as "(.)" and "(empty)"."""
    name = str(name).replace("/", H5_SLASH).replace("\0", "")
    return {".": "(.)", "": "(empty)"}.get(name, name)


def _h5_safe(obj: Any) -> Any:
    """Make a run card storable in .uns (no None, homogeneous lists as arrays, keys by :func:`h5_name`).
    A key whose value is None is left out, so that ``card.get(key) is None`` holds as in the run card's
    JSON (it was the string "None", found 2026-12-07); None inside a list becomes "None"."""
    if isinstance(obj, dict):
        return {h5_name(k): _h5_safe(v) for k, v in obj.items() if v is not None}
    if obj is None:
        return "None"
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        if all(isinstance(v, str) for v in obj):
            return np.asarray(obj, dtype=object) if obj else np.zeros(0)
        if all(isinstance(v, (int, float, np.number, bool)) for v in obj):
            return np.asarray(obj)
        return {str(i): _h5_safe(v) for i, v in enumerate(obj)}
    return obj  # (a NaN or an infinity stays a number: it was the string "nan", so `> 0.5` on it failed, 2026-12-07)


def annotation_keys(key_added: str = OutKeys.UNS) -> dict[str, str]:
    """Where the annotations go: ``obs`` columns ``{key_added}_label``, ``_label_raw``,
    ``_confidence``, ``_ood_score``, ``_is_unknown``, ``_unknown_group``; ``obsm`` ``{key_added}_proba`` and
    ``X_{key_added}`` (the latent space); ``uns[key_added]`` (the run card). With the default
    ``"cellannot"`` these are :class:`OutKeys`."""
    base = {"LABEL": OutKeys.LABEL, "LABEL_RAW": OutKeys.LABEL_RAW, "CONFIDENCE": OutKeys.CONFIDENCE,
            "OOD_SCORE": OutKeys.OOD_SCORE, "IS_UNKNOWN": OutKeys.IS_UNKNOWN, "UNKNOWN_GROUP": OutKeys.UNKNOWN_GROUP,
            "PROBA": OutKeys.PROBA}
    keys = {k: key_added + v[len(OutKeys.UNS):] for k, v in base.items()}
    keys["LATENT"] = f"X_{key_added}"
    keys["UNS"] = key_added
    return keys


def write_annotations(adata, preds: Predictions, card: dict[str, Any], *, index: np.ndarray | None = None,
                      key_added: str = OutKeys.UNS) -> None:
    """Write the predictions into ``adata`` in place (keys: :func:`annotation_keys`).

    ``index`` gives the rows of ``adata`` the predictions belong to (cells removed by QC get no
    label: ``NaN`` label and confidence, ``is_unknown`` False); ``None``: all rows, in order.
    """
    k = annotation_keys(key_added)
    n = adata.n_obs
    rows = np.arange(n) if index is None else np.asarray(index, dtype=np.int64)

    def full(values: np.ndarray, fill: Any, dtype: Any) -> np.ndarray:
        if index is None:
            return np.asarray(values).astype(dtype)
        out = np.full((n,) + np.shape(values)[1:], fill, dtype=dtype)
        out[rows] = values
        return out

    def plain(values: np.ndarray) -> np.ndarray:  # Python str, not numpy's np.str_ (shown as np.str_('beta') by
        given = pd.notna(values)                 # value_counts().to_dict(), found 2026-12-07)
        values[given] = str_array(values[given])
        return values

    label = plain(full(preds.label, None, object))
    # the types in their own order, Unknown last (sorted, it came first where the types are lower case)
    present = set(pd.unique(label[pd.notna(label)])) if len(label) else set()
    order = sorted(present - {UNKNOWN}) + ([UNKNOWN] if UNKNOWN in present else [])
    adata.obs[k["LABEL"]] = pd.Categorical(label, categories=order)
    adata.obs[k["LABEL_RAW"]] = pd.Categorical(plain(full(preds.label_raw, None, object)))
    adata.obs[k["CONFIDENCE"]] = full(preds.confidence, np.nan, np.float32)
    adata.obs[k["OOD_SCORE"]] = full(preds.ood_score, np.nan, np.float32)
    adata.obs[k["IS_UNKNOWN"]] = full(preds.is_unknown, False, bool)
    if preds.unknown_group is not None:
        adata.obs[k["UNKNOWN_GROUP"]] = full(preds.unknown_group, -1, np.int32)
    adata.obsm[k["PROBA"]] = full(preds.proba, np.nan, np.float32)
    adata.obsm[k["LATENT"]] = full(preds.latent, np.nan, np.float32)
    adata.uns[k["UNS"]] = _h5_safe(card)


def _kept_rows(query_adata, prepared: Prepared) -> np.ndarray | None:
    """The query's rows ``prepared`` kept (cells removed by QC left out), in order; None: all."""
    idx = getattr(prepared.query, "index", None)
    return np.asarray(idx) if idx is not None and query_adata.n_obs != prepared.query.n_obs else None


def _kept_obs(query_adata, prepared: Prepared) -> pd.DataFrame:
    rows = _kept_rows(query_adata, prepared)
    return query_adata.obs if rows is None else query_adata.obs.iloc[rows]


def annotated_query(query_adata, prepared: Prepared, preds: Predictions, card: dict[str, Any]):
    """A copy of the query AnnData (cells in input order; cells removed by QC left out) with the
    annotate contract's fields."""
    import warnings

    rows = _kept_rows(query_adata, prepared)
    with warnings.catch_warnings():  # (said by the run in its own words; anndata's repeated them with its paths
        warnings.filterwarnings("ignore", message=".*names are not unique.*")  # as the results were written)
        qa = query_adata.copy() if rows is None else query_adata[rows].copy()
    write_annotations(qa, preds, card)
    return qa


def predictions_table(obs_names: Sequence[str], preds: Predictions, classes: Sequence[str]) -> pd.DataFrame:
    cols = {"cell": np.asarray(obs_names), OutKeys.LABEL: preds.label, OutKeys.LABEL_RAW: preds.label_raw,
            OutKeys.CONFIDENCE: preds.confidence, OutKeys.OOD_SCORE: preds.ood_score, OutKeys.IS_UNKNOWN: preds.is_unknown}
    group = getattr(preds, "unknown_group", None)  # (the .h5ad's column, which the CSV lacked until 2026-12-07)
    if group is not None and len(group) == len(preds.label):
        cols[OutKeys.UNKNOWN_GROUP] = np.asarray(group)
    # built at once: a column at a time, over 100 classes made pandas warn of a fragmented frame
    return pd.DataFrame(cols | {f"p_{c}": preds.proba[:, j] for j, c in enumerate(classes)})


def check_writable(path: str | Path, *, what: str = "output", folder: bool = False) -> Path:
    """Fail now, in one line, when ``path`` cannot be written (before hours of training): a probe
    file is written and removed in its folder, or, where that folder does not exist yet, in the
    nearest one on its way that does (the writers create the rest when they write, so a run that
    fails leaves no empty folders behind). ``folder``: ``path`` is a folder to write into (a run's
    or a saved model's)."""
    import errno
    import secrets

    from .errors import DataError

    path = Path(path)
    if path.is_dir() and not folder:
        raise DataError(f"the {what} path {path} is a folder: give a file name")
    if folder and path.exists() and not path.is_dir():
        raise DataError(f"the {what} path {path} is a file, not a folder: give a folder")
    where = path if folder else path.parent
    try:
        existing = where.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a folder on the way is a file")
        probe = existing / f".{path.name}.{secrets.token_hex(4)}.probe"
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as err:
        reason = ("the disk is full" if err.errno == errno.ENOSPC else "a folder on the way is a file"
                  if err.errno in (errno.EEXIST, errno.ENOTDIR) else (err.strerror or type(err).__name__).lower())
        raise DataError(f"cannot write the {what} to {path}: {reason}. Choose another place.") from None
    return path


def check_not_an_input(out: str | Path, inputs: dict[str, Any], *, what: str = "output") -> None:
    """Refuse, in one line, an output that would overwrite an input: the same file by any name
    (a link, a relative path), or a file inside an input folder (a saved model, a 10x folder).
    ``inputs``: a description -> path (or anything else, e.g. an AnnData or ``None``, skipped)."""
    import os

    from .errors import DataError

    out = Path(out)
    where = out.resolve()
    for name, given in inputs.items():
        if not isinstance(given, (str, Path)):
            continue
        src = Path(given)
        try:
            same = os.path.samefile(out, src) if out.exists() and src.exists() else where == src.resolve()
        except OSError:
            same = False
        if same:
            raise DataError(f"the {what} {out} is the {name} itself: writing it would overwrite the {name}. "
                            f"Give another name")
        if src.is_dir() and where.is_relative_to(src.resolve()):
            raise DataError(f"the {what} {out} is inside the {name}'s folder {src}: writing it there could overwrite "
                            f"the {name}'s files. Give a path outside it")


def write_h5ad_atomic(adata, path: Path) -> None:
    """Write to a temporary name and rename (:func:`write_atomic`); names an ``.h5ad`` cannot
    hold are written by :func:`h5_name` (:func:`h5_names`)."""
    with h5_names(adata):
        write_atomic(path, lambda tmp: adata.write_h5ad(tmp, compression="gzip"))


def _h5_columns(frame: pd.DataFrame) -> list[str]:
    """``frame``'s column names as an ``.h5ad`` can hold them: by :func:`h5_name`, anndata's
    reserved ``_index`` (SeuratDisk's conversions give ``raw.var`` such a column) as
    ``_index_column``, a repeated name numbered as pandas numbers them (``name.1``)."""
    out: list[str] = []
    for c in frame.columns:
        name = h5_name(c)
        name = "_index_column" if name == "_index" else name
        base, n = name, 0
        while name in out:
            n += 1
            name = f"{base}.{n}"
        out.append(name)
    return out


@contextlib.contextmanager
def h5_names(adata):
    """``adata``'s ``obs``, ``var`` and ``raw.var`` columns (:func:`_h5_columns`) and ``uns`` keys (at
    any depth, :func:`h5_name`) as an ``.h5ad`` can hold them while the block runs (the file is
    written), as they were after it; an index named like a column of other values loses its name
    meanwhile. Nothing is copied."""
    def keys(d):
        return {h5_name(k): keys(v) if isinstance(v, dict) else v for k, v in d.items()}

    def renamed(d) -> bool:
        return any(h5_name(k) != k or (isinstance(v, dict) and renamed(v)) for k, v in d.items())

    frames = [adata.obs, adata.var] + ([adata.raw.var] if getattr(adata, "raw", None) is not None else [])
    was = [(f.columns, f.index.name) for f in frames]
    uns = dict(adata.uns) if renamed(adata.uns) else None
    try:
        for f in frames:
            cols = _h5_columns(f)
            if cols != list(f.columns):
                f.columns = cols
            name = f.index.name
            if name is not None and (name in f.columns or not isinstance(name, str)):
                f.index.name = None  # (anndata refuses a column of that name with other values)
        if uns is not None:
            adata.uns = keys(uns)
        yield adata
    finally:
        for f, (cols, name) in zip(frames, was):
            if not f.columns.equals(cols):
                f.columns = cols
            f.index.name = name
        if uns is not None:
            adata.uns = uns


def check_h5ad_writable(adata, what: str) -> None:
    """Fail now, in one line, when the annotated ``adata`` could not be written to ``.h5ad`` after
    training (as :func:`write_h5ad_atomic` writes it): its ``obs``, ``var``, ``raw.var`` and ``uns``
    are written to a file in memory. Names an ``.h5ad`` cannot hold are renamed there
    (:func:`h5_names`); what else anndata refuses is named by its part, not its contents."""
    import h5py
    from anndata.io import write_elem

    from .errors import DataError

    with h5_names(adata), h5py.File(io.BytesIO(), "w") as f:
        parts = [("obs", adata.obs), ("var", adata.var), ("uns", dict(adata.uns))]
        if getattr(adata, "raw", None) is not None:
            parts.append(("raw.var", adata.raw.var))
        for part, value in parts:
            try:
                write_elem(f, part.replace(".", "_"), value)
            except Exception as err:  # noqa: BLE001 - whatever anndata cannot store, said before training
                raise DataError(f"the {what}'s {part} cannot be written to an .h5ad file ({type(err).__name__}), so "
                                f"its labels could not be saved: give the {what} without it, e.g. saved again "
                                "from Python with only the columns you need") from None


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` a file at a temporary name beside ``path``, then rename it to ``path``; on any
    failure (disk full, permissions) the temporary file is removed and one plain line is raised."""
    import errno
    import os
    import secrets

    from .errors import DataError

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _interrupt_kept():
            write(tmp)
        os.replace(tmp, path)
        _remove_stale_temporaries(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        reason = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or type(err).__name__).lower()
        raise DataError(f"cannot write {path}: {reason}. Free some space or choose another place.") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _interrupt_kept():
    """Ctrl-C while the block runs stops it even where Python would lose it: h5py drops its objects in
    weak-reference callbacks, and an interrupt raised in one is printed as "Exception ignored" and
    dropped, so an interrupted ``write_h5ad`` went on and the command ended with exit code 0 (found
    2026-12-07, about one interrupt in two while an annotated query was written). The interrupt is
    noted as it comes and raised again when the block ends. Main thread only (signals go there)."""
    import signal
    import sys
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    came: list[int] = []
    handlers = {signal.SIGINT: signal.default_int_handler}
    if signal.getsignal(signal.SIGTERM) is raise_terminated:  # (SIGTERM too where the command line raises on it)
        handlers[signal.SIGTERM] = raise_terminated

    def note(signum, frame):
        came.append(signum)
        handlers[signum](signum, frame)  # raises KeyboardInterrupt (or errors.Terminated)

    def unraisable(info, before=sys.unraisablehook):  # the one it dropped is noted: not printed as a fault
        if not (came and isinstance(info.exc_value, KeyboardInterrupt)):
            before(info)

    for signum in handlers:
        signal.signal(signum, note)
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        sys.unraisablehook = unraisable.__defaults__[0]
    if came:
        handlers[came[0]](came[0], None)


def _remove_stale_temporaries(path: Path) -> None:
    """The temporary files :func:`write_atomic` left beside ``path`` when its process was killed (a hidden
    partial copy of the output, gigabytes for an atlas; found 2026-12-07): those whose process is gone."""
    import glob
    import os

    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp{glob.escape(path.suffix)}"):
        pid = stale.name[len(path.name) + 2:].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except OSError:  # (another user's live process: left alone)
            pass


def bundle_info(model, prepared: Prepared, opts: AnnotateOptions) -> dict[str, Any]:
    """What a new query needs besides the weights: the genes and their preprocessing."""
    return {"genes": list(prepared.genes), **({"gene_symbols": list(prepared.gene_symbols)} if prepared.gene_symbols
                                              else {}), "label_key": opts.label_key, "classes": list(model.classes),
            "model": model.name, "batch_key": opts.batch_key, "min_shared_genes": opts.min_shared_genes,
            "norm_genes": prepared.report.get("norm_genes"), "preprocessing": prepared.report.get("preprocessing", ""),
            **({"norm_gene_symbols": prepared.report["norm_gene_symbols"]} if prepared.report.get("norm_gene_symbols")
               else {})}


def check_model_folder(directory: str | Path) -> Path:
    """A folder a model can be saved into, or one line why not: besides :func:`check_writable`, a
    folder holding files of the names a saved model has (``config.json`` and the others) that are
    not a saved model's is refused, not written over (another saved model is replaced)."""
    from ._constants import RunFiles
    from .errors import DataError
    from .runs import read_json

    directory = Path(directory)
    if directory.is_dir():
        ours = [n for n in (RunFiles.CONFIG, RunFiles.WEIGHTS, "bundle.json") if (directory / n).exists()]
        bundle = read_json(directory / "bundle.json")  # (None when missing or not JSON)
        if ours and not (isinstance(bundle, dict) and "genes" in bundle):
            raise DataError(f"the saved model folder {directory} holds a {ours[0]} that is not a saved model's: "
                            f"saving would replace it. Give a new or empty folder (a save that was stopped part way "
                            "leaves such a folder: delete it if so)")
    return check_writable(directory, what="saved model", folder=True)


def save_bundle(directory: Path, model, info: dict[str, Any]) -> Path:
    """Model weights + config (safetensors + JSON, no pickle) and ``bundle.json`` (:func:`bundle_info`)."""
    from .runs import write_json_atomic

    directory = Path(directory).expanduser()  # "~/models/pbmc", as a shell would read it
    check_model_folder(directory)  # one line, as the command line's
    d = model.save(directory)
    write_json_atomic(d / "bundle.json", info)
    return d


MODEL_ARCHIVES = (".zip", ".tar.gz", ".tgz", ".tar")


def load_bundle(model_dir: str | Path, *, device: str = "auto") -> tuple[Any, dict[str, Any]]:
    """The model and its ``bundle.json`` from a directory written by :func:`save_bundle`, a run's
    folder, or an archive of either (the app's "Model bundle (.zip)" download: unpacked as a
    dataset's archive is, :func:`~.data.io.unpacked_archive`, and read into memory)."""
    from .errors import DataError

    model_dir = Path(model_dir).expanduser()
    if not model_dir.exists():
        raise DataError(f"the model folder {model_dir} does not exist; pass a directory written by `train` or "
                        "--save-model")
    if model_dir.is_file():
        if not model_dir.name.lower().endswith(MODEL_ARCHIVES):
            raise DataError(f"{model_dir} is a file, not a saved model: pass the folder written by `train`, "
                            "--save-model or Annotator.save (or the app's \"Model bundle (.zip)\" download)")
        return _load_bundle_archive(model_dir, device)
    return _load_bundle_dir(model_dir, device)


def _load_bundle_archive(path: Path, device: str) -> tuple[Any, dict[str, Any]]:
    """:func:`load_bundle` of an archive holding one saved model, at its top or in one folder."""
    import tarfile
    import zipfile

    from .data.io import unpacked_archive
    from .errors import DataError

    label = f"the saved model archive '{path.name}'"
    try:
        with unpacked_archive(path, label) as dest:
            found = sorted(p.parent for p in dest.rglob("bundle.json"))
            if len(found) != 1:
                raise DataError(f"{label} holds {'no' if not found else len(found)} saved model"
                                f"{'s' if len(found) > 1 else ''} (a folder with bundle.json): give the archive of one "
                                "model, as the app's \"Model bundle (.zip)\" download is")
            try:
                return _load_bundle_dir(found[0], device)
            except DataError as err:  # the archive by its own name, not the temporary folder's
                raise DataError(str(err).replace(str(found[0]), str(path))) from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, RecursionError) as err:
        # (RecursionError: tarfile reads a chain of extended headers by calling itself; 2,000 were an internal error)
        raise DataError(f"cannot unpack {label} ({type(err).__name__}); it may be damaged: download it again") from None


def _load_bundle_dir(model_dir: Path, device: str) -> tuple[Any, dict[str, Any]]:
    from ._constants import RunFiles
    from .errors import DataError, shown_name
    from .models import load_model
    from .models._base import read_model_json, refuse_links_out

    if not (model_dir / "bundle.json").exists() and (model_dir / RunFiles.MODEL_DIR / "bundle.json").is_file():
        model_dir = model_dir / RunFiles.MODEL_DIR  # a run's folder (what annotate and the app write): its model is inside
    if not (model_dir / "bundle.json").is_file():
        from .runs import read_json

        status = read_json(model_dir / RunFiles.STATUS, None)  # a run's folder without a model, or the runs folder
        if isinstance(status, dict) and isinstance(status.get("state"), str):  # (both said "no bundle.json", 2026-12-07)
            state = shown_name(status["state"], 20)
            was = {"failed": "failed", "cancelled": "was cancelled", "interrupted": "was interrupted"}.get(state,
                                                                                                  f"is {state}")
            raise DataError(f"{model_dir} is a run that {was}, with no saved model: pass a finished run's folder")
        from itertools import islice

        if model_dir.is_dir() and any((d / RunFiles.STATUS).is_file() for d in islice(model_dir.iterdir(), 1000)
                                      if d.is_dir()):
            raise DataError(f"{model_dir} is a folder of runs: pass one finished run's folder in it")
        raise DataError(f"{model_dir} has no bundle.json; pass a directory written by `train` or --save-model")
    refuse_links_out(model_dir, [model_dir / "bundle.json"])
    bundle = read_model_json(model_dir / "bundle.json", model_dir)
    if not isinstance(bundle, dict) or "genes" not in bundle:
        raise DataError(f"the saved model in {model_dir} is damaged (its bundle.json is not one cellannot wrote); "
                        "train it again")
    model = load_model(model_dir, device=device)
    genes = bundle["genes"]
    if not isinstance(genes, list) or len(genes) != model.n_features or not all(isinstance(g, str) for g in genes):
        raise DataError(f"the saved model in {model_dir} is damaged (bundle.json's genes do not match the model's "
                        f"{model.n_features} inputs); train it again")
    problem = _bundle_problem(bundle)
    if problem:
        raise DataError(f"the saved model in {model_dir} is damaged (bundle.json's {problem}); train it again")
    return model, bundle


def _bundle_problem(bundle: dict[str, Any]) -> str | None:
    """What is wrong with ``bundle.json``'s fields besides the genes (:func:`bundle_info`), or None."""
    from .models._base import MAX_FEATURES

    def names(v: Any) -> bool:  # (30 million norm_genes, 114 MB, took 2 GB and 25 s: found 2026-12-07)
        return isinstance(v, list) and 0 < len(v) <= MAX_FEATURES and all(isinstance(g, str) for g in v)

    if bundle.get("norm_genes") is not None and not names(bundle["norm_genes"]):
        return "norm_genes is not a list of gene names"
    for key, of in (("gene_symbols", "genes"), ("norm_gene_symbols", "norm_genes")):
        if bundle.get(key) is not None and not (names(bundle[key]) and len(bundle[key]) == len(bundle.get(of) or ())):
            return f"{key} is not a list of one name per gene of {of}"
    n = bundle.get("min_shared_genes")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        return "min_shared_genes is not a whole number of at least 0"
    for key in ("label_key", "batch_key", "model", "preprocessing"):
        if bundle.get(key) is not None and not isinstance(bundle[key], str):
            return f"{key} is not a name"
    if bundle.get("classes") is not None and not names(bundle["classes"]):
        return "classes is not a list of names"
    return None


def view_arrays(model, prepared: Prepared, preds: Predictions, opts: AnnotateOptions,
                log: Callable[[str], None] = lambda s: None) -> dict[str, np.ndarray]:
    """Arrays behind the app's views: validation logits/scores, latents, generated cells."""
    from .novelty import OOD_METHODS

    val_logits = model.logits(prepared.val.X)
    val_scores = model.validation_scores(prepared.val.X, OOD_METHODS, logits=val_logits)
    rng = np.random.default_rng(opts.seed)
    n_ref = prepared.train.n_obs
    keep = np.sort(rng.choice(n_ref, min(n_ref, REF_LATENT_KEEP), replace=False))
    arrays: dict[str, np.ndarray] = {
        "val_logits": val_logits.astype(np.float32), "val_y": prepared.val.y.astype(np.int64),
        "ref_latent": model.latent(prepared.train.X[keep]).astype(np.float32),
        "ref_y": prepared.train.y[keep].astype(np.int64),
    }
    from .evidence import class_means

    K = len(model.classes)
    arrays["ref_class_mean"] = class_means(prepared.train.X, prepared.train.y, K)  # "why this label" (evidence.py)
    for k, v in val_scores.items():
        arrays[f"val_score_{k}"] = v.astype(np.float32)
    arrays |= query_view_arrays(model, prepared.query.X, preds)
    if opts.n_generate > 0 and model.spec.supports.samples:
        log(f"generating {opts.n_generate} cells per class")
        xs, ys = model.sample(opts.n_generate)
        arrays["gen_latent"] = model.latent(xs).astype(np.float32)
        arrays["gen_y"] = ys.astype(np.int64)
        arrays["gen_X"] = xs.astype(np.float16)
    return arrays


def query_view_arrays(model, X: Any, preds: Predictions) -> dict[str, np.ndarray]:
    """The query's arrays behind the app's views (:func:`view_arrays`): logits, latent codes, novelty
    scores, Unknown groups and the class means of ``X`` (the model's input; for a query read in
    chunks, its sample's) by raw label."""
    from .evidence import class_means

    arrays = {"query_logits": preds.logits.astype(np.float32), "query_latent": preds.latent.astype(np.float32)}
    if study_shift_of(model):  # the query as knn_class measured it (the study shift its types share removed)
        measured = model.reference.measured_latent(len(preds.latent))
        if measured is not None:
            arrays["query_latent_measured"] = np.asarray(measured, dtype=np.float32)
    raw = preds.label_raw
    if len(raw) != X.shape[0]:  # a query read in chunks: the class means of its sample
        raw = np.asarray(model.classes, dtype=object)[model.logits(X).argmax(1)]
    raw_idx = pd.Categorical(raw, categories=list(model.classes)).codes
    arrays["query_raw_mean"] = class_means(X, raw_idx, len(model.classes))
    for k, v in preds.scores.items():
        arrays[f"query_score_{k}"] = v.astype(np.float32)
    if preds.unknown_group is not None:
        arrays["query_unknown_group"] = preds.unknown_group
    return arrays


@dataclass
class AnnotateResult:
    """What :func:`annotate` made; ``adata`` (the annotated copy of the query) is built on first use."""

    model: Any
    prepared: Prepared
    predictions: Predictions
    card: dict[str, Any]
    query: Any
    _adata: Any = field(default=None, repr=False)

    @property
    def adata(self):
        if self._adata is None:
            self._adata = annotated_query(self.query, self.prepared, self.predictions, self.card)
        return self._adata


def annotate(reference, query, opts: AnnotateOptions, *, out: str | Path | None = None, run_dir=None,
             save_model: str | Path | None = None, callbacks: Sequence[Any] = (),
             log: Callable[[str], None] = lambda s: None) -> AnnotateResult:
    """Read, prepare, train, calibrate, predict and write (the whole annotate contract).

    ``run_dir`` (a :class:`~cellannot_core.runs.RunDir`) receives every artifact and live status.
    A query with its counts taken from a layer (:func:`~.data.values.counts_layer`) is annotated as the user
    gave it (:func:`~.data.values.as_given`), its ``X``, layers and embeddings as they were (``annotate --layer``
    wrote the layer as ``X`` and dropped the others until 2026-12-07).
    """
    from .data import read_dataset
    from .data.values import as_given
    from .errors import Cancelled
    from .training.callbacks import any_stop

    def checkpoint(step: str) -> None:
        if any_stop(callbacks):
            raise Cancelled(f"cancelled before {step}")
        log(step)
        if run_dir is not None:  # progress shows from the first second, not only once training starts
            run_dir.set_status("running", model=opts.model, message=step)

    try:
        checkpoint("reading data")
        ref = reference if not isinstance(reference, (str, Path)) else read_dataset(reference, name="reference")
        qry = query if not isinstance(query, (str, Path)) else read_dataset(query, name="query")
        from .data.stream import stream_source

        for name, data in (("reference", ref), ("query", qry)):
            log_read_notes(name, data, log)

        source = stream_source(qry)  # a sample of a query too large to hold: every cell is labelled in chunks
        if source is not None:
            _check_streamable(opts, source)
        if out is not None or run_dir is not None:
            check_h5ad_writable(as_given(qry), "query")  # before training, not after it
        checkpoint("preparing data")
        prepared = prepare_data(ref, qry, opts)
        log_warnings(prepared.report, log)
        if run_dir is not None:
            run_dir.set_status("running", model=opts.model, message="training", progress=0.0)
        t0 = time.time()
        model = train_model(prepared, opts, callbacks)
        train_seconds = time.time() - t0
        hist = model.history or {}
        for note in sampled_query_of(hist, prepared).values():
            log(f"note: {note}")
        if hist.get("diverged"):
            log(f"warning: {opts.model} diverged ({hist.get('divergence_message')}); results use the last good "
                f"checkpoint")
        if source is None:
            checkpoint("labelling the query")
            q_obs = _kept_obs(qry, prepared)
            samples = query_samples(q_obs, batch_key=opts.batch_key, exclude=(opts.label_key, opts.query_label_key))
            from .evidence import class_means

            preds, groups = label_query(model, prepared.query.X, genes=gene_labels(prepared), threshold=opts.threshold,
                                        ref_mean=class_means(prepared.train.X, prepared.train.y,
                                                             len(model.classes)), samples=samples)
            view_prep, all_prep = prepared, prepared
        else:
            checkpoint(f"labelling the query's {source['n_obs']:,} cells in chunks")
            preds, all_prep, q_obs, samples, groups = _label_whole_file(model, prepared, opts, source, run_dir, log)
            view_prep = prepared
        qm = query_metrics(all_prep, preds, model.classes)
        card = run_card(model, all_prep, opts, preds, train_seconds=train_seconds, query_metrics=qm, samples=samples)
        if qm:
            log(metrics_line(qm))
        card["unknown_groups"] = groups
        if card["rejection"].get("scores_note"):
            log(f"note: {card['rejection']['scores_note']}")
        log_unknown_groups(groups, log)
        log_class_notes(card, log)
        by_shift = card["rejection"].get("sample_shifts")
        if by_shift:
            log(f"each query {by_shift['column']!r} sample measured against its own shift (the whole query's "
                f"{by_shift['query_shift']:.2f}): " + ", ".join(f"{k} {v:.2f}" for k, v in by_shift["factors"].items())
                + (f"; {by_shift['kept_note']}" if by_shift.get("kept_note") else ""))
            if by_shift.get("at_bound_note"):
                log(f"warning: {by_shift['at_bound_note']}")
        by_sample = unknown_by_sample(q_obs, preds.is_unknown, opts)
        if by_sample is not None:
            card["unknown_by_sample"] = by_sample
            log(f"note: {by_sample['note']}")
        if source is not None:
            card["query_read_in_chunks"] = {k: v for k, v in source.items() if k != "path"} | {
                "note": f"the pair checks used a seeded sample of {source['n_sample']:,} of the query's "
                        f"{source['n_obs']:,} cells"
                        + (f", the training {hist['n_unlabelled']:,} of them" if hist.get("unlabelled_used") else "")
                        + f"; every cell was labelled, {CHUNK_NOTE}"}
            import anndata as ad

            res = AnnotateResult(model, prepared, preds, card, qry,
                                 _adata=ad.AnnData(obs=q_obs, var=pd.DataFrame(index=pd.Index(prepared.genes))))
            write_annotations(res._adata, preds, card)
        else:
            res = AnnotateResult(model, prepared, preds, card, as_given(qry))
        checkpoint("writing results")
        if save_model is not None:
            save_bundle(Path(save_model), model, bundle_info(model, prepared, opts))
        if run_dir is not None:
            from .runs import write_json_atomic

            save_bundle(run_dir.model_dir, model, bundle_info(model, prepared, opts))
            run_dir.save_arrays(view_arrays(model, view_prep, preds, opts, log))
            write_h5ad_atomic(res.adata, run_dir.file(RunFiles.ANNOTATED))
            from .runs import csv_bytes, write_bytes_atomic

            write_bytes_atomic(run_dir.file(RunFiles.PREDICTIONS),
                               csv_bytes(predictions_table(all_prep.query.obs_names, preds, model.classes), index=False))
            write_json_atomic(run_dir.file(RunFiles.HISTORY), hist.get("epochs", []))
            write_json_atomic(run_dir.file(RunFiles.CARD), card)
        if out is not None:  # last: a pipeline that skips a job whose output exists took a failed one for done when
            if source is not None:  # the model could not be saved after it (found 2026-12-07); the whole file with
                from .streaming import write_annotations_file  # the annotations, its matrices copied, never read

                write_annotations_file(Path(source["path"]), Path(out), preds, card)
            else:
                write_h5ad_atomic(res.adata, Path(out))
        if run_dir is not None:
            run_dir.set_status("done", message="finished", progress=1.0)
        return res
    except CellannotError as err:
        if run_dir is not None:
            run_dir.set_status("cancelled" if isinstance(err, Cancelled) else "failed", message=str(err))
        raise
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM on the command line: marked now, not found later
        if run_dir is not None:  # by its process gone
            run_dir.set_status("cancelled", message="terminated (SIGTERM)" if isinstance(stop, Terminated)
                               else "interrupted (Ctrl-C)")
        raise
    except Exception as err:
        if run_dir is not None:
            run_dir.set_status("failed", message=failure_message(err))
        raise


CHUNK_NOTE = "reading its file a chunk of cells at a time (the annotated file of the run holds the annotations, not the matrices)"


def _check_streamable(opts: AnnotateOptions, source: dict[str, Any]) -> None:
    """A query held as a sample of its file: the model must label cells one by one and nothing may
    need the whole query in memory."""
    from .models import get_spec

    n = f"{source['n_obs']:,}"
    if not get_spec(opts.model).supports.per_cell:
        raise ConfigError(f"{opts.model} labels a query as a whole, and this query ({n} cells) is read a chunk at a "
                          "time: choose another model (the default labels any number of cells)")
    if opts.qc:
        raise ConfigError(f"the quality filters need the whole query in memory, and this query ({n} cells) is read a "
                          "chunk at a time: filter its cells before loading it, or turn the filters off")


def _label_whole_file(model, prepared: Prepared, opts: AnnotateOptions, source: dict[str, Any], run_dir,
                      log: Callable[[str], None]):
    """Every cell of the query file ``source['path']`` labelled in chunks
    (:func:`~.streaming.stream_predictions`); returns the predictions, ``prepared`` with its query
    replaced by all the file's cells (names and labels only: their expression is never held), the
    file's obs, its samples and its Unknown groups (:func:`unknown_groups_of`, one more pass)."""
    import dataclasses

    import scipy.sparse as sp

    from .data.stream import H5adRows
    from .streaming import stream_predictions

    def progress(msg: str) -> None:
        log(msg)
        if run_dir is not None:
            run_dir.set_status("running", model=opts.model, message=f"labelling the query: {msg}")

    with H5adRows(source["path"], name="query") as rows:
        obs = rows.obs.copy()
        obs.index = pd.Index(str_array(rows.obs_names), dtype=object)
        samples = query_samples(obs, batch_key=opts.batch_key, exclude=(opts.label_key, opts.query_label_key))
        preds, report = stream_predictions(model, bundle_info(model, prepared, opts), rows, threshold=opts.threshold,
                                           log=progress, samples=samples)
    labels = None
    if opts.query_label_key:  # (the sample's prepare warned of labels matched regardless of case)
        from .data.validate import query_labels

        labels = query_labels(obs, opts.query_label_key, model.classes)[0]
    n = len(obs)
    query = Split(X=sp.csr_matrix((n, prepared.n_genes), dtype=np.float32), counts=None, y=None,
                  obs_names=obs.index.to_numpy(dtype=object), labels=labels, index=np.arange(n, dtype=np.int64))
    return preds, dataclasses.replace(prepared, query=query), obs, samples, report.get("unknown_groups", [])


def predict_query(model, bundle: dict[str, Any], query, *, threshold: float | None = None,
                  query_label_key: str | None = None,
                  log: Callable[[str], None] = lambda s: None) -> tuple[Predictions, dict[str, Any]]:
    """Label a query with a trained model and its bundle info: genes matched by name and put in
    the model's order (missing genes are zero), the reference's normalisation. Returns the
    predictions and a run card; ``query_label_key``: a query column of known labels, the card's
    ``query_metrics`` measured against them (:func:`predicted_query_metrics`)."""
    return predict_query_input(model, bundle, query, threshold=threshold, query_label_key=query_label_key, log=log)[:2]


def predict_query_input(model, bundle: dict[str, Any], query, *, threshold: float | None = None,
                        query_label_key: str | None = None,
                        log: Callable[[str], None] = lambda s: None) -> tuple[Predictions, dict[str, Any], Any]:
    """:func:`predict_query`, and the model input it labelled (the query's cells on the model's genes)."""
    from .data import read_dataset

    qry = query if not isinstance(query, (str, Path)) else read_dataset(query, name="query")
    labels = own_labels(qry.obs, query_label_key, model, bundle, log)
    split, report = model_input(model, bundle, qry, log)
    samples = bundle_samples(bundle, qry.obs)
    preds, groups = label_query(model, split.X, genes=gene_labels(bundle), threshold=threshold, samples=samples)
    card = prediction_card(model, preds, report, samples, threshold) | {"unknown_groups": groups}
    log_unknown_groups(groups, log)
    log_class_notes(card, log)
    predicted_query_metrics(card, labels, preds, model, query_label_key, log)
    return preds, card, split.X


def model_input(model, bundle: dict[str, Any], qry, log: Callable[[str], None] = lambda s: None) -> tuple[Split, dict[str, Any]]:
    """A new query (AnnData) as a saved model's input: its genes matched by name and put in the
    model's order (missing genes are zero), the reference's normalisation; and the query report."""
    from .data import prepare_query

    split, report = prepare_query(qry, genes=bundle["genes"], norm_genes=bundle.get("norm_genes"), symbols=bundle,
                                  min_shared_genes=int(bundle.get("min_shared_genes", DEFAULT_MIN_SHARED_GENES)), with_counts=False)
    log(report.get("message", ""))
    log_warnings(report, log)
    return split, report


def own_labels(obs: pd.DataFrame, key: str | None, model, bundle: dict[str, Any],
               log: Callable[[str], None]) -> np.ndarray | None:
    """A query's known labels for the metrics of a prediction (:func:`~.data.validate.query_labels`;
    None without ``key``), read before any labelling so a wrong column costs nothing; the model's
    batch key names samples, not types, and is refused as such a column."""
    if not key:
        return None
    from .data.validate import query_labels

    if key == bundle.get("batch_key"):
        raise ConfigError(f"{key!r} is the model's batch key, a column naming each cell's sample, not its cell type")
    labels, _, _, warns = query_labels(obs, key, model.classes)
    log_warnings({"warnings": warns}, log)
    return labels


def predicted_query_metrics(card: dict[str, Any], labels: np.ndarray | None, preds: Predictions, model,
                            key: str | None, log: Callable[[str], None]) -> None:
    """The DESIGN.md metrics of a query labelled with a saved model against its own labels, into
    the card (``query_metrics``, and ``options.query_label_key`` as a run's card has it) and the log."""
    if labels is None:
        return
    card["query_metrics"] = metrics_of_labels(labels, preds, model.classes)
    card.setdefault("options", {})["query_label_key"] = key
    log(metrics_line(card["query_metrics"]))


def metrics_line(qm: dict[str, Any]) -> str:
    """One line of a run's main query metrics, for the log, with what the first three measure (the label
    before the Unknown call, DESIGN.md's definition; a reader took acc_in for the labels as called)."""
    keys = ("acc_in", "f1_in", "ece_in", "auroc_ood", "acc_open", "reject_in", "reject_novel")
    import math

    def shown(v: float) -> str:  # (a query without novel cells has no AUROC: "n/a", not "nan")
        return "n/a" if math.isnan(v) else f"{v:.3f}"

    return ("query metrics: " + "  ".join(f"{k} {shown(float(qm[k]))}" for k in keys
                                          if isinstance(qm.get(k), (int, float)))
            + " (acc_in, f1_in, ece_in: the known types' labels before the Unknown call; acc_open and reject_in "
              "with it)")


def bundle_samples(bundle: dict[str, Any], obs: pd.DataFrame) -> QuerySamples | None:
    """:func:`query_samples` of a new query labelled with a saved model (its batch key, if any)."""
    return query_samples(obs, batch_key=bundle.get("batch_key"), exclude=(bundle.get("label_key"),))


def prediction_card(model, preds: Predictions, report: dict[str, Any],
                    samples: QuerySamples | None = None, threshold: float | None = None) -> dict[str, Any]:
    """The run card of a query labelled with a saved model (``threshold``: the one given by hand)."""
    return {"model": model.name, "hparams": model.hparams, "classes": list(model.classes),
            "temperature": model.temperature, "rejection": {"method": model.ood_method, "threshold": preds.threshold,
                                                             "validation_threshold": model.threshold,
                                                             "shift_factor": preds.shift_factor,
                                                             "threshold_overridden": threshold is not None,
                                                             **study_shift_of(model, samples), **shift_note(preds),
                                                             "query_far_factor": round(query_far_factor(model, preds), 4), **far_query_note(model, preds),
                                                             **threshold_note(model, threshold, preds),
                                                             **marker_note(preds),
                                                             **({"genes_note": report["genes_note"]}
                                                                if report.get("genes_note") else {})},
            "query_report": report, **provenance(model),
            **({"unseen_query": note} if (note := unseen_query_note(model)) else {}),
            **class_notes(model, preds),
            "unknown_fraction": float(np.mean(preds.is_unknown)) if len(preds.is_unknown) else 0.0}


def unseen_query_note(model) -> str | None:
    """What ``predict`` says when its model learns its latent space from the query's cells too (the
    semi-supervised models), since a query it was not trained with is labelled without that; None
    for the other models."""
    from .models import get_spec

    if not get_spec(model.name).supports.semi_supervised:
        return None
    return (f"{model.name} learns its latent space from the query's cells too: unless these are the cells it was "
            "trained with (train(adata_query=...), annotate), it calls fewer cells of types the reference lacks Unknown "
            "than annotate would (BENCHMARKS.md, 'A query the model was not trained with'); adapt=True (cellannot predict "
            "--adapt) trains it again on its reference cells with this query")


def bundle_reference(model, bundle: dict[str, Any]):
    """The reference cells a saved model kept (its training cells, at most 10,000: those of the
    novelty index) as an AnnData of raw counts on the model's genes with their labels, to train
    the model again with a new query (``adapt``)."""
    import anndata as ad
    import scipy.sparse as sp

    ref = getattr(model, "reference", None)
    counts = None if ref is None else ref.reference_counts()
    if counts is None:
        raise ConfigError(f"this saved {model.name} model keeps no reference counts (saved before 2026-12-05, trained "
                          "on log-normalised data, or a model without a latent space), so it cannot be trained again "
                          "with a new query: label without adapt, or run annotate with the reference")
    classes = list(model.classes)
    obs = pd.DataFrame({bundle["label_key"]: pd.Categorical([classes[i] for i in ref.y], categories=classes)},
                       index=[f"reference_cell_{i}" for i in range(len(ref.y))])
    var = pd.DataFrame(index=pd.Index(bundle["genes"], dtype=str))
    if bundle.get("gene_symbols"):  # (Ensembl IDs: a run trained again tells its genes by their symbols too)
        var["gene_symbols"] = [str(g) for g in bundle["gene_symbols"]]
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)


def annotate_adapted(model, bundle: dict[str, Any], query, *, threshold: float | None = None, device: str = "auto",
                     out: str | Path | None = None, query_label_key: str | None = None,
                     log: Callable[[str], None] = lambda s: None, callbacks: Sequence[Any] = ()) -> AnnotateResult:
    """``predict`` with ``adapt``: the saved model trained again, as :func:`annotate` trains it, on
    its kept reference cells (:func:`bundle_reference`) with ``query`` (an AnnData, or a path read
    as the app reads it, a large ``.h5ad`` as a sample of its cells, every cell labelled a chunk at a
    time): its model, hyper-parameters,
    seed and batch key, every one of its genes the query has. The query's own types then shape
    the latent space, which a model trained without them cannot give them. The model's batch key
    counts where the query has that column (the kept reference cells carry no batches).
    ``query_label_key``: the query's own labels, for the metrics (as :func:`annotate`'s)."""
    from .data.stream import read_query
    from .models import get_spec

    query = query if not isinstance(query, (str, Path)) else read_query(query)
    batch_key = bundle.get("batch_key")
    if batch_key and batch_key not in query.obs:
        log(f"the model's batch key {batch_key!r} is not a column of the query: its cells are one batch")
        batch_key = None
    spec = get_spec(model.name)
    hparams = {k: v for k, v in model.hparams.items() if k in spec.hparams and not spec.hparams[k].internal}
    reference = bundle_reference(model, bundle)
    # every class the model has stays: the run that trained it kept only classes of enough cells, of which the
    # model keeps its training cells (found 2026-12-07: a class of 10 reference cells, 8 kept, was dropped)
    smallest = int(reference.obs[bundle["label_key"]].value_counts().min())
    opts = AnnotateOptions(label_key=bundle["label_key"], model=model.name, hparams=hparams,
                           seed=int(model.seed), device=device, n_top_genes=len(bundle["genes"]), threshold=threshold,
                           batch_key=batch_key, query_label_key=query_label_key,
                           min_shared_genes=int(bundle.get("min_shared_genes", AnnotateOptions.min_shared_genes)),
                           min_cells_per_class=max(2, min(AnnotateOptions.min_cells_per_class, smallest)))
    log(f"adapt: training {model.name} again on the {reference.n_obs:,} reference cells the model kept, with the query")
    return annotate(reference, query, opts, out=out, log=log, callbacks=callbacks)


def predict_with_bundle(model_dir: str | Path, query, *, out: str | Path | None = None, device: str = "auto",
                        threshold: float | None = None, adapt: bool = False, log: Callable[[str], None] = lambda s: None):
    """Label a new query with a saved bundle (model + genes); returns the annotated AnnData.
    ``adapt``: train the model again on its kept reference cells with this query first
    (:func:`bundle_reference`; as ``annotate`` trains, so the query's own types shape the latent space)."""
    from .data import read_dataset

    model, bundle = load_bundle(model_dir, device=device)
    qry = query if not isinstance(query, (str, Path)) else read_dataset(query, name="query")
    log_read_notes("query", qry, log)
    if adapt:
        return annotate_adapted(model, bundle, qry, threshold=threshold, device=device, out=out, log=log).adata
    preds, card = predict_query(model, bundle, qry, threshold=threshold, log=log)
    card["model_dir"] = str(model_dir)
    adata = qry.copy()
    write_annotations(adata, preds, card)
    if out is not None:
        write_h5ad_atomic(adata, Path(out))
    return adata
