"""Every key the project writes or reads, in one place.

AnnData fields of the annotate contract (DESIGN.md), run-directory file names and the
label used for rejected cells live here; nothing else spells them out.
"""
from __future__ import annotations

import os

UNKNOWN = "Unknown"

#: the most characters a label (a cell type's name, in a label column or a saved model) may have: cell types are
#: named in tens of characters, and a longer one is a per-cell note or an attack (see :func:`str_array`)
MAX_LABEL_CHARS = 256
#: the most characters a cell's or a gene's name (a barcode, a gene symbol or id) from a file may have: they are tens
#: of characters; readers that make a fixed-width array of them (scanpy's of a 10x .h5) widen every name to the
#: longest (one 330,000-character barcode among 3,000 took 4.3 GB from 0.7 MB, found 2026-12-07)
MAX_NAME_CHARS = 1_000
#: the most classes a model may have: a reference's cell types number tens to a few thousand, and each cell's
#: logits and probabilities take 8-16 bytes a class (a 70 MB saved model of 300,000 classes took 15.6 GB labelling
#: 2,638 cells at a 0.5 GB limit, found 2026-12-07)
MAX_CLASSES = 10_000


def str_array(values):
    """``values`` (labels, names) as a flat object array of ``str``: what numpy's ``astype(str)`` gives, without
    its fixed width, which makes every element as wide as the longest (one 200,000-character label among 3,000
    cells: a 0.45 MB query took 5 GB, found 2026-12-07). Use it wherever labels or names become an array."""
    import numpy as np

    flat = np.asarray(values, dtype=object).reshape(-1)
    out = np.empty(flat.size, dtype=object)
    out[:] = [v if type(v) is str else str(v) for v in flat]
    return out

#: environment variable: threads for torch and for the neighbour searches (unset: all cores)
NUM_THREADS_ENV = "CELLANNOT_NUM_THREADS"


def env_number(name: str, default, *, low: float | None = None, integer: bool = False):
    """A server setting from the environment: ``default`` when unset, and, with a warning of the
    ``cellannot`` logger, when it is not a finite number (a typo must not stop the app at import, as
    ``CELLANNOT_MAX_JOBS=two`` did); an integer setting below ``low`` is raised to it, a number
    below it is not valid."""
    import logging
    import math

    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
        if not math.isfinite(value) or (integer and value != int(value)):
            raise ValueError
    except ValueError:
        value = None
    if value is not None and low is not None and value < low:
        value = low if integer else None
    if value is None:
        if (name, raw) in _WARNED:  # once per setting, not at every read (six times a run, found 2026-12-07)
            return default
        _WARNED.add((name, raw))
        logging.getLogger("cellannot").warning(f"{name}={raw!r} is not a valid setting here; using "
                                               f"{'the default' if default is None else default}")
        return default
    return int(value) if integer else value


_WARNED: set[tuple[str, str]] = set()


def num_threads() -> int | None:
    """The thread count set by :data:`NUM_THREADS_ENV` (None when unset or not a number): 0 or a
    negative count means every core, as ``n_jobs=-1`` does in scikit-learn and joblib (until
    2026-12-07 ``-1`` was raised to one thread, silently)."""
    n = env_number(NUM_THREADS_ENV, None, integer=True)
    return n if n is None or n >= 1 else None


def nn_jobs() -> int:
    """``n_jobs`` for scikit-learn's neighbour searches: :func:`num_threads`, or every core (the
    queries are split over threads; the neighbours found are the same)."""
    return num_threads() or -1


class OutKeys:
    """Fields of the annotated query AnnData (the annotate contract)."""

    LABEL = "cellannot_label"
    LABEL_RAW = "cellannot_label_raw"
    CONFIDENCE = "cellannot_confidence"
    OOD_SCORE = "cellannot_ood_score"
    IS_UNKNOWN = "cellannot_is_unknown"
    UNKNOWN_GROUP = "cellannot_unknown_group"  # position in uns['cellannot']['unknown_groups'], -1: none
    PROBA = "cellannot_proba"  # obsm
    LATENT = "X_cellannot"  # obsm
    UNS = "cellannot"  # uns: the run card
    CLASSES = "classes"  # uns['cellannot']['classes']


class RunFiles:
    """File names inside a run directory (see runs.py)."""

    CARD = "run_card.json"
    STATUS = "status.json"
    HISTORY = "history.json"
    MODEL_DIR = "model"
    WEIGHTS = "weights.safetensors"
    CONFIG = "config.json"
    ANNOTATED = "annotated.h5ad"
    PREDICTIONS = "predictions.csv"
    ARRAYS = "arrays.npz"  # latent/val scores etc. for the app's views (no pickle)
    LOG = "log.txt"
    REQUEST = "request.json"  # the options and dataset ids a run was started with (to run it again)


DEFAULT_MODEL = "scanvi_svm"
DEFAULT_MIN_SHARED_GENES = 200  # genes the reference and the query must share; the default alone is eased for small panels
DEFAULT_N_TOP_GENES = 2000  # highly variable genes kept (prepare, annotate, the CLI, the Train page)
HVG_FROM = ("reference", "both")  # where the variable genes are chosen (prepare's ``hvg_from``)
DEFAULT_HVG_FROM = "reference"
HVG_FLAVORS = ("seurat", "seurat_v3")  # how genes are ranked (prepare's ``hvg_flavor``)
DEFAULT_HVG_FLAVOR = "seurat_v3"  # counts, no mean bins (BENCHMARKS.md, "A gene-poor suite": the rule and its draws)
