"""Reading single-cell count data from the formats biologists actually have.

Every reader returns an :class:`anndata.AnnData` with cells in rows and ``X`` as CSR float32.
Anything that cannot be read raises :class:`~cellannot_core.errors.DataError` with one line
naming the file and the supported formats. Nothing is downloaded.

A short note on how the file was read is stored in ``adata.uns["cellannot_input"]``
(format and, for tables, the orientation and why it was chosen) so the app can show it.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import re
import shutil
import struct
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellannot_core.errors import DataError, shown_name

from .genes import GENE_ID_COLUMNS
from .._constants import MAX_NAME_CHARS, str_array

__all__ = [
    "SUPPORTED_FORMATS",
    "SUPPORTED_EXTENSIONS",
    "INPUT_UNS_KEY",
    "read_dataset",
    "read_uploaded",
    "sanitize_filename",
]

SUPPORTED_FORMATS = (
    "AnnData .h5ad; a MuData .h5mu (its RNA modality); a .loom (its main matrix); 10x Genomics HDF5 .h5; a 10x matrix folder "
    "(matrix.mtx[.gz] + features.tsv[.gz] or genes.tsv[.gz] + barcodes.tsv[.gz]), a kallisto | bustools one "
    "(cells_x_genes.mtx + .genes.txt + .barcodes.txt), a Parse Biosciences one (count_matrix.mtx + all_genes.csv + "
    "cell_metadata.csv) or a .zip / .tar.gz / .tgz of one; a table .csv / .tsv / .txt (optionally .gz), "
    "cells x genes or genes x cells"
)

# Longest first, so ".tar.gz" wins over ".gz" style endings.
SUPPORTED_EXTENSIONS = (
    ".csv.gz", ".tsv.gz", ".txt.gz", ".tar.gz",
    ".h5ad", ".h5mu", ".loom", ".hdf5", ".tgz", ".zip", ".tar", ".csv", ".tsv", ".txt", ".h5",
)

INPUT_UNS_KEY = "cellannot_input"

# Formats a biologist is likely to bring that are not read (R objects would need R, a .zarr store
# may name pickle codecs, which would run code): how to make an .h5ad of each.
_SEURAT_HINT = ("A Seurat or SingleCellExperiment object: in R, write an .h5ad (SeuratDisk's SaveH5Seurat then "
                "Convert(..., dest = 'h5ad'), or zellkonverter's writeH5AD) or the raw counts as a 10x folder "
                "(DropletUtils' write10xCounts)")
CONVERT_HINTS = {
    ".rds": _SEURAT_HINT, ".rda": _SEURAT_HINT, ".rdata": _SEURAT_HINT, ".h5seurat": _SEURAT_HINT,
    ".zarr": "An AnnData .zarr store: in Python, anndata.read_zarr(path).write_h5ad('data.h5ad')",
    ".xlsx": "A spreadsheet: save the sheet as .csv (cells or genes as rows, names in the first column)",
    ".xls": "A spreadsheet: save the sheet as .csv (cells or genes as rows, names in the first column)",
    # (an .h5ad compresses inside itself: one gzipped whole is a download's, found 2026-12-07)
    ".h5ad.gz": "A gzipped .h5ad: unpack it first (gunzip), then load the .h5ad",
    ".h5.gz": "A gzipped HDF5 file: unpack it first (gunzip), then load the .h5",
    ".loom.gz": "A gzipped .loom: unpack it first (gunzip), then load the .loom",
}


def unsupported_message(label: str, filename: str) -> str:
    """One line for a file of a type that is not read: how to convert it, where the type is a known
    one, then what is read."""
    low = filename.lower().rstrip("/")
    hint = next((h for ext, h in CONVERT_HINTS.items() if low.endswith(ext)), None)
    return f"{label} has an unsupported file type. " + (f"{hint}. " if hint else "") + \
        f"Supported formats: {SUPPORTED_FORMATS}."

Orientation = Literal["auto", "cells_x_genes", "genes_x_cells"]

# A table's numbers parse into float64 (8 bytes) from as little as two characters ("0,"): a
# table may need up to this many bytes of memory per byte of (decompressed) text.
_TABLE_BYTES_PER_CHAR = 4
#: memory a table's reader takes per field beside its characters: pandas parses a column a chunk of rows at a
#: time into int64 or float64 and joins the chunks (two copies), then the values are made float32 and sparse:
#: 24 bytes a value at the peak (30,000 x 2,511 counts: 1.8 GB; 40 million empty fields, one character each,
#: 2.2 GB at a 1 GB limit before the sparse matrix was made a block at a time; 2026-12-07)
_TABLE_BYTES_PER_FIELD = 24
#: memory a table's reader takes per column beside its values: pandas keeps each column apart while it
#: parses (2 rows x 4,000,000 columns took 2.87 GB, about 700 bytes a column; a probe, 2026-12-07)
_TABLE_BYTES_PER_COLUMN = 1024


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------


def read_dataset(
    path: str | Path,
    *,
    name: str = "dataset",
    orientation: Orientation = "auto",
) -> ad.AnnData:
    """Read a single-cell dataset from disk.

    Parameters
    ----------
    path
        A ``.h5ad`` file, a 10x ``.h5`` file, a 10x matrix folder, a ``.zip`` / ``.tar.gz`` /
        ``.tgz`` / ``.tar`` archive holding one such folder, or a ``.csv`` / ``.tsv`` /
        ``.txt`` table (optionally gzipped) whose first column holds row names.
    name
        What the dataset is called in error messages (e.g. ``"reference"``).
    orientation
        Only for tables: ``"auto"`` (default) guesses whether rows are cells or genes (see
        :func:`_guess_orientation`), ``"cells_x_genes"`` or ``"genes_x_cells"`` force it.

    Returns
    -------
    anndata.AnnData
        Cells x genes, ``X`` CSR float32, string obs/var names. Gene names are kept as in
        the file (duplicates are resolved later, in validation).

    Raises
    ------
    DataError
        The file is missing, of an unknown type, truncated or otherwise unreadable.
    """
    path = Path(path)
    if orientation not in ("auto", "cells_x_genes", "genes_x_cells"):
        raise DataError(
            f"orientation must be 'auto', 'cells_x_genes' or 'genes_x_cells', not {orientation!r}. "
            "Pick one of these."
        )
    if not path.exists():
        raise DataError(f"{name} file '{path}' does not exist. Check the path.")
    label = f"{name} {'folder' if path.is_dir() else 'file'} '{shown_name(path.name, 100)}'"
    if path.is_dir() and not any(path.name.lower().endswith(ext) for ext in CONVERT_HINTS):
        kind = "10x matrix folder"
    else:
        kind = _kind_of(path.name)
        if kind is None:
            raise DataError(unsupported_message(label, path.name))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*names are not unique.*")
            if kind == "10x matrix folder":
                adata = _read_mtx_dir(_find_matrix_dir(path, label), label)
            elif kind == "h5ad":
                guard_hdf5(path, label)
                adata = ad.read_h5ad(path)
                adata.uns.pop(INPUT_UNS_KEY, None)  # how *this* read went is ours to note, not the file's
            elif kind == "h5mu":
                adata = _read_h5mu(path, label)
            elif kind == "loom":
                adata = _read_loom(path, label)
            elif kind == "10x h5":
                guard_hdf5(path, label)
                adata = _read_10x_h5(path, label)
                adata.uns.pop(INPUT_UNS_KEY, None)
            elif kind == "archive":
                adata = _read_archive(path, label)
            else:  # table
                adata = _read_table(path, label, orientation)
            return _finalise(adata, label, kind)  # (in here: what it meets in X is said as the rest is)
    except DataError:
        raise
    except Exception as exc:  # anything a reader throws on a corrupt/truncated file
        raise DataError(f"could not read {label} as {kind}: {_read_failure(exc)}") from None


def sanitize_filename(filename: str) -> str:
    """Return a safe file name for an uploaded file.

    Keeps only the last path component, replaces every character outside
    ``[A-Za-z0-9._-]`` with ``_``, removes leading dots and keeps a supported extension.

    Raises
    ------
    DataError
        The name does not end in a supported extension.
    """
    base = re.split(r"[\\/]", str(filename))[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)
    ext = next((e for e in SUPPORTED_EXTENSIONS if base.lower().endswith(e)), None)
    if ext is None:
        raise DataError(unsupported_message(f"uploaded file '{base[:80]}'", base))
    stem = base[: len(base) - len(ext)].lstrip(".")[:100].strip(".") or "upload"
    return stem + ext


def read_uploaded(
    data: bytes, filename: str, *, name: str = "dataset", orientation: Orientation = "auto"
) -> ad.AnnData:
    """Read an uploaded file (bytes) from the web app.

    The bytes are written to a fresh temporary directory under :func:`sanitize_filename`
    of the uploaded name (the name is never used as a path as given), read with
    :func:`read_dataset`, and the directory is removed.

    Parameters
    ----------
    data
        The file's content.
    filename
        The name the browser sent; only used for its extension and a readable stem.
    name, orientation
        As in :func:`read_dataset`.

    Returns
    -------
    anndata.AnnData
        Fully in memory (nothing refers to the deleted temporary file).
    """
    safe = sanitize_filename(filename)
    if not data:
        raise DataError(f"uploaded {name} file '{safe}' is empty. Upload the file again.")
    tmp = Path(tempfile.mkdtemp(prefix="cellannot_upload_"))
    try:
        target = tmp / safe
        target.write_bytes(data)
        adata = read_dataset(target, name=name, orientation=orientation)
        adata.uns.setdefault(INPUT_UNS_KEY, {})["file"] = safe
        return adata
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _read_failure(exc: BaseException) -> str:
    """What a reader's exception on a damaged file means, in a few words, and what to do (the
    reader's own words are HDF5's internals: offsets and superblock addresses)."""
    text = " ".join(str(exc).split()).lower()
    if "truncated" in text or "eof" in text:
        return "the file is cut short (an upload, download or copy that did not finish); copy it again"
    if "signature" in text or "not an hdf5" in text or "file format" in text:
        return "the file is not HDF5 inside, whatever its name says; check it is the file you meant"
    if isinstance(exc, BlockingIOError) or "unable to lock file" in text:  # (taken for damage, found 2026-12-07)
        return ("another program holds the file open for writing (HDF5 locks it): close it there, or wait until it "
                "is written, then read it again")
    # the reader's words quote the file (its attributes, key and layer names): its kind of error only
    # (found 2026-12-07: an encoding-type, a column-order and a top-level key name came back in the message)
    return (f"{type(exc).__name__}. The file may be damaged, not what its name says, or laid out other than "
            "anndata writes it; copy it again, or save it again from the tool that made it")


#: a path into the readers' temporary folders (an upload's, an archive's), which a message never shows: matched
#: only from the start of a word (unanchored, it was tried from every character of a run without spaces or quotes,
#: quadratic: a zip's 96,000-character member name held a core for 66 s, found 2026-12-07)
_TEMP_PATH = re.compile(r"(?<![^\s'\"])[^\s'\"]*cellannot_(?:upload|archive)_[^/\s'\"]*/?")


def _one_line(exc: BaseException) -> str:
    """An exception's words as one line a message may quote: no temporary folder of this server, no control
    characters (they may be a file's, e.g. an archive member's name), at most 300 characters (the first 1,000
    are looked at)."""
    return shown_name(_TEMP_PATH.sub("", str(exc)[:1000]) or type(exc).__name__, 300).rstrip(".")


def _kind_of(filename: str) -> str | None:
    low = filename.lower()
    if low.endswith(".h5ad"):
        return "h5ad"
    if low.endswith(".h5mu"):
        return "h5mu"
    if low.endswith(".loom"):
        return "loom"
    if low.endswith((".h5", ".hdf5")):
        return "10x h5"
    if low.endswith((".zip", ".tar.gz", ".tgz", ".tar")):
        return "archive"
    if low.endswith((".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")):
        return "table"
    if re.search(r"\.mtx(\.gz)?$", low):
        return "10x matrix folder"  # a matrix.mtx file: read the folder around it
    return None


def check_sparse_formats(adata: ad.AnnData, label: str) -> None:
    """Refuse a sparse matrix anywhere in ``adata`` (X, layers, raw.X, obsm, varm, obsp, varp) whose
    indices are out of range or whose indptr is wrong: scipy's C code reads past its arrays on
    them and crashes the process (the whole server). Found 2026-12-06: X was checked, a corrupt
    ``layers['counts']`` or ``raw.X`` (where the counts are often kept) crashed ``annotate``."""
    where = {"X": adata.X}
    where.update({f"layers['{k}']": v for k, v in adata.layers.items()})
    if adata.raw is not None:
        where["raw.X"] = adata.raw.X
    for attr in ("obsm", "varm", "obsp", "varp"):
        where.update({f"{attr}['{k}']": v for k, v in getattr(adata, attr).items()})
    for name, m in where.items():
        if sp.issparse(m):
            try:
                m.check_format(full_check=True)
            except (ValueError, TypeError) as exc:
                raise DataError(f"{label} has a corrupt sparse matrix {shown_name(name)} ({_one_line(exc)}). Write the "
                                "file again from the original data.") from None


#: what X holds, by numpy's kind of its values, when it is not numbers
_NOT_NUMBERS = {"S": "text", "U": "text", "O": "object (text or variable-length array)",
                "V": "record (compound or opaque)", "c": "complex", "M": "date", "m": "time-span"}


def _check_numbers(X: Any, label: str, what: str = "X") -> None:
    """Refuse an X whose values are not numbers (text, records, variable-length arrays, references, complex
    numbers), by its dtype, before they are converted: numpy's words for a failed conversion quote the
    file (found 2026-12-07: "could not convert string to float: np.bytes_(b'SECRET-GENE-\\x1b[31m...')",
    and a raw TypeError or ValueError, outside the reader's one line, for records and arrays)."""
    dtype = getattr(X, "dtype", None)
    if isinstance(dtype, np.dtype) and dtype.kind in "biuf" and dtype.subdtype is None:
        return
    kind = _NOT_NUMBERS.get(dtype.kind, str(dtype.kind)) if isinstance(dtype, np.dtype) else "no array of"
    if isinstance(dtype, np.dtype) and dtype.subdtype is not None:  # an HDF5 array type: an array in each value
        kind = "array"
    raise DataError(f"{label}: {what} holds {kind} values, not numbers. Save the counts (or normalised values) as "
                    "integers or floats in X, and try again.")


def _finalise(adata: ad.AnnData, label: str, kind: str) -> ad.AnnData:
    """CSR float32 X, string names, and a note of how it was read."""
    if adata.X is None:  # zellkonverter and others may leave X empty beside a counts layer
        from .values import COUNT_LAYERS

        layer = next((k for k in COUNT_LAYERS if k in adata.layers), None)
        if layer is None:
            raise DataError(
                f"{label} has no expression matrix (X is empty, and no layer named {', '.join(COUNT_LAYERS)}). "
                "Save the counts in X and try again."
            )
        adata.X = adata.layers[layer]
    _check_numbers(adata.X, label)
    check_sparse_formats(adata, label)
    X = adata.X
    if not sp.issparse(X):
        X = sp.csr_matrix(np.asarray(X, dtype=np.float32))  # float16 and other dtypes scipy cannot hold
    X = sp.csr_matrix(X, dtype=np.float32)
    X.sort_indices()
    adata.X = X
    adata.obs_names = adata.obs_names.astype(str)
    adata.var_names = adata.var_names.astype(str)
    prior = adata.uns.get(INPUT_UNS_KEY)
    info = dict(prior) if isinstance(prior, dict) else {}
    info.setdefault("format", kind)
    adata.uns[INPUT_UNS_KEY] = info
    return adata


def upload_limit_mb(configured_mb: float) -> int:
    """Largest upload the app accepts, in MB: Streamlit's ``server.maxUploadSize`` (``configured_mb``),
    lowered to a third of :func:`memory_limit_bytes`, since an upload is held in memory by Streamlit,
    copied to a temporary file and then parsed (a 2 GB upload cost ~4 GB)."""
    return max(1, min(int(configured_mb), memory_limit_bytes() // (3 * 1024**2)))


def memory_limit_bytes() -> int:
    """The most a dataset may expand to in memory: ``$CELLANNOT_MEMORY_LIMIT_GB`` (GiB), by
    default half of this machine's memory."""
    import os

    from .._constants import env_number

    gb = env_number("CELLANNOT_MEMORY_LIMIT_GB", None, low=1e-9)
    if gb is not None:
        return int(gb * 1024**3)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


HDF5_MAX_CHUNKS = 1_000_000
HDF5_TINY_CHUNK = 256
"""A dataset stored in more than :data:`HDF5_MAX_CHUNKS` chunks of fewer than :data:`HDF5_TINY_CHUNK`
values each is refused: each chunk is read, decompressed and indexed on its own, so an .h5ad whose
counts were written in 1-value chunks read 400 times slower than one written by anndata (400,000
counts: 8.6 s against 0.02 s, 2026-12-06), and an upload of the size allowed would hold a server's
core for the better part of an hour. anndata, scanpy, h5py's own guess and R's writers use chunks of
thousands of values."""

HDF5_MAX_OBJECTS = 20_000
"""Groups, datasets and links an HDF5 file may hold. An AnnData holds hundreds (a categorical obs
column is three); a file of a hundred thousand empty groups (104 MB) took this check 67 s to walk and
anndata 25 s to read, so an upload of the size allowed would hold a server's core for about half an
hour before any check on its data could run."""

HDF5_MAX_DEPTH = 32
"""Groups within groups an HDF5 file may nest. AnnData nests a handful (``uns`` a few more); a chain
of 5,000 groups (5.6 MB) took the walk 537 s, each name resolved again from the root (found 2026-12-07)."""

HDF5_MAX_ATTRIBUTES = 100_000
"""Attributes an HDF5 file may hold in all: AnnData writes two to four per group or dataset; 200,000
(11 MB) took 9 s to measure, growing with their number (found 2026-12-07)."""

#: bytes of a Python object beside its text: each fixed-length string element becomes one str when read
#: (a 27 KB .h5ad of 20 million two-byte obs names took 2.4 GB at a 0.25 GB limit, found 2026-12-07)
STRING_OBJECT_BYTES = 64


def fixed_string_bytes(dtype) -> int:
    """Bytes beyond its stored size that one element of ``dtype`` takes once read: a fixed-length string
    becomes a Python str (:data:`STRING_OBJECT_BYTES`) and anndata widens bytes to 4-byte characters; a
    record counts each of its fields (200,000 records of a 1,000-byte field, 412 KB stored, took 1.3 GB at a
    0.25 GB limit, found 2026-12-07)."""
    if dtype.names:
        return sum(fixed_string_bytes(dtype.fields[k][0]) for k in dtype.names)
    if dtype.subdtype is not None:  # an array type: each of its elements (an array of 1,000 S1000 strings
        base, shape = dtype.subdtype  # counted at its stored 1 MB took 2.5 GB at a 0.5 GB limit, found 2026-12-07)
        return int(np.prod(shape, dtype=np.float64)) * fixed_string_bytes(base)
    if dtype.kind == "S":
        return STRING_OBJECT_BYTES + 3 * dtype.itemsize
    return STRING_OBJECT_BYTES if dtype.kind == "U" else 0


#: variable-length elements a variable-length sequence of variable-length elements (strings, or records holding
#: them) counts as: its stored pointers (16 bytes each) may all share one stored string, so one such element expands
#: to the file's size times a sixteenth of it, past any bound by the file's size: so many that it is always measured
#: (a 1.3 MB .h5ad holding one sequence of 30,000 strings sharing one of 100,000 characters, in uns or as an
#: attribute anndata reads, took 3.1 GB at a 0.5 GB limit, found 2026-12-07 by a seventh probe)
NESTED_SLOTS = 1 << 40


def variable_length_slots(dtype) -> int:
    """Variable-length elements (strings) one element of ``dtype`` holds: a record's fields and an array type's
    elements each count (a record of 1,000 strings counted as one: 1.1 MB took 5.1 GB, found 2026-12-07); a
    sequence of variable-length elements counts :data:`NESTED_SLOTS`."""
    import h5py

    if dtype.names:
        return sum(variable_length_slots(dtype.fields[k][0]) for k in dtype.names)
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return int(np.prod(shape, dtype=np.float64)) * variable_length_slots(base)
    inner = h5py.check_vlen_dtype(dtype)
    if isinstance(inner, np.dtype) and inner.hasobject:  # (a string's is the type str)
        return NESTED_SLOTS
    return 1 if dtype.hasobject else 0


#: bytes of one stored chunk beyond twice its dataset's: HDF5 decompresses a whole chunk to read any value of it,
#: and a chunk may be declared far larger than its dataset when the dataset may grow (maxshape None): an X of
#: 100 x 50 values in one 2 GB gzipped chunk (2 MB) took 2.3 GB to read, and a string dataset in one 1 GB chunk
#: held the measuring child for its 300 s (found 2026-12-07). h5py's own chunks are at most 1 MB; anndata,
#: scanpy, 10x and loompy write those or smaller.
HDF5_CHUNK_SLACK = 4 << 20


def chunk_too_big(chunks: tuple, shape: tuple, itemsize: int, limit: int) -> bool:
    """Whether a dataset's chunk passes twice the dataset (and :data:`HDF5_CHUNK_SLACK`), or an eighth of the
    memory limit (at least the slack): a reader holds a whole chunk to read any value of it."""
    chunk = np.prod(chunks, dtype=np.float64) * itemsize
    return bool(chunk > max(limit / 8, HDF5_CHUNK_SLACK)
                or chunk > 2 * np.prod(shape, dtype=np.float64) * itemsize + HDF5_CHUNK_SLACK)


#: HDF5's filters that unpack a chunk into as much as its stored stream says (deflate: gzip; szip; h5py's lzf), the
#: checksum that may follow one, and the filters that unpack a chunk into as many values as their parameters say
HDF5_DEFLATE, HDF5_SZIP, HDF5_LZF, HDF5_FLETCHER32 = 1, 4, 32000, 3
HDF5_NBIT, HDF5_SCALEOFFSET, HDF5_SHUFFLE = 5, 6, 2


def chunk_inflation(ds, room: list[int]) -> str | None:
    """What is wrong with how the chunks of the HDF5 dataset ``ds`` are compressed, or None. HDF5's deflate
    (gzip) unpacks a chunk's stored stream whole, however far past the chunk's own size it runs, h5py's lzf
    grows its buffer until the stream ends and szip takes the size its stream's first four bytes give, so a
    chunk's decompressed size is not its shape's: a 2 MB .h5ad whose one 2 MB chunk held a gzip stream of 2 GB of
    zeros took 2.2 GB at a 0.5 GB limit, and an lzf stream of 2.4 MB unpacked to 211 MB in 21 s; the nbit and
    scale-offset filters unpack as many values as their parameters in the file say, and a scale-offset chunk said
    to hold 500 million values crashed the process (found 2026-12-07 by a seventh probe). Those parameters must be
    the chunk's, and each chunk's stored stream is unpacked here to its chunk's size and one byte more (lzf's
    measured by its lengths alone, szip's by the size it gives): more is refused, as is a filter after the
    compression but the checksum (no writer puts one there; this could not read past it).

    ``room[0]``: the file's bytes no chunk checked so far has taken; a chunk takes its stored size from it, and
    chunks taking more than the file holds are refused. A chunk's index gives its place and size, and chunks at one
    place are unpacked each: a 0.8 MB .h5ad whose 20,000 chunks all pointed at one 8 KB gzip stream of 8 MB of
    zeros held this check for minutes (found 2026-12-07 by a ninth probe); no writer shares a chunk's bytes.
    A chunk that no filter resizes (none, the shuffle, the checksum, or the compression skipped by the chunk's filter
    mask) must be stored at its own size: HDF5 read a 1-byte one as a chunk of 8 MB and the process ended by SIGSEGV
    (a 20 KB .h5ad; the same probe)."""
    plist = ds.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    codes = [f[0] for f in filters]
    n_values = int(np.prod(ds.chunks, dtype=np.float64))
    if any(code in (HDF5_NBIT, HDF5_SCALEOFFSET) and (len(values) < 5 or values[2] != n_values
                                                       or values[4] != ds.dtype.itemsize)
           for code, _, values, *_ in filters):
        return "whose filter's parameters do not fit its chunks"
    packed = [i for i, code in enumerate(codes) if code in (HDF5_DEFLATE, HDF5_SZIP, HDF5_LZF)]
    if len(packed) > 1 or packed and any(code != HDF5_FLETCHER32 for code in codes[packed[0] + 1:]):
        return "compressed twice, or with a filter after its compression"
    at, code = (packed[0], codes[packed[0]]) if packed else (-1, None)
    import h5py

    # (a variable-length element is a 16-byte pointer as stored, 8 or 16 in memory: exact unless in a record)
    cap = n_values * ds.dtype.itemsize * (2 if ds.dtype.hasobject else 1)
    exact = not ds.dtype.hasobject or h5py.check_vlen_dtype(ds.dtype) is not None
    resizing = [i for i, c in enumerate(codes) if c not in (HDF5_SHUFFLE, HDF5_FLETCHER32)]
    sums = [i for i, c in enumerate(codes) if c == HDF5_FLETCHER32]
    over: list[str] = []

    def chunk(info) -> None:
        if over:
            return
        room[0] -= info.size
        if room[0] < 0:
            over.append("whose chunks take more bytes than the file holds (chunks stored at one place)")
            return
        skipped = info.filter_mask
        if all(skipped >> i & 1 for i in resizing):  # stored as it is read (but for a checksum of 4 bytes)
            if exact and info.size != cap + 4 * sum(not skipped >> i & 1 for i in sums):
                over.append("whose chunks are stored at another size than their own")
            return
        if code is None or skipped >> at & 1:  # (nbit or scale-offset alone: their parameters are checked)
            return
        stored = ds.id.read_direct_chunk(info.chunk_offset)[1]
        if code == HDF5_SZIP:
            size = int.from_bytes(stored[:4], "little")
        elif code == HDF5_LZF:
            size = _lzf_walk()(np.frombuffer(stored, dtype=np.uint8), cap)
        else:
            size = _deflate_size(stored, cap)
        if size > cap:
            over.append("whose compressed chunks unpack past their own size")
        elif exact and 0 <= size < cap and all(skipped >> i & 1 for i in resizing if i != at):  # (short: SIGSEGV, as above)
            over.append("whose chunks are stored at another size than their own")

    ds.id.chunk_iter(chunk)
    return over[0] if over else None


def _deflate_size(stored: bytes, cap: int) -> int:
    """The bytes the zlib stream ``stored`` unpacks to, ``cap`` + 1 for more (read that far at most); -1 for a
    damaged stream (the reader reports it)."""
    unpack = zlib.decompressobj()
    try:
        n = len(unpack.decompress(stored, cap))
        return n + len(unpack.decompress(unpack.unconsumed_tail, 1)) if n == cap else n
    except zlib.error:
        return -1


def _lzf_size(stored: np.ndarray, cap: int) -> int:
    """The bytes the lzf stream ``stored`` (uint8) unpacks to (stopped once past ``cap``), by its runs' lengths
    alone (compiled by numba where it is installed, as scanpy has it: 40 MB in 0.03 s, not 2 s)."""
    i, out, n = 0, 0, len(stored)
    while i < n:
        ctrl = int(stored[i])
        if ctrl < 32:  # a run of ctrl + 1 bytes as they are
            out += ctrl + 1
            i += ctrl + 2
        else:  # a copy of (ctrl >> 5) + 2 bytes, 7 meaning more in the next byte
            length = ctrl >> 5
            if length == 7:
                length += int(stored[i + 1]) if i + 1 < n else 0
                i += 1
            out += length + 2
            i += 2
        if out > cap:
            return out
    return out


@functools.lru_cache(maxsize=1)
def _lzf_walk():
    """:func:`_lzf_size`, compiled when first needed (no OpenMP: a plain numba function)."""
    try:
        import numba

        return numba.njit(nogil=True)(_lzf_size)
    except ImportError:  # pragma: no cover - numba comes with scanpy
        return _lzf_size


def guard_hdf5(path: Path, label: str, *, whole: tuple[str, ...] | None = None) -> None:
    """Refuse an HDF5 file (``.h5ad``, 10x ``.h5``) that reaches outside itself or expands past
    :func:`memory_limit_bytes`, before anndata or scanpy read a byte of its data.

    ``whole``: only these members (e.g. ``("obs", "var")``) count against the limit,
    for a reader that reads them whole and the rest in bounded chunks (:mod:`.stream`).

    External links, datasets stored in external files and virtual datasets can point h5py at any
    file on the server (``/etc/passwd``, another user's data), which the annotated download
    would then hand to the visitor. Their decompressed size is summed from the datasets' shapes
    (compressed zeros expand ~900x), each time a name reaches them: a soft link to a dataset is read
    again under its name; a group reached by a second name (a soft or a hard link) is refused (20 such
    links to X in a 6.5 MB file took 3.6 GB against a 0.5 GB limit, 2026-12-06).
    """
    import h5py

    limit = memory_limit_bytes()
    total = n_objects = n_text = n_attrs = 0  # n_text: variable-length elements (strings), whose size only reading tells
    problem: list[str] = []
    tiny: list[tuple[str, int]] = []  # datasets stored in countless tiny chunks (name, values per chunk)
    groups: set[int] = set()  # the groups seen, by object
    tables: list[str] = []  # the groups with a column-order or an _index (data frames)
    room = [path.stat().st_size]  # the file's bytes its checked chunks may take (chunk_inflation)

    def text_in_attrs(obj) -> int:
        """The attributes' variable-length elements; their fixed-length strings and every attribute
        counted on the way (an unreadable type or a table listing a column twice is a problem)."""
        nonlocal total, n_attrs
        n = 0
        if isinstance(obj, h5py.Group) and ("column-order" in obj.attrs or "_index" in obj.attrs):
            tables.append(obj.name)  # (their names are read after the walk, once their size is known)
        for k in obj.attrs:
            n_attrs += 1
            if n_attrs > HDF5_MAX_ATTRIBUTES:
                break
            a = obj.attrs.get_id(k)
            try:
                dtype, size = a.dtype, int(np.prod(a.shape, dtype=np.float64)) if a.shape else 1
            except Exception:  # noqa: BLE001 - a type h5py cannot read
                problem.append(f"an attribute ('{shown_name(k)}') of a kind anndata does not write")
                continue
            n += size * variable_length_slots(dtype)
            total += size * fixed_string_bytes(dtype)
        return n

    def visit(name: str, link) -> bool | None:
        nonlocal total, n_objects, n_text
        n_objects += 1
        if n_objects > HDF5_MAX_OBJECTS or n_attrs > HDF5_MAX_ATTRIBUTES:
            return True  # h5py stops walking
        if isinstance(link, h5py.ExternalLink):
            problem.append(f"an external link ('{shown_name(name)}') to another file")
            return True
        if name.count("/") >= HDF5_MAX_DEPTH:
            problem.append(f"groups nested more than {HDF5_MAX_DEPTH} deep ('{shown_name(name)}')")
            return True
        obj = f.get(name)
        if isinstance(obj, h5py.Group):  # a group under a second name (soft or hard link) is read again whole
            key = hash(obj.id)  # the object, whatever name reaches it (h5py hashes ids by object)
            if isinstance(link, h5py.SoftLink) or key in groups:  # anndata never writes either
                problem.append(f"a link ('{shown_name(name)}') to a group of the same file")
                return True
            groups.add(key)
        elif isinstance(link, h5py.SoftLink) and not isinstance(obj, h5py.Dataset):
            return None  # dangling: the reader reports it
        if isinstance(obj, h5py.Dataset):
            try:
                dtype = obj.dtype
            except Exception:  # noqa: BLE001 - HDF5's TIME and other types h5py cannot read: anndata writes none
                problem.append(f"a dataset ('{shown_name(name)}') of a kind anndata does not write")
                return True
            if obj.external:
                problem.append(f"a dataset ('{shown_name(name)}') stored in external files")
            elif obj.is_virtual:
                problem.append(f"a virtual dataset ('{shown_name(name)}') that maps other files")
            elif obj.chunks and chunk_too_big(obj.chunks, obj.shape, dtype.itemsize, limit):
                problem.append(f"a dataset ('{shown_name(name)}') stored in chunks of "
                               f"{np.prod(obj.chunks, dtype=np.float64) * dtype.itemsize / 2**20:,.1f} MB, far larger "
                               "than the dataset or than a reader takes at once")
            elif obj.chunks and int(np.prod(obj.chunks, dtype=np.float64)) < HDF5_TINY_CHUNK and obj.shape and \
                    np.prod(obj.shape, dtype=np.float64) / np.prod(obj.chunks, dtype=np.float64) > HDF5_MAX_CHUNKS:
                tiny.append((shown_name(name), int(np.prod(obj.chunks, dtype=np.float64))))
            else:
                if whole is None or any(name == w or name.startswith(w + "/") for w in whole):
                    n = int(np.prod(obj.shape, dtype=np.float64)) if obj.shape else 0
                    total += n * (dtype.itemsize + fixed_string_bytes(dtype))
                    n_text += n * variable_length_slots(dtype)
                if total > limit:  # refused below by its size, before its chunks are unpacked (a 16 MB file of
                    return True    # 2,000 distinct gzipped chunks held the check 35 s first, 2026-12-07)
                if obj.chunks and (why := chunk_inflation(obj, room)) is not None:
                    problem.append(f"a dataset ('{shown_name(name)}') {why}")
        if obj is not None:
            n_text += text_in_attrs(obj)
        return True if problem else None

    try:
        f = h5py.File(path, "r")
    except OSError as exc:  # said as read_dataset says it (predict's reader in chunks, which opens the file here
        raise DataError(f"could not read {label}: {_read_failure(exc)}") from None  # first, said "internal error")
    with f:
        n_text += text_in_attrs(f)
        f.visititems_links(visit)
    if n_objects > HDF5_MAX_OBJECTS or n_attrs > HDF5_MAX_ATTRIBUTES:
        raise DataError(f"{label} is refused: it holds more than {HDF5_MAX_OBJECTS:,} HDF5 groups, datasets and links, "
                        f"or more than {HDF5_MAX_ATTRIBUTES:,} attributes, where an AnnData holds hundreds; remove the "
                        "extra entries (e.g. of uns) and save it again.")
    if problem:
        raise DataError(f"{label} is refused: it contains {problem[0]}. Files that point outside themselves, to "
                        "one part of themselves under two names, or are not laid out as anndata writes them are not "
                        "read on this server; save the data into one self-contained file (e.g. anndata's write_h5ad) "
                        "and load that.")
    if tiny:
        raise DataError(f"{label} is refused: it stores '{tiny[0][0]}' in more than {HDF5_MAX_CHUNKS:,} chunks of "
                        f"{tiny[0][1]} value{'s' if tiny[0][1] != 1 else ''} each, which would take hours to read; save "
                        "it again with anndata (adata.write_h5ad) or scanpy, which store it in chunks of thousands.")
    if total > limit:
        raise DataError(f"{label} expands to {total / 1024**3:.1f} GiB in memory, above this server's limit of "
                        f"{limit / 1024**3:.1f} GiB (CELLANNOT_MEMORY_LIMIT_GB): subsample the cells or keep fewer "
                        "genes, or run it on a machine with more memory.")
    # each string may point at any stored one, so at most the file's size each: measured when that could pass
    # (the child checks the tables' layout too, since reading their names could pass the limit); else every
    # string fits, and the tables are checked here
    if n_text * float(path.stat().st_size) > limit - total:
        _guard_hdf5_text(path, label, limit - total, whole)
        return
    from .h5text import table_problems

    with h5py.File(path, "r") as f:
        found = table_problems(f, tables)
    if found:
        raise DataError(f"{label} is refused: it contains {shown_name(found, 120)}, which anndata never writes; save "
                        "the data again with anndata (adata.write_h5ad) and load that.")


#: seconds the child measuring a file's strings may take (a million cells' names take about a second)
HDF5_TEXT_SECONDS = 300.0


def _guard_hdf5_text(path: Path, label: str, budget: int, whole: tuple[str, ...] | None) -> None:
    """Refuse a file whose variable-length strings and attributes expand past ``budget`` bytes, measured
    by reading them in a child process held to that much memory (:mod:`.h5text`)."""
    import json
    import os
    import subprocess
    import sys

    from . import h5text

    cmd = [sys.executable, "-I", h5text.__file__, str(path), str(max(int(budget), 0)), json.dumps(list(whole or ()))]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=HDF5_TEXT_SECONDS,
                              # without HDF5's lock: a file this process holds open for writing (a notebook's
                              # ad.read_h5ad(path, backed="r+")) was refused as damaged, found 2026-12-07
                              env=dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                                       HDF5_USE_FILE_LOCKING="FALSE"))
    except subprocess.TimeoutExpired:
        raise DataError(f"{label} is refused: reading its names and other text took more than "
                        f"{HDF5_TEXT_SECONDS:.0f} s, where a million cells' take about a second; save it again with "
                        "anndata (adata.write_h5ad) and load that.") from None
    except OSError:  # no child process on this system: the reader goes on as before
        return
    if done.returncode == h5text.OVER or done.returncode < 0:  # (< 0: killed, e.g. out of memory)
        raise DataError(f"{label} is refused: its names and other text expand past this server's memory limit of "
                        f"{memory_limit_bytes() / 1024**3:.1f} GiB (CELLANNOT_MEMORY_LIMIT_GB) once read: many of its "
                        "strings share one long stored string, or it holds far more text than an AnnData does; save "
                        "the data again with anndata (adata.write_h5ad) and load that.")
    if done.returncode == h5text.LAYOUT:
        raise DataError(f"{label} is refused: it contains {shown_name(done.stdout.strip(), 120)}, which anndata never "
                        "writes; save the data again with anndata (adata.write_h5ad) and load that.")
    if done.returncode != 0:  # not measured: refused, not read (a crash of the child read as "fits" let it through)
        raise DataError(f"{label} is refused: its names and other text could not be read to measure them (parts of "
                        "it are damaged or of a kind anndata does not write); save the data again with anndata "
                        "(adata.write_h5ad) and load that.")


#: the names MuData files give their RNA modality (muon, scvi-tools, CITE-seq and multiome pipelines)
RNA_MODALITIES = ("rna", "gex", "gene expression", "rna-seq", "rnaseq")


def _read_h5mu(path: Path, label: str) -> ad.AnnData:
    """A MuData ``.h5mu``'s RNA modality (named like :data:`RNA_MODALITIES`, or the only one), read
    with anndata (no mudata needed), with the file's own cell annotations (its top-level ``obs``,
    e.g. the cell types of a joint analysis) joined to its cells. Guarded as an ``.h5ad`` is,
    only the modality and the annotations counting against the memory limit."""
    import h5py
    from anndata.io import read_elem

    with h5py.File(path, "r") as f:  # /mod itself only through a link inside this file (the guard walks below it)
        own = isinstance(f.get("mod", getlink=True), h5py.HardLink)
        if "mod" in f.keys() and not own:  # (keys() lists a link without following it)
            raise DataError(f"{label} is refused: its /mod is a link, not the modalities themselves. Files that "
                            "point outside themselves are not read on this server; save it again with mudata.")
        mods = list(f["mod"].keys()) if isinstance(f.get("mod"), h5py.Group) else []
    if not mods:
        raise DataError(f"{label} holds no modalities (no /mod group): it is not a MuData file. Save it again "
                        "with mudata, or give the RNA data as .h5ad")
    rna = [m for m in mods if m.lower() in RNA_MODALITIES] or (mods if len(mods) == 1 else [])
    if len(rna) != 1:
        raise DataError(f"{label} holds {len(mods)} modalities and none is named rna or gex: save the RNA one as "
                        "an .h5ad (mudata.read_h5mu(path)[name].write_h5ad('rna.h5ad')) and give that")
    mod = rna[0]
    try:
        guard_hdf5(path, label, whole=(f"mod/{mod}", "obs"))
    except DataError as err:
        if "GiB in memory" not in str(err):
            raise
        raise DataError(f"{err} Or save its {shown_name(mod)} modality as an .h5ad (mudata.read_h5mu(path)[{shown_name(mod)!r}]"
                        ".write_h5ad('rna.h5ad')): an .h5ad query is labelled a chunk at a time") from None
    with h5py.File(path, "r") as f:
        adata = read_elem(f["mod"][mod])
        shared = read_elem(f["obs"]) if isinstance(f.get("obs"), h5py.Group) else None
    if shared is not None and len(shared.columns) and shared.index.is_unique:
        own = [c for c in shared.columns if not str(c).startswith(f"{mod}:") and ":" not in str(c)
               and c not in adata.obs.columns]  # "rna:x" is the modality's own x; "prot:x" another's
        if own:
            shared = shared[own].reindex(adata.obs_names.astype(str))
            for c in own:
                adata.obs[c] = shared[c].to_numpy()
    adata.uns[INPUT_UNS_KEY] = {"format": "h5mu", "modality": mod}
    return adata


#: where loom files name their cells and genes (loompy's defaults first, then HCA's, scanpy's, SCope's)
LOOM_CELL_NAMES = ("CellID", "obs_names", "cell_names", "CellId", "cellid", "cell_id", "barcode", "Barcode")
LOOM_GENE_NAMES = ("Gene", "var_names", "gene_names", "gene_name", "Gene_name", "Accession", "gene_ids", "gene")
LOOM_BLOCK_VALUES = 1 << 25  # values of the main matrix read at once (128 MB of float32)
LOOM_DENSE_FACTOR = 10  # a loom's dense matrix may be this many times the memory limit (10% non-zero fits it)


def _read_loom(path: Path, label: str) -> ad.AnnData:
    """A loom file (loompy's layout, as velocyto, the Linnarsson lab's atlases, SCope and the Human Cell
    Atlas write it) read with h5py, no loompy needed: its main matrix (genes x cells, stored dense) a
    block of cells at a time into a sparse cells x genes matrix, its cells' and genes' names and their
    one-dimensional attributes (a cell's cluster, class or tissue) as ``obs`` and ``var``. Guarded as an
    ``.h5ad`` is; the matrix counts against the memory limit by what it holds, not its dense size."""
    import h5py

    guard_hdf5(path, label, whole=("row_attrs", "col_attrs"))
    limit = memory_limit_bytes()
    with h5py.File(path, "r") as f:
        m = f.get("matrix")
        if not isinstance(m, h5py.Dataset) or m.ndim != 2:
            raise DataError(f"{label} has no /matrix of two dimensions: it is not a loom file. Save it again with "
                            "loompy, or give the data as .h5ad")
        n_genes, n_cells = (int(v) for v in m.shape)
        if not np.issubdtype(m.dtype, np.number):
            raise DataError(f"{label}'s /matrix holds {m.dtype} values, not numbers: it is not a loom file's counts")
        dense = float(n_genes) * n_cells * 4
        if dense > LOOM_DENSE_FACTOR * limit:  # (reading its blocks would take hours, whatever they hold)
            raise DataError(f"{label}'s matrix is {dense / 1024**3:,.0f} GiB as stored (dense), more than "
                            f"{LOOM_DENSE_FACTOR} times this server's memory limit (CELLANNOT_MEMORY_LIMIT_GB): save "
                            "it as an .h5ad, which keeps only its non-zero counts and is read a chunk at a time")
        var, gene_key = _loom_attrs(f.get("row_attrs"), n_genes, LOOM_GENE_NAMES)
        obs, cell_key = _loom_attrs(f.get("col_attrs"), n_cells, LOOM_CELL_NAMES)
        if gene_key is None:
            raise DataError(f"{label} names its genes in none of the row attributes a loom file uses for them "
                            f"({', '.join(LOOM_GENE_NAMES[:4])}, ...): save it with the gene names as 'Gene'")
        step = max(1, LOOM_BLOCK_VALUES // max(1, n_genes))
        blocks, held = [], 0
        for start in range(0, n_cells, step):
            block = sp.csr_matrix(np.asarray(m[:, start:start + step], dtype=np.float32).T)
            held += block.data.nbytes + block.indices.nbytes
            if held > limit:
                raise DataError(f"{label}'s matrix holds more than {limit / 1024**3:.1f} GiB of values, above this "
                                "server's limit (CELLANNOT_MEMORY_LIMIT_GB): subsample the cells or keep fewer genes, "
                                "or run it on a machine with more memory.")
            blocks.append(block)
        layers = sorted(f["layers"].keys()) if isinstance(f.get("layers"), h5py.Group) else []
    X = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, n_genes), dtype=np.float32)
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.uns[INPUT_UNS_KEY] = {"format": "loom", "layers": [str(k) for k in layers][:20],
                                "cell_names": cell_key or "(none: numbered)"}
    return adata


