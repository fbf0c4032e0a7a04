"""Compare page helpers: model comparison and the leave-one-class-out novelty self-check as
background jobs, plus their tables and figures.

Jobs run through ``ui.jobs`` (:func:`ui.jobs.launch`: one thread per job in the one
process-global job table, keyed by a job id that the session keeps); the worker never calls
Streamlit, reports progress through callbacks into the job, holds one of the training slots
(:func:`ui.jobs.training_slot`, at most ``CELLANNOT_MAX_JOBS`` trainings at once) and stops at
the next mini-batch when cancelled. A job started from the page is also written to the session's
folder on the server (:func:`record_path`: its id and parameters when it starts, its final state
and result table when it ends), so a reload finds it again, running or finished, and a server
restart shows what finished and what was interrupted (:func:`session_job`). The panels at the
bottom (the only Streamlit code here) poll a job while it runs.
"""
from __future__ import annotations

import io
import secrets
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cellannot_core.errors import Cancelled, CellannotError, failure_message
from cellannot_core.runs import csv_bytes
from ui import jobs
from ui.state import md

KINDS = ("compare", "loco", "sweep")
SWEEP_DB = "sweeps.db"  # Optuna's SQLite storage, beside the runs
ACTIVE = ("queued", "running")
INTERRUPTED = "interrupted"  # a job the record says was running, which no thread of this server runs
BAR_METRICS = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "median_f1": "Median F1",
               "novelty_auroc": "Novelty AUROC", "latent_asw": "Latent ASW (reference)"}


class CompareKeys:
    """Session-state and widget keys of the Compare page."""

    JOB = {"compare": "compare_job_id", "loco": "loco_job_id", "sweep": "sweep_job_id"}  # the job shown
    MODEL = "w_cmp_model_{name}"  # one checkbox per registry model
    QUICK = "w_cmp_quick"
    EPOCHS = "w_cmp_epochs"
    START = "w_cmp_start"
    CANCEL = "w_cmp_cancel_{kind}"
    RUNS = "w_cmp_runs"  # multiselect of the session's finished runs
    LOCO_MODEL = "w_loco_model"
    LOCO_CLASSES = "w_loco_classes"
    LOCO_START = "w_loco_start"
    SWEEP_MODEL = "w_sweep_model"
    SWEEP_TRIALS = "w_sweep_trials"
    SWEEP_OBJECTIVE = "w_sweep_objective"
    SWEEP_PARAMS = "w_sweep_params"
    SWEEP_START = "w_sweep_start"


@dataclass
class CompareJob:
    id: str
    kind: str
    params: dict[str, Any]
    token: Any
    thread: threading.Thread | None = None
    state: str = "queued"
    progress: float = 0.0
    message: str = "waiting to start"
    result: pd.DataFrame | None = None
    partial: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    save_to: Path | None = None  # the session's record of this job (None: not kept)

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def save(self) -> None:
        """Write the job's record (never raises: a full disk must not fail the job)."""
        if self.save_to is None:
            return
        from cellannot_core.runs import write_json_atomic

        rec = {"id": self.id, "kind": self.kind, "params": self.params, "state": self.state, "message": self.message,
               "error": self.error, "started": self.started, "finished": self.finished, "partial": self.partial,
               "result": None if self.result is None else self.result.to_json(orient="split")}
        try:
            write_json_atomic(self.save_to, rec)
        except (OSError, TypeError, ValueError):
            pass

    def snapshot(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "state": self.state, "progress": self.progress,
                "message": self.message, "error": self.error, "elapsed": (self.finished or time.time()) - self.started,
                "live": self.alive, "params": dict(self.params)}


class _Reporter:
    """Callback: progress and per-model rows into the job (no Streamlit)."""

    def __init__(self, job: CompareJob) -> None:
        self.job = job

    def on_progress(self, fraction: float, text: str) -> None:
        self.job.progress = float(min(1.0, max(0.0, fraction)))
        self.job.message = f"training {text}"

    def on_model_end(self, name: str, row: dict[str, Any]) -> None:
        self.job.partial.append(dict(row))
        self.job.save()  # what finished survives a restart


