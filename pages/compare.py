"""Compare: several models on the loaded pair (one table, bar charts), and the novelty
self-check (leave one reference class out, CLAMS)."""
import streamlit as st

from ui import compare as cmp
from ui.state import StateKeys, data_loaded, get, init_state

init_state()
st.title("Compare models")
if not data_loaded() or not get(StateKeys.LABEL_KEY):
    st.info("Load data first on the **Data** page (or click *Try the demo* on Home), and pick the reference "
            "label column.")
    st.stop()
ref, label_key = get(StateKeys.REFERENCE), get(StateKeys.LABEL_KEY)
q_label = get(StateKeys.QUERY_LABEL_KEY)
st.caption("Every model is trained on the same genes, split and seed. Metrics are computed on "
           + (f"the query's cells of reference types (query labels `{q_label}`)" if q_label else
              "the reference validation cells (the query has no label column chosen on the Data page)") + ".")


# ------------------------------------------------------------------------------ runs that exist
st.subheader("Your runs")
st.caption("Compare runs you already trained (nothing is retrained).")
runs = cmp.finished_runs()
cmp.runs_section(runs)

# ------------------------------------------------------------------------------ comparison
st.subheader("Train and compare models")
have = {r["model"] for r in runs if r["same_data"]}
if have:
    st.caption(f"Models with a finished run on this data ({', '.join(sorted(have))}) can be compared above without "
               "training them again.")
choices = cmp.model_choices()
cols = st.columns(3)
picked = []
for i, (name, desc, reason) in enumerate(choices):
    with cols[i % 3]:
        on = st.checkbox(name, key=cmp.CompareKeys.MODEL.format(name=name), disabled=reason is not None,
                         help=f"Unavailable: {reason}" if reason else desc)
        if reason:
            st.caption(f":grey[unavailable: {reason}]")
        elif on:
            picked.append(name)
c1, c2, c3 = st.columns([1, 1, 2], vertical_alignment="bottom")
quick = c1.toggle("Quick (few epochs)", key=cmp.CompareKeys.QUICK, help="Caps the epochs of the neural models")
epochs = int(c2.number_input("Epochs", 1, 100, 3, key=cmp.CompareKeys.EPOCHS, disabled=not quick))
if c3.button("Compare", type="primary", key=cmp.CompareKeys.START, disabled=not picked or cmp.is_busy("compare"),
             icon=":material/leaderboard:", help=None if picked else "Tick at least one model"):
    cmp.start_from_page("compare", ref, get(StateKeys.QUERY), get, models=picked,
                        max_epochs=epochs if quick else None)
cmp.job_panel("compare")

# ------------------------------------------------------------------------------ novelty self-check
st.subheader("Novelty self-check (leave one class out)")
st.caption("For each chosen class: train without it, then ask how well each novelty score separates that class's "
           "held-out reference cells from the known ones (AUROC; 0.5 = chance). This tells you how far to trust "
           "Unknown calls for types the reference lacks (CLAMS' experiment).")
available = [n for n, _, reason in choices if reason is None]
counts = ref.obs[label_key].astype(str).value_counts() if label_key in ref.obs else None
classes = [c for c in (counts.index.tolist() if counts is not None else []) if c not in ("", "nan")]
c1, c2 = st.columns([1, 2])
loco_model = c1.selectbox("Model", available, key=cmp.CompareKeys.LOCO_MODEL)
left_out = c2.multiselect("Classes to leave out (one training each)", classes, default=classes[:1],
                          key=cmp.CompareKeys.LOCO_CLASSES)
if st.button("Run the self-check", key=cmp.CompareKeys.LOCO_START, disabled=not left_out or cmp.is_busy("loco"),
             icon=":material/science:"):
    cmp.start_from_page("loco", ref, get(StateKeys.QUERY), get, model=loco_model, classes=left_out,
                        max_epochs=epochs if quick else None)
cmp.job_panel("loco")

# ------------------------------------------------------------------------------ hyper-parameter sweep
st.subheader("Hyper-parameter sweep")
st.caption("Optuna searches the chosen model's hyper-parameters (their ranges come from the model registry) for "
           "an objective on held-out reference cells, so no query labels are needed. Every trial is a run of "
           "yours; the sweep is kept in the runs folder's SQLite file, and starting the same sweep again on the "
           "same data and settings resumes it. The command line does the same: `cellannot sweep`.")
from cellannot_core.sweep import OBJECTIVES, search_space, sweepable  # noqa: E402

c1, c2, c3 = st.columns([2, 1, 2])
sweep_model = c1.selectbox("Model", available, key=cmp.CompareKeys.SWEEP_MODEL)
trials = int(c2.number_input("Trials", 1, 200, 8, key=cmp.CompareKeys.SWEEP_TRIALS))
objective = c3.selectbox("Objective", list(OBJECTIVES), key=cmp.CompareKeys.SWEEP_OBJECTIVE,
                         format_func=lambda k: f"{k}: {OBJECTIVES[k][1]} ({OBJECTIVES[k][0]})")
try:
    default_space = list(search_space(sweep_model))
except Exception:  # noqa: BLE001 - a model without default search space: the user names the parameters
    default_space = []
swept = st.multiselect("Hyper-parameters to vary", sweepable(sweep_model), default=default_space,
                       key=cmp.CompareKeys.SWEEP_PARAMS, help="those with a range or choices; layer widths and other "
                       "free values are swept from the command line (`cellannot sweep --param hidden=1200,600,200/800,200`)")
if st.button("Start the sweep", key=cmp.CompareKeys.SWEEP_START, disabled=not swept or cmp.is_busy("sweep"),
             icon=":material/tune:"):
    from ui.session import owner_id
    from ui.train import session_datasets as train_session_datasets

    cmp.start_from_page("sweep", ref, get(StateKeys.QUERY), get, model=sweep_model, trials=trials,
                        objective=objective, params=swept, owner=owner_id(), datasets=train_session_datasets(),
                        study=f"{owner_id()[:12]}-{sweep_model}-{objective}-{'-'.join(sorted(swept))}",
                        max_epochs=epochs if quick else None)
cmp.job_panel("sweep")
