"""The one model interface shared by the CLI, the app and the benchmarks.

A model is built from ``(n_features, classes, seed, device, hparams)``; it is fitted on
prepared reference splits, then answers ``predict_proba``, ``ood_score``, ``latent`` and,
where the method can, ``sample`` and ``explain``. ``calibrate`` fits the temperature and the
rejection threshold on reference validation cells. ``save``/``load`` write weights as
safetensors plus a JSON config: nothing is unpickled on load.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from .._constants import MAX_CLASSES, MAX_LABEL_CHARS, RunFiles
from ..calibration import (SHIFTABLE_SCORES, T_MAX, T_MIN, fit_temperature, query_threshold, softmax,
                           threshold_for_acceptance)
from ..data._types import Split
from ..errors import ConfigError, shown_name
from ..runs import write_json_atomic
from ..novelty import (NOVELTY_SCORES, OOD_METHODS, LatentReference, ScoreInputs, ScoreUnavailable,
                       asks_every_score)
from .registry import get_spec, resolve_hparams

FORMAT_VERSION = 1
SHIFT_CORRECTIONS = ("median", "none")


class Model:
    """Base class; subclasses implement ``fit``, ``logits`` and ``latent`` (and optionally more)."""

    name: ClassVar[str] = ""
    #: whether :meth:`calibrate` fits a temperature (False: the model's probabilities are its method's
    #: calibrated ones, which its published rule is stated on, e.g. svm_reject's 0.7)
    temperature_scaling: ClassVar[bool] = True

    def __init__(self, n_features: int, classes: Sequence[str], *, seed: int = 0,
                 device: str = "auto", hparams: dict[str, Any] | None = None) -> None:
        self.spec = get_spec(self.name)
        self.hparams = resolve_hparams(self.name, hparams)
        self.n_features = int(n_features)
        self.classes = list(classes)
        self.seed = int(seed)
        self.device_name = device
        self.temperature = 1.0
        self.threshold = float("inf")
        self.val_score_median = float("nan")
        self.shift_correction = "median"
        self.ood_method = str(self.hparams.get("ood_score", "maxprob"))
        self.history: dict[str, Any] = {}
        self.calibration: dict[str, Any] = {}
        self.reference: LatentReference | None = None

    # ---- to implement -------------------------------------------------------------------
    def fit(self, train: Split, val: Split, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        raise NotImplementedError

    def logits(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def latent(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # a query labelled in chunks (streaming.predict_file): logits(X) of a whole query equals
    # query_logits(cell_logits(X), latent(X)); the cell part can be computed chunk by chunk
    def cell_logits(self, X: np.ndarray) -> np.ndarray:
        """The part of :meth:`logits` that each cell gets on its own (default: all of it)."""
        return self.logits(X)

    def query_logits(self, cell_logits: np.ndarray, latent: np.ndarray) -> np.ndarray:
        """The query-level step after :meth:`cell_logits` (default: none)."""
        return cell_logits

    def sample(self, n_per_class: int) -> tuple[np.ndarray, np.ndarray]:
        """Generated cells (log-expression, genes as in training) and their class indices."""
        raise NotImplementedError(f"model {self.name} cannot generate cells")

    def explain(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"model {self.name} has no explain matrices")

    def _state_arrays(self) -> dict[str, np.ndarray]:
        """Weights and other arrays to save (names -> arrays)."""
        return {}

    def _load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        pass

    # ---- shared behaviour -----------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities (softmax of logits / temperature)."""
        return softmax(self.logits(X), self.temperature)

    def fit_reference(self, train: Split) -> None:
        """Keep reference latents for distance-based novelty scores."""
        self.reference = LatentReference(self.latent(train.X), train.y, logits=self.logits(train.X),
                                         k=int(self.hparams.get("knn_k", 10)), seed=self.seed, expression=train.X,
                                         counts=train.counts)

    def ood_scores(self, X: np.ndarray, methods: Sequence[str] = OOD_METHODS, *,
                   logits: np.ndarray | None = None, latent: np.ndarray | None = None,
                   samples: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Several novelty scores at once (higher = more novel), each from the registry
        (:data:`~cellannot_core.novelty.NOVELTY_SCORES`); logits and latent are computed once
        (or reused if given). ``samples``: each cell's query sample code (-1: none), for the
        scores that allow for each sample's own shift (``knn_class``)."""
        return self._scores(ScoreInputs(self, X, logits=logits, latent=latent, samples=samples), methods,
                            validation=False)

    def validation_scores(self, X: np.ndarray, methods: Sequence[str] = OOD_METHODS, *,
                          logits: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """:meth:`ood_scores` of reference validation cells, the null the threshold comes from.

        The same as for a query, except scores registered with their own ``validation`` form:
        ``knn_graph`` and ``knn_class`` smooth a validation cell over its neighbours among
        reference training and validation cells (see
        :meth:`~cellannot_core.novelty.LatentReference.knn_graph_reference`), since the
        validation cells alone are too few and too sparse to stand for a query's graph, and
        ``knn_class`` gets no query-shift factor.
        """
        return self._scores(ScoreInputs(self, X, logits=logits), methods, validation=True)

    def model_scores(self) -> dict[str, Callable[[ScoreInputs], np.ndarray]]:
        """Scores only this model can compute (e.g. the VAE family's ``elbo``), by name; computed
        beside the registry's when every score is asked for."""
        return {}

    def _scores(self, inputs: ScoreInputs, methods: Sequence[str], *, validation: bool) -> dict[str, np.ndarray]:
        own = self.model_scores()
        every = asks_every_score(methods)
        methods = list(methods) + ([m for m in own if m not in methods] if every else [])
        for m in methods:
            spec = NOVELTY_SCORES.get(m)
            if spec is None and m not in own:
                raise ConfigError(f"unknown novelty score {m!r}; choose one of {', '.join(list(OOD_METHODS) + list(own))}")
            fn = own[m] if spec is None else spec.validation if validation and spec.validation is not None else spec.fn
            try:
                inputs.scores[m] = np.asarray(fn(inputs))
            except ScoreUnavailable as err:  # left out of "every score", an error when asked for by name
                if m == self.ood_method or not every:
                    raise ConfigError(str(err)) from None
        return dict(inputs.scores)

    def ood_score(self, X: np.ndarray) -> np.ndarray:
        """The model's chosen novelty score (``self.ood_method``)."""
        return self.ood_scores(X, [self.ood_method])[self.ood_method]

    def calibrate(self, val: Split, *, accept: float = 0.95, shift_correction: str = "median") -> dict[str, Any]:
        """Fit the temperature on validation logits and the threshold accepting ``accept`` of them.

        ``shift_correction="median"``: see :meth:`query_threshold`.
        """
        if shift_correction not in SHIFT_CORRECTIONS:
            raise ConfigError(f"shift_correction must be one of {', '.join(SHIFT_CORRECTIONS)}, got {shift_correction!r}")
        self.shift_correction = shift_correction
        from ..metrics import ece

        logits = self.logits(val.X)
        self.temperature = fit_temperature(logits, val.y) if self.temperature_scaling else 1.0
        p0, p1 = softmax(logits, 1.0), softmax(logits, self.temperature)
        correct = p1.argmax(1) == val.y
        scores = self.validation_scores(val.X, [self.ood_method], logits=logits)[self.ood_method]
        self.threshold = threshold_for_acceptance(scores, accept)
        self.val_score_median = float(np.median(scores)) if len(scores) else float("nan")
        self.calibration = {
            "temperature": self.temperature,
            "ece_before": float(ece(p0.max(1), p0.argmax(1) == val.y)),
            "ece_after": float(ece(p1.max(1), correct)),
            "val_accuracy": float(correct.mean()),
            "accept": accept,
            "threshold": self.threshold,
            "ood_method": self.ood_method,
            "val_score_median": self.val_score_median,
            "shift_correction": shift_correction,
            "n_val": int(len(val.y)),
        }
        return self.calibration

    def query_threshold(self, query_scores: np.ndarray, pred: np.ndarray | None = None) -> tuple[float, float]:
        """Threshold for a query's novelty scores, and the shift factor applied.

        Distances grow for every query cell when the query comes from another study or
        technology, so a threshold taken on reference validation cells alone rejects many
        known cells. With ``shift_correction="median"`` the threshold is scaled by
        ``median(query scores) / median(validation scores)`` (never below 1): the bulk of the
        query is assumed to be known cell types (true while novel cells are under half of the
        query). Only distance scores (kNN, Mahalanobis) are positive and scale this way; other
        scores and ``"none"`` keep the validation threshold. With ``pred`` (each cell's predicted
        class), a query predicted as too few types to tell its shift from its own types' distance
        keeps it too (:func:`~cellannot_core.calibration.query_threshold`).
        """
        return query_threshold(self.threshold, self.ood_method, self.shift_correction, self.val_score_median,
                               query_scores, pred)

    def set_threshold(self, threshold: float) -> None:
        self.threshold = float(threshold)

    # ---- persistence ----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION, "model": self.name, "n_features": self.n_features,
            "classes": self.classes, "seed": self.seed, "hparams": self.hparams,
            "temperature": self.temperature, "threshold": self.threshold, "ood_method": self.ood_method,
            "val_score_median": self.val_score_median, "shift_correction": self.shift_correction,
            "calibration": self.calibration, "history": self.history,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``weights.safetensors`` into ``directory`` (atomically per file)."""
        from safetensors.numpy import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {f"state.{k}": np.ascontiguousarray(v) for k, v in self._state_arrays().items()}
        if self.reference is not None:
            arrays.update({f"reference.{k}": np.ascontiguousarray(v) for k, v in self.reference.arrays().items()})
        tmp = d / (RunFiles.WEIGHTS + ".tmp")
        try:
            open(tmp, "wb").close()  # a file made as any is (by the umask; os.umask would race the app's threads):
            mode = os.stat(tmp).st_mode & 0o777  # safetensors writes 0600, and a lab's colleagues could read a saved
            save_file(arrays, str(tmp))  # model's config, not its weights (found 2026-12-07)
            os.chmod(tmp, mode)
            os.replace(tmp, d / RunFiles.WEIGHTS)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            code = re.search(r"\(os error (\d+)\)", str(err))  # safetensors' own error: an OSError, as any write's
            if code and not isinstance(err, OSError):
                raise OSError(int(code[1]), os.strerror(int(code[1])), str(d / RunFiles.WEIGHTS)) from None
            raise
        write_json_atomic(d / RunFiles.CONFIG, {**self.config(), "weights_sha256": _sha256(d / RunFiles.WEIGHTS)})
        return d




MAX_FEATURES = 200_000  # more genes than any transcriptome: a config asking for more is damaged or hostile
#: the most bytes a saved model's safetensors header (its JSON list of arrays) may take: a model's names a few dozen
#: arrays in a few KB; safetensors itself reads up to 100 MB, and 91 MB naming 1.1 million empty arrays took 0.9 GB
#: (found 2026-12-07)
WEIGHTS_HEADER_BYTES = 1 << 20
#: a JSON file's most memory per byte as Python reads it (``[[[]],[[]],...]`` takes 32 times its size; a 100 MB
#: config.json took 0.77 GB, found 2026-12-07): a model's JSON is read only when its size times this fits the limit
JSON_BYTES_FACTOR = 40


def read_model_json(path: Path, d: Path) -> Any:
    """A saved model's JSON file (``config.json``, ``bundle.json``), read only when it fits the memory limit as
    read (:data:`JSON_BYTES_FACTOR`); one line when it does not, or is not JSON (nested past Python's recursion
    limit included: an "internal error" before, found 2026-12-07)."""
    from ..data.io import memory_limit_bytes
    from ..errors import DataError

    limit = memory_limit_bytes()
    size = path.stat().st_size
    if size * JSON_BYTES_FACTOR > limit:
        raise DataError(f"the saved model in {d} is refused: its {path.name} of {size / 1024**2:,.1f} MB would take "
                        f"more than this server's limit of {limit / 1024**3:.1f} GiB (CELLANNOT_MEMORY_LIMIT_GB) "
                        "to read, where a model's takes a few MB; train it again here, or raise the limit")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:
        raise DataError(f"cannot read the saved model in {d} (its {path.name}: {type(err).__name__}); it may be "
                        "damaged: train it again") from None


def _check_weights_file(w_path: Path, d: Path) -> None:
    """The safetensors file's header no larger than :data:`WEIGHTS_HEADER_BYTES` and the file within the memory
    limit, before a byte of it is read: the arrays are read whole, and the file is mapped as they are (a 6 MB
    folder holding a sparse 3 GB weights file took 6.5 GB at a 0.5 GB limit, found 2026-12-07)."""
    from ..data.io import memory_limit_bytes
    from ..errors import DataError

    with open(w_path, "rb") as fh:
        head = fh.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else 0
    if not 2 <= n <= WEIGHTS_HEADER_BYTES:
        raise DataError(f"the saved model in {d} is damaged or not a cellannot model (its {RunFiles.WEIGHTS} "
                        f"declares a header of {n:,} bytes, where a model's takes a few KB); train it again")
    size, limit = w_path.stat().st_size, memory_limit_bytes()
    if 2 * size > limit:
        raise DataError(f"the saved model in {d} is refused: its {RunFiles.WEIGHTS} of {size / 1024**3:.2f} GiB "
                        f"takes twice that to load, more than this server's limit of {limit / 1024**3:.1f} GiB "
                        "(CELLANNOT_MEMORY_LIMIT_GB): load it on a larger server, or train a smaller model")


def _validate_config(cfg: dict[str, Any], d: Path) -> None:
    """Types, ranges, known names and sizes of a saved model's config, before anything is built
    from it (a config is as untrusted as any file: ``n_features`` 1e9 once cost 82 s and 8 GB)."""
    import math

    from ..errors import DataError
    from ..pipeline import check_threshold

    def bad(what: str) -> DataError:
        return DataError(f"the saved model in {d} is damaged or not a cellannot model ({what}); train it again")

    if not isinstance(cfg.get("model"), str):  # (an unknown model name is get_spec's, which lists the models)
        raise bad("model must be a model's name")
    n = cfg.get("n_features")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_FEATURES:
        raise bad("n_features must be a whole number of genes between 1 and 200,000")
    classes = cfg.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise bad("classes must be a list of at least two names")
    if len(classes) > MAX_CLASSES:
        raise bad(f"{len(classes):,} classes, where a model has at most {MAX_CLASSES:,}")
    if any(len(c) > MAX_LABEL_CHARS for c in classes):
        raise bad(f"a class's name is longer than {MAX_LABEL_CHARS} characters")
    if not isinstance(cfg.get("hparams"), dict) or not isinstance(cfg.get("seed"), int):
        raise bad("hparams / seed")
    t = cfg.get("temperature")  # (calibration fits it between T_MIN and T_MAX: 1e-300 passed before, 2026-12-07)
    if (not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t)
            or not T_MIN * (1 - 1e-9) <= t <= T_MAX * (1 + 1e-9)):
        raise bad(f"the temperature must be a number between {T_MIN} and {T_MAX:g}")
    thr = cfg.get("threshold")
    try:  # (a threshold of -inf, every cell Unknown whatever its score, passed before, 2026-12-07)
        check_threshold(thr)
    except ConfigError:
        thr = None
    if not isinstance(thr, (int, float)) or isinstance(thr, bool):
        raise bad("the threshold must be a number, not NaN or minus infinity")
    median = cfg.get("val_score_median", 0.0)  # (quoted by a float() error before, 2026-12-07)
    if not isinstance(median, (int, float)) or isinstance(median, bool) or math.isinf(median):
        raise bad("val_score_median must be a finite number")
    if cfg.get("shift_correction", "none") not in SHIFT_CORRECTIONS:
        raise bad(f"shift_correction must be one of {', '.join(SHIFT_CORRECTIONS)}")
    if (math.isnan(median) and cfg.get("shift_correction") == "median"
            and cfg.get("ood_method") in SHIFTABLE_SCORES):  # (NaN turned the shift correction off unsaid)
        raise bad("val_score_median must be a number: the threshold's shift correction divides by it")
    if not isinstance(cfg.get("calibration", {}), dict):
        raise bad("calibration must be a mapping")
    if cfg.get("ood_method") not in tuple(OOD_METHODS) + ("elbo",):
        raise bad(f"unknown novelty score '{shown_name(cfg.get('ood_method'), 40)}'")


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _check_outputs(model: Model, d: Path) -> None:
    """A loaded model gives one logit per class of its config, and its reference cells name those
    classes (a config edited or mixed with other weights would label cells with the wrong names)."""
    from ..errors import DataError

    ref = model.reference
    try:
        zero = np.zeros((1, model.n_features), dtype=np.float32)
        width = model.logits(zero).shape[1]
        # the reference's codes are the model's own (found 2026-12-07: codes of another width, or logits of
        # another number of classes, were an "internal error" at the first query)
        if ref is not None and ((np.shape(model.latent(zero))[1:] != ref.latent.shape[1:]) or (
                ref.logits is not None and ref.logits.shape[1] != width)):
            raise ValueError("reference codes of another width")
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise DataError(f"the saved model in {d} does not match its config ({type(err).__name__}); it may be "
                        "damaged: train it again") from None
    ref_y = getattr(ref, "y", None)
    if width != len(model.classes) or (ref_y is not None and len(ref_y) and
                                       (int(np.max(ref_y)) >= width or int(np.min(ref_y)) < 0)):
        raise DataError(f"the saved model in {d} is damaged: its config names {len(model.classes)} classes and its "
                        f"weights give {width}; train it again")


def refuse_links_out(d: Path, files: Sequence[Path]) -> None:
    """Refuse a saved model whose files are links leading out of its folder (found 2026-12-07: ``predict
    --model DIR`` read a weights.safetensors linked to a file elsewhere on the server)."""
    from ..errors import DataError

    try:
        home = d.resolve(strict=True)
        out = [f for f in files if f.is_symlink() and not f.resolve(strict=True).is_relative_to(home)]
    except (OSError, RuntimeError):  # a broken or looping link
        out = [f for f in files if f.is_symlink()]
    if out:
        raise DataError(f"the saved model in {d} is refused: its {out[0].name} is a link to a file outside the "
                        "model's folder; copy the model's own files into one folder and load that")


def load_model(directory: str | os.PathLike, *, device: str = "auto") -> Model:
    """Load a saved model: JSON config + safetensors arrays (no pickle)."""
    from safetensors.numpy import load_file

    from ..errors import DataError
    from ..training.device import resolve_device

    resolve_device(device)  # a GPU this machine lacks is said as such, not as a damaged model
    d = Path(directory).expanduser()
    cfg_path, w_path = d / RunFiles.CONFIG, d / RunFiles.WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise DataError(f"{d} is not a saved model (needs {RunFiles.CONFIG} and {RunFiles.WEIGHTS}); "
                        "pass the directory written by --save-model or `train`")
    refuse_links_out(d, (cfg_path, w_path))
    cfg = read_model_json(cfg_path, d)
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise DataError(f"{cfg_path} is not a cellannot model config; it may be damaged: train the model again")
    _check_weights_file(w_path, d)
    version = cfg.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise DataError(f"the saved model in {d} was written in a newer format ({shown_name(version, 20)}; "
                        f"this cellannot reads up to {FORMAT_VERSION}): update cellannot, or train the model again "
                        "with this one")
    digest = cfg.get("weights_sha256")
    if digest is not None and digest != _sha256(w_path):
        raise DataError(f"the saved model in {d} is damaged: {RunFiles.WEIGHTS} is not the file saved with its "
                        f"{RunFiles.CONFIG} (its checksum differs); copy the model again or train it again")
    _validate_config(cfg, d)
    try:
        arrays = load_file(str(w_path))
    except BaseException as err:  # noqa: BLE001 - any corruption is a user-facing data problem
        if not isinstance(err, Exception) and type(err).__name__ != "PanicException":
            raise  # (safetensors' PanicException, e.g. after a MemoryError, is a BaseException: a traceback before)
        raise DataError(f"cannot read the saved model in {d} ({type(err).__name__}); it may be damaged: train it again") from None
    for key, values in arrays.items():  # (NaN weights gave NaN confidences and no cell Unknown, found 2026-12-07)
        flat = values.reshape(-1)
        if values.dtype.kind in "fc" and not all(np.isfinite(flat[i:i + (1 << 22)]).all()
                                                 for i in range(0, flat.size, 1 << 22)):
            raise DataError(f"the saved model in {d} is damaged: its {shown_name(key, 60)} holds values that are not "
                            "finite numbers (NaN or infinite); train it again")
    spec = get_spec(cfg["model"])
    try:
        model = spec.cls(cfg["n_features"], cfg["classes"], seed=cfg["seed"], device=device, hparams=cfg["hparams"])
        model._load_state_arrays({k[6:]: v for k, v in arrays.items() if k.startswith("state.")})
    except ConfigError as err:  # hyper-parameters out of range, or a net too large for this server
        raise DataError(f"the saved model in {d} is damaged or was made for a larger server: {err}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise DataError(f"the saved model in {d} does not match its config ({type(err).__name__}); it may be "
                        "damaged: train it again") from None
    if "reference.ref_latent" in arrays:
        ref_arrays = {k[len("reference."):]: v for k, v in arrays.items() if k.startswith("reference.")}
        try:
            model.reference = LatentReference(arrays["reference.ref_latent"], arrays["reference.ref_y"],
                                              logits=arrays.get("reference.ref_logits"),
                                              k=int(model.hparams.get("knn_k", 10)), seed=model.seed,
                                              expression=LatentReference.expression_from_arrays(ref_arrays),
                                              count_scale=ref_arrays.get("ref_count_scale"))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"the saved model in {d} has a damaged reference ({type(err).__name__}): train it "
                            "again") from None
    _check_outputs(model, d)
    model.temperature = float(cfg["temperature"])
    model.threshold = float(cfg["threshold"])
    model.ood_method = cfg["ood_method"]
    model.val_score_median = float(cfg.get("val_score_median", float("nan")))
    model.shift_correction = cfg.get("shift_correction", "none")
    model.calibration = cfg.get("calibration", {})
    model.history = cfg.get("history", {})
    return model
