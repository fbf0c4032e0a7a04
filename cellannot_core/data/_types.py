"""Containers passed from data preparation to models (plain arrays, no AnnData)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

MAX_BATCHES = 1000  # batch-key values (reference + query); more looks like a per-cell column, not batches


@dataclass
class Split:
    """One set of cells aligned to the model genes.

    Attributes
    ----------
    X
        float32 (cells x genes): library-size normalised (target 1e4) + log1p. Dense, or CSR for
        a large dataset (:data:`~cellannot_core.data.prepare.DENSE_LIMIT_BYTES`); models that
        declare ``Supports.sparse`` read it as it is, the others get it dense (:func:`dense`).
    counts
        CSR float32 raw counts of the same cells and genes (for count models); None for a query
        aligned only to be labelled (:func:`~cellannot_core.data.prepare.prepare_query`).
    y
        int64 class indices into ``Prepared.classes``; -1 where unknown/unlabelled; None if no labels.
    obs_names
        Cell names, in order.
    labels
        The original label strings (for the query: its own label column if present, else None).
    index
        Optional int64 row positions of these cells in the input AnnData (reference or query),
        so results can be mapped back even when QC removed cells or cell names were made unique.
    batch
        Optional int64 codes into ``Prepared.batches`` (the batch key's values, when one is
        given): the decoder covariate of the generative models.
    """

    X: np.ndarray
    counts: sp.csr_matrix | None
    y: np.ndarray | None
    obs_names: np.ndarray
    labels: np.ndarray | None = None
    index: np.ndarray | None = None
    batch: np.ndarray | None = None

    @property
    def n_obs(self) -> int:
        return int(self.X.shape[0])

    @property
    def is_sparse(self) -> bool:
        return sp.issparse(self.X)

    def rows(self, idx: np.ndarray) -> "Split":
        """The cells at positions ``idx`` (a new Split; X dense)."""
        idx = np.asarray(idx, dtype=np.int64)
        pick = lambda v: None if v is None else v[idx]  # noqa: E731
        counts = None if self.counts is None else sp.csr_matrix(self.counts[idx])
        return Split(X=dense(self.X[idx]), counts=counts, y=pick(self.y), obs_names=self.obs_names[idx],
                     labels=pick(self.labels), index=pick(self.index), batch=pick(self.batch))


def dense(X: Any) -> np.ndarray:
    """``X`` as a dense float32 array (sparse matrices are expanded)."""
    X = X.toarray() if hasattr(X, "toarray") else X
    return np.asarray(X, dtype=np.float32)


@dataclass
class Prepared:
    """Reference (train/val) and query aligned to one gene list, plus a JSON-able report.
    ``batches``: the names of the batch key's values (``Split.batch`` codes index them), or
    ``None`` without a batch key (then each dataset is one batch). ``query_train``: the query cells
    a semi-supervised model trains with, with their counts, when the query is larger than that
    sample (``pipeline.training_query``); ``query.counts`` is then None (labelling needs only X)."""

    train: Split
    val: Split
    query: Split
    classes: list[str]
    genes: list[str]
    report: dict[str, Any] = field(default_factory=dict)
    batches: list[str] | None = None
    query_train: Split | None = None
    # the genes as a biologist reads them where ``genes`` are Ensembl IDs and either dataset names their
    # symbols (``prepare.gene_symbols``); None where ``genes`` are symbols already
    gene_symbols: list[str] | None = None

    @property
    def n_genes(self) -> int:
        return len(self.genes)
