"""cellannot core: single-cell label transfer with calibrated confidence and novelty detection.

``import cellannot_core as ca``, then ``ca.annotate(...)``, ``ca.train(...)`` (an
:class:`Annotator`) and ``ca.models()`` (the registry as a table); see :mod:`cellannot_core.api`.
Never imports streamlit. Heavy libraries (torch, scanpy, umap) are imported by the modules that
need them.
"""
import os as _os
from importlib.metadata import PackageNotFoundError, version as _version

# Two OpenMP runtimes share the process: torch's own (torch/lib/libgomp.so.1) and the system's
# libgomp.so.1, which numba loads for its parallel code (scanpy's highly variable genes, umap). Each
# reads OMP_WAIT_POLICY when it loads. numba's idle threads must sleep: spinning, they took the
# cores from torch, which then trained at half speed (the default model on kang_ctrl, 4 epochs:
# 17.4 s, 10.7 s with idle threads asleep; 2026-12-03). torch's own threads must not: woken for each
# of a training step's many small parallel regions, they train slower. And torch must load its
# runtime first: imported after the system's libgomp.so.1 is loaded, it binds to that one. So torch
# is imported here, before anything can load the other runtime, and only then is the policy set for
# the runtimes that load later (unless the user chose one). The same 4 epochs after the data
# preparation (CELLANNOT_NUM_THREADS=2, a script outside the repository, 2026-12-05, a noisy
# machine): 12.7-17.1 s in 6 runs, against 17.2-24.0 s in 6 runs with torch imported later (bound to
# the system's runtime) and 19.1-20.8 s in 2 runs with torch's own threads asleep too. (numba's own
# "workqueue" pool was tried on 2026-12-03 and aborts when two threads run numba code at once, as
# the app's concurrent jobs do.)
import torch as _torch  # noqa: E402,F401

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
