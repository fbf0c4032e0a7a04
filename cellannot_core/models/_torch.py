"""Shared plumbing for PyTorch models: device, input standardisation, batched inference,
weights <-> arrays, and the bridge to the one training loop."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..data._types import Split, dense
from ..training import TrainConfig, fit, resolve_device, seed_everything
from ..training.device import global_rng
from ._base import Model
from ._scaling import SCALE_CLIP, Scaler

TRAIN_BYTES_PER_PARAMETER = 16  # float32 weights, gradients and Adam's two moments


class Standardizer(nn.Module):
    """The z-score of :mod:`._scaling` as a torch module (its mean and std are buffers, saved
    with the weights)."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def fit(self, X: np.ndarray) -> None:
        s = Scaler().fit(X)
        self.mean.copy_(torch.as_tensor(s.mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(s.std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).clamp(-SCALE_CLIP, SCALE_CLIP)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


class TorchModel(Model):
    """A model whose parameters live in ``self.net`` (an nn.Module built by ``build_net``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.device = resolve_device(self.device_name)
        self.generator = seed_everything(self.seed)
        self.scaler = Standardizer(self.n_features).to(self.device)
        self._check_size()
        # weights are initialised from this model's seed, not from whatever the global RNG holds
        # (several jobs may build models concurrently in one server)
        with global_rng(self.seed):
            self.net = self.build_net().to(self.device)

    def build_net(self) -> nn.Module:
        raise NotImplementedError

    def _check_size(self) -> None:
        """Refuse hyper-parameters whose network would not fit this server's memory before a byte
        of it is allocated: the net is built on PyTorch's ``meta`` device (shapes only) and its
        training state (weights, gradients and Adam's two moments: 16 bytes a parameter) compared
        with ``$CELLANNOT_MEMORY_LIMIT_GB``. Layer widths are free text in the app's form and in a
        saved model's config: ``hidden`` 30000,30000 once took 3.9 GB in the server's own process
        to check the form, and a longer list of such widths would have taken the server down."""
        from ..data.io import memory_limit_bytes
        from ..errors import ConfigError

        with torch.device("meta"):
            n = sum(p.numel() for p in self.build_net().parameters())
        need, limit = n * TRAIN_BYTES_PER_PARAMETER, memory_limit_bytes()
        if need > limit:
            raise ConfigError(f"model {self.name} with these hyper-parameters has {n / 1e6:,.0f} million parameters "
                              f"on {self.n_features:,} genes; training it needs about {need / 1024**3:.1f} GiB, above "
                              f"this server's limit of {limit / 1024**3:.1f} GiB (CELLANNOT_MEMORY_LIMIT_GB): choose "
                              "smaller hidden widths or fewer genes")

    # batched inference on the standardised input
    def _batched(self, X: np.ndarray, fn: Callable[[torch.Tensor], torch.Tensor], batch: int = 2048) -> np.ndarray:
        self.net.eval()
        outs = []
        with torch.no_grad():
            for i in range(0, X.shape[0], batch):
                xb = torch.as_tensor(dense(X[i:i + batch]), device=self.device)
                outs.append(fn(self.scaler(xb)).cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, 0), dtype=np.float32)

    def tensors(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        X = torch.as_tensor(np.asarray(split.X, dtype=np.float32), device=self.device)
        y = torch.as_tensor(np.asarray(split.y, dtype=np.int64), device=self.device)
        return self.scaler(X), y

    def train_config(self) -> TrainConfig:
        h = self.hparams
        return TrainConfig(max_epochs=int(h["max_epochs"]), batch_size=int(h["batch_size"]), lr=float(h["lr"]),
                           weight_decay=float(h.get("weight_decay", 0.0)), patience=int(h.get("patience", 5)))

    def run_loop(self, train: Split, val: Split, callbacks: Sequence[Any], cfg: TrainConfig) -> dict[str, Any]:
        """Standardise on the reference, then train with the one loop; returns the history dict."""
        self.scaler.fit(np.asarray(train.X))
        Xt, yt = self.tensors(train)
        self._val = self.tensors(val)
        info = {"model": self.name, "n_train": int(Xt.shape[0]), "n_genes": self.n_features,
                "n_classes": self.n_classes, "device": str(self.device)}
        hist = fit(self, Xt, yt, cfg, callbacks=callbacks, generator=self.generator, info=info)
        self.history = hist.to_dict()
        del self._val
        self.fit_reference(train)
        return self.history

    # Trainable protocol defaults
    def parameters(self):
        return self.net.parameters()

    def train_state(self) -> dict[str, Any]:
        return {"net": {k: v.detach().clone() for k, v in self.net.state_dict().items()}}

    def load_train_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])

    def on_recover(self) -> None:
        pass

    # persistence
    def _state_arrays(self) -> dict[str, np.ndarray]:
        out = {f"net.{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        out.update({f"scaler.{k}": v.detach().cpu().numpy() for k, v in self.scaler.state_dict().items()})
        return out

    def _load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.net.load_state_dict({k[4:]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith("net.")})
        self.scaler.load_state_dict({k[7:]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith("scaler.")})
        self.net.to(self.device)
        self.scaler.to(self.device)
