"""Label transfer: predicted label x query label (or cluster), counts, confidence, cells, downloads."""
import streamlit as st

from cellannot_core._constants import UNKNOWN, OutKeys, RunFiles
from cellannot_core.plots import class_counts_bar, label_heatmap, score_histogram
from ui import calibration as cal
from ui import results as res
from ui.state import WidgetKeys, init_state, md
from ui.widgets import plot

init_state()
st.title("Label transfer")
run = res.require_run()
card, obs = run.card, run.obs
st.caption(f"Run `{run.run_id}`: model {card.get('model')}, {card.get('n_query', len(obs)):,} query cells, "
           f"{len(run.classes)} reference classes"
           + (f"; labelled with the model of run `{card['labelled_with']['run']}`, without training"
              if card.get("labelled_with") else ""))

qm = card.get("query_metrics") or {}
m = st.columns(4)
m[0].metric("Query cells", f"{len(obs):,}")
m[1].metric("Called Unknown", f"{obs[OutKeys.IS_UNKNOWN].mean():.1%}")
m[2].metric("Median confidence", f"{obs[OutKeys.CONFIDENCE].median():.2f}")
res.accuracy_metric(m[3], qm)  # the final labels' accuracy; acc_in alone read as it (found 2026-12-07)

res.rejection_warnings(run)
if card.get("unknown_by_sample"):
    st.info(md(card["unknown_by_sample"]["note"]), icon=":material/lightbulb:")
if note := cal.decisions_note(run):
    st.info(note, icon=":material/tune:")

st.subheader("Predicted label × query " + ("label" if run.query_labels is not None else "cluster"))
cols_labels, col_title = res.comparison_columns(run)
norm = st.radio("Percentages", ["row", "col"], horizontal=True, key=WidgetKeys.NORMALIZE,
                format_func={"row": "of each predicted label (row)", "col": "of each query group (column)"}.get)
pred = obs[OutKeys.LABEL].astype(str).to_numpy()
plot(label_heatmap(pred, cols_labels, normalize=norm, row_title="Predicted label", col_title=col_title,
                   row_order=run.classes + [UNKNOWN], title=None), key="heatmap")

c1, c2 = st.columns(2)
with c1:
    plot(class_counts_bar(pred, title="Cells per predicted label", x_title="Predicted label", color_map=run.colours),
         key="counts")
with c2:
    conf = obs[OutKeys.CONFIDENCE].to_numpy(float)
    unk = obs[OutKeys.IS_UNKNOWN].to_numpy(bool)
    plot(score_histogram({"labelled": conf[~unk], UNKNOWN: conf[unk]}, title="Confidence",
                         x_title="Calibrated confidence (max class probability)"), key="confidence")

st.subheader("Cells")
f1, f2, f3 = st.columns([3, 2, 1], vertical_alignment="bottom")
labels = f1.multiselect("Predicted label", sorted(set(pred)), key=WidgetKeys.FILTER_LABELS)
min_conf = f2.slider("Min confidence", 0.0, 1.0, 0.0, 0.01, key=WidgetKeys.FILTER_CONF)
unknown_only = f3.checkbox("Unknown only", key=WidgetKeys.FILTER_UNKNOWN)
table = res.cell_table(run, labels=labels, min_conf=min_conf, unknown_only=unknown_only)
st.caption(f"{len(table):,} of {len(obs):,} cells" + (" (first 5,000 shown)" if len(table) > 5000 else ""))
st.dataframe(table.head(5000), hide_index=True, height=320,
             column_config={k: st.column_config.Column(v, help=f"{k} in the downloads")
                            for k, v in res.CELL_TABLE_LABELS.items()})

st.subheader("Downloads")
d = st.columns(4)
root, rid = run.root, run.run_id
res.prepared_download(d[0], "Annotated query (.h5ad)", lambda: res.file_bytes(root, rid, RunFiles.ANNOTATED),
                     file_name=f"{rid}_annotated.h5ad", mime="application/octet-stream", key=f"dl_h5ad_{rid}")
res.prepared_download(d[1], "Predictions (.csv)", lambda: res.file_bytes(root, rid, RunFiles.PREDICTIONS),
                     file_name=f"{rid}_predictions.csv", mime="text/csv", key=f"dl_csv_{rid}",
                     help="Label, raw label, confidence, novelty score and per-class probabilities")
res.prepared_download(d[2], "Model bundle (.zip)", lambda: res.model_zip(root, rid), file_name=f"{rid}_model.zip",
                     mime="application/zip", key=f"dl_model_{rid}")
d[3].download_button("Run card (.json)", res.card_json(run), file_name=f"{rid}_run_card.json",
                     mime="application/json", key="dl_card", on_click="ignore")
