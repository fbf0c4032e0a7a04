"""cellannot core: single-cell label transfer with calibrated confidence and novelty detection.

``import cellannot_core as ca``, then ``ca.annotate(...)``, ``ca.train(...)`` (an
:class:`Annotator`) and ``ca.models()`` (the registry as a table); see :mod:`cellannot_core.api`.
Never imports streamlit. Heavy libraries (torch, scanpy, umap) are imported by the modules that
need them.
"""
import os as _os
import sys as _sys
from importlib.metadata import PackageNotFoundError, version as _version

# numba (scanpy's highly variable genes, umap) runs its parallel code on an OpenMP runtime by
# default; once that runtime has run, torch's own OpenMP threads train at half speed (the default
# model on kang_ctrl: 17.8 s for 4 epochs against 9.5 s; bench/label_transfer.py). numba's own
# thread pool ("workqueue") avoids the clash. A user's explicit choice is kept.
_os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
if "numba" in _sys.modules:  # imported before us: its layer is chosen at its first parallel run
    _cfg = _sys.modules["numba"].config
    if getattr(_cfg, "THREADING_LAYER", "default") == "default":
        _cfg.THREADING_LAYER = "workqueue"

try:
    __version__ = _version("cellannot")
except PackageNotFoundError:  # a source checkout that was not installed
    __version__ = "0+unknown"

from .api import Annotator, annotate, train  # noqa: E402

__all__ = ["Annotator", "annotate", "models", "train", "__version__"]


def __getattr__(name: str):
    if name == "models":  # the models subpackage, callable: ca.models() lists the registry
        import importlib

        return importlib.import_module(".models", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
