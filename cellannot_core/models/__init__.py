"""Models: one file per method, each registered in MODELS (see registry.py)."""
from . import energy  # noqa: F401  (registers clams, jem, resnet)
from . import gmvae, m2flow, scanvi, vae  # noqa: F401  (registers the generative count models)
from . import baselines, tabnet  # noqa: F401  (registers tabnet (SIMS) and the classical baselines)
from . import hybrid  # noqa: F401  (registers scanvi_svm, the recommended default)
from ._base import Model, load_model
from .registry import MODELS, HParam, ModelSpec, Supports, create_model, get_spec, model_names, resolve_hparams

__all__ = ["MODELS", "HParam", "Model", "ModelSpec", "Supports", "create_model", "get_spec", "load_model",
           "model_names", "resolve_hparams"]


class _CallableRegistry(__import__("types").ModuleType):
    """This package is also ``ca.models``: calling it, ``ca.models()``, lists the registry as a
    table (:func:`cellannot_core.api.models`), while ``ca.models.MODELS`` etc. stay as they are.
    (An attribute of a package is replaced by its subpackage of the same name once that is
    imported, so the API function and this package could not both be ``ca.models``.)"""

    def __call__(self):
        from ..api import models as table

        return table()


__import__("sys").modules[__name__].__class__ = _CallableRegistry
