"""Why a cell got its label, for every model: the reference's marker genes of the predicted
type, and whether the query cells given that type express them.

Model-agnostic on purpose (TabNet's masks, where present, are on the Explain page beside it):
the evidence is in the data the model was trained on. For each reference class ``c``, its
markers are the genes whose mean log-expression in ``c`` most exceeds the highest mean among the
other classes. A group of query cells labelled ``c`` *supports* the label on a marker when its
mean reaches half of the reference class's, and *contradicts* it otherwise; a group that lacks
most of ``c``'s markers was probably labelled ``c`` for want of a better class.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from .data.validate import zero_total_cells
from ._constants import str_array

SUPPORT_FRACTION = 0.5  # a marker supports the label when the group's mean reaches this share of the class's


def class_means(X: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean of the rows of ``X`` per class ``0..n_classes-1`` (NaN rows for absent classes)."""
    out = np.full((n_classes, X.shape[1]), np.nan)
    for c in range(n_classes):
        rows = np.asarray(y) == c
        if rows.any():  # accumulate in float64 without copying the whole matrix
            out[c] = X[rows].mean(0, dtype=np.float64)
    return out.astype(np.float32)


def class_markers(ref_mean: np.ndarray, genes: Sequence[str], classes: Sequence[str], *, n: int = 10) -> dict[str, list[int]]:
    """Per class, the indices of its ``n`` top markers (class mean minus the largest other-class
    mean, highest first; only genes where that margin is positive)."""
    m = np.nan_to_num(np.asarray(ref_mean, dtype=np.float64), nan=-np.inf)
    out = {}
    for c, name in enumerate(classes):
        others = np.delete(m, c, axis=0)
        margin = m[c] - (others.max(0) if len(others) else 0.0)
        order = [int(i) for i in np.argsort(-margin) if np.isfinite(margin[i]) and margin[i] > 0][:n]
        out[str(name)] = order
    return out


def marker_evidence(ref_mean: np.ndarray, group_mean: np.ndarray, genes: Sequence[str], classes: Sequence[str],
                    label: str, *, n: int = 10) -> pd.DataFrame:
    """For the query cells labelled ``label`` (their mean ``group_mean`` over the model genes):
    each of the class's reference markers with its reference mean, the highest other class's
    mean, the group's mean and ``supports`` (the group reaches :data:`SUPPORT_FRACTION` of the
    class mean)."""
    c = list(map(str, classes)).index(str(label))
    idx = class_markers(ref_mean, genes, classes, n=n)[str(label)]
    others = np.delete(np.asarray(ref_mean, dtype=np.float64), c, axis=0)
    rows = []
    for i in idx:
        ref_c = float(ref_mean[c, i])
        grp = float(group_mean[i])
        rows.append({"gene": str(genes[i]), "reference_class_mean": ref_c,
                     "other_classes_max": float(np.nanmax(others[:, i])) if len(others) else float("nan"),
                     "query_group_mean": grp, "supports": bool(grp >= SUPPORT_FRACTION * ref_c)})
    return pd.DataFrame(rows, columns=["gene", "reference_class_mean", "other_classes_max", "query_group_mean",
                                       "supports"])


#: a query whose predicted types, weighted by their cells, have fewer of their reference markers highest in the
#: cells given them than this share is warned of: most of each type's markers are not where its label says
MARKER_AGREEMENT_MIN = 0.5
MARKER_GENES = 10  # a reference class's markers that marker_agreement checks
#: the agreement measured (bench/far_query.py, BENCHMARKS.md "One tissue across species"): queries of the
#: reference's types (mouse -> human pancreas included), and of another tissue; the ranges overlap
MARKER_AGREEMENT_OWN_TYPES, MARKER_AGREEMENT_OTHER_TISSUE = (0.61, 0.99), (0.23, 0.65)


