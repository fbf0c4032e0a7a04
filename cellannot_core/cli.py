"""Command line: ``python -m cellannot_core annotate|train|predict|models|benchmark``.

Bad input exits with status 2 and one line on stderr (what is wrong, what to do); no traceback
unless ``--debug``.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ._constants import DEFAULT_HVG_FLAVOR, DEFAULT_MIN_SHARED_GENES, DEFAULT_MODEL, DEFAULT_N_TOP_GENES, HVG_FLAVORS

if TYPE_CHECKING:
    from .pipeline import AnnotateOptions


def _log(msg: str) -> None:
    """One line on stderr, without control or format characters: the log names classes and genes from the files
    (a saved model's class "B\\x1b[31m..." coloured the terminal and one holding a newline faked a second line,
    found 2026-12-07); a tab or line break is a space."""
    import unicodedata

    text = str(msg)
    if not text.isprintable():
        text = "".join((" " if c in "\t\n\r" else "") if unicodedata.category(c)[0] == "C" else c for c in text)
    try:
        print(text, file=sys.stderr, flush=True)
    except BrokenPipeError:  # the log's reader stopped (`2>&1 | grep -m1 'run directory'`): the work goes on,
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())  # unlogged (it failed the run, 2026-12-07)


#: options naming a file or folder: a leading ~ is the home folder for each (a shell expands it only where it
#: stands alone; `--out=~/o.h5ad` wrote into a folder named "~", found 2026-12-07)
PATH_OPTIONS = ("reference", "query", "out", "runs_dir", "save_model", "model_dir", "storage")


def _device(text: str) -> str:
    """``--device``'s value as torch spells it; whether this machine has it is checked by :func:`main`
    before the command reads anything."""
    from .errors import ConfigError
    from .training.device import device_name

    try:
        return device_name(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _hparams(pairs: Sequence[str]) -> dict[str, str]:
    from .errors import ConfigError

    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise ConfigError(f"--hparam takes NAME=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


BATCH_KEY_HELP = ("optional obs column naming each cell's sample or batch (reference, query or both): the "
                  "generative models' decoder is conditioned on it, so donors or conditions inside a dataset do "
                  "not look novel")


def _add_common(p: argparse.ArgumentParser, *, query_required: bool, labels: bool = True) -> None:
    """The options of the commands that train; ``labels`` False (``train``): none of those that only a labelled
    run uses (--query-label-key, --threshold, --runs-dir: train accepted them and did nothing with them, or
    checked the reference for the query's label column, until 2026-12-07)."""
    p.add_argument("--reference", required=True,
                   help="labelled reference (.h5ad, .h5mu, .loom, .h5, 10x folder/.zip/.tar.gz, .csv/.tsv)")
    p.add_argument("--query", required=query_required, help="query cells to label (same formats)")
    for role in ("reference", "query"):
        _add_orientation(p, role)
    p.add_argument("--label-key", required=True, help="obs column of the reference holding the cell types")
    if labels:
        p.add_argument("--query-label-key", default=None, help="optional query obs column with known labels (for metrics)")
    p.add_argument("--batch-key", default=None, help=BATCH_KEY_HELP)
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name (see `models`); default: %(default)s")
    p.add_argument("--hparam", action="append", default=[], metavar="NAME=VALUE", help="model hyper-parameter (repeatable)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the training, the validation split and every sample drawn (default: %(default)s)")
    p.add_argument("--device", default="auto", type=_device, help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--max-epochs", type=int, default=None,
                   help="stop training after this many epochs (default: the model's own budget, with early stopping)")
    p.add_argument("--n-top-genes", type=int, default=DEFAULT_N_TOP_GENES, help="highly variable genes chosen on the reference (default %(default)s)")
    p.add_argument("--hvg-flavor", default=DEFAULT_HVG_FLAVOR, choices=HVG_FLAVORS,
                   help="how genes are ranked: scanpy's 'seurat_v3' (counts; the default) or 'seurat' (log values, "
                        "mean bins: ranks the most expressed markers, e.g. hormones, at one fixed place)")
    p.add_argument("--min-cells-per-class", type=int, default=10, help="smaller reference classes are dropped (default %(default)s)")
    p.add_argument("--min-shared-genes", type=int, default=DEFAULT_MIN_SHARED_GENES,
                   help=f"refuse when fewer genes are shared (default {DEFAULT_MIN_SHARED_GENES}, eased to half the "
                        "smaller gene count for a small panel; another value is required as given)")
    p.add_argument("--accept", type=float, default=0.95,
                   help="share of reference validation cells accepted; sets the Unknown threshold (default %(default)s)")
    if labels:
        p.add_argument("--threshold", type=float, default=None, help="override the novelty-score threshold")
        p.add_argument("--runs-dir", default=None, help="also write a full run directory here (reopen it in the app)")
    p.add_argument("--layer", default=None, help=LAYER_HELP)


LAYER_HELP = ("the .h5ad layer holding the raw counts (as scvi-tools' layer=), e.g. umis, where X holds other values; "
              "a dataset without it has its counts found as usual (X, layers['counts'] or .raw). The files are then "
              "read whole")
ORIENTATIONS = ("auto", "cells_x_genes", "genes_x_cells")


def _add_orientation(p: argparse.ArgumentParser, role: str) -> None:
    p.add_argument(f"--{role}-orientation", default="auto", choices=ORIENTATIONS,
                   help=f"a {role} table only: whether its rows are cells or genes (default: guessed from its names, "
                        "and the log says how it was read)")


def _datasets(args) -> tuple[Any, Any]:
    """The reference and the query (None without one) as the workflow reads them: paths, or with
    ``--layer`` both read here with their counts taken from that layer (:func:`~.data.values.counts_layers`)."""
    ref, qry = (_dataset(args.reference, "reference", args.reference_orientation),
                _dataset(args.query, "query", args.query_orientation))
    if args.layer is None:
        return ref, qry
    from .data import read_dataset
    from .data.values import counts_layer, counts_layers

    ref = ref if not isinstance(ref, (str, Path)) else read_dataset(ref, name="reference")
    if qry is None:
        return counts_layer(ref, args.layer, "reference"), None
    qry = qry if not isinstance(qry, (str, Path)) else read_dataset(qry, name="query")
    return counts_layers(ref, qry, args.layer, _log)


def _dataset(path: Any, role: str, orientation: str) -> Any:
    """The path, for the workflow to read as it reads any file; a table whose orientation the user set
    is read here with it."""
    if path is None or orientation == "auto":
        return path
    from .data import read_dataset

    return read_dataset(path, name=role, orientation=orientation)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="cellannot",
                                 description="Single-cell label transfer with calibrated confidence and novelty detection.")
    ap.add_argument("--version", action="version", version=f"cellannot {__version__}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("annotate", help="train on the reference and label the query")
    _add_common(a, query_required=True)
    a.add_argument("--out", required=True, help="annotated query .h5ad to write")
    a.add_argument("--save-model", default=None, help="also save the trained model bundle to this directory")
    t = sub.add_parser("train", help="train on the reference and save a model bundle (query optional)")
    _add_common(t, query_required=False, labels=False)
    t.add_argument("--save-model", required=True, help="directory for the model bundle")
    sw = sub.add_parser("sweep", help="search a model's hyper-parameters with Optuna (resumable)")
    _add_common(sw, query_required=True)
    sw.add_argument("--trials", type=int, default=20, help="finished trials the sweep should have (default %(default)s)")
    sw.add_argument("--objective", default="val_accuracy", help="val_accuracy, val_ece, val_nll or loo_auroc (none needs query labels; loo_auroc "
                    "trains 3 more models per trial: the novelty AUROC with a reference type left out; default %(default)s)")
    sw.add_argument("--sampler", default="tpe", choices=("tpe", "random", "grid"),
                    help="how trials pick values: Optuna's TPE, at random, or every combination of given values (default %(default)s)")
    sw.add_argument("--param", action="append", default=[], metavar="NAME[=v1,v2]",
                    help="a hyper-parameter to vary: its registry range, or these values (repeatable; default: "
                         "the model's main ones)")
    sw.add_argument("--storage", default="sweep.db", help="SQLite file or any database URL Optuna supports "
                                                           "(several machines can share one sweep; default %(default)s in the current folder)")
    sw.add_argument("--study", default=None, help="study name (default: sweep-<model>); the same name resumes it")
    pr = sub.add_parser("predict", help="label a query with a saved model bundle")
    pr.add_argument("--model", required=True, dest="model_dir",
                    help="model bundle directory (from train / --save-model), a run's folder, or the app's model "
                         "download (.zip)")
    pr.add_argument("--query", required=True, help="query cells to label (the formats annotate reads)")
    _add_orientation(pr, "query")
    pr.add_argument("--out", required=True, help="annotated query .h5ad to write")
    pr.add_argument("--device", default="auto", type=_device, help="auto (CUDA when present), cpu, cuda or cuda:N")
    pr.add_argument("--threshold", type=float, default=None,
                    help="override the novelty-score threshold (default: the model's own, widened for the query's shift)")
    pr.add_argument("--adapt", action="store_true",
                    help="train the model again on the reference cells it kept, with this query unlabelled, before "
                         "labelling it (as annotate trains; minutes): a model that learns its latent space from the "
                         "query too finds the query's types the reference lacks more often")
    pr.add_argument("--runs-dir", default=None,
                    help="also write a run directory here (reopen it in the app): --model must then be a finished "
                         "run's folder, whose validation scores and reference cells the new run shows")
    pr.add_argument("--layer", default=None, help="the query .h5ad's layer holding the raw counts, e.g. umis, where X "
                    "holds other values (the file is then read whole)")
    pr.add_argument("--query-label-key", default=None,
                    help="optional query obs column with known labels: the log and the output's run card get the "
                         "metrics of the labels against them (as annotate's)")
    sub.add_parser("models", help="list the models and their hyper-parameters")
    ru = sub.add_parser("runs", help="list the runs of a runs folder (the app's and the command line's) with their "
                                     "size on disk, and delete old ones")
    ru.add_argument("--runs-dir", default=None, help="the runs folder (default: $CELLANNOT_RUNS or ./runs)")
    ru.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                    help="only the runs created more than DAYS days ago")
    ru.add_argument("--state", action="append", default=[], choices=RUN_STATES,
                    help="only the runs in this state (repeatable)")
    ru.add_argument("--delete", action="store_true",
                    help="delete the runs listed (needs --older-than or --state; a run still training is kept)")
    ap_app = sub.add_parser("app", help="serve the web app (on 127.0.0.1 unless told otherwise)")
    ap_app.add_argument("--port", type=int, default=8501, help="port to serve on (default %(default)s)")
    ap_app.add_argument("--address", default="127.0.0.1",
                        help="listen address; anything but 127.0.0.1 serves a lab: read the README's security "
                             "section (and SECURITY.md) first (set CELLANNOT_DATA_ROOT to allow reading files by server path)")
    ap_app.add_argument("--runs-dir", default=None, help="where runs are kept (default: $CELLANNOT_RUNS or ./runs)")
    b = sub.add_parser("benchmark", help="train several models on one reference/query pair and compare them")
    b.add_argument("--reference", required=True, help="labelled reference (same formats as annotate)")
    b.add_argument("--query", required=True, help="query cells (with --query-label-key the metrics use its labels)")
    for role in ("reference", "query"):
        _add_orientation(b, role)
    b.add_argument("--layer", default=None, help=LAYER_HELP)
    b.add_argument("--label-key", required=True, help="obs column of the reference holding the cell types")
    b.add_argument("--query-label-key", default=None,
                   help="query obs column with known labels; without it models are scored on reference validation")
    b.add_argument("--batch-key", default=None, help=BATCH_KEY_HELP)
    b.add_argument("--models", nargs="+", required=True, metavar="MODEL", help="models to compare (see `models`)")
    b.add_argument("--hparam", action="append", default=[], metavar="MODEL.NAME=VALUE",
                   help="hyper-parameter of one model, e.g. tabnet.n_steps=4 (repeatable)")
    b.add_argument("--seed", type=int, default=0, help="random seed of every model's training (default 0)")
    b.add_argument("--device", default="auto", type=_device, help="auto (CUDA when present), cpu, cuda or cuda:N")
    b.add_argument("--max-epochs", type=int, default=None, help="cap the epochs of models that have epochs")
    b.add_argument("--n-top-genes", type=int, default=DEFAULT_N_TOP_GENES,
                   help=f"highly variable genes the models use (default {DEFAULT_N_TOP_GENES})")
    b.add_argument("--hvg-flavor", default=DEFAULT_HVG_FLAVOR, choices=HVG_FLAVORS, help="as annotate's")
    b.add_argument("--min-cells-per-class", type=int, default=10,
                   help="reference types with fewer cells are left out, with a warning (default 10)")
    b.add_argument("--min-shared-genes", type=int, default=DEFAULT_MIN_SHARED_GENES,
                   help="refuse a pair sharing fewer genes (as annotate's)")
    b.add_argument("--accept", type=float, default=0.95,
                   help="share of the reference's held-out cells each model's Unknown threshold keeps (default 0.95)")
    b.add_argument("--out", default=None, help="write the table to this .csv")
    return ap