def _worker(job: CompareJob, reference: Any, query: Any, opts: Any) -> None:
    from cellannot_core.compare import compare_models, leave_one_class_out
    from cellannot_core.pipeline import prepare_data

    p = job.params
    try:
        with jobs.training_slot(job.token.should_stop,
                                lambda: setattr(job, "message", "waiting for another training to finish"),
                                owner=p.get("owner")):
            job.state, job.message = "running", "preparing the data"
            prepared = prepare_data(reference, query, opts) if job.kind != "sweep" else None
            cbs = [_Reporter(job), job.token]
            if job.kind == "sweep":
                job.result = _sweep(job, reference, query, opts, cbs)
            elif job.kind == "compare":
                job.result = compare_models(prepared, p["models"], seed=opts.seed, device=opts.device,
                                            max_epochs=p.get("max_epochs"), accept=opts.accept, callbacks=cbs)
            else:
                job.result = leave_one_class_out(prepared, p["model"], p["classes"], seed=opts.seed,
                                                 device=opts.device, max_epochs=p.get("max_epochs"),
                                                 accept=opts.accept, callbacks=cbs)
        job.state, job.progress, job.message = "done", 1.0, "finished"
    except Cancelled as err:
        job.state, job.message = "cancelled", str(err)
        if jobs.server_stopping():  # (as a restart finds a job that was running, session_job)
            job.state, job.message = INTERRUPTED, "the server was stopped while it ran; start it again"
    except CellannotError as err:
        job.state, job.error, job.message = "failed", str(err), str(err)
    except BaseException as err:  # noqa: BLE001 - a worker must never die silently
        job.state = "failed"
        job.error = job.message = failure_message(err)
        jobs.SERVER_LOG.error("job %s failed unexpectedly\n%s", job.id, traceback.format_exc())
    finally:
        job.finished = time.time()
        job.save()


def _sweep(job: CompareJob, reference: Any, query: Any, opts: Any, cbs: list) -> pd.DataFrame:
    """A sweep (:func:`cellannot_core.sweep.run_sweep`): every trial a run of the session's own,
    the study in the runs folder's SQLite file; one row per trial comes in as it finishes."""
    import dataclasses

    from cellannot_core.sweep import run_sweep, trial_rows

    p = job.params
    o = dataclasses.replace(opts, model=p["model"], max_epochs=p.get("max_epochs"))

    def on_trial(row: dict[str, Any]) -> None:
        job.partial.append(row)
        job.save()
        job.progress = min(1.0, len(job.partial) / max(1, p["trials"]))
        job.message = f"{len(job.partial)} of {p['trials']} trials finished"

    study = run_sweep(reference, query, o, storage=jobs.runs_root() / SWEEP_DB, study_name=p["study"],
                      n_trials=int(p["trials"]), objective=p["objective"], sampler=p.get("sampler", "tpe"),
                      params=p.get("params") or (), runs_dir=jobs.runs_root(), owner=p.get("owner"),
                      callbacks=[cb for cb in cbs if not isinstance(cb, _Reporter)], on_trial=on_trial,
                      log=lambda s: setattr(job, "message", s),
                      on_run=lambda rd, trial_opts: jobs.write_request(rd, trial_opts, p.get("datasets")),
                      name_by_setup=True)
    return pd.DataFrame([r for r in trial_rows(study) if r["state"] == "COMPLETE"])


