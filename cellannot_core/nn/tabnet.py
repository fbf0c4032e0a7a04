"""TabNet (Arik & Pfister 2021) as used by SIMS: sparsemax attentive masks, GLU feature
transformers shared across decision steps, ghost batch normalisation.

Written after pytorch-tabnet's ``tab_network.py`` (dreamquark-ai/tabnet 2c0c4eb, the network
SIMS wraps); see METHODS.md section 4.2. No categorical embeddings (every input is a gene).

Forward pass::

    x   <- BatchNorm(x)                                   (initial BN)
    att <- FeatTransformer_0(x)[:, n_d:]                  (initial splitter)
    P_0 =  1
    for step i = 1..n_steps:
        M_i  = sparsemax( GBN(FC(att)) * P_{i-1} )        (attentive transformer)
        P_i  = (gamma - M_i) * P_{i-1}                    (prior scaling, gamma relaxation)
        out  = FeatTransformer_i(M_i * x)
        d_i  = ReLU(out[:, :n_d]);  att = out[:, n_d:]
    logits = Linear(sum_i d_i)
    M_loss = mean over steps of mean_b sum_j M_ij log(M_ij + eps)   (negative entropy)

Explain matrix: ``eta_i = sum_c d_i[:, c]``; ``M_explain = sum_i eta_i * M_i`` (cells x genes).
"""
from __future__ import annotations

import math

import torch
from torch import nn

EPSILON = 1e-15