def marker_agreement(ref_mean: np.ndarray, query_mean: np.ndarray, counts: Sequence[int], classes: Sequence[str], *,
                     n: int = MARKER_GENES, min_cells: int = 10) -> dict[str, Any] | None:
    """Do the query's predicted types express their reference markers where the labels put them?

    For each class with ``min_cells`` query cells given it (at least two such classes), the share of its ``n``
    reference markers (:func:`class_markers`) on which those cells' mean (``query_mean``, class x gene) is higher
    than that of the cells given each other such class; ``share`` is the mean over the classes weighted by their
    cells. It compares query cells with query cells, so a shift every cell of the query shares (a technology,
    a species' gene-wise expression) does not move it. Measured (2026-12-07, `bench/far_query.py`, the labels of
    `logreg` and of the default): pairs of one tissue 0.69-0.99 (mouse -> human pancreas 0.61-0.67, scripts
    outside the repository), pairs of two tissues 0.23-0.65, where labels are given for want of a better type.
    None when fewer than two classes have enough cells or none has markers."""
    counts = np.asarray(counts, dtype=np.int64)
    big = [c for c in range(len(classes)) if counts[c] >= min_cells and np.isfinite(query_mean[c]).all()]
    if len(big) < 2:
        return None
    markers = class_markers(ref_mean, [], [str(c) for c in classes], n=n)
    q = np.asarray(query_mean, dtype=np.float64)
    by_class, weights = {}, []
    for c in big:
        idx = markers[str(classes[c])]
        if not idx:
            continue
        others = np.max(q[[o for o in big if o != c]][:, idx], axis=0)
        by_class[str(classes[c])] = round(float(np.mean(q[c, idx] > others)), 4)
        weights.append(counts[c])
    if not by_class:
        return None
    share = float(np.average(list(by_class.values()), weights=weights))
    return {"share": round(share, 4), "n_classes": len(by_class), "by_class": by_class}


def nearest_types(z: np.ndarray, ref_latent: np.ndarray, ref_y: np.ndarray, classes: Sequence[str], *,
                  k: int = 10, quantile: float = 0.95) -> pd.DataFrame:
    """Where one cell sits among the reference types in the model's latent space.

    For each type: its share of the cell's ``k`` nearest reference cells, the cell's mean
    distance to the type's ``k`` nearest cells, and that distance over the type's own usual one
    (the ``quantile`` of the same distance for the type's reference cells to the rest of the
    type): at most 1 = as close as the type's own cells usually are; well above 1 = far from it.
    Sorted by that ratio.
    """
    from sklearn.neighbors import NearestNeighbors

    z = np.asarray(z, dtype=np.float64).reshape(1, -1)
    r, y = np.asarray(ref_latent, dtype=np.float64), np.asarray(ref_y)
    kk = int(min(k, len(r)))
    _, idx = NearestNeighbors(n_neighbors=kk).fit(r).kneighbors(z)
    rows = []
    for c, name in enumerate(classes):
        rc = r[y == c]
        if len(rc) < 2:
            continue
        kc = int(min(k, len(rc) - 1))
        nn = NearestNeighbors(n_neighbors=kc + 1).fit(rc)
        d_cell = float(nn.kneighbors(z, n_neighbors=kc)[0].mean())
        d_own = nn.kneighbors(rc, n_neighbors=kc + 1)[0][:, 1:].mean(1)  # leave the cell itself out
        usual = float(np.quantile(d_own, quantile))
        rows.append({"type": str(name), "share_of_neighbours": float(np.mean(y[idx[0]] == c)), "distance": d_cell,
                     "usual_distance": usual, "ratio": d_cell / usual if usual > 0 else float("inf")})
    return pd.DataFrame(rows).sort_values("ratio").reset_index(drop=True)


