"""Latent space: UMAP / t-SNE / PCA of the model's latent space, reference + query (+ generated)."""
import streamlit as st

from ui import calibration as cal
from ui import latent as lat
from ui import results as res
from ui.state import WidgetKeys, init_state
from ui.widgets import plot

init_state()
st.title("Latent space")
run = res.require_run()
res.rejection_warnings(run, "latent")
if note := cal.decisions_note(run):  # (said on Label transfer only, found 2026-12-07)
    st.info(note, icon=":material/tune:")
has_gen = "gen_latent" in run.arrays and len(run.arrays["gen_latent"]) > 0

can_measure = lat.has_measured(run.arrays)
c0, c1, c2, c3 = st.columns([2, 2, 2, 2], vertical_alignment="bottom")
layout = c0.radio("Layout", list(lat.LAYOUTS), format_func=lat.LAYOUTS.get, horizontal=True,
                  key=WidgetKeys.EMBED_LAYOUT, help=lat.LAYOUT_HELP)
method = c1.radio("Embedding", list(lat.METHODS), format_func=lat.METHODS.get, horizontal=True,
                  key=WidgetKeys.EMBED_METHOD)
color_by = c2.selectbox("Colour by", list(lat.COLOR_BY), format_func=lat.COLOR_BY.get, key=WidgetKeys.COLOR_BY)
show_gen = c3.toggle("Generated cells", value=has_gen, disabled=not has_gen, key=WidgetKeys.SHOW_GENERATED,
                     help="Cells sampled from the model (SGLD for energy models), drawn as outlined markers"
                     if has_gen else "This run has no generated cells (the model cannot generate, or 0 were asked)")
show_gen = bool(show_gen and has_gen)
measured = c3.toggle("Study shift removed", value=can_measure, disabled=not can_measure,
                     key=WidgetKeys.SHOW_MEASURED,
                     help=lat.MEASURED_HELP if can_measure else
                     "The Unknown rule measured the query as the model encoded it: this run's rule removed no "
                     "study shift (another novelty score, too few shared types, or a model saved before it).")
measured = bool(measured and can_measure)

lq = run.card.get("latent_quality") or {}
if lq:
    m1, m2, m3 = st.columns(3)
    m1.metric("Label ASW, reference", lat.fmt_quality(lq.get("asw_reference")),
              help="Average silhouette width of the cell types among held-out reference cells in the latent "
                   "space, rescaled to [0, 1] (scib): 1 = compact, separated types; 0.5 = overlapping.")
    m2.metric("Label ASW, query", lat.fmt_quality(lq.get("asw_query")),
              help="The same for the query cells by the query's own labels (blank when it has none).")
    m3.metric("Active latent dimensions", f"{lq.get('active_dims', 0)} of {lq.get('n_latent', 0)}",
              help=f"Dimensions whose posterior mean varies across cells (variance > {lq.get('active_threshold')}); "
                   "the rest collapsed to the prior (VAEs) or carry nothing.")

n_ref, n_q_all = len(run.arrays["ref_latent"]), len(run.arrays["query_latent"])
n_q = len(lat.query_view(n_q_all))
n_total = n_ref + n_q + (len(run.arrays["gen_latent"]) if show_gen else 0)
if method != "pca" and not lat.is_cached(run, method, show_gen, layout, measured):
    wait = " The first UMAP of this server compiles numba code (up to a minute)." if method == "umap" else ""
    with st.spinner(f"Computing the {lat.METHODS[method]} of {n_total:,} cells (cached afterwards).{wait}"):
        coords = lat.coordinates(run.root, run.run_id, method, show_gen, layout, measured)
else:
    coords = lat.coordinates(run.root, run.run_id, method, show_gen, layout, measured)

every = n_ref >= int(run.card.get("n_train") or 0)  # ("a random subset" read wrong where all were kept, 2026-12-07)
notes = [f"{n_ref:,} reference cells ({'the training cells, all' if every else 'a random subset of the training cells'} "
         "stored with the run), "
         f"{n_q:,} query cells" + (f" (a seeded random subsample of the query's {n_q_all:,}; every cell is labelled, "
                                   "this view draws a sample)" if n_q < n_q_all else "")
         + (f", {n_total - n_ref - n_q:,} generated cells" if show_gen else "")]
if measured:
    notes.append("query cells placed as the Unknown rule measured them (the study shift their types share removed)")
if layout == "reference":
    notes.append("the map is fitted on the reference cells; query cells are placed by their nearest reference cells")
if method != "pca" and (n_ref if layout == "reference" else n_ref + n_q) > lat.MAX_FIT:
    notes.append(f"{lat.METHODS[method]} was fitted on {lat.MAX_FIT:,} cells and the others placed in the same space")
if n_total > lat.MAX_POINTS:
    notes.append(f"showing a random subsample of {lat.MAX_POINTS:,} of {n_total:,} points")
st.caption("; ".join(notes) + ".")
if note := lat.unknown_note(run, layout):
    st.info(note, icon=":material/scatter_plot:")
level, text = lat.mixing_note(lat.mixing(run.root, run.run_id, measured), layout, far="far_query" in run.rejection)
if text:
    (st.warning if level == "warning" else st.caption)(text)
if show_gen:
    level, text = lat.placement_note(lat.placement(run.root, run.run_id), len(run.classes), run.classes)
    (st.warning if level == "warning" else st.caption)(text)

df = lat.point_table(run, coords, show_gen)
plot(lat.figure(df, color_by, method, run.classes, run.rejection.get("threshold"), run.colours), key="latent")
