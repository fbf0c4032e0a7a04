"""Every registered model, trained briefly on demo cells into a run directory, opens in every
result page (label transfer, latent space with its generated cells, calibration & novelty,
explain): the views follow the registry, not per-model code."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cellannot_core.models import MODELS
from test_app_results import make_run  # noqa: E402  (tests/app is on sys.path under pytest)
from ui.state import StateKeys, WidgetKeys

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
PAGES = ("pages/results.py", "pages/latent.py", "pages/calibration.py", "pages/explain.py")


def _models():
    for name, spec in MODELS.items():
        reason = spec.unavailable_reason()
        yield pytest.param(name, marks=pytest.mark.skip(reason=f"{name}: {reason}") if reason else ())


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.mark.parametrize("name", list(_models()))
def test_model_run_opens_in_every_page(name, root, monkeypatch):
    monkeypatch.setenv("CELLANNOT_RUNS", str(root))
    run_id = make_run(root, query_labels=True, model=name, n_generate=3)
    supports = MODELS[name].supports
    for page in PAGES:
        at = AppTest.from_file(APP, default_timeout=120).run()
        at.session_state[StateKeys.RUN_ID] = run_id
        at.session_state[WidgetKeys.EMBED_METHOD] = "pca"  # UMAP compiles numba: not in fast tests
        at.switch_page(page).run()
        assert not at.exception, (name, page, at.exception)
        if page == "pages/latent.py":
            # generated cells exactly when the model can generate; latent quality for every model
            assert at.toggle(key=WidgetKeys.SHOW_GENERATED).value is bool(supports.samples), name
            assert len(at.metric) == 3, name
        if page == "pages/calibration.py":
            # the page opens on the model's own score and threshold: the same Unknown calls as the run
            from ui.results import load_run

            run = load_run(str(root), run_id)
            assert at.selectbox(key=WidgetKeys.SCORE_METHOD).value == run.rejection["method"], name
            n_unknown = int(run.obs["cellannot_is_unknown"].astype(bool).sum())
            shown = next(m.value for m in at.metric if m.label == "Unknown query cells")
            assert int(shown.replace(",", "")) == n_unknown, (name, shown, n_unknown)
        if page == "pages/explain.py" and not supports.explain:
            assert any("has no explain matrices" in i.value for i in at.info), name
