"""Hyper-parameter sweeps on Optuna (issue 17).

A sweep searches a model's registry hyper-parameters (their ranges and choices are the
registry's, so nothing is declared twice) with Optuna's TPE, random or grid sampler, for an
objective that needs no query labels:

* ``val_accuracy`` (maximise): accuracy on the held-out reference cells, after calibration;
* ``val_ece`` (minimise): their expected calibration error;
* ``val_nll`` (minimise): their negative log-likelihood at the fitted temperature;
* ``loo_auroc`` (maximise): the leave-one-type-out novelty AUROC of CLAMS' self-check
  (:func:`cellannot_core.compare.leave_one_class_out`): for each of the reference's
  :data:`LOO_TYPES` largest types, the trial's settings are trained again without that type,
  and the model's own novelty score must separate the type's held-out reference cells from the
  other held-out cells; the objective is the median over those types. It judges the Unknown
  calls, not only the labels, still without query labels, at the cost of :data:`LOO_TYPES` more
  trainings per trial.

Every trial is a normal run (:func:`~cellannot_core.pipeline.annotate`: run card, arrays,
predictions) when ``runs_dir`` is given, so the app opens it like any other; the trial keeps
the run id and the metrics as user attributes. The study lives in Optuna's storage: SQLite by
default (one file), or any database URL Optuna supports, so several machines can work on one
sweep. Starting the same sweep again resumes it: finished trials count towards ``n_trials``,
and trials left running by a killed process are marked failed after a heartbeat grace period.
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ConfigError

OBJECTIVES = {
    "val_accuracy": ("maximize", "accuracy on held-out reference cells (calibrated)"),
    "val_ece": ("minimize", "expected calibration error on held-out reference cells"),
    "val_nll": ("minimize", "negative log-likelihood of held-out reference cells at the fitted temperature"),
    "loo_auroc": ("maximize", "novelty AUROC when a reference type is left out (median over the largest types; "
                  "held-out reference cells)"),
}
LOO_TYPES = 3  # loo_auroc leaves out each of the reference's 3 largest types in turn
SAMPLERS = ("tpe", "random", "grid")
SKIP = ("ood_score", "latent_model", "max_epochs", "patience", "knn_k", "sample_steps", "sample_noise", "cv")
HEARTBEAT_SECONDS = 30
SWEEP_FILE = "sweep.json"  # in a trial's run directory: its study, trial number, parameters and scores


def sweepable(model: str) -> list[str]:
    """The hyper-parameters of ``model`` a sweep can vary without being given values: those with
    choices, a range or true / false (what the app's sweep offers)."""
    from .models import get_spec

    return [k for k, h in get_spec(model).hparams.items() if not h.internal and (
        h.choices is not None or isinstance(h.default, bool) or (h.low is not None and h.high is not None))]


def search_space(model: str, params: Sequence[str] = ()) -> dict[str, tuple[str, Any]]:
    """What a sweep of ``model`` varies: ``{name: (kind, spec)}`` with kind ``"choice"`` (spec =
    the values) or ``"int"`` / ``"float"`` (spec = ``(low, high, log)``).

    ``params``: ``NAME`` (the registry's range or choices) or ``NAME=v1,v2,...`` (these values).
    Empty: every hyper-parameter that has a range or choices and is not advanced, except those
    that do not shape the model (the novelty score, epochs caps, ...).
    """
    from .models import get_spec

    hps = get_spec(model).hparams
    wanted = list(params) or [k for k in sweepable(model) if not hps[k].advanced and k not in SKIP]
    out: dict[str, tuple[str, Any]] = {}
    for p in wanted:
        name, _, values = p.partition("=")
        name = name.strip()
        if name not in hps:
            raise ConfigError(f"model {model} has no hyper-parameter {name!r}; see `cellannot models`")
        h = hps[name]
        if h.internal:
            raise ConfigError(f"{name} of model {model} is set from the data ({h.help}); it cannot be swept")
        if values:  # a list-valued one (layer widths "1200,600,200") takes its values apart at "/"
            sep = "/" if _is_list(h.default) else ","
            # each value checked as --hparam's is, before the data is read (found 2026-12-07: C=abc was an
            # "internal error", C=-1 a sweep of failed trials with no reason, n_pcs=10.5 quietly 10)
            out[name] = ("choice", [h.validate(name, v.strip()) for v in values.split(sep) if v.strip()])
        elif h.choices is not None:
            out[name] = ("choice", list(h.choices))
        elif isinstance(h.default, bool):
            out[name] = ("choice", [True, False])
        elif h.low is not None and h.high is not None:
            low, high = float(h.low), float(h.high)
            log = low > 0 and high / low >= 100
            kind = "int" if isinstance(h.default, int) else "float"
            out[name] = (kind, (int(low), int(high), log) if kind == "int" else (low, high, log))
        else:
            example = f"{h.default}/{h.default.rsplit(',', 1)[0]}" if _is_list(h.default) else "v1,v2"
            raise ConfigError(f"hyper-parameter {name} has no range; give its values: --param {name}={example}")
    if not out:
        raise ConfigError(f"model {model} has nothing to sweep; name the hyper-parameters with --param")
    return out


def _is_list(default: Any) -> bool:
    return isinstance(default, str) and "," in default


def _suggest(trial, space: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    hp = {}
    for name, (kind, spec) in space.items():
        if kind == "choice":
            hp[name] = trial.suggest_categorical(name, spec)
        elif kind == "int":
            hp[name] = trial.suggest_int(name, spec[0], spec[1], log=spec[2])
        else:
            hp[name] = trial.suggest_float(name, spec[0], spec[1], log=spec[2])
    return hp


def _sampler(kind: str, space: dict[str, tuple[str, Any]], seed: int):
    import optuna

    if kind == "tpe":
        return _seeded_by_trial(optuna.samplers.TPESampler(seed=seed), seed)
    if kind == "random":
        return _seeded_by_trial(optuna.samplers.RandomSampler(seed=seed), seed)
    if kind == "grid":
        ranged = [n for n, (k, _) in space.items() if k != "choice"]
        if ranged:
            raise ConfigError(f"a grid needs values for {', '.join(ranged)}: --param NAME=v1,v2,...")
        return _seeded_by_trial(optuna.samplers.GridSampler({n: spec for n, (_, spec) in space.items()}, seed=seed),
                                seed)
    raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {kind!r}")


def _seeded_by_trial(sampler, seed: int):
    """``sampler`` drawing each trial from ``(seed, the trial's number)``: the same values for the same sweep,
    and other values for every trial of a study that workers share (the storage numbers trials across them).
    Two workers seeded alike drew the same settings, trial for trial (found 2026-12-07: 12 trials, 7 settings).
    Reseeds the random states Optuna's samplers keep (``_rng``; TPE's start-up sampler too), where they have them."""
    before = sampler.before_trial

    def before_trial(study, trial) -> None:
        state = int(np.random.SeedSequence([int(seed), int(trial.number)]).generate_state(1)[0])
        for obj in (sampler, getattr(sampler, "_random_sampler", None)):
            rng = getattr(getattr(obj, "_rng", None), "rng", None)
            if rng is not None:
                rng.seed(state)
        before(study, trial)

    sampler.before_trial = before_trial
    return sampler


def storage_url(storage: str | Path) -> str:
    """A database URL for Optuna: a path becomes a SQLite file."""
    s = str(storage)
    return s if "://" in s else f"sqlite:///{Path(s).resolve()}"


def _shown(storage: str | Path) -> str:
    """The storage as a message may show it: a database URL without its password."""
    s = str(storage)
    if "://" not in s:
        return s
    try:
        from sqlalchemy.engine import make_url

        return make_url(s).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy can parse: show its scheme only
        return s.split("://", 1)[0] + "://..."


def open_storage(storage: str | Path):
    """Optuna's storage for ``storage`` (a SQLite file or a database URL), or one line saying why
    it cannot be used and what to do: a file that is not a SQLite database, or one of another
    program (its tables are not touched), a URL without its database driver, a server that does not
    answer."""
    import sqlite3

    import optuna
    import sqlalchemy.exc

    where = _shown(storage)
    if "://" not in str(storage) and Path(storage).is_file():
        try:  # read-only, so that nothing is written into a file that is not a sweep's
            with sqlite3.connect(f"file:{Path(storage).resolve()}?mode=ro", uri=True) as con:
                tables = {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}
        except sqlite3.DatabaseError:
            raise ConfigError(f"the sweep's study file {where} is not a SQLite database: give a new file name "
                              f"(--storage), or the file an earlier sweep wrote") from None
        if tables and "studies" not in tables:
            raise ConfigError(f"the sweep's study file {where} is a database of something else (no Optuna study "
                              f"in it); it was left as it is: give a new file name (--storage)")
    elif "://" not in str(storage):  # SQLite makes no folders: a new study file's are made here, when it is opened
        try:
            Path(storage).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot make the folder of the sweep's study file {where} "
                              f"({(err.strerror or type(err).__name__).lower()}): give another place (--storage)") from None
    try:
        with warnings.catch_warnings():  # the heartbeat is marked experimental; it is what makes resuming safe
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(storage_url(storage), heartbeat_interval=HEARTBEAT_SECONDS,
                                              grace_period=3 * HEARTBEAT_SECONDS)
    except (ImportError, sqlalchemy.exc.NoSuchModuleError):
        scheme = str(storage).split("://", 1)[0]
        raise ConfigError(f"no database driver for {scheme!r} is installed here, so the sweep cannot keep its "
                          f"study at {where}: install the driver (e.g. psycopg2-binary for PostgreSQL, PyMySQL "
                          f"for MySQL), or give a SQLite file name (--storage sweep.db)") from None
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(f"--storage {where} is not a database URL (dialect://user:password@host/database) "
                          f"nor a file name") from None
    except sqlalchemy.exc.DBAPIError as err:
        reason = str(getattr(err, "orig", err)).splitlines()[0][:160] if getattr(err, "orig", None) else "no answer"
        raise ConfigError(f"cannot open the sweep's study at {where} ({reason}): check that the database can be "
                          f"reached and written, or give a SQLite file name (--storage sweep.db)") from None
    except RuntimeError as err:  # e.g. a study file of an older Optuna, which names its upgrade command
        raise ConfigError(f"cannot open the sweep's study at {where}: {str(err).splitlines()[0][:200]}") from None


SETUP_FIELDS = ("label_key", "batch_key", "n_top_genes", "hvg_flavor", "hvg_from", "max_epochs", "val_fraction",
                "min_cells_per_class", "min_shared_genes", "accept", "max_train_seconds", "qc")


def sweep_setup(opts, objective: str, reference, query, space: dict[str, tuple[str, Any]] | None = None) -> dict[str, Any]:
    """What a sweep's trials must share to be compared: the model, the objective, the options that
    change the data or the training besides the swept values, the fixed hyper-parameters, the reference
    and query (cells and genes by name) and what is swept (``space``: a study resumed with other ``--param``
    added trials of another search to it, found 2026-12-07); ``digest`` sums them up."""
    import hashlib
    import json

    def data(a) -> str:
        h = hashlib.sha1(f"{a.n_obs}x{a.n_vars}".encode())
        for names in (a.obs_names, a.var_names):
            h.update("\0".join(map(str, names)).encode("utf-8", "surrogatepass"))
        return f"{a.n_obs:,} cells x {a.n_vars:,} genes ({h.hexdigest()[:10]})"

    setup = {"model": opts.model, "objective": objective, **{k: getattr(opts, k) for k in SETUP_FIELDS},
             "hparams": json.dumps(opts.hparams, sort_keys=True, default=str),
             "reference": data(reference), "query": data(query),
             **({"swept": json.dumps(space, sort_keys=True, default=str)} if space is not None else {})}
    setup["digest"] = hashlib.sha1(json.dumps(setup, sort_keys=True, default=str).encode()).hexdigest()
    return setup


def _same_setup(study, setup: dict[str, Any], name: str, storage: str | Path) -> None:
    """Record ``setup`` on a new study; refuse to resume one started with another (an older study
    without a record is checked on its model and objective only)."""
    was = dict(study.user_attrs.get("setup") or {})
    was.setdefault("model", study.user_attrs.get("model", setup["model"]))
    was.setdefault("objective", study.user_attrs.get("objective", setup["objective"]))
    differ = [k for k in setup if k != "digest" and k in was and was[k] != setup[k]]
    if differ and study.get_trials(deepcopy=False):
        said = "; ".join(f"{k} {was[k]!r}, now {setup[k]!r}" for k in differ[:4])
        raise ConfigError(f"the sweep {name!r} in {_shown(storage)} was started with other settings or data ({said}), "
                          f"so its trials would not compare with these: give this sweep another name (--study), or "
                          f"resume that one as it was started")
    study.set_user_attr("setup", setup)
    study.set_user_attr("model", setup["model"])
    study.set_user_attr("objective", setup["objective"])


def _nll(model, val) -> float:
    from .calibration import softmax

    p = softmax(model.logits(val.X), model.temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(val.y)), val.y], 1e-12, 1.0))))


