"""Data layer: reading, validation, gene matching, preprocessing and splits.

Typical use::

    from cellannot_core.data import read_dataset, prepare
    ref = read_dataset("ref.h5ad", name="reference")
    query = read_dataset("query_10x/", name="query")
    prep = prepare(ref, query, label_key="cell_type")
"""
from __future__ import annotations

from ._types import Prepared, Split, dense
from .genes import GeneMatch, match_genes
from .io import SUPPORTED_EXTENSIONS, SUPPORTED_FORMATS, read_dataset, read_uploaded, sanitize_filename
from .prepare import QC_KEYS, TARGET_SUM, batch_candidates, lognormalize, prepare, prepare_query, stratified_split, summarize_dataset
from .validate import validate_dataset
from .values import Counts, detect_value_state, get_counts

__all__ = [
    "SUPPORTED_FORMATS",
    "SUPPORTED_EXTENSIONS",
    "QC_KEYS",
    "TARGET_SUM",
    "batch_candidates",
    "Counts",
    "GeneMatch",
    "Prepared",
    "Split",
    "dense",
    "detect_value_state",
    "get_counts",
    "lognormalize",
    "match_genes",
    "prepare",
    "prepare_query",
    "read_dataset",
    "read_uploaded",
    "sanitize_filename",
    "stratified_split",
    "summarize_dataset",
    "validate_dataset",
]
