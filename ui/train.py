"""Train page helpers: options from the form, the live run panel (polling the run directory)
and the list of past runs."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import streamlit as st

from cellannot_core._constants import DEFAULT_HVG_FLAVOR, DEFAULT_N_TOP_GENES, HVG_FLAVORS
from cellannot_core.errors import CellannotError
from ui import jobs
from ui.state import StateKeys, WidgetKeys, code, data_loaded, get, md, set_run
from ui.widgets import fmt_seconds, hparam_form, plot, status_text

QUICK_SECONDS = 60  # a quick run's training time budget (the demo's recommended model trains fully in ~20 s)


def build_options(*, model: str, hparams: dict[str, Any], device: str, seed: int, max_epochs: int | None,
                  n_top_genes: int, accept: float, n_generate: int, max_train_seconds: float | None = None,
                  hvg_flavor: str = DEFAULT_HVG_FLAVOR) -> Any:
    """``AnnotateOptions`` from the form and the Data page's choices (validates hyper-parameters)."""
    from cellannot_core.models import create_model
    from cellannot_core.pipeline import AnnotateOptions
    from cellannot_core.training import resolve_device

    resolve_device(device)
    # A throw-away build on a tiny input checks every hyper-parameter (types, bounds, and the
    # string ones such as layer widths) now, with the model's own one-line ConfigError. Models
    # seed the global RNGs when built, so their states are restored afterwards.
    with _rng_preserved():
        create_model(model, 8, ["a", "b"], seed=int(seed), device="cpu", hparams=hparams)
    return AnnotateOptions(label_key=get(StateKeys.LABEL_KEY), query_label_key=get(StateKeys.QUERY_LABEL_KEY),
                           model=model, hparams=dict(hparams), seed=int(seed), device=device,
                           max_epochs=max_epochs, n_top_genes=int(n_top_genes), hvg_flavor=hvg_flavor,
                           accept=float(accept), n_generate=int(n_generate), qc=get(StateKeys.QC), batch_key=get(StateKeys.BATCH_KEY),
                           max_train_seconds=None if max_train_seconds is None else float(max_train_seconds))


@contextmanager
def _rng_preserved() -> Iterator[None]:
    import random

    import numpy as np
    import torch

    from cellannot_core.training.device import GLOBAL_RNG

    with GLOBAL_RNG:  # no other thread's seeded draws in between (a run's Leiden, a model being made)
        py, npy, pt = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)
            torch.random.set_rng_state(pt)


def start(opts: Any) -> str | None:
    """Start a background job on the session's datasets (training with ``AnnotateOptions``, or the
    query labelled with a finished run's model with :class:`ui.jobs.RelabelRequest`); returns an
    error message or ``None``."""
    try:
        from ui.session import owner_id

        if isinstance(opts, jobs.RelabelRequest):
            from ui.data import run_references

            if opts.source not in run_references():  # only the visitor's own finished runs
                return f"run {opts.source} is not one of your finished runs with a saved model"
            run_id = jobs.start_relabel_job(opts.source, get(StateKeys.QUERY), query_label_key=opts.query_label_key,
                                            owner=owner_id(), datasets={"query": session_datasets().get("query")},
                                            names={"query": session_datasets("name").get("query")})
        else:
            run_id = jobs.start_job(get(StateKeys.REFERENCE), get(StateKeys.QUERY), opts, owner=owner_id(),
                                    datasets=session_datasets(), names=session_datasets("name"))
    except CellannotError as err:
        return str(err)
    except OSError as err:
        return jobs.write_problem(err, "create the run's folder")
    set_run(run_id)
    return None


def session_datasets(field: str = "id") -> dict[str, str]:
    """Role -> id (or another field of their info, e.g. ``"name"``) of the datasets loaded in this session."""
    return {role: (get(key) or {}).get(field) for role, key in (("reference", StateKeys.REFERENCE_INFO),
                                                                 ("query", StateKeys.QUERY_INFO)) if get(key)}


def active_runs_note() -> str | None:
    """What starting another run does while this session's runs train (found 2026-12-07: a second
    *Start training* swapped the page to the new run and the first was only on the Runs page)."""
    from ui.session import owner_id

    active = jobs.owner_active_runs(owner_id())
    if not active:
        return None
    who, them = (f"Run {code(active[0])} is", "it") if len(active) == 1 else (f"{len(active)} of your runs are", "them")
    return (f"{who} still training. A new run trains beside {them} (at most {jobs.session_job_limit()} of yours at "
            "once; each waits for a free place on the server) and this page then follows the new one; the Runs page "
            "lists them all.")


