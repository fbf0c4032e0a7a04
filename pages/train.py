"""Train: the current run (live) and a new training from the registry-built form (past runs: the Runs page)."""
import streamlit as st

from ui import train as train_ui
from ui.state import StateKeys, code, data_loaded, get, init_state

init_state()
st.title("Train")

run_id = get(StateKeys.RUN_ID)
if run_id:
    st.subheader("Current run")
    train_ui.run_panel(run_id)

st.subheader("New training")
if not data_loaded() or not get(StateKeys.LABEL_KEY):
    st.info("Load data first on the **Data** page (or click *Try the demo* on Home), and pick the "
            "reference label column.")
else:
    ref_info, q_info = get(StateKeys.REFERENCE_INFO), get(StateKeys.QUERY_INFO)
    st.caption(f"Reference {code(ref_info['name'])} ({ref_info['n_cells']:,} cells, labels "
               f"{code(get(StateKeys.LABEL_KEY))}) → query {code(q_info['name'])} ({q_info['n_cells']:,} cells)"
               + (f"; batches: {code(get(StateKeys.BATCH_KEY))}" if get(StateKeys.BATCH_KEY) else ""))
    if note := train_ui.active_runs_note():
        st.info(note, icon=":material/hourglass_top:")
    with st.container(border=True):
        opts = train_ui.training_form()
    if opts is not None:
        train_ui.start_and_show(opts)  # the new run's live panel shows at the top

if get(StateKeys.QUERY) is not None:
    st.subheader("Label with a finished run's model")
    with st.container(border=True):
        req = train_ui.relabel_form()
    if req is not None:
        train_ui.start_and_show(req)

st.page_link("pages/runs.py", label="All your runs: parameters, metrics, sweeps; open, run again, export, delete",
             icon=":material/history:")
