"""How much an HDF5 file's variable-length data (strings of obs / var / uns, attributes) expands to
in memory, measured in a child process held to the memory limit.

Run by :func:`cellannot_core.data.io.guard_hdf5` as ``python -I h5text.py <file> <limit bytes>
<members>`` (members a JSON list, empty for the whole file), with nothing of the package imported,
so that it starts in a fraction of a second. A variable-length element is a pointer into the file's
heap, and any number of pointers may share one stored string: a 1.5 MB ``.h5ad`` whose 3,000 obs names
all point at one 1 MB string expands to 3 GB (found 2026-12-07; the shape and item size that bound
every other dataset count 8 bytes each). Only reading tells the size, so it is read here, under an
address-space limit, and the parent reads the file only when this child says it fits.

Exit code 0 and ``fits <bytes>``: it fits; 3 and ``over <name>``: it does not (or the memory ran
out reading it); anything else (a file it could not measure) is refused by the parent: a dataset of a
type h5py cannot read crashed this child into an exit the parent took for "fits" (found 2026-12-07).
The members come as one JSON list (a MuData modality named ``x,y`` split a comma-joined list).
"""
from __future__ import annotations

import sys

OVER = 3
PER_ELEMENT = 64  # a Python object's own bytes beside its text (anndata holds each name as one)
BLOCK = 65536  # elements of a dataset read at once
#: elements that cannot be read, each found by halving its block, before the file is taken as damaged: a
#: file of nothing else held the child for its whole timeout (found 2026-12-07); anndata writes none
MAX_BROKEN = 64


LAYOUT = 4  # exit code: a table laid out as anndata never writes it (:func:`table_problem`)


class Damaged(Exception):
    """More unreadable elements than :data:`MAX_BROKEN`."""


def table_problem(group) -> str | None:
    """What is wrong with a data frame group's ``column-order`` and ``_index`` (anndata reads each name
    they give with ``group[name]``, so a name is also a path), or None. A column listed twice is read
    twice (4,000 times: 3.4 GB from 3 MB); ``./a``, ``/obs/a`` and ``a`` are one column under three
    names, and ``/uns/big`` reads what no guard counted for the table; an index that is a group (a
    categorical of one long category) expands to a copy of its text per cell (found 2026-12-07). Read
    here, under the memory limit, or by the parent when every string the file holds fits its budget."""
    import h5py
    import numpy as np

    for key in ("column-order", "_index"):
        if key not in group.attrs:
            continue
        values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                  for v in np.atleast_1d(group.attrs[key]).ravel()]
        # HDF5 ends a name at its first NUL: "a", "a\x001", "a\x002" are three names here and one column to
        # anndata, read once for each (4,000 of them: 3.4 GB from a 2.9 MB file, found 2026-12-07)
        if any("\0" in v for v in values):
            return f"a table ('{group.name[:60]}') that names a column with a NUL character"
        # a column named with a "/" is a path below the table (anndata wrote "qc/flag" so, with a warning);
        # one from the root, or through "." or "..", reaches another part of the file or one already read
        if any(v.startswith("/") or {".", ".."} & set(v.split("/")) for v in values):
            return f"a table ('{group.name[:60]}') that names a column by a path"
        values = ["/".join(p for p in v.split("/") if p) for v in values]  # "a//b" is "a/b"
        if key == "column-order" and len(set(values)) != len(values):
            return f"a table ('{group.name[:60]}') that lists one column more than once"
        if key == "_index" and values and not isinstance(group.get(values[0]), h5py.Dataset):
            return f"a table ('{group.name[:60]}') whose index is not a list of names"
    return None


def table_problems(f, names: list[str] | None = None) -> str | None:
    """:func:`table_problem` of the groups ``names`` of the open file ``f`` (None: every group with a
    ``column-order`` or an ``_index``, found by walking the file)."""
    import h5py

    found: list[str] = [] if names is None else names

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Group) and ("column-order" in obj.attrs or "_index" in obj.attrs):
            found.append(name)

    if names is None:
        f.visititems(visit)
    for name in found:
        problem = table_problem(f[name])
        if problem:
            return problem
    return None


def _vm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _size(value) -> int:
    import numpy as np

    if isinstance(value, (bytes, str)):
        return len(value) + PER_ELEMENT
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            return sum(_size(v) for v in value.ravel()) + value.nbytes
        return value.nbytes
    if isinstance(value, (tuple, list, np.void)):
        return sum(_size(v) for v in value) + PER_ELEMENT
    return PER_ELEMENT


class Over(Exception):
    """The measured total passed the limit (its ``args[0]``: where)."""


def _read(read):
    """``read()``; HDF5's own allocation failing under the address-space limit ("memory allocation
    failed for VL data") as a :class:`MemoryError`."""
    try:
        return read()
    except OSError as err:
        if "alloc" in str(err).lower():
            raise MemoryError(str(err)) from None
        raise


