"""Latent-space view: 2-D embeddings of reference + query (+ generated) latents, cached per run
on disk (``<run>/embeddings/*.npy`` via ``cached_embedding``) and in memory (``st.cache_data``)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from cellannot_core._constants import UNKNOWN, OutKeys
from cellannot_core.runs import RunDir
from ui.results import Run, load_arrays, load_obs
from ui.state import md

METHODS = {"umap": "UMAP", "tsne": "t-SNE", "pca": "PCA (fast)"}
COLOR_BY = {
    "dataset": "Dataset",
    "true": "True label",
    "predicted": "Predicted label",
    "confidence": "Confidence",
    "novelty": "Novelty score",
    "unknown": "Unknown or not",
    "group": "Unknown group",
}
CONTINUOUS = ("confidence", "novelty")
CALLED_UNKNOWN = "called Unknown"  # the "Unknown or not" colouring's name for the Unknown cells
#: the Dataset colouring's (the palette gave the query and the generated cells two olive greens, 2026-12-07)
DATASET_COLOURS = {"reference": "#bab0ac", "query": "#4c78a8", "generated": "#f58518"}
OTHER_CELLS = {"(reference)": "#d9d9d9", "(generated)": "#9e9e9e"}  # the predicted-label colouring's cells of no query
UNKNOWN_COLOURS = {"reference": "#d9d9d9", "generated": "#9e9e9e", "known type": "#4c78a8", CALLED_UNKNOWN: "#e45756"}
LAYOUTS = {
    "reference": "Reference map",
    "joint": "Joint",
}
LAYOUT_HELP = ("Reference map: the map is fitted on the reference cells and each query cell is placed by its "
               "nearest reference cells in the latent space (as Azimuth and scanpy's ingest show a mapped query): "
               "shared types overlap, and a novel population lands next to the reference cells it resembles most. "
               "Colour by novelty score to see which cells are far from every reference cell. Joint: reference and "
               "query embedded together, so the map shows how far the latent space itself integrates the two "
               "datasets.")
MAX_FIT = 20_000  # UMAP / t-SNE are fitted on at most this many cells; the rest are placed
MAX_POINTS = 50_000  # drawn points (WebGL); above: a seeded subsample, with a note
QUERY_VIEW_MAX = 30_000  # query cells embedded and drawn; a larger query shows a seeded subsample (noted)
EMBED_VERSION = "v1"


def query_view(n_query: int) -> np.ndarray:
    """Rows of the query the latent views embed and draw: all of them up to :data:`QUERY_VIEW_MAX`,
    else a seeded random subsample of that many (sorted), the same on every visit."""
    if n_query <= QUERY_VIEW_MAX:
        return np.arange(n_query)
    return np.sort(np.random.default_rng(0).choice(n_query, QUERY_VIEW_MAX, replace=False))


MEASURED = "query_latent_measured"  # the query as knn_class measured it (pipeline.view_arrays)
MEASURED_HELP = ("On: query cells are placed where the Unknown rule measured them, re-encoded with the study "
                 "shift their types share (technology, culture, stimulation) divided out, so a group far from "
                 "every reference cell here is what was called Unknown. Off: the model's own encoding of the "
                 "query, which its labels come from.")


def cache_path_key(method: str, with_generated: bool, layout: str = "joint", measured: bool = False) -> str:
    base = f"{method}_{'with_generated' if with_generated else 'real'}_seed0_fit{MAX_FIT}_{EMBED_VERSION}"
    base += f"_qv{QUERY_VIEW_MAX}" + ("_measured" if measured else "")
    return base if layout == "joint" else f"{layout}_{base}"  # joint: the key runs made before layouts used


def is_cached(run: Run, method: str, with_generated: bool, layout: str = "joint", measured: bool = False) -> bool:
    key = cache_path_key(method, with_generated, layout, measured)
    return (run.rd.path / "embeddings" / f"{key}.npy").is_file()


def has_measured(arrays: dict[str, np.ndarray]) -> bool:
    """Whether the run keeps the query as the Unknown rule measured it (the study shift removed)."""
    return MEASURED in arrays and len(arrays[MEASURED]) == len(arrays["query_latent"])


def query_latent(arrays: dict[str, np.ndarray], measured: bool) -> np.ndarray:
    """The query's latent codes to draw: as measured by the Unknown rule when asked and kept, else as encoded."""
    return arrays[MEASURED] if measured and has_measured(arrays) else arrays["query_latent"]


