"""One training loop with callbacks (progress, early stopping, divergence guard, cancel)."""
from .callbacks import Callback, CancelToken, PrintProgress, ProgressBar, TimeBudget
from .device import available_devices, resolve_device, seed_everything
from .loop import DIVERGENCE_BOUND, History, TrainConfig, fit

__all__ = ["Callback", "CancelToken", "PrintProgress", "ProgressBar", "TimeBudget", "available_devices", "resolve_device",
           "seed_everything", "DIVERGENCE_BOUND", "History", "TrainConfig", "fit"]
