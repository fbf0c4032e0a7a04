"""cellannot core: single-cell label transfer with calibrated confidence and novelty detection.

``import cellannot_core as ca``, then ``ca.annotate(...)``, ``ca.train(...)`` (an
:class:`Annotator`) and ``ca.models()`` (the registry as a table); see :mod:`cellannot_core.api`.
Never imports streamlit. Heavy libraries (torch, scanpy, umap) are imported by the modules that
need them.
"""
import os as _os
from importlib.metadata import PackageNotFoundError, version as _version

# numba (scanpy's highly variable genes, umap) runs its parallel code on an OpenMP runtime whose
# idle threads keep spinning; after that step torch's own OpenMP threads trained at half speed
# (the default model on kang_ctrl: 17.4 s for 4 epochs, 10.7 s with idle threads asleep;
# bench/label_transfer.py). Idle OpenMP threads sleep unless the user chose otherwise. (numba's
# own "workqueue" pool was as fast but aborts when two threads run numba code at once, as the
# app's concurrent jobs do.) Read by each OpenMP runtime when it loads, so set before them.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
