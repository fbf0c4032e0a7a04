"""Runs page helpers: every run of the session's own in one table (parameters and metrics), the
plots of a sweep's trials, and the actions on one run (open, run again, export its card, delete).

Everything comes from the run directories (status, card, ``sweep.json`` of sweep trials), so the
page shows the same after a reload or a server restart. Only the session's own runs are listed
(and the command line's while the app serves this machine only), as everywhere in the app.
"""
from __future__ import annotations

import json
import time
from typing import Any

import pandas as pd

from cellannot_core._constants import RunFiles
from cellannot_core.errors import CellannotError
from ui import jobs

METRICS = {  # column -> (label, where in the card)
    "val_accuracy": ("Validation accuracy (reference)", ("validation", "val_accuracy")),
    "val_ece": ("Validation ECE (reference)", ("validation", "ece_after")),
    "acc_in": ("Query accuracy (known types)", ("query_metrics", "acc_in")),
    "acc_open": ("Query open-set accuracy", ("query_metrics", "acc_open")),
    "auroc_ood": ("Query novelty AUROC", ("query_metrics", "auroc_ood")),
    "unknown_fraction": ("Unknown", ("unknown_fraction",)),
    "train_seconds": ("Training seconds", ("training", "seconds")),
    "epochs": ("Epochs", ("training", "n_epochs")),
}
PARAM = "param "  # prefix of hyper-parameter columns


def _dig(d: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _changed_hparams(model: str | None, hparams: dict[str, Any], asked: dict[str, Any] | None = None) -> dict[str, Any]:
    """The hyper-parameters that differ from the model's registry defaults. A default of "auto" is one the
    model resolves itself (``scanvi_svm``'s latent model): the card records what it chose, so what was
    ``asked`` for (the run's request) is compared instead (the table listed ``latent_model=scanvi`` for
    runs left at their defaults, found 2026-12-07). The pipeline's own (``internal``: ``n_batches``, set from
    the batch key) are left out: a run with a batch key of 6 samples was listed as ``n_batches=6``."""
    from cellannot_core.models import get_spec

    try:
        spec = get_spec(model) if model else None
    except (KeyError, CellannotError):
        spec = None
    if spec is None:
        return dict(hparams)
    asked = asked or {}
    return {k: v for k, v in hparams.items()  # the pipeline's own (n_batches, from the batch key) are no one's change
            if k not in spec.hparams or not spec.hparams[k].internal and spec.hparams[k].default != (
                asked.get(k, "auto") if spec.hparams[k].default == "auto" else v)}


def runs_table() -> pd.DataFrame:
    """One row per run of this session: id, state, model, created, seed, its metrics (columns of
    :data:`METRICS`), the hyper-parameters changed from the model's defaults (``param <name>``
    columns and a short ``changed`` text), for a sweep's trial its study, trial and score, and ``choices``:
    whether the Unknown calls were changed on the Calibration page (the metrics are the run's own calls;
    the table did not say so until 2026-12-07)."""
    from cellannot_core.runs import RunDir, list_runs, read_json
    from cellannot_core.sweep import SWEEP_FILE

    from ui.calibration import DECISIONS_FILE
    from ui.session import owner_id, server_is_local

    rows = []
    for r in list_runs(jobs.runs_root(), owner=owner_id(), include_unowned=server_is_local()):
        rd = RunDir.open(jobs.runs_root(), r["id"])
        card = rd.card() or {}
        sweep = read_json(rd.file(SWEEP_FILE), {})
        sweep = sweep if isinstance(sweep, dict) else {}
        req = read_json(rd.file(RunFiles.REQUEST), {})
        req = req if isinstance(req, dict) else {}
        names = req.get("names") if isinstance(req.get("names"), dict) else {}
        asked = (req.get("options") or {}).get("hparams") if isinstance(req.get("options"), dict) else None
        changed = _changed_hparams(r["model"], card.get("hparams") or {}, asked if isinstance(asked, dict) else None)
        if sweep.get("params"):
            changed = {**changed, **sweep["params"]}
        kept = read_json(rd.file(DECISIONS_FILE), None)  # (written only when they differ from the run's own)
        row = {"id": r["id"], "state": r["state"], "model": r["model"] or "(not recorded)",
               "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"])) if r["created"] else "",
               "reference": str(names.get("reference") or ""), "query": str(names.get("query") or ""),
               "seed": card.get("seed"), "message": r["message"] if r["state"] != "done" else "",
               "model of run": (card.get("labelled_with") or {}).get("run", ""),  # labelled without training
               "sweep": sweep.get("study", ""), "trial": sweep.get("trial"), "objective": sweep.get("objective", ""),
               "value": sweep.get("value"), "choices": "changed" if isinstance(kept, dict) and kept else "",
               "changed": ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in changed.items())}
        row.update({k: _dig(card, path) for k, (_, path) in METRICS.items()})
        row.update({PARAM + k: v for k, v in changed.items()})
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("trial", "value"):  # (None of the runs outside a sweep showed as "None", 2026-12-07)
        if col in out:
            out[col] = pd.to_numeric(out[col], errors="coerce")
    return out