def _threshold(zs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tau, support size)`` from the largest entries ``zs`` sorted descending (last dim)."""
    k = torch.arange(1, zs.shape[-1] + 1, device=zs.device, dtype=zs.dtype)
    cssv = zs.cumsum(-1) - 1.0
    k_z = ((k * zs) > cssv).sum(dim=-1, keepdim=True)  # support = a prefix of the sorted entries
    return cssv.gather(-1, k_z - 1) / k_z.to(zs.dtype), k_z


def sparsemax(z: torch.Tensor, dim: int = -1, *, k: int = 256) -> torch.Tensor:
    """Sparsemax (Martins & Astudillo 2016): Euclidean projection of ``z`` onto the simplex.

    ``sparsemax(z) = max(z - tau(z), 0)`` with ``tau`` chosen so each row sums to 1; most
    entries are exactly 0. Differentiable almost everywhere through autograd.

    Only the ``k`` largest entries are sorted (``topk``; a full sort of thousands of genes per
    cell dominated TabNet's run time), then ``4k``; when a row's support could still be larger
    the exact full sort is used (as entmax's ``k`` option). The result is exact either way.
    """
    if dim not in (-1, z.dim() - 1):
        return sparsemax(z.transpose(dim, -1), -1, k=k).transpose(dim, -1)
    z = z - z.max(dim=-1, keepdim=True).values  # stability; sparsemax is shift invariant
    n = z.shape[-1]
    while k < n:
        zs = torch.topk(z, k, dim=-1).values
        tau, k_z = _threshold(zs)
        if bool((k_z < k).all()):  # every support ended inside the top k: tau is exact
            return torch.clamp(z - tau, min=0.0)
        k *= 4
    zs, _ = torch.sort(z, dim=-1, descending=True)
    tau, _ = _threshold(zs)
    return torch.clamp(z - tau, min=0.0)


class GhostBatchNorm(nn.Module):
    """Batch norm over "virtual" batches of ``virtual_batch_size`` rows (training only)."""

    def __init__(self, dim: int, virtual_batch_size: int = 128, momentum: float = 0.02) -> None:
        super().__init__()
        self.virtual_batch_size = int(virtual_batch_size)
        self.bn = nn.BatchNorm1d(dim, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if not self.training or n <= self.virtual_batch_size:
            return self.bn(x)
        chunks = x.chunk(math.ceil(n / self.virtual_batch_size), 0)
        if min(c.shape[0] for c in chunks) < 2:  # a 1-row chunk has no batch statistics
            return self.bn(x)
        return torch.cat([self.bn(c) for c in chunks], dim=0)


def _init_glu(fc: nn.Linear, in_dim: int, out_dim: int) -> None:
    nn.init.xavier_normal_(fc.weight, gain=math.sqrt((in_dim + out_dim) / math.sqrt(in_dim)))


def _init_non_glu(fc: nn.Linear, in_dim: int, out_dim: int) -> None:
    nn.init.xavier_normal_(fc.weight, gain=math.sqrt((in_dim + out_dim) / math.sqrt(4 * in_dim)))


class GLULayer(nn.Module):
    """``FC(in -> 2 out, no bias) -> GBN -> h[:, :out] * sigmoid(h[:, out:])``."""

    def __init__(self, in_dim: int, out_dim: int, *, fc: nn.Linear | None, vbs: int, momentum: float) -> None:
        super().__init__()
        self.out_dim = out_dim
        if fc is None:
            fc = nn.Linear(in_dim, 2 * out_dim, bias=False)
            _init_glu(fc, in_dim, 2 * out_dim)
        self.fc = fc
        self.bn = GhostBatchNorm(2 * out_dim, vbs, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.fc(x))
        return h[:, : self.out_dim] * torch.sigmoid(h[:, self.out_dim:])


class GLUBlock(nn.Module):
    """``n_glu`` GLU layers with residual sums scaled by sqrt(0.5) (the first one is not
    residual when ``first``); FC layers come from ``shared`` when given."""

    def __init__(self, in_dim: int, out_dim: int, n_glu: int, *, first: bool, shared: nn.ModuleList | None,
                 vbs: int, momentum: float) -> None:
        super().__init__()
        self.first = first
        self.layers = nn.ModuleList(
            GLULayer(in_dim if i == 0 else out_dim, out_dim, fc=shared[i] if shared is not None else None,
                     vbs=vbs, momentum=momentum) for i in range(n_glu))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = math.sqrt(0.5)
        start = 0
        if self.first:
            x = self.layers[0](x)
            start = 1
        for layer in self.layers[start:]:
            x = (x + layer(x)) * scale
        return x


class FeatTransformer(nn.Module):
    """Shared GLU block (FC weights shared across steps) then a step-specific GLU block."""

    def __init__(self, in_dim: int, out_dim: int, shared: nn.ModuleList | None, n_independent: int, *,
                 vbs: int, momentum: float) -> None:
        super().__init__()
        self.shared = None
        if shared is not None and len(shared):
            self.shared = GLUBlock(in_dim, out_dim, len(shared), first=True, shared=shared, vbs=vbs,
                                   momentum=momentum)
        self.specific = None
        if n_independent > 0:
            self.specific = GLUBlock(out_dim if self.shared is not None else in_dim, out_dim, n_independent,
                                     first=self.shared is None, shared=None, vbs=vbs, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared is not None:
            x = self.shared(x)
        if self.specific is not None:
            x = self.specific(x)
        return x


class AttentiveTransformer(nn.Module):
    """``M = sparsemax(GBN(FC(att)) * prior / temperature)`` (temperature 1 = TabNet)."""

    def __init__(self, n_a: int, n_features: int, *, vbs: int, momentum: float, temperature: float = 1.0) -> None:
        super().__init__()
        self.fc = nn.Linear(n_a, n_features, bias=False)
        _init_non_glu(self.fc, n_a, n_features)
        self.bn = GhostBatchNorm(n_features, vbs, momentum)
        self.temperature = float(temperature)

    def forward(self, prior: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        z = self.bn(self.fc(att)) * prior
        return sparsemax(z / self.temperature if self.temperature != 1.0 else z, dim=-1)


class TabNet(nn.Module):
    """TabNet encoder + linear classification head.

    Parameters
    ----------
    n_features, n_classes
        Input genes and output classes.
    n_d, n_a
        Width of the decision output and of the attention input per step.
    n_steps
        Decision steps (masks).
    gamma
        Prior relaxation: 1 forces each gene to be used at most once across steps; larger
        values let steps reuse genes.
    n_independent, n_shared
        Step-specific and shared GLU layers per feature transformer.
    virtual_batch_size, momentum
        Ghost batch norm settings.
    mask_temperature
        Attention logits are divided by it before sparsemax (1 = TabNet). With thousands of
        genes, batch-normalised logits make sparsemax keep only a handful of genes per cell;
        a higher temperature keeps more (denser, smoother masks).
    """

    def __init__(self, n_features: int, n_classes: int, *, n_d: int = 8, n_a: int = 8, n_steps: int = 3,
                 gamma: float = 1.3, n_independent: int = 2, n_shared: int = 2, virtual_batch_size: int = 128,
                 momentum: float = 0.02, mask_temperature: float = 1.0, epsilon: float = EPSILON) -> None:
        super().__init__()
        if n_independent == 0 and n_shared == 0:
            raise ValueError("n_shared and n_independent cannot both be 0")
        self.n_features, self.n_d, self.n_a, self.n_steps = n_features, n_d, n_a, n_steps
        self.gamma, self.epsilon = float(gamma), float(epsilon)
        kw = {"vbs": virtual_batch_size, "momentum": momentum}
        self.initial_bn = nn.BatchNorm1d(n_features, momentum=0.01)
        width = n_d + n_a
        shared = None
        if n_shared > 0:
            shared = nn.ModuleList()
            for i in range(n_shared):
                fc = nn.Linear(n_features if i == 0 else width, 2 * width, bias=False)
                _init_glu(fc, n_features if i == 0 else width, 2 * width)
                shared.append(fc)
        self.shared_fcs = shared
        self.initial_splitter = FeatTransformer(n_features, width, shared, n_independent, **kw)
        self.feat_transformers = nn.ModuleList(
            FeatTransformer(n_features, width, shared, n_independent, **kw) for _ in range(n_steps))
        self.att_transformers = nn.ModuleList(
            AttentiveTransformer(n_a, n_features, temperature=mask_temperature, **kw) for _ in range(n_steps))
        self.head = nn.Linear(n_d, n_classes, bias=False)
        _init_non_glu(self.head, n_d, n_classes)

    def _steps(self, x: torch.Tensor):
        """Yield ``(M_i, d_i)`` per decision step (x already through the initial BN)."""
        prior = torch.ones_like(x)
        att = self.initial_splitter(x)[:, self.n_d:]
        for step in range(self.n_steps):
            m = self.att_transformers[step](prior, att)
            prior = (self.gamma - m) * prior
            out = self.feat_transformers[step](m * x)
            yield m, torch.relu(out[:, : self.n_d])
            att = out[:, self.n_d:]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum_i d_i, M_loss)``: the aggregated decision output (the latent) and the mean
        negative mask entropy (``sum_j M log(M + eps)`` averaged over cells and steps)."""
        x = self.initial_bn(x)
        agg = torch.zeros(x.shape[0], self.n_d, device=x.device, dtype=x.dtype)
        m_loss = torch.zeros((), device=x.device, dtype=x.dtype)
        for m, d in self._steps(x):
            agg = agg + d
            m_loss = m_loss + (m * torch.log(m + self.epsilon)).sum(dim=1).mean()
        return agg, m_loss / self.n_steps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, M_loss)``."""
        agg, m_loss = self.encode(x)
        return self.head(agg), m_loss

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)[0]

    def forward_masks(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(M_explain, [M_1, ..., M_n_steps])``: ``M_explain = sum_i eta_i M_i`` with
        ``eta_i = sum_c d_i[:, c]`` (each step's masks weighted by its contribution)."""
        x = self.initial_bn(x)
        explain = torch.zeros_like(x)
        masks = []
        for m, d in self._steps(x):
            explain = explain + m * d.sum(dim=1, keepdim=True)
            masks.append(m)
        return explain, masks