def _options(args) -> "AnnotateOptions":
    from .pipeline import AnnotateOptions

    return AnnotateOptions(label_key=args.label_key, query_label_key=getattr(args, "query_label_key", None),
                           model=args.model,
                           hparams=_hparams(args.hparam), seed=args.seed, device=args.device,
                           max_epochs=args.max_epochs, n_top_genes=args.n_top_genes,
                           min_cells_per_class=args.min_cells_per_class, min_shared_genes=args.min_shared_genes,
                           accept=args.accept, threshold=getattr(args, "threshold", None), batch_key=args.batch_key,
                           hvg_flavor=args.hvg_flavor)


def _summary(res) -> None:
    card = res.card
    _log(f"labelled {card['n_query']} query cells; Unknown: {card['unknown_fraction']:.1%}; "
         f"temperature {card['temperature']:.3f}; threshold {card['rejection']['threshold']:.4g} "
         f"({card['rejection']['method']}" + (", in units of each class's own distances)"
                                              if card['rejection']['method'] == "knn_class" else ")"))


def cmd_annotate(args) -> int:
    from .models import get_spec
    from .pipeline import annotate
    from .runs import RunDir, RunProgress
    from .training import PrintProgress

    opts = _options(args)
    get_spec(opts.model)  # fail fast on a bad model name
    out = Path(args.out)
    if out.suffix != ".h5ad":
        from .errors import ConfigError

        raise ConfigError(f"--out must end in .h5ad, got {str(out)!r}")
    from .pipeline import check_model_folder, check_not_an_input, check_writable

    inputs = {"reference": args.reference, "query": args.query}
    check_not_an_input(out, inputs, what="annotated query")
    try:  # (said of nothing until 2026-12-07: 7.5% of the training cells came out Unknown without a word)
        same = Path(args.reference).resolve() == Path(args.query).resolve()
    except (OSError, RuntimeError):
        same = False
    if same:
        _log("warning: the reference and the query are the same file: its cells are labelled by a model trained on "
             "them, so the labels say how well it learnt them, and the Unknown share is about what --accept leaves out "
             f"of held-out reference cells ({1 - args.accept:.0%}), not a measure of novelty")
    check_writable(out, what="annotated query")  # before training, not after
    for folder, what in ((args.runs_dir, "runs folder"), (args.save_model, "saved model")):
        if folder:
            check_not_an_input(folder, inputs, what=what)
    if args.runs_dir:
        check_writable(args.runs_dir, what="runs folder", folder=True)
    if args.save_model:
        check_model_folder(args.save_model)  # (writable, and not over files of another kind)
    callbacks = [PrintProgress(_log)]
    rd = None
    if args.runs_dir:
        rd = RunDir.create(args.runs_dir, model=opts.model)
        _record_names(rd, reference=args.reference, query=args.query)
        callbacks.append(RunProgress(rd))
        _log(f"run directory: {rd.path}")
    ref, qry = _datasets(args)
    res = annotate(ref, qry, opts, out=out, run_dir=rd, save_model=args.save_model, callbacks=callbacks, log=_log)
    _summary(res)
    _log(f"wrote {out}")
    return 0