def _loom_attrs(group, n: int, name_keys: tuple[str, ...]) -> tuple[pd.DataFrame, str | None]:
    """A loom's row or column attributes as a DataFrame of ``n`` rows, indexed by the first of
    ``name_keys`` it holds (numbered when none), and that key; attributes of other shapes are left out."""
    import h5py

    cols: dict[str, np.ndarray] = {}
    if isinstance(group, h5py.Group):
        for key, ds in group.items():
            if isinstance(ds, h5py.Dataset) and ds.shape == (n,):
                values = ds[()]
                if values.dtype.kind in "SO":  # fixed-length bytes (loompy) or variable-length strings
                    values = np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                                       for v in values], dtype=object)
                cols[str(key)] = values
    key = next((k for k in name_keys if k in cols), None)
    index = pd.Index(str_array(cols.pop(key)) if key else [str(i) for i in range(n)], dtype=object)  # (not <U, as wide as the longest)
    return pd.DataFrame(cols, index=index), key


def _read_10x_h5(path: Path, label: str = "the file") -> ad.AnnData:
    """A Cell Ranger HDF5 file (v3, or v2 with one genome); an AnnData saved as .h5 also works. scanpy makes
    each of its text datasets (barcodes, gene names and ids, feature types) a fixed-width array, every element
    as wide as the longest: names past :data:`MAX_NAME_CHARS`, or arrays that would take more than a quarter of
    the memory limit so, are refused first (guard_hdf5 has bounded the text as stored)."""
    import h5py

    with h5py.File(path, "r") as f:
        keys = set(f.keys())
        texts: list[str] = []
        if "matrix" in keys or not {"X", "obs", "var"} <= keys:
            f.visititems(lambda name, obj: texts.append(name) if isinstance(obj, h5py.Dataset) and (
                obj.dtype.kind == "S" or h5py.check_string_dtype(obj.dtype) is not None) else None)
        wide = 0
        for name in texts:
            ds = f[name]
            longest = (ds.dtype.itemsize if ds.dtype.kind == "S" else
                       max(map(len, np.atleast_1d(ds[()]).reshape(-1)), default=0))
            if longest > MAX_NAME_CHARS:
                raise DataError(f"{label} holds a name of {longest:,} characters in '{shown_name(name, 60)}', where a "
                                f"barcode or a gene's name or id has at most {MAX_NAME_CHARS:,}: it is not a Cell Ranger "
                                "file as written; export the matrix again")
            wide += 4 * longest * ds.size
        if wide > memory_limit_bytes() // 4:
            raise DataError(f"{label}'s names would take {wide / 1024**3:.1f} GiB as the reader holds them (each as "
                            "wide as the longest), above a quarter of this server's memory limit "
                            "(CELLANNOT_MEMORY_LIMIT_GB): subsample the cells, or save the data as .h5ad")
    if "matrix" not in keys and {"X", "obs", "var"} <= keys:
        return ad.read_h5ad(path)
    import scanpy as sc  # (after the checks: importing it takes 0.14 GB)

    return sc.read_10x_h5(path, gex_only=False)  # (as the mtx reader: get_counts keeps the genes and says so)


