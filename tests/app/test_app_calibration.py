"""Calibration & novelty page: reliability, the threshold slider updates the Unknown count."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from test_app_results import make_run  # noqa: E402  (tests/app is on sys.path under pytest)
from ui.state import StateKeys, WidgetKeys

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return root, make_run(root, query_labels=True)


@pytest.fixture(autouse=True)
def _env(run, monkeypatch):
    monkeypatch.setenv("CELLANNOT_RUNS", str(run[0]))


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_threshold_slider_changes_unknown_count(run):
    root, run_id = run
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.session_state[StateKeys.RUN_ID] = run_id
    at.switch_page("pages/calibration.py").run()
    assert not at.exception
    card = (root / run_id / "run_card.json").read_text()
    method = at.selectbox(key=WidgetKeys.SCORE_METHOD).value
    assert f'"method": "{method}"' in card
    slider = at.slider(key=WidgetKeys.THRESHOLD.format(run=run_id, method=method))
    before = int(_metric(at, "Unknown query cells").replace(",", ""))
    assert 0 < before < 250
    slider.set_value(slider.max).run()
    assert int(_metric(at, "Unknown query cells").replace(",", "")) == 0
    assert _metric(at, "Reference validation accepted") == "100.0%"
    at.slider(key=WidgetKeys.THRESHOLD.format(run=run_id, method=method)).set_value(slider.min).run()
    assert int(_metric(at, "Unknown query cells").replace(",", "")) > before
    # another stored score, its own default threshold
    other = next(m for m in ("knn", "mahalanobis", "maxprob", "energy") if m != method)
    at.selectbox(key=WidgetKeys.SCORE_METHOD).set_value(other).run()
    assert not at.exception
    assert "accept" in " ".join(m.value for m in at.markdown) or "validation" in " ".join(m.value for m in at.markdown)


def test_reliability_recomputed_from_arrays(run):
    from ui import calibration as cal
    from ui.results import Run, _load_arrays, _load_card, _load_obs

    root, run_id = str(run[0]), run[1]
    r = Run(root, run_id, _load_card(root, run_id), _load_arrays(root, run_id), _load_obs(root, run_id))
    curves, eces = cal.reliability(r)
    assert len(curves) == 3  # before, after, query known types
    before, after = list(eces.values())[:2]
    val = r.card["validation"]
    assert before == pytest.approx(val["ece_before"], abs=1e-6)
    assert after == pytest.approx(val["ece_after"], abs=1e-6)
    assert cal.roc_pairs(r) is not None  # the query has novel types (NK, DC, platelets)
