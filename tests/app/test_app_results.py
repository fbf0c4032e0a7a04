"""Label transfer page: heatmap (query labels, or Leiden clusters without them), counts,
confidence, the filterable cell table and the downloads."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cellannot_core._constants import OutKeys, RunFiles
from cellannot_core.models import get_spec
from cellannot_core.pipeline import AnnotateOptions, annotate
from cellannot_core.runs import RunDir
from conftest import demo_subset, shown
from ui.state import StateKeys, WidgetKeys

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
LABEL = "cell_type_harmonized"
# small networks for whichever model has the hyper-parameter; ingest's exact kNN (scanpy's backend
# compiles numba code for minutes: tested under --runslow in tests/core/test_baselines.py)
TINY = {"hidden": "32,16", "blocks": "1,1", "n_hidden": 32, "n_d": 8, "n_a": 8, "batch_size": 32, "backend": "exact"}


def make_run(root: Path, *, query_labels: bool, model: str = "resnet", n_generate: int = 0, seed: int = 0,
             hparams: dict | None = None) -> str:
    """A finished tiny run (300 reference, 250 query demo cells) in ``root``."""
    ref, qry = demo_subset(300, 250, seed)
    hp = {k: v for k, v in TINY.items() if k in get_spec(model).hparams} | (hparams or {})
    rd = RunDir.create(root, model=model)
    annotate(ref, qry, AnnotateOptions(label_key=LABEL, query_label_key=LABEL if query_labels else None,
                                       model=model, hparams=hp, max_epochs=2, n_top_genes=200,
                                       n_generate=n_generate, seed=seed), run_dir=rd)
    return rd.id


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return root, make_run(root, query_labels=True), make_run(root, query_labels=False, seed=1)


@pytest.fixture(autouse=True)
def _env(runs_root, monkeypatch):
    monkeypatch.setenv("CELLANNOT_RUNS", str(runs_root[0]))


def page(run_id: str | None, path: str = "pages/results.py") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.session_state[StateKeys.RUN_ID] = run_id
    return at.switch_page(path).run()


def test_needs_a_run():
    at = page(None)
    assert not at.exception
    assert "Train a model" in at.info[0].value


@pytest.mark.parametrize("state, said", [("cancelled", "was cancelled: it has no results"),
                                         ("interrupted", "was interrupted: it has no results"),
                                         ("running", "is running; results appear here once it is done")])
def test_a_run_that_will_not_finish_is_not_said_to_be_coming(runs_root, state, said):
    """Found 2026-12-07 (a probe of the results pages): a cancelled or interrupted run said "results appear here
    once it is done", as a running one does."""
    rd = RunDir.create(runs_root[0], model="logreg")
    rd.set_status(state, model="logreg", message="stopped" if state != "running" else "training")
    at = page(rd.id)
    assert not at.exception and said in at.info[0].value
    assert ("Run again" in at.info[0].value) == (state != "running")
    rd.set_status("cancelled", model="logreg", message="stopped")  # (a running run is not deleted)
    rd.delete()


def test_with_query_labels(runs_root):
    at = page(runs_root[1])
    assert not at.exception
    assert any("Predicted label × query label" in h.value for h in at.subheader)
    acc = next(m for m in at.metric if m.label == "Accuracy, Unknown included")  # the final labels', not acc_in
    assert acc.value == f"{RunDir.open(runs_root[0], runs_root[1]).card()['query_metrics']['acc_open']:.1%}"
    n_all = len(at.dataframe[0].value)
    assert n_all == 250
    # filters: unknown only, then a confidence floor
    at.checkbox(key=WidgetKeys.FILTER_UNKNOWN).check().run()
    unk = at.dataframe[0].value
    assert len(unk) < n_all and unk[OutKeys.IS_UNKNOWN].all()
    at.checkbox(key=WidgetKeys.FILTER_UNKNOWN).uncheck().run()
    at.slider(key=WidgetKeys.FILTER_CONF).set_value(0.9).run()
    assert (at.dataframe[0].value[OutKeys.CONFIDENCE] >= 0.9).all()
    at.radio(key=WidgetKeys.NORMALIZE).set_value("col").run()
    assert not at.exception
    at.switch_page("pages/runs.py").run()  # a visit to another page keeps the view chosen (it went back, 2026-12-07)
    at.switch_page("pages/results.py").run()
    assert at.radio(key=WidgetKeys.NORMALIZE).value == "col"
    labels = {b.label for b in at.get("download_button")}
    assert "Run card (.json)" in labels  # small: offered at once
    prepare = {b.label: b for b in at.button}
    for name in ("Annotated query (.h5ad)", "Predictions (.csv)", "Model bundle (.zip)"):  # read on request
        assert f"Prepare: {name}" in prepare and name not in labels
    prepare["Prepare: Annotated query (.h5ad)"].click().run()
    assert not at.exception
    assert "Annotated query (.h5ad)" in {b.label for b in at.get("download_button")}