# Gene programs that mark a cell *state* rather than a type (human symbols; mouse ones match case-
# insensitively): a group of Unknown cells whose genes up are mostly one of these is likely a known
# type in a state the reference lacks. Names or, ending in "*", prefixes.
STATE_PROGRAMS: dict[str, tuple[str, ...]] = {
    "heat shock / stress": ("HSPA*", "HSPH1", "HSPD1", "HSPE1", "HSPB1", "HSP90*", "DNAJ*", "UBB", "UBC", "CACYBP",
                            "BAG3", "CHORDC1", "STIP1"),
    "immediate early (dissociation, activation)": ("FOS", "FOSB", "JUN", "JUNB", "JUND", "EGR1", "EGR2", "EGR3",
                                                   "IER2", "IER3", "IER5", "ATF3", "NR4A1", "NR4A2", "NR4A3",
                                                   "ZFP36", "ZFP36L1", "DUSP1", "NFKBIA", "PPP1R15A", "CYR61",
                                                   "CCN1", "KLF2", "KLF4", "KLF6", "CD69"),
    "interferon response": ("ISG15", "ISG20", "IFI6", "IFI27", "IFI35", "IFI44", "IFI44L", "IFIT*", "IFITM*",
                            "MX1", "MX2", "OAS1", "OAS2", "OAS3", "OASL", "RSAD2", "STAT1", "IRF7", "XAF1",
                            "HERC5", "CXCL10", "CXCL11", "LY6E", "BST2", "EPSTI1", "SAMD9L", "PLSCR1", "TNFSF10",
                            "APOBEC3A", "SIGLEC1", "GBP1", "GBP4", "GBP5", "SP110", "PARP9", "DDX58", "IFIH1"),
    "cell cycle": ("MKI67", "TOP2A", "CDK1", "CCNB1", "CCNB2", "CCNA2", "BIRC5", "TYMS", "PCNA", "MCM*", "STMN1",
                   "CENPF", "UBE2C", "NUSAP1", "PTTG1", "CDC20", "RRM2", "TK1", "HIST1H*"),
    "mitochondrial": ("MT-*",),
    "ribosomal": ("RPL*", "RPS*"),
}
STATE_MIN_GENES = 2  # genes of one program among a group's genes up to name it
# programs of sample handling, not of biology: enzymatic dissociation at 37 C raises heat-shock and
# immediate-early genes in every cell type (van den Brink et al. 2017, Nat Methods 14:935); the
# interferon response, the cell cycle and ribosomal content are biology and also tell types apart
# (IFITM genes mark FCGR3A monocytes), so they are named but never accepted on
HANDLING_PROGRAMS = ("heat shock / stress", "immediate early (dissociation, activation)")
HANDLING_MIN_MARKERS = 0.8  # share of its type's top-10 reference markers a handling-state group keeps


def state_programs(genes: Sequence[str]) -> list[str]:
    """The :data:`STATE_PROGRAMS` with at least :data:`STATE_MIN_GENES` of ``genes`` (a group's
    genes up), most genes first."""
    up = [str(g).upper() for g in genes]
    hits = []
    for name, members in STATE_PROGRAMS.items():
        exact = {m for m in members if not m.endswith("*")}
        prefixes = tuple(m[:-1] for m in members if m.endswith("*"))
        n = sum(g in exact or g.startswith(prefixes) for g in up)
        if n >= STATE_MIN_GENES:
            hits.append((n, name))
    return [name for _, name in sorted(hits, key=lambda h: -h[0])]


GROUP_MIN_CELLS = 10  # an Unknown group smaller than this is not described
GROUP_MIN_ACCEPTED = 20  # accepted query cells of the class needed to compare a group with them
GROUP_MAX = 20  # groups described in a run card (the largest)


def _means_of_rows(X: Any, masks: list[np.ndarray], *, skip_empty: bool = False) -> tuple[list[np.ndarray], list[int]]:
    """The mean row of ``X`` over each boolean mask, and the rows each mean is over: ``X`` a matrix
    (dense or sparse), or a function returning an iterator of ``(first row, chunk)`` (a query read in
    chunks: one pass). ``skip_empty``: rows that are all zero are left out (a cell without counts on
    these genes says nothing about them)."""
    if not callable(X):
        rows = [np.flatnonzero(m) for m in masks]
        if skip_empty:
            nonzero = ~zero_total_cells(X)
            rows = [r[nonzero[r]] for r in rows]
        return ([np.asarray(X[r].mean(0, dtype=np.float64)).ravel() if len(r) else np.zeros(X.shape[1]) for r in rows],
                [len(r) for r in rows])
    sums, n = None, np.zeros(len(masks), dtype=np.int64)
    for start, chunk in X():
        if sums is None:
            sums = np.zeros((len(masks), chunk.shape[1]))
        nonzero = ~zero_total_cells(chunk) if skip_empty else None
        for j, m in enumerate(masks):
            rows = np.flatnonzero(m[start:start + chunk.shape[0]])
            if skip_empty:
                rows = rows[nonzero[rows]]
            if len(rows):
                sums[j] += np.asarray(chunk[rows].sum(0, dtype=np.float64)).ravel()
                n[j] += len(rows)
    if sums is None:
        return [], []
    return [sums[j] / max(1, int(n[j])) for j in range(len(masks))], [int(v) for v in n]


