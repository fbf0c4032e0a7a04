"""Loading datasets into the session (demo, upload, server path) and the Data page's checks.

Upload and path handling are plain functions returning an error message (or ``None``) so they
can be tested without a browser. Summaries, the gene-overlap report and the dry-run check are
cached with ``st.cache_data`` keyed by dataset ids (the AnnData arguments are ``_``-prefixed,
hence not hashed).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import streamlit as st

from cellannot_core.data.validate import untyped_label_mask
from cellannot_core.errors import CellannotError, DataError, failure_message, is_out_of_memory
from ui.session import remember_dataset, server_is_local
from ui.state import DATA_KEY, INFO_KEY, StateKeys, get, md, put

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"

DEMO = {
    "reference": ASSETS / "kang_pbmc_example_sce_1556.h5ad",
    "query": ASSETS / "pbmc3k_seurat_2638.h5ad",
    "label_key": "cell_type_harmonized",
    "query_label_key": "cell_type_harmonized",
    "note": (
        "**Reference:** Kang et al. 2018 (Nat Biotech; GEO GSE96583), 1,556 PBMCs (10x), control and "
        "IFN-beta stimulated, via the muscat R package (GPL-3). **Query:** 10x Genomics pbmc3k "
        "(CC BY 4.0), 2,638 PBMCs with the Seurat tutorial QC and annotation, counts rebuilt from the "
        "clustifyr R package (MIT). The query holds NK cells, dendritic cells and platelets that the "
        "reference lacks (201 cells): a good model calls them *Unknown*. Details: `assets/README.md`."
    ),
}

# Shared-gene fraction (of the reference genes) for the traffic light.
GREEN_AT = 0.5
YELLOW_AT = 0.2


# ------------------------------------------------------------------------------ loading


@st.cache_resource(show_spinner="Reading the demo data...")
def _read_demo(path: str, role: str):
    """The demo files, read once per server and shared read-only by every session."""
    from cellannot_core.data import read_dataset

    return read_dataset(path, name=role)


def demo_dataset(role: str) -> Any:
    return _read_demo(str(DEMO[role]), role)


def set_dataset(role: str, adata: Any, *, name: str, source: str, dataset_id: str, data: bytes | None = None,
                path: str | None = None, orientation: str = "auto", layer: str | None = None) -> None:
    """Put a dataset into the session (and forget choices that depended on the old one); the
    session remembers how to bring it back after a reload (:mod:`ui.session`), a table with the
    orientation the visitor set, a file with the layer of counts the visitor named."""
    remember_dataset(role, "upload" if source == "upload" else "path" if path else source, name=name,
                     dataset_id=dataset_id, data=data, path=path, orientation=orientation, layer=layer)
    put(DATA_KEY[role], adata)
    from cellannot_core.data.stream import stream_source

    src = stream_source(adata)
    put(INFO_KEY[role], {"id": dataset_id, "name": name, "source": source, "layer": layer,
                         "n_cells": int(src["n_obs"] if src else adata.n_obs), "n_genes": int(adata.n_vars)})
    if role == "reference":
        put(StateKeys.LABEL_KEY, None)
    else:
        put(StateKeys.QUERY_LABEL_KEY, None)
    put(StateKeys.BATCH_KEY, None)
    put(StateKeys.DEMO, False)


def load_demo() -> None:
    """Load the bundled reference/query pair and set the label columns."""
    for role in ("reference", "query"):
        path = DEMO[role]
        set_dataset(role, demo_dataset(role), name=path.name, source="demo", dataset_id=f"demo-{role}")
    put(StateKeys.LABEL_KEY, DEMO["label_key"])
    put(StateKeys.QUERY_LABEL_KEY, DEMO["query_label_key"])
    put(StateKeys.BATCH_KEY, None)
    put(StateKeys.QC, None)
    put(StateKeys.DEMO, True)


def handle_upload(role: str, data: bytes, filename: str, *, upload_id: str | None = None) -> str | None:
    """Read uploaded bytes into the session as ``role``; return an error message or ``None``."""
    from cellannot_core.data import read_uploaded, sanitize_filename

    limit = upload_limit_mb()
    if len(data) > limit * 1024**2:  # the uploader refuses these already; a second line of defence
        return (f"the {role} file is {len(data) / 1024**2:,.0f} MB, above this server's upload limit of {limit:,} MB "
                "(a third of its memory budget, CELLANNOT_MEMORY_LIMIT_GB): give a path on the server instead")
    try:
        adata = read_uploaded(data, filename, name=role)
        name = sanitize_filename(filename)
    except CellannotError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - never a traceback (nor an exception's words: they may quote the file)
        return unreadable(role, err)
    digest = hashlib.sha1(data).hexdigest()[:16]
    set_dataset(role, adata, name=name, source="upload", dataset_id=f"{role}-upload-{digest}", data=data)
    info = get(INFO_KEY[role])
    info["upload_id"] = upload_id
    return None


def unreadable(role: str, err: BaseException) -> str:
    """One line for a reader's exception that is not a :class:`CellannotError` (a fault of the reader, not
    of the file): running out of memory said as such, anything else by its type only."""
    if is_out_of_memory(err):
        return failure_message(err)
    return (f"could not read the {role} file: internal error ({type(err).__name__}) in the reader. Convert the "
            "file to .h5ad and try again, and please report this")


def upload_tab(role: str) -> None:
    """The Data page's upload widget for ``role``: a new file is read once, an error shown."""
    from ui.state import WidgetKeys

    up = st.file_uploader(f"{role} file", key=WidgetKeys.UPLOAD.format(role=role), max_upload_size=upload_limit_mb())
    if up is not None and uploaded_is_new(role, up.file_id):
        with st.spinner(f"Reading {up.name}..."):
            err = handle_upload(role, up.getvalue(), up.name, upload_id=up.file_id)
        show_load_error(role, err)


