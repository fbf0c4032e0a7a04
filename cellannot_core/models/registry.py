"""The one model registry: name -> class, description, capabilities, hyper-parameters.

The CLI, the app's forms and the benchmarks read everything from here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError, did_you_mean, shown_name


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter: default, help text and optional bounds / choices."""

    default: Any
    help: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    advanced: bool = False
    internal: bool = False  # set by the pipeline from the data (e.g. n_batches): never a widget, never swept

    @property
    def type(self) -> type:
        return type(self.default)

    def validate(self, name: str, value: Any) -> Any:
        t = self.type
        try:
            if t is bool:
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    value = value.lower() in ("true", "1", "yes")
                else:
                    value = bool(value)
            elif t is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                value = int(value)
            elif t is float:
                value = float(value)
                if math.isnan(value) or (math.isinf(value) and self.low is None and self.high is None):
                    raise ValueError
            else:
                value = str(value)
        except (TypeError, ValueError):
            kind = {bool: "true or false", int: "a whole number", float: "a number"}.get(t, "text")
            raise ConfigError(f"hyper-parameter {name} must be {kind}, got {shown_name(repr(value))}") from None
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"hyper-parameter {name} must be one of {', '.join(map(str, self.choices))}, "
                              f"got {shown_name(repr(value))}")
        if self.low is not None and value < self.low:
            raise ConfigError(f"hyper-parameter {name} must be >= {self.low}, got {shown_name(value)}")
        if self.high is not None and value > self.high:
            raise ConfigError(f"hyper-parameter {name} must be <= {self.high}, got {shown_name(value)}")
        return value


@dataclass(frozen=True)
class Supports:
    latent: bool = True
    samples: bool = False
    explain: bool = False
    needs_counts: bool = False
    semi_supervised: bool = False  # fit() takes unlabelled=<query Split> (pipeline.train_model passes it)
    # a cell's cell_logits and latent do not depend on the other cells given, so a query can be
    # labelled in chunks (streaming.predict_file); False: the model needs the whole query in memory
    per_cell: bool = True
    # fit/logits/latent take a CSR Split.X (a large reference stays sparse, densified a mini-batch at
    # a time); False: pipeline.train_model gives the model dense splits, within the memory limit
    sparse: bool = False


@dataclass
class ModelSpec:
    name: str
    cls: type
    description: str
    supports: Supports
    hparams: dict[str, HParam] = field(default_factory=dict)
    order: int = 100
    available: Callable[[], str | None] | None = None  # returns why the model cannot run here, or None

    @property
    def defaults(self) -> dict[str, Any]:
        return {k: h.default for k, h in self.hparams.items()}

    def unavailable_reason(self) -> str | None:
        """``None`` when the model can run on this machine, else a one-line reason."""
        return None if self.available is None else self.available()


MODELS: dict[str, ModelSpec] = {}


def register(name: str, *, description: str, supports: Supports, hparams: dict[str, HParam],
             order: int = 100, available: Callable[[], str | None] | None = None) -> Callable[[type], type]:
    """Class decorator adding a model to :data:`MODELS`.

    ``available`` (optional) is called to check the model can run here (e.g. an external R
    installation); it returns ``None`` or the reason it cannot.
    """

    def deco(cls: type) -> type:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        cls.name = name
        MODELS[name] = ModelSpec(name, cls, description, supports, dict(hparams), order, available)
        return cls

    return deco


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model '{shown_name(name)}'; choose one of {', '.join(model_names())}."
                          + did_you_mean(name, model_names())) from None


def model_names() -> list[str]:
    return [s.name for s in sorted(MODELS.values(), key=lambda s: (s.order, s.name))]


def resolve_hparams(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults of ``name`` updated with validated ``overrides``; unknown keys are an error."""
    spec = get_spec(name)
    out = spec.defaults
    for k, v in (overrides or {}).items():
        if k not in spec.hparams:
            raise ConfigError(f"model {name} has no hyper-parameter '{shown_name(k)}'; "
                              f"valid: {', '.join(spec.hparams)}")
        out[k] = spec.hparams[k].validate(k, v)
    return out


def create_model(name: str, n_features: int, classes: list[str], *, seed: int = 0,
                 device: str = "auto", hparams: dict[str, Any] | None = None):
    spec = get_spec(name)
    reason = spec.unavailable_reason()
    if reason:
        raise ConfigError(f"model {name} is unavailable here: {reason}")
    return spec.cls(n_features, list(classes), seed=seed, device=device, hparams=hparams)