def unknown_groups(X: Any, groups: np.ndarray, is_unknown: np.ndarray, pred: np.ndarray, classes: Sequence[str],
                   genes: Sequence[str], ref_mean: np.ndarray, *, n_genes: int = 8) -> list[dict[str, Any]]:
    """What sets each group of Unknown cells apart from the type it looks most like.

    A rejection rule can tell that a group of query cells is unlike every reference type; it
    cannot tell a type the reference lacks from a *state* of a known type the reference lacks
    (dissociation stress, activation, interferon response: pbmc3k -> kang_ctrl in the stress suite
    rejects kang CD4 T clusters whose top genes are UBB / UBC / CACYBP / NFKBIA and GAPDH / SRGN /
    ANXA1). The genes tell, and a biologist reads them at a glance.

    ``X``: the query's log-normalised expression (a matrix, or for a query read in chunks a
    function returning an iterator of ``(first row, chunk)``: read once). ``groups``: per cell, the
    query cluster the rule decided on (or any grouping, e.g. the predicted class). For each group
    with at least :data:`GROUP_MIN_CELLS` Unknown cells, most of its cells Unknown: the class most
    of them were predicted as (``pred``, indices into ``classes``), and the ``n_genes`` genes most
    raised and most lowered (``genes_up`` / ``up_by``, ``genes_down`` / ``down_by``: difference of
    mean log-normalised expression) against the *accepted* query cells of that class when there
    are :data:`GROUP_MIN_ACCEPTED` of them (same study, so its shift cancels), else against the
    reference cells of that class (``ref_mean``, the study shift included), and the state programs
    among its genes up (:func:`state_programs`). Largest first, at most :data:`GROUP_MAX`. Cells
    without counts on these genes are called Unknown too (nothing places them) but say nothing about
    a group's genes: the means leave them out, ``n_without_counts`` counts them, and a group with
    fewer than :data:`GROUP_MIN_CELLS` other cells lists no genes.

    ``cluster``: the group's value in ``groups`` (not its position among the rows, which is what
    ``obs["cellannot_unknown_group"]`` holds: named ``group`` until 2026-12-07, and read as that code).
    ``markers_kept`` of ``n_markers``: the class's top reference markers (:func:`class_markers`)
    on which the group reaches :data:`SUPPORT_FRACTION` of the compared cells' mean.
    ``handling_state``: compared with accepted query cells, a :data:`HANDLING_PROGRAMS` program
    among the genes up and :data:`HANDLING_MIN_MARKERS` of the markers kept: a known type after
    a rougher dissociation, which ``pipeline.accept_handling_states`` accepts as that type.
    """
    groups = np.asarray(groups)
    unk = np.asarray(is_unknown, dtype=bool)
    pred = np.asarray(pred, dtype=np.int64)
    genes = np.asarray(genes, dtype=object)
    names, code = np.unique(groups, return_inverse=True)
    size, n_unk = np.bincount(code, minlength=len(names)), np.bincount(code[unk], minlength=len(names))
    keep = np.flatnonzero((n_unk >= GROUP_MIN_CELLS) & (2 * n_unk >= size))
    keep = keep[np.argsort(-n_unk[keep], kind="stable")][:GROUP_MAX]
    found = []  # (group, its Unknown cells, the class they look most like), largest first
    for j in keep:
        u = (code == j) & unk
        found.append((names[j], u, int(np.bincount(pred[u], minlength=len(classes)).argmax())))
    markers = class_markers(ref_mean, genes, classes)
    accepted = {c: (pred == c) & ~unk for c in {f[2] for f in found}}
    compared = {c: a for c, a in accepted.items() if a.sum() >= GROUP_MIN_ACCEPTED}
    means, used = _means_of_rows(X, [f[1] for f in found] + list(compared.values()), skip_empty=True) \
        if found else ([], [])
    base_of = {c: (m, k) for c, m, k in zip(compared, means[len(found):], used[len(found):])
               if k >= GROUP_MIN_ACCEPTED}
    rows = []
    for (g, u, c), mean, k in zip(found, means, used):
        if c in base_of:
            base, against = base_of[c][0], f"the query's {base_of[c][1]} accepted {classes[c]} cells"
        else:
            base, against = np.nan_to_num(np.asarray(ref_mean[c], dtype=np.float64)), \
                f"the reference's {classes[c]} cells (too few accepted in the query)"
        d = _difference(mean, base, markers[str(classes[c])], genes, n_genes)
        if k < GROUP_MIN_CELLS:  # mostly cells without counts on these genes: the rest are too few to describe
            d = {**d, "genes_up": [], "up_by": [], "genes_down": [], "down_by": [], "state_programs": [],
                 "markers_kept": 0}
        rows.append({"cluster": int(g) if np.issubdtype(groups.dtype, np.integer) else str(g), "n_cells": int(u.sum()),
                     "n_without_counts": int(u.sum()) - k,
                     "predicted_as": str(classes[c]), "compared_with": against, **d,
                     "handling_state": bool(c in base_of and k >= GROUP_MIN_CELLS and d["n_markers"]
                                            and d["markers_kept"] >= HANDLING_MIN_MARKERS * d["n_markers"]
                                            and any(p in HANDLING_PROGRAMS for p in d["state_programs"]))})
    return rows


