"""One shared interface test for every model in the registry (issue 16), as scanpy and
scvi-tools test their conventions: a model registered tomorrow is held to the same contract
without a line of test code.

For each available model, on a small synthetic pair: fit (briefly), then ``logits`` /
``predict_proba`` / ``latent`` shapes, probabilities that sum to one, every registered novelty
score (plus the model's own) on query and validation cells, calibration fields, a save -> load
round trip that reproduces the logits, and generated cells when the model says it has them.
"""
from __future__ import annotations

import numpy as np
import pytest

from cellannot_core.models import MODELS, create_model, load_model
from cellannot_core.novelty import OOD_METHODS
from conftest import make_prepared

FAST = {"max_epochs": 2, "backend": "exact", "n_pcs": 10}  # applied where the model has the hyper-parameter


@pytest.fixture(scope="module")
def prep():
    return make_prepared()


def _names():
    for name, spec in MODELS.items():
        reason = spec.unavailable_reason()
        yield pytest.param(name, marks=pytest.mark.skip(reason=f"{name}: {reason}") if reason else ())


@pytest.mark.parametrize("name", list(_names()))
def test_every_registered_model_keeps_the_interface(name, prep, tmp_path):
    spec = MODELS[name]
    hp = {k: v for k, v in FAST.items() if k in spec.hparams}
    m = create_model(name, prep.n_genes, prep.classes, seed=0, device="cpu", hparams=hp)
    kw = {"unlabelled": prep.query} if spec.supports.semi_supervised else {}
    hist = m.fit(prep.train, prep.val, [], **kw)
    assert isinstance(hist, dict) and hist.get("epochs"), f"{name}: fit returns its history"
    cal = m.calibrate(prep.val)
    assert {"temperature", "threshold", "val_accuracy"} <= set(cal) and m.temperature > 0

    Xq, n, K = prep.query.X, prep.query.n_obs, len(prep.classes)
    logits = m.logits(Xq)
    assert logits.shape == (n, K) and np.isfinite(logits).all()
    p = m.predict_proba(Xq)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    z = m.latent(Xq)
    assert z.ndim == 2 and z.shape[0] == n and np.isfinite(z).all()

    scores = m.ood_scores(Xq, OOD_METHODS)
    assert set(OOD_METHODS) <= set(scores) and all(v.shape == (n,) for v in scores.values())
    assert m.ood_method in scores or m.ood_method in m.model_scores()
    val = m.validation_scores(prep.val.X, [m.ood_method])
    assert val[m.ood_method].shape == (prep.val.n_obs,)

    d = m.save(tmp_path / name)
    import os  # the weights readable as the config is (safetensors wrote them 0600, found 2026-12-07)

    from cellannot_core._constants import RunFiles
    assert os.stat(d / RunFiles.WEIGHTS).st_mode & 0o777 == os.stat(d / RunFiles.CONFIG).st_mode & 0o777
    loaded = load_model(d, device="cpu")
    np.testing.assert_allclose(loaded.logits(Xq), logits, rtol=1e-4, atol=1e-5)
    assert loaded.threshold == pytest.approx(m.threshold) and loaded.temperature == pytest.approx(m.temperature)

    if spec.supports.samples:
        xs, ys = m.sample(3)
        assert xs.shape == (3 * K, prep.n_genes) and sorted(set(ys.tolist())) == list(range(K))