def path_tab(role: str) -> None:
    """The Data page's "Path on the server" field for ``role``."""
    from ui.state import WidgetKeys

    path = st.text_input("File or 10x folder", key=WidgetKeys.PATH.format(role=role), placeholder="/data/pbmc.h5ad")
    if st.button("Load", key=WidgetKeys.PATH_BUTTON.format(role=role)):
        with st.spinner(f"Reading {path}..."):
            err = handle_path(role, path)
        show_load_error(role, err)


def show_load_error(role: str, err: str | None) -> None:
    """A dataset that could not be read, and which one stays loaded in its place (if any)."""
    if not err:
        return
    before = get(INFO_KEY[role]) if get(DATA_KEY[role]) is not None else None
    st.error(md(err + ("" if err.endswith(".") else "."))
             + (f" The {role} loaded before, {md(before.get('name'))}, is kept." if before else ""))


def run_references() -> list[str]:
    """The visitor's finished runs (newest first) that saved a model: each keeps the reference
    cells it trained on (at most 10,000), which can be the reference of a new run."""
    from cellannot_core.runs import RunDir, list_runs
    from ui import jobs
    from ui.session import owner_id

    root = jobs.runs_root()
    return [r["id"] for r in list_runs(root, owner=owner_id(), include_unowned=server_is_local())
            if r["state"] == "done" and (RunDir.open(root, r["id"]).model_dir / "bundle.json").is_file()]


def read_run_reference(run_id: str) -> tuple[Any, str]:
    """The reference cells a visitor's finished run kept, with their counts and labels
    (:func:`~cellannot_core.pipeline.bundle_reference`), and its label column."""
    from cellannot_core.errors import ConfigError
    from cellannot_core.pipeline import bundle_reference, load_bundle
    from cellannot_core.runs import RunDir
    from ui import jobs

    if run_id not in run_references():  # only the visitor's own runs, finished
        raise DataError(f"run {run_id} is not one of your finished runs")
    model, bundle = load_bundle(RunDir.open(jobs.runs_root(), run_id).model_dir, device="cpu")
    try:
        return bundle_reference(model, bundle), str(bundle["label_key"])
    except ConfigError:
        raise DataError(f"run {run_id}'s model ({model.name}) keeps no reference cells with their counts (a model "
                        "trained without raw counts, or saved before 2026-12-05): load the reference itself") from None


