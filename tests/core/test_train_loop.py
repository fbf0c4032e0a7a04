"""The one training loop (train/loop.py): divergence guard, recovery, early stopping, cancel,
callbacks."""
from __future__ import annotations

import math

import pytest
import torch

from cellannot_core.errors import Cancelled
from cellannot_core.training import DIVERGENCE_BOUND, CancelToken, TrainConfig, fit


class Toy:
    """Linear regression with scripted failures and scripted validation metrics.

    ``bad_steps``: step -> "nan" | "huge" | "big-ok"; ``once``: a bad step misbehaves only the
    first time it is seen (so a recovery can get past it).
    """

    def __init__(self, *, bad_steps=None, once=False, val_seq=None, n=40, d=3):
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.zeros(d))
        self.X = torch.randn(n, d, generator=g)
        self.y = self.X @ torch.tensor([1.0, -2.0, 0.5])
        self.bad_steps = dict(bad_steps or {})
        self.once = once
        self.val_seq = list(val_seq) if val_seq is not None else None
        self.n_val = 0
        self.recovers = 0
        self.steps_seen: list[int] = []

    def parameters(self):
        return [self.w]

    def training_step(self, xb, yb, step):
        self.steps_seen.append(step)
        loss = ((xb @ self.w - yb) ** 2).mean()
        kind = self.bad_steps.get(step)
        if kind is not None and self.once:
            del self.bad_steps[step]
        if kind == "nan":
            loss = loss * float("nan")
        elif kind == "inf":
            loss = loss + float("inf")
        elif kind == "huge":
            loss = loss + 2 * DIVERGENCE_BOUND
        elif kind == "big-ok":
            loss = loss + 0.5 * DIVERGENCE_BOUND
        return loss, {"loss": float(loss.detach())}

    def validation_metrics(self):
        if self.val_seq is None:
            return {}
        v = self.val_seq[min(self.n_val, len(self.val_seq) - 1)]
        self.n_val += 1
        return {"val_loss": v}

    def train_state(self):
        return {"w": self.w.detach().clone()}

    def load_train_state(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])

    def on_recover(self):
        self.recovers += 1


class Recorder:
    """Records every hook call and the weights at each epoch end."""

    def __init__(self, toy=None):
        self.toy = toy
        self.calls: list[tuple] = []
        self.snapshots: list[torch.Tensor] = []
        self.begin_info = None
        self.end_logs = None

    def on_train_begin(self, info):
        self.calls.append(("begin",))
        self.begin_info = info

    def on_step(self, step, total, logs):
        self.calls.append(("step", step, total, dict(logs)))

    def on_epoch_end(self, epoch, logs):
        self.calls.append(("epoch", epoch, dict(logs)))
        if self.toy is not None and "recovered_from_divergence" not in logs:
            self.snapshots.append(self.toy.w.detach().clone())

    def on_train_end(self, logs):
        self.calls.append(("end",))
        self.end_logs = logs


def _cfg(**kw):
    base = dict(max_epochs=5, batch_size=10, lr=0.05, patience=0)
    base.update(kw)
    return TrainConfig(**base)


def _fit(toy, cfg, callbacks=()):
    return fit(toy, toy.X, toy.y, cfg, callbacks=callbacks, generator=torch.Generator().manual_seed(1))


# ---- divergence guard ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["nan", "inf", "huge"])
def test_divergence_stops_and_restores_last_good_state(kind):
    toy = Toy(bad_steps={6: kind})  # 4 steps per epoch: step 6 is in epoch 2
    rec = Recorder(toy)
    hist = _fit(toy, _cfg(), [rec])
    assert hist.diverged is True
    assert "step 6" in hist.divergence_message and "epoch 2" in hist.divergence_message
    assert len(hist.epochs) == 1 and hist.recoveries == 0
    # weights are those at the end of epoch 1 (the last good state), not the half-done epoch 2
    assert len(rec.snapshots) == 1
    torch.testing.assert_close(toy.w.detach(), rec.snapshots[0])
    assert torch.isfinite(toy.w).all()
    # the bad loss was never back-propagated: training stopped at step 6
    assert max(toy.steps_seen) == 6
    assert rec.calls[-1] == ("end",) and rec.end_logs["diverged"] is True


