"""The Runs page (issue 17): every run of the session's own with its parameters and metrics, a
sweep's trials side by side, and open / run again / export the card / delete for one run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cellannot_core.pipeline import AnnotateOptions
from conftest import demo_subset
from ui import jobs
from ui.session import SESSION_PARAM, TOKEN_KEY, owner_id
from ui.state import StateKeys, WidgetKeys

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
LABEL = "cell_type_harmonized"


@pytest.fixture(autouse=True)
def _runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLANNOT_RUNS", str(tmp_path / "runs"))


def _visit(token: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    if token:
        at.query_params[SESSION_PARAM] = token
    at.run()
    return at.switch_page("pages/runs.py").run()


def test_runs_page_lists_parameters_metrics_and_a_sweep_and_acts_on_one_run(tmp_path):
    from cellannot_core._constants import RunFiles
    from cellannot_core.runs import RunDir
    from cellannot_core.sweep import run_sweep

    at = _visit()
    assert any("No runs yet" in i.value for i in at.info)
    tok = at.session_state[TOKEN_KEY]
    ref, qry = demo_subset(200, 150)
    opts = AnnotateOptions(label_key=LABEL, query_label_key=LABEL, model="logreg", n_top_genes=200)
    plain = jobs.start_job(ref, qry, opts, owner=owner_id(tok), names={"reference": "lung_atlas.h5ad", "query": "p1.h5ad"})
    assert jobs.wait(plain, timeout=120)["state"] == "done"
    run_sweep(ref, qry, opts, storage=Path(jobs.runs_root()) / "sweeps.db", study_name="my-sweep", n_trials=3,
              sampler="random", params=["C"], runs_dir=jobs.runs_root(), owner=owner_id(tok))
    someone_else = jobs.start_job(ref, qry, opts, owner=owner_id("another visitor's token 0123456789"))
    assert jobs.wait(someone_else, timeout=120)["state"] == "done"

    at = _visit(tok)
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == 4 and someone_else not in set(table["id"])  # the session's own runs only
    assert table["val_accuracy"].between(0, 1).all() and table["acc_in"].between(0, 1).all()
    trials = table[table["sweep"] == "my-sweep"]
    assert len(trials) == 3 and trials["changed"].str.startswith("C=").all()
    assert table.loc[table["id"] == plain, "changed"].iloc[0] == ""
    assert (table["choices"] == "").all()
    # choices made on the Calibration page are marked: the table's figures are the run's own calls
    from ui.calibration import DECISIONS_FILE

    (Path(jobs.runs_root()) / plain / DECISIONS_FILE).write_text(json.dumps({"method": "mahalanobis", "threshold": 1.0,
                                                                            "accepted": [], "as_short": []}))
    at = _visit(tok)
    table = at.dataframe[0].value
    assert table.set_index("id")["choices"].to_dict() == {i: "changed" if i == plain else "" for i in table["id"]}
    # which data each run used, by the names the Data page showed
    assert table.loc[table["id"] == plain, ["reference", "query"]].iloc[0].tolist() == ["lung_atlas.h5ad", "p1.h5ad"]
    # the sweep's trials side by side: objective against C, and parallel coordinates
    assert at.selectbox(key=WidgetKeys.RUNS_SWEEP).value == "my-sweep"
    shown = at.dataframe[1].value
    assert len(shown) == 3 and shown["value"].between(0, 1).all() and (shown["param C"] > 0).all()
    assert len(at.get("plotly_chart")) == 2
    # one run: export its card, open it, delete it
    at.selectbox(key=WidgetKeys.RUN_PICKER).set_value(plain).run()
    card = at.get("download_button")
    assert any(getattr(b, "label", "") == "Export its card (.json)" for b in card)
    assert json.loads(RunDir.open(jobs.runs_root(), plain).file(RunFiles.CARD).read_text())["model"] == "logreg"
    at.button(key=WidgetKeys.OPEN_RUN).click().run()
    assert at.session_state[StateKeys.RUN_ID] == plain
    # run again needs the data it was trained on in the session: this session has none loaded
    assert at.button(key=WidgetKeys.RUNS_RERUN).disabled
    # asked once more before deleting (in a popover), and another tab still on the run is told it is gone
    assert any("deleted for good" in c.value for c in at.caption)
    other_tab = at.session_state[StateKeys.RUN_ID]
    at.session_state[WidgetKeys.DELETE_POPOVER] = True  # opened ...
    at.run()
    at.button(key=WidgetKeys.DELETE_RUN).click().run()
    assert not at.exception
    assert at.session_state[WidgetKeys.DELETE_POPOVER] is False  # ... and closed once the run is gone (2026-12-07)
    assert not (Path(jobs.runs_root()) / plain).exists() and at.session_state[StateKeys.RUN_ID] is None
    assert len(at.dataframe[0].value) == 3
    at.session_state[StateKeys.RUN_ID] = other_tab
    at.switch_page("pages/results.py").run()
    assert not at.exception and not at.error
    assert any("no longer exists: it was deleted" in i.value for i in at.info)


def test_a_hyper_parameter_the_model_resolves_itself_is_not_listed_as_changed():
    """Found 2026-12-07: runs of the default model left at its defaults listed ``latent_model=scanvi``,
    the value ``auto`` resolved to; one asked for by name is still listed."""
    from ui.runs import _changed_hparams

    card = {"latent_model": "scanvi", "C": 1.0}
    assert _changed_hparams("scanvi_svm", card, {"latent_model": "auto"}) == {}
    assert _changed_hparams("scanvi_svm", card) == {}  # a run of the command line: no request kept
    assert _changed_hparams("scanvi_svm", {**card, "latent_model": "clams"}, {"latent_model": "clams"}) == {
        "latent_model": "clams"}
    assert _changed_hparams("scanvi_svm", {**card, "C": 2.0}, {"latent_model": "auto"}) == {"C": 2.0}
    # the batch key's number of samples is set by the pipeline, not changed by anyone (mouse -> human pancreas with
    # --batch-key donor, 2 + 4 donors: listed as n_batches=6)
    assert _changed_hparams("scanvi_svm", {**card, "n_batches": 6}) == {}
    assert _changed_hparams("scanvi_svm", {**card, "n_batches": 6, "C": 2.0}, {}) == {"C": 2.0}


def test_a_run_deleted_in_another_tab_is_never_replaced_by_another_under_delete():
    """Found 2026-12-07 (a lab admin's probe): with the Runs page open in two tabs on run X, X deleted in
    the first, the second's picker fell back to the newest run, and its next Delete deleted that one."""
    from cellannot_core.runs import RunDir

    at = _visit()
    tok = at.session_state[TOKEN_KEY]
    ref, qry = demo_subset(200, 150)
    opts = AnnotateOptions(label_key=LABEL, query_label_key=LABEL, model="logreg", n_top_genes=200)
    made = []
    for _ in range(3):  # one at a time (a session may have two at once)
        made.append(jobs.start_job(ref, qry, opts, owner=owner_id(tok)))
        assert jobs.wait(made[-1], timeout=120)["state"] == "done"
    older, newer, kept = made
    at = _visit(tok)
    at.selectbox(key=WidgetKeys.RUN_PICKER).set_value(older).run()
    assert at.selectbox(key=WidgetKeys.RUN_PICKER).value == older
    RunDir.open(jobs.runs_root(), older).delete()  # ... in the other tab
    at.run()
    assert not at.exception
    assert any("no longer exists" in w.value and older in w.value for w in at.warning)
    picker = f"{WidgetKeys.RUN_PICKER}_1"  # a new, empty picker (a browser sent the old one's value back)
    assert at.selectbox(key=picker).value is None
    assert not [b for b in at.button if b.key == WidgetKeys.DELETE_RUN]  # nothing to delete until a run is picked
    at.run()
    assert at.selectbox(key=picker).value is None and not at.warning  # said once, still no pick
    assert (Path(jobs.runs_root()) / newer).is_dir()
    at.selectbox(key=picker).set_value(newer).run()
    assert [b for b in at.button if b.key == WidgetKeys.DELETE_RUN]
    at.session_state[WidgetKeys.DELETE_POPOVER] = True
    at.run()
    at.button(key=WidgetKeys.DELETE_RUN).click().run()  # this tab deletes it: no "another tab", no other run picked
    assert not (Path(jobs.runs_root()) / newer).exists() and not at.warning
    assert at.selectbox(key=f"{WidgetKeys.RUN_PICKER}_2").value is None  # the run left is not picked in its place
    assert (Path(jobs.runs_root()) / kept).is_dir()
