"""A new query labelled with a finished run's model, without training, into a run of its own.

What the app's Train page does with *Label with a finished run's model* (and what a script can do
with two :class:`~cellannot_core.runs.RunDir`): the run's saved model labels the query as
``cellannot predict`` does (:func:`~.pipeline.predict_query`, or a chunk at a time for a query held
as a sample of its file, :func:`~.streaming.stream_label`), and the new run gets every file a
trained run has, so the result pages show it as any other run: its reference side (validation
logits and scores, the reference's latent codes, class means, generated cells) copied from the
run the model comes from, its query side computed here (:func:`~.pipeline.query_view_arrays`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._constants import RunFiles, str_array
from .errors import Cancelled, CellannotError, DataError, failure_message

__all__ = ["label_into_run", "REFERENCE_ARRAYS"]

# the arrays of a run that describe its model and reference, not its query (pipeline.view_arrays)
REFERENCE_ARRAYS = ("val_", "ref_", "gen_")


def label_into_run(source, query, run_dir, *, query_label_key: str | None = None, device: str = "auto",
                   threshold: float | None = None, should_stop: Callable[[], bool] = lambda: False,
                   log: Callable[[str], None] = lambda s: None):
    """Label ``query`` (an AnnData, a sample of a large file as the app holds one, or a path) with the
    model of the finished run ``source`` into the new run ``run_dir``; returns the predictions and
    the run's card.

    ``query_label_key``: a query column of known labels to measure the labels by; ``threshold``: the
    novelty threshold, overriding the model's. The new run's status says where it is and ends
    ``done``, ``failed`` or ``cancelled`` (``should_stop`` between steps), as a trained run's does.
    """
    from .pipeline import load_bundle

    t0 = time.time()

    def step(message: str) -> None:
        if should_stop():
            raise Cancelled(f"cancelled before {message}")
        log(message)
        run_dir.set_status("running", message=message, elapsed=time.time() - t0)

    try:
        step(f"loading the model of run {source.id}")
        try:
            model, bundle = load_bundle(source.model_dir, device=device)
        except DataError as err:  # said of the run, not as the command line's "pass a directory written by train"
            raise DataError(f"the saved model of run {source.id} cannot be read ({str(err).split(';')[0]}): its files "
                            "are missing or damaged. Delete that run and train again") from None
        run_dir.set_status("running", model=model.name, message=f"loading the model of run {source.id}")
        ref_arrays = {k: v for k, v in source.load_arrays().items() if k.startswith(REFERENCE_ARRAYS)}
        step("labelling the query")
        preds, card, adata, X = _label(model, bundle, query, query_label_key, threshold, log)
        step("writing results")
        _complete_card(card, source, model, bundle, preds, query_label_key, device)
        _write(run_dir, model, bundle, preds, card, adata, ref_arrays, X)
        run_dir.set_status("done", message="finished", progress=1.0, elapsed=time.time() - t0)
        return preds, card
    except CellannotError as err:
        run_dir.set_status("cancelled" if isinstance(err, Cancelled) else "failed", message=str(err))
        raise
    except Exception as err:
        run_dir.set_status("failed", message=failure_message(err))
        raise


def _label(model, bundle: dict[str, Any], query, query_label_key: str | None, threshold: float | None,
           log: Callable[[str], None]):
    """(predictions, card, the AnnData the annotations go into, the model input the query's class
    means are taken from): a query in memory as ``predict`` labels it, a sample of a large file by
    labelling the whole file a chunk at a time (its annotations go into its obs alone)."""
    import anndata as ad
    import pandas as pd

    from .data import read_dataset
    from .data.stream import H5adRows, stream_source
    from .data.values import as_given
    from .pipeline import CHUNK_NOTE, check_h5ad_writable, log_read_notes, model_input, predict_query_input

    qry = query if not isinstance(query, (str, Path)) else read_dataset(query, name="query")
    log_read_notes("query", qry, log)
    source = stream_source(qry)
    if source is not None and not model.spec.supports.per_cell:
        raise DataError(f"{model.name} labels a query as a whole, and this query ({source['n_obs']:,} cells) is read a "
                        "chunk at a time: label it with a run of another model")
    if source is None:
        check_h5ad_writable(as_given(qry), "query")  # before labelling, not after it
        preds, card, X = predict_query_input(model, bundle, qry, threshold=threshold, query_label_key=query_label_key,
                                             log=log)
        return preds, card, as_given(qry).copy(), X
    from .streaming import stream_label

    with H5adRows(source["path"], name="query") as rows:
        obs = rows.obs.copy()
        obs.index = pd.Index(str_array(rows.obs_names), dtype=object)
        preds, card = stream_label(model, bundle, rows, threshold=threshold, query_label_key=query_label_key, log=log)
    card["query_read_in_chunks"] = {k: v for k, v in source.items() if k != "path"} | {
        "note": f"every one of the query's {source['n_obs']:,} cells was labelled, {CHUNK_NOTE}; its class means "
                f"are those of a seeded sample of {source['n_sample']:,} cells"}
    holder = ad.AnnData(obs=obs, var=pd.DataFrame(index=pd.Index([str(g) for g in bundle["genes"]])))
    return preds, card, holder, model_input(model, bundle, qry)[0].X


def _complete_card(card: dict[str, Any], source, model, bundle: dict[str, Any], preds, query_label_key: str | None,
                   device: str) -> None:
    """The keys a trained run's card has that the result pages and the Runs page read."""
    import pandas as pd

    src = source.card() or {}
    card.update({
        "created": time.strftime("%Y-%m-%d %H:%M:%S"), "seed": int(model.seed), "device": str(model.device_name),
        "options": {**(src.get("options") or {}), "query_label_key": query_label_key, "device": device},
        "genes": [str(g) for g in bundle["genes"]], "n_genes": len(bundle["genes"]),
        **({"gene_symbols": list(bundle["gene_symbols"])} if bundle.get("gene_symbols") else {}),
        "n_train": src.get("n_train"), "n_val": src.get("n_val"), "n_query": int(len(preds.label)),
        "validation": model.calibration, "predicted_counts": pd.Series(preds.label).value_counts().to_dict(),
        "labelled_with": {"run": source.id, "model": model.name, "note": (
            f"Labelled with the model of run {source.id} as it was trained, without training."
            + (f" {model.name} learns its latent space from the query's cells too, so in a query it was not trained "
               "with it calls fewer cells of types its reference lacks Unknown: to train it with this one, make run "
               f"{source.id}'s reference cells the reference (Data page, From a finished run) and train"
               if card.get("unseen_query") else ""))},
        "training": {"n_epochs": 0, "seconds": 0.0, "note": f"no training: the model of run {source.id}"},
    })
    card.setdefault("query_metrics", {})


def _write(run_dir, model, bundle: dict[str, Any], preds, card: dict[str, Any], adata,
           ref_arrays: dict[str, np.ndarray], X) -> None:
    """Every file of a finished run, each written atomically, the card last."""
    from .pipeline import predictions_table, query_view_arrays, save_bundle, write_annotations, write_h5ad_atomic
    from .runs import csv_bytes, write_bytes_atomic, write_json_atomic

    save_bundle(run_dir.model_dir, model, bundle)  # the run's model can be downloaded and used again
    run_dir.save_arrays(ref_arrays | query_view_arrays(model, X, preds))
    write_annotations(adata, preds, card)
    write_h5ad_atomic(adata, run_dir.file(RunFiles.ANNOTATED))
    write_bytes_atomic(run_dir.file(RunFiles.PREDICTIONS), csv_bytes(predictions_table(adata.obs_names, preds,
                                                                                      model.classes), index=False))
    write_json_atomic(run_dir.file(RunFiles.HISTORY), [])
    write_json_atomic(run_dir.file(RunFiles.CARD), card)