def test_divergence_in_first_epoch_restores_initial_state():
    toy = Toy(bad_steps={2: "nan"})
    hist = _fit(toy, _cfg())
    assert hist.diverged and hist.epochs == []
    torch.testing.assert_close(toy.w.detach(), torch.zeros(3))


def test_loss_just_below_bound_is_not_divergence():
    toy = Toy(bad_steps={3: "big-ok"})
    hist = _fit(toy, _cfg(max_epochs=2))
    assert not hist.diverged and len(hist.epochs) == 2


def test_recovery_continues_from_last_good_state():
    toy = Toy(bad_steps={6: "nan"}, once=True)
    rec = Recorder(toy)
    cfg = _cfg(recover_on_divergence=True, max_recoveries=3, recover_lr_factor=0.5)
    hist = _fit(toy, cfg, [rec])
    assert hist.recoveries == 1 and toy.recovers == 1
    assert hist.diverged is False and hist.divergence_message == ""
    assert len(hist.epochs) == 5 and [e["epoch"] for e in hist.epochs] == [1, 2, 3, 4, 5]
    assert torch.isfinite(toy.w).all()
    # the recovery was announced to the callbacks
    rec_calls = [c for c in rec.calls if c[0] == "epoch" and "recovered_from_divergence" in c[2]]
    assert len(rec_calls) == 1 and rec_calls[0][2]["recovered_from_divergence"] == 1.0
    # and it still learned the regression (finite, reasonable loss at the end)
    assert hist.epochs[-1]["loss"] < hist.epochs[0]["loss"]


def test_recovery_gives_up_after_max_recoveries():
    toy = Toy(bad_steps={6: "nan"}, once=False)  # step 6 fails every time
    hist = _fit(toy, _cfg(recover_on_divergence=True, max_recoveries=2))
    assert hist.recoveries == 2 and toy.recovers == 2
    assert hist.diverged is True and "step 6" in hist.divergence_message
    assert len(hist.epochs) == 1


def test_recovery_scales_learning_rate(monkeypatch):
    seen_lr = []
    orig_adam = torch.optim.Adam

    class SpyAdam(orig_adam):
        def step(self, *a, **k):
            seen_lr.append(self.param_groups[0]["lr"])
            return super().step(*a, **k)

    monkeypatch.setattr(torch.optim, "Adam", SpyAdam)
    toy = Toy(bad_steps={2: "nan"}, once=True)
    hist = _fit(toy, _cfg(max_epochs=1, recover_on_divergence=True, recover_lr_factor=0.25))
    assert hist.recoveries == 1
    # steps 0, 1 at the configured lr; after the recovery the epoch is redone at lr * 0.25
    assert seen_lr[:2] == [pytest.approx(0.05)] * 2
    assert seen_lr[2:] == [pytest.approx(0.0125)] * 4


# ---- early stopping ----------------------------------------------------------------------------------

def test_early_stopping_after_patience_restores_best():
    toy = Toy(val_seq=[1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1])
    rec = Recorder(toy)
    hist = _fit(toy, _cfg(max_epochs=8, patience=2), [rec])
    assert hist.stopped_early is True
    assert len(hist.epochs) == 4  # epochs 3 and 4 did not improve on epoch 2
    assert hist.best_epoch == 2
    torch.testing.assert_close(toy.w.detach(), rec.snapshots[1])  # state of epoch 2
    assert not torch.allclose(toy.w.detach(), rec.snapshots[-1])
    assert [e["val_loss"] for e in hist.epochs] == [1.0, 0.5, 0.6, 0.7]


def test_min_delta_counts_tiny_improvements_as_none():
    toy = Toy(val_seq=[1.0, 0.99999, 0.99998, 0.99997])
    hist = _fit(toy, _cfg(max_epochs=4, patience=2, min_delta=1e-3))
    assert hist.stopped_early and len(hist.epochs) == 3 and hist.best_epoch == 1