def _record_names(rd, **paths: Any) -> None:
    """The file names of a run's datasets (no folders: the app may list the run), for the app's Runs table,
    which listed a command-line run with empty reference and query columns (found 2026-12-07). Only names:
    a request without options is not one the app can run again."""
    from ._constants import RunFiles
    from .runs import write_json_atomic

    write_json_atomic(rd.file(RunFiles.REQUEST), {"names": {k: Path(str(v)).name for k, v in paths.items() if v}})


def cmd_train(args) -> int:
    from .data import read_dataset
    from .pipeline import bundle_info, log_warnings, prepare_data, save_bundle, train_model
    from .training import PrintProgress

    from .training import distributed

    args.device = distributed.init_from_env(args.device)  # under torchrun: join the process group
    main_process = distributed.is_main()
    opts = _options(args)
    if main_process:  # (rank 0 writes the bundle)
        from .pipeline import check_model_folder, check_not_an_input

        check_not_an_input(args.save_model, {"reference": args.reference, "query": args.query},  # (it wrote into a
                           what="saved model")  # 10x query folder until 2026-12-07, as annotate never did)
        check_model_folder(args.save_model)
    ref, qry = _datasets(args)
    ref = ref if not isinstance(ref, (str, Path)) else read_dataset(ref, name="reference")
    alone = qry is None
    qry = ref if qry is None else qry if not isinstance(qry, (str, Path)) else read_dataset(qry, name="query")
    prepared = prepare_data(ref, qry, opts)
    if main_process:
        log_warnings(prepared.report, _log, query=not alone)
    model = train_model(prepared, opts, [PrintProgress(_log)] if main_process else [])
    if not main_process:  # rank 0 writes the bundle
        return 0
    d = save_bundle(Path(args.save_model), model, bundle_info(model, prepared, opts))
    cal = model.calibration
    _log(f"validation accuracy {cal.get('val_accuracy', float('nan')):.4f}, ECE {cal.get('ece_after', float('nan')):.4f}; "
         f"saved model to {d}")
    return 0