def _is_gzip(path: Path) -> bool:
    """gzip by its first two bytes, whatever the file is called (a gzipped table named .csv)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def _open_text(path: Path):
    enc = _text_encoding(path)
    if path.name.lower().endswith(".gz") or _is_gzip(path):
        return gzip.open(path, "rt", encoding=enc, errors="replace")
    return open(path, encoding=enc, errors="replace")


TEXT_SAMPLE = 4 << 20  # bytes of a text table its encoding is told from


def _text_encoding(path: Path) -> str:
    """A text table's encoding: by its byte-order mark (UTF-8, or UTF-16 as Excel's "Unicode text"
    saves), else UTF-8 when its first :data:`TEXT_SAMPLE` bytes decode as such, else Windows-1252
    (Excel on Windows saves a CSV so: "Müller glia" as one byte 0xFC), else latin-1 (any byte)."""
    st = path.stat()
    return _encoding_of(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _encoding_of(path: str, _mtime_ns: int, _size: int) -> str:
    opener = gzip.open if path.lower().endswith(".gz") or _is_gzip(Path(path)) else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(TEXT_SAMPLE)
    except (OSError, EOFError, zlib.error):
        return "utf-8"  # (the reader reports what is wrong with the file)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    try:
        head.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as err:
        if err.reason == "unexpected end of data" and len(head) == TEXT_SAMPLE:
            return "utf-8"  # a character cut by the sample's end
    try:
        head.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "latin-1"


def _first_existing(folder: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for suffix in ("", ".gz"):
            cand = folder / f"{stem}{suffix}"
            if cand.is_file():
                return cand
    return None


_MTX_RE = re.compile(r"^(.*?)matrix\.mtx(\.gz)?$")


def _matrix_prefixes(folder: Path) -> list[str]:
    """The prefixes of the matrix files in ``folder``: ``""`` for Cell Ranger's ``matrix.mtx``,
    ``"GSM123_"`` for a GEO download's ``GSM123_matrix.mtx.gz``."""
    try:
        names = [p.name for p in folder.iterdir() if p.is_file()]
    except OSError:
        return []
    return sorted({m.group(1) for n in names if (m := _MTX_RE.match(n))})


