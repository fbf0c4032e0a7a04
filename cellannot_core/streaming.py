"""Labelling a query file too large for memory, a chunk of cells at a time (issue 15).

:func:`predict_file` reads an ``.h5ad`` query in row chunks (:class:`~.data.stream.H5adRows`),
normalises each chunk as :func:`~.data.prepare_query` does (the same functions), and keeps per
cell only what the decision needs: the model's per-cell logits (:meth:`Model.cell_logits`),
the latent codes and the novelty score. The query-level steps then run on those small arrays:
the label smoothing and the novelty rule use the query's neighbour graph in the latent space,
which for a large query searches a fixed pool of cells (:class:`~.novelty.QueryGraph`), so
time and memory grow linearly with the cells. The result is written into a copy of the input
file (obs columns, obsm, uns as :func:`~.pipeline.write_annotations` puts them), also without
reading the matrices. Peak memory: the model, one chunk (``chunk_cells`` x model genes dense
float32, 160 MB at 20,000 cells and 2,000 genes) and a few dozen numbers per cell.

Models whose labels of a cell depend on the other cells in a way that needs their expression
(``Supports.per_cell`` False: ``seurat``, ``ingest``), files that are not ``.h5ad`` or store
their counts by columns are read whole instead (:func:`~.pipeline.predict_with_bundle`), within
the memory limit, and the log says why.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ._constants import DEFAULT_MIN_SHARED_GENES
from .data.stream import CHUNK_CELLS, H5adRows, NotStreamable

__all__ = ["label_file", "predict_file", "stream_predictions", "write_annotations_file"]

#: cells of a query read in chunks on which its labels' markers are checked (:func:`~.pipeline.marker_agreement_of`)
MARKER_SAMPLE = 10_000


def stream_predictions(model, bundle: dict[str, Any], rows: H5adRows, *, threshold: float | None = None,
                       chunk_cells: int = CHUNK_CELLS, log: Callable[[str], None] = lambda s: None,
                       samples=None, on_genes: Callable[[str, list[str]], None] | None = None):
    """Predictions (:class:`~.pipeline.Predictions`, with only the model's own novelty score) and
    the query report for the cells of ``rows``, read ``chunk_cells`` at a time; ``samples``
    (:func:`~.pipeline.query_samples` of ``rows.obs``) as for :func:`~.pipeline.predict`."""
    from .data import lognormalize, match_genes
    from .data.prepare import check_model_genes, genes_note, model_genes, model_genes_found, mostly_empty
    from .data.validate import check_not_empty, check_values
    from .pipeline import decide, describe_unknown_groups, gene_labels, marker_agreement_of

    genes = [str(g) for g in bundle["genes"]]
    min_shared = int(bundle.get("min_shared_genes", DEFAULT_MIN_SHARED_GENES))
    check_not_empty(rows.n_obs, len(rows.var), name="query")
    gm = match_genes(model_genes(genes, bundle.get("gene_symbols")), rows.var, min_shared=min_shared, ref_name="model")
    missing = check_model_genes(gm.n_shared, len(genes))  # (refused here when most are missing)
    warns = list(missing)
    message = model_genes_found(gm, len(genes))
    if on_genes is not None:  # said now, before the passes over the chunks (after them until 2026-12-07: minutes
        on_genes(message, missing)  # late on a large query)
    total_cols = None
    if bundle.get("norm_genes") is not None:
        nm = match_genes(model_genes(bundle["norm_genes"], bundle.get("norm_gene_symbols")), rows.var,
                         min_shared=min_shared)
        total_cols = nm.query_idx
    own = model.model_scores()
    method = model.ood_method

    def model_input(counts):  # normalised as prepare_query does
        check_values(counts, name="query", state="counts")
        logx = lognormalize(counts, gm.query_idx, total_cols=total_cols)
        X = np.zeros((counts.shape[0], len(genes)), dtype=np.float32)
        X[:, gm.ref_idx] = logx.toarray()
        return X

    def chunks():  # (first row, the chunk's model input)
        for start, counts in rows.chunks(chunk_cells):
            yield start, counts, model_input(counts)

    logits, latent, chunk_scores, totals = [], [], [], []
    for start, counts, X in chunks():
        totals.append(np.asarray(counts.sum(axis=1)).ravel())
        cl, z = model.cell_logits(X), model.latent(X)
        logits.append(np.asarray(cl, dtype=np.float32))
        latent.append(np.asarray(z, dtype=np.float32))
        if method in own:  # a model's own score (e.g. elbo) is per cell and needs the expression
            chunk_scores.append(model.ood_scores(X, [method], logits=cl, latent=z)[method])
        log(f"read and encoded {start + counts.shape[0]:,} of {rows.n_obs:,} cells")
    warns.extend(mostly_empty(np.concatenate(totals) if totals else np.zeros(0), "query", len(rows.var)))  # as prepare_query
    logits_all = np.concatenate(logits) if logits else np.zeros((0, model.n_classes), dtype=np.float32)
    latent_all = np.concatenate(latent) if latent else np.zeros((0, 0), dtype=np.float32)
    del logits, latent
    query_logits = model.query_logits(logits_all, latent_all)
    if method in own:
        scores = {method: np.concatenate(chunk_scores)}
    else:
        shift, scored = _shared_shift(model, method, query_logits, latent_all, chunks, log), latent_all
        if shift is not None:  # the query's shared study shift, removed as knn_class does for a whole query
            from .novelty import latent_without_shift

            scored = np.concatenate([latent_without_shift(model, X, shift)
                                     for _, _, X in chunks()]) if len(latent_all) else latent_all
            log("encoded the query again without the study shift its types share")
        scores = model.ood_scores(None, [method], logits=query_logits, latent=scored,
                                  samples=None if samples is None else samples.codes)
        if shift is not None:
            model.reference.last_decision["study_shift"] = shift
    sample = np.sort(np.random.default_rng(0).choice(rows.n_obs, min(rows.n_obs, MARKER_SAMPLE), replace=False))
    sampled: dict[str, Any] = {}  # the labels' markers on a seeded sample (one more pass cost a third of the time)

    def markers(label_raw: np.ndarray) -> dict[str, Any] | None:
        if "X" not in sampled:
            sampled["X"] = model_input(rows.rows_at(sample))
        return marker_agreement_of(model, sampled["X"], label_raw[sample])

    preds = decide(model, query_logits, latent_all, scores, threshold=threshold, markers=markers)
    groups = describe_unknown_groups(model, lambda: ((start, X) for start, _, X in chunks()), preds, genes=gene_labels(bundle),
                                    samples=samples)
    if groups:
        log("described the Unknown groups (one more pass over the chunks)")
    if rows.n_obs and preds.marker_agreement is None:  # (else measured where the threshold was decided)
        preds.marker_agreement = markers(preds.label_raw)
    report = {"message": message,
              "n_shared": gm.n_shared, "n_model_genes": len(genes), "approximate": gm.approximate,
              "warnings": warns, "n_cells_input": rows.n_obs, "n_genes": len(rows.var), "counts_source": rows.source,
              "read_in_chunks_of": int(chunk_cells), "unknown_groups": groups,
              **genes_note(missing, gm.n_shared, len(genes))}
    return preds, report


def _shared_shift(model, method: str, query_logits: np.ndarray, latent: np.ndarray, chunks, log) -> np.ndarray | None:
    """:meth:`~.novelty.LatentReference.shared_shift` of a query read in chunks: the reference side
    from the latent codes, the query's class means from one more pass over its chunks."""
    from .novelty import class_expression_sums, shift_from_means

    ref = getattr(model, "reference", None)
    if method != "knn_class" or ref is None or ref.expression is None or len(latent) == 0:
        return None
    pred = query_logits.argmax(1)
    matched = ref.matched_means(latent, pred)
    if matched is None:
        return None
    classes, ref_mean = matched
    sums = np.zeros_like(ref_mean)
    for start, _, X in chunks():
        sums += class_expression_sums(X, pred[start:start + X.shape[0]], classes)
    log("measured the study shift the query's types share (one more pass over the chunks)")
    counts = np.array([(pred == c).sum() for c in classes], dtype=np.float64)
    return shift_from_means(sums / counts[:, None], ref_mean)


def write_annotations_file(src: Path, out: Path, preds, card: dict[str, Any]) -> None:
    """A copy of the ``.h5ad`` at ``src`` with the annotations of :func:`~.pipeline.write_annotations`
    (its obs columns, obsm arrays and uns card), written at ``out`` atomically; the matrices are
    copied as bytes, never read."""
    import anndata as ad
    import h5py
    from anndata.io import read_elem, write_elem

    from .pipeline import h5_names, write_annotations, write_atomic

    def write(tmp: Path) -> None:
        shutil.copyfile(src, tmp)
        with h5py.File(tmp, "r+") as f:
            holder = ad.AnnData(obs=read_elem(f["obs"]))
            write_annotations(holder, preds, card)
            del f["obs"]
            with h5_names(holder):
                write_elem(f, "obs", holder.obs)
            for group, values in (("obsm", holder.obsm), ("uns", holder.uns)):
                if group not in f:
                    write_elem(f, group, {})
                for key, value in values.items():
                    if key in f[group]:
                        del f[group][key]
                    write_elem(f[group], key, value)

    write_atomic(Path(out), write)


def predict_file(model_dir: str | Path, query: str | Path, *, out: str | Path, device: str = "auto",
                 threshold: float | None = None, chunk_cells: int = CHUNK_CELLS, adapt: bool = False,
                 query_label_key: str | None = None, orientation: str = "auto", layer: str | None = None,
                 log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Label the query file ``query`` with the saved bundle in ``model_dir`` and write the
    annotated query to ``out``, in chunks when the model and the file allow (see the module
    docstring), else whole. ``adapt``: the model trained again with this query first
    (:func:`~.pipeline.annotate_adapted`). ``query_label_key``: a query column of known labels to
    measure the labels by; ``orientation``: a table query's, as :func:`~.data.read_dataset`'s;
    ``layer``: the layer of its raw counts (the file is then read whole).
    Returns ``{"n_obs", "unknown_fraction", "streamed"}``, and ``"query_metrics"`` with ``query_label_key``."""
    from .pipeline import load_bundle

    model, bundle = load_bundle(model_dir, device=device)
    return label_file(model, bundle, query, out=out, threshold=threshold, chunk_cells=chunk_cells, log=log,
                      model_dir=model_dir, adapt=adapt, query_label_key=query_label_key, orientation=orientation,
                      layer=layer)


def label_file(model, bundle: dict[str, Any], query: str | Path, *, out: str | Path, threshold: float | None = None,
               chunk_cells: int = CHUNK_CELLS, log: Callable[[str], None] = lambda s: None,
               model_dir: str | Path | None = None, adapt: bool = False, callbacks: Sequence[Any] = (),
               query_label_key: str | None = None, orientation: str = "auto",
               layer: str | None = None) -> dict[str, Any]:
    """:func:`predict_file` with a model and bundle already in memory (``Annotator.predict_file``);
    ``callbacks``: the training's, when ``adapt`` trains the model again; ``orientation`` set (not
    ``"auto"``): the query is a table, read whole with it; ``layer`` (not None): the layer of its raw
    counts, the file read whole (the annotated copy keeps its X and layers)."""
    from .pipeline import (annotate_adapted, check_h5ad_writable, check_not_an_input, log_read_notes, predict_query,
                           write_annotations, write_h5ad_atomic)

    if Path(out).suffix != ".h5ad":
        from .errors import ConfigError

        raise ConfigError(f"the annotated query is written as .h5ad: its path must end in .h5ad, not {str(out)!r}")
    check_not_an_input(out, {"query": query, "saved model": model_dir}, what="annotated query")
    from .data import read_dataset
    from .data.values import counts_layer

    # a table whose orientation was set, or a file whose counts' layer was named, is read whole here
    query_data = (None if orientation == "auto" and layer is None else
                  read_dataset(query, name="query", orientation=orientation))
    query_in = counts_layer(query_data, layer, "query") if query_data is not None else None
    if adapt:
        res = annotate_adapted(model, bundle, Path(query) if query_in is None else query_in, threshold=threshold,
                               device=model.device_name, out=out, query_label_key=query_label_key, log=log,
                               callbacks=callbacks)
        return {"n_obs": len(res.predictions.label), "unknown_fraction": res.card["unknown_fraction"],
                "streamed": "query_read_in_chunks" in res.card, **_metrics_of(res.card)}

    reason = None if model.spec.supports.per_cell else f"{model.name} labels a query as a whole"
    if query_data is not None:
        reason = "its counts' layer named" if layer is not None else "a table with its orientation set"
    rows = None
    if reason is None:
        try:
            rows = H5adRows(query, name="query")
        except NotStreamable as err:
            reason = str(err)
    if rows is None:
        if query_data is not None or Path(query).exists():  # (a missing path was said to be read whole, then said
            log(f"reading the whole query into memory ({reason})")  # not to exist: found 2026-12-07)
        adata = read_dataset(query, name="query") if query_data is None else query_data
        log_read_notes("query", adata, log)
        check_h5ad_writable(adata, "query")  # before labelling, not after it
        preds, card = predict_query(model, bundle, adata if query_in is None else query_in, threshold=threshold,
                                    query_label_key=query_label_key, log=log)
        if model_dir is not None:
            card["model_dir"] = str(model_dir)
        write_annotations(adata, preds, card)
        write_h5ad_atomic(adata, Path(out))
        return {"n_obs": adata.n_obs, "unknown_fraction": card["unknown_fraction"], "streamed": False,
                **_metrics_of(card)}
    with rows:
        preds, card = stream_label(model, bundle, rows, threshold=threshold, chunk_cells=chunk_cells, log=log,
                                   query_label_key=query_label_key)
    if model_dir is not None:
        card["model_dir"] = str(model_dir)
    write_annotations_file(Path(query), Path(out), preds, card)
    return {"n_obs": len(preds.label), "unknown_fraction": card["unknown_fraction"], "streamed": True,
            **_metrics_of(card)}


def stream_label(model, bundle: dict[str, Any], rows: H5adRows, *, threshold: float | None = None,
                 chunk_cells: int = CHUNK_CELLS, query_label_key: str | None = None,
                 log: Callable[[str], None] = lambda s: None):
    """Every cell of ``rows`` labelled with a saved model, a chunk at a time
    (:func:`stream_predictions`), as :func:`~.pipeline.predict_query` labels a query in memory:
    returns the predictions and the run card (its metrics against ``query_label_key``)."""
    from .pipeline import (bundle_samples, log_class_notes, log_unknown_groups, log_warnings, own_labels,
                           predicted_query_metrics, prediction_card)

    labels = own_labels(rows.obs, query_label_key, model, bundle, log)
    samples = bundle_samples(bundle, rows.obs)
    said: list[str] = []

    def on_genes(message: str, warns: list[str]) -> None:
        log(message)
        for w in warns:
            log(f"warning: {w}")
        said.extend(warns)

    preds, report = stream_predictions(model, bundle, rows, threshold=threshold, chunk_cells=chunk_cells,
                                       log=log, samples=samples, on_genes=on_genes)
    log_warnings({**report, "warnings": [w for w in report["warnings"] if w not in said]}, log)
    groups = report.pop("unknown_groups", [])
    card = prediction_card(model, preds, report, samples, threshold) | {"unknown_groups": groups}
    log_unknown_groups(groups, log)
    log_class_notes(card, log)
    predicted_query_metrics(card, labels, preds, model, query_label_key, log)
    return preds, card


def _metrics_of(card: dict[str, Any]) -> dict[str, Any]:
    return {"query_metrics": card["query_metrics"]} if card.get("query_metrics") else {}