def handle_run_reference(run_id: str) -> str | None:
    """Make a finished run's kept reference cells the session's reference, its label column picked;
    return an error message or ``None``."""
    try:
        adata, label_key = read_run_reference(run_id)
    except CellannotError as err:
        return str(err)
    set_dataset("reference", adata, name=f"run {run_id}: the {adata.n_obs:,} reference cells its model kept",
                source="run", dataset_id=f"run-{run_id}")
    put(StateKeys.LABEL_KEY, label_key)
    return None


def run_tab(role: str = "reference") -> None:
    """The Data page's "From a finished run" tab (the reference only: ``role`` is for the page's loop)."""
    from ui.state import WidgetKeys

    runs = run_references()
    if not runs:
        st.caption("No finished run yet. A run's model keeps the reference cells it trained on (up to 10,000), "
                   "so a later run can use them as its reference without loading the file again.")
        return
    pick = st.selectbox("Finished run", runs, key=WidgetKeys.RUN_REFERENCE,
                        help="Its model's training cells (up to 10,000) with their counts and labels; a new model "
                             "is trained on them with the query you load.")
    if st.button("Load its reference", key=WidgetKeys.RUN_REFERENCE_BUTTON):
        with st.spinner(f"Reading run {pick}..."):
            err = handle_run_reference(pick)
        if err:
            st.error(md(err))


NO_LABEL_COLUMN = ("The reference has no obs column that looks like cell-type labels (2-500 classes). A 10x folder or "
                   "archive gets them from a table beside the matrix: a row per cell, its barcode in one column and "
                   "its type in another.")


def allowed_path(path: Path) -> str | None:
    """"Path on the server" reads only under ``$CELLANNOT_DATA_ROOT`` when it is set; without it,
    only while the app listens on 127.0.0.1 (a server shared with a lab needs the root: otherwise
    any visitor could read any file the server's user can). The answer never says whether the
    path exists."""
    root = os.environ.get("CELLANNOT_DATA_ROOT")
    if not root:
        if server_is_local():
            return None
        return ("reading files by their path on the server is off on a shared server; upload the file, or ask "
                "the administrator to allow a data folder with CELLANNOT_DATA_ROOT")
    outside = f"this server only reads files under {root}: give a path inside it"
    try:
        path.resolve().relative_to(Path(root).resolve())
    except (ValueError, OSError, RuntimeError):
        return outside
    links = _links_out(path, Path(root).resolve())
    if links is None:
        return (f"this folder holds more than {LINKS_CHECKED:,} files and folders, too many to check for links out of "
                f"{root}: give the 10x folder itself (matrix.mtx, features.tsv, barcodes.tsv)")
    return outside if links else None


LINKS_CHECKED = 10_000  # entries of a 10x folder looked at for links out of the data folder


def _links_out(path: Path, root: Path) -> bool | None:
    """Whether a 10x folder (or the folder of a ``.mtx`` file), whose files the reader opens by
    name, holds a link that leads out of ``root`` (the folder itself was checked); None when it
    holds more entries than :data:`LINKS_CHECKED` (not read: a link past them was let through until
    2026-12-06)."""
    base = path if path.is_dir() else path.parent if ".mtx" in path.name.lower() else None
    if base is None:
        return False
    seen = 0
    for dirpath, dirnames, filenames in os.walk(base):  # links to folders are listed, not entered
        for name in dirnames + filenames:
            entry = Path(dirpath) / name
            if entry.is_symlink():
                try:
                    entry.resolve().relative_to(root)
                except (ValueError, OSError, RuntimeError):
                    return True
            seen += 1
            if seen > LINKS_CHECKED:
                return None
    return False


def handle_path(role: str, path_text: str) -> str | None:
    """Read a file or 10x folder on the server into the session; return an error or ``None``."""

    text = (path_text or "").strip().strip("'\"")
    if not text:
        return "enter the path of a file or 10x folder on the server"
    path = Path(text).expanduser()
    problem = allowed_path(path)
    if problem:
        return problem
    try:
        adata = read_path(role, path)
    except CellannotError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - never a traceback (nor an exception's words: they may quote the file)
        return unreadable(role, err)
    st_ = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st_.st_mtime_ns}|{st_.st_size}".encode()).hexdigest()[:16]
    set_dataset(role, adata, name=path.name, source=f"server path {path}", dataset_id=f"{role}-path-{key}",
                path=str(path.resolve()))
    return None