def cmd_sweep(args) -> int:
    from .sweep import OBJECTIVES, run_sweep, trial_rows

    opts = _options(args)
    if args.objective not in OBJECTIVES:
        from .errors import ConfigError

        raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {args.objective!r}")
    from .pipeline import check_writable

    if "://" not in str(args.storage):  # a SQLite file (a database URL is Optuna's to reach)
        check_writable(args.storage, what="sweep's study file")
    if args.runs_dir:
        check_writable(args.runs_dir, what="runs folder", folder=True)

    def show(row: dict) -> None:
        params = ", ".join(f"{k[6:]}={v:.4g}" if isinstance(v, float) else f"{k[6:]}={v}"
                           for k, v in row.items() if k.startswith("param "))
        _log(f"trial {row['trial']}: {args.objective} {row['value']:.4f}  ({params})"
             + (f"  run {row['run_id']}" if row.get("run_id") else ""))

    study = run_sweep(*_datasets(args), opts, storage=args.storage,
                      study_name=args.study or f"sweep-{opts.model}", n_trials=args.trials, objective=args.objective,
                      sampler=args.sampler, params=args.param, runs_dir=args.runs_dir, log=_log, on_trial=show)
    done = [r for r in trial_rows(study) if r["state"] == "COMPLETE"]
    best = study.best_trial if done else None
    if best is not None:
        run = best.user_attrs.get("run_id")  # where its model is, or how to train it (found 2026-12-07: not said)
        _log(f"best of {len(done)} trials: trial {best.number}, {args.objective} {best.value:.4f}, "
             + ", ".join(f"{k}={v}" for k, v in best.params.items())
             + (f"; its run and model: {Path(args.runs_dir) / run}" if run and args.runs_dir else
                "; train it: cellannot train ... " + " ".join(f"--hparam {k}={v}" for k, v in best.params.items())))
    return 0


