"""SGLD step / chain and the replay buffer (samplers/sgld.py)."""
from __future__ import annotations

import pytest
import torch

from cellannot_core.samplers import NoiseInit, ReplayBuffer, sgld_sample, sgld_step


def gauss_score(x: torch.Tensor) -> torch.Tensor:
    """log N(0, I) up to a constant: -0.5 ||x||^2, gradient -x."""
    return -0.5 * (x**2).sum(1)


def shifted_score(mu: torch.Tensor):
    return lambda x: -0.5 * ((x - mu) ** 2).sum(1)


# ---- sgld_step / sgld_sample ------------------------------------------------------------------

def test_step_without_noise_is_exact_gradient_ascent():
    x = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -4.0]])
    out = sgld_step(gauss_score, x, step_size=0.1, noise_std=0.0)
    torch.testing.assert_close(out, x + 0.1 * (-x))  # x + step * grad, grad = -x
    assert not out.requires_grad
    # x itself untouched
    torch.testing.assert_close(x, torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -4.0]]))


def test_step_adds_seeded_noise_reproducibly():
    x = torch.zeros(4, 5)
    a = sgld_step(gauss_score, x, step_size=0.1, noise_std=0.5, generator=torch.Generator().manual_seed(3))
    b = sgld_step(gauss_score, x, step_size=0.1, noise_std=0.5, generator=torch.Generator().manual_seed(3))
    c = sgld_step(gauss_score, x, step_size=0.1, noise_std=0.5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    # at x = 0 the gradient is 0, so the move is exactly noise_std * N(0,1) from that generator
    eps = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, 0.5 * eps)


def test_sample_runs_n_steps_and_converges_to_mode():
    mu = torch.tensor([2.0, -1.0, 0.5])
    x0 = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) * 5
    # noiseless: n steps of x <- x + s (mu - x) contract the distance by (1 - s)^n exactly
    x = sgld_sample(shifted_score(mu), x0, n_steps=7, step_size=0.2, noise_std=0.0)
    torch.testing.assert_close(x - mu, (x0 - mu) * 0.8**7, rtol=1e-5, atol=1e-5)
    # with small noise: ends near the mode
    x = sgld_sample(shifted_score(mu), x0, n_steps=200, step_size=0.1, noise_std=0.01,
                    generator=torch.Generator().manual_seed(1))
    assert torch.allclose(x.mean(0), mu, atol=0.05)
    assert float((x - mu).abs().max()) < 0.2


def test_sample_zero_steps_returns_start():
    x0 = torch.randn(3, 2)
    torch.testing.assert_close(sgld_sample(gauss_score, x0, n_steps=0, step_size=1.0, noise_std=1.0), x0)


# ---- NoiseInit ----------------------------------------------------------------------------------

def test_noise_init_kinds():
    g = torch.Generator().manual_seed(0)
    ref = torch.stack([torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0, 30.0, 40.0]),
                       torch.tensor([-1.0, -2.0, -3.0, -4.0])])  # 3 cells x 4 genes
    marg = NoiseInit("marginal", 4, ref)(500, g)
    assert marg.shape == (500, 4)
    for j in range(4):  # every value is one of the reference values of that column
        assert set(marg[:, j].tolist()) <= set(ref[:, j].tolist())
        assert len(set(marg[:, j].tolist())) == 3  # and all are reachable
    # columns drawn independently: some rows mix cells (not just whole reference rows)
    rows = {tuple(r) for r in ref.tolist()}
    assert any(tuple(r) not in rows for r in marg.tolist())
    # marginal does not alias the reference
    marg[0, 0] = 1e6
    assert float(ref.max()) == 40.0

    u = NoiseInit("uniform", 6)(2000, g)
    assert u.shape == (2000, 6) and float(u.min()) >= -1.0 and float(u.max()) <= 1.0
    assert float(u.min()) < -0.95 and float(u.max()) > 0.95
    n = NoiseInit("normal", 6)(4000, g)
    assert abs(float(n.mean())) < 0.05 and abs(float(n.std()) - 1) < 0.05


def test_noise_init_errors():
    with pytest.raises(ValueError, match="marginal"):
        NoiseInit("bogus", 3)
    with pytest.raises(ValueError):
        NoiseInit("marginal", 3, None)


def test_noise_init_seeded():
    a = NoiseInit("normal", 3)(5, torch.Generator().manual_seed(9))
    b = NoiseInit("normal", 3)(5, torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b)


