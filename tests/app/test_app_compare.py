"""Compare page: models picked from the registry (unavailable ones greyed out), the comparison
as a background job with its table and charts, and the leave-one-class-out self-check."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cellannot_core.compare import EVAL_QUERY
from cellannot_core.models import MODELS
from ui import compare as cmp
from ui import jobs
from conftest import demo_subset
from ui.state import StateKeys

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
LABEL = "cell_type_harmonized"


@pytest.fixture(scope="module")
def pair():
    return demo_subset(300, 200)


def page(pair=None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    if pair is not None:
        ref, qry = pair
        at.session_state[StateKeys.REFERENCE] = ref
        at.session_state[StateKeys.QUERY] = qry
        for key, a, name in ((StateKeys.REFERENCE_INFO, ref, "ref"), (StateKeys.QUERY_INFO, qry, "query")):
            at.session_state[key] = {"id": f"tiny-{name}", "name": name, "source": "test",
                                     "n_cells": a.n_obs, "n_genes": a.n_vars}
        at.session_state[StateKeys.LABEL_KEY] = LABEL
        at.session_state[StateKeys.QUERY_LABEL_KEY] = LABEL
    return at.switch_page("pages/compare.py").run()


def test_needs_data():
    at = page()
    assert not at.exception and "Load data first" in at.info[0].value


def test_compare_job_table_and_charts(pair):
    at = page(pair)
    assert not at.exception
    boxes = {c.label: c for c in at.checkbox}
    assert set(MODELS) <= set(boxes)  # every registry model is listed
    for name, spec in MODELS.items():
        reason = spec.unavailable_reason()
        assert boxes[name].disabled == (reason is not None)
        if reason:
            assert any(reason in c.value for c in at.caption)
    assert at.button(key=cmp.CompareKeys.START).disabled  # nothing ticked yet
    at.checkbox(key=cmp.CompareKeys.MODEL.format(name="logreg")).check()
    at.checkbox(key=cmp.CompareKeys.MODEL.format(name="knn")).check().run()
    at.button(key=cmp.CompareKeys.START).click().run()
    assert not at.exception
    job_id = at.session_state[cmp.CompareKeys.JOB["compare"]]
    snap = cmp.wait(job_id, timeout=120)
    assert snap["state"] == "done", snap
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert table["Model"].tolist() == ["logreg", "knn"]
    assert (table["Evaluated on"] == EVAL_QUERY).all() and table["Accuracy"].between(0, 1).all()
    assert len(at.get("plotly_chart")) == 2
    assert "Comparison table (.csv)" in {b.label for b in at.get("download_button")}


def test_novelty_self_check_job(pair):
    at = page(pair)
    at.selectbox(key=cmp.CompareKeys.LOCO_MODEL).set_value("knn")
    at.multiselect(key=cmp.CompareKeys.LOCO_CLASSES).set_value(["B"]).run()
    at.button(key=cmp.CompareKeys.LOCO_START).click().run()
    assert not at.exception
    job_id = at.session_state[cmp.CompareKeys.JOB["loco"]]
    assert cmp.wait(job_id, timeout=120)["state"] == "done"
    at.run()
    assert not at.exception
    df = next(d.value for d in at.dataframe if "held_out" in d.value.columns)
    assert df["held_out"].tolist() == ["B"] and df["auroc_maxprob"].between(0, 1).all()
    assert len(at.get("plotly_chart")) == 1


def test_cancel_and_failure_are_plain_words(pair):
    from cellannot_core.pipeline import AnnotateOptions

    ref, qry = pair
    bad = cmp.start("compare", ref, qry, AnnotateOptions(label_key="no_such_column"), models=["knn"])
    snap = cmp.wait(bad, timeout=60)
    assert snap["state"] == "failed" and "no_such_column" in snap["error"] and "Traceback" not in snap["error"]
    job = cmp.start("loco", ref, qry, AnnotateOptions(label_key=LABEL), model="tabnet", classes=["B", "CD4 T"])
    cmp.cancel(job)
    assert cmp.wait(job, timeout=60)["state"] == "cancelled"


def _two_runs(pair, query_label_key):
    from cellannot_core.pipeline import AnnotateOptions

    ref, qry = pair
    ids = []
    for model in ("logreg", "knn"):
        rid = jobs.start_job(ref, qry, AnnotateOptions(label_key=LABEL, query_label_key=query_label_key, model=model,
                                                       n_top_genes=300),
                             datasets={"reference": "tiny-ref", "query": "tiny-query"})
        assert jobs.wait(rid, timeout=300)["state"] == "done"
        ids.append(rid)
    return ids


def test_compare_uses_existing_runs_without_training(pair, tmp_path, monkeypatch):
    """Issue 13: Compare retrained models that already had runs, and with an unlabelled query it
    scored reference validation only (logreg 'won' with accuracy 1.000)."""
    monkeypatch.setenv("CELLANNOT_RUNS", str(tmp_path / "labelled"))
    ids = _two_runs(pair, LABEL)
    at = page(pair)
    assert not at.exception
    assert at.multiselect(key=cmp.CompareKeys.RUNS).value == ids[::-1]  # newest first, both on this data
    table = at.dataframe[0].value
    assert {"Open-set accuracy", "Novelty AUROC", "Unknown"} <= set(table.columns) and len(table) == 2
    assert any("same label" in str(c.proto) for c in at.get("plotly_chart"))  # the agreement heatmap
    assert "can be compared above without training them again" in " ".join(c.value for c in at.caption)
    assert "changed on the Calibration page" not in " ".join(c.value for c in at.caption)
    from ui.calibration import DECISIONS_FILE  # a run whose calls were changed there is named (2026-12-07)

    (tmp_path / "labelled" / ids[0] / DECISIONS_FILE).write_text('{"method": "mahalanobis", "threshold": 1.0}')
    at = page(pair)
    assert f"Run {ids[0]} had its Unknown calls changed on the Calibration page" in " ".join(c.value for c in at.caption)

    monkeypatch.setenv("CELLANNOT_RUNS", str(tmp_path / "unlabelled"))
    _two_runs(pair, None)
    at = page(pair)
    assert not at.exception
    assert any("The query has no labels" in i.value for i in at.info)
    table = at.dataframe[0].value
    assert "Open-set accuracy" not in table.columns and "Accuracy (known types)" not in table.columns
    assert "Reference validation accuracy" in table.columns and "Unknown" in table.columns
    # runs with and without the query's labels picked together: said so, not "the query has no labels" (found
    # 2026-12-07, a probe of the results pages)
    monkeypatch.setenv("CELLANNOT_RUNS", str(tmp_path / "mixed"))
    ids = _two_runs(pair, LABEL)[:1] + _two_runs(pair, None)[:1]
    at = page(pair)
    at = at.multiselect(key=cmp.CompareKeys.RUNS).set_value(ids).run()
    assert not at.exception and not any("The query has no labels" in i.value for i in at.info)
    assert any(f"Not every run picked was measured against the query's own labels (1 of 2 were not: {ids[1]})" in i.value
               for i in at.info)


def test_a_sweep_is_launched_followed_and_compared(pair, tmp_path, monkeypatch):
    """Issue 17: a sweep from the app, as a background job; every trial a run of the session's."""
    from cellannot_core.runs import list_runs

    monkeypatch.setenv("CELLANNOT_RUNS", str(tmp_path / "runs"))
    at = page(pair)
    assert not at.exception
    at.selectbox(key=cmp.CompareKeys.SWEEP_MODEL).set_value("logreg").run()
    at.number_input(key=cmp.CompareKeys.SWEEP_TRIALS).set_value(3)
    at.multiselect(key=cmp.CompareKeys.SWEEP_PARAMS).set_value(["C"]).run()
    at.button(key=cmp.CompareKeys.SWEEP_START).click().run()
    assert not at.exception
    job_id = at.session_state[cmp.CompareKeys.JOB["sweep"]]
    snap = cmp.wait(job_id, timeout=300)
    assert snap["state"] == "done", snap
    at.run()
    assert not at.exception
    table = next(d.value for d in at.dataframe if "param C" in d.value.columns)
    assert len(table) == 3 and table["value"].between(0, 1).all()
    assert any("Best: trial" in s.value for s in at.success)
    assert len(at.get("plotly_chart")) >= 2  # value against C, parallel coordinates
    runs = list_runs(tmp_path / "runs", include_unowned=True)
    assert {r["id"] for r in runs} == set(table["run_id"])  # every trial is a run
    assert all(r["state"] == "done" for r in runs)