#: kallisto | bustools (``kb count``): cells x genes, the barcodes and genes listed beside it (gene IDs,
#: and since kb-python 0.28 their names); ``total`` is the nascent + mature + ambiguous sum of ``--workflow nac``
KB_STEM = "cells_x_genes"


def _kb_files(folder: Path) -> tuple[Path, Path, Path | None, Path] | None:
    """A ``kb count`` matrix in ``folder``: (matrix, gene IDs, gene names or None, barcodes), or None."""
    mtx = _first_existing(folder, (f"{KB_STEM}.mtx", f"{KB_STEM}.total.mtx"))
    ids = _first_existing(folder, (f"{KB_STEM}.genes.txt",))
    bcs = _first_existing(folder, (f"{KB_STEM}.barcodes.txt",))
    if mtx is None or ids is None or bcs is None:
        return None
    return mtx, ids, _first_existing(folder, (f"{KB_STEM}.genes.names.txt",)), bcs


def _parse_files(folder: Path) -> tuple[Path, Path, Path] | None:
    """A Parse Biosciences (split-pipe) ``DGE_filtered`` folder: (the cells x genes matrix,
    ``all_genes.csv``, ``cell_metadata.csv``), or None."""
    mtx = _first_existing(folder, ("count_matrix.mtx", "DGE.mtx"))
    genes = _first_existing(folder, ("all_genes.csv",))
    cells = _first_existing(folder, ("cell_metadata.csv",))
    return None if mtx is None or genes is None or cells is None else (mtx, genes, cells)


