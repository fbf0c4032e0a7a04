"""The Python API, in scanpy's conventions: AnnData first, keyword-only options, results written
into documented keys of the query (or into a copy with ``copy=True``).

>>> import anndata as ad, cellannot_core as ca
>>> ref = ad.read_h5ad("assets/kang_pbmc_example_sce_1556.h5ad")
>>> query = ad.read_h5ad("assets/pbmc3k_seurat_2638.h5ad")
>>> ca.annotate(ref, query, label_key="cell_type_harmonized", model="logreg")  # doctest: +SKIP
>>> query.obs["cellannot_label"].value_counts()  # doctest: +SKIP

Keys written (``key_added="cellannot"``; see :func:`cellannot_core.pipeline.annotation_keys`):

======================================  ==============================================================
``obs["{key}_label"]``                   the label, or ``"Unknown"`` for cells of types the reference
                                         lacks
``obs["{key}_label_raw"]``               the most probable reference type, before rejection
``obs["{key}_confidence"]``              calibrated probability of the raw label (Unknown cells too)
``obs["{key}_ood_score"]``               novelty score (higher: further from the reference)
``obs["{key}_is_unknown"]``              the score is above the threshold
``obs["{key}_unknown_group"]``           the cell's Unknown group (its position in
                                         ``uns[key]["unknown_groups"]``), -1 for the others: e.g.
                                         accept groups 0 and 2 as their types with
                                         ``ca.accept_groups(query, [0, 2])``
``obsm["{key}_proba"]``                  calibrated probabilities, one column per reference type
                                         (order: ``uns[key]["classes"]``)
``obsm["X_{key}"]``                      the model's latent space (or its input, for models without one)
``uns[key]``                             the run card: model, settings, threshold, versions, metrics;
                                         ``["rejection"]["sample_shifts"]`` when each query sample was
                                         measured against its own shift (``knn_class``: the column
                                         and each sample's factor);
                                         ``["unknown_by_sample"]`` when Unknown calls differ by query
                                         sample and no ``batch_key`` was given (its ``"note"`` says
                                         which column to try as the batch key);
                                         ``["unknown_groups"]``: each group of Unknown cells, the type
                                         it looks most like and its genes up / down against that
                                         type's accepted cells (a state or a new type?); with query
                                         samples, ``absent_from`` and, when a known type's cells are
                                         missing where the group is, ``short_class`` (a hint: accept
                                         group j as it with ``ca.accept_groups(query, [], as_short=[j])``);
                                         a "/" in a key (a type named "T/NK") is written "\u2215",
                                         the division slash: an ``.h5ad`` key cannot hold "/"
======================================  ==============================================================
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from ._constants import DEFAULT_HVG_FLAVOR, DEFAULT_MIN_SHARED_GENES, DEFAULT_MODEL, DEFAULT_N_TOP_GENES, OutKeys
from .data.values import counts_layer, counts_layers

__all__ = ["annotate", "train", "accept_groups", "Annotator", "models"]


_LOGGER = logging.getLogger("cellannot")
#: scvi-tools' and scanpy's names for this API's keywords (``setup_anndata(labels_key=...)``, ``ingest(obs=...)``)
_ALIASES = {"labels_key": "label_key", "cell_type_key": "label_key", "celltype_key": "label_key",
            "batch": "batch_key", "layer_key": "layer", "n_epochs": "max_epochs", "random_state": "seed",
            "use_gpu": "device", "accelerator": "device"}


def _keywords(f):
    """``f`` saying which keyword was meant when given one it does not take (an scvi-tools user types
    ``labels_key``; Python 3.11 said only "unexpected keyword argument"): still a TypeError."""
    import difflib
    import functools
    import inspect

    sig = inspect.signature(f)

    @functools.wraps(f)
    def wrapper(*args, **kw):
        odd = [k for k in kw if k not in sig.parameters]
        if odd and not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            names = [p for p in sig.parameters if p not in ("self", "cls")]
            meant = _ALIASES.get(odd[0]) or next(iter(difflib.get_close_matches(odd[0], names, n=1)), None)
            raise TypeError(f"{f.__qualname__}() got an unexpected keyword argument {odd[0]!r}"
                            + (f": did you mean {meant!r}?" if meant in names else
                               f"; it takes {', '.join(names)}"))
        return f(*args, **kw)

    return wrapper


def _default_log(line: str) -> None:
    """Without ``log=``: a run's warnings and notes (labels left out, counts recovered, classes
    accepted against their own shift...) reach the user as Python's logging shows a warning, on
    stderr unless configured; its steps are INFO (``logging.basicConfig(level=logging.INFO)``
    shows them, ``logging.getLogger("cellannot").setLevel(logging.ERROR)`` silences all)."""
    if line.startswith(("warning:", "note:")):
        _LOGGER.warning(line)
    else:
        _LOGGER.info(line)


def _log_fn(log: Any) -> Callable[[str], None]:
    """What ``log=`` was given as a function of one line: None, the ``"cellannot"`` logger (:func:`_default_log`);
    a :class:`logging.Logger`, that logger as the default uses its own; any callable (``print``) as it is. Anything
    else is refused before any work (a Logger given was a TypeError from inside the run, found 2026-12-07)."""
    from .errors import ConfigError

    if log is None:
        return _default_log
    if isinstance(log, logging.Logger):
        return lambda line: (log.warning if line.startswith(("warning:", "note:")) else log.info)(line)
    if not callable(log):
        raise ConfigError(f"log must be a function called with each line (e.g. print) or a logging.Logger, "
                          f"not {type(log).__name__}")
    return log


def _progress(show: bool) -> list[Any]:
    """The training callbacks of ``progress_bar=``."""
    from .training import ProgressBar

    return [ProgressBar()] if show else []


def _check_key_added(key_added: Any) -> None:
    """``key_added`` names obs columns, an obsm key and a group of the ``.h5ad`` (``uns[key_added]``):
    refused before any work when it is not a plain name (empty, or with "/", which HDF5 reads as
    a sub-group and anndata will refuse on writing)."""
    from .errors import ConfigError

    if not isinstance(key_added, str):
        raise ConfigError(f"key_added is a name (a string) such as 'cellannot'; got a {type(key_added).__name__}.")
    if not key_added.strip() or "/" in key_added:
        raise ConfigError(f"key_added must be a plain name such as 'cellannot' (not empty, no '/'); got "
                          f"{str(key_added)[:40]!r}.")


_FILE_HINT = " A file too large to read is labelled with Annotator.predict_file(path, out=...)."


def _check_adata(adata: Any, what: str, *, hint: str = "") -> None:
    """The API writes into AnnData objects: anything else (a path, a matrix) is one clear error
    before any work."""
    import anndata as ad

    from .errors import DataError

    if not isinstance(adata, ad.AnnData):
        if hasattr(adata, "mod") and isinstance(getattr(adata, "mod", None), dict):  # a MuData (muon, scvi-tools)
            names = ", ".join(map(repr, adata.mod)) or "none"
            raise DataError(f"{what} is a MuData object: pass its RNA modality, e.g. mdata['rna'] (its modalities: "
                            f"{names})")
        raise DataError(f"{what} must be an AnnData object, not {type(adata).__name__}: read it with "
                        f"anndata.read_h5ad (or scanpy's readers) first.{hint}")


def _note_view(adata: Any, copy: bool, log: Callable[[str], None]) -> None:
    """Say, before any work, that labels written into a view (``full[mask]``) stay in it: anndata
    makes the view its own copy, and the AnnData it was cut from gets none of them."""
    if not copy and getattr(adata, "is_view", False):
        log("warning: the query is a view of another AnnData (as adata[mask] gives): the labels go into the view, "
            "which anndata makes its own copy, not into the AnnData it was cut from. Keep that object, or copy "
            "the columns back: full.obs.loc[query.obs_names, 'cellannot_label'] = query.obs['cellannot_label']")


def _options(label_key: str, model: str | None, **kw: Any):
    from .pipeline import AnnotateOptions

    hp = kw.pop("hparams", None)
    hp = {} if hp is None else dict(hp) if isinstance(hp, dict) else hp  # anything else: AnnotateOptions says so
    return AnnotateOptions(label_key=label_key, model=model or DEFAULT_MODEL, hparams=hp, **kw)


@_keywords
def annotate(
    adata_ref,
    adata_query,
    *,
    label_key: str,
    model: str | None = None,
    key_added: str = OutKeys.UNS,
    copy: bool = False,
    query_label_key: str | None = None,
    batch_key: str | None = None,
    hparams: dict[str, Any] | None = None,
    seed: int = 0,
    device: str = "auto",
    max_epochs: int | None = None,
    n_top_genes: int = DEFAULT_N_TOP_GENES,
    hvg_flavor: str = DEFAULT_HVG_FLAVOR,
    accept: float = 0.95,
    threshold: float | None = None,
    min_cells_per_class: int = 10,
    min_shared_genes: int = DEFAULT_MIN_SHARED_GENES,
    layer: str | None = None,
    log: Callable[[str], None] | logging.Logger | None = None,
    progress_bar: bool = True,
):
    """Train ``model`` on a labelled reference and label every cell of the query.

    The models that learn from the query's cells too (the default, ``scanvi``, the VAE family) train
    with all of them, or with a seeded sample as large as the reference's training cells when the
    query is larger, so a million-cell query does not outweigh the reference (every cell is
    labelled; the log and ``uns[key_added]["training"]`` say so). Every novelty score is stored for
    queries of up to 50,000 cells, the model's own above.

    Parameters
    ----------
    adata_ref
        Labelled reference (cells x genes; raw counts in ``X``, ``layers["counts"]`` or ``raw``).
    adata_query
        Cells to label; genes are matched to the reference's by name.
    label_key
        ``adata_ref.obs`` column holding the cell types.
    model
        A name from :func:`models`; ``None``: the recommended model (``scanvi_svm``).
    key_added
        Prefix of the keys written (their table: ``help(cellannot_core.api)``).
    copy
        Return an annotated copy instead of writing into ``adata_query``.
    query_label_key
        Optional ``adata_query.obs`` column with known labels: only used for the metrics in
        ``uns[key_added]["query_metrics"]``.
    batch_key
        Optional ``obs`` column (of the reference, the query or both) naming each cell's sample
        or batch, as in scvi-tools' ``setup_anndata``: the generative models' decoder (``scanvi``,
        the latent space of ``scanvi_svm``) is conditioned on each batch, so donors or conditions
        inside a dataset are not mistaken for new cell types. Other models ignore it. The
        Unknown rule ``knn_class`` measures each query sample against its own shift, by this
        column or, without one, by the first query column named like a sample / donor / batch.
    hparams
        Model hyper-parameters (see ``models()``), e.g. ``{"max_epochs": 50}``.
    seed, device
        Random seed; ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    max_epochs
        Caps the epochs of models that train in epochs (a quick run).
    n_top_genes
        Highly variable genes chosen on the reference.
    hvg_flavor
        How they are ranked: scanpy's ``"seurat_v3"`` (counts; the default) or ``"seurat"`` (log
        values, within mean bins). ``"seurat"`` ranks every gene alone in its mean bin (the most expressed of a tissue,
        e.g. pancreatic hormones) at one fixed place, so with few genes they may be left out.
    accept
        Share of reference validation cells the Unknown threshold accepts.
    threshold
        The Unknown threshold on the model's novelty score, given by hand (``--threshold``): it replaces
        the one ``accept`` and the query's shift make; ``float("inf")`` calls no cell Unknown.
    min_cells_per_class
        Reference types with fewer cells are left out (reported); at least 2.
    min_shared_genes
        Fewest genes the reference and the query must share (``--min-shared-genes``). The default,
        200, is eased to half the smaller gene count for a small gene panel; another value is required
        as given.
    layer
        The layer holding the raw counts (as scvi-tools' ``setup_anndata(layer=...)``), in the
        reference and the query; one of the two without that layer has its counts found as by
        default (said in the log). Default: found by itself in ``X``, ``layers["counts"]`` (or
        ``"raw_counts"``, ``"raw"``, ``"umi_counts"``) or ``raw``, or recovered from log-normalised
        values.
    log
        Called with one line per step (e.g. ``print``), or a :class:`logging.Logger` to log them to as the
        default does; default: the ``"cellannot"`` logger, which shows the run's warnings and notes and keeps
        its steps at INFO.
    progress_bar
        Show the training's progress (a tqdm bar: a widget in a notebook, stderr elsewhere).

    Returns
    -------
    ``None`` (keys written into ``adata_query``), or the annotated copy when ``copy=True``.
    """
    from .pipeline import annotate as run_annotate

    _check_key_added(key_added)
    _check_adata(adata_ref, "adata_ref")
    _check_adata(adata_query, "adata_query", hint=_FILE_HINT)
    _note_view(adata_query, copy, _log_fn(log))
    opts = _options(label_key, model, query_label_key=query_label_key, hparams=hparams, seed=seed, device=device,
                    max_epochs=max_epochs, n_top_genes=n_top_genes, accept=accept, batch_key=batch_key,
                    hvg_flavor=hvg_flavor, min_cells_per_class=min_cells_per_class, threshold=threshold,
                    min_shared_genes=min_shared_genes)
    ref, query = _readable(adata_ref, "reference"), _readable(adata_query, "query")
    ref, query_in = counts_layers(ref, query, layer, _log_fn(log))
    res = run_annotate(ref, query_in, opts, log=_log_fn(log), callbacks=_progress(progress_bar))
    return _write_result(res, adata_query, key_added=key_added, copy=copy, readable=query)


def _readable(adata, name: str):
    """``adata`` itself, or an in-memory AnnData of its data when it is backed, lazy
    (``anndata.experimental.read_lazy``) or holds dask arrays (read within the memory budget;
    :func:`cellannot_core.data.prepare.in_memory`). Results are still written into ``adata``."""
    from .data.prepare import in_memory

    return in_memory(adata, name=name)


def _target(adata, copy: bool, readable=None):
    """Where results go: ``adata`` itself, or with ``copy`` an in-memory copy (the one already read
    when ``adata`` was backed or lazy)."""
    if not copy:
        return adata
    return readable if readable is not None and readable is not adata else _copy(adata)


def _copy(adata):
    """An in-memory copy (anndata copies a backed object only into another file)."""
    return adata.to_memory() if getattr(adata, "isbacked", False) else adata.copy()


def _write_result(res, adata_query, *, key_added: str, copy: bool, readable=None):
    """The annotate contract's keys of a finished run written into the query (or an annotated copy)."""
    from .pipeline import write_annotations

    target = _target(adata_query, copy, readable)
    write_annotations(target, res.predictions, res.card, index=res.prepared.query.index, key_added=key_added)
    return target if copy else None


class Annotator:
    """A trained model with what a new query needs (its genes and their normalisation).

    Made by :func:`train` or :meth:`load`; :meth:`predict` labels any query whose genes overlap
    the reference's (matched by name and put in the model's order, as scvi-tools'
    ``prepare_query_anndata`` does; missing genes count as zero).
    """

    def __init__(self, model: Any, bundle: dict[str, Any]) -> None:
        self.model = model
        self.bundle = bundle
        self._source: Path | None = None  # the folder it was loaded from (:meth:`load`)

    @property
    def classes(self) -> list[str]:
        return list(self.model.classes)

    @property
    def genes(self) -> list[str]:
        return list(self.bundle["genes"])

    def __repr__(self) -> str:
        return (f"Annotator(model={self.model.name!r}, {len(self.classes)} classes, {len(self.genes)} genes, "
                f"label_key={self.bundle.get('label_key')!r})")

    @_keywords
    def predict(self, adata, *, key_added: str = OutKeys.UNS, copy: bool = False, threshold: float | None = None,
                adapt: bool = False, query_label_key: str | None = None, layer: str | None = None,
                log: Callable[[str], None] | logging.Logger | None = None, progress_bar: bool = True):
        """Label the cells of ``adata`` (the obs and obsm keys as :func:`annotate`; ``uns[key_added]`` holds the
        prediction's card: no ``data_report``, ``options`` or ``training``, which were the training run's and
        are in the bundle, but its ``query_report`` of the query's genes and values).

        A query labelled alone is measured against its own shift from the reference only when it holds
        three or more predicted types with 20 cells each: a few cells, or one sorted population, are measured
        against the reference as it is, and more of them may be Unknown than when they are labelled within a
        whole sample (the card's ``rejection.query_shift_not_estimated`` says so).

        Parameters
        ----------
        adata
            Cells x genes, raw counts or normalised values as the reference had.
        key_added, copy
            As in :func:`annotate`.
        threshold
            Override the novelty-score threshold (default: the model's, with its shift correction).
        adapt
            Train the model again on the reference cells it kept (at most 10,000) with these cells
            unlabelled, as :func:`annotate` trains it, before labelling them (minutes, like
            ``annotate``). For the models that learn their latent space from the query too
            (``scanvi_svm``, ``scanvi``, the VAE family): without it a type the reference lacks is
            called Unknown less often (BENCHMARKS.md, "A query the model was not trained with"); the
            labels then come from a model of this query, not the saved one.
        query_label_key
            Optional ``adata.obs`` column with known labels: the labels are measured against them
            (``uns[key_added]["query_metrics"]``, as :func:`annotate`'s; logged too).
        layer
            The layer of ``adata`` holding the raw counts (as in :func:`annotate`).
        log
            Called with one line per step; default: the ``"cellannot"`` logger, as :func:`annotate`'s.
        progress_bar
            With ``adapt``: show the training's progress (as :func:`annotate`).

        Returns
        -------
        ``None``, or the annotated copy when ``copy=True``.
        """
        from .pipeline import annotate_adapted, predict_query, write_annotations

        _check_key_added(key_added)
        _check_adata(adata, "adata", hint=_FILE_HINT)
        _note_view(adata, copy, _log_fn(log))
        if adapt:
            readable = _readable(adata, "query")
            res = annotate_adapted(self.model, self.bundle, counts_layer(readable, layer, "query"),
                                   threshold=threshold,
                                   device=self.model.device_name, query_label_key=query_label_key,
                                   log=_log_fn(log), callbacks=_progress(progress_bar))
            return _write_result(res, adata, key_added=key_added, copy=copy, readable=readable)
        readable = _readable(adata, "query")
        preds, card = predict_query(self.model, self.bundle, counts_layer(readable, layer, "query"),
                                    threshold=threshold,
                                    query_label_key=query_label_key, log=_log_fn(log))
        target = _target(adata, copy, readable)
        write_annotations(target, preds, card, key_added=key_added)
        return target if copy else None

    @_keywords
    def predict_file(self, path: str | Path, *, out: str | Path, threshold: float | None = None,
                     adapt: bool = False, query_label_key: str | None = None, layer: str | None = None,
                     log: Callable[[str], None] | logging.Logger | None = None, progress_bar: bool = True) -> dict[str, Any]:
        """Label the ``.h5ad`` file at ``path`` without loading it (a block of cells at a time;
        any size, see :mod:`cellannot_core.streaming`) and write the annotated copy to ``out``
        (keys as :func:`annotate`). ``adapt``, ``query_label_key``, ``progress_bar``: as in
        :meth:`predict` (a large file trains on a seeded sample of its cells, as ``annotate``
        does); ``layer``: the layer of the file's raw counts (the file is then read whole). Returns ``{"n_obs", "unknown_fraction", "streamed"}``, and ``"query_metrics"``
        with ``query_label_key``."""
        from .errors import ConfigError
        from .streaming import label_file

        for what, v in (("path", path), ("out", out)):
            if not isinstance(v, (str, os.PathLike)):
                raise ConfigError(f"predict_file's {what} is the path of an .h5ad file, not a {type(v).__name__}"
                                  + (": label an AnnData in memory with .predict(adata)" if what == "path" else ""))
        path, out = Path(path).expanduser(), Path(out).expanduser()
        return label_file(self.model, self.bundle, path, out=out, threshold=threshold, adapt=adapt,
                          query_label_key=query_label_key, layer=layer, log=_log_fn(log),
                          callbacks=_progress(progress_bar), model_dir=self._source)

    def save(self, path: str | Path) -> Path:
        """Write the model (safetensors + JSON, no pickle) and its genes to the directory ``path``;
        the same bundle as ``cellannot train --save-model`` (``cellannot predict`` reads it)."""
        from .pipeline import save_bundle

        return save_bundle(Path(path), self.model, self.bundle)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto") -> "Annotator":
        """A bundle written by :meth:`save`, ``cellannot train`` or an app run's ``model`` folder, or
        the app's "Model bundle (.zip)" download as it is (unpacked safely, read into memory)."""
        from .pipeline import load_bundle

        annotator = cls(*load_bundle(path, device=device))
        annotator._source = Path(path).expanduser()
        return annotator


@_keywords
def train(
    adata_ref,
    *,
    label_key: str,
    model: str | None = None,
    adata_query=None,
    batch_key: str | None = None,
    hparams: dict[str, Any] | None = None,
    seed: int = 0,
    device: str = "auto",
    max_epochs: int | None = None,
    n_top_genes: int = DEFAULT_N_TOP_GENES,
    hvg_flavor: str = DEFAULT_HVG_FLAVOR,
    accept: float = 0.95,
    min_cells_per_class: int = 10,
    min_shared_genes: int = DEFAULT_MIN_SHARED_GENES,
    layer: str | None = None,
    log: Callable[[str], None] | logging.Logger | None = None,
    progress_bar: bool = True,
) -> Annotator:
    """Train a model on a labelled reference; label queries later with :meth:`Annotator.predict`.

    Parameters
    ----------
    adata_ref, label_key, model, batch_key, hparams, seed, device, max_epochs, n_top_genes, hvg_flavor, accept, min_cells_per_class, min_shared_genes, layer, log, progress_bar
        As in :func:`annotate` (a threshold by hand is :meth:`Annotator.predict`'s).
    adata_query
        Optional: genes are then restricted to those the query shares, and semi-supervised
        models (``scanvi``, ``scanvi_svm``, ``m2flow``) also learn from its cells. Without it
        the model uses all reference genes, and such a model calls a type the reference lacks
        Unknown less often in a query it never saw (:meth:`Annotator.predict`'s ``adapt``).

    Returns
    -------
    Annotator
    """
    from .pipeline import bundle_info, log_warnings, prepare_data, train_model

    _check_adata(adata_ref, "adata_ref")
    if adata_query is not None:
        _check_adata(adata_query, "adata_query")
    opts = _options(label_key, model, hparams=hparams, seed=seed, device=device, max_epochs=max_epochs,
                    n_top_genes=n_top_genes, accept=accept, batch_key=batch_key, hvg_flavor=hvg_flavor,
                    min_cells_per_class=min_cells_per_class, min_shared_genes=min_shared_genes)
    say = _log_fn(log)
    say("preparing data")
    if adata_query is not None:
        ref, query = counts_layers(_readable(adata_ref, "reference"), _readable(adata_query, "query"), layer, say)
    else:
        ref = query = counts_layer(_readable(adata_ref, "reference"), layer, "reference")
    prepared = prepare_data(ref, query, opts)
    log_warnings(prepared.report, say, query=adata_query is not None)
    say(f"training {opts.model}")
    fitted = train_model(prepared, opts, _progress(progress_bar))
    return Annotator(fitted, bundle_info(fitted, prepared, opts))


@_keywords
def accept_groups(adata, groups, *, as_short=(), key_added: str = "cellannot") -> None:
    """Accept Unknown groups of an annotated query as the known type each looks most like, in place.

    The run describes each group of Unknown cells in ``uns[key_added]["unknown_groups"]`` (its genes
    against the type it looks like, whether they are a known state program) and marks its cells in
    ``obs[f"{key_added}_unknown_group"]`` (the group's code, -1 for none). Where a group is a state
    of a known type (the biologist's call), its cells get their raw label back:

    >>> ca.accept_groups(query, [0, 2])  # doctest: +SKIP

    Parameters
    ----------
    adata
        A query annotated by :func:`annotate` or :meth:`Annotator.predict`.
    groups
        Codes of the groups whose cells take the type they look most like (``_label_raw``): a list, or one code.
    as_short
        Codes of groups whose cells take instead the type their samples point to (the entry's
        ``short_class``: a known type missing where the group is).
    key_added
        The annotation's key.

    ``obs[f"{key_added}_label"]`` (categories kept) and ``_is_unknown`` change for those cells only;
    ``uns[key_added]["decisions"]`` records the codes accepted, and the card's ``unknown_fraction``,
    ``predicted_counts`` and ``unknown_by_class`` count those cells as accepted. A group with more cells
    here than its run described (queries of two runs joined with ``ad.concat``) is refused.
    """
    import numpy as np

    from .errors import ConfigError
    from .evidence import accepted_labels
    from .pipeline import annotation_keys, move_counts

    _check_adata(adata, "adata")
    _note_view(adata, False, _default_log)  # (the AnnData it was cut from kept its Unknown calls, found 2026-12-07)
    keys = annotation_keys(key_added)
    missing = [keys[k] for k in ("LABEL", "LABEL_RAW", "IS_UNKNOWN", "UNKNOWN_GROUP") if keys[k] not in adata.obs]
    card = adata.uns.get(keys["UNS"])
    if missing or not isinstance(card, dict):
        raise ConfigError(f"adata holds no annotation under {key_added!r} (missing: "
                          f"{', '.join(missing) or 'uns[' + repr(key_added) + ']'}); run ca.annotate first")
    rows = card.get("unknown_groups")
    rows = rows if isinstance(rows, Mapping) else {}  # none: [] in memory, an empty array read back from an .h5ad
    groups, as_short = ([g] if isinstance(g, (str, int, np.integer)) else list(g) for g in (groups, as_short))
    odd = [j for j in groups + as_short if isinstance(j, bool) or not str(j).strip().lstrip("-").isdigit()]
    if odd:
        raise ConfigError(f"Unknown groups are named by their code in obs[{keys['UNKNOWN_GROUP']!r}] (a whole number), "
                          f"not {str(odd[0])[:80]!r}: the codes are the keys of uns[{key_added!r}]['unknown_groups']")
    codes = [int(j) for j in groups + as_short]
    bad = [j for j in codes if str(j) not in rows]
    if bad:
        raise ConfigError(f"no Unknown group {bad[0]} in uns[{key_added!r}]['unknown_groups'] (codes: "
                          f"{', '.join(sorted(rows, key=int)) or 'none'})")
    short = {int(j): rows[str(j)].get("short_class") for j in as_short}
    if any(v is None for v in short.values()):
        raise ConfigError("as_short names a group whose samples point to no known type (no 'short_class')")
    obs = adata.obs
    members = obs[keys["UNKNOWN_GROUP"]].to_numpy()
    for j in codes:  # (ad.concat of queries labelled by two runs merges their groups 0, 1, ... under one code)
        n_run, n_here = rows[str(j)].get("n_cells"), int((members == j).sum())
        if isinstance(n_run, (int, np.integer)) and n_here > n_run:
            raise ConfigError(f"Unknown group {j} holds {n_here} cells here and {int(n_run)} in the run that described "
                              "it: these cells come from more than one run (each run numbers its groups from 0), so "
                              "accept groups in each run's query before joining them")
    label = obs[keys["LABEL"]]
    before, was_unknown = label.astype(str).to_numpy(), obs[keys["IS_UNKNOWN"]].to_numpy().astype(bool)
    raw = obs[keys["LABEL_RAW"]].astype(str).to_numpy()
    new = accepted_labels(before, raw, members, [int(j) for j in groups], short)
    cats = list(label.cat.categories) if isinstance(label.dtype, pd.CategoricalDtype) else sorted(set(new))
    obs[keys["LABEL"]] = pd.Categorical(new, categories=cats + [c for c in dict.fromkeys(new) if c not in cats])
    changed = np.isin(members, codes)
    obs[keys["IS_UNKNOWN"]] = was_unknown & ~changed
    move_counts(card, before, new, raw)
    kept = dict(card.get("decisions") or {})
    kept["accepted"] = sorted(set(map(int, kept.get("accepted", []))) | {int(j) for j in groups})
    kept["as_short"] = sorted(set(map(int, kept.get("as_short", []))) | {int(j) for j in as_short})
    card["decisions"] = kept



def models() -> pd.DataFrame:
    """The registered models: name, what they support, whether they run here, description
    (the recommended one first)."""
    from .models import get_spec, model_names

    rows = []
    for name in model_names():
        spec = get_spec(name)
        sup = spec.supports
        rows.append({"model": name, "recommended": name == DEFAULT_MODEL, "latent": sup.latent,
                     "generates_cells": sup.samples, "explain": sup.explain, "needs_counts": sup.needs_counts,
                     "semi_supervised": sup.semi_supervised, "available": spec.unavailable_reason() is None,
                     "description": spec.description})
    return pd.DataFrame(rows)