def test_a_comparison_outlives_a_reload_and_a_restart_says_it_was_interrupted(pair):
    """The page kept its job's id in the Streamlit session only: a reload lost a running or finished
    comparison (the job ran on, unreachable). The session's record brings it back."""
    import json

    from ui.session import SESSION_PARAM, TOKEN_KEY, owner_id

    at = page(pair)
    tok = at.session_state[TOKEN_KEY]
    at.checkbox(key=cmp.CompareKeys.MODEL.format(name="logreg")).check().run()
    at.button(key=cmp.CompareKeys.START).click().run()
    job_id = at.session_state[cmp.CompareKeys.JOB["compare"]]
    assert cmp.wait(job_id, timeout=120)["state"] == "done"

    def reload() -> AppTest:  # a new Streamlit session with the same private link
        again = AppTest.from_file(APP, default_timeout=120)
        again.query_params[SESSION_PARAM] = tok
        again.run()
        for key, value in ((StateKeys.REFERENCE, pair[0]), (StateKeys.QUERY, pair[1]), (StateKeys.LABEL_KEY, LABEL),
                           (StateKeys.QUERY_LABEL_KEY, LABEL)):
            again.session_state[key] = value
        for key, name in ((StateKeys.REFERENCE_INFO, "ref"), (StateKeys.QUERY_INFO, "query")):
            again.session_state[key] = {"id": f"tiny-{name}", "name": name, "source": "test", "n_cells": 1, "n_genes": 1}
        return again.switch_page("pages/compare.py").run()

    again = reload()
    assert not again.exception
    assert any(job_id in m.value and "**done**" in m.value for m in again.markdown)
    # a self-check still running when the page is reloaded comes back live, with its Cancel
    from cellannot_core.pipeline import AnnotateOptions

    session = Path(jobs.runs_root()) / ".sessions" / owner_id(tok)
    slow = cmp.start("loco", pair[0], pair[1], AnnotateOptions(label_key=LABEL), model="clams", classes=["B"],
                     max_epochs=500, save_to=cmp.record_path("loco", session))
    live = reload()
    assert any(slow in m.value and ("**running**" in m.value or "**queued**" in m.value) for m in live.markdown)
    live.button(key=cmp.CompareKeys.CANCEL.format(kind="loco")).click().run()
    assert cmp.wait(slow, timeout=120)["state"] == "cancelled"
    assert any(f"Job `{slow}`: **cancelled**" in m.value for m in reload().markdown)  # recorded as it ended
    assert again.dataframe[0].value["Model"].tolist() == ["logreg"]
    assert "Comparison table (.csv)" in {b.label for b in again.get("download_button")}

    record = cmp.record_path("compare", Path(jobs.runs_root()) / ".sessions" / owner_id(tok))
    rec = json.loads(record.read_text())  # the server restarted while a comparison of two models ran
    rec.update(id="compare-000000-0123456789abcdef", state="running", result=None)
    record.write_text(json.dumps(rec))
    again = reload()
    assert not again.exception
    assert any("Interrupted: the server was restarted while it ran" in w.value for w in again.warning)
    assert again.dataframe[0].value["Model"].tolist() == ["logreg"]  # the model that finished before
    again.checkbox(key=cmp.CompareKeys.MODEL.format(name="logreg")).check().run()
    assert not again.button(key=cmp.CompareKeys.START).disabled  # an interrupted job does not block a new one


def test_runs_whose_references_name_types_otherwise_are_warned_of():
    """Found 2026-12-07 (a browser probe): a run trained on a CELLxGENE reference ("CD4-positive, alpha-beta T cell")
    and one on a reference of short names ("CD4 T"), both labelling one query, agreed on 2.8% of its cells without a
    word on why."""
    long = {"classes": ["B cell", "CD4-positive, alpha-beta T cell", "CD14-positive monocyte", "natural killer cell"]}
    short = {"classes": ["B cell", "CD4 T", "CD14 Mono", "NK"]}
    said = cmp.other_names([("run_a", long, None), ("run_b", short, None)])
    assert said and said.startswith("Runs run_a and run_b name their cell types otherwise (1 names in common")
    assert cmp.other_names([("run_a", short, None), ("run_b", {"classes": short["classes"] + ["DC"]}, None)]) is None
