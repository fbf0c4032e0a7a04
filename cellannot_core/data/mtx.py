"""A Matrix Market (``.mtx`` / ``.mtx.gz``) reader that runs in the calling thread and is held to the
server's memory limit before it reads a value.

scipy's ``mmread`` (fast_matrix_market) reads in a thread of its own: on a file holding more lines than its
header declares it raised "file too long" while that thread still read, the caller's ``with gzip.open``
closed the stream under it, and the thread's next ``seek`` failed inside pybind11, which ends the process
(``std::terminate``, SIGABRT: the whole app server, from a 574-byte upload; found 2026-12-07). Here the
header (banner, comments, size line) is parsed first, the declared size is checked against
:func:`~.io.memory_limit_bytes`, and exactly the declared entries are read, by pandas' C parser, a block at
a time; fewer or more entries than declared, entries out of range or not numbers are one line, which never
quotes the file.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.sparse as sp

from cellannot_core.errors import DataError

#: the most bytes the banner, comments and size line may take (10x writes three short lines)
MTX_HEADER_BYTES = 1 << 20
#: the most bytes of text an entry may take ("36601 737280 1.000000000000000e+00" is 35); more is padding. A line
#: of entries longer than this is refused as it is read (comments excepted)
MTX_BYTES_PER_ENTRY = 128
#: memory an entry takes while it is read and made CSR (row, column, value, then the CSR's index and value)
MTX_BYTES_PER_ENTRY_MEMORY = 24
#: entries parsed at once
MTX_BLOCK_ENTRIES = 1 << 20

_FIELDS = {"real": 1, "double": 1, "integer": 1, "unsigned-integer": 1, "pattern": 0}
_SYMMETRIES = ("general", "symmetric", "skew-symmetric")


@dataclass(frozen=True)
class MtxHeader:
    """What a Matrix Market file's banner and size line declare."""

    format: str  # "coordinate" or "array"
    field: str  # "real", "integer", "pattern", ...
    symmetry: str  # "general", "symmetric", "skew-symmetric"
    rows: int
    cols: int
    entries: int  # stored entries (rows x cols for an array)

    @property
    def memory(self) -> int:
        """Bytes of memory reading it takes, at most."""
        if self.format == "array":  # every value may be non-zero, kept as a position and a value, then as COO and
            # CSR: 30 million ones (a 340 KB folder) took 1.6 GB at a 0.25 GB limit counted at 8 bytes each
            # (found 2026-12-07)
            return self.rows * self.cols * 2 * MTX_BYTES_PER_ENTRY_MEMORY
        stored = self.entries * (2 if self.symmetry != "general" else 1)
        return stored * MTX_BYTES_PER_ENTRY_MEMORY + (self.rows + self.cols) * 8


class _Counted(io.RawIOBase):
    """A binary stream that stops (reads as ended) after ``budget`` bytes, noting it did (``over``), or at a
    line longer than ``max_line`` bytes that is not a comment (``long_line``): pandas' tokenizer holds every
    field of a line before it finds the line too long, and one line of 100 million fields in a 2 KB .tar.gz
    took 4.9 GB (found 2026-12-07)."""

    def __init__(self, raw, budget: int, max_line: int | None = None):
        self._raw, self.budget, self.read_bytes, self.over = raw, budget, 0, False
        self.max_line, self.long_line, self._line, self._comment = max_line, False, 0, False

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        room = self.budget - self.read_bytes
        if room <= 0:
            if self._raw.read(1):  # anything past the budget: more text than the declared entries can hold
                self.over = True
            return 0
        if self.long_line:
            return 0
        view = memoryview(buf)[:room]
        data = self._raw.read(len(view))
        cut = self._long_line(data) if self.max_line is not None and data else None
        if cut is not None:  # handed on up to that line (the header before it is read), then ended
            self.long_line, data = True, data[:cut]
        view[:len(data)] = data
        self.read_bytes += len(data)
        return len(data)


    def _long_line(self, data: bytes) -> int | None:
        """Where in ``data``, read after what came before, a line (ended by LF or CR, as pandas ends them) longer
        than ``max_line`` bytes that is not a comment (``%``: pandas skips those without holding them) starts
        (0 when it started before), or None."""
        a = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero((a == 10) | (a == 13))
        starts = np.concatenate(([0], ends + 1))
        lengths = np.concatenate((ends, [len(a)])) - starts
        lengths[0] += self._line
        comment = np.zeros(len(starts), dtype=bool)
        inside = starts < len(a)
        comment[inside] = a[starts[inside]] == ord("%")
        if self._line:
            comment[0] = self._comment
        self._line, self._comment = int(lengths[-1]), bool(comment[-1]) if lengths[-1] else False
        long = np.flatnonzero((lengths > self.max_line) & ~comment)
        return int(starts[long[0]]) if len(long) else None


@contextlib.contextmanager
def _opened(path: Path, budget: int, max_line: int | None = None) -> Iterator[_Counted]:
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open(path, "rb"))
        from .io import _is_gzip

        if path.name.lower().endswith(".gz") or _is_gzip(path):
            raw = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        yield _Counted(raw, budget, max_line)