def read_path(role: str, path: Path, orientation: str = "auto") -> Any:
    """A dataset on the server: a large query as a sample of its file
    (:func:`cellannot_core.data.stream.read_query`), anything else read whole; ``orientation``: a
    table's, set by the visitor (:func:`orientation_control`)."""
    from cellannot_core.data import read_dataset
    from cellannot_core.data.stream import read_query

    if role == "query" and orientation == "auto":
        return read_query(path)
    return read_dataset(path, name=role, orientation=orientation)


def with_layer(adata: Any, layer: Any, role: str) -> Any:
    """``adata`` with its counts from ``layer`` (:func:`cellannot_core.data.values.counts_layer`), kept
    as it is without one; a query held as a sample of a large file cannot take another layer."""
    from cellannot_core.data.stream import stream_source
    from cellannot_core.data.values import counts_layer

    if not layer:
        return adata
    if stream_source(adata) is not None:
        raise DataError(f"the {role} is read in chunks from its file, which take the counts from X, layers['counts'] "
                        f"or .raw: save its layers['{layer}'] as layers['counts'] and load it again")
    return counts_layer(adata, str(layer), role)


def table_orientation(adata: Any) -> str | None:
    """How a table was read (``cells_x_genes`` or ``genes_x_cells``), None for any other file."""
    from cellannot_core.data.io import INPUT_UNS_KEY

    info = adata.uns.get(INPUT_UNS_KEY) if adata is not None else None
    return info.get("orientation") if isinstance(info, dict) and info.get("format") == "table" else None


def orientation_control(role: str, adata: Any) -> None:
    """Under a table the visitor uploaded or named: a button to read it the other way round, when
    the guess from its names was wrong (samples named "CD4_1" look like genes)."""
    from ui.state import WidgetKeys

    now = table_orientation(adata)
    if now is None or (get(INFO_KEY[role]) or {}).get("source") == "demo":
        return
    other = "genes_x_cells" if now == "cells_x_genes" else "cells_x_genes"
    rows = "genes" if other == "genes_x_cells" else "cells"
    if st.button(f"Its rows are {rows}: read it again", key=WidgetKeys.FLIP_TABLE.format(role=role),
                 icon=":material/swap_vert:", help="The table's orientation was guessed from its row and column names"):
        err = read_again(role, orientation=other)
        if err:
            st.error(md(err))
        else:
            st.rerun()


@st.cache_data(show_spinner=False, max_entries=32)
def other_count_layers(dataset_id: str, _adata: Any) -> list[str]:
    """Layers of a dataset whose X holds no counts that hold counts under a name the reader does not
    take on trust (velocyto's 'spliced' holds counts, not all of them): the visitor names one.
    Cached per dataset id, as :func:`summary` (the Data page asks on every rerun)."""
    from cellannot_core.data.stream import stream_source
    from cellannot_core.data.values import COUNT_LAYERS, detect_value_state

    adata = _adata
    if adata is None or stream_source(adata) is not None or detect_value_state(adata.X) == "counts":
        return []  # (a large query's chunks are read from the file, which takes X, layers['counts'] or .raw)
    return [str(k) for k in adata.layers.keys() if k not in COUNT_LAYERS
            and detect_value_state(adata.layers[k]) == "counts"]


def counts_layer_control(role: str, layers: list[str]) -> None:
    """Under a dataset whose raw counts are in a layer of another name (``layers['umis']`` beside
    scaled X, as a scanpy user saves one; :func:`other_count_layers`): a button to take them from it,
    as ``layer=`` does in Python."""
    from ui.state import WidgetKeys

    for layer in layers[:3]:
        if st.button(f"Take the raw counts from layers['{md(layer)}']", icon=":material/layers:",
                     key=WidgetKeys.COUNTS_LAYER.format(role=role, layer=layer),
                     help="X holds no raw counts; this layer does. In Python: layer=..., on the command line --layer"):
            err = read_again(role, layer=layer)
            if err:
                st.error(md(err))
            else:
                st.rerun()