def start(kind: str, reference: Any, query: Any, opts: Any, *, save_to: Path | None = None, **params: Any) -> str:
    """Start a comparison (``kind="compare"``, params ``models``, ``max_epochs``), a
    leave-one-class-out check (``kind="loco"``, params ``model``, ``classes``, ``max_epochs``) or a
    sweep in a background thread; returns the job id. ``save_to``: the session's record of the job
    (:func:`record_path`), written now and when the job ends."""
    from cellannot_core.training import CancelToken

    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    import cellannot_core.compare  # noqa: F401  (import in this thread, see jobs.warm_imports)

    job = CompareJob(id=f"{kind}-{time.strftime('%H%M%S')}-{secrets.token_hex(8)}", kind=kind, params=params,
                     token=CancelToken(), save_to=save_to)
    job.save()
    return jobs.launch(job.id, job, _worker, reference, query, opts)


def record_path(kind: str, session_dir: Path) -> Path:
    """Where a session keeps its last job of ``kind``."""
    return Path(session_dir) / f"compare-{kind}.json"


def session_job(kind: str, session_dir: Path) -> CompareJob | None:
    """The session's last job of ``kind`` from its record: the live job when this server still runs
    it, else the job as recorded (finished with its table, or :data:`INTERRUPTED` when the record
    says it was running and no thread here runs it: the server was restarted)."""
    from cellannot_core.runs import read_json

    rec = read_json(record_path(kind, session_dir))
    if not isinstance(rec, dict) or rec.get("kind") != kind or not isinstance(rec.get("id"), str):
        return None
    live = get(rec["id"])
    if live is not None:
        return live
    state = str(rec.get("state"))
    result = None
    if isinstance(rec.get("result"), str):
        try:
            result = pd.read_json(io.StringIO(rec["result"]), orient="split")
        except ValueError:
            result = None
    job = CompareJob(id=rec["id"], kind=kind, params=dict(rec.get("params") or {}), token=None,
                     state=state, progress=1.0, message=str(rec.get("message") or ""), result=result,
                     error=rec.get("error"), started=float(rec.get("started") or time.time()),
                     finished=rec.get("finished"), partial=list(rec.get("partial") or []))
    if state in ACTIVE:
        job.state, job.finished = INTERRUPTED, job.started
        job.message = "the server was restarted while it ran; start it again"
    return job


def get(job_id: str | None) -> CompareJob | None:
    job = jobs.get_job(job_id)
    return job if isinstance(job, CompareJob) else None


def cancel(job_id: str) -> bool:
    job = get(job_id)
    if job is None or not job.alive:
        return False
    job.token.cancel()
    job.message = "cancelling after the current mini-batch"
    return True


def wait(job_id: str, timeout: float | None = None) -> dict[str, Any]:
    """Block until the job ends (tests and scripts); returns its snapshot."""
    job = get(job_id)
    if job is None:
        return {}
    if job.thread is not None:
        job.thread.join(timeout)
    return job.snapshot()


# ------------------------------------------------------------------------------ model choices


def model_choices() -> list[tuple[str, str, str | None]]:
    """``(name, description, reason unavailable or None)`` for every registry model."""
    from cellannot_core.models import MODELS, model_names

    return [(n, MODELS[n].description, MODELS[n].unavailable_reason()) for n in model_names()]


def options_from_session(get_state: Any, *, seed: int = 0, device: str = "auto") -> Any:
    from cellannot_core.pipeline import AnnotateOptions
    from ui.state import StateKeys

    return AnnotateOptions(label_key=get_state(StateKeys.LABEL_KEY), query_label_key=get_state(StateKeys.QUERY_LABEL_KEY),
                           seed=seed, device=device, qc=get_state(StateKeys.QC), batch_key=get_state(StateKeys.BATCH_KEY))


# ------------------------------------------------------------------------------ tables and figures


