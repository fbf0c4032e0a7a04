"""Home: what the app does, the workflow with a status per step, and the one-click demo."""
import streamlit as st

from ui import data as data_ui
from ui.results import current_run
from ui.state import StateKeys, WidgetKeys, data_loaded, get, init_state

init_state()
st.title("cellannot: label single cells with a reference")
st.markdown(
    "Bring a **labelled reference** and an **unlabelled query** single-cell RNA-seq dataset. "
    "cellannot trains a model on the reference (on a GPU when there is one, else the CPU) and labels "
    "every query cell with a calibrated confidence, calling cells of types the reference lacks **Unknown**. "
    "Then explore the label transfer, the model's latent space and how well confidences and the "
    "Unknown calls hold up. A model you trained labels the next query in seconds, without training "
    "(*Label with a finished run's model* on the Train page)."
)

run_id = get(StateKeys.RUN_ID)
steps = [
    ("1. Data", data_loaded() and bool(get(StateKeys.LABEL_KEY)), "pages/data.py",
     "reference and query loaded, label column chosen"),
    ("2. Train", bool(run_id), "pages/train.py", f"run `{run_id}`" if run_id else "no run yet"),
    ("3. Results", current_run() is not None, "pages/results.py", "label transfer, latent space, calibration"),
]
st.subheader("Workflow")
for title, ok, page, detail in steps:
    c1, c2 = st.columns([1, 4])
    c1.page_link(page, label=title)
    c2.markdown((":green[:material/check_circle:] " if ok else ":gray[:material/radio_button_unchecked:] ") + detail)

st.subheader("Try the demo")
st.markdown(data_ui.DEMO["note"])
own = [str((get(k) or {}).get("name")) for k in (StateKeys.REFERENCE_INFO, StateKeys.QUERY_INFO)
       if get(k) and (get(k) or {}).get("source") != "demo"]  # the visitor's own datasets, which the demo replaces
st.button("Try the demo" + (" (replaces " + " and ".join(own) + ")" if own else ""), type="primary",
          key=WidgetKeys.DEMO_BUTTON, icon=":material/science:", on_click=data_ui.load_demo)
if get(StateKeys.DEMO):
    st.success("Demo data loaded (label column `cell_type_harmonized`). Next: the **Train** page.")
    st.page_link("pages/train.py", label="Go to training", icon=":material/arrow_forward:")
