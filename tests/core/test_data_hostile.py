"""Hostile HDF5 files (issue 14): external links, external storage, virtual datasets and
decompression bombs are refused before anndata or scanpy read them, with one line that never
quotes the file they point at."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cellannot_core.data import read_dataset
from cellannot_core.errors import DataError
from conftest import make_synthetic

ROOT = Path(__file__).resolve().parents[2]
SECRET = "SECRET_TOKEN_do_not_leak"


@pytest.fixture()
def plain(tmp_path):
    a = make_synthetic(60, 30, 2)
    p = tmp_path / "plain.h5ad"
    a.write_h5ad(p)
    return p


@pytest.fixture()
def secret_file(tmp_path):
    p = tmp_path / "server_secret.txt"
    p.write_bytes((SECRET + "\n").encode() * 64)
    return p


def _check_refused(path: Path, what: str) -> str:
    with pytest.raises(DataError) as err:
        read_dataset(path, name="reference")
    msg = str(err.value)
    assert "refused" in msg and what in msg and "\n" not in msg
    assert SECRET not in msg and "server_secret" not in msg
    return msg


def test_external_storage_pointing_at_a_server_file_is_refused(plain, secret_file, tmp_path):
    evil = tmp_path / "evil_external.h5ad"
    evil.write_bytes(plain.read_bytes())
    with h5py.File(evil, "a") as f:
        del f["X"]
        f.create_dataset("X", shape=(60, 30), dtype="uint8", external=[(str(secret_file), 0, 60 * 30)])
        f["X"].attrs["encoding-type"] = "array"
        f["X"].attrs["encoding-version"] = "0.2.0"
    _check_refused(evil, "external files")


def _linked_copy(plain: Path, tmp_path: Path, suffix: str) -> Path:
    """A copy of ``plain`` whose X is an external link to another file of the server."""
    other = tmp_path / f"other_users_data{suffix}"
    other.write_bytes(plain.read_bytes())
    evil = tmp_path / f"evil_link{suffix}"
    evil.write_bytes(plain.read_bytes())
    with h5py.File(evil, "a") as f:
        del f["X"]
        f["X"] = h5py.ExternalLink(str(other), "/X")
    return evil


def test_external_link_to_another_file_is_refused(plain, tmp_path):
    _check_refused(_linked_copy(plain, tmp_path, ".h5ad"), "external link")


def test_virtual_dataset_is_refused(plain, secret_file, tmp_path):
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("d", data=np.ones((60, 30), dtype=np.float32))
    evil = tmp_path / "evil_virtual.h5ad"
    evil.write_bytes(plain.read_bytes())
    layout = h5py.VirtualLayout(shape=(60, 30), dtype=np.float32)
    layout[:] = h5py.VirtualSource(str(src), "d", shape=(60, 30))
    with h5py.File(evil, "a") as f:
        del f["X"]
        f.create_virtual_dataset("X", layout)
    _check_refused(evil, "virtual dataset")


def test_tenx_h5_goes_through_the_same_guard(plain, tmp_path):
    _check_refused(_linked_copy(plain, tmp_path, ".h5"), "external link")


def test_a_compressed_bomb_is_refused_by_its_decompressed_size(tmp_path, monkeypatch):
    import anndata as ad

    a = ad.AnnData(X=np.zeros((4000, 2000), dtype=np.float32))  # 32 MB of zeros, a few kB gzipped
    p = tmp_path / "bomb.h5ad"
    a.write_h5ad(p, compression="gzip")
    assert p.stat().st_size < 2_000_000
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "0.01")
    with pytest.raises(DataError, match=r"expands to .* GiB in memory, above this server's limit"):
        read_dataset(p, name="query")


def test_links_inside_the_file_count_each_time_they_are_read(tmp_path, monkeypatch):
    """Found 2026-12-06: soft links were not counted, and anndata reads an object once per name: 20
    layers linked to a dense X (145 MB) in a 6.5 MB file took 3.6 GB against a 0.5 GB limit."""
    import anndata as ad

    a = ad.AnnData(X=np.zeros((2000, 1000), dtype=np.float32))  # 8 MB dense, a few kB gzipped
    p = tmp_path / "links.h5ad"
    a.write_h5ad(p, compression="gzip")
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", str(20 / 1024))  # 20 MB: X alone passes
    assert read_dataset(p, name="query").n_obs == 2000
    with h5py.File(p, "a") as f:
        layers = f.require_group("layers")
        for i in range(5):
            layers[f"copy{i}"] = h5py.SoftLink("/X")
    with pytest.raises(DataError, match=r"expands to .* GiB in memory, above this server's limit"):
        read_dataset(p, name="query")
    sparse = make_synthetic(60, 30, 2)
    q = tmp_path / "group_link.h5ad"
    sparse.write_h5ad(q)
    with h5py.File(q, "a") as f:
        f.require_group("layers")["counts"] = h5py.SoftLink("/X")  # X is a group (CSR) here
    _check_refused(q, "a link ('layers/counts') to a group of the same file")
    sparse.write_h5ad(q)
    with h5py.File(q, "a") as f:
        f.require_group("layers")["counts"] = f["X"]  # a hard link: the group's members are walked once only
    _check_refused(q, "a link ('layers/counts') to a group of the same file")


def test_a_plain_file_still_reads(plain):
    assert read_dataset(plain, name="reference").n_obs == 60


def test_a_file_this_process_holds_open_for_writing_has_its_text_measured(plain):
    """Found 2026-12-07 (a scanpy user's probe): a query opened with ``ad.read_h5ad(path, backed="r+")``
    was refused as damaged: HDF5's lock kept out the child process that measures a file's text."""
    import anndata as ad

    from cellannot_core.data import io as data_io

    held = ad.read_h5ad(plain, backed="r+")
    try:
        data_io._guard_hdf5_text(plain, "query", 10**9, None)  # (raises when the child cannot read it)
    finally:
        held.file.close()


def test_a_file_another_program_holds_open_for_writing_is_told_as_such(plain):
    """Found 2026-12-07 (a pipeline author's probe): a query another process held open for writing was "damaged
    ... copy it again" (HDF5's lock: BlockingIOError). It is now told as what it is."""
    import time

    holder = subprocess.Popen([sys.executable, "-c", f"import h5py, time; f = h5py.File({str(plain)!r}, 'a'); "
                               "print('open', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(DataError, match="another program holds the file open for writing"):
            read_dataset(plain, name="query")
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert read_dataset(plain, name="query").n_obs == 60  # released: read as before


@pytest.mark.parametrize("note", ["a string", np.arange(3), {"format": "table", "file": "../../x"}])
def test_a_file_cannot_write_the_readers_own_note(plain, tmp_path, note):
    """``uns['cellannot_input']`` says how the file was read; a file's own one (text, an array) was an
    internal error (ValueError) on reading, found 2026-12-06. Now the reader writes it afresh."""
    import anndata as ad

    a = ad.read_h5ad(plain)
    a.uns["cellannot_input"] = note
    p = tmp_path / "noted.h5ad"
    a.write_h5ad(p)
    assert dict(read_dataset(p, name="reference").uns["cellannot_input"]) == {"format": "h5ad"}


def test_the_cli_gives_one_line_for_a_hostile_file(plain, tmp_path):
    evil = _linked_copy(plain, tmp_path, ".h5ad")
    r = subprocess.run([sys.executable, "-m", "cellannot_core", "annotate", "--reference", str(evil), "--query",
                        str(plain), "--label-key", "cell_type", "--out", str(tmp_path / "out.h5ad")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "refused" in r.stderr
    assert not (tmp_path / "out.h5ad").exists()


def test_an_mtx_header_asking_for_too_much_memory_is_refused(tmp_path, monkeypatch):
    """Issue 14: a header declaring 40000 x 40000 asked for 11.9 GiB as stored; as read (every value may be
    non-zero: a position and a value, then COO and CSR) 71.5 GiB, which it counts since 2026-12-07 (a 340
    KB array of 30 million ones took 1.6 GB at a 0.25 GB limit, counted at 8 bytes a value)."""
    d = tmp_path / "tenx"
    d.mkdir()
    (d / "matrix.mtx").write_text("%%MatrixMarket matrix array real general\n40000 40000\n1\n")
    (d / "features.tsv").write_text("".join(f"g{i}\tG{i}\n" for i in range(3)))
    (d / "barcodes.tsv").write_text("".join(f"c{i}\n" for i in range(3)))
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "4")
    with pytest.raises(DataError, match=r"declares 40,000 x 40,000, about 71.5 GiB in memory"):
        read_dataset(d, name="query")
    # a table whose rows end in a lone carriage return: pandas ends a row there, the line count did not
    (tmp_path / "cr.csv").write_bytes(b"cell,G0\r" + b"".join(b"c%d,1\r" % i for i in range(20_000)))
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", str(5 / 1024))
    with pytest.raises(DataError, match="lines .* of text"):
        read_dataset(tmp_path / "cr.csv", name="query")


def test_an_archive_bigger_than_the_memory_budget_is_refused_before_unpacking(tmp_path, monkeypatch):
    """Issue 14: archives were limited by a fixed 20 GB, whatever the server's memory."""
    import zipfile

    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("tenx/matrix.mtx", b"%%MatrixMarket matrix coordinate real general\n" + b"0" * 30_000_000)
    assert z.stat().st_size < 200_000
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "0.01")
    with pytest.raises(DataError, match=r"unpacks to 0\.0 GiB, above this server's limit"):
        read_dataset(z, name="query")


def test_a_gzipped_table_bomb_is_refused_by_its_text_size(tmp_path, monkeypatch):
    """A few kB of gzip can hold gigabytes of zeros that pandas would parse into float64."""
    import gzip

    p = tmp_path / "table.csv"  # named .csv on purpose: sniffed by its bytes
    with gzip.open(p, "wb") as fh:
        fh.write(b"cell," + b",".join(f"G{i}".encode() for i in range(1000)) + b"\n")
        row = b"," + b",".join([b"0"] * 1000) + b"\n"
        for i in range(2000):
            fh.write(f"c{i}".encode() + row)
    assert p.stat().st_size < 200_000
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "0.01")
    with pytest.raises(DataError, match=r"text, which would need more memory than this server's limit"):
        read_dataset(p, name="query")
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "1")
    assert read_dataset(p, name="query").shape == (2000, 1000)


def test_uploads_are_limited_to_a_third_of_the_memory_budget(monkeypatch):
    from ui import data as data_ui

    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "3")
    assert data_ui.upload_limit_mb() == 1024
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "0.003")  # ~1 MB
    assert data_ui.upload_limit_mb() == 1
    err = data_ui.handle_upload("reference", b"x" * (2 * 1024**2), "big.h5ad")
    assert "above this server's upload limit of 1 MB" in err and "path on the server" in err