def _is_matrix_dir(folder: Path) -> bool:
    return bool(_matrix_prefixes(folder)) or _kb_files(folder) is not None or _parse_files(folder) is not None


#: how deep below a given folder, and among how many entries, a matrix folder is looked for (Cell
#: Ranger's outs/filtered_feature_bc_matrix, kb's counts_unfiltered, Parse's sample/DGE_filtered are
#: within 3): a server path naming a data root of millions of files is not walked
MATRIX_SEARCH_DEPTH = 4
MATRIX_SEARCH_ENTRIES = 20_000


def _matrix_dirs_below(path: Path, label: str) -> list[Path]:
    """The matrix folders below ``path`` (:data:`MATRIX_SEARCH_DEPTH` levels, links not followed,
    macOS metadata folders skipped), or one line when the search would pass
    :data:`MATRIX_SEARCH_ENTRIES` entries."""
    import os

    found, seen = set(), 0
    top = len(path.parts)
    for root, dirs, files in os.walk(path, followlinks=False):
        seen += len(dirs) + len(files)
        if seen > MATRIX_SEARCH_ENTRIES:
            raise DataError(f"{label} is a folder of more than {MATRIX_SEARCH_ENTRIES:,} files and folders: give the "
                            "matrix folder itself (the one holding matrix.mtx)")
        here = Path(root)
        dirs[:] = [] if len(here.parts) - top >= MATRIX_SEARCH_DEPTH else sorted(d for d in dirs if d != "__MACOSX")
        if any(re.search(r"\.mtx(\.gz)?$", f) for f in files) and _is_matrix_dir(here):
            found.add(here)
    return sorted(found)


def _find_matrix_dir(path: Path, label: str) -> Path:
    """The folder holding matrix.mtx[.gz]: ``path`` itself, the folder of a .mtx file, or one
    folder below ``path`` (:func:`_matrix_dirs_below`)."""
    if path.is_file():
        return path.parent
    if _is_matrix_dir(path):
        return path
    found = _matrix_dirs_below(path, label)
    if not found:
        raise DataError(
            f"{label} contains no matrix.mtx or matrix.mtx.gz (looked {MATRIX_SEARCH_DEPTH} folders deep). A 10x "
            "matrix folder needs "
            "matrix.mtx[.gz], features.tsv[.gz] (or genes.tsv[.gz]) and barcodes.tsv[.gz]; a kallisto | bustools "
            f"one {KB_STEM}.mtx, {KB_STEM}.genes.txt and {KB_STEM}.barcodes.txt; a Parse Biosciences one "
            "count_matrix.mtx (or DGE.mtx), all_genes.csv and cell_metadata.csv."
        )
    if len(found) > 1:
        names = ", ".join(shown_name(p.relative_to(path), 40) for p in found[:5])
        raise DataError(
            f"{label} contains {len(found)} matrix folders ({names}). Provide one dataset at a time."
        )
    return found[0]


def _read_mtx_dir(folder: Path, label: str) -> ad.AnnData:
    """Read a Cell Ranger matrix folder (v3 features.tsv or v2 genes.tsv, gzipped or not)."""
    from .mtx import check_mtx_memory, read_mtx, read_mtx_header

    parse = _parse_files(folder)  # (its count_matrix.mtx would pass for a GEO prefix, "count_")
    prefixes = [] if parse else _matrix_prefixes(folder)
    kb = None if prefixes or parse else _kb_files(folder)
    if len(prefixes) > 1:
        raise DataError(f"{label}: the matrix folder holds {len(prefixes)} matrices (files named like "
                        "<sample>_matrix.mtx.gz, as GEO names them). Provide one dataset at a time: a folder per sample.")
    if kb is not None:
        mtx, feats, names, bcs = kb
        pre = ""
    elif parse is not None:
        (mtx, feats, bcs), names, pre = parse, None, ""
    else:
        pre = prefixes[0]
        mtx = _first_existing(folder, (f"{pre}matrix.mtx",))
        feats = _first_existing(folder, (f"{pre}features.tsv", f"{pre}genes.tsv"))
        bcs = _first_existing(folder, (f"{pre}barcodes.tsv",))
        names = None
    shown = shown_name(pre, 40)  # (a GEO prefix: a file's name)
    missing = [n for n, p in ((f"{shown}features.tsv/{shown}genes.tsv", feats), (f"{shown}barcodes.tsv", bcs))
               if p is None]
    if missing:
        raise DataError(
            f"{label}: the matrix folder lacks {' and '.join(missing)}. A 10x matrix folder needs "
            "matrix.mtx[.gz], features.tsv[.gz] (or genes.tsv[.gz]) and barcodes.tsv[.gz] (with the same prefix, "
            "if any, as GEO names them: GSM123_matrix.mtx.gz)."
        )
    what = f"{label}: {shown_name(mtx.name)}"
    limit = memory_limit_bytes()
    header = read_mtx_header(mtx, what)
    check_mtx_memory(header, what, limit)  # before the listings are measured
    used = header.memory  # the matrix, its listings and the tables beside them share the limit
    for listing in (feats, bcs, names):  # a Python str per name
        if listing is not None:
            used += _guard_text(listing, f"{label}: {shown_name(listing.name)}", per_field=TEXT_FIELD_BYTES,
                                budget=limit - used)
    M = read_mtx(mtx, what, limit)  # (in this thread: scipy's mmread could abort the process)
    if parse is not None:  # tables with a header: gene_id, gene_name, genome; bc_wells, sample, ...
        features = pd.read_csv(feats, dtype=str, keep_default_na=False).iloc[:, :2]
        barcodes = pd.read_csv(bcs, dtype=str, keep_default_na=False, usecols=[0])
    else:
        features = pd.read_csv(feats, sep="\t", header=None, dtype=str, quoting=3, keep_default_na=False)
        barcodes = pd.read_csv(bcs, sep="\t", header=None, dtype=str, quoting=3, keep_default_na=False)
    if names is not None:  # kb's gene names, a line per gene ID
        symbols = pd.read_csv(names, sep="\t", header=None, dtype=str, quoting=3, keep_default_na=False)
        if len(symbols) == len(features):
            features = pd.DataFrame({0: features.iloc[:, 0], 1: symbols.iloc[:, 0].to_numpy()})
    n_f, n_b = len(features), len(barcodes)
    if M.shape == (n_b, n_f) and (kb is not None or parse is not None or n_b != n_f):
        X = M.tocsr()  # kb's and Parse's layout: cells x genes
    elif M.shape == (n_f, n_b):
        X = M.T.tocsr()  # the 10x layout: genes x cells
    else:
        raise DataError(
            f"{label}: matrix.mtx is {M.shape[0]} x {M.shape[1]} but there are {n_f} features and "
            f"{n_b} barcodes. Check that the three files belong to the same dataset."
        )
    del M
    # the names as the str objects read (a numpy str array is as wide as the longest name, times each name,
    # and made str objects again: a million names took twice the memory so)
    ids = features.iloc[:, 0].to_numpy(dtype=object)
    symbols = features.iloc[:, 1].to_numpy(dtype=object) if features.shape[1] > 1 else ids
    var = pd.DataFrame({"gene_ids": ids}, index=pd.Index(symbols, name=None, dtype=object))
    if features.shape[1] > 2:
        var["feature_types"] = features.iloc[:, 2].to_numpy(dtype=object)  # (the counts are of genes only:
        # values.get_counts leaves the other kinds out and says so; the annotated file keeps them)
    obs = pd.DataFrame(index=pd.Index(barcodes.iloc[:, 0].to_numpy(dtype=object), name=None, dtype=object))
    del features, barcodes
    # (Parse's cell_metadata.csv is such a table: its columns, e.g. sample, join the cells)
    obs, notes = _join_cell_tables(folder, {mtx, feats, names} | ({bcs} if parse is None else set()), obs, label,
                                   limit - used)
    adata = ad.AnnData(X=X, obs=obs, var=var)
    if notes:
        adata.uns[INPUT_UNS_KEY] = {"cell_tables": notes}
    return adata