def run_sweep(reference, query, opts, *, storage: str | Path, study_name: str, n_trials: int,
              objective: str = "val_accuracy", sampler: str = "tpe", params: Sequence[str] = (),
              runs_dir: str | Path | None = None, owner: str | None = None, callbacks: Sequence[Any] = (),
              log: Callable[[str], None] = lambda s: None, on_trial: Callable[[dict], None] | None = None,
              on_run: Callable[[Any, Any], None] | None = None, name_by_setup: bool = False):
    """Run (or resume) the sweep; returns the Optuna study. ``reference`` / ``query``: paths or
    AnnData, read once. ``on_trial`` gets each finished trial's row (see :func:`trial_rows`);
    ``on_run(run_dir, options)`` each trial's new run directory (with ``runs_dir``) before it trains.
    A study resumes only with the model, objective, data and settings it was started with
    (:func:`sweep_setup`; otherwise a :class:`ConfigError`); ``name_by_setup`` appends a digest of
    them to ``study_name`` instead, so that other data or settings start a study of their own."""
    import dataclasses

    import optuna

    from .data import read_dataset
    from .pipeline import annotate, log_warnings, prepare_data, train_model
    from .runs import RunDir, claim_run, read_json, release_run, write_json_atomic

    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if n_trials < 1:
        raise ConfigError("a sweep needs at least one trial (--trials)")
    space = search_space(opts.model, params)
    _sampler(sampler, space, opts.seed)  # settings it cannot use are one line before the data is read
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = open_storage(storage)  # before the data is read: a storage that cannot be used is one line now
    ref = reference if not isinstance(reference, (str, Path)) else read_dataset(reference, name="reference")
    qry = query if not isinstance(query, (str, Path)) else read_dataset(query, name="query")
    setup = sweep_setup(opts, objective, ref, qry, space)
    if name_by_setup:  # the app: the same sweep on other data or settings is another study
        study_name = f"{study_name}-{setup['digest'][:8]}"
    with warnings.catch_warnings():  # the heartbeat is marked experimental; it is what makes resuming safe
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(study_name=study_name, storage=rdb, load_if_exists=True,
                                    direction=OBJECTIVES[objective][0], sampler=_sampler(sampler, space, opts.seed))
        optuna.storages.fail_stale_trials(study)
    # resumed, each trial is drawn from its own number (_seeded_by_trial): not the first trials' values again
    _same_setup(study, setup, study_name, storage)
    prepared = None if runs_dir is not None else prepare_data(ref, qry, opts)
    if prepared is not None:
        log_warnings(prepared.report, log)

    def complete() -> int:
        return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))

    def run_trial(trial) -> float:
        hp = _suggest(trial, space)
        o = dataclasses.replace(opts, hparams={**opts.hparams, **hp})
        log(f"trial {trial.number}: {', '.join(f'{k}={v}' for k, v in hp.items())}")
        try:
            return scored(trial, o, hp)
        except ConfigError as err:  # these settings cannot run (optuna records the trial failed, goes on)
            log(f"trial {trial.number} failed: {err}")
            trial.set_user_attr("error", str(err))
            raise

    def scored(trial, o, hp) -> float:
        if runs_dir is not None:
            rd = RunDir.create(runs_dir, model=o.model, owner=owner)
            if on_run is not None:
                on_run(rd, o)
            write_json_atomic(rd.file(SWEEP_FILE), {"study": study_name, "storage": storage_url(storage), "trial": trial.number,
                                         "objective": objective, "params": hp})
            claim_run(rd)  # a thread of this process works on it (the app's sweeps run in the server's threads)
            try:
                res = annotate(ref, qry, o, run_dir=rd, callbacks=callbacks)
            finally:
                release_run(rd)  # (a trial that could not write its last state is then interrupted, not running)
            model, val = res.model, res.prepared.val
            trial.set_user_attr("run_id", rd.id)
        else:
            model = train_model(prepared, o, callbacks)
            val = prepared.val
        cal = model.calibration
        values = {"val_accuracy": float(cal["val_accuracy"]), "val_ece": float(cal["ece_after"]),
                  "val_nll": _nll(model, val)}
        if objective == "loo_auroc":
            values["loo_auroc"] = _loo_auroc(res.prepared if runs_dir is not None else prepared, o, callbacks)
        for k, v in values.items():
            trial.set_user_attr(k, v)
        if runs_dir is not None:  # the run says which sweep it belongs to and what it scored
            write_json_atomic(rd.file(SWEEP_FILE), {**read_json(rd.file(SWEEP_FILE), {}), "values": values,
                                                    "value": values[objective]})
        if not math.isfinite(values[objective]):
            raise optuna.TrialPruned(f"{objective} is not finite")
        return values[objective]

    def after(study, frozen) -> None:
        if on_trial is not None and frozen.state == optuna.trial.TrialState.COMPLETE:
            on_trial(trial_row(frozen))

    remaining = n_trials - complete()
    if remaining <= 0:
        log(f"the sweep {study_name!r} already has {n_trials} finished trials")
        return study
    log(f"sweep {study_name!r}: {remaining} of {n_trials} trials to run ({objective}, {sampler}; "
        f"{', '.join(space)})")
    quiet = logging.getLogger("optuna.study._optimize")  # its failed-trial lines carry tracebacks
    quiet.addFilter(_without_traceback)
    try:
        # the study's finished trials count, whichever worker ran them (two workers asked for 6 each made 12)
        enough = optuna.study.MaxTrialsCallback(n_trials, states=(optuna.trial.TrialState.COMPLETE,))
        study.optimize(run_trial, n_trials=remaining, callbacks=[after, enough], catch=(ConfigError,))
    finally:
        quiet.removeFilter(_without_traceback)
    if not complete():  # (the command line and the app's job say it, not an empty table)
        why = next((t.user_attrs["error"] for t in reversed(study.trials) if "error" in t.user_attrs), None)
        raise ConfigError("no trial of the sweep finished" + (f"; the last one failed: {why}" if why else ""))
    return study


