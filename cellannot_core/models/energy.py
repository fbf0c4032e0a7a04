"""Energy-based classifiers: CLAMS, JEM, VERA, HDGE, HDGE + JEM and the discriminative ResNet baseline.

JEM (Grathwohl et al. 2019) reads a classifier's logits f(x) as an energy model:
log p(x) = logsumexp_y f(x)[y] - log Z, p(y|x) = softmax(f(x)). Training maximises
log p(y|x) (cross-entropy) + log p(x), whose gradient is estimated by contrastive divergence
against SGLD samples drawn through a replay buffer:

    L = CE(f(x), y) + w * L_px,   L_px = -(mean f_lse(x_data) - mean f_lse(x_sgld))

CLAMS (Liu, Fradkin, Atanackovic, Lee, MLCB 2022) regularises the generative loss L_px:
  (i)  loss clipping with an exponential linear unit: L_px <- ELU(L_px), bounded below by -1,
       which removes the run-away regime in which the data energy is pushed down without limit;
  (ii) stochastic regularisation with p = 0.25. Neither equation is in the public code; we read
       it (``stochastic_mode="apply"``, default) as: at each step the generative term (and its
       SGLD sampling) is included with probability p; ``"drop"`` reads it as dropped with
       probability p. Both are options.
JEM is the same code without (i) and (ii); it is known to diverge, and the training loop
stops it cleanly. CLAMS recovers from its last good checkpoint instead.

HDGE (Liu & Abbeel, ICML 2020, "Hybrid discriminative-generative training via contrastive
learning"; METHODS.md 1.4) replaces the MCMC estimate of the generative term by a contrastive
one: log p(x|y) is normalised over *samples* instead of over x-space,

    L_con(x_i, y_i) = -u(x_i)[y_i] / t + log sum_{x' in batch and memory} exp(u(x')[y_i] / t),

with u(x) = f(x) / |f(x)| (unit-length logit vectors and a temperature t, as the authors' code
does), the memory the vectors of the previous ``memory_size`` training cells (detached, as
MoCo's queue), and L = CE + contrast_weight * L_con. No
sampling, so it cannot diverge the way JEM does (CLAMS poster: HDGE diverged 0/5). HDGE + JEM
(``hdge_jem``) adds JEM's SGLD term L_px on top (the poster: diverged 5/5; the loop stops it
cleanly and says so).

VERA (Grathwohl, Kelly et al., ICLR 2021, "No MCMC for me"; METHODS.md 1.3) replaces JEM's SGLD
samples by a generator q(x) (h ~ N(0, I), x = g(h) + sigma * eps): the energy model learns from

    L_e = CE + px_weight * ( -(mean f_lse(x_data) - mean f_lse(x_gen)) + pg_control * |grad_x f_lse(x_data)|^2 )

and the generator maximises mean f_lse(x_gen) + ent_weight * H(q), the entropy's gradient
estimated as in the authors' code: the score (x - g(h')) / sigma^2 averaged over importance-
weighted posterior samples h' ~ N(h, post_sigma^2) (20 per cell), whose spread is learned on its
own optimiser; sigma is clamped to [min_sigma, max_sigma]. Three parameter groups with their own
Adam (energy, generator, posterior), stepped in that order by the one training loop. Generated
cells start from generator samples and are refined by class-conditional SGLD, as for CLAMS.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data._types import Split
from ..nn import mlp, resnet
from ..nn.energy import EnergyNet, VeraGenerator
from ..novelty import OOD_METHODS
from ..samplers import NoiseInit, ReplayBuffer, sgld_sample
from ..training import TrainConfig
from ._torch import TorchModel
from .registry import HParam, Supports, register

BUFFER_KEEP = 1000  # replay-buffer chains saved with the model (float16) to seed sample()
# the latent space (the last hidden width) is where every novelty score, neighbour search and map works;
# hidden=400000 trained and then asked the Mahalanobis score for a 400,000-square covariance (1.2 TiB)
MAX_LATENT = 1024


#: the most layer widths a ``hidden`` list may give: a saved model's config of 200,000 widths of 1 took 50 s and
#: 1.6 GB to size on PyTorch's meta device (found 2026-12-07); the models here use 2-3
MAX_HIDDEN_LAYERS = 16


def _ints(text: str, what: str) -> list[int]:
    from ..errors import ConfigError, shown_name

    text = str(text)  # (quoted short and clean: a 5 MB value from a config was quoted whole, found 2026-12-07)
    parts = text.replace(" ", "").split(",", MAX_HIDDEN_LAYERS + 1)
    if len(parts) > MAX_HIDDEN_LAYERS + 1 or len([v for v in parts if v]) > MAX_HIDDEN_LAYERS:
        raise ConfigError(f"{what} may give at most {MAX_HIDDEN_LAYERS} layer widths, e.g. 1200,600,200; got "
                          f"'{shown_name(text)}'")
    try:
        vals = [int(v) for v in parts if v]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, e.g. 1200,600,200; got '{shown_name(text)}'") from None
    if not vals or min(vals) < 1:
        raise ConfigError(f"{what} must be comma-separated positive integers; got '{shown_name(text)}'")
    return vals


_MLP = {"hidden": HParam("1200,600,200", "MLP hidden widths (input -> ... -> latent)")}
_COMMON = {
    "max_epochs": HParam(30, "maximum training epochs (early stopping on validation loss)", low=1, high=1000),
    "batch_size": HParam(64, "mini-batch size", low=8, high=4096),
    "lr": HParam(1e-3, "Adam learning rate", low=1e-6, high=1.0),
    "weight_decay": HParam(0.0, "Adam weight decay", low=0.0, high=1.0, advanced=True),
    "patience": HParam(3, "early stopping: epochs without validation improvement (0 = off; bench kang_ctrl: the "
                       "validation loss is lowest after 1-4 epochs, and 5 made one seed of 5 train 12 epochs, 227 s)",
                       low=0, high=1000),
    "activation": HParam("elu", "activation function", choices=("elu", "relu", "leaky_relu", "silu"), advanced=True),
    "dropout": HParam(0.0, "dropout rate", low=0.0, high=0.9, advanced=True),
    "input_noise": HParam(0.3, "Gaussian noise added to standardised inputs during training (JEM's sigma; "
                          "JEM used 0.03 on images: 0.3 gave better transfer on both PBMC bench tasks)",
                          low=0.0, high=2.0, advanced=True),
    "gene_dropout": HParam(0.0, "training augmentation: each gene's expression is set to zero with this "
                           "probability (mimics detection differences between technologies)", low=0.0, high=0.9,
                           advanced=True),
    "ood_score": HParam("knn_logit", "novelty score used for rejection (bench, CLAMS, 5 seeds: the kNN distance "
                        "between unit-length logit vectors gave a higher acc_open than the latent Mahalanobis "
                        "distance, kNN, max p(y|x) and the energy on both PBMC tasks)", choices=OOD_METHODS),
    "knn_k": HParam(10, "neighbours for the kNN novelty score", low=1, high=200, advanced=True),
}

_SGLD = {
    "px_weight": HParam(1.0, "weight of the generative loss L[p(x)]", low=0.0, high=100.0),
    "sgld_steps": HParam(20, "SGLD steps per training iteration (JEM: 20)", low=1, high=1000),
    "sgld_lr": HParam(1.0, "SGLD step size (JEM: 1)", low=0.0, high=100.0),
    "sgld_std": HParam(0.01, "SGLD noise standard deviation (JEM: 0.01)", low=0.0, high=10.0),
    "buffer_size": HParam(10000, "replay-buffer size (JEM: 10,000)", low=100, high=200000, advanced=True),
    "reinit_freq": HParam(0.05, "share of chains re-initialised from noise per draw (JEM: 0.05)",
                          low=0.0, high=1.0, advanced=True),
    "sgld_init": HParam("marginal", "noise for new chains: per-gene reference marginals, N(0,1) or U(-1,1) "
                        "on the standardised scale", choices=NoiseInit.KINDS, advanced=True),
    "sample_steps": HParam(40, "conditional SGLD steps when generating cells after training", low=1, high=5000,
                           advanced=True),
}


_CONTRAST = {
    "contrast_weight": HParam(1.0, "weight of HDGE's contrastive log p(x|y) term", low=0.0, high=100.0),
    "contrast_t": HParam(0.1, "HDGE: temperature of the contrastive term (on unit-length logit vectors, as the "
                         "HDGE code)", low=1e-3, high=10.0, advanced=True),
    "memory_size": HParam(1024, "HDGE: logits of this many earlier training cells join each batch's "
                          "normaliser over samples (0 = the batch alone)", low=0, high=100000, advanced=True),
}


class EnergyClassifier(TorchModel):
    """Shared implementation; subclasses set the backbone and the regularisers."""

    generative: bool = True
    recover: bool = False
    contrastive: bool = False  # HDGE's contrastive estimate of log p(x|y)

    def build_net(self) -> nn.Module:
        h = self.hparams
        widths = _ints(h["hidden"], "hidden")
        if widths[-1] > MAX_LATENT:
            from ..errors import ConfigError

            raise ConfigError(f"the last hidden width is the latent space ({widths[-1]:,}); it may be at most "
                              f"{MAX_LATENT:,} (the novelty scores hold its dimensions squared): e.g. hidden 1200,600,200")
        if h.get("blocks"):
            blocks = _ints(h["blocks"], "blocks")
            if len(blocks) != len(widths):
                from ..errors import ConfigError

                raise ConfigError("blocks must give one number per hidden width, e.g. hidden 800,200 blocks 2,4")
            backbone = resnet(self.n_features, widths, blocks, act=h["activation"], dropout=h["dropout"])
        else:
            backbone = mlp(self.n_features, widths, act=h["activation"], dropout=h["dropout"])
        self.buffer: ReplayBuffer | None = None
        return EnergyNet(backbone, widths[-1], self.n_classes)

    # ---- training --------------------------------------------------------------------------
    def train_config(self) -> TrainConfig:
        cfg = super().train_config()
        cfg.recover_on_divergence = self.recover
        return cfg

    def fit(self, train: Split, val: Split, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        if self.generative:
            self.scaler.fit(np.asarray(train.X))
            ref = self.scaler(torch.as_tensor(np.asarray(train.X, dtype=np.float32), device=self.device)).cpu()
            self._init = NoiseInit(self.hparams["sgld_init"], self.n_features, ref)
            self.buffer = ReplayBuffer(self.hparams["buffer_size"], self._init,
                                       reinit_freq=self.hparams["reinit_freq"], generator=self.generator)
        return self.run_loop(train, val, callbacks, self.train_config())

    def _use_generative(self) -> bool:
        if not self.generative:
            return False
        p = float(self.hparams.get("stochastic_p", 1.0))
        if p >= 1.0 and self.hparams.get("stochastic_mode", "apply") == "apply":
            return True
        u = float(torch.rand(1, generator=self.generator))
        return u < p if self.hparams.get("stochastic_mode", "apply") == "apply" else u >= p

    def _gen(self) -> torch.Generator | None:
        return self.generator if self.device.type == "cpu" else None

    def _sample_q(self, n: int) -> torch.Tensor:
        x0, idx = self.buffer.sample(n)
        self.net.eval()
        xq = sgld_sample(lambda x: self.net(x).logsumexp(1), x0.to(self.device), n_steps=self.hparams["sgld_steps"],
                         step_size=self.hparams["sgld_lr"], noise_std=self.hparams["sgld_std"], generator=self._gen())
        self.net.train()
        self.buffer.update(idx, xq.cpu())
        return xq

    def training_step(self, xb: torch.Tensor, yb: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        h = self.hparams
        self.net.train()
        xb = self._augment(xb)
        logits = self.net(xb)
        l_ce = F.cross_entropy(logits, yb)
        loss = l_ce
        logs = {"loss_ce": float(l_ce.detach())}
        if self.contrastive:
            l_con = self._contrastive(logits, yb)
            loss = loss + h["contrast_weight"] * l_con
            logs["loss_contrast"] = float(l_con.detach())
        if self._use_generative():
            xq = self._sample_q(xb.shape[0])
            f_data = logits.logsumexp(1).mean()
            f_q = self.net(xq).logsumexp(1).mean()
            l_px = -(f_data - f_q)
            logs["energy_gap"] = float((f_data - f_q).detach())
            if h.get("elu_clip", False):
                l_px = F.elu(l_px)
            loss = loss + h["px_weight"] * l_px
            logs["loss_px"] = float(l_px.detach())
        logs["loss"] = float(loss.detach())
        return loss, logs

    def _augment(self, xb: torch.Tensor) -> torch.Tensor:
        """Training augmentation: gene dropout, then Gaussian input noise (see the hyper-parameters)."""
        h = self.hparams
        if h["gene_dropout"] > 0:
            drop = torch.rand(xb.shape, generator=self._gen(), device=xb.device) < h["gene_dropout"]
            xb = torch.where(drop, self.scaler(torch.zeros_like(xb[:1])), xb)
        if h["input_noise"] > 0:
            xb = xb + h["input_noise"] * torch.randn(xb.shape, generator=self._gen(), device=xb.device)
        return xb

    def _contrastive(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """HDGE's L_con, the mean over the batch (see the module docstring); updates the memory."""
        mem = getattr(self, "_memory", None)
        unit = F.normalize(logits, dim=1)  # as the HDGE code: unit-length logit vectors, a temperature
        pool = unit if mem is None or len(mem) == 0 else torch.cat([unit, mem.to(logits.device)])
        t = float(self.hparams["contrast_t"])
        cols = pool[:, y] / t  # f(x_j)[y_i] for every sample j (rows) and batch cell i (columns)
        l_con = -unit.gather(1, y[:, None]).squeeze(1) / t + torch.logsumexp(cols, dim=0)
        keep = int(self.hparams["memory_size"])
        if keep > 0:
            self._memory = pool.detach()[:keep]
        return l_con.mean()

    def validation_metrics(self) -> dict[str, float]:
        X, y = self._val
        self.net.eval()
        logits = torch.cat([self.net(X[i:i + 4096]) for i in range(0, X.shape[0], 4096)])
        return {"val_loss": float(F.cross_entropy(logits, y)), "val_acc": float((logits.argmax(1) == y).float().mean())}

    def train_state(self) -> dict[str, Any]:
        state = super().train_state()
        if self.buffer is not None:
            state["buffer"] = self.buffer.state_dict()
        return state

    def load_train_state(self, state: dict[str, Any]) -> None:
        super().load_train_state(state)
        if self.buffer is not None and "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])

    def on_recover(self) -> None:
        if self.buffer is not None:
            self.buffer.reset()
        self._memory = None

    # ---- inference -------------------------------------------------------------------------
    def logits(self, X: np.ndarray) -> np.ndarray:
        return self._batched(X, self.net)

    def latent(self, X: np.ndarray) -> np.ndarray:
        return self._batched(X, self.net.backbone)

    def sample(self, n_per_class: int) -> tuple[np.ndarray, np.ndarray]:
        """Class-conditional SGLD on f(x)[y], started from replay-buffer chains (or noise)."""
        if not self.spec.supports.samples:
            raise NotImplementedError(f"model {self.name} is discriminative and cannot generate cells")
        k = self.n_classes
        y = torch.arange(k).repeat_interleave(int(n_per_class))
        x0 = self._initial_chains(len(y))
        x0, yd = x0.to(self.device), y.to(self.device)
        self.net.eval()
        xs = sgld_sample(lambda x: self.net(x).gather(1, yd[:, None]).squeeze(1), x0,
                         n_steps=self.hparams["sample_steps"], step_size=self.hparams["sgld_lr"],
                         noise_std=self.hparams["sgld_std"], generator=self._gen())
        with torch.no_grad():
            xs = self.scaler.inverse(xs.clamp(-10, 10)).clamp_min(0.0)  # log-expression is >= 0
        return xs.cpu().numpy().astype(np.float32), y.numpy()

    def _initial_chains(self, n: int) -> torch.Tensor:
        """Where generated cells' SGLD chains start: replay-buffer chains, else noise."""
        if self.buffer is not None:
            return self.buffer.sample(n)[0]
        return torch.randn(n, self.n_features, generator=self.generator)

    # ---- persistence: keep a few buffer chains so a loaded model can still generate cells ----
    def _state_arrays(self) -> dict[str, np.ndarray]:
        out = super()._state_arrays()
        if self.buffer is not None:
            out["buffer"] = self.buffer.buffer[:BUFFER_KEEP].numpy().astype(np.float16)
        return out

    def _load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        super()._load_state_arrays(arrays)
        if "buffer" in arrays:
            chains = torch.as_tensor(arrays["buffer"].astype(np.float32))
            init = NoiseInit("normal", self.n_features)
            self.buffer = ReplayBuffer(chains.shape[0], init, reinit_freq=0.0, generator=self.generator)
            self.buffer.load_state_dict({"buffer": chains})