def layout_coordinates(ref: np.ndarray, query: np.ndarray, gen: np.ndarray | None, method: str,
                       layout: str) -> np.ndarray:
    """(reference + query [+ generated]) x 2 coordinates, in that order.

    ``"joint"``: every cell fitted together (generated cells too, so poor samples stay visible as
    islands; above :data:`MAX_FIT` real cells a subsample is fitted and the rest placed).
    ``"reference"``: fitted on the reference cells only (at most :data:`MAX_FIT`); query and
    generated cells are placed at the mean position of their nearest reference cells in the
    latent space (:func:`cellannot_core.embed.embed_onto`).
    """
    from cellannot_core.embed import embed, embed_onto, embed_with_extra

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, not {layout!r}")
    gen = gen if gen is not None and len(gen) else None
    if layout == "reference":
        extra = query if gen is None else np.vstack([query, gen])
        y_ref, y_extra = embed_onto(ref, extra, method=method, seed=0, max_cells=MAX_FIT)
        return np.vstack([y_ref, y_extra])
    X = np.vstack([ref, query])
    if gen is not None:
        y, y_gen = embed_with_extra(X, gen, method=method, seed=0, max_cells=MAX_FIT)
        return np.vstack([y, y_gen])
    return embed(X, method=method, seed=0, max_cells=MAX_FIT)


@st.cache_data(show_spinner=False, max_entries=16)
def coordinates(root: str, run_id: str, method: str, with_generated: bool, layout: str = "joint",
                measured: bool = False) -> np.ndarray:
    """:func:`layout_coordinates` of a run's arrays, cached on disk with the run; ``measured``: the
    query as the Unknown rule measured it (:func:`query_latent`)."""
    from cellannot_core.embed import cached_embedding

    arrays = load_arrays(root, run_id)
    gen = arrays.get("gen_latent") if with_generated else None
    gen = gen if gen is not None and len(gen) else None
    cache_dir = RunDir.open(root, run_id).path / "embeddings"
    measured = measured and has_measured(arrays)
    q = query_latent(arrays, measured)
    query = q[query_view(len(q))]
    return cached_embedding(cache_dir, cache_path_key(method, gen is not None, layout, measured),
                            lambda: layout_coordinates(arrays["ref_latent"], query, gen, method, layout))


@st.cache_data(show_spinner=False, max_entries=16)
def mixing(root: str, run_id: str, measured: bool = False) -> float:
    """:func:`cellannot_core.metrics.dataset_mixing` of the run's latent space (the query as drawn,
    :func:`query_latent`), over the query cells the run did not call Unknown."""
    from cellannot_core.metrics import dataset_mixing

    a = load_arrays(root, run_id)
    unknown = load_obs(root, run_id)[OutKeys.IS_UNKNOWN].to_numpy().astype(bool)
    return dataset_mixing(a["ref_latent"], query_latent(a, measured)[~unknown])


def mixing_note(value: float, layout: str, far: bool = False) -> tuple[str, str]:
    """``(level, text)`` for the page: how far the latent space integrates reference and query; ``far``: the run
    found the query far from the reference as a whole (its ``far_query`` warning), so the two lie apart because
    the query's cells are unlike the reference's, which the text must not call a study effect."""
    from cellannot_core.metrics import MIXED_ENOUGH

    if not np.isfinite(value):
        return "caption", ""
    text = (f"Reference-query mixing in this model's latent space: {value:.2f} (1 = the query's known cells have "
            "as many reference neighbours as if the two datasets were one, 0 = none).")
    if value >= MIXED_ENOUGH:
        return "caption", text
    if far:
        return "caption", (text + " The query lies far from the reference as a whole (the warning above), so "
                           "the two keep apart here as cells of different types would.")
    if layout == "joint":
        return "warning", (text + " This latent space keeps the two datasets apart (the studies differ more than "
                           "the model removed), so in the joint map the query forms its own islands even where its "
                           "types match the reference. The Reference map layout places each query cell by its "
                           "nearest reference cells.")
    return "caption", (text + " The latent space keeps the two datasets apart; this map places each query cell by "
                       "its nearest reference cells (switch to Joint to see the separation).")


