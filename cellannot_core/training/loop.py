"""The one training loop: mini-batches, validation, early stopping, divergence guard, cancel.

Every neural model implements :class:`Trainable`; the loop owns the optimisers, epochs,
best-state keeping, progress callbacks and what happens when the loss diverges. Under ``torchrun`` it trains data-parallel
(:mod:`.distributed`): each process takes its shard of every epoch and gradients are averaged.

One optimiser or several: a module that trains parts of itself on different losses (an energy
model beside its generator, as VERA; a GAN-like pair) declares ``param_groups()`` (name ->
parameters, or ``{"params": ..., "lr": ...}``), and its ``training_step`` returns, instead of
one loss, a dict ``{group name: loss}``. Each group is stepped in that order with its own Adam,
and a value may be a zero-argument callable, evaluated only after the groups before it have
stepped (so the generator's loss sees the updated energy).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from ..errors import Cancelled, TrainingDiverged
from .callbacks import any_finish, any_stop, call
from .device import seed_dropout
from .distributed import any_rank, average_gradients, broadcast_buffers, local_batch, shard, world
from .distributed import steps_per_epoch as distributed_steps

DIVERGENCE_BOUND = 1e8


class Trainable(Protocol):
    """What the loop needs of a model. ``param_groups()`` is optional (default: one group,
    ``"main"``, of every trainable parameter)."""

    def parameters(self): ...
    def training_step(self, xb: torch.Tensor, yb: torch.Tensor, step: int) -> tuple[Any, dict[str, float]]: ...
    def validation_metrics(self) -> dict[str, float]: ...
    def train_state(self) -> dict[str, Any]: ...
    def load_train_state(self, state: dict[str, Any]) -> None: ...
    def on_recover(self) -> None: ...


@dataclass
class TrainConfig:
    max_epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    patience: int = 5  # epochs without improvement of the monitored metric; 0 = off
    monitor: str = "val_loss"  # minimised
    min_delta: float = 1e-4
    grad_clip: float = 0.0  # 0 = off
    recover_on_divergence: bool = False
    max_recoveries: int = 3
    recover_lr_factor: float = 0.5
    divergence_bound: float = DIVERGENCE_BOUND


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    diverged: bool = False
    divergence_message: str = ""
    recoveries: int = 0
    best_epoch: int = -1
    stopped_early: bool = False
    stop_reason: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs, "diverged": self.diverged,
            "divergence_message": self.divergence_message, "recoveries": self.recoveries,
            "best_epoch": self.best_epoch, "stopped_early": self.stopped_early, "stop_reason": self.stop_reason,
            "seconds": round(self.seconds, 2),
        }


def _check_finite(loss: torch.Tensor, bound: float, epoch: int, step: int) -> None:
    v = float(loss.detach())
    if not math.isfinite(v) or abs(v) > bound:
        raise TrainingDiverged(
            f"training diverged at epoch {epoch + 1}, step {step}: loss = {v:.3g}", epoch=epoch, step=step)


def _optimizers(module: Trainable, cfg: TrainConfig) -> dict[str, tuple[torch.optim.Optimizer, list]]:
    """One Adam per parameter group (name -> (optimiser, its parameters))."""
    groups = module.param_groups() if hasattr(module, "param_groups") else {"main": list(module.parameters())}
    out = {}
    for name, g in groups.items():
        spec = g if isinstance(g, dict) else {"params": g}
        params = [p for p in spec["params"] if p.requires_grad]
        out[name] = (torch.optim.Adam(params, lr=float(spec.get("lr", cfg.lr)), weight_decay=cfg.weight_decay),
                     params)
    return out


def _opt_state(opts: dict[str, tuple[torch.optim.Optimizer, list]]) -> dict[str, Any]:
    return {name: copy.deepcopy(opt.state_dict()) for name, (opt, _) in opts.items()}


def _step(opts: dict[str, tuple[torch.optim.Optimizer, list]], losses: Any, cfg: TrainConfig, epoch: int,
          step: int) -> None:
    """Backward and step each group's loss in turn (a callable loss is evaluated when its turn comes)."""
    if not isinstance(losses, dict):
        losses = {next(iter(opts)): losses}
    distributed = world()[1] > 1
    for name, loss in losses.items():
        if name not in opts:
            raise KeyError(f"training_step returned a loss for {name!r}, which is not a parameter group")
        loss = loss() if callable(loss) else loss
        if not distributed:
            _check_finite(loss, cfg.divergence_bound, epoch, step)
        opt, params = opts[name]
        for other, _ in opts.values():  # no group keeps gradients of another group's loss
            other.zero_grad(set_to_none=True)
        loss.backward()
        if distributed:  # DDP's gradient average; the averaged loss is checked alike on every process
            _check_finite(average_gradients(params, loss), cfg.divergence_bound, epoch, step)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()