@register("clams", order=0, supports=Supports(latent=True, samples=True),
          description="CLAMS: energy-based classifier (JEM with ELU loss clipping and stochastic "
                      "regularisation); calibrated, stable, generates cells with SGLD.",
          hparams={
              **_MLP, **_COMMON, **_SGLD,
              "elu_clip": HParam(True, "CLAMS regulariser (i): clip the generative loss with an ELU", advanced=True),
              "stochastic_p": HParam(0.25, "CLAMS regulariser (ii): probability p of the stochastic regularisation",
                                     low=0.0, high=1.0),
              "stochastic_mode": HParam("apply", "how p is read: 'apply' = the generative term is used with "
                                        "probability p; 'drop' = it is dropped with probability p",
                                        choices=("apply", "drop"), advanced=True),
          })
class Clams(EnergyClassifier):
    generative = True
    recover = True


@register("jem", order=1, supports=Supports(latent=True, samples=True),
          description="JEM: joint energy-based model (classifier + SGLD contrastive divergence), without "
                      "CLAMS' regularisers; may diverge (then it stops cleanly and says so).",
          hparams={**_MLP,
                   **_COMMON, **_SGLD})
class Jem(EnergyClassifier):
    generative = True
    recover = False


@register("resnet", order=2, supports=Supports(latent=True, samples=False),
          description="ResNet: the same kind of backbone with residual blocks, cross-entropy only "
                      "(the discriminative baseline of the CLAMS table).",
          hparams={"hidden": HParam("800,200", "widths of the residual stages"),
                   "blocks": HParam("2,4", "residual blocks per stage"), **_COMMON})