def measure(path: str, limit: int, members: tuple[str, ...]) -> tuple[int, str | None]:
    """The bytes the file's variable-length datasets (under ``members``, or all) and attributes take
    in memory once read, stopping at the first that passes ``limit``: ``(total, its name or None)``.

    A part that cannot be read is measured in halves down to the element, each element that fails left out: a
    reader fails on those too, and stopping at the first would let a broken part no reader touches
    (a dataset anndata never reads) hide the rest of the file (found 2026-12-07, a second probe)."""
    import h5py

    total = broken = 0

    def counted(name: str) -> bool:
        return not members or any(name == m or name.startswith(m + "/") for m in members)

    def add(n_bytes: int, where: str) -> None:
        nonlocal total
        total += n_bytes
        if total > limit:
            raise Over(where)

    def dataset(name: str, obj) -> None:
        if not obj.shape:
            try:
                add(_size(_read(lambda: obj[()])), name)
            except (MemoryError, Over):
                raise
            except Exception:  # noqa: BLE001 - unreadable: a reader fails on it too
                pass
            return
        def part(start: int, stop: int) -> None:
            try:
                add(_size(_read(lambda: obj[start:stop])), name)
            except (MemoryError, Over):
                raise
            except Exception:  # noqa: BLE001 - a broken element: each half apart, down to the element
                nonlocal broken
                if stop - start > 1:
                    middle = (start + stop) // 2
                    part(start, middle)
                    part(middle, stop)
                else:
                    broken += 1
                    if broken > MAX_BROKEN:
                        raise Damaged(name) from None

        # a block at a time, so that reading stops at the limit; a chunk longer than a block read once, not once a
        # block (HDF5 decompresses a whole chunk for each read: 1 GB each time held this child for 300 s, 2026-12-07)
        step = max(BLOCK, int(obj.chunks[0])) if obj.chunks else BLOCK
        for start in range(0, obj.shape[0], step):
            part(start, min(start + step, obj.shape[0]))

    def visit(name: str, obj) -> None:
        for key in list(obj.attrs):
            try:
                if obj.attrs.get_id(key).dtype.hasobject:
                    add(_size(_read(lambda: obj.attrs[key])), f"{name or '/'} attribute {key[:40]}")
            except (MemoryError, Over):
                raise
            except Exception:  # noqa: BLE001 - an attribute that cannot be read: a reader fails on it too
                pass
        if isinstance(obj, h5py.Dataset) and counted(name):
            try:
                text = obj.dtype.hasobject
            except Exception:  # noqa: BLE001 - a type h5py cannot read (HDF5's TIME): nothing reads it either
                text = False
            if text:
                dataset(name, obj)

    try:
        with h5py.File(path, "r") as f:
            visit("", f)
            names: list[str] = []
            f.visititems_links(lambda name, link: names.append(name)
                               if not isinstance(link, h5py.ExternalLink) else None)
            for name in names:
                try:
                    obj = f.get(name)
                except (MemoryError, Over):
                    raise
                except Exception:  # noqa: BLE001 - a broken link or object: the reader reports it
                    continue
                if obj is not None:
                    visit(name, obj)
    except Over as over:
        return total, str(over.args[0])
    return total, None


def limit_memory(limit: int) -> None:
    """Hold this process's address space to what it holds now plus ``limit`` bytes (and 256 MB for
    HDF5's own needs), h5py and numpy loaded first so that the limit is on the data alone. The hard limit is
    kept as it is: raising it fails under a server's own limit (ulimit -v, prlimit), which left this child
    with no limit at all (8 GB at a 0.25 GB limit, found 2026-12-07)."""
    vm = _vm_bytes()
    if vm is None:
        return
    try:
        import resource

        import h5py  # noqa: F401
        import numpy  # noqa: F401

        vm = _vm_bytes() or vm
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        soft = vm + limit + (256 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    except (ImportError, ValueError, OSError):
        pass


def main(argv: list[str]) -> int:
    import json

    path, limit = argv[0], int(argv[1])
    members = tuple(str(m) for m in json.loads(argv[2] if len(argv) > 2 else "[]") if m)
    limit_memory(limit)
    try:
        total, over = measure(path, limit, members)
    except MemoryError:
        print("over memory")
        return OVER
    except Damaged:
        print("damaged")
        return 1
    except Exception:  # noqa: BLE001 - a file it cannot measure: the parent refuses it
        return 1
    if over:
        print(f"over {over}")
        return OVER
    try:
        import h5py

        with h5py.File(path, "r") as f:
            problem = table_problems(f)
    except MemoryError:
        print("over memory")
        return OVER
    except Exception:  # noqa: BLE001 - the parent refuses what was not measured
        return 1
    if problem:
        print(problem)
        return LAYOUT
    print(f"fits {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