def test_patience_zero_never_stops_early_and_keeps_best():
    toy = Toy(val_seq=[1.0, 0.5, 0.6, 0.7, 0.8])
    rec = Recorder(toy)
    hist = _fit(toy, _cfg(max_epochs=5, patience=0), [rec])
    assert not hist.stopped_early and len(hist.epochs) == 5 and hist.best_epoch == 2
    torch.testing.assert_close(toy.w.detach(), rec.snapshots[1])


# ---- cancel ---------------------------------------------------------------------------------------------

def test_cancel_from_callback_raises_cancelled():
    token = CancelToken()
    toy = Toy()

    class CancelAt:
        def on_step(self, step, total, logs):
            if step == 3:
                token.cancel()

    with pytest.raises(Cancelled):
        _fit(toy, _cfg(), [CancelAt(), token])
    assert toy.steps_seen == [0, 1, 2]  # no step after the cancel


def test_cancel_before_start():
    token = CancelToken()
    token.cancel()
    toy = Toy()
    with pytest.raises(Cancelled):
        _fit(toy, _cfg(), [token])
    assert toy.steps_seen == []


def test_cancel_token_is_thread_safe_flag():
    import threading

    token = CancelToken()
    assert token.should_stop() is False
    t = threading.Thread(target=token.cancel)
    t.start()
    t.join()
    assert token.should_stop() is True


# ---- callbacks and history ---------------------------------------------------------------------------------

def test_callbacks_receive_every_hook_in_order():
    toy = Toy(val_seq=[3.0, 2.0, 1.0])
    rec = Recorder(toy)

    class Partial:  # a callback with only one hook must be fine
        def __init__(self):
            self.n = 0

        def on_epoch_end(self, epoch, logs):
            self.n += 1

    part = Partial()
    hist = fit(toy, toy.X, toy.y, _cfg(max_epochs=3), callbacks=[rec, part],
               generator=torch.Generator().manual_seed(1), info={"model": "toy", "n_train": 40})
    kinds = [c[0] for c in rec.calls]
    assert kinds[0] == "begin" and kinds[-1] == "end"
    assert kinds.count("step") == 12 and kinds.count("epoch") == 3 and part.n == 3
    assert rec.begin_info == {"model": "toy", "n_train": 40, "max_epochs": 3, "steps_per_epoch": 4}
    steps = [c for c in rec.calls if c[0] == "step"]
    assert [s[1] for s in steps] == list(range(1, 13)) and {s[2] for s in steps} == {12}
    # each epoch-end comes after that epoch's 4 steps
    assert kinds == ["begin"] + (["step"] * 4 + ["epoch"]) * 3 + ["end"]
    epochs = [c for c in rec.calls if c[0] == "epoch"]
    assert [e[1] for e in epochs] == [0, 1, 2]
    for e in epochs:
        assert {"loss", "val_loss", "epoch_seconds"} <= set(e[2])
    assert rec.end_logs == hist.to_dict()
    assert hist.best_epoch == 3 and hist.seconds >= 0


def test_epoch_loss_is_mean_of_step_losses():
    toy = Toy(n=40)
    rec = Recorder(toy)
    hist = _fit(toy, _cfg(max_epochs=2), [rec])
    steps = [c[3]["loss"] for c in rec.calls if c[0] == "step"]
    assert hist.epochs[0]["loss"] == pytest.approx(sum(steps[:4]) / 4)
    assert hist.epochs[1]["loss"] == pytest.approx(sum(steps[4:]) / 4)


def test_epoch_loss_mean_when_last_batch_skipped():
    toy = Toy(n=41)  # 5 batches; the last holds 1 cell and is skipped
    rec = Recorder(toy)
    hist = _fit(toy, _cfg(max_epochs=1), [rec])
    steps = [c[3]["loss"] for c in rec.calls if c[0] == "step"]
    assert len(steps) == 4
    assert hist.epochs[0]["loss"] == pytest.approx(sum(steps) / 4)


