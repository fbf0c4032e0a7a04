"""LIKELIHOODS: name -> Distribution class, filled by :func:`register_likelihood`.

Each class declares what a decoder must produce for it:

- ``decoder_params``: the constructor arguments the decoder head computes
  (see ``heads.PARAM_HEADS``), e.g. ``("mu", "theta", "zi_logits")`` for ZINB;
- ``domain``: what the likelihood scores: ``"counts"`` (raw counts, mean = library size x
  expression proportions, as scVI) or ``"unit"`` (log-expression scaled to [0, 1] per gene).

Models never branch on the likelihood's name: they ask the class.
"""
from __future__ import annotations

from typing import Callable

from torch.distributions import Distribution

LIKELIHOODS: dict[str, type[Distribution]] = {}
LIKELIHOOD_HELP: dict[str, str] = {}


def register_likelihood(name: str, help: str) -> Callable[[type], type]:  # noqa: A002 - mirrors HParam.help
    def deco(cls: type) -> type:
        if name in LIKELIHOODS:
            raise ValueError(f"likelihood {name!r} is registered twice")
        LIKELIHOODS[name] = cls
        LIKELIHOOD_HELP[name] = help
        cls.likelihood_name = name
        return cls

    return deco


def get_likelihood(name: str) -> type[Distribution]:
    """The class registered as ``name``; an unknown name is a ConfigError listing the valid ones."""
    from ..errors import ConfigError

    try:
        return LIKELIHOODS[name]
    except KeyError:
        raise ConfigError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}") from None


def likelihood_names() -> tuple[str, ...]:
    return tuple(LIKELIHOODS)