def unknown_note(run: Run, layout: str) -> str | None:
    """On the Reference map, where the run's Unknown cells are drawn: each is placed beside the reference
    cells it resembles most, so a type the reference lacks shows as a streak at a known type's edge, not
    as a group (found 2026-12-07: 182 alpha cells, all Unknown, lay along the beta cells)."""
    from cellannot_core._constants import OutKeys

    n = int(run.obs[OutKeys.IS_UNKNOWN].sum()) if OutKeys.IS_UNKNOWN in run.obs else 0
    if layout != "reference" or n == 0:
        return None
    return (f"{n:,} query cells are called Unknown. This map places each beside the reference cells it resembles "
            "most, so a type the reference lacks does not show here as a group of its own: colour by *Novelty "
            "score* or *Unknown group*, or switch the layout to **Joint** to see whether they form one.")


def point_table(run: Run, coords: np.ndarray, with_generated: bool) -> pd.DataFrame:
    """One row per drawn cell: x, y, dataset, labels, confidence, novelty, Unknown, marker."""
    a = run.arrays
    classes = np.asarray(run.classes, dtype=object)
    view = query_view(len(a["query_latent"]))
    n_ref, n_q = len(a["ref_y"]), len(view)
    gen = with_generated and "gen_y" in a and len(a["gen_y"]) > 0
    n_gen = len(a["gen_y"]) if gen else 0
    obs = run.obs.iloc[view]
    q_true = run.query_labels[view] if run.query_labels is not None else np.full(n_q, "(query, unlabelled)")
    q_unknown = obs[OutKeys.IS_UNKNOWN].to_numpy().astype(bool)
    parts = {
        "dataset": ["reference"] * n_ref + ["query"] * n_q + ["generated"] * n_gen,
        "true": list(classes[a["ref_y"]]) + list(q_true) + (list(classes[a["gen_y"]]) if gen else []),
        "predicted": ["(reference)"] * n_ref + list(obs[OutKeys.LABEL].astype(str)) + ["(generated)"] * n_gen,
        "confidence": np.r_[np.full(n_ref, np.nan), obs[OutKeys.CONFIDENCE].to_numpy(float), np.full(n_gen, np.nan)],
        "novelty": np.r_[np.full(n_ref, np.nan), obs[OutKeys.OOD_SCORE].to_numpy(float), np.full(n_gen, np.nan)],
        "unknown": ["reference"] * n_ref + list(np.where(q_unknown, UNKNOWN, "known type")) + ["generated"] * n_gen,
        "group": ["reference"] * n_ref + group_names(run, view, q_unknown) + ["generated"] * n_gen,
        "marker": ["real"] * (n_ref + n_q) + ["generated"] * n_gen,
    }
    df = pd.DataFrame(parts)
    df["x"], df["y"] = coords[: len(df), 0], coords[: len(df), 1]
    return df


def group_names(run: Run, view: np.ndarray, unknown: np.ndarray) -> list[str]:
    """Per drawn query cell, its Unknown group as the Calibration page lists it ("group 1: 240 cells
    like FCGR3A Mono"), "known type" or "Unknown, in no group"; runs made before groups were
    recorded say so."""
    members = run.arrays.get("query_unknown_group")
    if members is None or len(members) != len(run.obs):
        return ["(not recorded for this run)"] * len(view)
    rows = run.card.get("unknown_groups") or []
    names = [f"group {j + 1}: {r['n_cells']:,} cells like {r['predicted_as']}" for j, r in enumerate(rows)]
    m = np.asarray(members)[view]
    return [names[g] if 0 <= g < len(names) else (f"{UNKNOWN}, in no group" if u else "known type")
            for g, u in zip(m, unknown)]