CELL_TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")
MAX_CELL_TABLES = 5  # tables of cell annotations read beside one matrix
MAX_CELL_TABLE_COLUMNS = 200  # more is a matrix of counts, not annotations


def _join_cell_tables(folder: Path, used: set, obs: pd.DataFrame, label: str,
                      budget: int | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Tables of cell annotations beside a 10x matrix (a GEO series' metadata: a row per cell,
    one column its barcode, the others e.g. its cell type), joined to the cells by barcode, exactly
    or without the ``-1`` suffix Cell Ranger adds. A table at least half of whose rows are not
    cells of the matrix is left out. Returns the cells' obs and a note per table (no file contents
    in them: counts only)."""
    tables = sorted(p for p in folder.iterdir() if p.is_file() and p not in used and not p.name.startswith(".")
                    and p.name.lower().endswith(CELL_TABLE_SUFFIXES))
    notes = [f"{len(tables) - MAX_CELL_TABLES} more tables beside the matrix were not read (at most "
             f"{MAX_CELL_TABLES})"] if len(tables) > MAX_CELL_TABLES else []
    for i, path in enumerate(tables[:MAX_CELL_TABLES], 1):
        need = _guard_text(path, f"{label}: the table beside the matrix ({i})", per_field=TEXT_FIELD_BYTES,
                           budget=budget)
        budget = None if budget is None else budget - need
        try:
            sep, decimal = _sniff_table(path)
            df = pd.read_csv(path, sep=sep, decimal=decimal, index_col=None, encoding=_text_encoding(path),
                             compression="gzip" if _is_gzip(path) else "infer")
        except Exception:  # noqa: BLE001 - not a table: said, never echoed
            notes.append(f"table {i} beside the matrix could not be read as a table; it was left out")
            continue
        if df.shape[1] > MAX_CELL_TABLE_COLUMNS:
            notes.append(f"table {i} beside the matrix was left out: its {df.shape[1]:,} columns are not a table of "
                         f"cell annotations (at most {MAX_CELL_TABLE_COLUMNS}; a matrix of counts?)")
            continue
        found = _barcode_column(df, obs.index)
        if found is None:
            notes.append(f"table {i} beside the matrix was left out: fewer than half of its {len(df):,} rows name "
                         f"cells of the matrix (by barcode)")
            continue
        key, keys, target = found
        add = df.drop(columns=[key]).set_axis(keys, axis=0)
        add = add[~add.index.duplicated()].reindex(target)
        add.index = obs.index
        add.columns = [str(c) for c in add.columns]
        new = [c for c in add.columns if c not in obs.columns]
        obs = pd.concat([obs, add[new]], axis=1)
        notes.append(f"table {i} beside the matrix gave {len(new)} column{'s' * (len(new) != 1)} of cell annotations to "
                     f"{int(np.asarray(target.isin(keys)).sum()):,} of the {len(obs):,} cells")
    return obs, notes


def _barcode_column(df: pd.DataFrame, barcodes: pd.Index) -> tuple[Any, pd.Index, pd.Index] | None:
    """The column of ``df`` naming cells of ``barcodes`` (for at least half of its rows), with its
    values and the barcodes to align them to: as they are, or both without a ``-N`` suffix (when
    that leaves each barcode once); None when no column does."""
    def strip(names: pd.Index) -> pd.Index:
        return pd.Index(names.astype(str)).str.replace(r"-\d+$", "", regex=True)

    text = [c for c in df.columns if df[c].dtype.kind in "OSU" or isinstance(df[c].dtype, pd.StringDtype)]
    for how in (lambda names: pd.Index(names.astype(str)), strip):
        target = how(barcodes)
        if not target.is_unique:
            continue
        for col in text:
            keys = how(pd.Index(df[col].astype(str)))
            if len(keys) and keys.isin(target).mean() >= 0.5:
                return col, keys, target
    return None


def _check_member(name: str, label: str) -> None:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise DataError(
            f"{label} contains an unsafe path '{shown_name(name)}' (absolute or with '..'). "
            "Re-create the archive from the matrix folder itself."
        )


def _read_archive(path: Path, label: str) -> ad.AnnData:
    """Extract safely into a temporary folder (:func:`unpacked_archive`), then read the matrix
    folder inside it."""
    with unpacked_archive(path, label) as dest:
        return _read_mtx_dir(_find_matrix_dir(dest, label), label)


#: the most bytes a tar's extended header (a GNU long name or link, a pax record) may hold: a name of a few
#: hundred bytes is what they carry
TAR_EXTENDED_HEADER_BYTES = 64 << 10
#: the most bytes all of an archive's extended headers may hold together, and the most pax keys: tarfile keeps each
#: member's (a 10x folder's three members need a few hundred bytes; 20,000 members of 64 KB names would hold 1.3 GB)
TAR_EXTENDED_TOTAL_BYTES = 16 << 20
TAR_PAX_KEYS = 200_000
#: the most keys a pax global header may give: tarfile copies them into every member after it (``git archive``
#: writes one, its commit; one of 5,919 keys before 20,000 empty members took 4.3 GB from 58 KB, 2026-12-07)
TAR_GLOBAL_PAX_KEYS = 16
#: the most extended headers before one member (a long name, a long link, a pax and a global header): tarfile
#: reads each by calling itself for the next, so a chain of 2,000 ended in RecursionError
TAR_HEADER_CHAIN = 8


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header whose extended headers (GNU ``L``/``K``, pax ``x``/``g``) are refused past
    :data:`TAR_EXTENDED_HEADER_BYTES` before tarfile reads them: it reads each whole into memory while it walks
    the members, before any check here can look at them (a 0.97 MB .tar.gz declaring a 1 GB long name took
    5.1 GB, found 2026-12-07). So are all of them past :data:`TAR_EXTENDED_TOTAL_BYTES` or :data:`TAR_PAX_KEYS`,
    a global header past :data:`TAR_GLOBAL_PAX_KEYS` keys, chains past :data:`TAR_HEADER_CHAIN`, and sparse
    members, old GNU (``S``) or pax ``GNU.sparse.*``: tarfile reads their maps into lists while it reads the
    header (149 KB -> 3.4 GB; 23 KB -> 4.3 GB, 2026-12-07), and no matrix folder holds a sparse file."""

    label = "the archive"

    def _refuse(self, what: str) -> DataError:
        return DataError(f"{self.label} holds {what}: re-create the archive from the matrix folder itself "
                         "(tar -czf or zip of its regular files).")

    def _refuse_long(self, tarfile) -> None:
        if self.size > TAR_EXTENDED_HEADER_BYTES:
            raise DataError(f"{self.label} holds an extended tar header of {self.size:,} bytes, where a long member "
                            f"name takes a few hundred (at most {TAR_EXTENDED_HEADER_BYTES >> 10} KB are read): "
                            "re-create the archive from the matrix folder itself.")
        held = getattr(tarfile, "_cellannot_extended", 0) + self.size
        tarfile._cellannot_extended = held
        if held > TAR_EXTENDED_TOTAL_BYTES:
            raise self._refuse(f"more than {TAR_EXTENDED_TOTAL_BYTES >> 20} MB of extended tar headers (long names "
                               "or pax records), where a matrix folder's take a few hundred bytes")

    def _chained(self, tarfile, proc):
        depth = getattr(tarfile, "_cellannot_chain", 0)
        if depth >= TAR_HEADER_CHAIN:
            raise self._refuse(f"more than {TAR_HEADER_CHAIN} extended tar headers before one member")
        tarfile._cellannot_chain = depth + 1
        try:
            return proc(tarfile)
        finally:
            tarfile._cellannot_chain = depth

    def _proc_gnulong(self, tarfile):
        self._refuse_long(tarfile)
        return self._chained(tarfile, super()._proc_gnulong)

    def _proc_pax(self, tarfile):
        self._refuse_long(tarfile)
        nxt = self._chained(tarfile, super()._proc_pax)
        keys = getattr(tarfile, "_cellannot_pax_keys", 0) + len(nxt.pax_headers)
        tarfile._cellannot_pax_keys = keys
        if len(tarfile.pax_headers) > TAR_GLOBAL_PAX_KEYS:
            raise self._refuse(f"a pax global header of {len(tarfile.pax_headers):,} keys, which tar copies into "
                               f"every member (at most {TAR_GLOBAL_PAX_KEYS} are taken)")
        if keys > TAR_PAX_KEYS:
            raise self._refuse(f"more than {TAR_PAX_KEYS:,} pax header keys")
        return nxt

    def _refuse_sparse(self, *_args):
        raise self._refuse("a sparse member (GNU tar's --sparse), which no matrix folder needs")

    _proc_sparse = _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


