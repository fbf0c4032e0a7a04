"""User-facing errors: one clear line saying what is wrong and what to do."""
from __future__ import annotations

from typing import Iterable


class CellannotError(Exception):
    """Base class for errors shown to the user as one line (no traceback)."""


class DataError(CellannotError):
    """The input data cannot be used as given."""


class ConfigError(CellannotError):
    """An option or hyper-parameter is invalid."""


class TrainingDiverged(CellannotError, FloatingPointError):
    """The training loss became non-finite or exceeded the divergence bound."""

    def __init__(self, message: str, *, epoch: int = -1, step: int = -1):
        super().__init__(message)
        self.epoch = epoch
        self.step = step


class Cancelled(CellannotError):
    """Training was cancelled by the user."""


def did_you_mean(name: object, choices: "Iterable[object]") -> str:
    """`` Did you mean 'x'?`` for the choice closest to a mistyped ``name`` (case, ``-`` for ``_``
    and small typos forgiven), or ``""`` when none is close; appended to "unknown ..." errors."""
    import difflib

    options = [str(c) for c in choices]
    norm = {o.lower().replace("-", "_").replace(" ", "_"): o for o in options}
    key = str(name).lower().replace("-", "_").replace(" ", "_")
    hit = norm.get(key) or next(iter(difflib.get_close_matches(key, list(norm), n=1, cutoff=0.75)), None)
    return f" Did you mean '{norm.get(hit, hit)}'?" if hit else ""