def cmd_predict(args) -> int:
    from .pipeline import check_writable
    from .streaming import predict_file

    check_writable(args.out, what="annotated query")  # (its name and that it is no input: predict_file's)
    if args.runs_dir:
        return _predict_into_run(args)
    res = predict_file(args.model_dir, args.query, out=Path(args.out), device=args.device, threshold=args.threshold,
                       adapt=args.adapt, query_label_key=args.query_label_key, orientation=args.query_orientation,
                       layer=args.layer, log=_log)
    _log(f"labelled {res['n_obs']} cells; Unknown: {res['unknown_fraction']:.1%}; wrote {args.out}")
    return 0


def _predict_into_run(args) -> int:
    """``predict --runs-dir``: the query labelled with a finished run's model into a new run there (as
    the app's *Label with a finished run's model*, :func:`~.relabel.label_into_run`), which the app
    reopens, and the annotated query written to ``--out`` as ``predict`` writes it."""
    import shutil

    from ._constants import RunFiles
    from .data.stream import read_query, stream_source
    from .errors import ConfigError
    from .pipeline import check_not_an_input, check_writable, write_atomic
    from .relabel import label_into_run
    from .runs import RunDir

    model = Path(args.model_dir)
    if not (model / RunFiles.STATUS).is_file():
        raise ConfigError("--runs-dir needs --model to be a run's folder (written by annotate --runs-dir or the app): "
                          "the new run takes its model's validation scores and reference cells from it; without "
                          "--runs-dir any saved model labels the query")
    if args.adapt:
        raise ConfigError("--adapt trains the model again, and --runs-dir keeps the model as it is: to train it with "
                          "this query into a run, use annotate --runs-dir with the run's reference")
    source = RunDir.open(model.resolve().parent, model.resolve().name)
    if source.status().get("state") != "done":
        raise ConfigError(f"run {source.id} has not finished (it is {source.status().get('state')}): label with a "
                          "finished run's model")
    if not (model / RunFiles.MODEL_DIR / "bundle.json").is_file():  # (told it was no run's folder, found 2026-12-07)
        raise ConfigError(f"run {source.id} finished, but its saved model ({RunFiles.MODEL_DIR}/bundle.json) is missing: "
                          "label with another finished run's model, or train again")
    check_not_an_input(args.out, {"query": args.query, "saved model": args.model_dir}, what="annotated query")
    check_writable(args.runs_dir, what="runs folder", folder=True)
    if args.layer is not None:  # read whole, its counts from that layer
        from .data import read_dataset
        from .data.values import counts_layer

        query = counts_layer(read_dataset(args.query, name="query", orientation=args.query_orientation), args.layer,
                             "query")
    else:
        query = (read_query(args.query) if args.query_orientation == "auto" else
                 _dataset(args.query, "query", args.query_orientation))
    rd = RunDir.create(args.runs_dir, model=str(source.status().get("model") or "run"))
    _record_names(rd, query=args.query)
    _log(f"run directory: {rd.path}")
    preds, card = label_into_run(source, query, rd, query_label_key=args.query_label_key, device=args.device,
                                 threshold=args.threshold, log=_log)
    src, out = stream_source(query), Path(args.out)
    if src is None:  # the run's annotated query is the whole query
        write_atomic(out, lambda tmp: shutil.copyfile(rd.file(RunFiles.ANNOTATED), tmp))
    else:  # the run keeps the annotations; --out gets the whole file with them, its matrices copied
        from .streaming import write_annotations_file

        write_annotations_file(Path(src["path"]), out, preds, card)
    _log(f"labelled {len(preds.label)} cells; Unknown: {card['unknown_fraction']:.1%}; wrote {out} and run {rd.id}")
    return 0


