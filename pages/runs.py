"""Runs: every run of yours with its parameters and metrics, a sweep's trials side by side, and
the actions on one run (open, run again, export its card, delete)."""
import streamlit as st

from cellannot_core.runs import csv_bytes
from ui import compare as cmp
from ui import jobs
from ui import runs as runs_ui
from ui import train as train_ui
from ui.state import StateKeys, WidgetKeys, get, init_state, md, set_run
from ui.widgets import plot

init_state()
st.title("Runs")
df = runs_ui.runs_table()
if df.empty:
    st.info("No runs yet: train a model on the **Train** page (or start a sweep on **Compare models**).")
    st.stop()

models = sorted(df["model"].dropna().unique())
shown = st.multiselect("Models", models, default=models, key=WidgetKeys.RUNS_MODELS)
view = df[df["model"].isin(shown)]
st.caption(f"{len(view)} of {len(df)} runs, newest first. Metrics named *reference* come from held-out reference "
           "cells; *query* metrics only exist when the query carried labels. *Changed* lists the hyper-parameters "
           "that differ from the model's defaults.")
cols = ["id", "state", "model", "model of run", "reference", "query", "created", "changed", *runs_ui.METRICS,
        "choices", "sweep", "trial", "message"]
config = {k: st.column_config.NumberColumn(label, format="%.4f") for k, (label, _) in runs_ui.METRICS.items()}
config.update({"unknown_fraction": st.column_config.NumberColumn("Unknown", format="percent"),
               "train_seconds": st.column_config.NumberColumn("Training seconds", format="%.1f"),
               "epochs": st.column_config.NumberColumn("Epochs", format="%d"),
               "trial": st.column_config.NumberColumn("Trial", format="%d"),
               "changed": st.column_config.TextColumn("Changed hyper-parameters"),
               "choices": st.column_config.TextColumn("Unknown calls", help="Changed on the Calibration page (a "
                                                      "threshold or groups accepted): the figures here are the run's "
                                                      "own calls, its downloads follow the choices"),
               "model of run": st.column_config.TextColumn("Model of run", help="Labelled with that run's model, "
                                                                              "without training")})
st.dataframe(view[[c for c in cols if c in view.columns]], hide_index=True, column_config=config)
st.download_button("This table (.csv)", csv_bytes(view, index=False), file_name="cellannot_runs.csv",
                   mime="text/csv", key=WidgetKeys.RUNS_CSV, on_click="ignore")

# ------------------------------------------------------------------------------ one run
st.subheader("One run")
ids = view["id"].tolist()
if (gone := runs_ui.picked_run_gone(ids, df["id"].tolist())) is not None:
    st.warning(gone)  # no other run in its place: Delete would act on it (found 2026-12-07)
pick, key = None, runs_ui.picker_key()
if ids:
    cur = get(StateKeys.RUN_ID)
    label = {r["id"]: f"{r['model']} · {r['id']} · {r['state']}" for _, r in view.iterrows()}
    pick = st.selectbox("Run", ids, index=None if key != WidgetKeys.RUN_PICKER else ids.index(cur) if cur in ids else 0,
                        format_func=label.get, key=key, placeholder="Pick a run")
if pick is not None:
    c1, c2, c3, c4 = st.columns(4, vertical_alignment="bottom")
    if c1.button("Open this run", key=WidgetKeys.OPEN_RUN, icon=":material/open_in_new:",
                 help="Make it the run the result pages show"):
        set_run(pick)
        st.rerun()
    opts, problem = train_ui.rerun_problem(pick)
    if c2.button("Run again", key=WidgetKeys.RUNS_RERUN, icon=":material/replay:", disabled=problem is not None,
                 help=problem or "Train the same model with the same settings on the data loaded now"):
        err = train_ui.start(opts)
        if err:
            st.error(md(err))
        else:
            st.switch_page("pages/train.py")
    c3.download_button("Export its card (.json)", runs_ui.card_bytes(pick), file_name=f"{pick}_card.json",
                       mime="application/json", key=WidgetKeys.RUNS_CARD, on_click="ignore",
                       icon=":material/download:")
    gone = c4.popover("Delete this run", icon=":material/delete:", key=WidgetKeys.DELETE_POPOVER,
                      on_change="rerun")  # asked once more: a run cannot come back
    gone.caption(f"Run `{pick}`: its results, model and log are deleted for good.")
    gone.button("Delete it for good", key=WidgetKeys.DELETE_RUN, type="primary", on_click=runs_ui.delete_run,
                args=(pick,))
    if err := st.session_state.pop(StateKeys.DELETE_ERROR, None):
        st.error(md(err))
    if problem:
        st.caption(f"Run again is not possible here: {problem}.")
    if get(StateKeys.RUN_ID) and (jobs.runs_root() / get(StateKeys.RUN_ID)).is_dir():
        st.caption(f"The result pages show run `{get(StateKeys.RUN_ID)}`.")

# ------------------------------------------------------------------------------ sweeps
studies = [s for s in view["sweep"].unique() if s]
if studies:
    st.subheader("Sweeps")
    study = st.selectbox("Sweep", studies, key=WidgetKeys.RUNS_SWEEP)
    trials = runs_ui.sweep_table(view, study)
    objective = view.loc[view["sweep"] == study, "objective"].iloc[0] or "value"
    if trials.empty:
        st.caption("No trial of this sweep has finished yet.")
    else:
        st.caption(f"{len(trials)} finished trials, objective {objective}. Each is a run above.")
        st.dataframe(trials, hide_index=True)
        for i, fig in enumerate(cmp.sweep_figures(trials, objective)):
            plot(fig, key=f"runs_sweep_{i}")
