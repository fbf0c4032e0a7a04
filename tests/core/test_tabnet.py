"""TabNet / SIMS (models/tabnet.py, nn/tabnet.py): sparsemax against the simplex projection,
training above chance on synthetic cells, explain matrices, save/load, the SIMS summaries and
the positive-evidence gene ranking, and marker genes on the real demo reference."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cellannot_core.data import prepare
from cellannot_core.errors import ConfigError
from cellannot_core.models import MODELS, create_model, load_model
from cellannot_core.models.tabnet import (DEFAULT_RANKING, RANKINGS, balanced_class_weights, class_importance,
                                          gene_weights, global_importance, normalize_per_gene, top_genes_per_class)
from cellannot_core.nn.tabnet import GhostBatchNorm, TabNet, sparsemax
from cellannot_core.novelty import OOD_METHODS
from conftest import make_synthetic

ROOT = Path(__file__).resolve().parents[2]
TINY = {"n_d": 8, "n_a": 8, "max_epochs": 10, "batch_size": 32}


def _simplex_projection(z: np.ndarray) -> np.ndarray:
    """Reference sparsemax: Euclidean projection onto the simplex (Duchi et al. 2008)."""
    u = np.sort(z)[::-1]
    css = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, len(z) + 1) > (css - 1))[0][-1]
    return np.maximum(z - (css[rho] - 1) / (rho + 1), 0)


@pytest.mark.parametrize("scale, k", [(3.0, 256), (5.0, 4), (1e-3, 4)])  # top-k path, larger k, full sort
def test_sparsemax_is_the_simplex_projection(scale, k):
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(40, 300)) * scale
    out = sparsemax(torch.tensor(Z), k=k).numpy()
    ref = np.stack([_simplex_projection(z) for z in Z])
    np.testing.assert_allclose(out, ref, atol=1e-10)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-10)
    # along another dimension
    np.testing.assert_allclose(sparsemax(torch.tensor(Z.T), dim=0).numpy(), ref.T, atol=1e-10)


def test_sparsemax_gradient_flows_to_the_support_only():
    z = torch.tensor([[3.0, 2.5, -4.0, -5.0]], requires_grad=True)
    sparsemax(z)[0, 0].backward()
    g = z.grad[0].numpy()
    assert g[0] != 0 and g[1] != 0 and g[2] == 0 and g[3] == 0


def test_ghost_batch_norm_uses_virtual_batches():
    gbn = GhostBatchNorm(3, virtual_batch_size=4).train()
    x = torch.randn(8, 3) + torch.arange(8.0)[:, None] * 10  # the halves differ a lot
    out = gbn(x)
    # each virtual batch of 4 is normalised on its own: mean 0 within each half
    np.testing.assert_allclose(out[:4].mean(0).detach().numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(out[4:].mean(0).detach().numpy(), 0, atol=1e-5)


def test_network_explain_is_the_eta_weighted_mask_sum():
    torch.manual_seed(0)
    net = TabNet(30, 4, n_d=6, n_a=5, n_steps=3, virtual_batch_size=16).eval()
    x = torch.randn(20, 30)
    explain, masks = net.forward_masks(x)
    assert len(masks) == 3 and all(m.shape == (20, 30) for m in masks)
    for m in masks:
        np.testing.assert_allclose(m.sum(1).detach().numpy(), 1.0, atol=1e-5)  # sparsemax rows
    # rebuild sum_i eta_i M_i from the steps
    xb = net.initial_bn(x)
    rebuilt = sum(m * d.sum(1, keepdim=True) for m, d in net._steps(xb))
    np.testing.assert_allclose(explain.detach().numpy(), rebuilt.detach().numpy(), atol=1e-6)
    logits, m_loss = net(x)
    assert logits.shape == (20, 4) and float(m_loss.detach()) <= 0  # negative entropy
    assert net.latent(x).shape == (20, 6)


def test_balanced_weights_match_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0, 0, 0, 1, 2, 2, 0, 1])
    np.testing.assert_allclose(balanced_class_weights(y, 3),
                               compute_class_weight("balanced", classes=np.arange(3), y=y))


def test_registry_entry():
    spec = MODELS["tabnet"]
    assert spec.supports.explain and spec.supports.latent and not spec.supports.samples
    with pytest.raises(ConfigError, match="n_shared"):
        create_model("tabnet", 10, ["a", "b"], device="cpu", hparams={"n_shared": 0, "n_independent": 0})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    ref = make_synthetic(400, 120, 3, seed=1)
    q = make_synthetic(240, 120, 4, seed=2)  # type3 is novel
    prep = prepare(ref, q, label_key="cell_type", query_label_key="cell_type", n_top_genes=100,
                   min_shared_genes=50, seed=0)
    m = create_model("tabnet", prep.n_genes, prep.classes, seed=0, device="cpu", hparams=TINY)
    m.fit(prep.train, prep.val)
    m.calibrate(prep.val)
    return prep, m, m.save(tmp_path_factory.mktemp("tabnet") / "m")


def test_trains_above_chance_with_explain(fitted):
    prep, m, _ = fitted
    hist = m.history
    assert not hist["diverged"] and {"loss_ce", "mask_entropy", "val_acc"} <= set(hist["epochs"][0])
    known = np.isin(prep.query.labels, prep.classes)
    pred = np.asarray(prep.classes)[m.predict_proba(prep.query.X).argmax(1)]
    assert (pred[known] == prep.query.labels[known]).mean() > 0.8  # chance is 1/3
    E = m.explain(prep.query.X)
    assert E.shape == (prep.query.n_obs, prep.n_genes) and E.dtype == np.float32
    assert (E >= 0).all() and (E.sum(1) > 0).all()
    En = m.explain(prep.query.X[:5], normalize=True)
    np.testing.assert_allclose(En.sum(1), 1.0, atol=1e-5)
    masks = m.masks(prep.query.X[:5])
    assert len(masks) == m.hparams["n_steps"]
    np.testing.assert_allclose(masks[0].sum(1), 1.0, atol=1e-5)
    assert m.latent(prep.query.X).shape == (prep.query.n_obs, TINY["n_d"])
    Z = m.standardized(prep.query.X)  # the network's input: z-scores over the reference training cells
    assert Z.shape == E.shape and Z.dtype == np.float32
    sc = m.scaler
    np.testing.assert_allclose(Z, np.clip((prep.query.X - sc.mean.numpy()) / sc.std.numpy(), -10, 10), atol=1e-5)
    np.testing.assert_allclose(m.standardized(prep.train.X).mean(0), 0, atol=1e-3)
    scores = m.ood_scores(prep.query.X)
    assert set(scores) == set(OOD_METHODS)


def test_save_load_round_trip(fitted):
    prep, m, d = fitted
    m2 = load_model(d, device="cpu")
    X = prep.query.X
    np.testing.assert_array_equal(m.predict_proba(X), m2.predict_proba(X))
    np.testing.assert_array_equal(m.explain(X), m2.explain(X))
    assert m2.temperature == m.temperature and m2.threshold == m.threshold


def test_sims_summaries_by_hand():
    genes = ["g0", "g1", "g2"]
    M = np.array([[2.0, 0.0, 2.0],  # class a
                  [1.0, 0.0, 1.0],  # class a
                  [0.0, 3.0, 1.0]])  # class b
    g = global_importance(M, genes)
    assert g.index.tolist() == ["g2", "g0", "g1"] or g.index.tolist() == ["g2", "g1", "g0"]
    np.testing.assert_allclose(g.loc[["g0", "g1", "g2"]], [0.3, 0.3, 0.4])  # column sums / total
    ci = class_importance(M, ["a", "a", "b"], genes, ranking="attention", classes=["a", "b"])
    np.testing.assert_allclose(ci.loc["a"], [0.5, 0.0, 0.5])
    np.testing.assert_allclose(ci.loc["b"], [0.0, 0.75, 0.25])
    norm = normalize_per_gene(ci)
    np.testing.assert_allclose(norm.loc["a"], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(norm.loc["b"], [0.0, 1.0, 0.5])
    top = top_genes_per_class(ci, 2)
    assert list(top.columns) == ["class", "rank", "gene", "mean_weight", "normalized", "score"]
    assert top[top["class"] == "b"]["gene"].tolist() == ["g1", "g2"]
    assert top[top["class"] == "a"]["gene"].tolist() == ["g0", "g2"]


def test_positive_evidence_ranking_by_hand():
    """A gene a class attends to but does not express (TabNet's evidence by absence) is top under
    the SIMS attention ranking and absent from that class's top under positive evidence."""
    genes = ["absent_in_a", "marker_a", "marker_b"]
    labels = ["a", "a", "b", "b"]
    M = np.array([[6.0, 3.0, 1.0],  # class a attends most to a gene it lacks (z < 0) ...
                  [6.0, 3.0, 1.0],  # ... and less to its own marker (z > 0)
                  [1.0, 1.0, 2.0],
                  [1.0, 1.0, 2.0]])
    Z = np.array([[-1.0, 2.0, -0.5],
                  [-1.5, 1.0, -0.5],
                  [1.0, -1.0, 3.0],
                  [2.0, -1.0, 1.0]])
    R = M / M.sum(1, keepdims=True)
    np.testing.assert_allclose(gene_weights(M, ranking="attention"), R)
    np.testing.assert_allclose(gene_weights(M, Z), R * np.maximum(Z, 0))  # the default is positive evidence
    assert DEFAULT_RANKING == "positive" and set(RANKINGS) == {"positive", "attention"}
    attention = top_genes_per_class(class_importance(M, labels, genes, ranking="attention", classes=["a", "b"]), 1)
    assert attention.set_index("class").loc["a", "gene"] == "absent_in_a"
    ci = class_importance(M, labels, genes, Z=Z, classes=["a", "b"])
    np.testing.assert_allclose(ci.loc["a"], [0.0, 0.3 * 1.5, 0.0])  # mean over a of (3/10) * z
    np.testing.assert_allclose(ci.loc["b"], [0.25 * 1.5, 0.0, 0.5 * 2.0])
    top = top_genes_per_class(ci, 3)
    top_a = top[(top["class"] == "a") & (top["score"] > 0)]["gene"].tolist()
    assert top_a == ["marker_a"]  # "absent_in_a" scores 0 for a
    assert top[top["class"] == "b"]["gene"].tolist()[:2] == ["marker_b", "absent_in_a"]
    with pytest.raises(ValueError, match="standardised expression"):
        gene_weights(M)
    with pytest.raises(ValueError, match="shape"):
        gene_weights(M, Z[:2])
    with pytest.raises(ConfigError, match="ranking"):
        gene_weights(M, Z, "negative")


# canonical PBMC markers (Seurat PBMC 3k tutorial) that are among the demo reference's 1,267 genes
DEMO_MARKERS = {"B": {"MS4A1", "CD79A"}, "CD14 Mono": {"LYZ", "S100A8", "S100A9", "CD14"},
                "FCGR3A Mono": {"FCGR3A", "MS4A7"}}


def test_marker_genes_on_the_demo_reference():
    """Per-class top 20 genes under the default (positive-evidence) ranking on the real demo
    reference (Kang et al. PBMC, 1,556 cells, 5 classes) hold each class's canonical markers at
    two of seeds 0-2 (in a fresh install of 2026-12-02, seed 0's B top 20 held CD74 / CD37 instead
    of CD79A / MS4A1, as BENCHMARKS.md reports for the kang_sce bench), and at every seed no class other than B has a B-cell marker, no lymphocyte class a monocyte marker. Under
    the SIMS attention ranking the second check fails (CD14 monocytes attend to CD79A and MS4A1,
    absent in them)."""
    import anndata as ad

    ref = ad.read_h5ad(ROOT / "assets" / "kang_pbmc_example_sce_1556.h5ad")
    prep = prepare(ref, ref, label_key="cell_type_harmonized", n_top_genes=2000, seed=0)
    assert {g for ms in DEMO_MARKERS.values() for g in ms} <= set(prep.genes)
    hits = {cls: 0 for cls in DEMO_MARKERS}
    for seed in (0, 1, 2):  # on this 1,245-cell reference one seed in three may pick another B module (BENCHMARKS.md)
        m = create_model("tabnet", prep.n_genes, prep.classes, seed=seed, device="cpu",
                         hparams={"max_epochs": 10, "batch_size": 32})
        m.fit(prep.train, prep.val)
        assert m.history["epochs"][-1]["val_acc"] > 0.85
        X = prep.train.X
        per_class = class_importance(m.explain(X), np.asarray(prep.classes)[prep.train.y], prep.genes,
                                     Z=m.standardized(X), classes=prep.classes)
        top = top_genes_per_class(per_class, 20)
        tops = {c: set(top[top["class"] == c]["gene"]) for c in prep.classes}
        for cls, markers in DEMO_MARKERS.items():
            hits[cls] += bool(tops[cls] & markers)
        for cls in set(prep.classes) - {"B"}:
            assert not tops[cls] & DEMO_MARKERS["B"], (seed, cls, sorted(tops[cls]))
        for cls in {"B", "CD4 T", "CD8 T"}:
            assert not tops[cls] & DEMO_MARKERS["CD14 Mono"], (seed, cls, sorted(tops[cls]))
    assert all(n >= 2 for n in hits.values()), hits