def sweep_table(df: pd.DataFrame, study: str) -> pd.DataFrame:
    """The finished trials of one sweep, in the shape of :func:`ui.compare.sweep_figures`."""
    t = df[(df["sweep"] == study) & (df["state"] == "done") & df["value"].notna()].copy()
    t = t.rename(columns={"id": "run_id"}).sort_values("trial")
    keep = [c for c in t.columns if c.startswith(PARAM) and t[c].notna().all()]
    return t[["trial", "value", "run_id", *keep]].reset_index(drop=True)


def card_bytes(run_id: str) -> bytes:
    """The run card as exported, with the Calibration page's decisions kept for the run (a threshold, the
    Unknown groups accepted), as the annotated query's download carries them (the export left them out,
    found 2026-12-07)."""
    from cellannot_core.runs import RunDir, read_json

    from ui.calibration import DECISIONS_FILE

    rd = RunDir.open(jobs.runs_root(), run_id)
    card = dict(rd.card() or {})
    kept = read_json(rd.file(DECISIONS_FILE), None)
    if isinstance(kept, dict) and kept:
        card["decisions"] = kept
    return json.dumps(card, indent=2, default=str).encode()


def picker_key() -> str:
    """The session key of the Runs page's run picker (:data:`WidgetKeys.RUN_PICKER`, then a new one each
    time the pick is cleared: a browser sends its widget's old value back, so clearing it in place left the
    vanished run shown, found 2026-12-07)."""
    import streamlit as st

    from ui.state import StateKeys, WidgetKeys

    n = st.session_state.get(StateKeys.RUN_PICKER_NONCE, 0)
    return WidgetKeys.RUN_PICKER if not n else f"{WidgetKeys.RUN_PICKER}_{n}"


def clear_pick() -> None:
    """An empty run picker from the next rerun on (:func:`picker_key`)."""
    import streamlit as st

    from ui.state import StateKeys

    st.session_state[StateKeys.RUN_PICKER_NONCE] = st.session_state.get(StateKeys.RUN_PICKER_NONCE, 0) + 1


def picked_run_gone(shown: list[str], listed: list[str]) -> str | None:
    """What to tell when the run picked on the Runs page is no longer among those shown (deleted in
    another tab or on the server, or hidden by the model filter), with the pick cleared; None when it
    is there. Streamlit's picker would fall back to the newest run, which the next Delete then
    deleted in its place (found 2026-12-07 by a lab admin's probe, two tabs open on one run)."""
    import streamlit as st

    from ui.state import code

    prev = st.session_state.get(picker_key())
    if prev is None or prev in shown:
        return None
    clear_pick()
    if prev in listed:
        return f"Run {code(prev)} is hidden by the model filter: pick a run."
    return f"Run {code(prev)} no longer exists (deleted in another tab or on the server): pick a run."


def delete_run(run_id: str) -> None:
    """The delete button's callback: the run deleted for good and the popover that asked closed (it stayed
    open over the next run picked, found 2026-12-07); why a run could not be deleted is shown once."""
    import streamlit as st

    from cellannot_core.runs import RunDir

    from ui.state import StateKeys, WidgetKeys, get, set_run

    try:
        RunDir.open(jobs.runs_root(), run_id).delete()
    except CellannotError as err:
        st.session_state[StateKeys.DELETE_ERROR] = str(err)
        return
    if get(StateKeys.RUN_ID) == run_id:
        set_run(None)
    clear_pick()  # (this tab deleted it: no "deleted in another tab", no other run picked in its place)
    st.session_state[WidgetKeys.DELETE_POPOVER] = False