def start_and_show(opts: Any) -> None:
    """:func:`start` from a page: its error shown, or the page run again to show the new run's panel."""
    err = start(opts)
    if err:
        st.error(md(err))
    else:
        st.rerun()


def rerun_problem(run_id: str) -> tuple[Any, str | None]:
    """The options to run ``run_id`` again, and why it cannot be (``None``: it can): the run must
    have recorded its request, and the session must hold the same reference and query."""
    try:
        req = jobs.request(run_id)
    except CellannotError as err:
        return None, str(err)
    if req is None:
        return None, "this run did not record its settings (started from the command line or by an older version)"
    now = session_datasets()
    if isinstance(req["options"], jobs.RelabelRequest):
        if get(StateKeys.QUERY) is None:
            return None, "no query is loaded in this session: load the query it labelled"
        if req["datasets"] and any(now.get(role) != i for role, i in req["datasets"].items()):
            return None, "the query loaded now is not the one this run labelled: load it on the Data page"
        return req["options"], None
    if not data_loaded():
        return None, "no data is loaded in this session: load the reference and query it was trained on"
    if req["datasets"] and req["datasets"] != now:
        return None, ("the data loaded now is not the data this run was trained on: load the same reference and "
                      "query on the Data page to run it again")
    return req["options"], None


def device_choices() -> tuple[list[str], dict[str, str], str]:
    """``auto``, ``cpu``, ``cuda`` (and ``cuda:N`` for each GPU of several) with labels saying what
    this machine has."""
    from cellannot_core.training import available_devices

    avail = available_devices()
    gpus = [d for d in avail if d.startswith("cuda:")]
    labels = {"auto": f"auto ({'cuda' if 'cuda' in avail else 'cpu'} here)", "cpu": "cpu",
              "cuda": ("cuda (the current GPU)" if gpus else "cuda") if "cuda" in avail else "cuda (not available here)",
              **{d: f"{d} (GPU {d.partition(':')[2]})" for d in gpus}}
    note = "available here: " + ", ".join(avail) + ("" if "cuda" in avail else " (no CUDA GPU found)")
    return ["auto", "cpu", "cuda", *gpus], labels, note


def _pair_report() -> dict | None:
    """The Data page's check of the loaded pair (:func:`ui.data.check_pair`, cached), or None before a
    reference, a query and the label column are there."""
    import json

    from ui import data as data_ui

    ref, qry = get(StateKeys.REFERENCE), get(StateKeys.QUERY)
    if ref is None or qry is None or not get(StateKeys.LABEL_KEY):
        return None
    return data_ui.check_pair(get(StateKeys.REFERENCE_INFO)["id"], get(StateKeys.QUERY_INFO)["id"],
                              get(StateKeys.LABEL_KEY), get(StateKeys.QUERY_LABEL_KEY),
                              json.dumps(get(StateKeys.QC) or {}), ref, qry, get(StateKeys.BATCH_KEY))


#: models whose labeller is a calibrated linear SVM, fitted per type and fold after training
SVM_LABELLED = ("scanvi_svm", "svm_reject")
MANY_TYPES = 50  # reference types beyond which the SVM's time is said on the Train page


def labeller_note(model: str) -> str | None:
    """What the Train page says of the SVM labeller's time with many reference types: it grows with
    them, after training, and the quick run's budget does not bound it (an atlas reference of 111
    types: 199 s of the SVM against 10 s for 9 types of the same 7,333 cells, one thread; found
    2026-12-07)."""
    rep = _pair_report() if model in SVM_LABELLED else None
    n = len(rep.get("classes") or []) if rep and rep.get("ok") else 0
    if n <= MANY_TYPES:
        return None
    return (f"{n} reference types: after training, {model}'s labeller fits a linear SVM per type and fold, which "
            "takes minutes more with this many (and is not bounded by the quick run's budget). logreg labels many "
            "types faster.")