def _without_traceback(record: logging.LogRecord) -> bool:
    """Optuna's lines for a failed trial: none for settings that cannot run (the sweep has said
    why in one line), and any other without its traceback (the command line says it in one line)."""
    err = record.exc_info[1] if record.exc_info else None
    if isinstance(err, ConfigError) or record.getMessage().endswith("failed with value None."):
        return False
    record.exc_info, record.exc_text = None, None
    return True


def _loo_auroc(prepared, opts, callbacks: Sequence[Any]) -> float:
    """The ``loo_auroc`` objective: median AUROC of the model's own novelty score over the
    reference's :data:`LOO_TYPES` largest types, each left out in turn (``nan`` when none could be
    scored)."""
    from .compare import leave_one_class_out

    y = np.asarray(prepared.train.y)
    counts = np.bincount(y[y >= 0], minlength=len(prepared.classes))
    if (counts > 0).sum() < 3:  # leaving one out must leave at least two types to classify
        raise ConfigError("the loo_auroc objective needs a reference with at least 3 cell types")
    largest = [prepared.classes[i] for i in np.argsort(-counts, kind="stable")[:LOO_TYPES]]
    df = leave_one_class_out(prepared, opts.model, largest, seed=opts.seed, device=opts.device,
                             hparams=opts.hparams, max_epochs=opts.max_epochs, accept=opts.accept,
                             callbacks=[cb for cb in callbacks if hasattr(cb, "should_stop")])
    vals = df["auroc_model_score"].to_numpy(dtype=float)
    return float(np.nanmedian(vals)) if np.isfinite(vals).any() else float("nan")


def trial_row(t) -> dict[str, Any]:
    """One finished trial as a flat row: number, state, value, parameters and metrics."""
    return {"trial": t.number, "state": t.state.name, "value": t.value, **{f"param {k}": v for k, v in t.params.items()},
            **{k: v for k, v in t.user_attrs.items()}}


def trial_rows(study) -> list[dict[str, Any]]:
    return [trial_row(t) for t in study.get_trials(deepcopy=False)]