def cmd_models(args) -> int:
    from .models import MODELS, model_names

    from .novelty import OOD_METHODS, score_help

    for name in model_names():
        s = MODELS[name]
        print(f"{name}{' (default)' if name == DEFAULT_MODEL else ''}: {s.description}")
        for k, h in s.hparams.items():
            choices = f" (one of: {', '.join(map(str, h.choices))})" if h.choices is not None else ""
            value = "set from the data, not by --hparam" if h.internal else f"= {h.default!r}"  # (read as a default
            print(f"    {k} {value}  {h.help}{choices}")  # one could set until 2026-12-07)
    print("\nnovelty scores (the ood_score hyper-parameter; every run computes them all):")
    for m in OOD_METHODS:
        print(f"    {m}: {score_help(m)}")
    return 0


def cmd_benchmark(args) -> int:
    from .compare import compare_models
    from .errors import ConfigError
    from .models import get_spec, resolve_hparams
    from .pipeline import AnnotateOptions, check_not_an_input, check_writable, log_warnings, prepare_data, write_atomic
    from .training import PrintProgress

    for name in args.models:  # fail fast: unknown or unavailable models, before reading data
        reason = get_spec(name).unavailable_reason()
        if reason:
            raise ConfigError(f"model {name} is unavailable here: {reason}")
    by_model: dict[str, dict[str, str]] = {}
    for k, v in _hparams(args.hparam).items():
        model, _, name = k.partition(".")
        if not name or model not in args.models:
            raise ConfigError(f"--hparam takes MODEL.NAME=VALUE with MODEL among --models, got {k}={v}")
        by_model.setdefault(model, {})[name] = v
    for model, given in by_model.items():  # a name or value a model cannot take, before any training
        resolve_hparams(model, given)
    if args.out and not args.out.endswith(".csv"):
        raise ConfigError(f"--out must end in .csv, got {args.out}")
    if args.out:
        check_not_an_input(args.out, {"reference": args.reference, "query": args.query}, what="benchmark table")
        check_writable(args.out, what="benchmark table")
    opts = AnnotateOptions(label_key=args.label_key, query_label_key=args.query_label_key, seed=args.seed,
                           n_top_genes=args.n_top_genes, min_cells_per_class=args.min_cells_per_class,
                           min_shared_genes=args.min_shared_genes, accept=args.accept, batch_key=args.batch_key,
                           hvg_flavor=args.hvg_flavor)
    prepared = prepare_data(*_datasets(args), opts)
    log_warnings(prepared.report, _log)
    table = compare_models(prepared, args.models, seed=args.seed, device=args.device, hparams_by_model=by_model,
                           max_epochs=args.max_epochs, accept=args.accept, callbacks=[PrintProgress(_log)], log=_log)
    where = table["evaluated_on"].dropna().unique()
    _log(f"metrics on: {', '.join(where) if len(where) else 'nothing (every model failed)'}")
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", None, "display.precision", 3):
        print(table.to_string(index=False))
    if args.out:
        out = Path(args.out)
        write_atomic(out, lambda tmp: table.to_csv(tmp, index=False))
        _log(f"wrote {out}")
    return 0 if (table["status"] == "ok").any() or table["status"].str.startswith("diverged").any() else 2


def app_script() -> Path:
    """The app's entry ``app.py``: beside this package in a source checkout, else in the installed
    ``cellannot_app`` package. The checkout's first, so that the app served is the one of the core
    running (a second checkout run with ``PYTHONPATH`` served the first's app, found 2026-12-07)."""
    import importlib.util

    from .errors import ConfigError

    root = Path(__file__).resolve().parents[1]  # (an installed copy's is site-packages: not ours without ui/)
    candidates = [root / "app.py"] if (root / "ui" / "jobs.py").is_file() else []
    spec = importlib.util.find_spec("cellannot_app")
    candidates += [Path(p) / "app.py" for p in (spec.submodule_search_locations or [])] if spec else []
    for cand in candidates:
        if cand.is_file():
            return cand
    raise ConfigError("the web app is not installed with this copy of cellannot; install it from the project "
                      "folder with `pip install .`")