def fit(module: Trainable, X: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, *,
        callbacks: Sequence[Any] = (), generator: torch.Generator | None = None,
        info: dict[str, Any] | None = None) -> History:
    """Train ``module`` on ``(X, y)`` (tensors already on the device).

    Early stopping monitors ``module.validation_metrics()[cfg.monitor]`` and restores the best
    state at the end. On divergence (non-finite loss or ``|loss| > 1e8``) the last good state
    (end of the previous epoch) is restored; with ``recover_on_divergence`` training continues
    from it (learning rate scaled by ``recover_lr_factor``, ``module.on_recover()`` called) up
    to ``max_recoveries`` times, otherwise training stops and ``History.diverged`` is set.
    Cancellation (a callback's ``should_stop()``) raises :class:`Cancelled`.
    """
    t0 = time.time()
    hist = History()
    if isinstance(getattr(module, "net", None), torch.nn.Module):  # its dropout masks from its own seed
        seed_dropout(module.net, int(getattr(module, "seed", 0)), X.device)
    opts = _optimizers(module, cfg)
    n_proc = world()[1]
    n = X.shape[0]
    steps_per_epoch = distributed_steps(n, cfg.batch_size)
    batch = local_batch(cfg.batch_size)  # this process's share of the mini-batch
    total_steps = steps_per_epoch * cfg.max_epochs
    call(callbacks, "on_train_begin", {**(info or {}), "max_epochs": cfg.max_epochs,
                                       "steps_per_epoch": steps_per_epoch})
    good = {"module": copy.deepcopy(module.train_state()), "opt": _opt_state(opts)}
    best_val, best_state, bad_epochs = math.inf, None, 0
    step = 0
    epoch = 0
    while epoch < cfg.max_epochs:
        t_epoch = time.time()
        perm = shard(torch.randperm(n, generator=generator)).to(X.device)  # the same order on every process
        sums: dict[str, float] = {}
        n_run = 0
        try:
            for b in range(steps_per_epoch):
                if any_stop(callbacks):
                    raise Cancelled("training was cancelled")
                idx = perm[b * batch:(b + 1) * batch]
                if idx.numel() < 2:
                    continue
                losses, logs = module.training_step(X[idx], y[idx], step)
                _step(opts, losses, cfg, epoch, step)
                step += 1
                n_run += 1
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                call(callbacks, "on_step", step, total_steps, logs)
        except TrainingDiverged as err:
            module.load_train_state(copy.deepcopy(good["module"]))
            for name, (opt, _) in opts.items():
                opt.load_state_dict(copy.deepcopy(good["opt"][name]))
            if cfg.recover_on_divergence and hist.recoveries < cfg.max_recoveries:
                hist.recoveries += 1
                for opt, _ in opts.values():
                    for g in opt.param_groups:
                        g["lr"] *= cfg.recover_lr_factor
                module.on_recover()
                call(callbacks, "on_epoch_end", epoch, {"recovered_from_divergence": float(hist.recoveries)})
                continue  # redo this epoch from the last good state
            hist.diverged = True
            hist.divergence_message = str(err)
            break
        logs = {k: v / max(1, n_run) for k, v in sums.items()}
        net = getattr(module, "net", None)
        if n_proc > 1 and isinstance(net, torch.nn.Module):
            broadcast_buffers(net)
        with torch.no_grad():
            logs.update(module.validation_metrics())
        logs["epoch_seconds"] = time.time() - t_epoch
        hist.epochs.append({"epoch": epoch + 1, **logs})
        call(callbacks, "on_epoch_end", epoch, logs)
        good = {"module": copy.deepcopy(module.train_state()), "opt": _opt_state(opts)}
        cur = logs.get(cfg.monitor, math.nan)
        if np.isfinite(cur) and cur < best_val - cfg.min_delta:
            best_val, best_state, bad_epochs = cur, copy.deepcopy(good["module"]), 0
            hist.best_epoch = epoch + 1
        else:
            bad_epochs += 1
            if cfg.patience and bad_epochs >= cfg.patience:
                hist.stopped_early = True
                epoch += 1
                break
        epoch += 1
        if epoch < cfg.max_epochs and any_rank(any_finish(callbacks)):  # e.g. a quick run's time budget
            hist.stopped_early = True
            hist.stop_reason = "time budget"
            break
    if best_state is not None:
        module.load_train_state(best_state)
    hist.seconds = time.time() - t0
    call(callbacks, "on_train_end", hist.to_dict())
    return hist
