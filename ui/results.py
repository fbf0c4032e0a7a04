"""Cached access to a finished run's results (keyed by runs root + run id).

A finished run directory never changes, so ``st.cache_data`` keyed by ``(root, run_id)`` is
safe. Everything returned is plain data (arrays, frames, dicts); figures are built by the
pages from these with ``cellannot_core.plots``.
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from cellannot_core._constants import UNKNOWN, OutKeys, RunFiles, str_array
from cellannot_core.errors import CellannotError, DataError
from cellannot_core.runs import RunDir, csv_bytes
from ui.jobs import run_status, runs_root
from ui.state import StateKeys, get

SKLEARN_KNN_MAX = 30_000


@dataclass
class Run:
    """What the result pages need of one finished run."""

    root: str
    run_id: str
    card: dict[str, Any]
    arrays: dict[str, np.ndarray]
    obs: pd.DataFrame  # the annotated query's obs (predictions + the query's own columns)

    @property
    def rd(self) -> RunDir:
        return RunDir.open(self.root, self.run_id)

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.card.get(OutKeys.CLASSES, [])]

    @property
    def query_label_key(self) -> str | None:
        key = (self.card.get("options") or {}).get("query_label_key")
        return key if key and key in self.obs.columns else None

    @property
    def query_labels(self) -> np.ndarray | None:
        key = self.query_label_key
        return None if key is None else self.obs[key].astype(str).to_numpy()

    @property
    def rejection(self) -> dict[str, Any]:
        return self.card.get("rejection") or {}

    @property
    def colours(self) -> dict[str, str]:
        """One colour per name for every figure of the run: the reference's types first, then the query's own
        labels the reference lacks (each figure resolved its own clashes of the palette, so endothelial cells
        were green in one figure and orange in the next where a query-only type took its colour, 2026-12-07)."""
        return _type_colours(self.root, self.run_id, tuple(self.classes), self.query_label_key)

    @property
    def temperature(self) -> float:
        return float(self.card.get("temperature", 1.0))

    def scores(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """(reference validation, query) novelty scores of ``method``."""
        return self.arrays[f"val_score_{method}"], self.arrays[f"query_score_{method}"]

    def score_methods(self) -> list[str]:
        """Every novelty score the run stored for both validation and query cells, in the core's
        order (:data:`~cellannot_core.novelty.OOD_METHODS`), model-specific ones (e.g. elbo) last."""
        from cellannot_core.novelty import OOD_METHODS

        names = [k[len("query_score_"):] for k in self.arrays if k.startswith("query_score_")]
        names = [m for m in names if f"val_score_{m}" in self.arrays]
        rank = {m: i for i, m in enumerate(OOD_METHODS)}
        return sorted(names, key=lambda m: (rank.get(m, len(rank)), m))


@st.cache_data(show_spinner=False, max_entries=16)
def load_card(root: str, run_id: str) -> dict[str, Any]:
    card = RunDir.open(root, run_id).card()
    if card is None:
        raise DataError(f"run {run_id}: its run card ({RunFiles.CARD}) is missing or damaged")
    return card


@st.cache_data(show_spinner=False, max_entries=8)
def load_arrays(root: str, run_id: str) -> dict[str, np.ndarray]:
    return RunDir.open(root, run_id).load_arrays()


@st.cache_data(show_spinner=False, max_entries=8)
def _type_colours(root: str, run_id: str, classes: tuple[str, ...], key: str | None) -> dict[str, str]:
    """:attr:`Run.colours`, once per run (not on each rerun: the query's labels are read through whole)."""
    from cellannot_core.plots import category_colors

    ref = category_colors(classes)
    obs = load_obs(root, run_id)
    own = [] if key is None else sorted(set(map(str, pd.unique(obs[key].astype(str)))) - set(ref))
    return category_colors([*classes, *own], ref)


@st.cache_data(show_spinner=False, max_entries=8)
def load_obs(root: str, run_id: str) -> pd.DataFrame:
    import anndata as ad

    path = RunDir.open(root, run_id).file(RunFiles.ANNOTATED)
    a = ad.read_h5ad(path, backed="r")
    try:
        return a.obs.copy()
    finally:
        a.file.close()


def load_run(root: str, run_id: str) -> Run:
    """A finished run's card, arrays and annotated obs (cached)."""
    return Run(root, run_id, load_card(root, run_id), load_arrays(root, run_id), load_obs(root, run_id))


def current_run() -> Run | None:
    """The session's current run when it finished successfully, else ``None`` (no UI output)."""
    return _current_run()[0]


def _current_run() -> tuple[Run | None, str | None]:
    """The current run as :func:`current_run`, and why a finished one could not be read."""
    run_id = get(StateKeys.RUN_ID)
    if not run_id:
        return None, None
    root = str(runs_root())
    try:
        if run_status(run_id, root).get("state") != "done":
            return None, None
        return load_run(root, run_id), None
    except CellannotError as err:
        return None, str(err)
    except (OSError, ValueError, KeyError) as err:  # (anndata's reader of a damaged annotated file)
        return None, f"run {run_id}: its files cannot be read ({type(err).__name__})"


def require_run() -> Run:
    """Stop the page with a pointer to the Train page unless a finished run is selected."""
    run_id = get(StateKeys.RUN_ID)
    if not run_id:
        st.info("Train a model on the **Train** page first, or open a past run on the **Runs** page.")
        st.stop()
    if not (runs_root() / run_id).is_dir():  # deleted (on the Runs page, maybe in another tab)
        st.info(f"Run `{run_id}` no longer exists: it was deleted. Open another on the **Runs** page.")
        st.stop()
    run, damaged = _current_run()
    if damaged:
        st.error(f"This run finished, but {damaged.split(': ', 1)[-1]}: its results cannot be shown. Delete it on "
                 "the **Runs** page and train it again.", icon=":material/broken_image:")
        st.stop()
    if run is None:
        try:
            state = run_status(run_id).get("state")
        except CellannotError:
            state = "missing"
        if state in ("failed", "cancelled", "interrupted", "missing"):  # ("results appear once it is done" was said
            st.info(f"Run `{run_id}` {'was ' + state if state != 'missing' else 'is missing'}: it has no results. Its message is on the **Train** page; "  # of these
                    "**Run again** on the **Runs** page trains it again.")  # too, found 2026-12-07)
        else:
            st.info(f"Run `{run_id}` is {state}; results appear here once it is done (see the **Train** page).")  # (queued, running)
        st.stop()
    return run


# ------------------------------------------------------------------------------ derived data


#: what a page adds to the far-query warning, where what it shows could be read against it (found 2026-12-07: the
#: Calibration page's state programs and rare-type notes offered a pancreas query's groups as stressed T cells)
FAR_QUERY_READING = {
    "calibration": " Read the Unknown groups below with that in mind: their 'looks most like' types, state "
                   "programs and rare-type notes compare them with the reference's types, which a query of other "
                   "cells is not; accept a group only where it keeps its type's own marker genes.",
    "latent": " On these maps the query lies apart from the reference because its cells are unlike the "
              "reference's, not because of a batch effect the model left.",
}


def rejection_warnings(run: Run, page: str = "results") -> None:
    """The run's warnings on its Unknown calls as a whole (the query lies far from the reference; a threshold
    given by hand calls every cell Unknown) at the top of each page that shows those calls: until 2026-12-07
    only the Label transfer page showed them, and the Calibration and Latent pages gave other reasons."""
    from cellannot_core.pipeline import WARNING_KEYS

    for key in WARNING_KEYS:
        if warn := run.rejection.get(key):
            extra = FAR_QUERY_READING.get(page, "") if key == "far_query" else ""
            st.warning(warn[0].upper() + warn[1:] + "." + extra, icon=":material/warning:")


def accuracy_metric(col: Any, query_metrics: dict[str, Any]) -> None:
    """The run's accuracy against the query's own labels, Unknown calls included (``acc_open``), as the Train and
    Label transfer pages show it: the Train page showed the accuracy before the Unknown calls as "Query accuracy
    (known types)", 96.5% where the next page said 86.2%, and "nan%" for a query of no reference types (found
    2026-12-07)."""
    acc_open, acc_in = query_metrics.get("acc_open"), query_metrics.get("acc_in")
    if acc_open is None or not np.isfinite(float(acc_open)):
        return
    if acc_in is None or not np.isfinite(float(acc_in)):  # (a perfect "accuracy" of a query of other cells all
        col.metric("Cells of types the reference lacks called Unknown", f"{float(acc_open):.1%}",  # Unknown: 2026-12-07)
                   help="The query's own labels name none of the reference's types, so no label can be checked: this "
                        "is the share of its cells called Unknown, as they should be.")
        return
    col.metric("Accuracy, Unknown included", f"{float(acc_open):.1%}",
               help="Against the query's own labels: a cell of a reference type is right when its label is right and "
                    "it is not called Unknown, a cell of a type the reference lacks when it is called Unknown. "
                    f"Cells of reference types labelled right before the Unknown call: {float(acc_in):.1%}; of them "
                    f"called Unknown: {float(query_metrics.get('reject_in') or 0):.1%}.")


def relabel(run: Run, method: str, threshold: float) -> np.ndarray:
    """Final labels of the query for a novelty score and threshold (score > threshold: Unknown)."""
    raw = run.obs[OutKeys.LABEL_RAW].astype(str).to_numpy()
    _, q = run.scores(method)
    return np.where(q > threshold, UNKNOWN, raw)


def default_threshold(run: Run, method: str) -> float:
    """The card's threshold for its own method; for another stored score, the same rule: accept
    the card's share of validation cells, then the card's query-shift correction.

    The shift correction mirrors ``Model.query_threshold`` (distance scores only: times
    ``max(1, median(query) / median(validation))``).
    """
    from cellannot_core.calibration import query_threshold, threshold_for_acceptance

    rej = run.rejection
    if method == rej.get("method") and rej.get("threshold") is not None:
        return float(rej["threshold"])
    val, q = run.scores(method)
    thr = threshold_for_acceptance(val, float(rej.get("accept_fraction_on_validation", 0.95)))
    med = float(np.median(val[np.isfinite(val)])) if np.isfinite(val).any() else float("nan")
    logits = run.arrays.get("query_logits")
    pred = None if logits is None or len(logits) != len(q) else np.asarray(logits).argmax(1)
    return query_threshold(thr, method, str(rej.get("shift_correction", "none")), med, q, pred)[0]


@st.cache_data(show_spinner="Clustering the query (Leiden)...", max_entries=8)
def leiden_clusters(root: str, run_id: str, resolution: float = 1.0) -> np.ndarray:
    """Leiden clusters of the query cells with scanpy (normalise, log1p, HVG, PCA, kNN, Leiden).

    Up to :data:`SKLEARN_KNN_MAX` cells the kNN graph comes from scikit-learn (no numba
    compilation on first use); above, from ``sc.pp.neighbors``.
    """
    import anndata as ad
    import scanpy as sc

    a = ad.read_h5ad(RunDir.open(root, run_id).file(RunFiles.ANNOTATED))
    a = ad.AnnData(X=a.X.copy(), obs=a.obs[[]].copy(), var=a.var[[]].copy())
    n = a.n_obs
    if n < 3:
        return np.full(n, "0").astype(str)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    if a.n_vars > 2000:
        sc.pp.highly_variable_genes(a, n_top_genes=2000, subset=True)
    sc.pp.pca(a, n_comps=max(2, min(50, n - 1, a.n_vars - 1)))
    k = min(15, n - 1)
    leiden = dict(resolution=resolution, key_added="leiden", flavor="igraph", n_iterations=2, directed=False)
    if n <= SKLEARN_KNN_MAX:
        from sklearn.neighbors import kneighbors_graph

        g = kneighbors_graph(a.obsm["X_pca"], n_neighbors=k, mode="connectivity", include_self=False)
        sc.tl.leiden(a, adjacency=g.maximum(g.T).tocsr(), **leiden)
    else:
        sc.pp.neighbors(a, n_neighbors=k)
        sc.tl.leiden(a, **leiden)
    return a.obs["leiden"].astype(str).to_numpy()


@st.cache_data(show_spinner=False, max_entries=8)
def file_bytes(root: str, run_id: str, name: str) -> bytes:
    return RunDir.open(root, run_id).file(name).read_bytes()


def model_zip(root: str, run_id: str) -> bytes:
    """The model bundle (``model/``) as a zip (built when the download is clicked)."""
    model_dir = RunDir.open(root, run_id).model_dir
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(model_dir.rglob("*")):
            if p.is_file():
                zf.write(p, Path("model") / p.relative_to(model_dir))
    return buf.getvalue()


def card_json(run: Run) -> str:
    return json.dumps(run.card, indent=1, default=str)


#: the Cells table's headers (the annotated file's column names were shown, found 2026-12-07); the downloads keep them
CELL_TABLE_LABELS = {OutKeys.LABEL: "Label", OutKeys.LABEL_RAW: "Type it looks most like",
                     OutKeys.CONFIDENCE: "Confidence", OutKeys.OOD_SCORE: "Novelty score", OutKeys.IS_UNKNOWN: "Unknown"}


def cell_table(run: Run, *, labels: list[str] | None, min_conf: float, unknown_only: bool) -> pd.DataFrame:
    """The per-cell table filtered as on the Label transfer page."""
    obs = run.obs
    cols = [OutKeys.LABEL, OutKeys.LABEL_RAW, OutKeys.CONFIDENCE, OutKeys.OOD_SCORE, OutKeys.IS_UNKNOWN]
    if run.query_label_key:
        cols.insert(0, run.query_label_key)
    df = obs[cols].copy()
    df.insert(0, "cell", obs.index.astype(str))
    keep = df[OutKeys.CONFIDENCE].to_numpy() >= min_conf
    if labels:
        keep &= df[OutKeys.LABEL].astype(str).isin(labels).to_numpy()
    if unknown_only:
        keep &= df[OutKeys.IS_UNKNOWN].to_numpy().astype(bool)
    return df[keep].reset_index(drop=True)


def relabelled_csv(run: Run, method: str, threshold: float, labels: np.ndarray | None = None) -> bytes:
    """Predictions CSV at a user-chosen novelty score and threshold (``labels``: the final labels
    when the visitor changed more than the threshold, e.g. accepted an Unknown group)."""
    labels = relabel(run, method, threshold) if labels is None else labels
    _, q = run.scores(method)
    df = pd.DataFrame({"cell": run.obs.index.astype(str), OutKeys.LABEL: labels,
                       OutKeys.LABEL_RAW: run.obs[OutKeys.LABEL_RAW].astype(str).to_numpy(),
                       OutKeys.CONFIDENCE: run.obs[OutKeys.CONFIDENCE].to_numpy(),
                       f"ood_score_{method}": q, OutKeys.IS_UNKNOWN: labels == UNKNOWN})
    return csv_bytes(df, index=False)


@st.cache_data(show_spinner="Writing the annotated query...", max_entries=2)
def annotated_with_choices(root: str, run_id: str, labels: np.ndarray, choices: dict[str, Any]) -> bytes:
    """The run's annotated query (``.h5ad``) with the final ``labels`` a visitor chose on the
    Calibration page (``cellannot_label`` and ``cellannot_is_unknown``; ``cellannot_label_raw``,
    the confidences and the run's own novelty score unchanged) and the choices themselves in
    ``uns["cellannot"]["decisions"]``."""
    import tempfile

    import anndata as ad

    from types import SimpleNamespace

    from cellannot_core.pipeline import metrics_of_labels, move_counts, write_h5ad_atomic

    a = ad.read_h5ad(RunDir.open(root, run_id).file(RunFiles.ANNOTATED))
    labels = str_array(labels)
    if len(labels) != a.n_obs:
        raise CellannotError(f"{len(labels)} labels for {a.n_obs} cells: open the run again")
    card = a.uns.setdefault("cellannot", {})
    raw = a.obs[OutKeys.LABEL_RAW].astype(str).to_numpy()
    # the card's counts and metrics are of these labels (they were the run's, found 2026-12-07)
    move_counts(card, a.obs[OutKeys.LABEL].astype(str).to_numpy(), labels, raw)
    a.obs[OutKeys.LABEL] = pd.Categorical(labels)
    a.obs[OutKeys.IS_UNKNOWN] = labels == UNKNOWN
    key = (card.get("options") or {}).get("query_label_key") if isinstance(card.get("options"), dict) else None
    if isinstance(card.get("query_metrics"), dict) and card["query_metrics"] and key in a.obs:
        own = a.obs[key].astype(str).where(a.obs[key].notna(), "").to_numpy()
        preds = SimpleNamespace(label_raw=raw, label=labels, confidence=a.obs[OutKeys.CONFIDENCE].to_numpy(float),
                                ood_score=a.obs[OutKeys.OOD_SCORE].to_numpy(float))
        card["query_metrics"] = metrics_of_labels(own, preds, [str(c) for c in card.get(OutKeys.CLASSES, [])])
    card["decisions"] = json.loads(json.dumps(choices, default=float))
    rej = card.get("rejection")
    if isinstance(rej, dict) and choices.get("threshold") is not None:  # the threshold these calls were made at
        thr, method = float(choices["threshold"]), str(choices.get("method") or rej.get("method"))
        if method != rej.get("method") or not np.isclose(thr, float(rej.get("threshold", np.nan)), rtol=1e-6, atol=0):
            rej.update(threshold=thr, method=method, threshold_overridden=True,  # (the run's own stayed, 2026-12-07)
                       how=f"set on the Calibration page: Unknown when the {method} novelty score is above {thr:.4g} "
                           f"(the run's own rule: {rej.get('how', '')})")
    with tempfile.TemporaryDirectory(prefix="cellannot_dl_") as tmp:
        out = Path(tmp) / "annotated.h5ad"
        write_h5ad_atomic(a, out)  # as the run's own file is written: compressed, any name an .h5ad cannot hold kept
        return out.read_bytes()


def comparison_columns(run: Run) -> tuple[np.ndarray, str]:
    """Columns of the label-transfer heatmap: the query's own labels, else its Leiden clusters."""
    if run.query_labels is not None:
        return run.query_labels, f"Query label ({run.query_label_key})"
    return leiden_clusters(run.root, run.run_id), "Query cluster (Leiden)"


def prepared_download(col: Any, label: str, make: Any, *, file_name: str, mime: str, key: str,
                      help: str | None = None) -> None:
    """A download whose file is read only when the visitor asks (*Prepare*), then offered as bytes
    bound to this page. Streamlit's deferred downloads (``data=callable``) lost the file under
    load: another session's script run collected it between the click and the transfer
    (the load test: "Download.save_as: canceled" for 2 of 5 visitors)."""
    ready = st.session_state.setdefault("prepared_downloads", set())
    if key in ready:
        col.download_button(label, make(), file_name=file_name, mime=mime, key=key, help=help, on_click="ignore")
    elif col.button(f"Prepare: {label}", key=f"{key}_prepare", help=help, icon=":material/download:"):
        ready.add(key)
        st.rerun()
