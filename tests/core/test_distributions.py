"""Likelihoods: exact log-probs against scipy / torch, normalisation by direct summation or
quadrature, sample moments, the registry and the decoder heads."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.integrate import quad

from cellannot_core.distributions import (
    LIKELIHOODS,
    ContinuousBernoulli,
    LikelihoodHead,
    NegativeBinomial,
    Poisson,
    ZeroInflatedNegativeBinomial,
    ZeroInflatedPoisson,
    cb_log_norm,
    get_likelihood,
)
from cellannot_core.errors import ConfigError

torch.set_default_dtype(torch.float32)
D = torch.float64  # exactness checks in double precision
MU = torch.tensor([0.01, 0.5, 3.0, 40.0, 800.0], dtype=D)
THETA = torch.tensor([0.05, 1.0, 5.0, 30.0, 1e3], dtype=D)
X = torch.arange(0, 60, dtype=D)


def _grid(*params):
    """All (x, params...) combinations as broadcast tensors: x along dim 0."""
    return [X[:, None]] + [p[None, :] for p in params]


# ---- NB / Poisson against scipy -----------------------------------------------------------------

def test_nb_log_prob_matches_scipy():
    x, mu, theta = _grid(MU, THETA)
    got = NegativeBinomial(mu, theta).log_prob(x).numpy()
    n, p = theta.numpy(), (theta / (theta + mu)).numpy()
    want = stats.nbinom.logpmf(x.numpy(), n, p)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # eps=1e-8 inside the logs


@pytest.mark.parametrize("use_log", [False, True])
def test_poisson_log_prob_matches_scipy(use_log):
    rates = torch.tensor([1e-4, 0.3, 2.0, 17.0, 250.0], dtype=D)
    x, rate = _grid(rates)
    d = Poisson(log_rate=rate.log()) if use_log else Poisson(rate)
    np.testing.assert_allclose(d.log_prob(x).numpy(), stats.poisson.logpmf(x.numpy(), rate.numpy()), rtol=1e-10,
                               atol=1e-10)


def test_poisson_needs_exactly_one_rate():
    with pytest.raises(ValueError):
        Poisson()
    with pytest.raises(ValueError):
        Poisson(torch.ones(2), log_rate=torch.zeros(2))


def test_poisson_rate_zero_scores_zero_counts():
    assert float(Poisson(torch.zeros(1)).log_prob(torch.zeros(1))) == 0.0


# ---- zero-inflated mixtures: the mixture formula, and total probability 1 -------------------------

ZI = torch.tensor([-6.0, -1.0, 0.0, 1.5, 8.0], dtype=D)


def test_zinb_is_the_mixture():
    x, mu, theta, zi = _grid(MU, THETA, ZI)
    pi = torch.sigmoid(zi)
    nb = NegativeBinomial(mu, theta).log_prob(x).exp()
    want = torch.where(x == 0, pi + (1 - pi) * nb, (1 - pi) * nb)
    got = ZeroInflatedNegativeBinomial(mu, theta, zi).log_prob(x).exp()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)


def test_zip_is_the_mixture():
    rates = torch.tensor([0.01, 0.5, 3.0, 12.0, 40.0], dtype=D)
    x, rate, zi = _grid(rates, ZI)
    pi = torch.sigmoid(zi)
    po = torch.as_tensor(stats.poisson.pmf(x.numpy(), rate.numpy()))
    want = torch.where(x == 0, pi + (1 - pi) * po, (1 - pi) * po)
    for d in (ZeroInflatedPoisson(rate, zi), ZeroInflatedPoisson(log_rate=rate.log(), zi_logits=zi)):
        torch.testing.assert_close(d.log_prob(x).exp(), want, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("name", ["nb", "zinb", "poisson", "zip"])
def test_count_pmfs_sum_to_one(name):
    """Direct summation over x = 0..5000 for moderate means."""
    x = torch.arange(0, 5001, dtype=D)[:, None]
    mu = torch.tensor([0.02, 1.0, 7.5, 60.0], dtype=D)[None]
    theta = torch.tensor([0.3, 2.0, 10.0, 50.0], dtype=D)[None]
    zi = torch.tensor([-2.0, 0.5, 3.0, -0.3], dtype=D)[None]
    cls = LIKELIHOODS[name]
    kwargs = {"mu": mu, "theta": theta, "zi_logits": zi, "log_rate": mu.log()}
    d = cls(**{p: kwargs[p] for p in cls.decoder_params})
    p = d.log_prob(x).exp()
    torch.testing.assert_close(p.sum(0), torch.ones(4, dtype=D), rtol=0, atol=1e-7)
    # the closed-form mean equals the summed mean
    torch.testing.assert_close((p * x).sum(0), d.mean[0], rtol=1e-6, atol=1e-8)


def test_zero_inflation_logit_extremes_are_finite():
    x = torch.tensor([0.0, 1.0, 5.0])
    zi = torch.tensor([-80.0, 0.0, 80.0])
    mu, theta = torch.full((3,), 2.0), torch.full((3,), 3.0)
    for d in (ZeroInflatedNegativeBinomial(mu, theta, zi), ZeroInflatedPoisson(mu, zi)):
        lp = d.log_prob(x[:, None].expand(3, 3))
        assert torch.isfinite(lp).all()


@pytest.mark.parametrize("name", ["nb", "zinb", "poisson", "zip"])
def test_count_sample_moments(name):
    torch.manual_seed(0)
    mu, theta, zi = torch.tensor([4.0, 20.0]), torch.tensor([2.0, 8.0]), torch.tensor([-1.0, 0.5])
    cls = LIKELIHOODS[name]
    kwargs = {"mu": mu, "theta": theta, "zi_logits": zi, "log_rate": mu.log()}
    d = cls(**{p: kwargs[p] for p in cls.decoder_params})
    s = d.sample((40000,))
    assert s.shape == (40000, 2) and (s >= 0).all() and torch.equal(s, s.round())
    torch.testing.assert_close(s.mean(0), d.mean, rtol=0.03, atol=0.05)
    torch.testing.assert_close(s.var(0), d.variance, rtol=0.08, atol=0.1)


# ---- continuous Bernoulli -----------------------------------------------------------------------

LOGITS = torch.tensor([-60.0, -12.0, -3.0, -0.5, -0.01, -1e-3, 0.0, 2e-3, 0.003, 0.02, 0.7, 4.0, 15.0, 60.0], dtype=D)


def test_cb_matches_torch_continuous_bernoulli():
    x = torch.linspace(0, 1, 11, dtype=D)[:, None]
    mid = LOGITS[(LOGITS.abs() <= 15)]  # torch clamps probs to [eps, 1-eps]; compare where that is exact
    ours = ContinuousBernoulli(mid)
    ref = torch.distributions.ContinuousBernoulli(logits=mid)
    torch.testing.assert_close(ours.log_prob(x), ref.log_prob(x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours.mean, ref.mean, rtol=1e-6, atol=1e-8)


def test_cb_log_norm_is_exact_and_continuous_around_one_half():
    eta = torch.linspace(-0.05, 0.05, 2001, dtype=D)
    lam = torch.sigmoid(eta)
    exact = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))  # fine in float64 away from 0
    ok = eta.abs() > 1e-5
    torch.testing.assert_close(cb_log_norm(eta)[ok], exact[ok], rtol=0, atol=1e-9)
    assert abs(float(cb_log_norm(torch.zeros(1, dtype=D))) - np.log(2.0)) < 1e-15
    # float32: finite everywhere, including the Taylor window boundary and huge logits, with gradients
    e32 = torch.tensor([-1e4, -88.0, -0.0040, -0.0039, 0.0, 0.0039, 0.0041, 50.0, 1e4], requires_grad=True)
    v = cb_log_norm(e32)
    v.sum().backward()
    assert torch.isfinite(v).all() and torch.isfinite(e32.grad).all()
    assert np.all(np.diff(v.detach().numpy()[2:5]) * np.sign(np.diff(e32.detach().numpy()[2:5])) <= 1e-6)


@pytest.mark.parametrize("eta", [-40.0, -5.0, -0.3, -1e-3, 0.0, 2e-3, 0.8, 7.0, 40.0])
def test_cb_density_integrates_to_one(eta):
    d = ContinuousBernoulli(torch.tensor(eta, dtype=D))
    f = lambda x: float(d.log_prob(torch.tensor(x, dtype=D)).exp())  # noqa: E731
    total, _ = quad(f, 0.0, 1.0, limit=200, points=[1e-3, 1 - 1e-3])
    assert total == pytest.approx(1.0, abs=1e-7)
    mean, _ = quad(lambda x: x * f(x), 0.0, 1.0, limit=200, points=[1e-3, 1 - 1e-3])
    assert float(d.mean) == pytest.approx(mean, abs=1e-6)


def test_cb_samples():
    torch.manual_seed(0)
    eta = torch.tensor([-6.0, -0.2, 0.0, 0.005, 1.5, 30.0])
    d = ContinuousBernoulli(eta)
    s = d.sample((30000,))
    assert s.shape == (30000, 6) and (s >= 0).all() and (s <= 1).all()
    torch.testing.assert_close(s.mean(0), d.mean, rtol=0, atol=0.01)


# ---- registry and heads --------------------------------------------------------------------------

def test_registry_names_and_errors():
    assert list(LIKELIHOODS) == ["nb", "zinb", "poisson", "zip", "cb"]
    assert get_likelihood("zinb") is ZeroInflatedNegativeBinomial
    with pytest.raises(ConfigError, match="nb, zinb, poisson, zip, cb"):
        get_likelihood("gaussian")


@pytest.mark.parametrize("name", ["nb", "zinb", "poisson", "zip", "cb"])
def test_likelihood_head_builds_each_distribution(name):
    torch.manual_seed(0)
    head = LikelihoodHead(name, 8, 30)
    h = torch.randn(5, 8)
    lib = torch.tensor([[100.0], [1.0], [3e4], [50.0], [7.0]])
    d = head(h, lib)
    assert isinstance(d, LIKELIHOODS[name]) and d.batch_shape == (5, 30)
    expr = head.expression(h)
    assert expr.shape == (5, 30) and torch.isfinite(expr).all()
    if head.domain == "counts":
        torch.testing.assert_close(expr.sum(1), torch.ones(5))
        x = torch.poisson(lib * expr)
        nb_mean = lib * expr
        # the decoder's mean (before zero inflation) is library x proportions
        assert torch.allclose(getattr(d, "mu", getattr(d, "rate", None)), nb_mean, rtol=1e-5)
    else:
        assert ((expr > 0) & (expr < 1)).all()
        x = torch.rand(5, 30)
    lp = d.log_prob(x)
    assert lp.shape == (5, 30) and torch.isfinite(lp).all()
    lp.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