# ---- ReplayBuffer ---------------------------------------------------------------------------------

def _buffer(reinit: float, size: int = 50, d: int = 4, seed: int = 0) -> ReplayBuffer:
    # fresh draws come from U(-1, 1); the buffer itself is overwritten with values >= 5 so a
    # fresh draw and a stored chain can never be confused
    buf = ReplayBuffer(size, NoiseInit("uniform", d), reinit_freq=reinit, generator=torch.Generator().manual_seed(seed))
    buf.buffer = torch.arange(size * d, dtype=torch.float32).reshape(size, d) + 5.0
    return buf


def test_buffer_initial_fill():
    buf = ReplayBuffer(30, NoiseInit("uniform", 3), generator=torch.Generator().manual_seed(0))
    assert buf.buffer.shape == (30, 3)
    assert float(buf.buffer.abs().max()) <= 1.0


def test_buffer_sample_shapes_and_indices():
    buf = _buffer(0.0)
    x, idx = buf.sample(16)
    assert x.shape == (16, 4) and idx.shape == (16,)
    assert idx.dtype == torch.int64 and int(idx.min()) >= 0 and int(idx.max()) < 50
    torch.testing.assert_close(x, buf.buffer[idx])  # reinit 0: all drawn chains are buffer rows
    # sampling returns a copy: editing it does not change the buffer
    before = buf.buffer.clone()
    x += 100
    torch.testing.assert_close(buf.buffer, before)


def test_buffer_reinit_one_gives_all_fresh():
    buf = _buffer(1.0)
    x, idx = buf.sample(40)
    assert float(x.abs().max()) <= 1.0  # all from the uniform init, none equal to buffer rows (>= 5)
    assert not (x[:, None, :] == buf.buffer[None, :, :]).all(-1).any()
    assert idx.shape == (40,)


def test_buffer_reinit_fraction():
    buf = _buffer(0.3, size=200)
    x, _ = buf.sample(4000)
    fresh = (x.abs() <= 1.0).all(1).float().mean()
    assert abs(float(fresh) - 0.3) < 0.04


def test_buffer_update_writes_back():
    buf = _buffer(0.0)
    _, idx = buf.sample(8)
    idx = torch.unique(idx)  # distinct positions for an exact check
    new = torch.full((len(idx), 4), -7.0, dtype=torch.float64)
    others = torch.ones(50, dtype=torch.bool)
    others[idx] = False
    before = buf.buffer.clone()
    buf.update(idx, new)
    assert buf.buffer.dtype == torch.float32
    assert (buf.buffer[idx] == -7.0).all()
    torch.testing.assert_close(buf.buffer[others], before[others])


def test_buffer_seeded_reproducible():
    a = ReplayBuffer(20, NoiseInit("normal", 3), reinit_freq=0.5, generator=torch.Generator().manual_seed(2))
    b = ReplayBuffer(20, NoiseInit("normal", 3), reinit_freq=0.5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a.buffer, b.buffer)
    xa, ia = a.sample(10)
    xb, ib = b.sample(10)
    torch.testing.assert_close(xa, xb)
    assert torch.equal(ia, ib)


def test_buffer_state_dict_round_trip_and_shape_check():
    src = _buffer(0.0)
    state = src.state_dict()
    assert set(state) == {"buffer"}
    dst = ReplayBuffer(50, NoiseInit("normal", 4), generator=torch.Generator().manual_seed(5))
    assert not torch.equal(dst.buffer, src.buffer)
    dst.load_state_dict(state)
    torch.testing.assert_close(dst.buffer, src.buffer)
    # state is a copy in both directions
    state["buffer"][0, 0] = -99
    assert float(dst.buffer[0, 0]) != -99 and float(src.buffer[0, 0]) != -99
    wrong = ReplayBuffer(10, NoiseInit("normal", 4))
    with pytest.raises(ValueError, match="shape"):
        wrong.load_state_dict(src.state_dict())
    wrong_d = ReplayBuffer(50, NoiseInit("normal", 3))
    with pytest.raises(ValueError):
        wrong_d.load_state_dict(src.state_dict())


def test_buffer_reset_refills_from_init():
    buf = _buffer(0.0)
    buf.reset()
    assert buf.buffer.shape == (50, 4) and float(buf.buffer.abs().max()) <= 1.0