def figure(df: pd.DataFrame, color_by: str, method: str, classes: list[str], threshold: float | None = None,
           type_colours: dict[str, str] | None = None) -> Any:
    """The page's scatter; ``threshold``: the run's Unknown threshold, the middle of the novelty colouring's
    diverging scale (red: beyond it; the colour bar marked nothing, found 2026-12-07); ``type_colours``: the run's
    colour of each type (:attr:`ui.results.Run.colours`), as its other pages draw them."""
    from cellannot_core.plots import latent_scatter

    cont = color_by in CONTINUOUS
    cats, colours, values = classes if color_by in ("true", "predicted") else None, None, df[color_by].to_numpy()
    if color_by in ("true", "predicted"):
        colours = dict(type_colours or {})
    if color_by == "predicted":  # the reference (and generated cells) in greys underneath: they have no prediction,
        cats = [*OTHER_CELLS, *classes]  # and were drawn in a type's colour over the query's cells (2026-12-07)
        colours |= OTHER_CELLS
    if color_by == "dataset":  # the reference drawn first, underneath: the query is what the view is for
        cats, colours = ["reference", "query", "generated"], DATASET_COLOURS
    if color_by == "unknown":  # the Unknown cells on top in a colour of their own, not the grey of "no value" drawn
        values = np.where(values == UNKNOWN, CALLED_UNKNOWN, values)  # under the reference (found 2026-12-07)
        cats, colours = ["reference", "generated", "known type", CALLED_UNKNOWN], UNKNOWN_COLOURS
    hover = df[["dataset", "true", "predicted"]].rename(columns={"true": "true label", "predicted": "predicted"})
    name = METHODS[method].split(" ")[0]
    mid = float(threshold) if color_by == "novelty" and threshold is not None and np.isfinite(threshold) else None
    title = COLOR_BY[color_by] + ("" if mid is None else f" (Unknown above {mid:.3g})")
    return latent_scatter(df[["x", "y"]].to_numpy(), values, symbol=df["marker"].to_numpy(),
                          hover=hover, continuous=cont, max_points=MAX_POINTS, color_title=title, color_mid=mid,
                          categories=cats, color_map=colours, title=f"Latent space ({name})", x_title=f"{name} 1",
                          y_title=f"{name} 2")


def fmt_quality(v) -> str:
    """A latent-quality number for st.metric (``—`` when missing or undefined)."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "—"
    return f"{v:.3f}" if np.isfinite(v) else "—"


@st.cache_data(show_spinner=False, max_entries=16)
def placement(root: str, run_id: str) -> dict[str, Any]:
    """Where the run's generated cells sit among the real reference cells (latent space)."""
    from cellannot_core.metrics import generated_placement

    a = load_arrays(root, run_id)
    return generated_placement(a["gen_latent"], a["gen_y"], a["ref_latent"], a["ref_y"])


def placement_note(p: dict[str, Any], n_classes: int, classes: list[str] | None = None) -> tuple[str, str]:
    """``(level, text)`` for the page: "warning" when the samples are poor, over all or of some classes (named
    from ``classes`` where the labels are their codes), else "caption"."""
    agree, ratio = p.get("class_agreement", float("nan")), p.get("distance_ratio", float("nan"))
    text = (f"Generated cells: {agree:.0%} land among real reference cells of their own class (chance: about "
            f"{1 / max(n_classes, 1):.0%}); their distance to the nearest real cell is {ratio:.1f}x the real cells' "
            "own spacing.")
    if p.get("apart"):
        return "warning", ("This model's generated cells sit apart from every real cluster, so they show little about "
                           "the classes. " + text + " The Reference map draws each on its nearest reference cells, "
                           "where they pile up; the Joint layout shows them apart.")
    if agree < 0.5:
        return "warning", ("Most of this model's generated cells land among real cells of other classes: its samples "
                           "are poor. " + text)
    poor = sorted((v, k) for k, v in (p.get("by_class") or {}).items() if v < 0.5)
    if poor:
        def name(k: str) -> str:
            return str(classes[int(k)]) if classes is not None and k.lstrip("-").isdigit() and 0 <= int(k) < len(
                classes) else k

        return "warning", (text + " But most generated cells of " + ", ".join(f"{md(name(k))} ({v:.0%} among its own)"
                                                                             for v, k in poor[:5])
                           + (f" and {len(poor) - 5} more" if len(poor) > 5 else "")
                           + " land among real cells of other classes: "
                           + ("that class's samples are poor." if len(poor) == 1 else "those classes' samples are poor."))
    return "caption", text