def test_streamlits_upload_endpoint_is_held_to_the_uploaders_limits(monkeypatch):
    """Found 2026-12-07: Streamlit's upload address took any number of files of up to its own
    maxUploadSize for a session, whatever the uploader's limit, and held them in memory: three 1 GB
    files sent by a script held 3 GB. The app's guard refuses past the uploader's limit, past two
    such files per session and past the memory budget for all sessions together."""
    from types import SimpleNamespace

    from starlette.exceptions import HTTPException
    from streamlit.runtime import Runtime
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.uploaded_file_manager import UploadedFileRec

    from ui import data as data_ui

    mgr = MemoryUploadedFileManager("/_stcore/upload_file")
    monkeypatch.setattr(Runtime, "exists", staticmethod(lambda: True))
    monkeypatch.setattr(Runtime, "instance", staticmethod(lambda: SimpleNamespace(uploaded_file_mgr=mgr)))
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", str(12 / 1024))  # 12 MB: uploads of at most 4 MB
    data_ui.guard_uploads()
    data_ui.guard_uploads()  # once: not wrapped twice

    def send(session: str, file_id: str, mb: float) -> None:
        mgr.add_file(session, UploadedFileRec(file_id, f"{file_id}.h5ad", "application/octet-stream",
                                              b"x" * int(mb * 1024**2)))

    with pytest.raises(HTTPException) as err:
        send("a", "big", 4.5)  # past the uploader's limit
    assert err.value.status_code == 413
    send("a", "ref", 3.9)
    send("a", "query", 3.9)  # a reference and a query
    send("a", "query", 3.9)  # the same file sent again replaces itself
    with pytest.raises(HTTPException):
        send("a", "third", 1)  # a third file's worth in one session
    send("b", "ref", 3.9)  # another session: up to the memory budget for all together
    with pytest.raises(HTTPException):
        send("c", "ref", 1)
    assert set(mgr.file_storage) == {"a", "b"} and set(mgr.file_storage["a"]) == {"ref", "query"}


def test_a_file_of_countless_groups_is_refused_before_it_is_read(plain, tmp_path, monkeypatch):
    """100,000 empty groups in uns (104 MB) took the check 67 s to walk and anndata 25 s to read; the
    walk stops at the cap and the file is refused without being read."""
    import cellannot_core.data.io as io

    monkeypatch.setattr(io, "HDF5_MAX_OBJECTS", 40)
    evil = tmp_path / "many_groups.h5ad"
    evil.write_bytes(plain.read_bytes())
    with h5py.File(evil, "a") as f:
        g = f["uns"].create_group("x")
        g.attrs["encoding-type"], g.attrs["encoding-version"] = "dict", "0.1.0"
        for i in range(60):
            s = g.create_group(f"k{i}")
            s.attrs["encoding-type"], s.attrs["encoding-version"] = "dict", "0.1.0"
    msg = _check_refused(evil, "more than 40 HDF5 groups")
    assert "uns/x" not in msg
    assert read_dataset(plain, name="reference").n_obs == 60  # a plain AnnData is far under the cap


def test_a_file_stored_in_countless_tiny_chunks_is_refused_before_it_is_read(plain, tmp_path, monkeypatch):
    """Counts written in 1-value chunks read 400 times slower than anndata's (each chunk is read and
    indexed on its own): an upload of the size allowed held a core for the better part of an hour."""
    import cellannot_core.data.io as io

    monkeypatch.setattr(io, "HDF5_MAX_CHUNKS", 100)
    evil = tmp_path / "tiny_chunks.h5ad"
    evil.write_bytes(plain.read_bytes())
    with h5py.File(evil, "a") as f:
        data = f["X"]["data"][()] if isinstance(f["X"], h5py.Group) else None
        if data is None:  # a dense X: store it again in 1-value chunks
            X = f["X"][()]
            del f["X"]
            f.create_dataset("X", data=X, chunks=(1, 1))
        else:
            del f["X"]["data"]
            f["X"].create_dataset("data", data=data, chunks=(1,))
    msg = _check_refused(evil, "chunks of 1 value each")
    assert "write_h5ad" in msg
    assert read_dataset(plain, name="reference").n_obs == 60  # anndata's own chunks are far from it


def _names_sharing_one_string(plain: Path, path: Path, length: int, broken_beside: bool = False) -> Path:
    """``plain`` with its obs names all pointing at one stored string of ``length`` characters: an
    HDF5 variable-length element is a pointer into the file's heap, and any number may share one.
    ``broken_beside``: and a string dataset no reader reads (``X/aaa``) pointing at a heap object that
    does not exist, read first by the measuring child."""
    import shutil
    import struct

    shutil.copy(plain, path)
    with h5py.File(path, "r+") as f:
        attrs = dict(f["obs/_index"].attrs)
        n = f["obs/_index"].shape[0]
        del f["obs/_index"]
        values = np.array(["Q" * length] + [f"c{i}" for i in range(1, n)], dtype=object)
        d = f["obs"].create_dataset("_index", data=values, dtype=h5py.string_dtype("utf-8"))
        d.attrs.update(attrs)
        offset = d.id.get_offset()
        if broken_beside:
            bad = f["X"].create_dataset("aaa", data=np.array(["x1", "x2"], dtype=object),
                                        dtype=h5py.string_dtype("utf-8")).id.get_offset()
    with open(path, "r+b") as fh:  # every element's pointer made the first one's
        fh.seek(offset)
        first = fh.read(16)
        fh.seek(offset)
        fh.write(first * n)
        if broken_beside:
            fh.seek(bad + 12)
            fh.write(struct.pack("<I", 60000))  # a heap object index that does not exist
    with h5py.File(path, "r") as f:
        assert len(f["obs/_index"][n - 1]) == length  # the file is what the test means
    return path


def test_strings_sharing_one_stored_string_are_counted_as_read(plain, tmp_path, monkeypatch):
    """Found 2026-12-07 (a probe of the app served to a lab): strings were counted at 8 bytes each,
    the pointer's size, so a 1.5 MB .h5ad whose 3,000 obs names all pointed at one 1 MB string read
    as 3 GB against a 1 GB limit. They are now read, in a child process held to the limit."""
    from cellannot_core.data import h5text

    plain = tmp_path / "cells.h5ad"
    make_synthetic(400, 30, 2).write_h5ad(plain)
    path = _names_sharing_one_string(plain, tmp_path / "shared.h5ad", 200_000)
    assert path.stat().st_size < 2_000_000  # and 400 x 200,000 characters once read
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", str(20 / 1024))  # 20 MB: the file's numbers pass
    with pytest.raises(DataError, match="names and other text expand past this server's memory limit"):
        read_dataset(path)
    assert read_dataset(plain).n_obs == 400  # the same file as written passes the same limit
    # a broken string dataset that no reader reads, met first, let the child give up on the whole file
    # (found 2026-12-07 by a second probe: 1.6 MB took a server to 8.3 GB)
    broken = _names_sharing_one_string(plain, tmp_path / "broken.h5ad", 200_000, broken_beside=True)
    with pytest.raises(DataError, match="names and other text expand past"):
        read_dataset(broken)
    # attributes too (anndata reads e.g. a data frame's column-order): measured by the same reading
    with h5py.File(tmp_path / "attr.h5", "w") as f:
        f.attrs["column-order"] = np.array(["x" * 1000] * 100, dtype=object)
    assert h5text.measure(str(tmp_path / "attr.h5"), 50_000, ())[1] == "/ attribute column-order"
    assert h5text.measure(str(tmp_path / "attr.h5"), 500_000, ())[1] is None


def test_an_archive_of_countless_members_is_refused_before_any_is_written(tmp_path, monkeypatch):
    """Found 2026-12-07: a 27 MB zip of 300,000 empty members was unpacked whole (22 s) before the
    matrix search refused the folder. The members are counted first, a tar's a header at a time."""
    import tarfile
    import tempfile
    import zipfile

    from cellannot_core.data import io as data_io

    monkeypatch.setattr(data_io, "MATRIX_SEARCH_ENTRIES", 50)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    with zipfile.ZipFile(tmp_path / "many.zip", "w") as zf:
        for i in range(51):
            zf.writestr(f"m/f{i}", b"")
    with tarfile.open(tmp_path / "many.tar.gz", "w:gz") as tf:
        for i in range(51):
            tf.addfile(tarfile.TarInfo(f"m/f{i}"))
    written = []
    monkeypatch.setattr(zipfile.ZipFile, "extractall", lambda *a, **k: written.append("zip"))
    monkeypatch.setattr(tarfile.TarFile, "extractall", lambda *a, **k: written.append("tar"))
    for name in ("many.zip", "many.tar.gz"):
        with pytest.raises(DataError, match="holds more than 50 files and folders"):
            read_dataset(tmp_path / name)
    assert written == [] and not list((tmp_path / "tmp").iterdir())