def _tar_mode(path: Path, label: str) -> str:
    """tarfile's mode for the tar at ``path``: gzip or none, by its first bytes (``r:*`` would unpack xz and bzip2
    too, whatever the name says: an xz stream of identical headers shrinks them ~10,000 times)."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head[:2] == b"\x1f\x8b":
        return "r:gz"
    if head.startswith((b"\xfd7zXZ\x00", b"BZh", b"\x28\xb5\x2f\xfd", b"\x5d\x00\x00")):
        raise DataError(f"{label} is compressed with xz, bzip2, zstd or lzma, not gzip: pack the matrix folder as "
                        ".tar.gz (tar -czf) or .zip")
    return "r:"


#: the most bytes a zip's central directory may take: zipfile reads it whole into an object a member, before its
#: members can be counted (a 159 MB zip listing 3 million empty members took 1.7 GB and 18 s before the count
#: refused it, found 2026-12-07); :data:`MATRIX_SEARCH_ENTRIES` members of names up to 200 characters fit
ZIP_DIRECTORY_BYTES = MATRIX_SEARCH_ENTRIES * 256


def _check_zip_directory(path: Path, label: str) -> None:
    """Refuse a zip whose central directory passes :data:`ZIP_DIRECTORY_BYTES`, read from its end record (zip64's
    included) before zipfile reads the directory."""
    with open(path, "rb") as fh:
        try:
            end = zipfile._EndRecData(fh)
        except (OSError, ValueError, struct.error):
            end = None  # (zipfile says what is wrong with it)
    if end is not None and end[zipfile._ECD_SIZE] > ZIP_DIRECTORY_BYTES:
        raise DataError(f"{label} lists {end[zipfile._ECD_SIZE] / 1024**2:,.0f} MB of members, where a 10x matrix "
                        "folder's zip lists three files in a few hundred bytes: pack that folder alone.")


@contextlib.contextmanager
def _tar_headers(label: str) -> Iterator[None]:
    """One line for a tar header tarfile cannot read and says as a ``ValueError``, not a ``TarError`` (a pax
    record's length of 5,000 digits: ``predict --model x.tar`` said "internal error", found 2026-12-07)."""
    try:
        yield
    except ValueError as err:
        raise DataError(f"{label} is damaged: a tar header cannot be read ({type(err).__name__}). Re-create the "
                        "archive (tar -czf or zip of its regular files).") from None


@contextlib.contextmanager
def unpacked_archive(path: Path, label: str) -> Iterator[Path]:
    """The ``.zip`` or ``.tar[.gz]`` at ``path`` extracted into a temporary folder, removed after.

    Members are checked before anything is written: no absolute paths, no ``..``, no links or
    special files, and their total (declared, and enforced by zipfile and tarfile while
    extracting) size within :func:`memory_limit_bytes`.
    """
    limit = memory_limit_bytes()
    with tempfile.TemporaryDirectory(prefix="cellannot_archive_") as tmp:
        dest = Path(tmp)
        if path.name.lower().endswith(".zip"):
            _check_zip_directory(path, label)
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
                _check_member_count(len(infos), label)
                for info in infos:
                    _check_member(info.filename, label)
                _check_unpacked_size(sum(i.file_size for i in infos), limit, label, dest)
                with _unpacking(label, dest):
                    zf.extractall(dest)
        else:
            bounded = type("_Bounded", (_BoundedTarInfo,), {"label": label})  # (the label said in its refusal)
            with _tar_headers(label), tarfile.open(path, _tar_mode(path, label), tarinfo=bounded) as tf:
                members, total = [], 0
                for m in tf:  # read a header at a time: an archive of countless members stops at the count, and
                    members.append(m)  # one past the limit at the size (tarfile unpacks a .tar.gz member's data to
                    total += m.size    # reach the next header: 25 members of 400 MB of zeros, 10 MB, took 23 s
                    _check_member_count(len(members), label)  # before their sum was refused, found 2026-12-07)
                    _check_member(m.name, label)
                    if not (m.isfile() or m.isdir()):
                        raise DataError(
                            f"{label} contains a link or special file '{shown_name(m.name)}'. "
                            "Re-create the archive with regular files only."
                        )
                    _check_unpacked_size(total, limit, label, dest)
                with _unpacking(label, dest):
                    tf.extractall(dest, members=members, filter="data")
        yield dest


@contextlib.contextmanager
def _unpacking(label: str, dest: Path) -> Iterator[None]:
    """One line for what stops an archive's members being written, naming the member by its path in the
    archive, never this server's temporary folder (found 2026-12-07: a member's name too long for the file
    system was said with '/tmp/cellannot_archive_.../' before it)."""
    import errno

    try:
        yield
    except (OSError, ValueError, EOFError, zlib.error, tarfile.TarError, zipfile.BadZipFile, NotImplementedError,
            RuntimeError) as err:
        member = getattr(err, "filename", None)
        try:
            member = Path(member).relative_to(dest) if member else None
        except (TypeError, ValueError):
            member = None
        if isinstance(err, (NotImplementedError, RuntimeError)):  # zipfile's words quote the member's name raw
            why, member = "a member is encrypted or compressed in a way this server does not unpack", None
        elif isinstance(err, zipfile.BadZipFile):  # so do these ("File name in directory ... and header ... differ")
            why, member = "BadZipFile (a member's header is damaged or does not match the archive's directory)", None
        elif isinstance(err, OSError) and err.errno == errno.ENAMETOOLONG:
            why = "a member's name is too long for this server's file system"
        elif isinstance(err, OSError) and err.strerror:
            why = err.strerror
        else:
            why = f"{type(err).__name__}: {_one_line(err)[:120]}"
        at = f" ('{shown_name(member)}')" if member else ""
        raise DataError(f"{label} could not be unpacked: {why}{at}. Re-create the archive from the matrix folder "
                        "itself (short names, regular files).") from None


def _check_member_count(n: int, label: str) -> None:
    """Refuse an archive of more than :data:`MATRIX_SEARCH_ENTRIES` files and folders before any is
    written (found 2026-12-07: 300,000 empty members in 27 MB were all unpacked, 22 s, before the
    matrix search refused the folder; a 10x matrix folder holds three files)."""
    if n > MATRIX_SEARCH_ENTRIES:
        raise DataError(f"{label} holds more than {MATRIX_SEARCH_ENTRIES:,} files and folders, where a 10x matrix "
                        "folder holds three (matrix.mtx, features.tsv, barcodes.tsv): pack that folder alone.")


def _check_unpacked_size(total: int, limit: int, label: str, dest: Path | None = None) -> None:
    if total > limit:
        raise DataError(f"{label} unpacks to {total / 1024**3:.1f} GiB, above this server's limit of "
                        f"{limit / 1024**3:.1f} GiB (CELLANNOT_MEMORY_LIMIT_GB): give the unpacked matrix folder "
                        "by its path on the server, or subsample the data.")
    try:
        free = shutil.disk_usage(dest).free if dest is not None else None
    except OSError:
        free = None
    if free is not None and total > free:
        raise DataError(f"{label} unpacks to {total / 1024**3:.1f} GiB, more than this server's temporary folder has "
                        f"free ({free / 1024**3:.1f} GiB): give the unpacked matrix folder by its path on the server, "
                        "or ask the administrator for space.")


#: memory one short text field (a gene's or a cell's name, an annotation) takes once read: a Python str (49
#: bytes beside its characters), its pointer in pandas' column, and the parser's copy of it and table of the
#: strings it has seen (10x listings of a million short unique names each took 100-112 bytes a name at
#: their peak, 2026-12-07, after the names were kept as str objects, not copied to numpy and back)
TEXT_FIELD_BYTES = 128
#: memory per byte of text at most: a str holding one character beyond the BMP keeps each in 4 bytes
TEXT_BYTES_PER_CHAR = 4


def _guard_text(path: Path, label: str, *, per_line: float = 0, per_field: float = 0,
                per_char: float = TEXT_BYTES_PER_CHAR, budget: int | None = None) -> int:
    """Refuse a text file (a table, a 10x features/barcodes list) whose text would need more than
    ``budget`` bytes (default :func:`memory_limit_bytes`) once parsed: ``per_char`` bytes a byte of
    (decompressed) text, ``per_line`` a line and ``per_field`` a field (a line and each tab, comma,
    semicolon or space: the separator is not known yet, so all count). Found 2026-12-07: counted by its
    characters alone (10 bytes each), 24 MB of short names took 1.9 GB against a 0.25 GB limit, a Python
    str costing ~60 bytes however short. A gzipped file is measured by streaming it (a few kB can hold
    gigabytes of zeros), stopping as soon as it is too big. Returns the memory it needs."""
    limit = memory_limit_bytes()
    budget = limit if budget is None else budget
    chars = lines = seps = 0
    need = 0.0
    opener = gzip.open if _is_gzip(path) else open
    try:
        with opener(path, "rb") as fh:
            while block := fh.read(1 << 22):
                chars += len(block)
                if per_line or per_field:
                    a = np.frombuffer(block, dtype=np.uint8)
                    # a lone \r ends a row for pandas too (found 2026-12-07: 4.2 million rows ended so passed as one
                    # line and took 0.9 GB at a 0.25 GB limit); \r\n counts once
                    lines += int(np.count_nonzero(a == 10) + np.count_nonzero(a == 13)
                                 - np.count_nonzero((a[:-1] == 13) & (a[1:] == 10)))
                    if per_field:
                        seps += int(np.count_nonzero((a == 9) | (a == 32) | (a == 44) | (a == 59)))
                need = per_char * chars + per_line * (lines + 1) + per_field * (lines + 1 + seps)
                if need > budget:
                    break
    except (OSError, EOFError, zlib.error):
        return int(need)  # the reader reports the corrupt stream in its own words
    if need > budget:
        held = f"{lines + 1:,} lines ({chars / 1024**2:,.1f} MB) of" if per_line or per_field else \
            f"{chars / 1024**3:.1f} GiB of"
        raise DataError(f"{label} holds {'more than ' if block else ''}{held} text, which would need more memory than "
                        f"{'is left of ' if budget < limit else ''}this server's limit of {limit / 1024**3:.1f} GiB "
                        "(CELLANNOT_MEMORY_LIMIT_GB) once read: save it as .h5ad or a 10x matrix folder (sparse), or "
                        "subsample the cells.")
    return int(need)


_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
_BARCODE_RE = re.compile(r"[ACGTN]{8,}")
_CELLNAME_RE = re.compile(r"^(cell|bc|barcode|sample|s)[\W_]*\d+", re.IGNORECASE)
_GENEWORD_RE = re.compile(
    r"^(MT-|mt-|RP[LS]\d|Rp[ls]\d|ACTB$|Actb$|GAPDH$|Gapdh$|MALAT1$|Malat1$|B2M$|B2m$|"
    r"HLA-|CD\d|Cd\d|ENS[A-Z]*G\d)"
)


def _frac(names: pd.Index, pattern: re.Pattern, *, search: bool = False, n: int = 2000) -> float:
    if len(names) > n:  # evenly spaced sample: gene lists are often sorted alphabetically
        names = names[np.linspace(0, len(names) - 1, n).astype(int)]
    vals = [str(v) for v in names]
    if not vals:
        return 0.0
    f = pattern.search if search else pattern.match
    return sum(1 for v in vals if f(v)) / len(vals)


def _guess_orientation(rows: pd.Index, cols: pd.Index) -> tuple[str, str]:
    """Guess whether a table's rows are cells or genes.

    Heuristic, from the strongest signal to the weakest:

    1. cell-like names: 10x-style barcodes (a run of 8+ of ``ACGTN``) or names like
       ``cell12`` / ``bc_3``; whichever axis has clearly more of them (by 0.3 of the
       fraction) holds the cells;
    2. gene-like names: Ensembl IDs and ubiquitous genes (``MT-``, ``RPL``/``RPS``,
       ``ACTB``, ``GAPDH``, ``MALAT1``, ``B2M``, ``HLA-``, ``CD<digit>``); an axis where at
       least 0.3% of the names are such genes and 5 times more than on the other axis holds
       the genes (a real gene list always contains some of them, cell names never do);
    3. shape: if there are at least 4 times more rows than columns, rows are genes
       (gene panels are large; a table with many more cells than genes is rare);
    4. otherwise cells x genes (the AnnData convention).

    Returns
    -------
    (orientation, reason)
    """
    def cellish(names: pd.Index) -> float:
        return max(_frac(names, _BARCODE_RE, search=True), _frac(names, _CELLNAME_RE))

    def geneish(names: pd.Index) -> float:
        return max(_frac(names, _ENSEMBL_RE), _frac(names, _GENEWORD_RE))

    c_rows, c_cols = cellish(rows), cellish(cols)
    if c_rows - c_cols >= 0.3:
        return "cells_x_genes", "row names look like cell barcodes"
    if c_cols - c_rows >= 0.3:
        return "genes_x_cells", "column names look like cell barcodes"
    g_rows, g_cols = geneish(rows), geneish(cols)
    if g_rows >= 0.003 and g_rows > 5 * g_cols:
        return "genes_x_cells", "row names look like genes"
    if g_cols >= 0.003 and g_cols > 5 * g_rows:
        return "cells_x_genes", "column names look like genes"
    if len(rows) >= 4 * len(cols):
        return "genes_x_cells", "far more rows than columns"
    return "cells_x_genes", "no clear signal; assumed cells in rows"


def _sniff_table(path: Path, label: str = "the table") -> tuple[str, str]:
    """A delimited table's separator (the most frequent of tab, ';' and ',' in its header row, else
    whitespace) and decimal mark."""
    with _open_text(path) as fh:
        for _ in range(_comment_lines(path)):
            fh.readline()
        first, second = fh.readline(), fh.readline()
    if not first.strip():
        raise DataError(f"{label} is empty. Provide a table with a header row and row names.")
    counts = {c: first.count(c) for c in ("\t", ";", ",")}
    sep = max(counts, key=counts.get) if max(counts.values()) else r"\s+"
    n_cols = counts[sep] + 1 if sep in counts else len(first.split())
    limit = memory_limit_bytes()
    if n_cols * _TABLE_BYTES_PER_COLUMN > limit:
        raise DataError(f"{label} has {n_cols:,} columns, which would need more memory than this server's limit of "
                        f"{limit / 1024**3:.1f} GiB (CELLANNOT_MEMORY_LIMIT_GB) to read as a table: save it as .h5ad "
                        "or a 10x matrix folder (sparse), or subsample the cells.")
    _check_row_fields(path, sep, n_cols, label)
    # a spreadsheet saved as CSV where the decimal mark is a comma separates by ";" ("1,5;0;2")
    return sep, ("," if sep == ";" and "," in second else ".")


def _check_row_fields(path: Path, sep: str, n_header: int, label: str) -> None:
    """Refuse a table with a row of far more fields than its header (more than twice as many, and 100
    more): pandas tokenises such a row whole before it says the table is ragged, at about 150 bytes a
    field (found 2026-12-07 by a second probe: a 47 KB upload of two rows of 12,000,000 fields under a
    two-column header took the server from 3.7 to 10.1 GB). The text is read once more, a block at a time,
    its rows as pandas' tokenizer ends them (:func:`_row_text`: decoded, quoted fields one letter). A table
    separated by spaces (``sep`` ``\\s+``) counts its runs of letters (found 2026-12-07: it was not checked,
    12 KB of "1 1 1 ..." took 4 GB)."""
    most = 2 * n_header + 100  # separators a row may hold (quoted text may hold a few more than the header)
    blanks = sep not in ("\t", ";", ",")  # fields apart by runs of spaces and tabs
    newline = ord("\n")
    carry, line, after_blank = 0, 0, True  # separators (or fields) on the line not yet ended; lines ended
    try:
        for block in _row_text(path, " \t" if blanks else sep):
            if not block:
                continue
            a = np.frombuffer(block, dtype=np.uint8)
            if blanks:  # a field starts at a letter after a space, a tab or a line end
                blank = (a == 32) | (a == 9) | (a == newline)
                marks = ~blank
                marks[0] &= after_blank
                marks[1:] &= blank[:-1]
                after_blank = bool(blank[-1])
            else:
                marks = a == ord(sep)
            seps = np.cumsum(marks, dtype=np.int64)
            ends = np.flatnonzero(a == newline)
            if len(ends):
                per_line = np.diff(seps[ends], prepend=0)
                per_line[0] += carry
                worst = int(per_line.argmax())
                if per_line[worst] > most:
                    carry, line = int(per_line[worst]), line + worst
                    break
                carry, line = int(seps[-1] - seps[ends[-1]]), line + len(ends)
            else:
                carry += int(seps[-1])
            if carry > most:
                break
    except (OSError, EOFError, zlib.error, LookupError):
        return  # the reader reports the damaged file in its own words
    if carry > most:
        raise DataError(f"{label} has a row (line {line + 1:,}) of more than {carry + (not blanks):,} fields under a "
                        f"header of {n_header:,}: each row must hold a name and the header's columns. Check the "
                        "separator and the file, or save it as .h5ad.")


def _row_text(path: Path, seps: str, block_size: int = 1 << 22) -> Iterator[bytes]:
    """A delimited table's text as pandas' C tokenizer splits it into rows and fields, a block at a time:
    decoded from UTF-16 into UTF-8 (U+0A0A is the bytes ``0A 0A`` in UTF-16: counted as bytes, each was two
    line ends; found 2026-12-07, 81 KB took 3.9 GB), ``\\r\\n`` and ``\\r`` as ``\\n``, and each quoted field
    (a ``"`` at a field's start, after one of ``seps`` or a line end, to its closing ``"``, ``""`` inside it)
    made the one letter ``Q``: a quoted line end does not end a row (a 47 KB upload quoting a line end every
    100 fields took 4 GB). ASCII-compatible encodings (UTF-8, Windows-1252, latin-1) keep these characters'
    bytes, so are read as bytes."""
    import codecs

    enc = _text_encoding(path)
    decoder = codecs.getincrementaldecoder(enc)(errors="replace") if enc.startswith("utf-16") else None
    s = b"".join(re.escape(bytes([c])) for c in seps.encode())
    ends = {bytes([c]) for c in seps.encode()} | {b"\n"}  # what a field starts after
    closed = re.compile(rb'"(?<=[' + s + rb'\n]")[^"]*(?:""[^"]*)*"(?!")')  # a whole quoted field
    opening = re.compile(rb'"(?<=[' + s + rb'\n]")')  # a quote that starts a field
    rest = re.compile(rb'[^"]*(?:""[^"]*)*"(?!")')  # the rest of a quoted field, to its closing quote
    runs = re.compile(rb'"{3,}')
    inq, start, held, first = False, True, b"", True  # in a quoted field; at a field's start; bytes held back
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rb") as fh:
        while True:
            raw = fh.read(block_size)
            last = not raw
            text = (decoder.decode(raw, final=last).encode("utf-8") if decoder is not None else raw)
            if first and text.startswith(b"\xef\xbb\xbf"):
                text = text[3:]  # the byte-order mark pandas skips
            first = False
            t, held = held + text, b""
            if not last and t.endswith(b"\r"):  # a line end "\r\n" cut between two blocks
                t, held = t[:-1], b"\r"
            elif not last and t.endswith(b'"'):  # what a run of quotes means depends on what follows it
                cut = len(t) - len(t.rstrip(b'"'))
                t, held = t[:-cut], runs.sub(lambda m: b'"' * (2 - len(m.group()) % 2), t[-cut:])
            t = t.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if inq:
                m = rest.match(t)
                if m is None:  # still inside the quoted field
                    t = b""
                else:
                    t, inq, start = t[m.end():], False, False
            if b'"' in t:
                ctx = b"\n" if start else b"x"  # (what precedes: a field's start or not)
                t = closed.sub(b"Q", ctx + t)
                m = opening.search(t)
                if m is not None:  # a quoted field that goes on into the next block
                    t, inq = t[:m.start()] + b"Q", True
                t = t[1:]
            if t and not inq:
                start = t[-1:] in ends
            yield t
            if last:
                return


def _comment_lines(path: Path, most: int = 100) -> int:
    """How many lines starting with '#' open the text file (featureCounts' command line)."""
    n = 0
    with _open_text(path) as fh:
        while n < most and fh.readline().startswith("#"):
            n += 1
    return n


#: featureCounts' columns between a gene's ID and its counts (Smart-seq tables are often its output)
FEATURECOUNTS_COLUMNS = ("Chr", "Start", "End", "Strand", "Length")


def _read_table(path: Path, label: str, orientation: str) -> ad.AnnData:
    """A delimited table whose first column holds row names and first row column names (after any
    '#' lines), up to :data:`MAX_TABLE_ANNOTATIONS` columns of text after the row names the rows'
    annotations (featureCounts' five columns too)."""
    # a row's name and annotations are str objects
    _guard_text(path, label, per_char=_TABLE_BYTES_PER_CHAR, per_field=_TABLE_BYTES_PER_FIELD,
                per_line=(1 + MAX_TABLE_ANNOTATIONS) * TEXT_FIELD_BYTES)
    sep, decimal = _sniff_table(path, label)
    df = pd.read_csv(path, sep=sep, decimal=decimal, index_col=0, compression="gzip" if _is_gzip(path) else "infer",
                     skiprows=_comment_lines(path), encoding=_text_encoding(path))
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise DataError(
            f"{label} has no data rows or columns. Provide a table with a header row, "
            "row names in the first column and one number per cell and gene."
        )
    text = [not pd.api.types.is_numeric_dtype(t) for t in df.dtypes]
    lead = next((i for i, t in enumerate(text) if not t), len(text))  # text columns right after the row names
    featurecounts = tuple(map(str, df.columns[:len(FEATURECOUNTS_COLUMNS)])) == FEATURECOUNTS_COLUMNS
    if featurecounts:
        lead = len(FEATURECOUNTS_COLUMNS)
    too_many = lead > MAX_TABLE_ANNOTATIONS and not featurecounts
    non_numeric = [i for i, t in enumerate(text) if t and (i >= lead or too_many)]
    if non_numeric or lead == len(text):
        # the column is named by its position, never by its text: an error must not echo file contents
        first = non_numeric[0] if non_numeric else 0
        raise DataError(
            f"{label} has {len(non_numeric) or lead} non-numeric columns (the first is column {first + 2}). "
            f"A table must hold only numbers apart from the first column (row names), up to "
            f"{MAX_TABLE_ANNOTATIONS} columns of text right after it (e.g. gene symbols, or cell types) and the header."
        )
    notes, df = df.iloc[:, :lead], df.iloc[:, lead:]
    rows, cols = df.index.astype(str), df.columns.astype(str)
    if orientation == "auto" and featurecounts:  # genes x samples, whatever the names look like
        orientation, reason = "genes_x_cells", "featureCounts' table: genes x samples"
    elif orientation == "auto":
        orientation, reason = _guess_orientation(rows, cols)
    else:
        reason = "set by the user"
    values = df.to_numpy(dtype=np.float32)
    del df  # (the frame's float64 or int64 columns: twice the float32 values)
    obs = pd.DataFrame(index=pd.Index(rows, name=None))
    var = pd.DataFrame(index=pd.Index(cols, name=None))
    if orientation == "genes_x_cells":
        values, obs, var = values.T, var, obs
        notes = notes.rename(columns=lambda c: str(c).lower() if str(c).lower() in GENE_ID_COLUMNS else str(c))
    for c in notes.columns:  # the rows' own annotations: gene symbols beside gene IDs, cell types beside cells
        (var if orientation == "genes_x_cells" else obs)[str(c)] = notes[c].to_numpy(dtype=object)
    adata = ad.AnnData(X=_dense_to_csr(values), obs=obs, var=var)
    adata.uns[INPUT_UNS_KEY] = {"format": "table", "orientation": orientation, "orientation_reason": reason}
    return adata


def _dense_to_csr(values: np.ndarray, block: int = 1 << 22) -> sp.csr_matrix:
    """``values`` as a CSR matrix, made a block of rows at a time: scipy's own conversion holds two int64
    indices per non-zero value while it works (a table of 40 million empty, NaN, fields took 0.8 GB more)."""
    n, m = values.shape
    step = max(1, block // max(1, m))
    per_row = np.concatenate([np.count_nonzero(values[i:i + step], axis=1) for i in range(0, n, step)] or
                             [np.zeros(0, dtype=np.int64)])
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_row, out=indptr[1:])
    kind = np.int32 if max(int(indptr[-1]), m) < np.iinfo(np.int32).max else np.int64
    indices, data = np.empty(int(indptr[-1]), dtype=kind), np.empty(int(indptr[-1]), dtype=np.float32)
    for i in range(0, n, step):
        part = values[i:i + step]
        r, c = np.nonzero(part)
        lo, hi = indptr[i], indptr[min(i + step, n)]
        indices[lo:hi], data[lo:hi] = c, part[r, c]
    return sp.csr_matrix((data, indices, indptr.astype(kind)), shape=(n, m))


MAX_TABLE_ANNOTATIONS = 3  # columns of text a table's rows may carry after their names
