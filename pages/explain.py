"""Explain: why a cell got its label (every model), then TabNet's gene masks per cell, class and overall (SIMS)."""
import streamlit as st

from cellannot_core.errors import CellannotError
from cellannot_core.runs import csv_bytes
from cellannot_core.models.tabnet import DEFAULT_RANKING, RANKINGS
from ui import calibration as cal
from ui import explain as ex
from ui import results as res
from ui.state import init_state, md
from ui.widgets import plot

init_state()
st.title("Explain")
run = res.require_run()
if note := cal.decisions_note(run):  # (its "why" named the run's threshold without a word, found 2026-12-07)
    st.info(note, icon=":material/tune:")
model = run.card.get("model")
st.subheader("Why a cell got its label")
st.caption("For every model: the cell's class probabilities, its novelty score against the Unknown threshold, and the "
           "reference's marker genes of the type it would be given, with whether the query cells given that type "
           "express them (means of log-expression over the model's genes).")
ex.why_section(run)
st.subheader("The model's own explanation")
if not ex.run_can_explain(run):
    names = ", ".join(f"**{n}**" for n in ex.explain_models()) or "none"
    st.info(f"Run `{run.run_id}` used **{model}**, which has no explain matrices of its own (the evidence above works "
            f"for every model). Models with gene masks: {names}.")
    st.stop()

try:
    data = ex.explain_data(run.root, run.run_id)
except (CellannotError, OSError) as err:
    st.error(f"Cannot compute the explain matrices of this run: {err}")
    st.stop()

st.caption(f"Run `{run.run_id}` ({model}): TabNet's attention masks for {len(data['cells']):,} query cells x "
           f"{len(data['genes']):,} genes. A cell's explain row is Σ_steps (step output) × (step mask): the "
           "genes its prediction used.")
ranking = st.radio("Gene ranking", list(RANKINGS), index=list(RANKINGS).index(DEFAULT_RANKING), horizontal=True,
                   key=ex.ExplainKeys.RANKING, format_func=ex.RANKING_LABELS.get,
                   help="Every table, figure and download below follows this choice.")
st.caption(f"Ranking by {RANKINGS[ranking]}.")
c1, c2 = st.columns([2, 1])
group_by = c1.radio("Group cells by", ["predicted", "query"], horizontal=True, key=ex.ExplainKeys.GROUP_BY,
                    format_func={"predicted": "predicted class", "query": "query label"}.get,
                    disabled=run.query_labels is None,
                    help=None if run.query_labels is not None else "The query of this run has no labels")
n_top = int(c2.number_input("Top genes per class", 5, 100, 20, key=ex.ExplainKeys.N_TOP))
labels = ex.group_labels(run, data, group_by)
order = ex.group_order(run, labels)
summ = ex.summaries(data, labels, order, n_top, ranking)

st.subheader("Top genes per class")
st.caption("Explain rows are normalised per cell"
           + (", multiplied by each gene's standardised expression where it is above the reference mean (0 below)"
              if ranking == "positive" else "")
           + ", averaged per class, then each gene is divided by its maximum over classes (SIMS thesis). Genes "
           "are ranked by the class's mean weight × that normalised value: weighed a lot by the class, and more "
           "than by the other classes.")
plot(ex.class_heatmap(summ["normalized"], summ["heat_genes"]), key="explain_classes")
top = summ["top"]
wide = top.pivot(index="rank", columns="class", values="gene")[[c for c in order if c in set(top["class"])]]
st.dataframe(wide, height=min(600, 38 + 35 * len(wide)))
d1, d2 = st.columns(2)
d1.download_button("Top genes per class (.csv)", csv_bytes(top, index=False),
                   file_name=f"{run.run_id}_explain_top_genes_{ranking}.csv", mime="text/csv", key="dl_explain_top",
                   on_click="ignore")
d2.download_button("Per-class importance, all genes (.csv)",
                   lambda: csv_bytes(summ["normalized"].T.rename_axis("gene")),
                   file_name=f"{run.run_id}_explain_per_class_{ranking}.csv", mime="text/csv", key="dl_explain_class",
                   on_click="ignore")

st.subheader("Explain matrix")
rows = ex.heatmap_cells(labels, order)
mat = ex.cell_matrix(data, rows, summ["heat_genes"], ranking)
if len(rows) < len(labels):
    st.caption(f"A random subsample of {len(rows):,} of {len(labels):,} cells, balanced over groups; columns are "
               f"each class's top {ex.GENES_PER_CLASS} genes.")
plot(ex.cells_heatmap(mat, labels[rows], order, ranking), key="explain_cells")
d1, d2 = st.columns(2)
d1.download_button("Shown cells x genes (.csv)", csv_bytes(mat.rename_axis("cell")),
                   file_name=f"{run.run_id}_explain_shown_{ranking}.csv", mime="text/csv", key="dl_explain_shown",
                   on_click="ignore")
d2.download_button("All cells x all genes (.csv)", lambda: ex.full_matrix_csv(data, ranking),
                   file_name=f"{run.run_id}_explain_matrix_{ranking}.csv", mime="text/csv", key="dl_explain_all",
                   on_click="ignore")

st.subheader("Overall importance")
plot(ex.global_bar(summ["global"], ranking), key="explain_global")
st.download_button("Global importance (.csv)", csv_bytes(summ["global"].rename_axis("gene")),
                   file_name=f"{run.run_id}_explain_global_{ranking}.csv", mime="text/csv", key="dl_explain_global",
                   on_click="ignore")

st.subheader("One cell")
c1, c2 = st.columns(2)
cls = c1.selectbox("Class", order, key=ex.ExplainKeys.CLASS)
cells = data["cells"][labels == cls]
cell = c2.selectbox("Cell", cells.tolist(), key=ex.ExplainKeys.CELL)
if cell is not None:
    i = int((data["cells"] == cell).argmax())
    st.caption(f"Predicted **{md(data['predicted'][i])}** with confidence {data['confidence'][i]:.2f}.")
    mask = ex.cell_mask(data, cell, ranking)
    plot(ex.cell_bar(mask, cell, ranking), key="explain_cell")
    st.download_button("This cell's mask (.csv)", csv_bytes(mask, index=False),
                       file_name=f"{run.run_id}_explain_{cell}_{ranking}.csv", mime="text/csv", key="dl_explain_cell",
                       on_click="ignore")