def read_again(role: str, *, orientation: str | None = None, layer: str | None = None) -> str | None:
    """Read the session's ``role`` dataset again (from the copy the session keeps of an upload, or its
    server path) with ``orientation`` (a table's) or its counts from ``layer``, each else as it was
    read; return an error message or ``None``."""
    from cellannot_core.data import read_uploaded
    from cellannot_core.runs import read_json
    from ui.session import session_dir

    d = session_dir()
    meta = read_json(d / f"{role}.json") if d.is_dir() else None
    if not isinstance(meta, dict) or meta.get("kind") not in ("upload", "path"):
        return f"this server kept no copy of the {role} to read again: load it again"
    base = str(meta.get("dataset_id")).split("~")[0]
    orientation = orientation or str(meta.get("orientation") or "auto")
    layer = layer or meta.get("layer")
    try:
        if meta["kind"] == "upload":
            data = (d / f"{role}.upload").read_bytes()
            adata = with_layer(read_uploaded(data, str(meta.get("name")), name=role, orientation=orientation),
                               layer, role)
        else:
            path = Path(str(meta.get("path")))
            problem = allowed_path(path)
            if problem:
                return problem
            data, adata = None, with_layer(read_path(role, path, orientation), layer, role)
    except CellannotError as err:
        return str(err)
    except OSError:
        return f"this server kept no copy of the {role} to read again: load it again"
    upload_id = (get(INFO_KEY[role]) or {}).get("upload_id")
    set_dataset(role, adata, name=str(meta.get("name")), dataset_id=f"{base}~{orientation}~{layer or ''}", data=data,
                source="upload" if data is not None else f"server path {meta.get('path')}", path=meta.get("path"),
                orientation=orientation, layer=layer)
    get(INFO_KEY[role])["upload_id"] = upload_id  # the uploader's file is this one: not read again as guessed
    return None


def stream_note(adata: Any) -> str | None:
    """What the Data and Train pages say about a query held as a sample of its file."""
    from cellannot_core.data.stream import stream_source

    src = stream_source(adata)
    if src is None:
        return None
    return (f"This query has {src['n_obs']:,} cells, more than is read into memory: the checks, the summary and the "
            f"semi-supervised training (at most as many as the reference's training cells) use a seeded sample of "
            f"{src['n_sample']:,} cells, and training labels every "
            "cell of the file a chunk at a time. Result pages draw a documented subsample of cells where a view "
            "would be too large.")


def uploaded_is_new(role: str, upload_id: str) -> bool:
    """The uploader returns the same file on every rerun: read it only once."""
    info = get(INFO_KEY[role]) or {}
    return info.get("upload_id") != upload_id


# ------------------------------------------------------------------------------ reports


@st.cache_data(show_spinner=False, max_entries=32)
def summary(dataset_id: str, role: str, _adata: Any) -> dict[str, Any]:
    """:func:`cellannot_core.data.summarize_dataset`, cached per dataset id."""
    from cellannot_core.data import summarize_dataset

    return summarize_dataset(_adata, name=role)


def traffic_light(fraction: float, *, approximate: bool = False, ok: bool = True) -> str:
    """``green`` / ``yellow`` / ``red`` for a shared-gene fraction."""
    if not ok or fraction < YELLOW_AT:
        return "red"
    if fraction < GREEN_AT or approximate:
        return "yellow"
    return "green"


@st.cache_data(show_spinner=False, max_entries=32)
def gene_overlap(ref_id: str, query_id: str, min_shared: int, _ref: Any, _query: Any) -> dict[str, Any]:
    """Shared genes of the pair with a traffic light (never raises on data problems)."""
    from cellannot_core.data import match_genes
    from cellannot_core.data.values import counts_genes

    ref_var, query_var = counts_genes(_ref), counts_genes(_query)  # (the genes the training uses)
    n_ref, n_query = len(ref_var), len(query_var)
    try:
        gm = match_genes(ref_var, query_var, min_shared=min_shared)
    except DataError as err:
        return {"ok": False, "message": str(err), "n_shared": 0, "n_ref": n_ref, "n_query": n_query,
                "fraction": 0.0, "light": "red", "approximate": False}
    frac = gm.n_shared / max(1, gm.n_ref)
    return {"ok": True, "message": gm.message, "n_shared": gm.n_shared, "n_ref": gm.n_ref,
            "n_query": gm.n_query, "fraction": frac, "approximate": gm.approximate, "mode": gm.mode,
            "light": traffic_light(frac, approximate=gm.approximate)}