def app_command(script: Path, *, address: str, port: int) -> list[str]:
    """``streamlit run`` with the app's own ``.streamlit/config.toml`` given as flags (so the
    settings hold whatever folder the app is started from), then address and port."""
    import tomllib

    options: dict[str, Any] = {}
    cfg_path = script.parent / ".streamlit" / "config.toml"
    if cfg_path.is_file():
        with open(cfg_path, "rb") as fh:
            for section, table in tomllib.load(fh).items():
                options.update({f"{section}.{key}": value for key, value in table.items()})
    options.update({"server.address": address, "server.port": port})
    if "server.maxUploadSize" in options:  # the uploaders' own limit, so a larger body is refused as it arrives
        from .data.io import upload_limit_mb

        options["server.maxUploadSize"] = upload_limit_mb(options["server.maxUploadSize"])
    flags = [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items()]
    return [sys.executable, "-m", "streamlit", "run", str(script), *flags]


def _check_listen(address: str, port: int) -> None:
    """One line, before the server starts, for an address and port it cannot listen on (the
    server's own traceback otherwise, or a line among its logs): out of range, an address this
    machine does not have or cannot resolve, a port in use or reserved."""
    import errno
    import socket

    from .errors import ConfigError

    if not 0 < port < 65536:
        raise ConfigError(f"--port must be from 1 to 65535, got {port}")
    try:
        family, kind, proto, _, where = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError):
        raise ConfigError(f"--address {address!r} is not an address of this machine nor a name it can resolve: "
                          f"give 127.0.0.1 (this machine only) or one of its addresses") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server sets it
        try:
            sock.bind(where)
        except OSError as err:
            why = {errno.EADDRINUSE: f"port {port} is in use on {address} (another app or server): give another "
                                     f"--port, e.g. {port + 1 if port < 65535 else 8501}",
                   errno.EACCES: f"port {port} is reserved for the system: give a port above 1023, e.g. 8501",
                   errno.EADDRNOTAVAIL: f"{address} is not an address of this machine: give 127.0.0.1 or one of "
                                        f"its addresses"}.get(err.errno, f"cannot listen on {address}:{port} "
                                                                      f"({(err.strerror or '').lower()})")
            raise ConfigError(why) from None


def cmd_app(args) -> int:
    env = dict(os.environ)
    if args.runs_dir:
        from .pipeline import check_writable

        check_writable(args.runs_dir, what="runs folder", folder=True)  # said here, not on the first page
        env["CELLANNOT_RUNS"] = str(Path(args.runs_dir).resolve())
    _check_listen(args.address, args.port)
    if args.address not in ("127.0.0.1", "localhost", "::1"):
        _log(f"warning: serving on {args.address}: everyone who can reach it can use the app; see the README's "
             "security section")
    cmd = app_command(app_script(), address=args.address, port=args.port)
    _log(f"serving the app on http://{args.address}:{args.port} (Ctrl+C stops it)")
    sys.stdout.flush()
    # become the server (not its parent): a stop signal sent to `cellannot app` reaches Streamlit itself
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


RUN_STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")