def test_without_query_labels_uses_leiden_clusters(runs_root):
    at = page(runs_root[2])
    assert not at.exception
    assert any("Predicted label × query cluster" in h.value for h in at.subheader)
    assert "Accuracy, Unknown included" not in [m.label for m in at.metric]


def test_model_zip_and_clusters(runs_root):
    import io
    import zipfile

    from ui import results as res

    z = zipfile.ZipFile(io.BytesIO(res.model_zip(str(runs_root[0]), runs_root[2])))
    assert "model/bundle.json" in z.namelist()
    clusters = res.leiden_clusters(str(runs_root[0]), runs_root[2])
    assert len(clusters) == 250 and len(set(clusters)) >= 2


def test_the_page_says_when_unknown_calls_differ_by_sample(runs_root):
    """A run whose card holds the uneven-Unknown hint (``pipeline.unknown_by_sample``) shows it at
    the top of the page; a run without it shows no such note."""
    import json
    import shutil

    root, rid, _ = runs_root
    copy = f"{rid}-bysample"
    shutil.copytree(root / rid, root / copy)
    card_path = root / copy / RunFiles.CARD
    card = json.loads(card_path.read_text())
    note = "Unknown calls differ between the query's 'sample_id' groups (stim: 69% Unknown, ctrl: 6%)."
    card["unknown_by_sample"] = {"column": "sample_id", "shares": {"stim": 0.69, "ctrl": 0.06},
                                 "cells": {"stim": 500, "ctrl": 500}, "note": note}
    card_path.write_text(json.dumps(card))
    at = page(copy)
    assert not at.exception
    assert any(note in shown(i.value) for i in at.info)
    at = page(rid)
    assert not at.exception and not any("differ between the query" in i.value for i in at.info)