def test_training_actually_learns_and_history_serialises():
    import json

    toy = Toy()
    hist = _fit(toy, _cfg(max_epochs=30, lr=0.1))
    torch.testing.assert_close(toy.w.detach(), torch.tensor([1.0, -2.0, 0.5]), atol=0.05, rtol=0)
    d = json.loads(json.dumps(hist.to_dict()))
    assert d["diverged"] is False and len(d["epochs"]) == 30 and math.isfinite(d["seconds"])


class TwoParts:
    """A "critic" ``a`` and a "generator" ``b`` trained on their own losses with their own
    optimisers (as VERA's energy model and generator): ``b``'s loss depends on ``a`` and is a
    callable, so it must see ``a`` after ``a``'s step, and must not move ``a``."""

    def __init__(self):
        self.a = torch.nn.Parameter(torch.tensor([0.0]))
        self.b = torch.nn.Parameter(torch.tensor([0.0]))
        self.a_seen_by_b: list[tuple[float, float]] = []

    def parameters(self):
        return [self.a, self.b]

    def param_groups(self):
        return {"critic": {"params": [self.a], "lr": 0.1}, "generator": {"params": [self.b], "lr": 0.05}}

    def training_step(self, xb, yb, step):
        a_before = float(self.a.detach())

        def generator_loss():
            self.a_seen_by_b.append((a_before, float(self.a.detach())))
            return ((self.b - self.a) ** 2).sum()  # b chases a; its gradient must not reach a

        return {"critic": ((self.a - 3.0) ** 2).sum(), "generator": generator_loss}, {}

    def validation_metrics(self):
        return {}

    def train_state(self):
        return {"a": self.a.detach().clone(), "b": self.b.detach().clone()}

    def load_train_state(self, state):
        with torch.no_grad():
            self.a.copy_(state["a"])
            self.b.copy_(state["b"])

    def on_recover(self):
        pass


def test_several_optimisers_each_step_their_own_group_in_order():
    m = TwoParts()
    X, y = torch.zeros(8, 1), torch.zeros(8)
    fit(m, X, y, TrainConfig(max_epochs=200, batch_size=8, patience=0))
    assert abs(float(m.a.detach()) - 3.0) < 0.05  # the critic reached its own optimum (the generator's loss did not pull it)
    assert abs(float(m.b.detach()) - float(m.a.detach())) < 0.2  # the generator followed the critic
    assert all(after != before for before, after in m.a_seen_by_b[:5])  # the callable saw the stepped critic
    first = m.a_seen_by_b[0]
    assert first[0] == 0.0 and abs(first[1] - 0.1) < 1e-6  # Adam's first step is lr (0.1) for the critic


def test_a_loss_for_an_unknown_group_is_an_error():
    class Bad(TwoParts):
        def training_step(self, xb, yb, step):
            return {"nobody": (self.a ** 2).sum()}, {}

    with pytest.raises(KeyError, match="nobody"):
        fit(Bad(), torch.zeros(4, 1), torch.zeros(4), TrainConfig(max_epochs=1, batch_size=4))


def test_a_time_budget_ends_training_gracefully_and_keeps_the_best_state():
    from cellannot_core.training import TimeBudget

    class Slow(Toy):
        def training_step(self, xb, yb, step):
            import time as _t

            _t.sleep(0.01)
            return super().training_step(xb, yb, step)

    m = Slow()
    hist = fit(m, m.X, m.y, TrainConfig(max_epochs=1000, batch_size=8, lr=0.05, patience=0),
               callbacks=[TimeBudget(0.3)])
    assert hist.stopped_early and hist.stop_reason == "time budget" and 1 <= len(hist.epochs) < 1000
    assert hist.seconds < 5
    full = fit(Toy(), m.X, m.y, TrainConfig(max_epochs=3, batch_size=8, lr=0.05, patience=0),
               callbacks=[TimeBudget(60)])
    assert len(full.epochs) == 3 and not full.stopped_early  # within the budget: the whole run