def _difference(mean: np.ndarray, base: np.ndarray, markers: list[int], genes: np.ndarray,
                n_genes: int) -> dict[str, Any]:
    """A group's mean expression against the cells it is compared with: the ``n_genes`` genes most
    raised and lowered, the state programs among the raised ones and the class markers it keeps at
    :data:`SUPPORT_FRACTION` of the compared cells' level."""
    diff = mean - base
    order = np.argsort(-diff)
    up = [int(i) for i in order[:n_genes] if diff[i] > 0]
    down = [int(i) for i in order[::-1][:n_genes] if diff[i] < 0]
    kept = int(np.sum(mean[markers] >= SUPPORT_FRACTION * base[markers])) if markers else 0
    return {"genes_up": [str(genes[i]) for i in up], "up_by": [round(float(diff[i]), 2) for i in up],
            "genes_down": [str(genes[i]) for i in down], "down_by": [round(float(diff[i]), 2) for i in down],
            "state_programs": state_programs([genes[i] for i in up]), "markers_kept": kept, "n_markers": len(markers)}


def shifted_class_evidence(X: Any, pred: np.ndarray, is_unknown: np.ndarray, classes: Sequence[str],
                           genes: Sequence[str], ref_mean: np.ndarray, shifted: Sequence[int], *,
                           n_genes: int = 8) -> list[dict[str, Any]]:
    """What the query cells accepted as a class *measured against its own shift* look like.

    ``knn_class`` (step 3) measures a predicted class none of whose query clusters lies as near the
    reference as the query's other types against that class's own shift: a known type another study
    moved as a whole keeps its label (pbmc3k -> kang: monocytes). A type the reference lacks that is
    predicted as a class the query does not have is accepted the same way, and the rule cannot tell
    the two apart (bench/novelty_stress.py: kang_ctrl -> kang_sce without CD14 monocytes, the
    query's monocytes accepted as NK, a type that query lacks). The genes can: for each class in
    ``shifted`` with at least :data:`GROUP_MIN_CELLS` accepted cells, those cells' genes most raised
    and lowered against the reference's cells of the class (``ref_mean``; the study's shift
    included, since no query cells of the class are near the reference to compare with), the state
    programs among them and the class's markers kept (:func:`_difference`). ``X`` as in
    :func:`unknown_groups` (read once). Largest first."""
    unk = np.asarray(is_unknown, dtype=bool)
    pred = np.asarray(pred, dtype=np.int64)
    genes = np.asarray(genes, dtype=object)
    masks = {int(c): (pred == c) & ~unk for c in shifted}
    masks = {c: m for c, m in masks.items() if m.sum() >= GROUP_MIN_CELLS}
    if not masks:
        return []
    markers = class_markers(ref_mean, genes, classes)
    rows = []
    for (c, m), mean in zip(masks.items(), _means_of_rows(X, list(masks.values()))[0]):
        base = np.nan_to_num(np.asarray(ref_mean[c], dtype=np.float64))
        rows.append({"class": str(classes[c]), "n_cells": int(m.sum()), "n_predicted": int((pred == c).sum()),
                     "compared_with": f"the reference's {classes[c]} cells",
                     **_difference(mean, base, markers[str(classes[c])], genes, n_genes)})
    return sorted(rows, key=lambda r: -r["n_cells"])


def unknown_group_members(groups: np.ndarray, is_unknown: np.ndarray, rows: list[dict[str, Any]]) -> np.ndarray:
    """Per cell, the position in ``rows`` (:func:`unknown_groups`, same ``groups`` and
    ``is_unknown``) of the described group it is an Unknown cell of; -1 for the others."""
    groups = np.asarray(groups)
    unk = np.asarray(is_unknown, dtype=bool)
    out = np.full(len(unk), -1, dtype=np.int32)
    names = str_array(groups)
    for j, r in enumerate(rows):
        out[(names == str(r["cluster"])) & unk] = j
    return out