def display_table(df: pd.DataFrame) -> pd.DataFrame:
    """The comparison table with readable column names (numbers kept numeric)."""
    cols = {"model": "Model", "status": "Status", "evaluated_on": "Evaluated on", "n_cells": "Cells",
            "accuracy": "Accuracy", "balanced_accuracy": "Balanced acc.", "median_f1": "Median F1",
            "macro_f1": "Macro F1", "ece": "ECE", "novelty_auroc": "Novelty AUROC", "ood_method": "Novelty score",
            "n_novel": "Novel cells", "unknown_fraction": "Unknown", "latent_asw": "Latent ASW",
            "active_dims": "Active dims", "train_seconds": "Train s", "n_epochs": "Epochs"}
    from cellannot_core.compare import EVAL_VAL

    if "evaluated_on" in df.columns and (df["evaluated_on"] == EVAL_VAL).all():  # no query labels
        for k in ("accuracy", "balanced_accuracy", "median_f1", "macro_f1", "ece"):
            cols[k] = f"{cols[k]} (reference validation)"
    return df[[c for c in cols if c in df.columns]].rename(columns=cols)


def _palette(n: int) -> list[str]:
    from cellannot_core.plots import PALETTE

    return [PALETTE[i % len(PALETTE)] for i in range(n)]


def metrics_figure(df: pd.DataFrame) -> go.Figure:
    """Grouped bars: models x (accuracy, balanced accuracy, median F1, novelty AUROC)."""
    from cellannot_core.plots import TEMPLATE

    ok = df[df["status"].astype(str).isin(["ok"]) | df["status"].astype(str).str.startswith("diverged")]
    fig = go.Figure()
    metrics = [m for m in BAR_METRICS if m in ok.columns and ok[m].notna().any()]
    for m, color in zip(metrics, _palette(len(metrics))):
        fig.add_bar(name=BAR_METRICS[m], x=ok["model"], y=ok[m], marker_color=color,
                    hovertemplate="%{x}: %{y:.3f}<extra>" + BAR_METRICS[m] + "</extra>")
    where = ", ".join(ok["evaluated_on"].dropna().unique())
    fig.update_layout(template=TEMPLATE, barmode="group", yaxis=dict(range=[0, 1.02], title="score"),
                      title=f"Models compared on {where}" if where else "Models compared", height=420,
                      legend=dict(orientation="h", y=-0.15))
    return fig


