"""Background training jobs: one thread per run, a process-global job table keyed by run id.

How it works
------------
* :func:`launch` is the one way to run a background job (training runs here, comparisons in
  ``ui.compare``): it registers the job in the process-global table and starts its daemon
  thread; :func:`training_slot` is the one limit on concurrent trainings.
* :func:`start_job` creates a run directory (``RunDir.create``) and launches a :class:`Job`
  (thread + :class:`~cellannot_core.training.CancelToken`) under the run id, running
  :func:`cellannot_core.pipeline.annotate` with ``callbacks=[RunProgress(run_dir), token]``;
  :func:`start_relabel_job` likewise runs :func:`cellannot_core.relabel.label_into_run` (a query
  labelled with a finished run's model, no training).
* The worker never touches Streamlit: progress, history, the final status and every result
  file go to the run directory (atomic writes), which the pages poll.
* The table is a module-level dict guarded by a lock. It is shared by every browser session of
  this server process, but sessions only ever look up the run id they store in their own
  session state, so two sessions training at once cannot see each other's jobs.
* At most :data:`MAX_PARALLEL` trainings run at once (``$CELLANNOT_MAX_JOBS``, default 2);
  further jobs wait in state ``queued`` and can be cancelled while they wait.
* One browser session holds at most :func:`session_job_limit` training runs waiting or running
  (``$CELLANNOT_MAX_JOBS_PER_SESSION``, default 2): on a server shared by a lab, one visitor
  starting run after run would otherwise fill the queue ahead of everyone else.

Nothing here imports streamlit.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from cellannot_core._constants import RunFiles, env_number
from cellannot_core.errors import Cancelled, CellannotError, failure_message, write_failure
from cellannot_core.runs import (RunDir, RunProgress, claim_run, default_root, read_json, release_run,
                                 write_json_atomic)

#: the server's own log (its stderr): what a visitor must not read, e.g. a traceback with the server's paths
SERVER_LOG = logging.getLogger("cellannot.app")

MAX_PARALLEL = env_number("CELLANNOT_MAX_JOBS", 2, low=1, integer=True)
ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("done", "failed", "cancelled")


@dataclass
class Job:
    """One training run owned by this server process."""

    run_id: str
    run_dir: RunDir
    token: Any  # CancelToken
    owner: str | None = None  # the browser session's hashed id (None: not started from the app)
    thread: threading.Thread | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def log(self, line: str) -> None:
        """Append a timestamped line to the run's log file (never raises)."""
        try:
            with open(self.run_dir.file(RunFiles.LOG), "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        except OSError:
            pass


_LOCK = threading.Lock()
_START_LOCK = threading.Lock()  # a session's count of active runs is checked and raised in one step
_JOBS: dict[str, Any] = {}  # every background job of this process: training runs (Job) and comparisons


def runs_root() -> Path:
    """Where runs live: ``$CELLANNOT_RUNS`` or ``./runs`` (read on every call, for tests)."""
    return default_root()


def get_job(run_id: str | None) -> Job | None:
    if not run_id:
        return None
    with _LOCK:
        return _JOBS.get(run_id)


def write_problem(err: OSError, what: str = "write to its runs folder") -> str:
    """One line for a failed write on the server (a full disk, a read-only or foreign folder),
    naming the cause but not the server's paths."""
    cause = err.strerror or type(err).__name__
    return (f"the server could not {what} ({cause.lower()}): free space there or ask whoever runs this server "
            "to make the folder set by CELLANNOT_RUNS writable")


def visitor_message(err: BaseException, rd: RunDir) -> str:
    """What a run's visitor reads of the error that ended it: a write the server's disk or folder refused as
    :func:`write_problem` says it, anything else as :func:`failure_message` says it, with the runs folder's
    path left out (a damaged model was "the saved model in /srv/.../<run id>/model"; found 2026-12-07)."""
    full = write_failure(err)
    if full is not None:
        return write_problem(full, "write this run's results")
    return failure_message(err).replace(f"{rd.path.parent}/", "")


def session_job_limit() -> int:
    """Training runs one browser session may have waiting or running at once
    (``$CELLANNOT_MAX_JOBS_PER_SESSION``, default 2; read on every call)."""
    return env_number("CELLANNOT_MAX_JOBS_PER_SESSION", 2, low=1, integer=True)


def owner_active_runs(owner: str) -> list[str]:
    """Run ids of the training runs ``owner`` started in this process that are waiting or running."""
    with _LOCK:
        return [rid for rid, j in _JOBS.items() if isinstance(j, Job) and j.owner == owner and j.alive]


def active_jobs() -> list[str]:
    """Run ids of jobs whose thread is still alive."""
    with _LOCK:
        return [rid for rid, j in _JOBS.items() if j.alive]


class Slots:
    """``n`` training slots and the queue for them: a free slot goes to the waiting job whose
    session holds the fewest slots, then to the one that has waited longest (so a visitor whose
    runs hold the server is served after the colleague who queued behind them, and otherwise first
    come, first served)."""

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self._cond = threading.Condition()
        self._held: dict[Any, int] = {}  # owner -> slots held
        self._waiting: list[tuple[int, Any]] = []  # (ticket, owner)
        self._tickets = 0

    def _next(self) -> tuple[int, Any]:
        return min(self._waiting, key=lambda t: (self._held.get(t[1], 0), t[0]))

    def acquire(self, owner: Any, should_stop: Callable[[], bool], on_wait: Callable[[], None]) -> None:
        """Block until this job may train; ``on_wait`` once if it has to wait; :class:`Cancelled`
        when ``should_stop()`` while waiting."""
        said = False
        with self._cond:
            self._tickets += 1
            me = (self._tickets, owner)
            self._waiting.append(me)
            try:
                while sum(self._held.values()) >= self.n or self._next() != me:
                    if should_stop():
                        raise Cancelled("cancelled before training started")
                    if not said:
                        on_wait()
                        said = True
                    self._cond.wait(0.5)
            finally:
                self._waiting.remove(me)
                self._cond.notify_all()  # the next in line may be another job now
            self._held[owner] = self._held.get(owner, 0) + 1

    def release(self, owner: Any) -> None:
        with self._cond:
            self._held[owner] -= 1
            if not self._held[owner]:
                del self._held[owner]
            self._cond.notify_all()


_SLOTS = Slots(MAX_PARALLEL)


@contextmanager
def training_slot(should_stop: Callable[[], bool], on_wait: Callable[[], None], owner: Any = None) -> Iterator[None]:
    """Hold one of the :data:`MAX_PARALLEL` training slots (shared by training runs and
    comparisons; :class:`Slots` decides who is next) while the block runs; ``on_wait`` is called
    once if the job has to wait, and :class:`~cellannot_core.errors.Cancelled` is raised when
    ``should_stop()`` while waiting. ``owner``: the session the job belongs to."""
    _SLOTS.acquire(owner, should_stop, on_wait)
    try:
        if should_stop():
            raise Cancelled("cancelled before training started")
        yield
    finally:
        _SLOTS.release(owner)


_STOPPING = threading.Event()  # the server is stopping: a job cancelled now is interrupted, not cancelled
STOP_WAIT_S = 20.0  # how long a stopping server waits for its jobs to write their state


def server_stopping() -> bool:
    """Whether this server is stopping (a job cancelled now was interrupted, not cancelled by its visitor)."""
    return _STOPPING.is_set()


@atexit.register
def _stop_jobs() -> None:
    """At the server's exit (SIGTERM, Ctrl+C), before the interpreter ends: cancel every live job and wait
    (at most :data:`STOP_WAIT_S`) for it to write its state, *interrupted*. Found 2026-12-07: a server stopped
    with SIGTERM while a run trained ended by SIGABRT ("terminate called without an active exception", exit
    code -6), its training thread inside torch as the interpreter shut down, and the run was left "running"
    until a listing found its process gone."""
    with _LOCK:
        live = [j for j in _JOBS.values() if j.alive and getattr(j, "token", None) is not None]
    if not live:
        return
    _STOPPING.set()
    for j in live:
        j.token.cancel()
    deadline = time.monotonic() + STOP_WAIT_S
    for j in live:
        j.thread.join(max(0.0, deadline - time.monotonic()))


def launch(job_id: str, job: Any, target: Callable[..., None], *args: Any) -> str:
    """The one way to run a background job: register ``job`` (anything with a ``thread``
    attribute) under ``job_id`` and run ``target(job, *args)`` in a daemon thread."""
    warm_imports()
    job.thread = threading.Thread(target=target, args=(job, *args), daemon=True, name=f"cellannot-{job_id}")
    with _LOCK:
        _JOBS[job_id] = job
    job.thread.start()
    return job_id


def _worker(job: Job, reference: Any, query: Any, opts: Any) -> None:
    """Thread body: run the annotate workflow into the run directory. No Streamlit here."""
    from cellannot_core.pipeline import annotate

    def body() -> None:
        job.log(f"starting {opts.model} (seed {opts.seed}, device {opts.device})")
        annotate(reference, query, opts, run_dir=job.run_dir, callbacks=[RunProgress(job.run_dir), job.token],
                 log=job.log)

    _run(job, body)


def _relabel_worker(job: Job, source: RunDir, query: Any, query_label_key: str | None) -> None:
    """Thread body: label the query with the model of the finished run ``source``
    (:func:`~cellannot_core.relabel.label_into_run`), no training."""
    from cellannot_core.relabel import label_into_run

    def body() -> None:
        job.log(f"labelling the query with the model of run {source.id}, without training")
        label_into_run(source, query, job.run_dir, query_label_key=query_label_key, device="auto",
                       should_stop=job.token.should_stop, log=job.log)

    _run(job, body)


def _run(job: Job, body: Callable[[], None]) -> None:
    """A job's work in a training slot; whatever ends it is written to its run directory."""
    rd = job.run_dir
    try:
        try:
            with training_slot(job.token.should_stop,
                               lambda: rd.set_status("queued", message="waiting for another training to finish"),
                               owner=job.owner):
                body()
                job.log("finished")
        except CellannotError as err:  # annotate already wrote failed/cancelled + message (not if cancelled waiting)
            job.error = visitor_message(err, rd)
            job.log(f"stopped: {job.error}")
            if isinstance(err, Cancelled) and server_stopping():
                job.error = "the server was stopped before it finished: train again"
                rd.set_status("interrupted", message=job.error)
            elif rd.status().get("state") in ACTIVE_STATES or job.error != str(err):
                rd.set_status("cancelled" if isinstance(err, Cancelled) else "failed", message=job.error)
        except BaseException as err:  # noqa: BLE001 - a worker must never die silently
            job.error = visitor_message(err, rd)
            job.log(job.error)  # the visitor's log: the traceback, with the server's paths, goes to the server's
            SERVER_LOG.error("run %s failed unexpectedly\n%s", rd.id, traceback.format_exc())
            rd.set_status("failed", message=job.error)
        finally:
            job.finished = time.time()
            if rd.status().get("state") in ACTIVE_STATES:  # e.g. an unexpected early return
                rd.set_status("failed", message=job.error or "the training thread ended unexpectedly")
    except OSError as err:  # its last state could not be written: released below, the run is listed as interrupted
        SERVER_LOG.error("run %s: its last state could not be written (%s)", rd.id, err)
    finally:
        release_run(rd)


_BLAS_LIMITED = False


def _limit_blas_threads() -> None:
    """One BLAS thread for the whole server process (once). Several trainings run here at once
    in threads; OpenBLAS' own thread pool, called while OpenMP regions (torch, scikit-learn's
    neighbour search) are active, warned "Detect OpenMP Loop and this application may hang" and
    did hang: two runs stayed in "writing results" at 100% CPU and the queue behind them never
    moved (the load test). torch keeps its own intra-op threads."""
    global _BLAS_LIMITED
    if not _BLAS_LIMITED:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
        _BLAS_LIMITED = True


def warm_imports() -> None:
    """Import, in the calling thread, every heavy module the worker imports lazily (and limit
    BLAS to one thread, :func:`_limit_blas_threads`).

    Two threads importing the same extension package at once (the worker and a page drawing
    a figure) can see it half-initialised ("cannot import name ... from partially initialized
    module" in scikit-learn); importing up-front removes the race.
    """
    import anndata  # noqa: F401
    import scanpy  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import sklearn.neighbors  # noqa: F401
    import torch  # noqa: F401

    import cellannot_core.calibration  # noqa: F401
    import cellannot_core.data  # noqa: F401
    import cellannot_core.metrics  # noqa: F401
    import cellannot_core.models  # noqa: F401
    import cellannot_core.novelty  # noqa: F401
    import cellannot_core.pipeline  # noqa: F401
    import cellannot_core.plots  # noqa: F401
    import cellannot_core.training  # noqa: F401

    _limit_blas_threads()  # after the imports: every BLAS library loaded by now is limited


def start_job(reference: Any, query: Any, opts: Any, *, root: str | Path | None = None,
              owner: str | None = None, datasets: dict[str, str] | None = None,
              names: dict[str, str] | None = None) -> str:
    """Start training in a background thread; return the new run id.

    Parameters
    ----------
    reference, query
        AnnData objects (or paths) as accepted by :func:`cellannot_core.pipeline.annotate`.
        The worker only reads them.
    opts
        :class:`cellannot_core.pipeline.AnnotateOptions`.
    root
        Runs directory (default :func:`runs_root`).
    owner
        The browser session's hashed id (:func:`ui.session.owner_id`): only that session lists
        and opens the run.
    datasets
        Role -> dataset id of the session's data; recorded with the options in the run's
        ``request.json`` so a failed or interrupted run can be started again (:func:`request`).
    names
        Role -> the datasets' names, recorded beside them for the Runs page.
    """
    from cellannot_core.training import CancelToken

    with _START_LOCK:
        _check_session_limit(owner)
        rd = RunDir.create(root if root is not None else runs_root(), model=opts.model, owner=owner)
        with _claimed(rd):
            rd.set_status("queued", model=opts.model, message="starting")
            write_request(rd, opts, datasets, names)
            return launch(rd.id, Job(run_id=rd.id, run_dir=rd, token=CancelToken(), owner=owner), _worker,
                          reference, query, opts)


@contextmanager
def _claimed(rd: RunDir) -> Iterator[None]:
    """Claim ``rd`` for the job about to start (:func:`~cellannot_core.runs.claim_run`; its thread releases
    it as it ends, :func:`_run`); released here when the job cannot start."""
    claim_run(rd)
    try:
        yield
    except BaseException:
        release_run(rd)
        raise


def start_relabel_job(source_id: str, query: Any, *, query_label_key: str | None = None,
                      root: str | Path | None = None, owner: str | None = None,
                      datasets: dict[str, str] | None = None, names: dict[str, str] | None = None) -> str:
    """Label ``query`` with the model of the finished run ``source_id`` in a background thread,
    without training (:func:`~cellannot_core.relabel.label_into_run`); return the new run id.
    The caller checks that ``owner`` may use that run. ``datasets``: as :func:`start_job`'s."""
    from cellannot_core.training import CancelToken

    root = root if root is not None else runs_root()
    source = RunDir.open(root, source_id)
    model = str(source.status().get("model") or "run")
    with _START_LOCK:
        _check_session_limit(owner)
        rd = RunDir.create(root, model=model, owner=owner)
        with _claimed(rd):
            rd.set_status("queued", model=model, message="starting")
            write_json_atomic(rd.file(RunFiles.REQUEST), {"labelled_with": source_id, "query_label_key": query_label_key,
                                                          "datasets": dict(datasets or {}), "names": dict(names or {})})
            return launch(rd.id, Job(run_id=rd.id, run_dir=rd, token=CancelToken(), owner=owner), _relabel_worker,
                          source, query, query_label_key)


def _check_session_limit(owner: str | None) -> None:
    """A session may have at most :func:`session_job_limit` runs waiting or running (call under _START_LOCK)."""
    from cellannot_core.errors import ConfigError

    if owner is None:
        return
    active, limit = owner_active_runs(owner), session_job_limit()
    if len(active) >= limit:
        raise ConfigError(
            f"you already have {len(active)} training run{'s' if len(active) != 1 else ''} waiting or "
            f"running, the most one session may have at once on this server "
            f"(CELLANNOT_MAX_JOBS_PER_SESSION={limit}); wait for one to finish or cancel it (Train or "
            "Runs page). To train several models on the same data, the Compare page trains them one "
            "after another as one job.")


def write_request(rd: RunDir, opts: Any, datasets: dict[str, str] | None, names: dict[str, str] | None = None) -> None:
    """Record what a run is started with (read back by :func:`request`, for *Run again*), and the
    names of its datasets (the Runs page's reference and query columns)."""
    write_json_atomic(rd.file(RunFiles.REQUEST), {"options": asdict(opts), "datasets": dict(datasets or {}),
                                                  "names": dict(names or {})})


@dataclass(frozen=True)
class RelabelRequest:
    """What a run that labelled a query with a finished run's model was started with (:func:`request`)."""

    source: str  # the run whose model labelled the query
    query_label_key: str | None = None


def request(run_id: str, root: str | Path | None = None) -> dict[str, Any] | None:
    """What a run was started with: ``{"options": AnnotateOptions or RelabelRequest, "datasets":
    {role: id}}``, or ``None`` for runs that did not record it (command-line runs, older runs)."""
    from cellannot_core.pipeline import AnnotateOptions

    rd = RunDir.open(root if root is not None else runs_root(), run_id)
    req = read_json(rd.file(RunFiles.REQUEST))
    if isinstance(req, dict) and isinstance(req.get("labelled_with"), str):
        key = req.get("query_label_key")
        return {"options": RelabelRequest(req["labelled_with"], key if isinstance(key, str) else None),
                "datasets": dict(req.get("datasets") or {})}
    if not isinstance(req, dict) or not isinstance(req.get("options"), dict):
        return None
    try:
        opts = AnnotateOptions(**req["options"])
    except (TypeError, CellannotError):  # written by another version, or damaged
        return None
    return {"options": opts, "datasets": dict(req.get("datasets") or {})}


def cancel(run_id: str) -> bool:
    """Ask a job of this process to stop; True when there was a live job to cancel."""
    job = get_job(run_id)
    if job is None or not job.alive:
        return False
    job.token.cancel()
    job.log("cancel requested")
    return True


def run_status(run_id: str, root: str | Path | None = None) -> dict[str, Any]:
    """Status of a run from its directory, plus whether this process is running it.

    Adds ``live`` (a thread of this server works on it) and, for an active state without a
    live thread, ``stale=True`` with a plain explanation (server restarted, or started by the
    command line in another process).
    """
    rd = RunDir.open(root if root is not None else runs_root(), run_id)
    job = get_job(run_id)
    live = bool(job and job.alive)
    status = dict(rd.status() if live else rd.check_interrupted())
    status["live"] = live
    status["stale"] = False
    if status.get("state") in ACTIVE_STATES and not status["live"]:
        age = time.time() - float(status.get("updated") or 0)
        status["stale"] = True
        status["stale_note"] = (
            f"another process (e.g. the command line) works on this run (last update {age:.0f} s ago)"
        )
    return status


def read_log(run_id: str, root: str | Path | None = None, *, tail: int = 30) -> list[str]:
    rd = RunDir.open(root if root is not None else runs_root(), run_id)
    try:
        lines = rd.file(RunFiles.LOG).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [ln for ln in lines if not ln.startswith(("Traceback", "  "))][-tail:]


def wait(run_id: str, timeout: float | None = None) -> dict[str, Any]:
    """Block until the job ends (for tests and scripts); returns its final status."""
    job = get_job(run_id)
    if job is not None and job.thread is not None:
        job.thread.join(timeout)
    return job.run_dir.status() if job is not None else {}