def preflight(model: str) -> str | None:
    """Why *Start training* is disabled for ``model`` on the loaded pair (None: it can start).

    The same checks as training, run before it: the model can run on this machine (e.g. R for
    seurat), the pair passes preparation (shared genes, at least two reference classes big
    enough, ...), and count models get raw counts.
    """
    from cellannot_core.models import get_spec

    spec = get_spec(model)
    reason = spec.unavailable_reason()
    if reason:
        return f"{model} cannot run on this server: {reason}"
    rep = _pair_report()
    if rep is None:
        return "load a reference and a query and pick the reference label column on the Data page"
    if not rep["ok"]:
        return rep["error"]
    from cellannot_core.pipeline import counts_refusal

    if msg := counts_refusal(model, {"counts_available": rep.get("counts_available")}):
        return msg
    return None


def training_form() -> Any | None:
    """Model picker, registry-built hyper-parameters, device, seed, quick run and run options.

    Returns validated ``AnnotateOptions`` when *Start training* was clicked (else ``None``);
    invalid settings are reported with ``st.error`` in the model's own words.
    """
    from cellannot_core.models import get_spec, model_names

    names = model_names()
    unavailable = {n for n in names if get_spec(n).unavailable_reason()}
    try:  # after a reload the picker starts at the shown run's model, not the default
        shown = jobs.run_status(get(StateKeys.RUN_ID)).get("model") if get(StateKeys.RUN_ID) else None
    except CellannotError:
        shown = None
    model = st.selectbox("Model", names, key=WidgetKeys.MODEL, index=names.index(shown) if shown in names else 0,
                         format_func=lambda n: n + ("  (recommended)" if n == names[0] else "")
                         + ("  (unavailable here)" if n in unavailable else ""))
    spec = get_spec(model)
    st.markdown(spec.description)
    sup = spec.supports
    st.caption(" · ".join(f"{':material/check:' if ok else ':material/remove:'} {what}" for what, ok in (
        ("latent space", sup.latent), ("generates cells", sup.samples), ("explain matrices", sup.explain),
        ("needs raw counts", sup.needs_counts))))
    hparams = hparam_form(spec)
    c1, c2, c3 = st.columns(3)
    devices, device_labels, device_note = device_choices()
    device = c1.selectbox("Device", devices, key=WidgetKeys.DEVICE, help=device_note, format_func=device_labels.get)
    c1.caption(device_note)
    seed = c2.number_input("Seed", 0, 2**31 - 1, 0, key=WidgetKeys.SEED)
    quick = c3.toggle("Quick run (time budget)", key=WidgetKeys.QUICK,
                      help="Training ends after the epoch that passes this many seconds, keeping the best state so far "
                           "(as early stopping does): a model that trains fully within the budget gives its full result.")
    quick_seconds = c3.number_input("Training time budget (s)", 5, 3600, QUICK_SECONDS, step=5,
                                    key=WidgetKeys.QUICK_SECONDS, disabled=not quick)
    if note := labeller_note(model):
        st.caption(note)
    with st.expander("Run options"):
        o1, o2, o3 = st.columns(3)
        n_top = o1.number_input("Highly variable genes", 50, 20_000, DEFAULT_N_TOP_GENES, step=100, key=WidgetKeys.N_TOP_GENES)
        hvg_flavor = o1.selectbox(
            "Rank genes by", list(HVG_FLAVORS), index=HVG_FLAVORS.index(DEFAULT_HVG_FLAVOR), key=WidgetKeys.HVG_FLAVOR,
            format_func={"seurat": "dispersion of log values (scanpy 'seurat')",
                         "seurat_v3": "variance of counts (scanpy 'seurat_v3')"}.get,
            help="'seurat_v3' (the default) ranks genes by the variance of their counts, so a gene high in every "
                 "cell ranks low: insulin, which ambient RNA puts in every pancreas cell, is left out of 2,000 mouse "
                 "genes (the other hormones are kept). 'seurat' ranks the most expressed genes of a tissue at one "
                 "fixed place, so with few genes they are all left out. Data without counts is ranked with 'seurat'.")
        cap = o1.number_input("Cap the epochs (0 = the model's own budget)", 0, 10_000, 0, key=WidgetKeys.MAX_EPOCHS,
                              help="When set, it replaces the model's own *max epochs* hyper-parameter above (the "
                                   "recommended model's: its latent model's epochs).")
        accept = o2.slider("Accept share of reference validation cells", 0.5, 1.0, 0.95, 0.01, key=WidgetKeys.ACCEPT,
                           help="Sets the Unknown threshold on the novelty score.")
        # a model that cannot generate gets a field of its own: one shared kept its 0 for the next model that can,
        # which then trained with no generated cells (found 2026-12-07)
        n_gen = o3.number_input("Generated cells per class", 0, 1000, 100 if sup.samples else 0,
                                key=WidgetKeys.N_GENERATE if sup.samples else f"{WidgetKeys.N_GENERATE}_none",
                                disabled=not sup.samples,
                                help="Sampled from the model after training, shown in the latent space")
    blocked = preflight(model)
    if blocked:
        st.warning(f"Training cannot start: {blocked}", icon=":material/block:")
    if not st.button("Start training", type="primary", key=WidgetKeys.START, icon=":material/play_arrow:",
                     disabled=blocked is not None):
        return None
    try:
        return build_options(model=model, hparams=hparams, device=device, seed=seed,
                             max_epochs=int(cap) or None, n_top_genes=n_top, hvg_flavor=hvg_flavor, accept=accept,
                             n_generate=n_gen if sup.samples else 0,
                             max_train_seconds=float(quick_seconds) if quick else None)
    except CellannotError as err:
        st.error(md(err))
        return None


