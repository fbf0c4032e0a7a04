"""A new novelty score is one function plus its registration (issue 16): registered here, it is
offered by the CLI (``cellannot models``, ``--hparam ood_score=...``) and by the app's training
form, and a run with it rejects by it."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cellannot_core import cli
from cellannot_core.novelty import NOVELTY_SCORES, OOD_METHODS, register_score
from conftest import make_synthetic
from ui.state import StateKeys, WidgetKeys

ROOT = Path(__file__).resolve().parents[2]
NAME = "logit_norm_test"


@pytest.fixture()
def dummy_score():
    @register_score(NAME, help="minus the norm of the logit vector (a test score)")
    def _score(inp):
        return -np.linalg.norm(inp.logits, axis=1)

    try:
        yield NAME
    finally:
        NOVELTY_SCORES.pop(NAME, None)


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_a_registered_score_reaches_the_cli(dummy_score, tmp_path):
    assert dummy_score in OOD_METHODS
    rc, out, _ = _cli("models")
    assert rc == 0 and f"    {dummy_score}: minus the norm" in out
    assert f"(one of: knn, knn_graph, knn_class, mahalanobis, knn_logit, maxprob, energy, {dummy_score})" in out
    ref, query = make_synthetic(200, 60, 3, seed=0), make_synthetic(120, 60, 3, seed=1)
    ref.write_h5ad(tmp_path / "ref.h5ad")
    query.write_h5ad(tmp_path / "query.h5ad")
    rc, _, err = _cli("annotate", "--reference", str(tmp_path / "ref.h5ad"), "--query", str(tmp_path / "query.h5ad"),
                      "--label-key", "cell_type", "--model", "logreg", "--hparam", f"ood_score={dummy_score}",
                      "--n-top-genes", "50", "--out", str(tmp_path / "out.h5ad"))
    assert rc == 0, err
    a = ad.read_h5ad(tmp_path / "out.h5ad")
    assert a.uns["cellannot"]["rejection"]["method"] == dummy_score
    # the rejection follows the new score: Unknown exactly where it exceeds the threshold
    thr = float(a.uns["cellannot"]["rejection"]["threshold"])
    np.testing.assert_array_equal(a.obs["cellannot_is_unknown"].to_numpy(), a.obs["cellannot_ood_score"].to_numpy() > thr)


def test_a_registered_score_reaches_the_app_form(dummy_score):
    from conftest import demo_subset

    ref, qry = demo_subset(200, 200)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.session_state[StateKeys.REFERENCE] = ref
    at.session_state[StateKeys.QUERY] = qry
    for key, name in ((StateKeys.REFERENCE_INFO, "ref"), (StateKeys.QUERY_INFO, "query")):
        at.session_state[key] = {"id": f"reg-{name}", "name": name, "source": "test", "n_cells": 200, "n_genes": 1}
    at.session_state[StateKeys.LABEL_KEY] = "cell_type_harmonized"
    at = at.switch_page("pages/train.py").run()
    at.selectbox(key=WidgetKeys.MODEL).set_value("logreg").run()
    assert not at.exception
    box = at.selectbox(key=WidgetKeys.HPARAM.format(model="logreg", name="ood_score"))
    assert dummy_score in box.options