def test_a_table_too_wide_for_the_memory_limit_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    """Found 2026-12-07: the table guard counted 4 bytes a character, but pandas keeps each column apart
    while it parses (2 rows x 4,000,000 columns, 8.8 MB gzipped: 2.87 GB). Columns are counted from the
    header first."""
    import gzip

    header = "cell," + ",".join(f"g{j}" for j in range(3000))
    text = "\n".join([header] + [f"c{i}," + ",".join("1" for _ in range(3000)) for i in range(2)]) + "\n"
    with gzip.open(tmp_path / "wide.csv.gz", "wt") as fh:
        fh.write(text)
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", str(2 / 1024))  # 2 MB: its text passes, its columns not
    with pytest.raises(DataError, match="has 3,001 columns, which would need more memory"):
        read_dataset(tmp_path / "wide.csv.gz")
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", str(8 / 1024))
    assert read_dataset(tmp_path / "wide.csv.gz").shape in ((2, 3000), (3000, 2))


def test_a_row_of_far_more_fields_than_its_header_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    """Found 2026-12-07 by a second probe: the header counted, a 47 KB upload of two rows of 12,000,000
    fields under a two-column header took a server from 3.7 to 10.1 GB before pandas said it was ragged."""
    import gzip

    rows = ["cell,G0", "c1," + ",".join("1" for _ in range(500)), "c2,1"]
    with gzip.open(tmp_path / "ragged.csv.gz", "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"has a row \(line 2\) of more than 50\d fields under a header of 2"):
        read_dataset(tmp_path / "ragged.csv.gz")
    # a row a few fields longer than its header (a quoted name holding the separator) is still read
    (tmp_path / "ok.csv").write_text('cell,G0,G1\n"c,1",1,2\nc2,3,4\n')
    assert read_dataset(tmp_path / "ok.csv", orientation="cells_x_genes").shape == (2, 2)


def test_files_a_third_probe_got_through_are_refused(plain, tmp_path, monkeypatch):
    """Found 2026-12-07 by a third probe, each a few KB to a few MB that took a server to 2-9 GB or held
    it for minutes: a dataset of a type h5py cannot read crashed the text measure into "fits"; a table
    listing one column thousands of times; fixed-length names counted at their stored bytes; groups
    nested thousands deep; attributes by the hundred thousand; an .h5mu whose /mod is a link to any
    file on the server (it told whether that file exists, and hung on a pipe)."""
    from cellannot_core.data import io as data_io

    def copy(name: str) -> Path:
        p = tmp_path / name
        p.write_bytes(plain.read_bytes())
        return p

    timed = copy("time.h5ad")
    with h5py.File(timed, "a") as f:  # HDF5's TIME class (a 32-bit UNIX time), which h5py cannot map to numpy
        h5py.h5d.create(f.id, b"aaa", h5py.h5t.UNIX_D32LE.copy(), h5py.h5s.create_simple((4,))).close()
    _check_refused(timed, "a dataset ('aaa') of a kind anndata does not write")

    twice = copy("twice.h5ad")
    with h5py.File(twice, "a") as f:
        f["obs"].attrs["column-order"] = np.array(["a", "a"], dtype=object)
    _check_refused(twice, "a table ('/obs') that lists one column more than once")

    deep = copy("deep.h5ad")
    with h5py.File(deep, "a") as f:
        f.create_group("uns/" + "/".join(["a"] * (data_io.HDF5_MAX_DEPTH + 1)))
    _check_refused(deep, f"groups nested more than {data_io.HDF5_MAX_DEPTH} deep")

    many = copy("attrs.h5ad")
    monkeypatch.setattr(data_io, "HDF5_MAX_ATTRIBUTES", 200)
    with h5py.File(many, "a") as f:
        for i in range(201):
            f["uns"].attrs[f"a{i}"] = i
    with pytest.raises(DataError, match="more than 200 attributes"):
        read_dataset(many)
    monkeypatch.undo()

    fixed = tmp_path / "fixed.h5ad"  # 200,000 obs names of 2 bytes: 400 KB stored, 13 MB as str objects
    with h5py.File(fixed, "w") as f:
        f["names"] = np.zeros(200_000, dtype="S2")
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", str(5 / 1024))
    with pytest.raises(DataError, match="expands to"):
        data_io.guard_hdf5(fixed, "file")
    monkeypatch.delenv("CELLANNOT_MEMORY_LIMIT_GB")

    linked = tmp_path / "linked.h5mu"
    with h5py.File(linked, "w") as f:
        f["mod"] = h5py.ExternalLink(str(plain), "/")
    _check_refused(linked, "its /mod is a link")


def test_the_text_measure_refuses_what_it_cannot_measure(plain, tmp_path, monkeypatch):
    """The measuring child exiting on anything but "fits" let the file through (a crash read as fits);
    a modality named with a comma split the members it measured; countless broken elements held it
    for its whole timeout. Each now ends in a refusal."""
    from cellannot_core.data import h5text
    from cellannot_core.data import io as data_io

    monkeypatch.setattr(data_io, "_guard_hdf5_text", data_io._guard_hdf5_text)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["a"] = np.zeros(3)
    calls = []

    def crashed(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "")

    monkeypatch.setattr(subprocess, "run", crashed)
    with pytest.raises(DataError, match="could not be read to measure them"):
        data_io._guard_hdf5_text(tmp_path / "x.h5", "file", 1000, ("mod/x,y", "obs"))
    monkeypatch.undo()
    assert calls[0][-1] == '["mod/x,y", "obs"]'  # one JSON list, not a comma-joined one

    def child(path: Path, limit: str, members: str) -> int:  # (as guard_hdf5 runs it: it limits its own memory)
        return subprocess.run([sys.executable, "-I", h5text.__file__, str(path), limit, members]).returncode

    assert child(tmp_path / "x.h5", "1000", '["mod/x,y"]') == 0

    broken = tmp_path / "broken.h5"  # vlen strings whose heap pointers lead nowhere
    with h5py.File(broken, "w") as f:
        f["s"] = np.array([b"x"] * (h5text.MAX_BROKEN + 2), dtype=h5py.string_dtype())
    raw = bytearray(broken.read_bytes())
    with h5py.File(broken, "r") as f:
        offset = f["s"].id.get_offset()
    for i in range(h5text.MAX_BROKEN + 2):  # each element: length (4), heap address (8), index (4)
        raw[offset + 16 * i + 12: offset + 16 * i + 16] = b"\xff\xff\xff\x7f"
    broken.write_bytes(bytes(raw))
    assert child(broken, "1000000", "[]") == 1


def test_a_readers_error_does_not_quote_the_file(plain, tmp_path):
    """anndata's errors quote what it read (an encoding type, a column order, a key name), so a message
    built on them echoed the file's contents (found 2026-12-07); the message names the kind of error."""
    odd = tmp_path / "odd.h5ad"
    odd.write_bytes(plain.read_bytes())
    with h5py.File(odd, "a") as f:
        f["obs"].attrs["encoding-type"] = SECRET + "\x1b[31m"
    with pytest.raises(DataError) as err:
        read_dataset(odd)
    assert "could not read" in str(err.value) and SECRET not in str(err.value) and "\x1b" not in str(err.value)


def test_an_mtx_of_more_lines_than_declared_is_one_line_and_never_aborts_the_process(tmp_path):
    """Found 2026-12-07 by a third probe: a 574-byte .tar.gz whose matrix.mtx.gz declared 2 entries and held
    32 MB more lines made scipy's mmread raise "file too long" while its reader thread still read; the
    gzip stream closed under it and the process died (std::terminate, SIGABRT: the whole app server).
    The matrix is read in this thread now; run in a child so an abort fails this test, not the run."""
    import gzip
    import io
    import os
    import tarfile

    hdr = b"%%MatrixMarket matrix coordinate integer general\n3 2 2\n1 1 5\n2 2 3\n"
    mtx = gzip.compress(hdr + b"1 1 1\n" * ((32 << 20) // 6), compresslevel=1)
    files = {"m/matrix.mtx.gz": mtx, "m/features.tsv": b"E1\tG1\nE2\tG2\nE3\tG3\n", "m/barcodes.tsv": b"A-1\nC-1\n"}
    with tarfile.open(tmp_path / "abort.tar.gz", "w:gz") as tf:
        for n, b in files.items():
            info = tarfile.TarInfo(n)
            info.size = len(b)
            tf.addfile(info, io.BytesIO(b))
    code = ("import sys, gc\nfrom cellannot_core.data import read_uploaded\n"
            "from cellannot_core.errors import DataError\ntry:\n"
            "    read_uploaded(open(sys.argv[1], 'rb').read(), 'abort.tar.gz', name='query')\n"
            "except DataError as e:\n    print(e)\ngc.collect()\nimport time; time.sleep(0.5)\nprint('alive')\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "abort.tar.gz")], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-500:]
    msg, alive = r.stdout.strip().splitlines()
    assert alive == "alive" and "matrix.mtx.gz is damaged: it holds more entries than the 2 its header declares" in msg
    # a plain matrix.mtx that holds fewer entries than declared, or one more, is one line too
    d = tmp_path / "tenx"
    d.mkdir()
    (d / "features.tsv").write_text("E1\tG1\nE2\tG2\nE3\tG3\n")
    (d / "barcodes.tsv").write_text("A-1\nC-1\n")
    for body, said in ((b"3 2 3\n1 1 5\n2 2 3\n", "holds 2 entries where its header declares 3"),
                       (b"3 2 1\n1 1 5\n2 2 3\n", "more entries than the 1 its header declares"),
                       (b"3 2 2\n1 1 5\n2 9 3\n", "entry 2 lies outside its declared 3 x 2")):
        (d / "matrix.mtx").write_bytes(hdr.split(b"\n")[0] + b"\n" + body)
        with pytest.raises(DataError, match=said):
            read_dataset(d, name="query")


def test_a_long_row_hidden_from_the_field_count_by_utf16_or_quoted_line_ends_is_refused(tmp_path):
    """Found 2026-12-07 by a third probe: the ragged-row guard counted newline bytes, but U+0A0A is the
    bytes 0A 0A in UTF-16 (81 KB took 3.9 GB), a quoted line end does not end pandas' row (47 KB: 4 GB) and a
    table apart by spaces was not checked (12 KB: 4 GB).
    Rows are counted on the decoded text, quoted fields left out, as pandas' tokenizer splits them."""
    import gzip

    from cellannot_core.data import io as data_io

    fields = "1," * 49
    utf16 = "cell,G0\nc1," + (fields + "\u0a0a,") * 10 + "1\nc2,1\n"
    (tmp_path / "utf16.csv").write_bytes(b"\xff\xfe" + utf16.encode("utf-16-le"))
    quoted = "cell,G0\nc1," + (fields + '"\n",') * 10 + "1\nc2,1\n"
    with gzip.open(tmp_path / "quoted.csv.gz", "wt") as fh:
        fh.write(quoted)
    # a quote inside a field is a letter (pandas'): it must not shift which quotes open a field
    literal = "cell,G0\nc1,a\"b," + (fields + '"\n",') * 10 + "1\nc2,1\n"
    (tmp_path / "literal.csv").write_text(literal)
    # a table apart by spaces was not checked at all (12 KB: 4 GB)
    (tmp_path / "spaces.txt").write_text("cell G0\nc1 " + "1 " * 500 + "1\nc2 1\n")
    for name in ("utf16.csv", "quoted.csv.gz", "literal.csv", "spaces.txt"):
        with pytest.raises(DataError, match=r"has a row \(line 2\) of more than 50\d fields under a header of 2"):
            read_dataset(tmp_path / name)
    # quoted names holding separators and line ends, Windows line ends and UTF-16 still read; the rows
    # are the same whatever the block size the text is read in
    ok = 'cell,"G,0",G1\r\n"c\r\n1",1,2\r\n"c""2",3,4\r\n'
    (tmp_path / "ok.csv").write_text(ok, newline="")
    (tmp_path / "ok16.csv").write_bytes(ok.encode("utf-16"))
    (tmp_path / "ok.txt").write_text('cell  "G 0"  G1\n  "c 1" 1 2\nc2\t3 4\n')
    assert read_dataset(tmp_path / "ok.txt", orientation="cells_x_genes").shape == (2, 2)
    for name in ("ok.csv", "ok16.csv"):
        a = read_dataset(tmp_path / name, orientation="cells_x_genes")
        assert a.shape == (2, 2) and list(a.obs_names) == ["c\r\n1", 'c"2']
        texts = {b"".join(data_io._row_text(tmp_path / name, ",", block_size=bs)) for bs in (1, 2, 3, 1 << 20)}
        assert texts == {b"cell,Q,G1\nQ,1,2\nQ,3,4\n"}  # (a quoted field is one letter)


def test_text_is_budgeted_by_its_names_and_fields_not_only_its_characters(tmp_path, monkeypatch):
    """Found 2026-12-07 by a third probe: text was counted at 10 (listings) or 4 (tables) bytes a character,
    but a Python str costs ~60 bytes however short, and a table's empty field (one character) a float64 in
    two copies: listings of 24 MB of short names took 1.9 GB at a 0.25 GB limit, a table of 62 MB with three
    text columns 1.1 GB, 95 KB of gzipped commas 1.8 GB at 1 GB. Each name, row and field counts now."""
    import gzip

    n = 20_000
    d = tmp_path / "listing"
    d.mkdir()
    (d / "features.tsv").write_text("".join(f"{i:x}\n" for i in range(n)))
    (d / "barcodes.tsv").write_text("".join(f"{i:x}\n" for i in range(n)))
    (d / "matrix.mtx").write_text(f"%%MatrixMarket matrix coordinate integer general\n{n} {n} 1\n1 1 1\n")
    text = tmp_path / "text.csv"
    text.write_text("cell,a,b,c,G1\n" + "".join(f"{i:x},a{i:x},b{i:x},c{i:x},1\n" for i in range(n)))
    with gzip.open(tmp_path / "commas.csv.gz", "wt") as fh:
        fh.write("cell," + ",".join(f"G{j}" for j in range(2000)) + "\n" + "".join(f"c{i}" + "," * 2000 + "\n"
                                                                                 for i in range(200)))
    for path, small, enough in ((d, 3, 8), (text, 5, 16), (tmp_path / "commas.csv.gz", 4, 16)):
        monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", str(small / 1024))
        with pytest.raises(DataError, match=r"of text, which would need more memory than .*this server's limit"):
            read_dataset(path, name="query")
        monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", str(enough / 1024))
        a = read_dataset(path, name="query")
        assert a.n_obs * a.n_vars in (n * n, n, 200 * 2000)
    assert a.X.nnz == 200 * 2000 and np.isnan(a.X.data).all()  # (empty fields are NaN, made sparse a block at a time)


@pytest.mark.parametrize("kind", ["text", "record", "opaque", "vlen"])
def test_an_x_of_values_that_are_not_numbers_is_one_line_that_quotes_nothing(plain, tmp_path, kind):
    """Found 2026-12-07 by a third probe: X was made float32 after the reader's one line, so text in X escaped
    as "could not convert string to float: np.bytes_(b'SECRET-GENE-\\x1b[31m...')" and records, opaque
    values and variable-length arrays as raw TypeError / ValueError, which the app's upload did not catch."""
    import shutil

    p = tmp_path / f"{kind}.h5ad"
    shutil.copy(plain, p)
    with h5py.File(p, "r+") as f:
        n, g = f["X"].attrs["shape"] if "shape" in f["X"].attrs else f["X"].shape
        del f["X"]
        if kind == "text":
            x = f.create_dataset("X", data=np.full((n, g), (SECRET + "\x1b[31m\x07").encode(), dtype="S40"))
        elif kind == "record":
            x = f.create_dataset("X", data=np.zeros((n, g), dtype=[("a", "f4"), ("b", "i4")]))
        elif kind == "opaque":
            x = f.create_dataset("X", data=np.zeros((n, g), dtype="V4"))
        else:
            x = f.create_dataset("X", shape=(n, g), dtype=h5py.vlen_dtype(np.float64))
            x[0, 0] = np.arange(3.0)
        x.attrs["encoding-type"], x.attrs["encoding-version"] = "array", "0.2.0"
    with pytest.raises(DataError, match=r"X holds \w+ .*values, not numbers") as err:
        read_dataset(p, name="query")
    assert SECRET not in str(err.value) and "\x1b" not in str(err.value)
    from ui.data import handle_upload

    msg = handle_upload("query", p.read_bytes(), p.name)
    assert msg == str(err.value)  # (the upload handler returns the reader's line)


def test_the_app_says_a_readers_fault_in_one_line_that_quotes_nothing(monkeypatch):
    """Anything a reader raises besides CellannotError reached Streamlit as a traceback, its words and all."""
    import cellannot_core.data as data
    from ui.data import handle_upload

    def boom(*a, **k):
        raise RuntimeError(SECRET + " /tmp/cellannot_upload_x/secret.h5ad")

    monkeypatch.setattr(data, "read_uploaded", boom)
    msg = handle_upload("query", b"x", "q.h5ad")
    assert "internal error (RuntimeError)" in msg and SECRET not in msg and "/tmp" not in msg


def test_archive_member_names_are_quoted_clean_and_short_and_never_with_the_servers_temporary_folder(tmp_path):
    """Found 2026-12-07 by a third probe: members named with ESC, BEL and a newline were quoted as they were
    (an escape sequence rewrites the terminal or log showing the message; a newline fakes a second line),
    and a member whose name was too long for the file system was said with '/tmp/cellannot_archive_.../'."""
    import io
    import tarfile
    import zipfile

    evil = "\x1b]0;pwned\x07\x1b[2J\x1b[31mFAKE: upload accepted\x1b[0m\nsecond line"

    def tar(name: str, members: list) -> Path:
        with tarfile.open(tmp_path / name, "w:gz") as tf:
            for info, data in members:
                tf.addfile(info, io.BytesIO(data) if data is not None else None)
        return tmp_path / name

    def member(name: str, data: bytes | None = b"x", kind=tarfile.REGTYPE) -> tuple:
        info = tarfile.TarInfo(name)
        info.type = kind
        if data is not None:
            info.size = len(data)
        else:
            info.linkname = "/etc/passwd"
        return info, data

    archives = [tar("abs.tar.gz", [member("/" + evil)]),
                tar("link.tar.gz", [member("m/" + evil, None, tarfile.SYMTYPE)]),
                tar("long.tar.gz", [member("m/" + "d" * 300 + "/matrix.mtx")])]
    with zipfile.ZipFile(tmp_path / "esc.zip", "w") as zf:
        zf.writestr("/" + evil, b"x")
    archives.append(tmp_path / "esc.zip")
    said = {}
    for p in archives:
        with pytest.raises(DataError) as err:
            read_dataset(p, name="query")
        said[p.name] = msg = str(err.value)
        assert not any(c in msg for c in "\x1b\x07\n") and len(msg) < 400, msg
        assert "cellannot_archive_" not in msg and "/tmp" not in msg, msg
    assert "FAKE: upload accepted" in said["abs.tar.gz"] and "a link or special file" in said["link.tar.gz"]
    assert "could not be unpacked: a member's name is too long" in said["long.tar.gz"]


def test_tables_that_name_columns_by_paths_or_index_by_a_group_or_hold_wide_records_are_refused(
        plain, tmp_path, monkeypatch):
    """Found 2026-12-07 by a fourth probe, around the third's fixes: anndata reads each name a table's
    column-order or _index gives with group[name], so "./a" read column a again under another name (1,000
    spellings: 3.4 GB at a 0.25 GB limit) and "/uns/big" read what no guard counted for the table; an index
    stored as a categorical of one long category expanded to a copy per cell (4.2 GB from 311 KB); a record
    of a 1,000-byte field counted at its stored size (1.3 GB from 412 KB)."""
    def copy(name: str) -> Path:
        p = tmp_path / name
        p.write_bytes(plain.read_bytes())
        return p

    with h5py.File(copy("path.h5ad"), "a") as f:
        f["obs"].attrs["column-order"] = np.array(["cell_type", "./cell_type"], dtype=object)
    _check_refused(tmp_path / "path.h5ad", "a table ('/obs') that names a column by a path")
    with h5py.File(copy("index.h5ad"), "a") as f:
        f["obs"].attrs["_index"] = "cell_type"  # a categorical group
    _check_refused(tmp_path / "index.h5ad", "a table ('/obs') whose index is not a list of names")
    with h5py.File(copy("records.h5ad"), "a") as f:
        f["uns"].create_dataset("rec", data=np.zeros(20_000, dtype=[("s", "S1000")]))
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", str(40 / 1024))  # 20,000 x 1,000 bytes: 20 MB stored
    with pytest.raises(DataError, match="expands to"):
        read_dataset(tmp_path / "records.h5ad")


def test_the_text_measure_holds_under_a_servers_own_memory_limit():
    """The measuring child raised its hard address-space limit to infinity, which fails under a limit the
    server runs with (ulimit -v, prlimit): it then ran with no limit at all (8 GB at a 0.25 GB limit, found
    2026-12-07). It keeps the hard limit and lowers the soft one."""
    from cellannot_core.data import h5text

    code = ("import resource, sys; sys.path.insert(0, sys.argv[1]); import h5text; "
            "resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30)); h5text.limit_memory(5 << 20); "
            "print(*resource.getrlimit(resource.RLIMIT_AS))")
    done = subprocess.run([sys.executable, "-I", "-c", code, str(Path(h5text.__file__).parent)],
                          capture_output=True, text=True, check=True)
    soft, hard = map(int, done.stdout.split())
    assert hard == 16 << 30 and soft < 4 << 30, (soft, hard)


def test_column_and_cell_names_from_a_file_are_quoted_clean_and_short():
    """Found 2026-12-07 by a fourth probe: obs column names (in "no label column" and "batch key" errors),
    duplicate cell names (in the "made unique" warning) reached the terminal whole, escape sequences and all
    (200 KB error lines)."""
    import pandas as pd

    from cellannot_core.data.prepare import batch_codes
    from cellannot_core.data.validate import check_label_column, make_unique

    evil = "\x1b]0;pwned\x07\nerror: fake" + "A" * 200_000
    obs = pd.DataFrame({evil: [1, 2], "celltype": ["a", "b"]})
    for call in (lambda: check_label_column(obs, "cell_type"), lambda: batch_codes(obs, obs, "nope")):
        with pytest.raises(DataError) as err:
            call()
        assert not any(c in str(err.value) for c in "\x1b\x07\n") and len(str(err.value)) < 2_000
    _, msg = make_unique(pd.Index([evil, evil]), what="cell", name="query")
    assert not any(c in msg for c in "\x1b\x07\n") and len(msg) < 1_000


def test_a_column_named_with_a_nul_and_a_link_named_with_escapes_are_refused_clean(plain, tmp_path):
    """Found 2026-12-07 by a fifth probe: HDF5 ends a name at its first NUL, so a column-order of 'a',
    'a\\x001', 'a\\x002', ... read obs/a once per entry (2.9 MB -> 3.4 GB) while the check saw distinct names;
    a soft link to a group was quoted raw (escape sequences, newlines) in the refusal."""
    nul = tmp_path / "nul.h5ad"
    nul.write_bytes(plain.read_bytes())
    with h5py.File(nul, "a") as f:
        f["obs"].attrs["column-order"] = np.array([b"cell_type"] + [b"cell_type\x00%d" % i for i in range(1, 50)])
        assert b"\x00" in f["obs"].attrs["column-order"][1]  # (kept inside a fixed-length string)
    _check_refused(nul, "a table ('/obs') that names a column with a NUL character")

    link = tmp_path / "link.h5ad"
    link.write_bytes(plain.read_bytes())
    with h5py.File(link, "a") as f:
        f["uns"]["\x1b[2J\x1b[1;31mX\nerror: fake\x07"] = h5py.SoftLink("/obs")
    msg = _check_refused(link, "to a group of the same file")
    assert not any(c in msg for c in "\x1b\x07\n"), msg


def test_a_long_label_or_cell_name_is_never_widened_to_every_cell(tmp_path, monkeypatch):
    """Found 2026-12-07 by a fifth probe: numpy's astype(str) makes every element as wide as the longest, so one
    200,000-character label (a query's label column, 0.45 MB) or loom cell name (0.43 MB) among a few thousand
    cells took 3.4-5 GB. Labels and names become object arrays of str (``str_array``), a label column or a saved
    model naming a label longer than MAX_LABEL_CHARS is refused, and a loom's cell names are kept as read."""
    import tracemalloc

    import pandas as pd

    from cellannot_core._constants import MAX_LABEL_CHARS, str_array
    from cellannot_core.data.validate import check_label_column
    from cellannot_core.metrics import balanced_accuracy, median_f1
    from cellannot_core.plots import contingency_table
    from cellannot_core.plots._style import category_order

    n, long = 200, "Q" * 100_000  # widened: 200 x 100,000 x 4 bytes = 80 MB a copy
    labels = np.array(["A", "B"] * (n // 2), dtype=object)
    labels[0] = long
    loom = tmp_path / "long.loom"
    with h5py.File(loom, "w") as f:
        f["matrix"] = np.ones((5, n), dtype=np.float32)
        f["row_attrs/Gene"] = np.array([f"g{i}" for i in range(5)], dtype=object)
        f.create_dataset("col_attrs/CellID", data=np.array([long] + [f"c{i}" for i in range(1, n)], dtype=object),
                         dtype=h5py.string_dtype())
    calls = [lambda: read_dataset(loom), lambda: balanced_accuracy(labels, labels[::-1]),
             lambda: median_f1(labels, labels), lambda: contingency_table(labels, labels),
             lambda: category_order(labels), lambda: str_array(labels)]
    for call in calls:
        tracemalloc.start()
        try:
            call()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 20e6, (calls.index(call), peak)
    assert str_array(labels).dtype == object and str_array([1, "a"]).tolist() == ["1", "a"]

    obs = pd.DataFrame({"truth": pd.Categorical(labels)})
    with pytest.raises(DataError, match=f"a label of 100,000 characters, where a cell type's name has at most "
                                        f"{MAX_LABEL_CHARS}"):
        check_label_column(obs, "truth", name="query")
    check_label_column(obs.assign(truth=["A"] * n), "truth", name="query")


@pytest.mark.parametrize("where", ["first", "second", "token"])
def test_an_mtx_line_longer_than_an_entry_is_refused_before_pandas_holds_its_fields(tmp_path, where):
    """Found 2026-12-07 by a fifth probe: pandas' tokenizer holds every field of a line before it finds the line
    too long, so one line of 100 million one-letter fields (or one 100-million-digit value) in a 2 KB .tar.gz took
    4.9 GB. A line of entries longer than MTX_BYTES_PER_ENTRY is refused as it is read; comments may be long."""
    import gzip

    from cellannot_core.data.mtx import MTX_BYTES_PER_ENTRY

    d = tmp_path / "tenx"
    d.mkdir()
    (d / "features.tsv").write_text("E1\tG1\nE2\tG2\nE3\tG3\n")
    (d / "barcodes.tsv").write_text("A-1\nC-1\n")
    long = {"first": b"1 " * 200_000 + b"\n1 1 5\n", "second": b"1 1 5\n" + b"1 " * 200_000 + b"\n",
            "token": b"1 1 5\n1 1 " + b"0" * 400_000 + b"1\n"}[where]
    with gzip.open(d / "matrix.mtx.gz", "wb") as fh:
        fh.write(b"%%MatrixMarket matrix coordinate integer general\n%" + b"c" * 1000 + b"\n3 2 4000\n" + long)
    with pytest.raises(DataError, match=f"a line of it is longer than {MTX_BYTES_PER_ENTRY} bytes"):
        read_dataset(d, name="query")
    with gzip.open(d / "matrix.mtx.gz", "wb") as fh:  # a long comment, in the header or among the entries, is read
        fh.write(b"%%MatrixMarket matrix coordinate integer general\n%" + b"c" * 1000 + b"\n3 2 2\n1 1 5\n%"
                 + b"c" * 5000 + b"\n2 2 3\n")
    assert read_dataset(d, name="query").X.sum() == 8


def test_an_mtx_entry_holding_a_quote_is_damaged_not_a_field_running_on(tmp_path):
    """Found 2026-12-07 by a sixth probe: pandas reads a '"' as opening a quoted field, which it holds across
    every line up to the closing quote, each line short enough to pass the per-line check (a 9 KB .tar.gz took
    4.2 GB at a 0.5 GB limit). Matrix Market quotes nothing: a quote is not a number."""
    import gzip

    d = tmp_path / "tenx"
    d.mkdir()
    (d / "features.tsv").write_text("E1\tG1\nE2\tG2\nE3\tG3\n")
    (d / "barcodes.tsv").write_text("A-1\nC-1\n")
    with gzip.open(d / "matrix.mtx.gz", "wb") as fh:
        fh.write(b'%%MatrixMarket matrix coordinate integer general\n3 2 2\n1 1 "5"\n2 2 3\n')
    with pytest.raises(DataError, match="not every entry is 3 numbers"):
        read_dataset(d, name="query")


def _tar_with_extended_header(path: Path, kind: str, size: int) -> Path:
    """A .tar.gz whose first header is a GNU long name ("gnulong") or a pax record ("pax") of ``size`` bytes."""
    import gzip
    import tarfile

    head = tarfile.TarInfo("././@LongLink" if kind == "gnulong" else "././@PaxHeader")
    head.type = tarfile.GNUTYPE_LONGNAME if kind == "gnulong" else tarfile.XHDTYPE
    head.size = size
    name = (b"m/" + b"x/" * size)[:size - len("matrix.mtx") - 1] + b"matrix.mtx"
    body = name + b"\0" if kind == "gnulong" else (f"{size} comment=".encode() + b"a" * size)[:size - 1] + b"\n"
    member = tarfile.TarInfo("m/matrix.mtx")
    with gzip.open(path, "wb") as fh:
        fh.write(head.tobuf(format=tarfile.GNU_FORMAT if kind == "gnulong" else tarfile.PAX_FORMAT))
        fh.write(body + b"\0" * (-size % 512) + member.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 1024)
    return path


@pytest.mark.parametrize("kind", ["gnulong", "pax"])
def test_a_tar_extended_header_of_a_gigabyte_is_refused_before_tarfile_reads_it(tmp_path, kind):
    """Found 2026-12-07 by a fifth probe: tarfile reads a GNU long name or a pax header whole into memory as it
    walks the members, before any check of them (a 0.97 MB .tar.gz declaring 1 GB took 5.1 GB). Such headers
    past 64 KB are refused as they are met, for data and model archives alike."""
    from cellannot_core.data.io import TAR_EXTENDED_HEADER_BYTES, unpacked_archive

    big = _tar_with_extended_header(tmp_path / "big.tar.gz", kind, TAR_EXTENDED_HEADER_BYTES + 512)
    with pytest.raises(DataError, match=r"holds an extended tar header of 66,048 bytes"):
        read_dataset(big, name="query")
    small = _tar_with_extended_header(tmp_path / "small.tar.gz", kind, 600)  # a long name (path) as tar writes one
    with unpacked_archive(small, "archive") as dest:
        assert sum(1 for _ in dest.rglob("*")) >= 1


@pytest.mark.parametrize("kind", ["encrypted", "method"])
def test_a_zip_member_zipfile_cannot_unpack_is_one_line(tmp_path, kind):
    """Found 2026-12-07 by a fifth probe: a member flagged encrypted, or compressed by a method zipfile lacks
    (99, WinZip's AES), raised RuntimeError / NotImplementedError, an "internal error" that quoted its name."""
    import struct
    import zipfile

    z = tmp_path / "m.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("m/\x1b[31mmatrix.mtx", b"%%MatrixMarket matrix coordinate integer general\n1 1 0\n")
    b = bytearray(z.read_bytes())  # the flags (encrypted) or the method, in the local header and the central directory
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = b.find(sig) + off
        if kind == "encrypted":
            struct.pack_into("<H", b, at, struct.unpack_from("<H", b, at)[0] | 1)
        else:
            struct.pack_into("<H", b, at + 2, 99)
    z.write_bytes(bytes(b))
    with pytest.raises(DataError, match="encrypted or compressed in a way this server does not unpack") as err:
        read_dataset(z, name="query")
    assert "\x1b" not in str(err.value)


@pytest.mark.parametrize("where", ["barcodes", "features/name", "features/id"])
def test_a_10x_h5_name_scanpy_would_widen_to_every_cell_is_refused(tmp_path, where, monkeypatch):
    """Found 2026-12-07 by a sixth probe: scanpy's 10x reader makes barcodes, gene names and ids fixed-width arrays
    (``astype(str)``), every element as wide as the longest: one 330,000-character barcode among 3,000 took 4.3 GB
    from 0.7 MB. A name past MAX_NAME_CHARS, stored fixed or variable-length, is refused before scanpy reads it,
    and so are names that would take a quarter of the memory limit so widened."""
    import scipy.sparse as sp

    from cellannot_core._constants import MAX_NAME_CHARS

    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "0.05")
    n_cells, n_genes = 200, 20

    def write(path: Path, long: str | None, length: int, *, fixed: bool = False, n: int = n_cells) -> Path:
        X = sp.random(n_genes, n, density=0.2, format="csc", random_state=0, dtype=np.float32)
        X.data[:] = 1
        names = {"barcodes": [f"AAAC{i:08d}-1" for i in range(n)], "features/name": [f"G{i}" for i in range(n_genes)],
                 "features/id": [f"ENSG{i:011d}" for i in range(n_genes)]}
        if long:
            names[long][0] = "A" * length
        with h5py.File(path, "w") as f:
            m = f.create_group("matrix")
            m["data"], m["indices"], m["indptr"] = X.data.astype(np.int32), X.indices, X.indptr
            m["shape"] = np.array([n_genes, n], dtype=np.int32)
            for key, values in names.items():
                m.create_dataset(key, data=np.array(values, dtype="S" if fixed else object),
                                 dtype=None if fixed else h5py.string_dtype())
            m["features/feature_type"] = np.array([b"Gene Expression"] * n_genes)
            m["features/genome"] = np.array([b"GRCh38"] * n_genes)
            m["features/_all_tag_keys"] = np.array([b"genome"])
        return path

    for fixed in (False, True):
        with pytest.raises(DataError, match=f"holds a name of 5,000 characters in 'matrix/{where}', where a barcode "
                                            f"or a gene's name or id has at most {MAX_NAME_CHARS:,}"):
            read_dataset(write(tmp_path / f"long{fixed}.h5", where, 5000, fixed=fixed), name="query")
    assert read_dataset(write(tmp_path / "plain.h5", where, MAX_NAME_CHARS), name="query").shape == (n_cells, n_genes)
    with pytest.raises(DataError, match="names would take .* GiB as the reader holds them"):
        read_dataset(write(tmp_path / "many.h5", "barcodes", MAX_NAME_CHARS, n=20_000), name="query")


def test_a_zip_whose_member_names_differ_is_one_line_quickly_and_unquoted(tmp_path):
    """Found 2026-12-07 by a sixth probe: zipfile's "File name in directory ... and header ... differ" quotes both
    names, and the pattern that strips this server's temporary folders from a message was tried from every
    character of a run without spaces (a 47 KB zip: 66 s of CPU). The error is named by its kind; the pattern
    starts at a word and sees at most 1,000 characters."""
    import struct
    import time
    import zlib

    from cellannot_core.data.io import _one_line

    name_c, name_l = b"\x01" * 3000, b"\x02" * 3000
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, zlib.crc32(b""), 0, 0, len(name_l), 0) + name_l
    cd = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, zlib.crc32(b""), 0, 0, len(name_c), 0, 0,
                     0, 0, 0o100644 << 16, 0) + name_c
    z = tmp_path / "names.zip"
    z.write_bytes(local + cd + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(cd), len(local), 0))
    with pytest.raises(DataError, match=r"could not be unpacked: BadZipFile \(a member's header is damaged") as err:
        read_dataset(z, name="query")
    assert "File name in directory" not in str(err.value) and "x01" not in str(err.value)
    t = time.process_time()
    assert _one_line(ValueError("\\x01" * 5_000)).startswith("\\x01")  # (a 20,000-character run)
    assert time.process_time() - t < 0.5  # (1.4 s before)
    assert _one_line(ValueError("at '/tmp/cellannot_upload_x1/a.h5ad': no")) == "at 'a.h5ad': no"


def _tenx_tar(path: Path, *, pax_headers: dict | None = None, extra: bytes = b"", open_with=None) -> Path:
    """A .tar.gz of a small 10x folder (``m/``), written by tarfile in pax format with ``pax_headers`` as its global
    header, with ``extra`` (raw tar blocks) before the folder's members."""
    import gzip
    import io
    import tarfile

    files = {"m/features.tsv": b"E1\tG1\nE2\tG2\n", "m/barcodes.tsv": b"A-1\nC-1\n",
             "m/matrix.mtx": b"%%MatrixMarket matrix coordinate integer general\n2 2 2\n1 1 5\n2 2 3\n"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers=pax_headers or {}) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    if extra:  # after the global header (its two blocks, when there is one), before the members
        at = 1024 * (len(raw) > 0 and raw[156:157] == b"g")
        raw = raw[:at] + extra + raw[at:]
    with (open_with or gzip.open)(path, "wb") as fh:
        fh.write(raw)
    return path


def test_a_tar_whose_headers_multiply_as_tarfile_reads_them_is_refused(tmp_path, monkeypatch):
    """Found 2026-12-07 by a sixth probe: tarfile copies a pax global header's keys into every member after it (one
    of 5,919 keys before 20,000 empty members: 58 KB -> 4.3 GB), reads each extended header by calling itself for
    the next (2,000 GNU long names in a row: RecursionError), and keeps every member's pax records. A global header
    of a few keys (git archive's commit) is still read."""
    import tarfile

    from cellannot_core.data import io as data_io

    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "0.05")
    keys = {f"k{i}": "" for i in range(1000)}
    with pytest.raises(DataError, match="a pax global header of 1,00[0-9] keys, which tar copies into every member"):
        read_dataset(_tenx_tar(tmp_path / "global.tar.gz", pax_headers=keys), name="query")
    git = _tenx_tar(tmp_path / "git.tar.gz", pax_headers={"comment": "0" * 40})
    assert read_dataset(git, name="query").X.sum() == 8

    head = tarfile.TarInfo("././@LongLink")  # 50 long names in a row, each naming the next header
    head.type, head.size = tarfile.GNUTYPE_LONGNAME, 6
    chain = (head.tobuf(format=tarfile.GNU_FORMAT) + b"x/y.j\0".ljust(512, b"\0")) * 50
    with pytest.raises(DataError, match="more than 8 extended tar headers before one member"):
        read_dataset(_tenx_tar(tmp_path / "chain.tar.gz", extra=chain), name="query")

    monkeypatch.setattr(data_io, "TAR_PAX_KEYS", 500)  # every member's own pax records count
    many = tarfile.TarInfo("m/x")
    many.pax_headers = {f"k{i}": "" for i in range(300)}
    with pytest.raises(DataError, match="more than 500 pax header keys"):
        read_dataset(_tenx_tar(tmp_path / "keys.tar.gz", extra=many.tobuf(format=tarfile.PAX_FORMAT) * 2),
                     name="query")


@pytest.mark.parametrize("kind", ["gnu", "pax00", "pax01", "pax10", "xz"])
def test_a_sparse_tar_member_or_a_tar_gz_holding_xz_is_refused_before_tarfile_reads_its_map(tmp_path, kind,
                                                                                            monkeypatch):
    """Found 2026-12-07 by a sixth probe: tarfile reads a sparse member's map into lists while it reads its header,
    an old GNU one (type S) from a chain of extension blocks (149 KB -> 3.4 GB, 51 s), a pax GNU.sparse 1.0 one
    from the member's data (23 KB -> 4.3 GB, 48 s), and ``r:*`` unpacked the xz that shrank them 10,000 times,
    whatever the name said. Sparse members are refused as they are met; a tar is gzip or none."""
    import lzma
    import tarfile

    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "0.05")
    if kind == "xz":
        path = _tenx_tar(tmp_path / "x.tar.gz", open_with=lzma.open)
        with pytest.raises(DataError, match="compressed with xz, bzip2, zstd or lzma, not gzip"):
            read_dataset(path, name="query")
        return
    info = tarfile.TarInfo("m/sparse.bin")
    if kind == "gnu":
        info.type = tarfile.GNUTYPE_SPARSE
        head = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
        head[482] = 1  # extended: extension blocks of (offset, size) pairs follow, each saying "extended" again
        head[148:156] = b"        "
        head[148:156] = b"%06o\0 " % sum(head)
        block = bytearray(b"%011o\0" % 1 * 42 + b"\0" * 8)
        block[504] = 1
        extra = bytes(head) + bytes(block) * 2000  # (1 MB of header; the probe's 1 GB took 3.4 GB)
    else:
        info.pax_headers = {"pax00": {"GNU.sparse.size": "0", "GNU.sparse.numblocks": "0"},
                            "pax01": {"GNU.sparse.map": "0,0", "GNU.sparse.size": "0"},
                            "pax10": {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                                      "GNU.sparse.realsize": "0"}}[kind]
        extra = info.tobuf(format=tarfile.PAX_FORMAT) + b"%d\n" % 100_000 + b"1\n" * 100_000
    with pytest.raises(DataError, match=r"a sparse member \(GNU tar's --sparse\), which no matrix folder needs"):
        read_dataset(_tenx_tar(tmp_path / f"{kind}.tar.gz", extra=extra), name="query")


def test_chunks_larger_than_their_dataset_and_strings_in_array_types_are_counted_or_refused(plain, tmp_path,
                                                                                            monkeypatch):
    """Found 2026-12-07 by a fifth probe: an X of 100 x 50 values stored in one 2 GB gzipped chunk (a dataset that
    may grow may declare any chunk) took 2.3 GB to read from 2 MB, and held the measuring child for its 300 s as a
    string dataset; variable-length strings in a record's array field counted as one per record (1.1 MB -> 5.1 GB);
    an array of fixed-length strings counted at its stored size (0.5 MB -> 2.5 GB)."""
    def copy(name: str) -> Path:
        p = tmp_path / name
        p.write_bytes(plain.read_bytes())
        return p

    chunk = copy("chunk.h5ad")
    with h5py.File(chunk, "a") as f:
        f["uns"].create_dataset("big", data=np.ones((100, 50), np.float32), maxshape=(None, None),
                                chunks=(1000, 5000), compression="gzip")  # one 19 MB chunk for 20 KB of values
    _check_refused(chunk, "a dataset ('uns/big') stored in chunks of 19.1 MB, far larger than the dataset")

    # 60 MB: 4 records of 1,000 strings, every one pointing at one 30,000-character string (120 MB once read); counted
    # as 4 strings, the file was not sent to the measuring child
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", str(60 / 1024))
    shared = copy("vlen_in_array.h5ad")
    n, k = 4, 1000
    dt = np.dtype([("a", h5py.string_dtype("utf-8"), (k,)), ("b", "i4")])
    vals = np.zeros(n, dtype=dt)
    for i in range(n):
        vals["a"][i] = ["s"] * k
    vals["a"][0][0] = "Q" * 30_000
    with h5py.File(shared, "a") as f:
        d = f["uns"].create_dataset("rec", data=vals, dtype=dt)
        offset, size = d.id.get_offset(), d.id.get_storage_size() // n
    with open(shared, "r+b") as fh:
        fh.seek(offset)
        first = fh.read(16)
        for i in range(n):
            fh.seek(offset + i * size)
            fh.write(first * k)
    with h5py.File(shared, "r") as f:
        assert len(f["uns/rec"][n - 1]["a"][k - 1]) == 30_000
    _check_refused(shared, "names and other text expand past")

    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", str(20 / 1024))  # 20 MB: the file's numbers pass
    fixed = copy("fixed_in_array.h5ad")  # 1,000 records of 100 strings of 100 bytes: 10 MB stored, 36 MB as str
    with h5py.File(fixed, "a") as f:
        f["uns"].create_dataset("rec", data=np.zeros(1000, dtype=[("a", "S100", (100,)), ("b", "i4")]),
                                chunks=(10,), compression="gzip")
    with pytest.raises(DataError, match="expands to"):
        read_dataset(fixed)


def _sequence_of_shared_strings(plain: Path, path: Path, n: int, length: int, attr: str | None = None) -> Path:
    """``plain`` with one variable-length sequence of ``n`` strings, every one pointing at one stored string of
    ``length`` characters: as ``uns/vv`` or, with ``attr`` (``"X/encoding-type"``), as that attribute."""
    import struct

    path.write_bytes(plain.read_bytes())
    values = np.empty(1, dtype=object)
    values[0] = np.array(["Q" * length] + [f"c{i:07d}" for i in range(1, n)], dtype=object)
    dt = h5py.vlen_dtype(h5py.string_dtype())
    with h5py.File(path, "r+") as f:
        if attr is None:
            f["uns"].create_dataset("vv", data=values, dtype=dt)
        else:
            obj, key = attr.rsplit("/", 1)
            f[obj].attrs.create(key, data=values, dtype=dt)
    raw = bytearray(path.read_bytes())
    at = next(i for i in range(len(raw)) if raw[i:i + 4] == struct.pack("<I", length)
              and raw[i + 16:i + 20] == raw[i + 32:i + 36] == struct.pack("<I", 8))  # the sequence's pointers
    raw[at:at + 16 * n] = bytes(raw[at:at + 16]) * n
    path.write_bytes(bytes(raw))
    with h5py.File(path, "r") as f:
        got = f["uns/vv"][0] if attr is None else f[obj].attrs[key][0]
        assert len(got) == n and len(got[-1]) == length  # the file is what the test means
    return path


@pytest.mark.parametrize("attr", [None, "X/encoding-type", "obs/column-order"])
def test_a_sequence_of_strings_sharing_one_stored_string_is_measured(plain, tmp_path, monkeypatch, attr):
    """Found 2026-12-07 by a seventh probe: a variable-length sequence of strings counted as one string, at most the
    file's size, but each of its pointers may share one stored string: a 1.3 MB .h5ad holding one sequence of 30,000
    strings pointing at one of 100,000 characters (in uns, or as an attribute anndata reads) took 3.1 GB at a 0.5 GB
    limit. Such a sequence is now always measured by the child held to the limit."""
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", str(30 / 1024))  # 30 MB: the file's numbers and names pass
    path = _sequence_of_shared_strings(plain, tmp_path / "seq.h5ad", 3000, 30_000, attr)  # 90 MB once read
    assert path.stat().st_size < 250_000
    _check_refused(path, "names and other text expand past")
    few = _sequence_of_shared_strings(plain, tmp_path / "few.h5ad", 100, 100)  # a small one is read
    assert read_dataset(few).uns["vv"].shape == (1,)


def _patched_chunk(plain: Path, path: Path, stream: bytes | None = None, **kwargs) -> Path:
    """``plain`` with ``uns/bomb``, one chunk stored with ``kwargs``' filters, then its stored bytes made ``stream``
    (padded with the bytes stored, which the filters read past or not at all)."""
    path.write_bytes(plain.read_bytes())
    rng = np.random.default_rng(0)
    n = max(len(stream or b""), 1000) * 4  # random bytes of 0-3 stored in more than a quarter of their size
    with h5py.File(path, "r+") as f:
        d = f["uns"].create_dataset("bomb", data=rng.integers(0, 4, n, dtype=np.uint8), chunks=(n,), **kwargs)
        info = d.id.get_chunk_info(0)
    assert info.filter_mask == 0 and (stream is None or info.size >= len(stream))
    if stream is not None:
        raw = bytearray(path.read_bytes())
        raw[info.byte_offset:info.byte_offset + len(stream)] = stream
        path.write_bytes(bytes(raw))
    return path


def test_compressed_chunks_unpacking_past_their_size_or_filters_sizing_other_chunks_are_refused(plain, tmp_path):
    """Found 2026-12-07 by a seventh probe: HDF5 unpacks a gzip chunk's stored stream whole, however far past the
    chunk's size (a 2 MB .h5ad of one 2 MB chunk holding 2 GB of zeros took 2.2 GB at a 0.5 GB limit); h5py's lzf
    grows its buffer to the stream's end (2.4 MB -> 211 MB, 21 s); a scale-offset filter unpacks as many values as
    its parameters in the file say (500 million for a chunk of 4,999 crashed the process). The streams are unpacked
    to the chunk's size, the parameters checked, before anything reads them."""
    import struct
    import zlib

    gz = _patched_chunk(plain, tmp_path / "gz.h5ad", zlib.compress(b"\0" * (50 << 20), 9), compression="gzip")
    _check_refused(gz, "a dataset ('uns/bomb') whose compressed chunks unpack past their own size")
    lzf = b"\x00\x00" + b"\xe0\xff\x00" * 20_000  # a byte, then copies of 264 bytes: 5.3 MB from 60 KB
    lzf = _patched_chunk(plain, tmp_path / "lzf.h5ad", lzf + b"\x00\x00" * 10_000, compression="lzf")
    _check_refused(lzf, "whose compressed chunks unpack past their own size")
    so = tmp_path / "so.h5ad"
    so.write_bytes(plain.read_bytes())
    with h5py.File(so, "r+") as f:
        f["uns"].create_dataset("so", data=np.full(4999, 7, dtype="i4"), chunks=(4999,), scaleoffset=0)
    raw = so.read_bytes()  # the filter's count of values (4,999, then the type's class, size and sign) made 100
    at = raw.index(struct.pack("<IIII", 4999, 0, 4, 1))
    so.write_bytes(raw[:at] + struct.pack("<I", 100) + raw[at + 4:])
    _check_refused(so, "a dataset ('uns/so') whose filter's parameters do not fit its chunks")

    fine = tmp_path / "fine.h5ad"  # what h5py and anndata write with these filters is read
    fine.write_bytes(plain.read_bytes())
    with h5py.File(fine, "r+") as f:
        f["uns"].create_dataset("gz", data=np.arange(10_000.0), chunks=(999,), compression="gzip", shuffle=True,
                                fletcher32=True)
        f["uns"].create_dataset("lzf", data=np.array([f"n{i}" for i in range(3000)], dtype=object),
                                dtype=h5py.string_dtype(), chunks=(500,), compression="lzf")
        f["uns"].create_dataset("sz", data=np.arange(10_000), chunks=(999,), compression="szip")
        f["uns"].create_dataset("so", data=np.arange(10_000.0), chunks=(999,), scaleoffset=2, compression="gzip")
    got = read_dataset(fine)
    assert got.uns["gz"][-1] == 9999 and got.uns["lzf"][-1] == "n2999" and got.uns["sz"][-1] == 9999
    for compression in ("gzip", "lzf"):
        make_synthetic(60, 30, 2).write_h5ad(tmp_path / f"{compression}.h5ad", compression=compression)
        assert read_dataset(tmp_path / f"{compression}.h5ad").n_obs == 60


def _chunks_of_zeros(plain: Path, path: Path, n: int, *, shared: bool) -> Path:
    """``plain`` with ``uns/z``: ``n`` chunks of 1 MB of zeros, each an 1 KB gzip stream, stored apart or (``shared``)
    all pointing at the first one's bytes (the chunk index patched: its keys' sizes and addresses)."""
    import struct
    import zlib

    per, path = 1 << 17, Path(path)
    blob = zlib.compress(bytes(per * 8), 9)
    path.write_bytes(plain.read_bytes())
    with h5py.File(path, "r+") as f:
        d = f["uns"].create_dataset("z", shape=(n * per,), dtype="f8", chunks=(per,), compression="gzip")
        for i in range(n):
            d.id.write_direct_chunk((i * per,), blob if i == 0 or not shared else b"\0")
        where = [d.id.get_chunk_info(i).byte_offset for i in range(n)]
    if shared:
        raw = bytearray(path.read_bytes())
        for i in range(1, n):  # a v1 B-tree key (size, filter mask, offsets) then the chunk's address
            key = struct.pack("<IIQQQ", 1, 0, i * per, 0, where[i])
            at = raw.index(key)
            raw[at:at + len(key)] = struct.pack("<IIQQQ", len(blob), 0, i * per, 0, where[0])
        path.write_bytes(bytes(raw))
    return path


def test_chunks_stored_at_one_place_or_past_the_limit_are_refused_before_they_are_unpacked(plain, tmp_path,
                                                                                           monkeypatch):
    """Found 2026-12-07 by a ninth probe: each chunk of a gzip dataset was unpacked to check it, before the dataset's
    declared size was compared with the limit, and a chunk's index may point many chunks at one stored stream: a 0.8
    MB .h5ad of 20,000 chunks pointing at one 8 KB stream of 8 MB of zeros held the check for minutes (2,000 such
    chunks in 103 KB: 35 s), a 16 MB one of 2,000 chunks stored apart 35 s. Chunks taking more bytes than the file
    holds are refused, and a dataset past the limit is refused by its size before any chunk of it is unpacked."""
    from cellannot_core.data import io as data_io

    shared = _chunks_of_zeros(plain, tmp_path / "shared.h5ad", 300, shared=True)
    with h5py.File(shared, "r") as f:  # (HDF5 reads them: each chunk is the one stream)
        assert f["uns/z"].id.get_chunk_info(299).byte_offset == f["uns/z"].id.get_chunk_info(0).byte_offset
    with pytest.raises(DataError, match=r"'uns/z'\) whose chunks take more bytes than the file holds"):
        data_io.guard_hdf5(shared, "the file", whole=("obs", "var"))  # (uns/z not counted: as a streamed X is)
    _check_refused(shared, "whose chunks take more bytes than the file holds")

    apart = _chunks_of_zeros(plain, tmp_path / "apart.h5ad", 300, shared=False)
    assert data_io.guard_hdf5(apart, "the file", whole=("obs", "var")) is None  # chunks stored apart are read
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "0.25")  # 300 MB declared: refused by its size, none unpacked
    checked, check = [], data_io.chunk_inflation
    monkeypatch.setattr(data_io, "chunk_inflation", lambda ds, room: checked.append(ds.name) or check(ds, room))
    with pytest.raises(DataError, match="expands to 0.3 GiB in memory, above this server's limit of 0.2 GiB"):
        read_dataset(apart)
    assert checked and "/uns/z" not in checked