def test_a_query_mostly_unlike_its_reference_is_warned_of_at_the_top(runs_root):
    """A run whose threshold was widened by a shift of another tissue (``pipeline.far_query_note``:
    the card's ``rejection.far_query``) warns above the results; a run without it does not."""
    import json
    import shutil
    from types import SimpleNamespace

    from cellannot_core.pipeline import FAR_QUERY_FACTOR, far_query_note, log_class_notes

    import numpy as np

    model = SimpleNamespace(ood_method="mahalanobis", val_score_median=1.0)  # a baseline's median shift factor
    near = np.full(10, FAR_QUERY_FACTOR * 0.99)
    assert far_query_note(model, SimpleNamespace(shift_factor=FAR_QUERY_FACTOR * 0.99, ood_score=near)) == {}
    # the factor applied stops at the bound; the note says how far the query lies
    note = far_query_note(model, SimpleNamespace(shift_factor=FAR_QUERY_FACTOR, ood_score=np.full(10, 4.04)))["far_query"]
    assert "4.0 times as far" in note and f"{FAR_QUERY_FACTOR:g}-fold shift only" in note
    lines: list[str] = []
    log_class_notes({"rejection": {"far_query": note}}, lines.append)
    assert lines == [f"warning: {note}"]
    # the labels' markers tell a query of other cells from one of the reference's types farther away
    for share, words in ((0.8, "may well be of the reference's types"), (0.4, "as in a query of other cells"),
                         (0.63, "where both kinds of query were measured (queries of another tissue measured 23-65%, "
                                "of the reference's types 61-99%): they do not tell")):  # (it said "may well be")
        far = SimpleNamespace(shift_factor=FAR_QUERY_FACTOR, ood_score=np.full(10, 4.04),
                              marker_agreement={"share": share, "n_classes": 3, "by_class": {}})
        assert words in far_query_note(model, far)["far_query"]
    root, rid, _ = runs_root
    copy = f"{rid}-far"
    shutil.copytree(root / rid, root / copy)
    card_path = root / copy / RunFiles.CARD
    card = json.loads(card_path.read_text())
    card["rejection"]["far_query"] = note
    card_path.write_text(json.dumps(card))
    at = page(copy)
    assert not at.exception and any("times as far from the reference" in w.value for w in at.warning)
    at = page(rid)
    assert not at.exception and not any("times as far" in w.value for w in at.warning)
    shutil.copytree(root / rid, root / f"{rid}-markers")
    card = json.loads((root / f"{rid}-markers" / RunFiles.CARD).read_text())
    card["rejection"]["markers_note"] = "the query's cells do not express their labels' reference markers: ..."
    (root / f"{rid}-markers" / RunFiles.CARD).write_text(json.dumps(card))
    at = page(f"{rid}-markers")
    assert not at.exception and any(w.value.startswith("The query's cells do not express") for w in at.warning)
    # the other pages that show the calls say it too, with what it means for what they show (found 2026-12-07:
    # the Calibration page offered a pancreas query's Unknown groups as stressed T cells, and said nothing of it)
    for path, words in (("pages/calibration.py", "Read the Unknown groups below"), ("pages/latent.py", "batch effect")):
        at = page(copy, path)
        assert not at.exception and any("times as far" in w.value and words in w.value for w in at.warning), path