def relabel_form() -> Any | None:
    """Pick one of the visitor's finished runs whose model labels the session's query without
    training; returns a :class:`ui.jobs.RelabelRequest` when *Label the query* was clicked."""
    from ui.data import run_references

    runs = run_references()
    if not runs:
        st.caption("None of your runs has finished with a saved model yet.")
        return None
    seen = st.session_state.get(StateKeys.RELABEL_SEEN)
    if seen is not None and runs[0] not in seen:  # a run finished since: offer it, not the earlier pick, which a
        st.session_state[WidgetKeys.RELABEL_RUN] = runs[0]  # keyed widget keeps (found 2026-12-07)
    st.session_state[StateKeys.RELABEL_SEEN] = list(runs)
    pick = st.selectbox("Run whose model labels the query", runs, key=WidgetKeys.RELABEL_RUN,
                        format_func=_run_choice)
    st.caption("Seconds, not minutes: the model is used as it was trained. A model that learns its latent space "
               "from the query too (scanvi_svm and the other semi-supervised models) was trained with *its* "
               "query, so it calls fewer cells of types its reference lacks Unknown in a new one; to train it "
               "again with this query, pick *From a finished run* as the reference on the Data page and train.")
    if not st.button("Label the query", key=WidgetKeys.RELABEL_START, icon=":material/label:"):
        return None
    return jobs.RelabelRequest(pick, get(StateKeys.QUERY_LABEL_KEY))


def _run_choice(run_id: str) -> str:
    return _finished_run_label(str(jobs.runs_root()), run_id)


@st.cache_data(show_spinner=False, max_entries=1000)
def _finished_run_label(root: str, run_id: str) -> str:
    """A finished run as the relabel picker shows it: id, model, its classes and label column (a
    finished run never changes, so its card is read once, not on every rerun)."""
    from cellannot_core.runs import RunDir

    try:
        card = RunDir.open(root, run_id).card() or {}
    except CellannotError:
        return run_id
    key = (card.get("options") or {}).get("label_key")
    return (f"{run_id} · {card.get('model', '?')} · {len(card.get('classes') or [])} types"
            + (f" from '{key}'" if key else ""))  # (a select box shows its options as plain text)


# ------------------------------------------------------------------------------ live panel


def _progress_line(s: dict[str, Any]) -> str:
    parts = []
    if s.get("max_epochs"):
        parts.append(f"epoch {s.get('epoch', 0)} of at most {s['max_epochs']}")
    parts.append(f"elapsed {fmt_seconds(s.get('elapsed'))}")
    if s.get("state") == "running" and s.get("eta") is not None:
        parts.append(f"about {fmt_seconds(s['eta'])} left")
    return " · ".join(parts)