def seconds_figure(df: pd.DataFrame) -> go.Figure:
    from cellannot_core.plots import TEMPLATE

    fig = go.Figure(go.Bar(x=df["model"], y=df["train_seconds"], marker_color="#009E73",
                           hovertemplate="%{x}: %{y:.1f} s<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title="Training time (s)", yaxis_title="seconds", height=320)
    return fig


def loco_figure(df: pd.DataFrame) -> go.Figure:
    """Grouped bars: held-out class x novelty score AUROC."""
    from cellannot_core.novelty import OOD_METHODS
    from cellannot_core.plots import TEMPLATE

    fig = go.Figure()
    for k, color in zip(OOD_METHODS, _palette(len(OOD_METHODS))):
        col = f"auroc_{k}"
        if col in df.columns:
            fig.add_bar(name=k, x=df["held_out"], y=df[col], marker_color=color,
                        hovertemplate="without %{x}: %{y:.3f}<extra>" + k + "</extra>")
    fig.add_hline(y=0.5, line_dash="dot", line_color="#9E9E9E")
    fig.update_layout(template=TEMPLATE, barmode="group", yaxis=dict(range=[0, 1.02], title="AUROC"),
                      xaxis_title="class left out of training", height=400,
                      title="Does each novelty score flag a class the model never saw?",
                      legend=dict(orientation="h", y=-0.2))
    return fig


def loco_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean AUROC of each novelty score over the left-out classes."""
    cols = [c for c in df.columns if c.startswith("auroc_") and c != "auroc_model_score"]
    return pd.DataFrame({"novelty score": [c[6:] for c in cols],
                         "mean AUROC": [float(np.nanmean(df[c])) if df[c].notna().any() else np.nan for c in cols]})


# ------------------------------------------------------------------------------ panels (Streamlit)


def start_from_page(kind: str, reference: Any, query: Any, get_state: Any, **params: Any) -> None:
    """Start a job on the session's data, remember its id, rerun (errors shown in plain words)."""
    from ui.session import owner_id, session_dir

    params.setdefault("owner", owner_id())  # its session: whose turn it is for a training slot
    try:
        job_id = start(kind, reference, query, options_from_session(get_state),
                       save_to=record_path(kind, session_dir(create=True)), **params)
    except CellannotError as err:
        st.error(md(err))
        return
    except OSError as err:
        st.error(jobs.write_problem(err, "keep the job's record"))
        return
    st.session_state[CompareKeys.JOB[kind]] = job_id
    st.rerun()


def shown_job(kind: str) -> CompareJob | None:
    """This session's job of ``kind``: the one it started, else (after a reload or a restart) the
    one its record on the server names."""
    from ui.session import session_dir

    job = get(st.session_state.get(CompareKeys.JOB[kind]))
    if job is None:
        job = session_job(kind, session_dir())
        if job is not None and job.alive:
            st.session_state[CompareKeys.JOB[kind]] = job.id
    return job


def is_busy(kind: str) -> bool:
    job = shown_job(kind)
    return job is not None and job.state in ACTIVE


def job_panel(kind: str) -> None:
    """Status, progress, Cancel and (when done) the results of this session's job of ``kind``;
    polls every second while the job runs."""
    from ui.widgets import fmt_seconds, plot

    job = shown_job(kind)
    if job is None:
        return
    was_active = job.state in ACTIVE

    @st.fragment(run_every=1.0 if was_active else None)
    def _panel() -> None:
        s = job.snapshot()
        st.markdown(f"Job `{s['id']}`: **{s['state']}**, {s['message']} ({fmt_seconds(s['elapsed'])})")
        if s["state"] in ACTIVE:
            st.progress(s["progress"])
            if st.button("Cancel", key=CompareKeys.CANCEL.format(kind=kind), icon=":material/stop:"):
                cancel(job.id)
                st.toast("Cancelling: stops after the current mini-batch.")
            if job.partial:
                part = pd.DataFrame(job.partial)
                st.dataframe(display_table(part) if kind == "compare" else part, hide_index=True)
            if kind == "sweep" and len(job.partial) >= 2:  # follow the sweep while it runs
                for i, fig in enumerate(sweep_figures(pd.DataFrame(job.partial), job.params["objective"])[:-1]):
                    plot(fig, key=f"sweep_live_{job.id}_{i}_{len(job.partial)}")
        elif s["state"] == "failed":
            st.error(f"Failed: {md(s['error'])}")
        elif s["state"] == "cancelled":
            st.warning(f"Cancelled ({md(s['message'])}).")
        elif s["state"] == INTERRUPTED:
            st.warning(f"Interrupted: {md(s['message'])}.")
            if job.partial:
                st.caption("Finished before it was interrupted:")
                part = pd.DataFrame(job.partial)
                st.dataframe(display_table(part) if kind == "compare" else part, hide_index=True)
        elif s["state"] == "done" and job.result is not None:
            {"compare": compare_results, "loco": loco_results, "sweep": sweep_results}[kind](job.result, job.id)
        if was_active and s["state"] not in ACTIVE:
            st.rerun()

    _panel()


def sweep_figures(df: pd.DataFrame, objective: str) -> list[go.Figure]:
    """The objective against each swept parameter (one scatter each), and parallel coordinates
    over the parameters and the objective (numeric parameters; choices as their index)."""
    from cellannot_core.plots import TEMPLATE

    params = [c for c in df.columns if c.startswith("param ")]
    figs = []
    for c in params:
        fig = go.Figure(go.Scatter(x=df[c], y=df["value"], mode="markers", marker=dict(size=9, color="#0072B2"),
                                   text=[f"trial {t}" for t in df["trial"]],
                                   hovertemplate="%{text}: " + c[6:] + " %{x}, " + objective + " %{y:.4f}<extra></extra>"))
        numeric = pd.api.types.is_numeric_dtype(df[c])
        positive = numeric and (df[c] > 0).all()
        log_x = bool(positive and df[c].max() / max(df[c].min(), 1e-300) >= 100)
        fig.update_layout(template=TEMPLATE, title=f"{objective} against {c[6:]}", xaxis_title=c[6:],
                          yaxis_title=objective, height=320, xaxis_type="log" if log_x else None)
        figs.append(fig)
    dims = []
    for c in params:
        if pd.api.types.is_numeric_dtype(df[c]):
            dims.append(dict(label=c[6:], values=df[c]))
        else:
            cats = sorted(df[c].astype(str).unique())
            dims.append(dict(label=c[6:], values=[cats.index(v) for v in df[c].astype(str)],
                             tickvals=list(range(len(cats))), ticktext=cats))
    dims.append(dict(label=objective, values=df["value"]))
    pc = go.Figure(go.Parcoords(line=dict(color=df["value"], colorscale="Viridis", showscale=True), dimensions=dims))
    pc.update_layout(template=TEMPLATE, title="Trials in parallel coordinates", height=380)
    return figs + [pc]


def sweep_results(df: pd.DataFrame, job_id: str) -> None:
    from ui.widgets import plot

    job = get(job_id) or shown_job("sweep")
    objective = job.params["objective"] if job is not None and job.id == job_id else "value"
    if df.empty:
        st.warning("No trial finished.")
        return
    from cellannot_core.sweep import OBJECTIVES

    maximize = OBJECTIVES.get(objective, ("maximize",))[0] == "maximize"
    best = df.loc[df["value"].idxmax() if maximize else df["value"].idxmin()]
    st.success(f"Best: trial {int(best['trial'])}, {objective} {best['value']:.4f} ("
               + ", ".join(f"{c[6:]} = {best[c]:.4g}" if isinstance(best[c], float) else f"{c[6:]} = {best[c]}"
                           for c in df.columns if c.startswith("param ")) + f"); run `{best.get('run_id', '')}`. "
               "Every trial is a run of yours: open it on the Label transfer page or compare it above.")
    st.dataframe(df.drop(columns=["state"], errors="ignore"), hide_index=True)
    for i, fig in enumerate(sweep_figures(df, objective)):
        plot(fig, key=f"sweep_fig_{job_id}_{i}")
    st.download_button("Sweep trials (.csv)", csv_bytes(df, index=False), file_name=f"{job_id}.csv",
                       mime="text/csv", key=f"dl_{job_id}", on_click="ignore")


def compare_results(df: pd.DataFrame, job_id: str) -> None:
    from ui.widgets import plot

    from cellannot_core.compare import EVAL_VAL

    if "evaluated_on" in df.columns and (df["evaluated_on"] == EVAL_VAL).all():
        st.info("The query has no labels: these figures are on reference validation cells and say how well each "
                "model knows the reference, not how well it labels the query or finds its novel cells. Compare the "
                "runs' agreement and Unknown shares above, and run the novelty self-check below.",
                icon=":material/info:")
    st.dataframe(display_table(df), hide_index=True, column_config={
        "Unknown": st.column_config.NumberColumn(format="percent"),
        "Train s": st.column_config.NumberColumn(format="%.1f")})
    status = df["status"].astype(str)
    for _, r in df[~((status == "ok") | status.str.startswith("diverged"))].iterrows():
        st.warning(f"{r['model']}: {md(r['status'])}")
    plot(metrics_figure(df), key=f"cmp_metrics_{job_id}")
    plot(seconds_figure(df), key=f"cmp_seconds_{job_id}")
    st.download_button("Comparison table (.csv)", csv_bytes(df, index=False), file_name=f"{job_id}.csv",
                       mime="text/csv", key=f"dl_{job_id}", on_click="ignore")


def loco_results(df: pd.DataFrame, job_id: str) -> None:
    from ui.widgets import plot

    st.dataframe(df, hide_index=True)
    c1, c2 = st.columns([3, 1])
    with c1:
        plot(loco_figure(df), key=f"loco_fig_{job_id}")
    with c2:
        st.dataframe(loco_summary(df), hide_index=True)
    st.download_button("Self-check table (.csv)", csv_bytes(df, index=False), file_name=f"{job_id}.csv",
                       mime="text/csv", key=f"dl_{job_id}", on_click="ignore")


# ------------------------------------------------------------------------------ comparing existing runs


def finished_runs() -> list[dict[str, Any]]:
    """The session's finished runs (its own, and the command line's on a local server), newest
    first, each with ``same_data``: trained on the datasets loaded now (a run that labelled a query
    with another run's model: on the query loaded now)."""
    from cellannot_core.runs import list_runs

    from ui.session import owner_id, server_is_local
    from ui.train import session_datasets

    now = session_datasets()
    out = []
    for r in list_runs(jobs.runs_root(), owner=owner_id(), include_unowned=server_is_local()):
        if r["state"] != "done":
            continue
        try:
            req = jobs.request(r["id"])
        except CellannotError:
            req = None
        same = bool(req and req["datasets"] and all(now.get(role) == i for role, i in req["datasets"].items()))
        out.append({**r, "same_data": same})
    return out


def load_runs(run_ids: list[str]) -> list[tuple[str, dict[str, Any], pd.DataFrame | None]]:
    """``(run id, card, predictions)`` of each run, for :func:`cellannot_core.compare.compare_runs`."""
    from cellannot_core._constants import RunFiles
    from cellannot_core.runs import RunDir

    out = []
    for rid in run_ids:
        rd = RunDir.open(jobs.runs_root(), rid)
        path = rd.file(RunFiles.PREDICTIONS)
        try:
            pred = pd.read_csv(path) if path.is_file() else None
        except (OSError, ValueError):  # a damaged file: the run is compared on its card alone
            pred = None
        out.append((rid, rd.card() or {}, pred))
    return out


def other_names(loaded: list[tuple[str, dict[str, Any], Any]]) -> str | None:
    """A warning when two of the runs picked name their types otherwise (at most half the names of the one with
    fewer in common: references of other label sets): their agreement counts the same names only."""
    from cellannot_core._constants import OutKeys

    names = [(rid, {str(c) for c in card.get(OutKeys.CLASSES) or []}) for rid, card, _ in loaded]
    for i, (a, ca) in enumerate(names):
        for b, cb in names[i + 1:]:
            if ca and cb and len(ca & cb) <= 0.5 * min(len(ca), len(cb)):
                only = sorted(ca - cb)[:2] + sorted(cb - ca)[:2]
                return (f"Runs {a} and {b} name their cell types otherwise ({len(ca & cb)} names in common; e.g. "
                        f"{', '.join(md(n[:40]) for n in only)}): the agreement below counts the same names only, so it "
                        "says little of them. Compare runs whose references share their labels.")
    return None


def changed_calls(run_ids: list[str]) -> list[str]:
    """The runs among ``run_ids`` whose Unknown calls were changed on the Calibration page."""
    from cellannot_core.runs import RunDir, read_json
    from ui.calibration import DECISIONS_FILE

    return [r for r in run_ids if read_json(RunDir.open(jobs.runs_root(), r).file(DECISIONS_FILE), None)]


RUN_COLUMNS = {"model": "Model", "run": "Run", "query_cells": "Query cells", "unknown_fraction": "Unknown",
               "acc_in": "Accuracy (known types)", "acc_open": "Open-set accuracy", "auroc_ood": "Novelty AUROC",
               "ece_in": "ECE", "reject_in": "Known called Unknown", "reject_novel": "Novel called Unknown",
               "val_accuracy_reference": "Reference validation accuracy"}


def runs_section(runs: list[dict[str, Any]]) -> None:
    """Compare runs that exist (``runs``: :func:`finished_runs`): the query's own metrics where it
    has labels, else label-free evidence only (agreement between the runs, Unknown shares)."""
    from cellannot_core.compare import compare_runs
    from ui.widgets import plot

    if not runs:
        st.caption("No finished runs yet: train models on the Train page (or below), then compare them here.")
        return
    label = {r["id"]: f"{r['model']} · {r['id']}" + ("" if r["same_data"] else " (other data)") for r in runs}
    default = [r["id"] for r in runs if r["same_data"]][:4]
    picked = st.multiselect("Runs to compare", list(label), default=default, format_func=label.get,
                            key=CompareKeys.RUNS)
    if not picked:
        return
    loaded = load_runs(picked)
    res = compare_runs(loaded)
    table = res["table"]
    apart = other_names(loaded)
    if apart:  # (found 2026-12-07: 2.8% agreement between runs of one query on references naming types otherwise)
        st.warning(apart, icon=":material/warning:")
    if res["labelled"]:
        st.caption("Every run's query carried labels: these are the query's own figures (cells of reference types "
                   "for accuracy and ECE; novel cells for the novelty columns).")
        cols = [c for c in RUN_COLUMNS if c in table.columns]
    else:
        without = table.loc[~table["query_labelled"].astype(bool), "run"].astype(str).tolist() if len(table) else []
        if len(without) < len(table):  # (it said "the query has no labels" of runs that had them, 2026-12-07)
            st.info(f"Not every run picked was measured against the query's own labels ({len(without)} of "
                    f"{len(table)} were not: {', '.join(without[:3])}{'...' if len(without) > 3 else ''}), so only what "
                    "every run has is compared: how often the models agree (below) and how many cells each calls "
                    "Unknown. Pick runs that all had the query's labels to compare their accuracy.",
                    icon=":material/info:")
        else:
            st.info("The query has no labels, so nothing here can say which model labels it best. What there is: how "
                    "often the models agree (below) and how many cells each calls Unknown. Reference validation "
                    "accuracy only says how well each model knows the reference.", icon=":material/info:")
        cols = ["model", "run", "query_cells", "unknown_fraction", "val_accuracy_reference"]
    st.dataframe(table[cols].rename(columns=RUN_COLUMNS), hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="percent") for c in ("Unknown", "Known called Unknown",
                                                                     "Novel called Unknown")})
    changed = changed_calls(picked)
    if changed:  # (not said until 2026-12-07)
        st.caption(f"Run{'s' if len(changed) > 1 else ''} {', '.join(changed)} had {'their' if len(changed) > 1 else 'its'} "
                   f"Unknown calls changed on the Calibration page: the figures here are the {'runs' if len(picked) > 1 else 'run'}'"
                   f"{'' if len(picked) > 1 else 's'} own calls; the Calibration page and the downloads follow the choices.")
    agree = res["agreement"]
    if len(picked) > 1 and agree.notna().any().any():
        names = [f"{m} ({rid[-6:]})" for m, rid in zip(table["model"], table["run"])]
        fig = go.Figure(go.Heatmap(z=agree.to_numpy(), x=names, y=names, zmin=0, zmax=1, colorscale="Blues",
                                   text=np.round(agree.to_numpy(), 3), texttemplate="%{text}",
                                   hovertemplate="%{y} vs %{x}: %{z:.1%} of shared cells get the same label"
                                                 "<extra></extra>"))
        fig.update_layout(title="Agreement: share of cells labelled the same (Unknown included)", height=380,
                          yaxis=dict(autorange="reversed"))  # rows in the columns' order, the diagonal from top left
        plot(fig, key="cmp_runs_agreement")
    if not res["unknown_by_label"].empty:
        # one column per run, named by its model and the end of its id (runs of one model must stay apart)
        ubl = res["unknown_by_label"].rename(columns={r: f"{m} ({r[-6:]})" for r, m in zip(table["run"], table["model"])})
        st.markdown("**Unknown share by the label each model would have given** (where each model hesitates)")
        st.dataframe(ubl.style.format("{:.0%}"), column_config={"_index": "Most likely type"})
