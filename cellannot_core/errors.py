"""User-facing errors: one clear line saying what is wrong and what to do."""
from __future__ import annotations


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