@pytest.mark.parametrize("filters, stored, mask", [
    ({}, b"\1" * 7, 0),  # no filter: 7 bytes for a chunk of 8 MB
    ({"shuffle": True}, b"\1" * 7, 0),
    ({"compression": "gzip"}, b"\1", 1),  # the compression skipped by the chunk's filter mask
    ({"compression": "gzip"}, "short", 0),  # a stream unpacking to 7 bytes
    ({"compression": "gzip", "shuffle": True}, "short", 0),
])
def test_a_chunk_stored_or_unpacking_short_of_its_size_is_refused_not_a_crash(plain, tmp_path, filters, stored, mask):
    """Found 2026-12-07 by a ninth probe: HDF5 read a chunk stored at 1-7 bytes (its size in the chunk index), or a
    gzip stream unpacking to 7, as a chunk of 8 MB: reading the 20 KB .h5ad ended the process by SIGSEGV, in about
    half the runs. A chunk no filter resizes must be stored at its size, and a stream must unpack to it; in a child
    process, so that a crash fails the test."""
    import zlib

    path = tmp_path / "short.h5ad"
    path.write_bytes(plain.read_bytes())
    with h5py.File(path, "r+") as f:
        d = f["uns"].create_dataset("z", shape=(1 << 20,), dtype="f8", chunks=(1 << 20,), **filters)
        d.id.write_direct_chunk((0,), zlib.compress(b"\1" * 7) if stored == "short" else stored, filter_mask=mask)
    code = ("import sys; from cellannot_core.data import read_dataset\n"
            "try:\n    read_dataset(sys.argv[1]); print('read')\nexcept Exception as e:\n    print(e)")
    for _ in range(3):  # (the crash came in about half the runs)
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-500:]
        assert "a dataset ('uns/z') whose chunks are stored at another size than their own" in done.stdout


