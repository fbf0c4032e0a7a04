"""``seurat``: Seurat v4 label transfer (FindTransferAnchors + TransferData) through
``Rscript`` running :file:`seurat_transfer.R` (shipped beside this module)."""
from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ...data._types import Split
from ...errors import ConfigError, DataError
from ..registry import HParam, Supports, register
from ._common import _KNN_K, _N_PCS, _OOD, SklearnModel, _dense

R_SCRIPT = Path(__file__).with_name("seurat_transfer.R")


def r_error(stderr: str) -> str:
    """The R error in ``stderr`` on one line (from the first "Error" line; R's last line is only
    "Execution halted")."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.startswith("Error")), None)
    picked = lines[start:start + 3] if start is not None else lines[-1:]
    return " ".join(ln for ln in picked if ln != "Execution halted") or "no message"


@functools.lru_cache(maxsize=1)
def seurat_unavailable() -> str | None:
    """``None`` when ``Rscript`` and the Seurat package work, else the reason (checked once)."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        return "R is not installed (no Rscript on PATH); install R and the Seurat package to use it"
    try:
        proc = subprocess.run([rscript, "-e", "suppressPackageStartupMessages(library(Seurat))"],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"Rscript could not be run ({type(err).__name__})"
    if proc.returncode != 0:
        return "the R package Seurat is not installed (install.packages('Seurat') in R)"
    return None


@register("seurat", order=35, supports=Supports(latent=True, per_cell=False), available=seurat_unavailable,
          description="Seurat v4 anchors (FindTransferAnchors + TransferData) via Rscript; needs R with Seurat.",
          hparams={
              "dims": HParam(30, "PCA dimensions used for anchors", low=2, high=100),
              "k_anchor": HParam(5, "neighbours when picking anchors", low=1, high=100, advanced=True),
              "k_weight": HParam(50, "neighbours when weighting anchors", low=2, high=500, advanced=True),
              "timeout": HParam(3600, "seconds allowed for one Rscript call", low=10, high=86400, advanced=True),
              "n_pcs": _N_PCS, "ood_score": _OOD, "knn_k": _KNN_K,
          })
class Seurat(SklearnModel):
    """Transductive: "fitting" keeps the reference (log-normalised, as CSR arrays); every
    ``logits`` call runs the R script on the reference and the given cells (cached per input).
    The latent is a PCA of the reference computed in Python."""

    def _fit(self, train: Split, val: Split) -> None:
        import scipy.sparse as sp

        self.ref = sp.csr_matrix(_dense(train.X))
        self.ref_y = np.asarray(train.y, dtype=np.int64)
        self._cache: dict[str, np.ndarray] = {}

    def _proba(self, X: np.ndarray) -> np.ndarray:
        import hashlib

        if len(X) == 0:
            return np.zeros((0, self.n_classes))
        key = hashlib.sha1(np.ascontiguousarray(X).tobytes()).hexdigest()
        cache = getattr(self, "_cache", {})
        if key not in cache:
            cache[key] = self._run_r(X)
            self._cache = cache
        return cache[key]

    def _run_r(self, X: np.ndarray) -> np.ndarray:
        import pandas as pd
        import scipy.io
        import scipy.sparse as sp

        reason = seurat_unavailable()
        if reason:
            raise ConfigError(f"model seurat is unavailable: {reason}")
        with tempfile.TemporaryDirectory(prefix="cellannot-seurat-") as tmp:
            d = Path(tmp)
            shutil.copy(R_SCRIPT, d / "seurat_transfer.R")
            scipy.io.mmwrite(str(d / "ref.mtx"), self.ref.T.tocoo())
            scipy.io.mmwrite(str(d / "query.mtx"), sp.csr_matrix(X).T.tocoo())
            (d / "genes.txt").write_text("\n".join(f"g{j}" for j in range(self.n_features)) + "\n")
            (d / "ref_labels.txt").write_text("\n".join(f"c{int(c)}" for c in self.ref_y) + "\n")
            h = self.hparams
            (d / "params.txt").write_text(f"dims {h['dims']}\nk_anchor {h['k_anchor']}\nk_weight {h['k_weight']}\n")
            proc = subprocess.run([shutil.which("Rscript") or "Rscript", str(d / "seurat_transfer.R"), str(d)],
                                  capture_output=True, text=True, timeout=h["timeout"])
            if proc.returncode != 0:
                raise DataError(f"Seurat label transfer failed in R: {r_error(proc.stderr)}")
            pred = pd.read_csv(d / "predictions.csv", index_col=0)
        p = np.zeros((len(X), self.n_classes))
        for c in range(self.n_classes):
            col = f"prediction.score.c{c}"
            if col in pred.columns:
                p[:, c] = pred[col].to_numpy(dtype=np.float64)
        s = p.sum(1, keepdims=True)
        return np.divide(p, s, out=np.full_like(p, 1.0 / self.n_classes), where=s > 0)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        r = self.ref
        return {**super()._state_arrays(), "ref_data": r.data.astype(np.float32), "ref_indices": r.indices,
                "ref_indptr": r.indptr, "ref_shape": np.asarray(r.shape, dtype=np.int64), "ref_y": self.ref_y}

    def _load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        import scipy.sparse as sp

        super()._load_state_arrays(arrays)
        self.ref = sp.csr_matrix((arrays["ref_data"], arrays["ref_indices"], arrays["ref_indptr"]),
                                 shape=tuple(int(v) for v in arrays["ref_shape"]))
        self.ref_y = arrays["ref_y"].astype(np.int64)
        self._cache = {}
