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


def shown_name(text: object, limit: int = 60) -> str:
    """``text`` (a name read from a file: an archive member's, a gene's, a model's) as a message may quote it:
    control and format characters dropped (an escape sequence could rewrite the terminal or the log that
    shows the message, a newline fake a second line, a bidi mark reorder it), runs of spaces made one and at
    most ``limit`` characters kept, the cut marked with "...". Found 2026-12-07: archive member names were
    quoted with their ESC, BEL and newline, and a model config's name a million characters long."""
    import unicodedata

    raw = str(text)
    head = raw[:4 * limit + 16]  # (a long name is not read whole)
    out = []
    for c in head:
        kind = unicodedata.category(c)[0]
        if kind == "C":  # control, format (bidi marks), surrogate, private, unassigned
            out.append(" " if c in "\t\n\r" else "")
        else:
            out.append(" " if kind == "Z" else c)  # (line and paragraph separators too)
    kept = " ".join("".join(out).split())
    if len(kept) > limit or len(raw) > len(head):
        kept = kept[:max(limit - 3, 1)] + "..."
    return kept


def did_you_mean(name: object, choices: "Iterable[object]") -> str:
    """`` Did you mean 'x'?`` for the choice closest to a mistyped ``name`` (case, ``-`` for ``_``
    and small typos forgiven), or ``""`` when none is close; appended to "unknown ..." errors."""
    import difflib

    options = [str(c) for c in choices]
    if len(str(name)) > 100:  # (no choice is so long; difflib takes long on a long name)
        return ""
    norm = {o.lower().replace("-", "_").replace(" ", "_"): o for o in options}
    key = str(name).lower().replace("-", "_").replace(" ", "_")
    hit = norm.get(key) or next(iter(difflib.get_close_matches(key, list(norm), n=1, cutoff=0.75)), None)
    return f" Did you mean '{shown_name(norm.get(hit, hit))}'?" if hit else ""


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says the machine ran out of memory (numpy's ``MemoryError``, PyTorch's CPU
    allocator or a GPU's ``OutOfMemoryError``): a limit of the machine, not a fault of the code."""
    if isinstance(err, MemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("OutOfMemoryError" in type(err).__name__ or "can't allocate memory" in text
                                              or "out of memory" in text.lower())


def write_failure(err: BaseException | None) -> OSError | None:
    """The ``OSError`` of a write the disk or its folder refused (full, over quota, read-only, a file-size
    limit) that ``err`` is or was raised from (its ``__cause__`` / ``__context__`` chain), else None: a
    limit of the machine, not a fault of the code. Found 2026-12-07: a full disk while a run wrote its model
    or arrays was "internal error (OSError: [Errno 28] ...)" and left the app's run "running" for good."""
    import errno

    seen = 0
    while err is not None and seen < 16:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def failure_message(err: BaseException) -> str:
    """One line for the user about any exception: a :class:`CellannotError`'s own; running out of
    memory or disk said as such, with what to do; anything else an internal error (a fault to report)."""
    if isinstance(err, CellannotError):
        return str(err)
    full = write_failure(err)
    if full is not None:
        return (f"cannot write {full.filename or 'the results'}: {(full.strerror or 'write refused').lower()}. Free "
                "some space or choose another place.")
    if is_out_of_memory(err):
        detail = " ".join(str(err).split())[:160]
        return (f"ran out of memory ({detail}): label fewer cells at once, keep fewer genes or choose a smaller "
                "model, or use a machine with more memory (or set CELLANNOT_MEMORY_LIMIT_GB lower, so that large "
                "inputs are refused before they are read)")
    return f"internal error: {type(err).__name__}: {err}"



class Terminated(KeyboardInterrupt):
    """SIGTERM on the command line (``timeout``, SLURM's ``scancel``, ``docker stop``), handled as Ctrl-C is: the
    run marked cancelled, no output half-written (found 2026-12-07: a run left "running" and a hidden temporary
    file beside ``--out``)."""


def raise_terminated(signum, frame) -> None:
    """The command line's SIGTERM handler: raises :class:`Terminated` (the write guard,
    :func:`~.pipeline.write_atomic`, keeps it as it keeps Ctrl-C only where this is the handler)."""
    raise Terminated()
