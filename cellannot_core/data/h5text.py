"""How much an HDF5 file's variable-length data (strings of obs / var / uns, attributes) expands to
in memory, measured in a child process held to the memory limit.

Run by :func:`cellannot_core.data.io.guard_hdf5` as ``python -I h5text.py <file> <limit bytes>
<members>`` (members comma-separated, empty for the whole file), with nothing of the package imported,
so that it starts in a fraction of a second. A variable-length element is a pointer into the file's
heap, and any number of pointers may share one stored string: a 1.5 MB ``.h5ad`` whose 3,000 obs names
all point at one 1 MB string expands to 3 GB (found 2026-12-07; the shape and item size that bound
every other dataset count 8 bytes each). Only reading tells the size, so it is read here, under an
address-space limit, and the parent reads the file only when this child says it fits.

Exit code 0 and ``fits <bytes>``: it fits; 3 and ``over <name>``: it does not (or the memory ran
out reading it); anything else (a damaged file) is left to the reader, which reports it.
"""
from __future__ import annotations

import sys

OVER = 3
PER_ELEMENT = 64  # a Python object's own bytes beside its text (anndata holds each name as one)
BLOCK = 65536  # elements of a dataset read at once


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


def measure(path: str, limit: int, members: tuple[str, ...]) -> tuple[int, str | None]:
    """The bytes the file's variable-length datasets (under ``members``, or all) and attributes take
    in memory once read, stopping at the first that passes ``limit``: ``(total, its name or None)``."""
    import h5py

    total = 0

    def counted(name: str) -> bool:
        return not members or any(name == m or name.startswith(m + "/") for m in members)

    def add(name: str, obj) -> str | None:
        nonlocal total
        for key in obj.attrs:
            if obj.attrs.get_id(key).dtype.hasobject:
                total += _size(obj.attrs[key])
                if total > limit:
                    return f"{name or '/'} attribute {key[:40]}"
        if isinstance(obj, h5py.Dataset) and obj.dtype.hasobject and counted(name):
            n = obj.shape[0] if obj.shape else 1
            for start in range(0, n, BLOCK):  # a block at a time, so that reading stops at the limit
                total += _size(obj[start:start + BLOCK] if obj.shape else obj[()])
                if total > limit:
                    return name
        return None

    with h5py.File(path, "r") as f:
        over = add("", f)
        if over:
            return total, over
        names: list[str] = []
        f.visititems_links(lambda name, link: names.append(name) if not isinstance(link, h5py.ExternalLink) else None)
        for name in names:
            obj = f.get(name)
            if obj is not None and (over := add(name, obj)):
                return total, over
    return total, None


def main(argv: list[str]) -> int:
    path, limit = argv[0], int(argv[1])
    members = tuple(m for m in (argv[2] if len(argv) > 2 else "").split(",") if m)
    vm = _vm_bytes()
    if vm is not None:
        try:
            import resource

            import h5py  # noqa: F401 - loaded before the limit is set, so the limit is on the data alone
            import numpy  # noqa: F401

            vm = _vm_bytes() or vm
            resource.setrlimit(resource.RLIMIT_AS, (vm + limit + (256 << 20), resource.RLIM_INFINITY))
        except (ImportError, ValueError, OSError):
            pass
    try:
        total, over = measure(path, limit, members)
    except MemoryError:
        print("over memory")
        return OVER
    except OSError as err:  # HDF5's own allocation under the limit: "memory allocation failed for VL data"
        if "alloc" in str(err).lower():
            print("over memory")
            return OVER
        return 1
    except Exception:  # noqa: BLE001 - a damaged file: the reader says what is wrong with it
        return 1
    if over:
        print(f"over {over}")
        return OVER
    print(f"fits {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