def _done_summary(run_id: str) -> None:
    from cellannot_core.runs import RunDir
    from ui.results import accuracy_metric

    card = RunDir.open(jobs.runs_root(), run_id).card() or {}
    val = card.get("validation") or {}
    qm = card.get("query_metrics") or {}
    c = st.columns(4)
    c[0].metric("Validation accuracy", f"{val.get('val_accuracy', float('nan')):.1%}")
    c[1].metric("Query cells", f"{card.get('n_query', 0):,}")
    c[2].metric("Called Unknown", f"{card.get('unknown_fraction', 0):.1%}")
    accuracy_metric(c[3], qm)  # as the Label transfer page shows it
    if card.get("labelled_with"):
        st.caption(md(card["labelled_with"]["note"]))
    tr = card.get("training") or {}
    if tr.get("diverged"):
        st.warning(f"Training diverged ({tr.get('divergence_message')}); the results use the last good "
                   "checkpoint. Try a lower learning rate or fewer SGLD steps.")
    st.page_link("pages/results.py", label="See the label transfer", icon=":material/arrow_forward:")


def _panel_body(run_id: str, was_active: bool) -> None:
    try:
        s = jobs.run_status(run_id)
    except CellannotError as err:
        st.error(md(err))
        return
    state = s.get("state")
    st.markdown(f"Run `{run_id}` ({s.get('model', '')})")
    st.markdown(status_text(s))
    st.progress(float(min(1.0, max(0.0, s.get("progress") or 0.0))), text=_progress_line(s))
    if s.get("stale"):
        st.warning(s["stale_note"])
    if state in jobs.ACTIVE_STATES and s.get("live"):
        if st.button("Cancel training", key=WidgetKeys.CANCEL, icon=":material/stop:"):
            jobs.cancel(run_id)
            st.toast("Cancelling: training stops after the current mini-batch.")
    if state == "failed":
        st.error(f"The run failed: {md(s.get('message'))}")  # (a run labelling with a finished run's model trains nothing)
    elif state == "cancelled":
        msg = str(s.get("message") or "")
        st.warning("The run was cancelled" + (f" ({md(msg)})." if msg and "cancelled" not in msg.lower() else "."))
    elif state == "interrupted":
        st.warning(f"The run was interrupted: {md(s.get('message'))}.")
    if state in ("failed", "cancelled", "interrupted"):
        _rerun_button(run_id)
    from cellannot_core.plots import training_curves
    from cellannot_core.runs import RunDir

    rd = RunDir.open(jobs.runs_root(), run_id)
    hist = rd.history()
    if len(hist) >= 2:
        latent = ((rd.card() or {}).get("hparams") or {}).get("latent_model") if state == "done" else None
        hybrid = isinstance(latent, str) and latent != "auto"  # (two validation accuracies, unexplained: 2026-12-07)
        plot(training_curves(hist, title=f"Training of {latent}, the latent model" if hybrid else
                             "Loss and validation accuracy"), key=f"curves_{run_id}")
        if hybrid:
            st.caption(f"The curve's validation accuracy is {latent}'s own classifier's; the labels come from the "
                       "calibrated SVM, whose validation accuracy is the figure below.")
    elif hist and state == "done":  # one fit, no epochs (e.g. logreg): a curve would be one dot
        st.caption("This model is fitted in one step, so there are no training curves; its validation "
                   "accuracy is below.")
    if state == "done":
        _done_summary(run_id)
    log = jobs.read_log(run_id)
    if log:
        with st.expander("Log"):
            st.code("\n".join(log), language=None)
    if was_active and state not in jobs.ACTIVE_STATES:
        st.rerun()  # the whole page: stop polling, enable the result pages


def _rerun_button(run_id: str) -> None:
    opts, problem = rerun_problem(run_id)
    if st.button("Run again with the same settings", key=WidgetKeys.RERUN, icon=":material/replay:",
                 disabled=problem is not None, help=problem):
        start_and_show(opts)
    if problem:
        st.caption(f"Cannot run again here: {problem}.")


def run_panel(run_id: str) -> None:
    """Status, progress, curves and Cancel of a run; polls every second while it is active."""
    if not (jobs.runs_root() / run_id).is_dir():  # said as the result pages say it (the error named the server's
        st.info(f"Run `{run_id}` no longer exists: it was deleted. Open another on the **Runs** page.")  # folder)
        return
    try:
        active = jobs.run_status(run_id).get("state") in jobs.ACTIVE_STATES
    except CellannotError as err:
        st.error(md(err))
        return

    @st.fragment(run_every=1.0 if active else None)
    def _panel() -> None:
        _panel_body(run_id, active)

    _panel()