def accepted_labels(labels: np.ndarray, raw: np.ndarray, members: np.ndarray, accepted: Sequence[int],
                    short_classes: dict[int, str] | None = None) -> np.ndarray:
    """``labels`` with the cells of the ``accepted`` Unknown groups (codes in ``members``, the
    ``obs[..._unknown_group]`` column) given the type each looks most like (``raw``, their raw label),
    and those of the groups in ``short_classes`` the type given there (it wins where a group is in
    both): the biologist's call that a group is a state of a known type (the Calibration page's, and
    :func:`cellannot_core.api.accept_groups`)."""
    members = np.asarray(members)
    out = np.where(np.isin(members, list(accepted)), str_array(raw), str_array(labels))
    for j, cls in (short_classes or {}).items():
        out = np.where(members == j, str(cls), out)
    return out


#: a query sample holding at most this share of the cells its size would give an Unknown group lacks the
#: group (:func:`sample_evidence`)
ABSENT_SHARE = 0.1
#: the shortage that names a type, as a multiple of what a state of that type would leave (:func:`sample_evidence`)
SHORT_RANGE = (0.5, 2.0)


def sample_evidence(member: np.ndarray, codes: np.ndarray, names: Sequence[str], labels: np.ndarray,
                    is_unknown: np.ndarray, *, min_cells: int) -> dict[str, Any]:
    """Where an Unknown group is among the query's samples, and which known type it may stand in for.

    In a query of control and treated samples, a treated *state* of a known type (interferon-stimulated
    monocytes) is a group found only in the treated samples whose cells are missing from that type
    there; a type the reference lacks adds cells instead. ``member``: the group's cells; ``codes``:
    each cell's sample (-1: none), into ``names``; ``labels``: each cell's label, read for the accepted
    cells (not ``is_unknown``). The group is absent from a sample of ``min_cells`` cells or more holding
    at most :data:`ABSENT_SHARE` of the cells the sample's size would give it. When it is absent from
    some (B) and present in others (A), ``short_class`` is the known type whose accepted cells A lacks
    against B's make-up, ``short_by = p_B(c) N_A - n_A(c)`` (``N_A`` accepted cells in A, ``n_A(c)``
    those labelled ``c``), by about what ``n`` cells of ``c`` turned into the group would leave:
    ``state_would_leave = (1 - p_B(c)) n`` (``n`` the group's cells in A), within :data:`SHORT_RANGE`
    of it; these three keys only when a type is short so. A hint, not a decision: a type the reference lacks that is
    split by the design (control cells in one group, treated in another) names a type too once its
    control half was accepted as one: on the novelty stress suite (seeds 0 / 1, its queries with samples)
    30 / 29 of 91 / 77 Unknown groups were absent from some sample and 22 / 16 named a type, the right one
    for 1,597 of 3,530 / 1,497 of 2,788 of their cells (``bench/novelty_stress.py`` prints the tally; README,
    "Where a group is among the query's samples")."""
    member = np.asarray(member, dtype=bool)
    codes = np.asarray(codes, dtype=np.int64)
    unk = np.asarray(is_unknown, dtype=bool)
    out: dict[str, Any] = {"absent_from": []}
    has = codes >= 0
    size = np.bincount(codes[has], minlength=len(names))
    n = int((member & has).sum())
    if n == 0 or size.sum() == 0:
        return out
    held = np.bincount(codes[member & has], minlength=len(names))
    absent = (size >= min_cells) & (held <= ABSENT_SHARE * n * size / size.sum())
    present = ~absent & (size > 0)
    out["absent_from"] = [str(names[s]) for s in np.flatnonzero(absent)]
    if not absent.any():
        return out
    in_a, in_b = has & present[np.maximum(codes, 0)], has & absent[np.maximum(codes, 0)]
    acc = ~unk
    classes, lab = np.unique(str_array(np.asarray(labels, dtype=object)[acc]), return_inverse=True)
    if not len(classes):
        return out
    n_a = np.bincount(lab[in_a[acc]], minlength=len(classes))
    n_b = np.bincount(lab[in_b[acc]], minlength=len(classes))
    n_in = int((member & in_a).sum())
    if n_b.sum() == 0 or n_a.sum() == 0 or n_in == 0:
        return out
    p_b = n_b / n_b.sum()
    short = p_b * n_a.sum() - n_a
    ratio = short / np.maximum((1 - p_b) * n_in, 1e-9)
    c = int(np.argmax(ratio))
    if SHORT_RANGE[0] <= ratio[c] <= SHORT_RANGE[1]:
        out.update(short_class=str(classes[c]), short_by=int(round(short[c])),
                   state_would_leave=int(round((1 - p_b[c]) * n_in)))
    return out
