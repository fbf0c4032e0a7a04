"""Matching the genes of a reference and a query that may name them differently."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from cellannot_core._constants import DEFAULT_MIN_SHARED_GENES
from cellannot_core.errors import DataError

__all__ = ["GENE_ID_COLUMNS", "GeneMatch", "match_genes", "strip_ensembl_version", "is_ensembl"]

#: var columns that may hold another spelling of the genes (symbols or Ensembl IDs)
GENE_ID_COLUMNS = (
    "gene_ids", "gene_id", "ensembl", "ensembl_id", "ensembl_ids", "ensembl_gene_id", "feature_id",
    "gene_symbols", "gene_symbol", "feature_name", "gene_name", "gene_names", "symbol", "symbols",
    "name", "features",
)

_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?(_PAR_Y)?$")
_VERSION_RE = re.compile(r"\.\d+(_PAR_Y)?$")

# A case-insensitive match must beat the exact one by this factor to be chosen, so a few
# odd casings (C1orf / C1ORF) do not turn a same-species match into an "approximate" one.
_CI_MARGIN = 1.05


@dataclass
class GeneMatch:
    """Shared genes of a reference and a query.

    Attributes
    ----------
    ref_idx, query_idx
        int64 positions into the reference / query var, pairwise matched, in reference order.
    names
        The shared genes as the reference spells them (its var_names).
    approximate
        True when genes were matched ignoring case (e.g. mouse ``Cd3e`` to human ``CD3E``).
    mode
        ``"exact"``, ``"ensembl"`` or ``"case-insensitive symbols"``.
    n_ref, n_query
        Genes in each dataset.
    message
        One sentence for the user.
    ref_key, query_key
        Where the matched identifiers came from (``"var_names"`` or a var column).
    """

    ref_idx: np.ndarray
    query_idx: np.ndarray
    names: list[str]
    approximate: bool
    mode: str
    n_ref: int
    n_query: int
    message: str
    ref_key: str = "var_names"
    query_key: str = "var_names"

    @property
    def n_shared(self) -> int:
        return len(self.names)


def is_ensembl(names) -> bool:
    """Whether most of ``names`` (a sample) are Ensembl gene IDs."""
    vals = [str(v) for v in list(names)[:500]]
    return bool(vals) and sum(bool(_ENSEMBL_RE.match(v)) for v in vals) > 0.5 * len(vals)


def strip_ensembl_version(names) -> np.ndarray:
    """``ENSG00000141510.12`` -> ``ENSG00000141510``; other names unchanged."""
    return np.array([_VERSION_RE.sub("", v) if _ENSEMBL_RE.match(v) else v for v in map(str, names)], dtype=object)


def _var_of(x: ad.AnnData | pd.DataFrame) -> pd.DataFrame:
    return x.var if isinstance(x, ad.AnnData) else x


def _candidates(var: pd.DataFrame) -> list[tuple[str, np.ndarray, bool]]:
    """(where, normalised keys, is_ensembl) for var_names and every known id column."""
    out = []
    sources = [("var_names", var.index)]
    lower = {str(c).lower(): c for c in var.columns}
    sources += [(f"var['{lower[c]}']", var[lower[c]]) for c in GENE_ID_COLUMNS if c in lower]
    for where, values in sources:
        raw = pd.Series(values, dtype=object).astype(str).str.strip().to_numpy()
        ens = is_ensembl(raw)
        keys = strip_ensembl_version(raw) if ens else raw
        bad = pd.isna(pd.Series(values, dtype=object)).to_numpy() | np.isin(keys, ["", "nan", "None", "NA"])
        keys = keys.copy()
        keys[bad] = None
        out.append((where, keys, ens))
    return out


def _first_positions(keys: np.ndarray) -> dict:
    """key -> first position (duplicates: keep first; None keys skipped)."""
    pos: dict = {}
    for i, k in enumerate(keys):
        if k is not None and k not in pos:
            pos[k] = i
    return pos


def _pair(ref_keys: np.ndarray, q_keys: np.ndarray, upper: bool) -> tuple[np.ndarray, np.ndarray]:
    if upper:
        ref_keys = np.array([k.upper() if k is not None else None for k in ref_keys], dtype=object)
        q_keys = np.array([k.upper() if k is not None else None for k in q_keys], dtype=object)
    qpos = _first_positions(q_keys)
    rpos = _first_positions(ref_keys)
    r_idx = np.array(sorted(rpos.values()), dtype=np.int64)
    r_keep = [i for i in r_idx if ref_keys[i] in qpos]
    q_idx = np.array([qpos[ref_keys[i]] for i in r_keep], dtype=np.int64)
    return np.array(r_keep, dtype=np.int64), q_idx


_GENOME_PREFIX = re.compile(r"^((?:GRCh|GRCm|hg|mm)\d+)_+")  # GRCh38_CD3E, mm10___Cd3e


def _why_few_shared(rvar: pd.DataFrame, qvar: pd.DataFrame, ref_name: str, shared: int = 0) -> str:
    """The likeliest reason two gene lists share few names (``shared`` of them, as matched), as what to do."""
    for name, var in ((ref_name, rvar), ("query", qvar)):
        if len(var) and all(str(g).isdigit() for g in var.index[:100]):
            return (f"the {name}'s gene names are numbers (0, 1, 2 ...), anndata's default: set its var_names to the "
                    "gene symbols or Ensembl IDs")
    for name, var, other, other_name in ((ref_name, rvar, qvar, "query"), ("query", qvar, rvar, ref_name)):
        names = set(map(str, other.index))
        for col in var.columns:  # a column of names the other dataset uses, under a name not known for it
            if var[col].dtype.kind not in "OUS" and not isinstance(var[col].dtype, pd.CategoricalDtype):
                continue
            n = int(var[col].astype(str).isin(names).sum())
            # (only one that matches more: 1,166 was offered against 1,251 matched, found 2026-12-07)
            if n >= max(10, 0.5 * min(len(var), len(other))) and n > shared:
                return (f"the {name}'s var column {str(col)[:80]!r} holds {n:,} of the {other_name}'s gene names: set "
                        f"its var_names to them (adata.var_names = adata.var[{str(col)[:80]!r}], then "
                        "adata.var_names_make_unique()).")
    for name, var in ((ref_name, rvar), ("query", qvar)):  # Cell Ranger's reference of several genomes
        prefixes = pd.Series([m.group(1) for g in var.index[:2000] if (m := _GENOME_PREFIX.match(str(g)))])
        if len(prefixes) > 0.3 * min(len(var), 2000):
            shown = ", ".join(prefixes.value_counts().index[:3])
            return (f"the {name}'s gene names begin with a genome's name ({shown}): it was counted against a reference "
                    "of several genomes (a mixed-species or xenograft sample). Keep one genome's genes and take the prefix "
                    "off (adata = adata[:, adata.var_names.str.startswith('GRCh38_')].copy(); adata.var_names = "
                    "adata.var_names.str.replace('GRCh38_', '', regex=False)), then load it again.")
    kinds = {name: is_ensembl(var.index) for name, var in ((ref_name, rvar), ("query", qvar))}
    if len(set(kinds.values())) == 2:  # (neither holds the other kind in a column: match_genes tried them all)
        ids = next(n for n, e in kinds.items() if e)
        other = next(n for n, e in kinds.items() if not e)
        return (f"the {ids} names its genes by Ensembl IDs and the {other} by symbols, and neither holds the other "
                "kind in a var column: add one (e.g. the IDs as var['gene_ids'], as Cell Ranger's files carry them), "
                "then load it again.")
    hint = "check both use the same gene identifiers (symbols vs Ensembl IDs) and species"
    if ref_name == "reference" and min(len(rvar), len(qvar)) <= 5000:
        hint += ("; and if either was cut to its highly variable genes (sc.pp.highly_variable_genes(subset=True)), "
                 "give all its genes (adata.raw.to_adata(), or the data before the cut)")
    return hint + "."


def match_genes(
    ref: ad.AnnData | pd.DataFrame,
    query: ad.AnnData | pd.DataFrame,
    *,
    min_shared: int = DEFAULT_MIN_SHARED_GENES,
    min_fraction: float = 0.05,
    ref_name: str = "reference",
) -> GeneMatch:
    """Find the genes the reference and the query share.

    Identifiers are taken from the var_names and from var columns that hold another
    spelling (:data:`GENE_ID_COLUMNS`, e.g. ``gene_ids``, ``gene_symbols``, ``ensembl``),
    with Ensembl version suffixes removed. Every pair of identifier sources is tried,
    first exactly, then ignoring case; the pair matching the most genes wins (ties: exact
    before case-insensitive, var_names before columns). A case-insensitive match is only
    preferred when it finds 5% more genes than the best exact one, and is then reported as
    ``approximate`` (typically mouse vs human symbols). Duplicate identifiers: the first is
    kept.

    Parameters
    ----------
    ref, query
        AnnData objects or their var tables.
    min_shared
        Fewest shared genes accepted. The default (:data:`DEFAULT_MIN_SHARED_GENES`) is eased to half
        the smaller gene count, so small gene panels (and test data) that mostly match pass; any other
        value is required as given (until 2026-12-07 every value was eased, so an ask of 1,000 passed
        689 shared genes without a word).
    min_fraction
        Fewest shared genes as a fraction of the smaller gene count.
    ref_name
        What ``ref`` is called in the error (``"model"`` where it is a saved model's genes).

    Returns
    -------
    GeneMatch

    Raises
    ------
    DataError
        Too few shared genes.
    """
    rvar, qvar = _var_of(ref), _var_of(query)
    n_ref, n_query = len(rvar), len(qvar)
    best = None  # (n, ref_where, q_where, both_ensembl, r_idx, q_idx, upper)
    exact_best = 0
    for upper in (False, True):
        for r_where, r_keys, r_ens in _candidates(rvar):
            for q_where, q_keys, q_ens in _candidates(qvar):
                if upper and (r_ens or q_ens):
                    continue  # Ensembl IDs are upper-case already
                r_idx, q_idx = _pair(r_keys, q_keys, upper)
                n = len(r_idx)
                if not upper:
                    exact_best = max(exact_best, n)
                elif n <= _CI_MARGIN * exact_best:
                    continue
                if best is None or n > best[0]:
                    best = (n, r_where, q_where, r_ens and q_ens, r_idx, q_idx, upper)
    n, r_where, q_where, ens, r_idx, q_idx, upper = best
    smaller = min(n_ref, n_query)
    asked = min(min_shared, math.ceil(0.5 * smaller)) if min_shared == DEFAULT_MIN_SHARED_GENES else min_shared
    required = max(asked, math.ceil(min_fraction * smaller), 1)
    if n < required:
        raise DataError(
            f"only {n} of {n_ref} {ref_name} genes found in the query (need at least {required}); "
            + _why_few_shared(rvar, qvar, ref_name, n)
        )
    mode = "case-insensitive symbols" if upper else ("ensembl" if ens else "exact")
    what = {"exact": "exact symbols", "ensembl": "Ensembl IDs, versions ignored",
            "case-insensitive symbols": "symbols ignoring case: approximate, e.g. mouse vs human"}[mode]
    via = ""
    if (r_where, q_where) != ("var_names", "var_names"):
        via = f"; reference {r_where} vs query {q_where}"
    names = [str(v) for v in rvar.index[r_idx]]
    return GeneMatch(
        ref_idx=r_idx,
        query_idx=q_idx,
        names=names,
        approximate=bool(upper),
        mode=mode,
        n_ref=n_ref,
        n_query=n_query,
        message=f"{n} of {n_ref} reference genes found in the query ({what}{via})",
        ref_key=r_where,
        query_key=q_where,
    )