def test_a_tar_gz_is_refused_at_the_member_that_passes_the_limit_not_after_unpacking_all(tmp_path, monkeypatch):
    """Found 2026-12-07 by a ninth probe: tarfile unpacks a .tar.gz member's data to reach the next header, and the
    members' sizes were summed after the walk over them all (a 10 MB .tar.gz of 25 members of 400 MB of zeros: 23 s
    before "unpacks to 9.8 GiB"). The sum is held to the limit member by member (1.0 s)."""
    import gzip
    import tarfile

    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "0.25")
    path, block = tmp_path / "zeros.tar.gz", bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=1) as gz:
        for i in range(6):  # 100 MB each: the third passes the limit
            info = tarfile.TarInfo(f"m{i}.bin")
            info.size = 100 << 20
            gz.write(info.tobuf(format=tarfile.USTAR_FORMAT))
            for _ in range(100):
                gz.write(block)
        gz.write(bytes(1024))
    with pytest.raises(DataError, match=r"zeros.tar.gz. unpacks to 0\.3 GiB, above this server's limit of 0\.2 GiB"):
        read_dataset(path, name="query")


def test_a_zip_listing_countless_members_or_a_tar_header_python_cannot_number_is_one_line(tmp_path):
    """Found 2026-12-07 by an eighth probe: zipfile reads a zip's whole central directory into an object a member
    before they can be counted (a 159 MB zip listing 3 million empty members: 1.7 GB and 18 s, then "more than
    20,000 files"), and a pax record whose length has 5,000 digits is a ValueError, not a TarError, to tarfile
    (`predict --model x.tar`: "internal error"). The directory's size is read from the zip's end record first."""
    import struct
    import tarfile

    from cellannot_core.pipeline import load_bundle

    n, directory = 200_000, bytearray()  # central directory entries only, 53 bytes each: 10 MB
    for i in range(n):
        name = b"%07d" % i
        directory += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0, 0,
                                 0, 0) + name
    z64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(directory), 0)
    locator = struct.pack("<IIQI", 0x07064B50, 0, len(directory), 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    z = tmp_path / "many.zip"
    z.write_bytes(bytes(directory) + z64 + locator + end)
    with pytest.raises(DataError, match="lists 10 MB of members, where a 10x matrix folder's zip lists three files"):
        read_dataset(z, name="query")

    record = b"9" * 5000 + b" path=x\n"
    head = tarfile.TarInfo("PaxHeader")
    head.type, head.size = tarfile.XHDTYPE, len(record)
    t = tmp_path / "model.tar"
    t.write_bytes(head.tobuf(format=tarfile.USTAR_FORMAT) + record.ljust(512 * 10, b"\0") + b"\0" * 1024)
    for read in (lambda: read_dataset(t, name="query"), lambda: load_bundle(t, device="cpu")):
        with pytest.raises(DataError, match="is damaged: a tar header cannot be read|as archive: ValueError"):
            read()
