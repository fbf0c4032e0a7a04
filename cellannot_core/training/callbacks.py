"""Training callbacks: how long work reports progress and is cancelled (no UI code here)."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Protocol, Sequence


class Callback(Protocol):
    """Every hook is optional; the loop calls those present."""

    def on_train_begin(self, info: dict[str, Any]) -> None: ...
    def on_step(self, step: int, total_steps: int, logs: dict[str, float]) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...
    def on_train_end(self, logs: dict[str, Any]) -> None: ...
    # a step of the model's training outside the loop that takes a while (scanvi_svm's labeller)
    def on_phase(self, message: str) -> None: ...
    def should_stop(self) -> bool: ...
    def should_finish(self) -> bool: ...


def call(callbacks: Sequence[Any], hook: str, *args: Any) -> None:
    """Call ``hook`` on every callback that defines it."""
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)


def any_stop(callbacks: Sequence[Any]) -> bool:
    return any(bool(getattr(cb, "should_stop", lambda: False)()) for cb in callbacks)


def any_finish(callbacks: Sequence[Any]) -> bool:
    """Whether a callback asks training to end now, keeping what it learned (unlike a cancel)."""
    return any(bool(getattr(cb, "should_finish", lambda: False)()) for cb in callbacks)


class TimeBudget:
    """Ends training (gracefully: the best state so far is kept, as with early stopping) once
    ``seconds`` have passed since it began, at the end of the epoch under way. The app's *quick
    run* is a time budget, not a cut in epochs: a model that trains fully within the budget
    gives its full result, and a large dataset still comes back in bounded time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.t0: float | None = None

    def on_train_begin(self, info: dict[str, Any]) -> None:
        self.t0 = time.time()

    def should_finish(self) -> bool:
        return self.t0 is not None and time.time() - self.t0 > self.seconds


class CancelToken:
    """Thread-safe cancel flag; pass it as a callback."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def should_stop(self) -> bool:
        return self._event.is_set()


class PrintProgress:
    """Prints one line per epoch (for the CLI)."""

    def __init__(self, printer: Callable[[str], None] = print) -> None:
        self.printer = printer
        self.t0 = time.time()
        self.max_epochs = 0

    def on_train_begin(self, info: dict[str, Any]) -> None:
        self.t0 = time.time()
        self.max_epochs = int(info.get("max_epochs", 0))
        self.printer(
            f"training {info.get('model')} on {info.get('n_train')} cells x {info.get('n_genes')} genes, "
            f"{info.get('n_classes')} classes, device {info.get('device')}"
        )

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        parts = [f"{k} {v:.4g}" for k, v in logs.items() if isinstance(v, (int, float))]
        self.printer(f"epoch {epoch + 1}/{self.max_epochs}  " + "  ".join(parts) + f"  ({time.time() - self.t0:.0f}s)")

    def on_phase(self, message: str) -> None:
        self.printer(message)


class ProgressBar:
    """A progress bar over the training's mini-batches (``tqdm.auto``: a widget in a notebook, a
    line on stderr elsewhere), the last epoch's losses beside it: the Python API's default, as
    scvi-tools shows one. A model trained in one go (the classical baselines) shows one step."""

    def __init__(self, **tqdm_kwargs: Any) -> None:
        self.kwargs = tqdm_kwargs
        self.bar: Any = None
        self.max_epochs = 0

    def on_train_begin(self, info: dict[str, Any]) -> None:
        from tqdm.auto import tqdm

        self.close()
        self.max_epochs = int(info.get("max_epochs", 0))
        total = max(1, int(info.get("steps_per_epoch", 1)) * max(1, self.max_epochs))
        self.bar = tqdm(total=total, desc=f"training {info.get('model') or 'model'}", unit="step",
                        **{"leave": True, "dynamic_ncols": True, **self.kwargs})

    def on_step(self, step: int, total_steps: int, logs: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(max(0, min(step, self.bar.total) - self.bar.n))

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.bar is None or "recovered_from_divergence" in logs:
            return
        shown = {k: v for k, v in logs.items() if k.endswith(("loss", "acc")) and isinstance(v, (int, float))}
        self.bar.set_postfix_str(f"epoch {epoch + 1}/{self.max_epochs} "
                                 + " ".join(f"{k} {v:.4g}" for k, v in list(shown.items())[:3]), refresh=False)

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.bar is not None and self.max_epochs <= 1:
            self.bar.update(self.bar.total - self.bar.n)  # trained in one go
        self.close()

    def on_phase(self, message: str) -> None:
        import sys

        from tqdm.auto import tqdm

        # beside the bar (stderr unless given another file), not into the script's own output
        tqdm.write(message, file=self.kwargs.get("file") or sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
