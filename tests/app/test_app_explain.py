"""Explain page: TabNet masks of an injected tabnet run (heatmaps, top genes, one cell,
downloads) under both gene rankings, and a plain message for runs of models without explain
matrices."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cellannot_core.models.tabnet import RANKINGS, class_importance, gene_weights
from cellannot_core.pipeline import AnnotateOptions, annotate
from cellannot_core.runs import RunDir
from ui import explain as ex
from conftest import demo_subset
from ui.state import StateKeys

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
LABEL = "cell_type_harmonized"


def _run(root: Path, model: str, hparams: dict) -> str:
    ref, qry = demo_subset(300, 200)
    rd = RunDir.create(root, model=model)
    annotate(ref, qry, AnnotateOptions(label_key=LABEL, query_label_key=LABEL, model=model, hparams=hparams,
                                       n_top_genes=200, n_generate=0), run_dir=rd)
    return rd.id


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return root, _run(root, "tabnet", {"n_d": 8, "n_a": 8, "batch_size": 32, "max_epochs": 2}), _run(root, "knn", {})


@pytest.fixture(autouse=True)
def _env(runs, monkeypatch):
    monkeypatch.setenv("CELLANNOT_RUNS", str(runs[0]))


def page(run_id: str | None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.session_state[StateKeys.RUN_ID] = run_id
    return at.switch_page("pages/explain.py").run()


def test_explain_page_for_a_tabnet_run(runs):
    at = page(runs[1])
    assert not at.exception, at.exception
    assert at.radio(key=ex.ExplainKeys.RANKING).value == "positive"  # the default ranking, explained
    assert any(RANKINGS["positive"] in c.value for c in at.caption)
    heads = [h.value for h in at.subheader]
    assert heads == ["Why a cell got its label", "The model's own explanation", "Top genes per class",
                     "Explain matrix", "Overall importance", "One cell"]
    labels = {b.label for b in at.get("download_button")}
    assert {"Top genes per class (.csv)", "Per-class importance, all genes (.csv)", "Shown cells x genes (.csv)",
            "All cells x all genes (.csv)", "Global importance (.csv)", "This cell's mask (.csv)"} <= labels
    assert len(at.get("plotly_chart")) == 5  # the cell's probabilities, then TabNet's four
    top = at.dataframe[2].value  # [0], [1]: the picked cell's nearest types and its type's markers
    assert len(top) == 20 and len(top.columns) >= 2  # ranks x predicted classes
    # group by the query's own labels, fewer top genes, another class and cell
    at.radio(key=ex.ExplainKeys.GROUP_BY).set_value("query").run()
    at.number_input(key=ex.ExplainKeys.N_TOP).set_value(5).run()
    assert not at.exception and len(at.dataframe[2].value) == 5
    cls = at.selectbox(key=ex.ExplainKeys.CLASS).options[-1]
    at.selectbox(key=ex.ExplainKeys.CLASS).set_value(cls).run()
    cell = at.selectbox(key=ex.ExplainKeys.CELL).options[0]
    at.selectbox(key=ex.ExplainKeys.CELL).set_value(cell).run()
    assert not at.exception
    assert any("Predicted" in c.value for c in at.caption)
    # the SIMS thesis' ranking: every view follows
    at.radio(key=ex.ExplainKeys.RANKING).set_value("attention").run()
    assert not at.exception, at.exception
    assert any(RANKINGS["attention"] in c.value for c in at.caption)
    assert len(at.dataframe[2].value) == 5 and len(at.get("plotly_chart")) == 5


def test_explain_data_matches_the_model(runs):
    from cellannot_core.models import load_model

    root, run_id = str(runs[0]), runs[1]
    data = ex.compute_explain(root, run_id)
    M, Z = data["M"], data["Z"]
    assert M.shape == (200, len(data["genes"])) and (M >= 0).all() and Z.shape == M.shape
    model = load_model(RunDir.open(root, run_id).model_dir)
    assert model.name == "tabnet"
    for ranking in RANKINGS:  # the downloads and the summaries follow the ranking, through gene_weights
        W = gene_weights(M, Z, ranking)
        csv = ex.full_matrix_csv(data, ranking).decode().splitlines()
        assert len(csv) == 201 and csv[0].startswith("cell,")
        first = np.array(csv[1].split(",")[1:], dtype=float)
        np.testing.assert_allclose(first, W[0], rtol=1e-4, atol=1e-6)
        labels = data["predicted"]
        order = sorted(set(labels.tolist()))
        summ = ex.summaries(data, labels, order, 10, ranking)
        np.testing.assert_allclose(summ["per_class"].to_numpy(),
                                   class_importance(M, labels, data["genes"], Z=Z, ranking=ranking,
                                                    classes=order).to_numpy())
        rows = np.arange(5)
        np.testing.assert_allclose(ex.cell_matrix(data, rows, data["genes"][:3], ranking).to_numpy(), W[:5, :3])
    np.testing.assert_allclose(gene_weights(M, Z, "attention").sum(1), 1.0)


def test_models_without_explain_get_a_message(runs):
    at = page(runs[2])
    assert not at.exception
    msg = at.info[0].value
    assert "knn" in msg and "tabnet" in msg and "no explain" in msg


@pytest.mark.parametrize("which", [1, 2])
def test_why_a_cell_got_its_label_for_every_model(runs, which):
    """Issue 13: Explain was empty for every model but tabnet, and nothing said why a cell was
    Unknown. Every run now shows, for a picked cell (Unknown cells first), the decision in words,
    its class probabilities and the reference markers of its type in the query cells given it."""
    from ui.results import load_run

    root, run_id = str(runs[0]), runs[which]
    at = page(run_id)
    assert not at.exception
    run = load_run(root, run_id)
    cells = ex.why_choices(run)
    first = cells[0]
    assert at.selectbox(key=ex.ExplainKeys.WHY_CELL).value == first
    n_unknown = int(run.obs["cellannot_is_unknown"].sum())
    if n_unknown:
        assert bool(run.obs.loc[first, "cellannot_is_unknown"])  # the Unknown cells come first
    text = " ".join(m.value for m in at.markdown)
    assert ("**Unknown**" in text) == bool(run.obs.loc[first, "cellannot_is_unknown"])
    assert "novelty score" in text and "threshold" in text
    probs = ex.cell_probabilities(run, first)
    assert probs["probability"].is_monotonic_decreasing and probs["probability"].sum() <= 1.0 + 1e-6
    raw = str(run.obs.loc[first, "cellannot_label_raw"])
    markers = ex.why_markers(run, raw)
    assert markers is not None and len(markers) > 0 and set(markers["gene"]) <= set(run.card["genes"])
    assert (markers["reference_class_mean"] > markers["other_classes_max"]).all()  # markers mark the type out
    assert any("reference markers" in m.value for m in at.markdown)
    near = ex.why_nearest(run, first)
    assert set(near["type"]) == set(run.classes) and near["ratio"].is_monotonic_increasing
    assert abs(near["share_of_neighbours"].sum() - 1.0) < 1e-9
    assert any("Nearest reference types" in m.value for m in at.markdown)


def test_needs_a_run():
    at = page(None)
    assert not at.exception and "Train a model" in at.info[0].value
