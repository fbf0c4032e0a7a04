"""An ``.h5ad`` query read in row chunks, never whole (issue 15: atlas-sized queries).

:class:`H5adRows` opens the file with h5py (after :func:`~.io.guard_hdf5`: nothing outside
the file is followed) and reads its raw counts a block of rows at a time through anndata's
``sparse_dataset`` (CSR) or h5py slicing (dense). It reads ``obs`` and ``var`` whole; those
count against the memory limit, the matrices do not (a chunk of 20,000 cells of a 2,000-gene
model is 160 MB dense). The counts are found where :func:`~.values.get_counts` looks (``X``,
then ``layers['counts']`` and the other count layers, then ``raw/X``), judged on the first
rows. A matrix stored by columns (CSC) cannot be read by rows without reading it whole:
:class:`NotStreamable` says so and the caller reads the file the usual way.
"""
from __future__ import annotations

import secrets
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._constants import str_array
from ..errors import DataError
from .io import guard_hdf5
from .values import (COUNT_LAYERS, RECOVER_MIN_CELLS, UNLOGGED, detect_value_state, log_name, recover_counts,
                     recover_rows, summed, whole_counts)

__all__ = ["CHUNK_CELLS", "H5adRows", "NotStreamable", "STREAM_KEY", "large_query_bytes", "read_sample",
           "stream_source"]

CHUNK_CELLS = 20_000
#: bytes a stored value may take while a chunk is read: its value and index as stored (up to 8 + 8) and as
#: float32 CSR (4 + 4); a dense matrix's values count as many. A matrix's values are counted by their own item
#: size (:meth:`H5adRows._open`), which must be a plain number's: an X of 1 MB strings or of arrays counted at 24
#: bytes a value took 5.2 GB from 0.07 MB (found 2026-12-07)
BYTES_PER_VALUE = 24


