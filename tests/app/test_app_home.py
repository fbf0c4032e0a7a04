"""Home page: renders, shows the workflow, and "Try the demo" loads the bundled pair."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ui.state import StateKeys, WidgetKeys

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(autouse=True)
def _runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLANNOT_RUNS", str(tmp_path / "runs"))


def test_home_renders_with_workflow():
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value.startswith("cellannot")
    text = " ".join(m.value for m in at.markdown)
    assert "Unknown" in text and "no run yet" in text
    assert at.session_state[StateKeys.REFERENCE] is None


def test_try_the_demo_loads_the_pair():
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.button(key=WidgetKeys.DEMO_BUTTON).click().run()
    assert not at.exception
    ref, query = at.session_state[StateKeys.REFERENCE], at.session_state[StateKeys.QUERY]
    assert ref.n_obs == 1556 and query.n_obs == 2638
    assert at.session_state[StateKeys.LABEL_KEY] == "cell_type_harmonized"
    assert at.session_state[StateKeys.QUERY_LABEL_KEY] == "cell_type_harmonized"
    assert at.session_state[StateKeys.DEMO] is True
    assert any("Demo data loaded" in s.value for s in at.success)
    text = " ".join(m.value for m in at.markdown)
    assert "licence" in text.lower() or "CC BY 4.0" in text  # provenance + licence shown
    assert ":material/check_circle:] reference and query loaded" in text
    assert at.button(key=WidgetKeys.DEMO_BUTTON).label == "Try the demo"  # nothing of the visitor's to replace


def test_the_demo_button_says_which_of_the_visitors_datasets_it_replaces():
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.session_state[StateKeys.REFERENCE_INFO] = {"id": "x", "name": "my_atlas.h5ad", "source": "upload"}
    at.run()
    assert at.button(key=WidgetKeys.DEMO_BUTTON).label == "Try the demo (replaces my_atlas.h5ad)"


def test_unknown_run_in_url_is_ignored():
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["run"] = "no-such-run"
    at.run()
    assert not at.exception
    assert at.session_state[StateKeys.RUN_ID] is None
