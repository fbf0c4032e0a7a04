"""cellannot core: single-cell label transfer with calibrated confidence and novelty detection.

``import cellannot_core as ca``, then ``ca.annotate(...)``, ``ca.train(...)`` (an
:class:`Annotator`) and ``ca.models()`` (the registry as a table); see :mod:`cellannot_core.api`.
Never imports streamlit. Heavy libraries (torch, scanpy, umap) are imported by the modules that
need them.
"""
import os as _os
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError, version as _version

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


def _foreign_openmp() -> str | None:
    """The system's ``libgomp.so.1`` when torch is bound to it instead of its own bundled runtime
    (another library, numba through scanpy's functions, loaded it before torch was imported: the
    loader then reuses it for torch). None when torch has its own, bundles none, or on a system
    without /proc."""
    import glob

    lib = _os.path.join(_os.path.dirname(_torch.__file__), "lib")
    if not glob.glob(_os.path.join(lib, "libgomp*")):
        return None
    try:
        with open("/proc/self/maps") as fh:
            mapped = {line.split()[-1] for line in fh if "libgomp" in line and "/" in line}
    except OSError:
        return None
    if any(p.startswith(lib + _os.sep) for p in mapped):
        return None
    return next((p for p in sorted(mapped) if _os.path.basename(p).startswith("libgomp.so.1")), None)


if _foreign_openmp():
    import warnings as _warnings

    # measured on the demo pair, annotate with the default model (2026-12-05): 69-72 s against 29-33 s
    _warnings.warn("torch shares an OpenMP runtime another library loaded before it (numba's, e.g. through "
                   "scanpy's highly_variable_genes) and trains about half as fast: import cellannot_core (or "
                   "torch) before calling scanpy's functions, e.g. at the top of the notebook, and restart it",
                   RuntimeWarning, stacklevel=2)

try:
    __version__ = _version("cellannot")
except _PackageNotFoundError:  # a source checkout that was not installed
    __version__ = "0+unknown"

from .api import Annotator, accept_groups, annotate, train  # noqa: E402

__all__ = ["Annotator", "accept_groups", "annotate", "models", "pl", "train", "__version__"]


def __dir__() -> list[str]:  # tab completion lists the API, not the subpackages it is built from
    return sorted(__all__)


def __getattr__(name: str):
    if name in ("models", "pl"):  # models: the subpackage, callable (ca.models() lists the registry);
        import importlib  # pl: plots of an annotated AnnData (plotly imported on first use)

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