class ResNetClassifier(EnergyClassifier):
    generative = False
    recover = False


@register("hdge", order=3, supports=Supports(latent=True, samples=False),
          description="HDGE: the classifier's logits as an energy model trained with cross-entropy plus a "
                      "contrastive estimate of log p(x|y) (normalised over samples, no MCMC); cannot diverge.",
          hparams={**_MLP,
                   **_COMMON, **_CONTRAST})
class Hdge(EnergyClassifier):
    generative = False
    recover = False
    contrastive = True


@register("hdge_jem", order=4, supports=Supports(latent=True, samples=True),
          description="HDGE + JEM: HDGE's contrastive log p(x|y) plus JEM's SGLD log p(x) term; may diverge "
                      "(then it stops cleanly and says so); generates cells with SGLD.",
          hparams={**_MLP,
                   **_COMMON, **_CONTRAST, **_SGLD})
class HdgeJem(EnergyClassifier):
    generative = True
    recover = False
    contrastive = True


@register("vera", order=5, supports=Supports(latent=True, samples=True),
          description="VERA: the classifier's logits as an energy model trained against a generator with an "
                      "entropy regulariser instead of SGLD (no MCMC in training); generates cells from the "
                      "generator refined by SGLD.",
          hparams={**_MLP,
                   **_COMMON,
                   "px_weight": HParam(0.01, "weight of the generative loss against the cross-entropy (VERA's JEM "
                                       "runs weight the classifier 100 to 1; bench, seed 0: 1.0 gave kang_sce acc_in "
                                       "0.667, 0.01 gave 0.842)", low=0.0, high=100.0),
                   "pg_control": HParam(0.1, "gradient penalty on the data's energy (VERA: 0.1)", low=0.0, high=10.0,
                                        advanced=True),
                   "ent_weight": HParam(1e-4, "weight of the generator's entropy (VERA's JEM runs: 1e-4)",
                                        low=0.0, high=10.0),
                   "noise_dim": HParam(32, "generator noise dimensions", low=1, high=1024, advanced=True),
                   "gen_hidden": HParam("200,600", "generator hidden widths (noise -> ... -> genes)", advanced=True),
                   "glr": HParam(1e-3, "generator learning rate (VERA's code default)", low=1e-6, high=1.0,
                                 advanced=True),
                   "post_lr": HParam(0.02, "learning rate of the posterior spread (VERA's code default)",
                                     low=1e-6, high=1.0, advanced=True),
                   "max_sigma": HParam(0.3, "largest generator noise sigma (VERA: 0.3)", low=1e-3, high=10.0,
                                       advanced=True),
                   "min_sigma": HParam(0.01, "smallest generator noise sigma (VERA: 0.01)", low=1e-4, high=1.0,
                                       advanced=True),
                   "sgld_lr": _SGLD["sgld_lr"], "sgld_std": _SGLD["sgld_std"], "sample_steps": _SGLD["sample_steps"],
                   })