def cmd_runs(args) -> int:
    """``cellannot runs``: what a runs folder holds, run by run (state, model, age, size, whose), and
    the total; with ``--delete`` the runs listed are deleted. A server's admin finds and frees old runs
    (the app keeps every run until its visitor deletes it; found 2026-12-07 by a lab admin's probe)."""
    import time

    from .errors import ConfigError, DataError
    from .runs import RunDir, default_root, folder_bytes, list_runs

    root = Path(args.runs_dir) if args.runs_dir else default_root()
    if args.runs_dir and not root.is_dir():
        raise ConfigError(f"--runs-dir {args.runs_dir!r} is not a folder")
    if args.delete and args.older_than is None and not args.state:
        raise ConfigError("--delete needs --older-than DAYS or --state STATE, so that it never deletes every run by "
                          "accident")
    if args.older_than is not None and not args.older_than >= 0:
        raise ConfigError("--older-than must be a number of days, 0 or more")
    now = time.time()
    every = list_runs(root)
    rows = [r for r in every
            if (not args.state or r["state"] in args.state)
            and (args.older_than is None or now - float(r["created"] or now) > 86400 * args.older_than)]
    total = deleted = n_deleted = 0
    print(f"{'run':44s} {'state':11s} {'model':12s} {'age (days)':>10s} {'MB':>9s}  owner")
    for r in rows:
        size = folder_bytes(root / r["id"])
        total += size
        owner = "command line" if not r.get("owner") else f"visitor {str(r['owner'])[:8]}"
        age = (now - float(r["created"])) / 86400 if r["created"] else float("nan")
        line = f"{r['id']:44s} {str(r['state']):11s} {str(r['model'])[:12]:12s} {age:10.1f} {size / 1e6:9.1f}  {owner}"
        if args.delete:
            try:
                RunDir.open(root, r["id"]).delete()
                deleted += size
                n_deleted += 1
                line += "  deleted"
            except DataError as err:
                line += f"  kept: {err}"
        print(line)
    done = (f"{n_deleted} of {len(rows)} runs deleted, {deleted / 1e6:.1f} MB freed" if args.delete else
            f"{len(rows)} runs listed, {total / 1e6:.1f} MB")
    print(f"{done} (runs folder {root}: {len(every) - n_deleted} runs, {folder_bytes(root) / 1e6:.1f} MB with the "
          "sessions' kept uploads; a run linked in from another disk counts 0 MB here)")
    return 0


COMMANDS = {"annotate": cmd_annotate, "train": cmd_train, "predict": cmd_predict, "sweep": cmd_sweep, "models": cmd_models,
            "benchmark": cmd_benchmark, "app": cmd_app, "runs": cmd_runs}


def _misspelt(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str | None:
    """argparse's message for a misspelt command or option, with the nearest right one: it names a misspelt
    option only after the required ones it then lacks ("the following arguments are required: --reference"
    for ``--refrence``; found 2026-12-07), and never suggests."""
    import difflib

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    words = [w for w in argv if not w.startswith("-")]
    if not words or words[0] not in sub.choices:
        if words and not any(w in ("-h", "--help", "--version") for w in argv):
            near = difflib.get_close_matches(words[0], list(sub.choices), n=1)
            return f"no command {words[0]!r}" + (f": did you mean {near[0]!r}?" if near else "")
        return None
    known = [o for a in sub.choices[words[0]]._actions for o in a.option_strings if o.startswith("--")]
    for w in argv[argv.index(words[0]) + 1:]:  # (the options before the command are the top level's)
        name = w.split("=", 1)[0]
        if not name.startswith("--") or name in known or sum(o.startswith(name) for o in known) == 1:
            continue
        elsewhere = [c for c, p in sub.choices.items() if any(name == o for a in p._actions for o in a.option_strings)]
        near = difflib.get_close_matches(name, known, n=1)
        hint = (f" (it is an option of {', '.join(elsewhere)})" if elsewhere else
                f": did you mean {near[0]}?" if near else "")
        return f"{words[0]} has no option {name[:60]!r}{hint}; cellannot {words[0]} --help lists them"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import CellannotError
    from .errors import Terminated as _Terminated

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    problem = _misspelt(parser, [str(a) for a in argv])
    if problem:
        print(f"cellannot: error: {problem}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    for name in PATH_OPTIONS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, name, os.path.expanduser(value))
    import signal

    if args.command != "app" and threading.current_thread() is threading.main_thread():
        from .errors import raise_terminated  # SIGTERM (timeout, SLURM's scancel, docker stop) as Ctrl-C is

        signal.signal(signal.SIGTERM, raise_terminated)
    from .training.distributed import launched

    if launched() and args.command != "train":
        print(f"error: `{args.command}` runs in one process; under torchrun use `train` (then `predict` with the "
              "saved model)", file=sys.stderr)
        return 2
    try:
        if str(getattr(args, "device", "")).startswith("cuda"):  # a GPU this machine lacks: said before any reading
            from .training.device import resolve_device

            resolve_device(args.device)
        return COMMANDS[args.command](args)
    except CellannotError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except _Terminated:
        print("error: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cellannot models | head`: the reader stopped; nothing is wrong (was "internal error")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # (Python's flush of stdout at exit would fail the same way)
        return 141  # as a command killed by SIGPIPE
    except Exception as err:  # noqa: BLE001 - the user gets one line, --debug shows the traceback
        if args.debug:
            raise
        from .errors import failure_message, is_out_of_memory, write_failure

        if is_out_of_memory(err) or write_failure(err) is not None:  # a full disk too: one line, not a fault
            print(f"error: {failure_message(err)}", file=sys.stderr)
            return 2
        print(f"error: internal error ({type(err).__name__}: {err}); rerun with --debug and report it",
              file=sys.stderr)
        return 1


def main_exit() -> None:
    """The ``cellannot`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