@pytest.mark.parametrize("damage", ["arrays", "card", "annotated"])
def test_a_finished_run_with_damaged_files_says_so_on_every_page(runs_root, tmp_path, monkeypatch, damage):
    """Found 2026-12-06: a run whose arrays were not a zip, or whose card was missing or not a card,
    crashed the result pages ("This app has encountered an error"); a card that was a JSON list
    crashed the Runs page for every visitor, since every run is listed."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(Path(runs_root[0]) / runs_root[1], root / runs_root[1])
    d = root / runs_root[1]
    if damage == "arrays":
        (d / RunFiles.ARRAYS).write_bytes(b"PK\x03\x04 not a zip")
    elif damage == "card":
        (d / RunFiles.CARD).write_text("[1, 2, 3]")
    else:
        (d / RunFiles.ANNOTATED).unlink()
    monkeypatch.setenv("CELLANNOT_RUNS", str(root))
    for p in ("pages/results.py", "pages/latent.py", "pages/calibration.py", "pages/explain.py"):
        at = AppTest.from_file(APP, default_timeout=120).run()
        at.session_state[StateKeys.RUN_ID] = runs_root[1]
        at = at.switch_page(p).run()
        assert not at.exception, p
        assert at.error and "This run finished, but" in at.error[0].value and "Delete it" in at.error[0].value, p
    at = AppTest.from_file(APP, default_timeout=120).run().switch_page("pages/runs.py").run()
    assert not at.exception and runs_root[1] in str(at.dataframe[0].value.to_dict())


def test_a_run_whose_json_files_were_edited_into_other_types_is_one_line_not_a_crash(runs_root, tmp_path, monkeypatch):
    """Found 2026-12-07 (a probe of hand-damaged run folders): valid JSON of other types than a run writes (a card's
    ``"validation": "x"``, a status's ``"progress": "x"`` or ``"model": 7``, a history that is an object) failed the
    Train, Label transfer and Runs pages with AttributeError / TypeError, the Runs page for every run listed."""
    import json
    import shutil

    root = tmp_path / "runs"
    edits = {"card": (RunFiles.CARD, lambda c: {**c, "validation": "x", "hparams": [], "classes": "abc"}),
             "status": (RunFiles.STATUS, lambda st: {**st, "progress": "x", "elapsed": [], "model": 7, "message": {}}),
             "state": (RunFiles.STATUS, lambda st: {**st, "state": "bogus"}),
             "history": (RunFiles.HISTORY, lambda h: {"a": 1, "b": 2})}
    for name, (file, edit) in edits.items():
        d = root / f"{runs_root[1]}-{name}"
        shutil.copytree(Path(runs_root[0]) / runs_root[1], d)
        (d / file).write_text(json.dumps(edit(json.loads((d / file).read_text()))))
    monkeypatch.setenv("CELLANNOT_RUNS", str(root))
    for name in edits:
        for p in ("pages/train.py", "pages/results.py"):
            at = AppTest.from_file(APP, default_timeout=120).run()
            at.session_state[StateKeys.RUN_ID] = f"{runs_root[1]}-{name}"
            at = at.switch_page(p).run()
            assert not at.exception, (name, p, at.exception)
    at = AppTest.from_file(APP, default_timeout=120).run().switch_page("pages/runs.py").run()
    assert not at.exception and len(at.dataframe[0].value) == len(edits)
    assert RunDir.open(root, f"{runs_root[1]}-card").card() is None  # said as a damaged card on the result pages


def test_a_label_written_as_html_is_shown_as_written_in_the_figures():
    """Found 2026-12-07 (a probe of the app served to a lab): plotly renders its HTML subset in trace
    names, tick labels and hover text, so a cell type named ``<a href="...">x</a>`` was a link in the
    legend. Every figure the app shows goes through ``ui.widgets.text_only``."""
    import json

    import numpy as np

    from cellannot_core.plots import label_heatmap, latent_scatter
    from ui.widgets import text_only

    trap = '<a href="http://127.0.0.1:9/">click</a>'
    labels = np.array([trap, "B", trap, "CD4+ T"], dtype=object)
    heat = text_only(label_heatmap(labels, labels))
    scatter = text_only(latent_scatter(np.zeros((4, 2)), labels, hover={"label": labels}))
    shown_text = json.loads(heat.to_json()) | {"_": json.loads(scatter.to_json())}
    shown_text = json.dumps(shown_text, ensure_ascii=False)  # (plotly's JSON writes "<" as \\u003c)
    assert "<a href" not in shown_text and "&lt;a href=" in shown_text and "CD4+ T" in shown_text
    assert any(t.name == "&lt;a href=\"http://127.0.0.1:9/\"&gt;click&lt;/a&gt;" for t in scatter.data)
    assert list(heat.layout.xaxis.tickvals) == list(heat.data[0].x)  # each tick still names its column, escaped alike


def test_the_accuracy_of_a_query_of_no_reference_types_is_not_nan():
    """A query of none of the reference's types has no accuracy before the Unknown calls: the Train page showed
    "nan%" (found 2026-12-07); its accuracy with them is the share called Unknown, which is said as such (a
    human PBMC query of a mouse pancreas model, all Unknown, showed "Accuracy, Unknown included 100.0%")."""
    from ui.results import accuracy_metric

    shown_metrics: list[tuple] = []
    col = type("Col", (), {"metric": lambda self, *a, **k: shown_metrics.append((a, k))})()
    accuracy_metric(col, {"acc_open": 0.973, "acc_in": float("nan"), "reject_in": float("nan")})
    (label, value), kw = shown_metrics[0]
    assert value == "97.3%" and "nan" not in kw["help"] and "name none of the reference's types" in kw["help"]
    assert label == "Cells of types the reference lacks called Unknown"
    accuracy_metric(col, {"acc_open": 0.9, "acc_in": 0.95, "reject_in": 0.02})
    assert shown_metrics[1][0] == ("Accuracy, Unknown included", "90.0%") and shown_metrics.pop()
    accuracy_metric(col, {"acc_in": 0.9})  # no open-set figure: nothing shown
    assert len(shown_metrics) == 1