def chunk_bytes() -> int:
    """The most one chunk's values may take as read: an eighth of :func:`~.io.memory_limit_bytes`, at least
    64 MB (20,000 cells of a 2,000-gene sparse query take a few MB; a dense query of 30,000 genes read
    20,000 cells at a time took 2.7 GB at a 0.5 GB limit, found 2026-12-07)."""
    from .io import memory_limit_bytes

    return max(64 << 20, memory_limit_bytes() // 8)
#: A query held as a sample of its file (:func:`read_sample`) carries its source here, in ``uns``, with a
#: token of this process: only a sample this process read may name a file (:func:`stream_source`).
STREAM_KEY = "cellannot_stream"
#: token -> source of each sample this process read. A file's own ``uns[STREAM_KEY]`` (an upload, a path,
#: an AnnData written out and read back) names nothing: it made the app read and return any ``.h5ad`` on
#: the server (found 2026-12-06).
_SOURCES: dict[str, dict] = {}
_SOURCES_LOCK = threading.Lock()
#: Cells of that sample: what the pair checks and the semi-supervised training see of the query.
SAMPLE_CELLS = 20_000


def large_query_bytes() -> int:
    """Query ``.h5ad`` files larger than this are not read whole by the app: a sample of
    :data:`SAMPLE_CELLS` cells stands in for the checks and the training, and every cell is
    labelled in chunks (``CELLANNOT_STREAM_QUERY_MB``, default 1,024 MB)."""
    from .._constants import env_number

    return int(env_number("CELLANNOT_STREAM_QUERY_MB", 1024.0, low=0.0) * 1024**2)


def is_large_query(path: str | Path) -> bool:
    """An ``.h5ad`` query file larger than :func:`large_query_bytes`."""
    path = Path(path)
    try:
        return path.is_file() and path.name.lower().endswith(".h5ad") and path.stat().st_size > large_query_bytes()
    except OSError:
        return False


def read_query(path: str | Path, *, name: str = "query"):
    """A query file as the app and ``predict(adapt=True)`` hold it: a large ``.h5ad``
    (:func:`is_large_query`) as a seeded sample of its cells (:func:`read_sample`; the checks and
    the training use it, :func:`cellannot_core.pipeline.annotate` labels every cell in chunks),
    anything else, or a file that cannot be read by rows, whole (within the memory limit)."""
    from .io import read_dataset

    if is_large_query(path):
        try:
            return read_sample(path, n=SAMPLE_CELLS, seed=0, name=name)
        except NotStreamable:
            pass
    return read_dataset(path, name=name)


def stream_source(adata) -> dict | None:
    """``{"path", "n_obs", "n_sample", "seed", "source"}`` when ``adata`` is a sample of a larger file
    that this process read (:func:`read_sample`), else ``None``: the source comes from the process's
    own record, found by the token in ``uns``, never from ``uns`` itself."""
    src = getattr(adata, "uns", {}).get(STREAM_KEY) if adata is not None else None
    token = src.get("token") if isinstance(src, dict) else None
    with _SOURCES_LOCK:
        known = _SOURCES.get(token) if isinstance(token, str) else None
    return dict(known) if known is not None else None


class NotStreamable(Exception):
    """This file cannot be read by rows (the reason is the message); read it whole instead."""


class H5adRows:
    """Row chunks of an ``.h5ad``'s raw counts, with its cell and gene names.

    ``obs_names`` (str), ``var`` (a DataFrame indexed by the gene names the counts' columns
    carry), ``source`` (where the counts were found) and ``n_obs``; :meth:`chunks` yields
    ``(start, csr float32 chunk)``. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, *, name: str = "query") -> None:
        import h5py
        from anndata.io import read_elem

        path = Path(path)
        label = f"{name} file '{path.name}'"
        self.name = name
        if not path.name.lower().endswith(".h5ad") or not path.is_file() or not h5py.is_hdf5(path):
            # a folder, a missing path or a file that is no HDF5 goes to the whole read, whose message names it
            # (found 2026-12-07: predict said an empty .h5ad was an "internal error", and a folder did not exist)
            raise NotStreamable("only .h5ad files are read in chunks" if not path.name.lower().endswith(".h5ad") else
                                "it is not a file" if not path.is_file() else "it is not HDF5 inside")
        guard_hdf5(path, label, whole=("obs", "var", "raw/var"))
        try:
            self._f = h5py.File(path, "r")
        except Exception as exc:
            raise DataError(f"could not read {label} as h5ad: {type(exc).__name__}. The file may be truncated.") from None
        odd = [k for k in ("obsm", "uns") if k in self._f and not isinstance(self._f[k], h5py.Group)]
        if odd:  # an old layout (anndata < 0.7) or a damaged file: the annotated copy could not be written into it
            self.close()
            raise NotStreamable(f"its {odd[0]} is not stored as anndata writes it today")
        try:
            f = self._f
            self.obs = read_elem(f["obs"])
            var = read_elem(f["var"])
            candidates = [("X", f.get("X"), var, "X")]
            candidates += [(f"layers['{k}']", f["layers"].get(k), var, k) for k in COUNT_LAYERS
                           if "layers" in f and k in f["layers"]]
            if "raw" in f and "X" in f["raw"] and "var" in f["raw"]:
                candidates.append(("raw.X", f["raw"]["X"], read_elem(f["raw"]["var"]), "raw"))
        except Exception as exc:
            self.close()
            raise DataError(f"could not read {label} as h5ad: {type(exc).__name__}. The file may be truncated or "
                            "not an AnnData file.") from None
        self.n_obs = len(self.obs)
        self._matrix = None
        self._indptr: np.ndarray | None = None  # a sparse matrix's row pointers, checked (:meth:`_row_pointers`)
        self._recover_base = None  # the log base when the counts are recovered from log-normalised values
        self._per_value = BYTES_PER_VALUE  # bytes a stored value takes while read (the matrix's own, :meth:`_open`)
        lognorm: list = []
        # raw.X keeping more genes than X and its layers (cut to the highly variable ones) comes first, as
        # values.get_counts takes it
        raw_first = candidates[-1][0] == "raw.X" and len(candidates[-1][2]) > len(candidates[0][2])
        if raw_first:
            candidates.insert(0, candidates.pop())
        try:
            for where, elem, v, _ in candidates:
                if elem is None:
                    continue
                m = self._open(elem, label, where)
                self._indptr = self._row_pointers(elem, where, label, len(v))
                if m.shape[0] != self.n_obs or m.shape[1] != len(v):
                    raise DataError(f"{label} is damaged: its {where} has shape {m.shape} for {self.n_obs} cells "
                                    f"and {len(v)} genes. Save it again with anndata.")
                first = next(self._spans(np.arange(min(self.n_obs, 1000)), len(v)), np.zeros(0, dtype=np.int64))
                head = self._read(m, 0, len(first))  # (the first cells whose values fit a chunk)
                state = detect_value_state(head)
                if state == "counts":
                    self._matrix, self.var, self.source = m, v, f"raw counts from {where} ({len(v)} genes)"
                    got = None if whole_counts(head) else recover_counts(head, bases=(UNLOGGED,))
                    if got is not None:  # CPM and the like, as get_counts reads them
                        self._recover_base = UNLOGGED
                        self.source = (f"raw counts recovered from the {log_name(UNLOGGED)} values of {where} "
                                       f"({len(v)} genes), a chunk at a time")
                    break
                if state == "lognorm":
                    lognorm.append((where, m, v, head, self._indptr))
                    if raw_first and where == "raw.X" and recover_counts(head) is not None:
                        break  # recovered below, before any other source
            # no counts: log-normalised values turned back into counts, raw.X (all genes) first
            lognorm = [] if self._matrix is not None else sorted(lognorm, key=lambda c: c[0] != "raw.X")
            for where, m, v, head, indptr in lognorm:
                got = recover_counts(head)
                if got is not None:
                    self._matrix, self.var, self._recover_base, self._indptr = m, v, got[1], indptr
                    self.source = (f"raw counts recovered from the {log_name(got[1])} values of {where} "
                                   f"({len(v)} genes), a chunk at a time")
                    break
        except (DataError, NotStreamable):
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise DataError(f"could not read {label} as h5ad: {type(exc).__name__}. The file may be truncated or "
                            "damaged.") from None
        if self._matrix is None:
            self.close()
            raise DataError(f"the {name} has no raw counts (looked in X, layers {', '.join(COUNT_LAYERS)} and raw.X), "
                            "nor log-normalised values that can be turned back into counts. Predicting needs the "
                            "raw counts: load the unnormalised data.")
        self.var.index = pd.Index([str(g) for g in self.var.index])
        self.obs_names = np.asarray([str(c) for c in self.obs.index], dtype=object)

    def _open(self, elem, label: str, where: str = "X"):
        """The matrix ``elem`` to read rows of, refused (before a value is read) when its values are not plain
        numbers (text, records, arrays, complex: one line, where numpy's warning named a server path) or are
        float16 in a sparse matrix (scipy holds none); the bytes a value takes while read set from its item size."""
        import h5py
        from anndata.io import sparse_dataset

        from .io import _check_numbers

        if isinstance(elem, h5py.Group):  # positions must be whole numbers before any is read: strings there
            for key in ("indptr", "indices"):  # sharing one long text took 4.5 GB from 2 MB (found 2026-12-07)
                pos = elem.get(key)
                try:
                    whole = isinstance(pos, h5py.Dataset) and pos.dtype.kind in "iu" and pos.dtype.subdtype is None
                except Exception:  # noqa: BLE001 - a type h5py cannot read
                    whole = False
                if not whole:
                    raise DataError(f"{label} is damaged: the {'row pointers' if key == 'indptr' else 'column indices'}"
                                    f" of its {where} are not whole numbers. Save it again with anndata.")
        values = elem if isinstance(elem, h5py.Dataset) else elem.get("data")
        if isinstance(values, h5py.Dataset):
            try:
                dtype = values.dtype
            except Exception:  # noqa: BLE001 - a type h5py cannot read
                dtype = None
            _check_numbers(values if dtype is not None else None, label, where)
            if not isinstance(elem, h5py.Dataset) and dtype.kind == "f" and dtype.itemsize < 4:
                # scipy holds no sparse float16 (a ValueError, as in a whole read): one line that says so
                raise DataError(f"{label}: {where} holds float16 values in a sparse matrix, which scipy cannot hold; "
                                "save them as float32 (adata.X = adata.X.astype('float32')) and try again.")
            index = elem.get("indices") if not isinstance(elem, h5py.Dataset) else None
            self._per_value = max(BYTES_PER_VALUE, dtype.itemsize + 8 + (
                index.dtype.itemsize if isinstance(index, h5py.Dataset) and index.dtype.kind in "iu" else 8))
        if isinstance(elem, h5py.Dataset):
            if elem.ndim != 2:
                raise DataError(f"{label} is damaged: its matrix is not two-dimensional. Save it again with anndata.")
            return elem
        enc = elem.attrs.get("encoding-type", "")
        enc = enc.decode() if isinstance(enc, bytes) else str(enc)
        if enc == "csc_matrix":
            raise NotStreamable("the counts are stored by columns (CSC)")
        if enc != "csr_matrix":
            raise DataError(f"{label} holds a matrix of an unknown kind ({enc[:40] or 'no encoding'}). "
                            "Save it again with anndata.")
        return sparse_dataset(elem)

    def _row_pointers(self, elem, where: str, label: str, n_vars: int) -> np.ndarray | None:
        """A CSR matrix's row pointers, read and checked before any of its values: they must start at 0,
        never fall, give no row more values than there are genes and end within the values stored (a
        405 KB file whose pointers gave its first row 400 million values, never written, took a server
        to 9.7 GB at a 0.5 GB limit, found 2026-12-07); None for a dense matrix."""
        import h5py

        if not isinstance(elem, h5py.Group):
            return None
        try:
            ptr, data, idx = elem["indptr"], elem["data"], elem["indices"]
            if ptr.ndim != 1 or ptr.shape[0] != self.n_obs + 1:
                raise ValueError("row pointers of the wrong length")
            indptr = np.asarray(ptr[...], dtype=np.int64)
            steps = np.diff(indptr)
            if indptr[0] != 0 or (steps < 0).any() or (steps > n_vars).any() or \
                    indptr[-1] > min(data.shape[0], idx.shape[0]):
                raise ValueError("row pointers that do not fit the values")
        except Exception:
            raise DataError(f"{label} is damaged: the row pointers of its {where} do not fit its values (a row of "
                            "more values than genes, or more values than are stored). Save it again with "
                            "anndata.") from None
        return indptr

    def _spans(self, rows: np.ndarray, n_vars: int | None = None) -> Iterator[np.ndarray]:
        """``rows`` (sorted positions) in consecutive parts of at most :data:`CHUNK_CELLS` cells whose
        values, as read, fit :func:`chunk_bytes`: fewer cells per part where cells hold many values (a
        dense matrix of many genes, or a sparse one of dense rows), one cell at the least."""
        budget = chunk_bytes()
        if self._indptr is not None:
            per_cell = (self._indptr[rows + 1] - self._indptr[rows]) * self._per_value
        else:
            n_vars = len(self.var) if n_vars is None else n_vars
            per_cell = np.full(len(rows), n_vars * self._per_value, dtype=np.int64)
        start = 0
        while start < len(rows):
            cum = np.cumsum(per_cell[start:start + CHUNK_CELLS])
            stop = start + max(1, int(np.searchsorted(cum, budget, side="right")))
            yield rows[start:stop]
            start = stop

    @staticmethod
    def _csr(block) -> sp.csr_matrix:
        """``block`` as CSR float32, its indices checked: out-of-range ones would crash scipy's C code
        (the server) further on (raises ValueError)."""
        out = sp.csr_matrix(block, dtype=np.float32) if sp.issparse(block) else sp.csr_matrix(
            np.asarray(block, dtype=np.float32))
        out.check_format(full_check=True)
        return summed(out, own=True)  # (a block is a slice, read or cut afresh)

    @classmethod
    def _read(cls, m, start: int, stop: int) -> sp.csr_matrix:
        return cls._csr(m[start:stop])

    def _counts(self, block: sp.csr_matrix, where: str) -> sp.csr_matrix:
        """``block`` as counts: as read, or turned back from log-normalised values."""
        if self._recover_base is None:
            return block
        counts, whole = recover_rows(block, self._recover_base)
        if whole.mean() < RECOVER_MIN_CELLS:
            raise DataError(f"the {self.name}'s {where} could not be turned back into counts like its first cells "
                            "(its values are not log1p of normalised counts there). Provide the raw counts.")
        return counts

    def chunks(self, size: int = CHUNK_CELLS) -> Iterator[tuple[int, sp.csr_matrix]]:
        """``(first row, CSR float32 counts)`` for consecutive blocks of at most ``size`` cells (fewer
        where their values would not fit :func:`chunk_bytes`)."""
        size = max(1, int(size))
        for block_start in range(0, self.n_obs, size):
            for span in self._spans(np.arange(block_start, min(self.n_obs, block_start + size))):
                yield self._chunk(int(span[0]), int(span[-1]) + 1)

    def _chunk(self, start: int, stop: int) -> tuple[int, sp.csr_matrix]:
        """``(start, CSR float32 counts)`` of the cells ``start`` to ``stop``."""
        try:
            block = self._read(self._matrix, start, stop)
        except Exception as exc:
            raise DataError(f"could not read cells {start}-{stop} of the {self.name}: {type(exc).__name__}. "
                            "The file may be truncated or damaged.") from None
        return start, self._counts(block, f"cells {start}-{stop}")

    def rows_at(self, idx: np.ndarray) -> sp.csr_matrix:
        """CSR float32 counts of the cells at the sorted positions ``idx`` (read a chunk at a time)."""
        idx = np.asarray(idx, dtype=np.int64)
        parts = []
        for part in self._spans(idx):
            try:
                block = self._csr(self._matrix[part])
            except Exception as exc:
                raise DataError(f"could not read the {self.name}'s cells: {type(exc).__name__}. The file may be "
                                "truncated or damaged.") from None
            parts.append(self._counts(block, "sampled cells"))
        return sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, len(self.var)), dtype=np.float32)

    def close(self) -> None:
        f = getattr(self, "_f", None)
        if f is not None:
            f.close()
            self._f = None

    def __enter__(self) -> "H5adRows":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_sample(path: str | Path, *, n: int = SAMPLE_CELLS, seed: int = 0, name: str = "query"):
    """A seeded sample of ``n`` cells of the ``.h5ad`` at ``path`` as an in-memory AnnData (raw
    counts in ``X``, the cells' obs, the genes' var), for a file too large to read whole. Its
    ``uns[STREAM_KEY]`` says where the whole query is (:func:`stream_source`):
    :func:`cellannot_core.pipeline.annotate` trains with the sample and labels every cell of the
    file in chunks. The whole file's obs is read (its columns name the labels); the matrices are
    read only for the sampled rows."""
    import anndata as ad

    with H5adRows(path, name=name) as rows:
        k = min(int(n), rows.n_obs)
        idx = np.sort(np.random.default_rng(seed).choice(rows.n_obs, size=k, replace=False))
        X = rows.rows_at(idx)
        obs = rows.obs.iloc[idx].copy()
        obs.index = pd.Index(str_array(rows.obs_names[idx]), dtype=object)
        out = ad.AnnData(X=X, obs=obs, var=rows.var.copy())
        source = {"path": str(Path(path).resolve()), "n_obs": int(rows.n_obs), "n_sample": int(k),
                  "seed": int(seed), "source": rows.source}
    token = secrets.token_hex(16)
    with _SOURCES_LOCK:
        _SOURCES[token] = source
    out.uns[STREAM_KEY] = {**source, "token": token}
    return out