def _parse_header(fh: io.BufferedReader, what: str) -> MtxHeader:
    """The banner, comments and size line of ``fh``, read up to the first entry."""
    def bad(why: str) -> DataError:
        return DataError(f"{what} is not a Matrix Market file: {why}. Write it again (scipy.io.mmwrite, "
                         "R's Matrix::writeMM or Cell Ranger write one)")

    banner = fh.readline(4096).split()
    if len(banner) != 5 or banner[0].lower() != b"%%matrixmarket":
        raise bad("its first line is not a '%%MatrixMarket matrix coordinate integer general' banner")
    obj, fmt, field, symmetry = (b.decode("ascii", "replace").lower() for b in banner[1:])
    if obj != "matrix" or fmt not in ("coordinate", "array"):
        raise bad("its banner names no matrix in coordinate or array format")
    if field == "complex" or symmetry == "hermitian":
        raise DataError(f"{what} holds complex numbers, not counts: write the counts as integer or real values")
    if field not in _FIELDS or symmetry not in _SYMMETRIES or (fmt == "array" and (field == "pattern"
                                                                                      or symmetry != "general")):
        raise bad("its banner names a field or symmetry that is not read here (integer, real or pattern; general "
                  "or symmetric)")
    taken = 0
    while True:
        line = fh.readline(4096)
        taken += len(line)
        if not line:
            raise bad("it ends before its size line")
        if taken > MTX_HEADER_BYTES:
            raise bad(f"its comments take more than {MTX_HEADER_BYTES >> 20} MB")
        if not line.lstrip().startswith(b"%") and line.strip():
            break
    size = line.split()
    want = 3 if fmt == "coordinate" else 2
    try:
        dims = [int(x) for x in size]
    except ValueError:
        dims = []
    if len(dims) != want or min(dims) < 0:
        raise bad(f"its size line is not {want} whole numbers of at least 0")
    rows, cols = dims[0], dims[1]
    entries = dims[2] if fmt == "coordinate" else rows * cols
    if fmt == "coordinate" and symmetry != "general" and rows != cols:
        raise bad("it is declared symmetric but is not square")
    return MtxHeader(fmt, field, symmetry, rows, cols, entries)


def read_mtx_header(path: Path, what: str) -> MtxHeader:
    """The header of the Matrix Market file at ``path`` (nothing past it is read)."""
    try:
        with _opened(path, MTX_HEADER_BYTES) as raw, io.BufferedReader(raw, 1 << 16) as fh:
            return _parse_header(fh, what)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        why = "it is cut short" if isinstance(err, EOFError) else "its compressed stream is damaged"
        raise DataError(f"{what} cannot be read: {why} (an upload, download or copy that did not finish?). "
                        "Copy it again") from None


def check_mtx_memory(header: MtxHeader, what: str, limit: int) -> None:
    """Refuse a matrix whose header asks for more than ``limit`` bytes (a header declaring a 40,000 x 40,000
    dense array asks for 12 GiB), before it is read."""
    if header.memory > limit:
        entries = f" with {header.entries:,} entries" if header.format == "coordinate" else ""
        raise DataError(f"{what} declares {header.rows:,} x {header.cols:,}{entries}, about "
                        f"{header.memory / 1024**3:.1f} GiB in memory, above this server's limit of "
                        f"{limit / 1024**3:.1f} GiB (CELLANNOT_MEMORY_LIMIT_GB): subsample it or use a bigger machine.")


def read_mtx(path: Path, what: str, limit: int) -> sp.coo_matrix:
    """The matrix in the Matrix Market file at ``path`` (plain or gzipped) as a float32 COO matrix of the
    declared shape, read in this thread. ``what`` names the file in errors (never its contents)."""
    header = read_mtx_header(path, what)
    check_mtx_memory(header, what, limit)
    budget = MTX_HEADER_BYTES + header.entries * MTX_BYTES_PER_ENTRY + (1 << 16)
    for sep in (" ", r"\s+"):  # fields apart by one space, as every writer writes them, parse a third faster
        reader = None
        reader = _Entries(header, what, sep)
        try:
            with _opened(path, budget, MTX_BYTES_PER_ENTRY) as raw, io.BufferedReader(raw, 1 << 20) as fh:
                _parse_header(fh, what)  # (as read above: the entries follow it)
                try:
                    reader.read(fh)
                except (DataError, _OtherSpacing):
                    if not raw.long_line:  # (stopped at a long line: said as such below, not as what pandas saw)
                        raise
                if raw.long_line:
                    raise reader.bad(f"a line of it is longer than {MTX_BYTES_PER_ENTRY} bytes, where an entry takes "
                                     "a few tens")
                if raw.over:
                    raise reader.bad(f"it holds more text than its {header.entries:,} declared entries take (lines "
                                     "past them, or padding)")
        except _OtherSpacing:
            continue
        break
    if reader.done < header.entries:
        raise reader.bad(f"it holds {reader.done:,} entr{'y' if reader.done == 1 else 'ies'} where its header declares "
                         f"{header.entries:,}")
    return reader.matrix()