class Vera(EnergyClassifier):
    generative = False  # no SGLD replay buffer: the generator replaces it
    recover = False

    def build_net(self) -> nn.Module:
        net = super().build_net()
        net.gen = VeraGenerator(self.n_features, int(self.hparams["noise_dim"]),
                                _ints(self.hparams["gen_hidden"], "gen_hidden"), act=self.hparams["activation"])
        return net

    def param_groups(self) -> dict[str, Any]:
        gen = self.net.gen
        own = {id(p) for p in gen.parameters()}
        return {"energy": [p for p in self.net.parameters() if id(p) not in own],
                "generator": {"params": [*gen.g.parameters(), gen.logsigma], "lr": float(self.hparams["glr"])},
                "posterior": {"params": [gen.post_logsigma], "lr": float(self.hparams["post_lr"])}}

    def training_step(self, xb: torch.Tensor, yb: torch.Tensor, step: int) -> tuple[Any, dict[str, float]]:
        import math

        h, net, gen = self.hparams, self.net, self.net.gen
        with torch.no_grad():
            gen.logsigma.clamp_(math.log(h["min_sigma"]), math.log(h["max_sigma"]))
        net.train()
        x = self._augment(xb)
        pg = float(h["pg_control"])
        if pg > 0:
            x = x.detach().requires_grad_(True)
        logits = net(x)
        l_ce = F.cross_entropy(logits, yb)
        ld = logits.logsumexp(1)
        xg, _ = gen.sample(xb.shape[0], self._gen())
        lg = net(xg.detach()).logsumexp(1)
        l_px = -(ld.mean() - lg.mean())
        if pg > 0:
            grad = torch.autograd.grad(ld.sum(), x, create_graph=True)[0]
            l_px = l_px + pg * grad.pow(2).sum(1).mean()
        loss_e = l_ce + h["px_weight"] * l_px
        last: dict[str, torch.Tensor] = {}

        def generator_loss() -> torch.Tensor:
            xg2, hg2 = gen.sample(xb.shape[0], self._gen())
            last["x"], last["h"] = xg2.detach(), hg2.detach()
            ent = gen.entropy_surrogate(xg2, hg2, gen=self._gen())
            return -(net(xg2).logsumexp(1).mean() + h["ent_weight"] * ent)

        def posterior_loss() -> torch.Tensor:
            return gen.posterior_loss(last["x"], last["h"], self._gen())

        logs = {"loss_ce": float(l_ce.detach()), "loss_px": float(l_px.detach()),
                "energy_gap": float((ld.mean() - lg.mean()).detach()), "sigma": float(gen.logsigma.detach().exp()),
                "loss": float(loss_e.detach())}
        return {"energy": loss_e, "generator": generator_loss, "posterior": posterior_loss}, logs

    def _initial_chains(self, n: int) -> torch.Tensor:
        with torch.no_grad():
            return self.net.gen.sample(n, self.generator)[0].cpu()