@st.cache_data(show_spinner="Checking the pair (validation, gene matching, split)...", max_entries=8)
def unsaid(warnings: list[str], overlap: dict[str, Any]) -> list[str]:
    """The check's warnings less what the gene-overlap report above it already says (the same species warning
    was shown twice, found 2026-12-07)."""
    from cellannot_core.data.prepare import CASE_MATCH_WARNING

    return [w for w in warnings if not (overlap.get("approximate") and w.startswith(CASE_MATCH_WARNING))]


def check_pair(ref_id: str, query_id: str, label_key: str, query_label_key: str | None, qc_json: str,
               _ref: Any, _query: Any, batch_key: str | None = None) -> dict[str, Any]:
    """Dry run of the preparation step: every validation message the training would hit."""
    from cellannot_core.data import prepare

    try:
        prep = prepare(_ref, _query, label_key=label_key, query_label_key=query_label_key,
                       qc=json.loads(qc_json) or None, batch_key=batch_key)
    except CellannotError as err:
        said = str(err)
        if "holds counts: if those are the raw counts, name that layer" in said:  # the advice for Python and the
            said = (said.split(". Its layers[", 1)[0] + ". Its raw counts are in a layer of another name: take them with "
                    "the button under the dataset above.")  # command line, in the app (found 2026-12-07)
        return {"ok": False, "error": said, "warnings": []}
    rep = prep.report
    return {"ok": True, "error": None, "warnings": list(rep.get("warnings", [])),
            "n_train": rep["n_train"], "n_val": rep["n_val"], "n_query": rep["n_query"],
            "classes": list(prep.classes), "genes": rep["genes"]["message"], "hvg": rep["genes"]["hvg"],
            "counts_available": rep.get("counts_available"),
            "batches": (rep.get("batches") or {}).get("cells")}


NO_BATCH = "(none: each dataset is one batch)"


@st.cache_data(show_spinner=False, max_entries=8)
def batch_choices(ref_id: str, query_id: str, label_key: str | None, query_label_key: str | None,
                  _ref: Any, _query: Any) -> list[str]:
    """The batch-key choices of the Data page: none, then the obs columns that could name each
    cell's sample or batch (:func:`cellannot_core.data.batch_candidates`); once per pair of datasets."""
    from cellannot_core.data import batch_candidates

    exclude = tuple(k for k in (label_key, query_label_key) if k)
    return [NO_BATCH] + batch_candidates(_ref.obs, _query.obs, exclude=exclude)


def qc_options(enabled: bool, min_genes: float, min_counts: float, max_pct_mito: float) -> dict | None:
    """QC widget values -> ``AnnotateOptions.qc`` (0 / 100 mean "off")."""
    if not enabled:
        return None
    qc = {"min_genes": int(min_genes) if min_genes > 0 else None,
          "min_counts": int(min_counts) if min_counts > 0 else None,
          "max_pct_mito": float(max_pct_mito) if max_pct_mito < 100 else None}
    return qc if any(v is not None for v in qc.values()) else None


def upload_limit_mb() -> int:
    """Largest upload this server accepts, in MB (:func:`cellannot_core.data.io.upload_limit_mb`)."""
    from cellannot_core.data.io import upload_limit_mb as limit

    return limit(st.get_option("server.maxUploadSize"))


#: files of :func:`upload_limit_mb` one session may have Streamlit hold at once: a reference and a query
UPLOADS_PER_SESSION = 2