class _OtherSpacing(Exception):
    """Entries not apart by one space each: read them again, apart by any whitespace."""


class _Entries:
    """The entries of a Matrix Market file, parsed a block at a time into arrays of the declared size."""

    def __init__(self, header: MtxHeader, what: str, sep: str = r"\s+"):
        self.header, self.what, self.sep, self.done = header, what, sep, 0
        n, coordinate = header.entries, header.format == "coordinate"
        self.n_cols = 2 + _FIELDS[header.field] if coordinate else 1
        self.index = np.int64 if max(header.rows, header.cols) >= np.iinfo(np.int32).max else np.int32
        self.r = np.empty(n if coordinate else 0, dtype=self.index)
        self.c = np.empty(n if coordinate else 0, dtype=self.index)
        self.v = np.empty(n if coordinate and header.field != "pattern" else 0, dtype=np.float32)
        self.nonzero: list[tuple[np.ndarray, np.ndarray]] = []  # an array's non-zero values: (position, value)

    def bad(self, why: str) -> DataError:
        return DataError(f"{self.what} is damaged: {why}. Write it again from the original data")

    def read(self, fh) -> None:
        import pandas as pd

        kinds = {i: np.int64 for i in range(self.n_cols)}
        if self.header.field != "pattern":
            kinds[self.n_cols - 1] = np.float64
        try:
            # quoting=3 (csv.QUOTE_NONE): Matrix Market quotes nothing, and a '"' opening a field made pandas hold
            # every line up to its closing quote as one field (a 9 KB .tar.gz: 4.2 GB at a 0.5 GB limit, found
            # 2026-12-07), past the per-line check
            with pd.read_csv(fh, sep=self.sep, header=None, comment="%", dtype=kinds, keep_default_na=False,
                             na_values=["nan", "NaN", "NAN"], chunksize=MTX_BLOCK_ENTRIES, engine="c",
                             quoting=3) as blocks:
                for block in blocks:
                    self._take(block)
        except DataError:
            raise
        except pd.errors.EmptyDataError:
            pass  # no entries at all
        except (EOFError, zlib.error, OSError) as err:  # (gzip.BadGzipFile is an OSError)
            why = "it is cut short" if isinstance(err, EOFError) else "its compressed stream is damaged"
            raise self.bad(f"{why} (an upload, download or copy that did not finish?)") from None
        except (ValueError, TypeError, OverflowError) as err:  # (pandas' ParserError is a ValueError)
            if self.sep == " ":
                raise _OtherSpacing() from None
            raise self.bad(f"not every entry is {self.n_cols} number{'s' * (self.n_cols > 1)}"
                           f"{' (row, column, value)' if self.n_cols == 3 else ''} ({type(err).__name__})") from None

    def _take(self, block) -> None:
        h, done, m = self.header, self.done, len(block)
        if block.shape[1] != self.n_cols:
            if self.sep == " ":
                raise _OtherSpacing()
            raise self.bad(f"not every entry is {self.n_cols} number{'s' * (self.n_cols > 1)}")
        if done + m > h.entries:
            raise self.bad(f"it holds more entries than the {h.entries:,} its header declares")
        if h.format == "coordinate":
            br, bc = block[0].to_numpy(), block[1].to_numpy()
            out = (br < 1) | (bc < 1) | (br > h.rows) | (bc > h.cols)
            if out.any():
                at = done + int(out.argmax()) + 1
                raise self.bad(f"entry {at:,} lies outside its declared {h.rows:,} x {h.cols:,}")
            self.r[done:done + m] = br - 1
            self.c[done:done + m] = bc - 1
            if h.field != "pattern":
                self.v[done:done + m] = block[2].to_numpy()
        else:  # column after column
            vals = block[0].to_numpy()
            nz = np.flatnonzero(vals)
            self.nonzero.append((nz + done, vals[nz].astype(np.float32)))
        self.done += m

    def matrix(self) -> sp.coo_matrix:
        h = self.header
        shape = (h.rows, h.cols)
        if h.format == "array":
            at = np.concatenate([k for k, _ in self.nonzero]) if self.nonzero else np.empty(0, dtype=np.int64)
            v = np.concatenate([x for _, x in self.nonzero]) if self.nonzero else np.empty(0, dtype=np.float32)
            rows = max(h.rows, 1)
            return sp.coo_matrix((v, ((at % rows).astype(self.index), (at // rows).astype(self.index))), shape=shape)
        r, c, v = self.r, self.c, self.v
        if h.field == "pattern":
            v = np.ones(h.entries, dtype=np.float32)
        if h.symmetry != "general":  # the other triangle: mirrored (negated when skew-symmetric)
            off = r != c
            sign = np.float32(-1 if h.symmetry == "skew-symmetric" else 1)
            r, c, v = np.concatenate([r, c[off]]), np.concatenate([c, r[off]]), np.concatenate([v, sign * v[off]])
        return sp.coo_matrix((v, (r, c)), shape=shape)
