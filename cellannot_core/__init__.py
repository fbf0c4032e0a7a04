"""cellannot core: single-cell label transfer with calibrated confidence and novelty detection.

``import cellannot_core as ca``, then ``ca.annotate(...)``, ``ca.train(...)`` (an
:class:`Annotator`) and ``ca.models()`` (the registry as a table); see :mod:`cellannot_core.api`.
Never imports streamlit. Heavy libraries (torch, scanpy, umap) are imported by the modules that
need them.
"""
from importlib.metadata import PackageNotFoundError, version as _version

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
