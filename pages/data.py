"""Data: load reference and query, pick the label column, check gene overlap, optional QC."""
import json

import streamlit as st

from cellannot_core.data import SUPPORTED_FORMATS
from cellannot_core.data.prepare import label_name_note
from ui import data as data_ui
from ui import session
from ui.state import DATA_KEY, INFO_KEY, ROLES, StateKeys, WidgetKeys, code, data_loaded, get, init_state, md, put
from ui.widgets import dataset_summary, gene_overlap_report, label_counts_table

init_state()
st.title("Data")
st.caption(f"Formats: {SUPPORTED_FORMATS}. Upload limit: {data_ui.upload_limit_mb():,} MB per file "
           "(`server.maxUploadSize`, at most a third of the memory budget `CELLANNOT_MEMORY_LIMIT_GB`); "
           "larger files: give a path on the server.")

cols = st.columns(2)
for role, col in zip(ROLES, cols):
    with col:
        st.subheader("Reference (labelled)" if role == "reference" else "Query (to label)")
        tabs = ["Upload", "Path on the server"] + (["From a finished run"] if role == "reference" else [])
        for tab, show in zip(st.tabs(tabs), (data_ui.upload_tab, data_ui.path_tab, data_ui.run_tab)):  # (query: 2)
            with tab:
                show(role)
        adata, info = get(DATA_KEY[role]), get(INFO_KEY[role])
        if adata is None:
            st.info(f"No {role} loaded yet.")
            continue
        summ, count_layers = data_ui.summary(info["id"], role, adata), data_ui.other_count_layers(info["id"], adata)
        dataset_summary(info, summ, count_layers)
        data_ui.orientation_control(role, adata)
        data_ui.counts_layer_control(role, count_layers)
        if (note := data_ui.stream_note(adata)) is not None:
            st.info(note, icon=":material/dataset:")
        cands = summ["label_candidates"]
        keys = [c["key"] for c in cands] or summ["obs_columns"]
        if role == "reference":
            cur = get(StateKeys.LABEL_KEY) or summ["suggested_label_key"]
            for note in summ.get("label_notes", []):
                st.warning(note)
            if not keys or not summ["suggested_label_key"]:  # (no safe guess: none is picked for the visitor)
                st.error(data_ui.NO_LABEL_COLUMN + (" Pick one below if a column holds them." if keys else ""))
                if not keys:
                    continue
            pick = st.selectbox("Label column (cell types)", keys, key=WidgetKeys.LABEL_PICKER, placeholder="Choose",
                                index=keys.index(cur) if cur in keys else None)
            put(StateKeys.LABEL_KEY, pick)
            if pick and (note := label_name_note(pick)):
                st.warning(note)
        else:
            options = ["(none: the query is unlabelled)"] + keys
            cur = get(StateKeys.QUERY_LABEL_KEY)
            pick = st.selectbox("Query labels, if known (for evaluation only)", options,
                                key=WidgetKeys.QUERY_LABEL_PICKER, index=options.index(cur) if cur in options else 0)
            pick = None if pick == options[0] else pick
            put(StateKeys.QUERY_LABEL_KEY, pick)
        if pick:
            label_counts_table(cands, pick)

session.kept_datasets_panel()

if not data_loaded():
    st.stop()
ref, qry = get(StateKeys.REFERENCE), get(StateKeys.QUERY)
ref_id, q_id = get(StateKeys.REFERENCE_INFO)["id"], get(StateKeys.QUERY_INFO)["id"]
st.divider()
gene_overlap_report(overlap := data_ui.gene_overlap(ref_id, q_id, 200, ref, qry))
if novel := data_ui.novel_types_note(ref, qry, get(StateKeys.LABEL_KEY), get(StateKeys.QUERY_LABEL_KEY)):
    st.info(novel)

choices = data_ui.batch_choices(ref_id, q_id, get(StateKeys.LABEL_KEY), get(StateKeys.QUERY_LABEL_KEY), ref, qry)
cur = get(StateKeys.BATCH_KEY)
pick = st.selectbox("Batch / sample column (optional)", choices, key=WidgetKeys.BATCH_PICKER,
                    index=choices.index(cur) if cur in choices else 0,
                    help="The column naming each cell's sample, donor or batch (in the reference, the query or "
                         "both). The latent space is then trained to set these differences aside, so a query of "
                         "several donors or conditions does not look unlike the reference (scvi-tools' batch_key). "
                         "Used by scANVI and the recommended model; other models ignore it.")
put(StateKeys.BATCH_KEY, None if pick == data_ui.NO_BATCH else pick)

with st.expander("Quality control (optional): remove low-quality cells from both datasets"):
    qc_on = st.checkbox("Apply QC filters", key=WidgetKeys.QC_ON, value=get(StateKeys.QC) is not None)
    c1, c2, c3 = st.columns(3)
    prev = get(StateKeys.QC) or {}
    min_genes = c1.number_input("Min genes per cell (0 = off)", 0, 100_000, int(prev.get("min_genes") or 200),
                                key=WidgetKeys.QC_MIN_GENES, disabled=not qc_on)
    min_counts = c2.number_input("Min counts per cell (0 = off)", 0, 10_000_000, int(prev.get("min_counts") or 0),
                                 key=WidgetKeys.QC_MIN_COUNTS, disabled=not qc_on)
    max_mito = c3.number_input("Max % mitochondrial (100 = off)", 0.0, 100.0,
                               float(prev.get("max_pct_mito") or 20.0), key=WidgetKeys.QC_MAX_MITO,
                               disabled=not qc_on)
    put(StateKeys.QC, data_ui.qc_options(qc_on, min_genes, min_counts, max_mito))

st.markdown("#### Check before training")
st.caption("The same validation, gene matching and split as training, run as soon as the pair is loaded, so "
           "problems show up now (the Train page keeps *Start* disabled until they are solved).")
if get(StateKeys.LABEL_KEY):
    rep = data_ui.check_pair(ref_id, q_id, get(StateKeys.LABEL_KEY), get(StateKeys.QUERY_LABEL_KEY),
                             json.dumps(get(StateKeys.QC) or {}), ref, qry, get(StateKeys.BATCH_KEY))
    if not rep["ok"] and not overlap["ok"] and rep["error"] == overlap["message"]:  # (not said twice)
        st.caption("Training cannot start: see the gene overlap above.")
    elif not rep["ok"]:
        st.error(md(rep["error"]))
    else:
        st.success(f"Ready: {rep['n_train']:,} training + {rep['n_val']:,} validation reference cells, "
                   f"{len(rep['classes'])} classes, {rep['n_query']:,} query cells; {rep['hvg']}"
                   + (f"; {len(rep['batches'])} batches of {code(get(StateKeys.BATCH_KEY))}" if rep.get("batches") else "")
                   + ".")
        for w in data_ui.unsaid(rep["warnings"], overlap):
            st.warning(md(w))
        st.page_link("pages/train.py", label="Go to training", icon=":material/arrow_forward:")
