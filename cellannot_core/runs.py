"""Run directories: everything a training run makes, written atomically, reopened later.

Layout of ``<root>/<run_id>/``::

    status.json        state (queued/running/done/failed/cancelled), progress, message; updated live
    history.json       per-epoch logs (live)
    run_card.json      the run card (model, hyper-parameters, seed, versions, genes, metrics, ...)
    model/             the model bundle (config.json + weights.safetensors + bundle.json)
    annotated.h5ad     the annotated query (the annotate contract)
    predictions.csv    per-cell labels, confidence, novelty score and per-class probabilities
    arrays.npz         arrays for the app's views (no pickle)

Every file is written to a temporary name and renamed, so a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._constants import RunFiles
from .errors import DataError

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
ETA_MIN_FRACTION, ETA_MIN_SECONDS = 0.05, 5.0  # RunProgress: when a time-left estimate is shown


_STATUS_NUMBERS = ("progress", "elapsed", "eta", "epoch", "max_epochs", "updated")
#: the run card's parts the pages read, by their type (:meth:`RunDir.card`)
_CARD_PARTS = {dict: ("hparams", "options", "versions", "data_report", "rejection", "validation", "training",
                      "predicted_counts", "query_metrics", "latent_quality", "labelled_with", "unknown_by_sample"),
               list: ("classes", "genes", "unknown_by_class", "accepted_on_class_shift", "few_reference_cells",
                      "unknown_groups"),
               str: ("model", "preprocessing")}
_CARD_NUMBERS = ("n_query", "n_train", "n_val", "n_genes", "unknown_fraction", "temperature", "seed")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from /proc), None when it is gone:
    with the pid it tells the same process from a later one that reused the number."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _this_process() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "pid_start": _process_start(pid)}


#: run id -> the token of the thread of this process that works on it (:func:`claim_run`); the process alone
#: does not tell: the app's runs train in threads of the server, which outlives a thread that ended without
#: writing its run's last state (its folder full or read-only), and such a run stayed "running" for good
_CLAIMED: dict[str, str] = {}
_CLAIMED_LOCK = threading.Lock()


def claim_run(rd: "RunDir") -> None:
    """Say that a thread of this process works on ``rd`` until :func:`release_run`: its status records
    the claim, and once released a queued/running run is interrupted, with the process still alive."""
    with _CLAIMED_LOCK:
        _CLAIMED[rd.id] = secrets.token_hex(8)


def release_run(rd: "RunDir") -> None:
    with _CLAIMED_LOCK:
        _CLAIMED.pop(rd.id, None)


def default_root() -> Path:
    """``$CELLANNOT_RUNS`` or ``./runs``."""
    return Path(os.environ.get("CELLANNOT_RUNS", "runs")).resolve()


def new_run_id(model: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]", "", model)[:20] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{secrets.token_hex(8)}"  # 64 random bits: not guessable


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _spreadsheet_safe(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (``=HYPERLINK(...)``, ``@SUM(...)``, ``+cmd``)
    with a ``'`` in front, so that it is shown as text; numbers and other text as they are."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_START):
        return value
    try:
        float(value)
        return value  # "-1.5" is a number, not a formula
    except ValueError:
        return "'" + value


def csv_bytes(df, **to_csv: Any) -> bytes:
    """``df.to_csv(**to_csv)`` as UTF-8 bytes, with its text cells, column names and index made safe
    to open in a spreadsheet (:func:`_spreadsheet_safe`). Found 2026-12-07: a cell type named
    ``=HYPERLINK("http://...","click")`` went into predictions.csv, the app's downloads and their
    column names (``p_<type>``) as a live formula. Every CSV the app and a run write goes through here."""
    import pandas as pd

    out = df.to_frame() if isinstance(df, pd.Series) else df.copy()
    for col in out.columns:
        if out[col].dtype == object or isinstance(out[col].dtype, (pd.CategoricalDtype, pd.StringDtype)):
            out[col] = out[col].astype(object).map(_spreadsheet_safe)
    out.columns = [_spreadsheet_safe(str(c)) for c in out.columns]
    if to_csv.get("index", True):
        out.index = pd.Index([_spreadsheet_safe(v) for v in out.index], name=_spreadsheet_safe(out.index.name))
    return out.to_csv(**to_csv).encode()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:  # (a full disk: the part written would hold its space)
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """JSON (numpy scalars and arrays, paths allowed) written atomically: the one JSON writer."""
    write_bytes_atomic(Path(path), json.dumps(obj, indent=1, default=_json_default).encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON file at ``path``, or ``default`` when it is missing or not JSON (nested past Python's recursion
    limit included: a RecursionError, an "internal error" until 2026-12-07)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):
        return default


@dataclass
class RunDir:
    path: Path

    @classmethod
    def create(cls, root: Path | str | None = None, *, model: str = "run", run_id: str | None = None,
               owner: str | None = None) -> "RunDir":
        """A new run directory; ``owner`` (the app's hashed browser-session id) limits who lists
        and opens it in the app; runs without an owner are the command line's."""
        root = Path(root) if root is not None else default_root()
        rid = new_run_id(model) if run_id is None else run_id
        if not RUN_ID_RE.match(rid):
            raise DataError(f"invalid run id {rid!r}; use letters, digits, '.', '_' or '-'")
        path = root / rid
        try:
            path.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise DataError(f"a run {rid!r} already exists in {root}; choose another id") from None
        rd = cls(path)
        rd.set_status("queued", **({"owner": owner} if owner else {}))
        return rd

    @classmethod
    def open(cls, root: Path | str, run_id: str) -> "RunDir":
        """Open an existing run by id (the id is validated, never used as a free path)."""
        if not RUN_ID_RE.match(run_id or ""):
            raise DataError(f"invalid run id {run_id!r}")
        path = Path(root) / run_id
        if not (path / RunFiles.STATUS).is_file():
            raise DataError(f"no run {run_id!r} in the runs folder")  # (the app's messages never name server paths)
        return cls(path)

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def owner(self) -> str | None:
        return self.status().get("owner")

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def model_dir(self) -> Path:
        return self.path / RunFiles.MODEL_DIR

    def status(self) -> dict[str, Any]:
        """The run's status; one damaged or edited by hand reads as a failed run ("status unreadable"), and its
        fields of another type than this module writes are left out (the pages compute with them)."""
        st = read_json(self.file(RunFiles.STATUS))
        if not isinstance(st, dict) or st.get("state") not in STATES:
            owner = st.get("owner") if isinstance(st, dict) and isinstance(st.get("owner"), str) else None
            return {"state": "failed", "message": "status unreadable", **({"owner": owner} if owner else {})}
        if not _number(st.get("created", 0)):
            st["created"] = 0  # (runs are sorted by it)
        for key in _STATUS_NUMBERS:
            if st.get(key) is not None and not _number(st[key]):
                del st[key]
        for key in ("message", "model"):
            if key in st and not isinstance(st[key], str):
                del st[key]
        return st

    def set_status(self, state: str, **fields: Any) -> None:
        if state not in STATES:
            raise ValueError(state)
        cur = read_json(self.file(RunFiles.STATUS), {})
        cur = cur if isinstance(cur, dict) else {}
        cur.update(fields)
        if state in ACTIVE:
            cur.update(_this_process())  # who works on it, so a killed process is detected (worker_alive)
            with _CLAIMED_LOCK:
                claim = _CLAIMED.get(self.id)
            if claim is None:
                cur.pop("claim", None)
            else:
                cur["claim"] = claim
        cur["state"] = state
        cur["updated"] = time.time()
        cur.setdefault("created", cur["updated"])
        write_json_atomic(self.file(RunFiles.STATUS), cur)

    def worker_alive(self) -> bool:
        """Whether the process that last marked this run queued/running still exists."""
        st = self.status()
        pid = st.get("pid")
        if not isinstance(pid, int):
            return False
        start = _process_start(pid)
        alive = start is not None and (st.get("pid_start") is None or start == st.get("pid_start"))
        if alive and pid == os.getpid() and st.get("claim"):  # a thread of this process: is it still at work?
            with _CLAIMED_LOCK:
                return _CLAIMED.get(self.id) == st["claim"]
        return alive

    def check_interrupted(self) -> dict[str, Any]:
        """The status, with a queued/running run whose process (or thread, :func:`claim_run`) is gone marked
        ``interrupted`` (written when the folder can be, so it stays marked): detected from the process, not
        guessed from a timeout."""
        st = self.status()
        if st.get("state") in ACTIVE and not self.worker_alive():
            here = st.get("pid") == os.getpid()
            message = ("its training stopped before it finished and could not record why (its folder could not be "
                       "written: a full disk or a read-only folder?): delete it or train again" if here else
                       "the process training it stopped (killed, or the server restarted) before it finished: "
                       "delete it or train again")
            try:
                self.set_status("interrupted", message=message)
            except OSError:  # a full disk or a read-only folder: said, not written (the listing must not fail)
                return {**st, "state": "interrupted", "message": message}
            st = self.status()
        return st

    def delete(self) -> None:
        """Remove the run directory (refused while its process still works on it)."""
        import shutil

        if self.status().get("state") in ACTIVE and self.worker_alive():
            raise DataError(f"run {self.id} is still training: cancel it first")
        if self.path.is_symlink():  # moved to another disk and linked back: not followed (it was told as a folder
            raise DataError(f"run {self.id} could not be deleted: its folder is a link to another place, set up on "  # that
                            "the server; it is deleted there, by hand")  # cannot be written, 2026-12-07)
        try:
            shutil.rmtree(self.path)
        except OSError as err:  # a read-only folder, files of another user: one line, not a traceback
            raise DataError(f"run {self.id} could not be deleted ({(err.strerror or type(err).__name__).lower()}): "
                            "ask whoever runs this server to make the runs folder writable") from None

    def card(self) -> dict[str, Any] | None:
        """The run card, or None when it is missing or is not a card (a run's files may be damaged or
        half deleted by hand: the pages and the listing must say so, not fail); a card whose parts the pages
        read are of other types (:data:`_CARD_PARTS`, an edit by hand) is not a card either (found 2026-12-07:
        ``"validation": "x"`` failed the Train, Label transfer and Runs pages with AttributeError)."""
        card = read_json(self.file(RunFiles.CARD))
        if not isinstance(card, dict):
            return None
        for kind, keys in _CARD_PARTS.items():
            if any(card.get(k) is not None and not isinstance(card[k], kind) for k in keys):
                return None
        if any(card.get(k) is not None and not _number(card[k]) for k in _CARD_NUMBERS):
            return None
        return card

    def history(self) -> list[dict[str, Any]]:
        """Per-epoch logs (the epochs that are not a record left out: a list of anything else is damaged)."""
        hist = read_json(self.file(RunFiles.HISTORY), [])
        return [e for e in hist if isinstance(e, dict)] if isinstance(hist, list) else []

    def save_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        tmp = self.path / f".arrays.{secrets.token_hex(4)}.npz"
        try:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
            os.replace(tmp, self.file(RunFiles.ARRAYS))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def load_arrays(self) -> dict[str, np.ndarray]:
        import zipfile

        try:
            with np.load(self.file(RunFiles.ARRAYS), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(f"run {self.id}: its arrays ({RunFiles.ARRAYS}) are missing or damaged "
                            f"({type(err).__name__})") from None


ANY_OWNER = object()


def list_runs(root: Path | str | None = None, *, owner: Any = ANY_OWNER,
              include_unowned: bool = True) -> list[dict[str, Any]]:
    """Runs under ``root``, newest first: id, state, model, created, message and key metrics.

    ``owner``: only the runs of this owner (the app passes its hashed session id), plus the
    command line's runs (no owner) when ``include_unowned``; by default every run.
    """
    root = Path(root) if root is not None else default_root()
    out = []
    if not root.is_dir():
        return out
    for p in root.iterdir():
        if not p.is_dir() or not RUN_ID_RE.match(p.name) or not (p / RunFiles.STATUS).is_file():
            continue
        st = RunDir(p).status()
        if st.get("state") in ACTIVE:
            st = RunDir(p).check_interrupted()
        if owner is not ANY_OWNER:
            run_owner = st.get("owner")
            if not (run_owner == owner or (run_owner is None and include_unowned)):
                continue
        card = RunDir(p).card() or {}
        out.append({"id": p.name, "state": st.get("state"), "model": st.get("model", card.get("model")),
                    "created": st.get("created", 0), "message": st.get("message", ""), "owner": st.get("owner"),
                    "n_query": card.get("n_query"), "unknown_fraction": card.get("unknown_fraction")})
    return sorted(out, key=lambda r: r["created"] or 0, reverse=True)


def folder_bytes(path: Path) -> int:
    """The bytes of the files under ``path`` (links not followed: a run linked in from another disk
    counts as its link)."""
    if os.path.islink(path):
        return 0
    total = 0
    for base, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(base, f)).st_size
            except OSError:  # (removed while walked)
                pass
    return total


class RunProgress:
    """Training callback writing live progress into a run directory (status + history).

    Used by the app's background jobs and by the CLI when a run directory is given; never
    touches any UI. Status holds ``progress`` (0-1), ``elapsed``, ``eta`` seconds and ``epoch``.
    """

    def __init__(self, run_dir: RunDir, *, every_seconds: float = 1.0) -> None:
        self.run_dir = run_dir
        self.every = every_seconds
        self.t0 = time.time()
        self._last = 0.0
        self.epochs: list[dict[str, Any]] = []
        self.total_steps = 1
        self.max_epochs = 0

    def on_train_begin(self, info: dict[str, Any]) -> None:
        self.t0 = time.time()
        self.max_epochs = int(info.get("max_epochs", 0))
        self.total_steps = max(1, int(info.get("steps_per_epoch", 1)) * max(1, self.max_epochs))
        self.run_dir.set_status("running", message="training", progress=0.0, elapsed=0.0, eta=None, epoch=0,
                                max_epochs=self.max_epochs)

    def on_step(self, step: int, total_steps: int, logs: dict[str, float]) -> None:
        now = time.time()
        if now - self._last < self.every:
            return
        self._last = now
        frac = min(1.0, step / max(1, total_steps))
        elapsed = now - self.t0
        # no estimate until it can be honest: at least 5% done and 5 s of training seen (the first
        # steps are slow: threads start, caches fill), then the steps' own rate
        eta = elapsed * (1 - frac) / frac if frac >= ETA_MIN_FRACTION and elapsed >= ETA_MIN_SECONDS else None
        self.run_dir.set_status("running", message="training", progress=frac, elapsed=elapsed, eta=eta)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if "recovered_from_divergence" in logs:
            self.run_dir.set_status("running", message=f"recovered from divergence ({int(logs['recovered_from_divergence'])}x); "
                                    "continuing from the last good checkpoint")
            return
        self.epochs.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
        write_json_atomic(self.run_dir.file(RunFiles.HISTORY), self.epochs)
        elapsed = time.time() - self.t0
        self.run_dir.set_status("running", message=f"epoch {epoch + 1} of at most {self.max_epochs}",
                                epoch=epoch + 1, elapsed=elapsed,
                                progress=min(1.0, (epoch + 1) / max(1, self.max_epochs)))

    def on_train_end(self, logs: dict[str, Any]) -> None:
        self.run_dir.set_status("running", message="calibrating and labelling the query", progress=1.0,
                                elapsed=time.time() - self.t0, eta=0.0)

    def on_phase(self, message: str) -> None:
        self.run_dir.set_status("running", message=message, elapsed=time.time() - self.t0, eta=None)