def guard_uploads() -> None:
    """Hold Streamlit's upload endpoint to what the Data page's uploaders allow; once per server process.

    The uploader's ``max_upload_size`` is told to the browser only: Streamlit's server takes any
    number of files of up to ``server.maxUploadSize`` each from whoever calls its upload address
    with the session's id and XSRF token, and holds them in memory until the session ends (found
    2026-12-07: three 1 GB files sent to one session held 3 GB after the browser had gone). A file is
    now refused (HTTP 413) when it is larger than :func:`upload_limit_mb`, when the session would
    hold more than :data:`UPLOADS_PER_SESSION` such files' worth, or when all sessions together
    would hold more than the memory budget."""
    from starlette.exceptions import HTTPException
    from streamlit.runtime import Runtime

    from cellannot_core.data.io import memory_limit_bytes

    if not Runtime.exists():
        return
    mgr = Runtime.instance().uploaded_file_mgr
    if getattr(mgr, "_cellannot_guarded", False) or not hasattr(mgr, "file_storage"):
        return
    add_file = mgr.add_file

    def guarded_add_file(session_id: str, file: Any) -> None:
        size, cap = len(file.data), upload_limit_mb() * 1024**2
        with mgr._lock:
            held = {s: sum(len(f.data) for k, f in files.items() if (s, k) != (session_id, file.file_id))
                    for s, files in mgr.file_storage.items()}
        if size > cap or held.get(session_id, 0) + size > UPLOADS_PER_SESSION * cap \
                or sum(held.values()) + size > memory_limit_bytes():
            raise HTTPException(status_code=413, detail="File too large for this server")
        add_file(session_id, file)

    mgr.add_file = guarded_add_file
    mgr._cellannot_guarded = True


def labels_missing_from_reference(ref: Any, query: Any, label_key: str | None, query_label_key: str | None) -> dict:
    """Query label -> cells, for query labels the reference does not have (expected Unknown), or has too few
    cells of to learn (fewer than the runs' ``min_cells_per_class``: left out when training; they were not
    counted, found 2026-12-07: 133 cells said, 343 in the run's accuracy)."""
    if not label_key or not query_label_key or label_key not in ref.obs or query_label_key not in query.obs:
        return {}
    from cellannot_core.data.validate import match_query_labels
    from cellannot_core.pipeline import AnnotateOptions

    ref_col, q_col = ref.obs[label_key], query.obs[query_label_key]
    have = ref_col[~untyped_label_mask(ref_col)].astype(str).str.strip().value_counts()
    known = sorted(have.index[have >= AnnotateOptions.min_cells_per_class])
    counts = q_col[~untyped_label_mask(q_col)].astype(str).str.strip().value_counts()
    found = match_query_labels(counts.index.to_numpy(dtype=object), known)[0] >= 0  # as training matches them
    return {str(k): int(v) for (k, v), f in zip(counts.items(), found) if not f}


def novel_types_note(ref: Any, query: Any, label_key: str | None, query_label_key: str | None) -> str | None:
    """The Data page's line on the query's types the reference lacks (:func:`labels_missing_from_reference`)."""
    from cellannot_core.pipeline import AnnotateOptions

    novel = labels_missing_from_reference(ref, query, label_key, query_label_key)
    if not novel:
        return None
    few = set(map(str, ref.obs[label_key].astype(str).str.strip())) & set(novel)
    q_col = query.obs[query_label_key]
    if not few and sum(novel.values()) == int((~untyped_label_mask(q_col)).sum()):  # no query label is a reference type
        ref_names = ref.obs[label_key].astype(str).str.strip().value_counts().index[:2]
        return (f"None of the query's labels in {md(query_label_key)} names a reference type (e.g. "
                f"{', '.join(md(k) for k in list(novel)[:2])} against the reference's {', '.join(md(k) for k in ref_names)}): "
                "they name the types otherwise, or the query holds none of the reference's types. Its labels measure "
                "nothing then: pick the query's column that names types as the reference does, or none.")
    return (f"Query types the reference lacks: {', '.join(f'{md(k)} ({v:,})' for k, v in novel.items())}: "
            f"{sum(novel.values()):,} cells a good model calls *Unknown*"
            + (f" (with {', '.join(md(k) for k in sorted(few))}, which the reference has fewer than "
               f"{AnnotateOptions.min_cells_per_class} cells of: a run leaves such a type out)" if few else "") + ".")
