"""Reading every supported format, safely, with clear errors."""
from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from cellannot_core.data import SUPPORTED_FORMATS, read_dataset, read_uploaded, sanitize_filename
from cellannot_core.errors import DataError
from conftest import make_synthetic


@pytest.fixture
def small():
    a = make_synthetic(60, 40, 3, seed=3)
    a.var["gene_ids"] = [f"ENSG{j:011d}" for j in range(a.n_vars)]
    return a


def _dense(a) -> np.ndarray:
    return np.asarray(a.X.toarray())


def _assert_same(got, expected):
    assert sp.isspmatrix_csr(got.X) or isinstance(got.X, sp.csr_array)
    assert got.X.dtype == np.float32
    assert list(got.obs_names) == list(expected.obs_names)
    assert list(got.var_names) == list(expected.var_names)
    np.testing.assert_array_equal(_dense(got), _dense(expected))


def _write_gz(path: Path, data: bytes) -> None:
    with gzip.open(path, "wb") as fh:
        fh.write(data)


def write_mtx_dir(a, folder: Path, *, v3: bool = True, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    scipy.io.mmwrite(buf, sp.coo_matrix(a.X.T.astype(np.int64)), field="integer")
    ids = a.var["gene_ids"].to_numpy()
    if v3:
        feats = "".join(f"{i}\t{n}\tGene Expression\n" for i, n in zip(ids, a.var_names))
        fname = "features.tsv"
    else:
        feats = "".join(f"{i}\t{n}\n" for i, n in zip(ids, a.var_names))
        fname = "genes.tsv"
    bcs = "".join(f"{b}\n" for b in a.obs_names)
    files = {"matrix.mtx": buf.getvalue(), fname: feats.encode(), "barcodes.tsv": bcs.encode()}
    for n, data in files.items():
        if gz:
            _write_gz(folder / f"{n}.gz", data)
        else:
            (folder / n).write_bytes(data)
    return folder


def write_10x_h5(a, path: Path, *, extra_antibody: bool = True) -> Path:
    """The Cell Ranger v3 HDF5 layout: a genes x cells CSC matrix under /matrix."""
    X = sp.csr_matrix(a.X.astype(np.int32))  # cells x genes CSR == genes x cells CSC
    ids = list(a.var["gene_ids"])
    names = list(a.var_names)
    types = ["Gene Expression"] * a.n_vars
    if extra_antibody:  # one antibody-capture feature that must be dropped
        X = sp.hstack([X, sp.csr_matrix(np.full((a.n_obs, 1), 7, dtype=np.int32))]).tocsr()
        ids.append("CD3_TotalSeqB")
        names.append("CD3_TotalSeqB")
        types.append("Antibody Capture")
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m.create_dataset("data", data=X.data.astype(np.int32))
        m.create_dataset("indices", data=X.indices.astype(np.int64))
        m.create_dataset("indptr", data=X.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([X.shape[1], X.shape[0]], dtype=np.int32))
        m.create_dataset("barcodes", data=np.array(list(a.obs_names), dtype="S"))
        ft = m.create_group("features")
        ft.create_dataset("id", data=np.array(ids, dtype="S"))
        ft.create_dataset("name", data=np.array(names, dtype="S"))
        ft.create_dataset("feature_type", data=np.array(types, dtype="S"))
        ft.create_dataset("genome", data=np.array(["GRCh38"] * len(ids), dtype="S"))
        ft.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
    return path


def test_h5ad(tmp_path, small):
    p = tmp_path / "d.h5ad"
    small.write_h5ad(p)
    got = read_dataset(p)
    _assert_same(got, small)
    assert list(got.obs["cell_type"]) == list(small.obs["cell_type"])
    assert got.uns["cellannot_input"]["format"] == "h5ad"


def test_h5ad_saved_as_h5(tmp_path, small):
    p = tmp_path / "d.h5"
    small.write_h5ad(p)
    _assert_same(read_dataset(p), small)


def test_h5ad_dense_x_becomes_csr_float32(tmp_path, small):
    small.X = small.X.toarray().astype(np.float64)
    p = tmp_path / "d.h5ad"
    small.write_h5ad(p)
    got = read_dataset(p)
    assert sp.issparse(got.X) and got.X.dtype == np.float32
    np.testing.assert_array_equal(got.X.toarray(), small.X)


def test_10x_h5(tmp_path, small):
    """The file is read as it is, its antibody feature too (the annotated copy keeps it); the counts are of the genes
    alone, and say so (until 2026-12-07 the reader left the antibodies out without a word, and an AnnData read with
    scanpy's gex_only=False had multiome's peaks taken for genes)."""
    import anndata as ad

    from cellannot_core.data.values import get_counts

    got = read_dataset(write_10x_h5(small, tmp_path / "filtered_feature_bc_matrix.h5"))
    assert got.n_vars == small.n_vars + 1 and list(got.var["feature_types"])[-1] == "Antibody Capture"
    c = get_counts(got, name="query")
    _assert_same(ad.AnnData(X=c.X, obs=got.obs, var=c.var), small)
    assert list(c.var["gene_ids"]) == list(small.var["gene_ids"])
    assert c.source.endswith(f"its {small.n_vars:,} Gene Expression features only (1 Antibody Capture features left "
                             "out: they are no genes)"), c.source


@pytest.mark.parametrize("v3,gz", [(True, True), (False, False), (True, False)])
def test_mtx_folder(tmp_path, small, v3, gz):
    folder = write_mtx_dir(small, tmp_path / "filtered", v3=v3, gz=gz)
    got = read_dataset(folder)
    _assert_same(got, small)
    assert list(got.var["gene_ids"]) == list(small.var["gene_ids"])
    # the matrix file itself points at its folder
    got2 = read_dataset(folder / ("matrix.mtx.gz" if gz else "matrix.mtx"))
    _assert_same(got2, small)


def test_mtx_folder_shape_mismatch(tmp_path, small):
    folder = write_mtx_dir(small, tmp_path / "m", v3=False, gz=False)
    (folder / "barcodes.tsv").write_text("".join(f"b{i}\n" for i in range(5)))
    with pytest.raises(DataError, match="same dataset"):
        read_dataset(folder)


def test_mtx_folder_missing_barcodes(tmp_path, small):
    folder = write_mtx_dir(small, tmp_path / "m", v3=True, gz=True)
    (folder / "barcodes.tsv.gz").unlink()
    with pytest.raises(DataError, match="barcodes.tsv"):
        read_dataset(folder)


def test_zip_and_tar_of_folder(tmp_path, small):
    src = write_mtx_dir(small, tmp_path / "src" / "sample1" / "filtered_feature_bc_matrix")
    zpath = tmp_path / "data.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in src.iterdir():
            zf.write(f, f"sample1/filtered_feature_bc_matrix/{f.name}")
        zf.writestr("__MACOSX/._junk", b"junk")
    _assert_same(read_dataset(zpath), small)
    for ext, mode in ((".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar", "w")):
        tpath = tmp_path / f"data{ext}"
        with tarfile.open(tpath, mode) as tf:
            tf.add(src, arcname="filtered_feature_bc_matrix")
        _assert_same(read_dataset(tpath), small)


def test_zip_path_traversal_rejected(tmp_path, small):
    src = write_mtx_dir(small, tmp_path / "src")
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in src.iterdir():
            zf.write(f, f.name)
        zf.writestr("../evil", b"owned")
    with pytest.raises(DataError, match=r"unsafe path '\.\./evil'"):
        read_dataset(zpath)
    assert not (tmp_path / "evil").exists()
    assert not (Path(tempfile.gettempdir()) / "evil").exists()


def test_tar_absolute_and_symlink_rejected(tmp_path, small):
    src = write_mtx_dir(small, tmp_path / "src")
    t1 = tmp_path / "abs.tar.gz"
    data = (src / "matrix.mtx.gz").read_bytes()
    with tarfile.open(t1, "w:gz") as tf:
        info = tarfile.TarInfo("/tmp/matrix.mtx.gz")  # tf.add would strip the leading '/'
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="unsafe path"):
        read_dataset(t1)
    t2 = tmp_path / "link.tar.gz"
    with tarfile.open(t2, "w:gz") as tf:
        info = tarfile.TarInfo("m/matrix.mtx.gz")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DataError, match="link or special file"):
        read_dataset(t2)


def test_zip_without_matrix(tmp_path):
    zpath = tmp_path / "nothing.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("readme.txt", b"hi")
    with pytest.raises(DataError, match="no matrix.mtx"):
        read_dataset(zpath)


def test_csv_cells_x_genes(tmp_path, small):
    df = pd.DataFrame(_dense(small), index=small.obs_names, columns=small.var_names)
    p = tmp_path / "counts.csv"
    df.to_csv(p)
    got = read_dataset(p)
    _assert_same(got, small)
    assert got.uns["cellannot_input"]["orientation"] == "cells_x_genes"


def test_a_csv_a_spreadsheet_saved_with_semicolons_and_decimal_commas_is_read(tmp_path, small):
    """Spreadsheets in many locales save CSV with ';' between fields and ',' as the decimal mark:
    such a table was 'no data rows or columns'."""
    df = pd.DataFrame(_dense(small), index=small.obs_names, columns=small.var_names)
    df.to_csv(tmp_path / "semi.csv", sep=";")
    _assert_same(read_dataset(tmp_path / "semi.csv"), small)
    (df / 4).to_csv(tmp_path / "decimal.csv", sep=";", decimal=",")
    got = read_dataset(tmp_path / "decimal.csv")
    np.testing.assert_allclose(_dense(got), _dense(small) / 4, rtol=1e-6)


def test_csv_genes_x_cells_transposed(tmp_path, small):
    df = pd.DataFrame(_dense(small).T, index=small.var_names, columns=small.obs_names)
    p = tmp_path / "counts.csv"
    df.to_csv(p)
    got = read_dataset(p)
    _assert_same(got, small)
    assert got.uns["cellannot_input"]["orientation"] == "genes_x_cells"


def test_tsv_gz_genes_x_cells_with_real_looking_names(tmp_path):
    rng = np.random.default_rng(0)
    genes = ["MT-CO1", "ACTB", "CD3E", "RPL13", "GAPDH", "MS4A1", "LYZ", "NKG7"] + [f"LINC{i:05d}" for i in range(40)]
    cells = ["".join(rng.choice(list("ACGT"), 14)) + "-1" for _ in range(30)]
    X = rng.poisson(1.0, size=(len(genes), len(cells)))
    p = tmp_path / "expr.tsv.gz"
    pd.DataFrame(X, index=genes, columns=cells).to_csv(p, sep="\t")
    got = read_dataset(p)
    assert got.shape == (30, len(genes))
    assert list(got.var_names) == genes
    np.testing.assert_array_equal(got.X.toarray(), X.T)
    from cellannot_core.data import summarize_dataset  # the guess is said, with what to do if it is wrong

    assert summarize_dataset(got)["notes"][0].startswith("the table was read with genes as rows (")
    # the override wins over the guess
    forced = read_dataset(p, orientation="cells_x_genes")
    assert forced.shape == (len(genes), 30)
    assert forced.uns["cellannot_input"]["orientation_reason"] == "set by the user"


def test_txt_whitespace(tmp_path, small):
    df = pd.DataFrame(_dense(small), index=small.obs_names, columns=small.var_names)
    p = tmp_path / "counts.txt"
    df.to_csv(p, sep=" ")
    _assert_same(read_dataset(p), small)


def test_csv_non_numeric(tmp_path, small):
    df = pd.DataFrame(_dense(small), index=small.obs_names, columns=small.var_names)
    df["header_SECRET_TOKEN=abc"] = "x"
    p = tmp_path / "counts.csv"
    df.to_csv(p)
    with pytest.raises(DataError, match=rf"non-numeric columns \(the first is column {df.shape[1] + 1}\)") as err:
        read_dataset(p)
    assert "SECRET" not in str(err.value)  # an error never echoes file contents (issue 14)


def test_truncated_h5ad(tmp_path, small):
    p = tmp_path / "full.h5ad"
    small.write_h5ad(p)
    cut = tmp_path / "cut.h5ad"
    data = p.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        read_dataset(cut, name="reference")
    msg = str(e.value)
    # what it means and what to do, in one line: not HDF5's offsets nor the list of every format
    assert "reference file 'cut.h5ad'" in msg and "cut short" in msg and "copy it again" in msg
    assert "\n" not in msg and "eof" not in msg and SUPPORTED_FORMATS not in msg


def test_truncated_gz_table(tmp_path, small):
    df = pd.DataFrame(_dense(small), index=small.obs_names, columns=small.var_names)
    p = tmp_path / "c.csv.gz"
    df.to_csv(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="could not read dataset file 'c.csv.gz'"):
        read_dataset(p)


def test_an_empty_x_beside_a_counts_layer_is_read_from_the_layer(tmp_path):
    """Found 2026-12-06: the API read such a file's counts from the layer, the reader (CLI, app)
    refused it as having no expression matrix."""
    import anndata as ad
    import scipy.sparse as sp

    counts = sp.csr_matrix(np.arange(12, dtype=np.float32).reshape(4, 3))
    a = ad.AnnData(X=None, obs=pd.DataFrame(index=[f"c{i}" for i in range(4)]),
                   var=pd.DataFrame(index=["g0", "g1", "g2"]), layers={"counts": counts})
    a.write_h5ad(tmp_path / "empty_x.h5ad")
    got = read_dataset(tmp_path / "empty_x.h5ad")
    np.testing.assert_array_equal(got.X.toarray(), counts.toarray())
    del a.layers["counts"]
    a.layers["logcounts"] = counts
    a.write_h5ad(tmp_path / "no_counts.h5ad")
    with pytest.raises(DataError, match="no expression matrix"):
        read_dataset(tmp_path / "no_counts.h5ad")


def test_unknown_extension_and_missing_file(tmp_path):
    p = tmp_path / "data.docx"
    p.write_bytes(b"PK")
    with pytest.raises(DataError, match="unsupported file type. Supported formats: AnnData .h5ad"):
        read_dataset(p)
    with pytest.raises(DataError, match="does not exist"):
        read_dataset(tmp_path / "nope.h5ad")


@pytest.mark.parametrize("name,hint", [("obj.rds", "SeuratDisk's SaveH5Seurat"), ("obj.h5Seurat", "zellkonverter"),
                                       ("store.zarr", "anndata.read_zarr"),
                                       ("sheet.xlsx", "save the sheet as .csv"),
                                       ("q.h5ad.gz", r"unpack it first \(gunzip\)")])  # (found 2026-12-07)
def test_a_format_we_do_not_read_says_how_to_convert_it(tmp_path, name, hint):
    p = tmp_path / name
    p.mkdir() if name.endswith(".zarr") else p.write_bytes(b"x")  # a .zarr store is a folder, not a 10x folder
    with pytest.raises(DataError, match=f"unsupported file type. .*{hint}.*Supported formats: AnnData .h5ad"):
        read_dataset(p)
    with pytest.raises(DataError, match=f"uploaded file '{name}' has an unsupported file type. .*{hint}"):
        sanitize_filename(name)


def test_empty_csv(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_dataset(p)


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("../../etc/passwd.h5ad", "passwd.h5ad"),
        ("..\\..\\windows\\x.csv.gz", "x.csv.gz"),
        ("my data (v2)$.tar.gz", "my_data__v2__.tar.gz"),
        ("..h5ad", "upload.h5ad"),
        (".hidden.zip", "hidden.zip"),
        ("/abs/path/Sample.H5AD", "Sample.h5ad"),  # extension lower-cased
    ],
)
def test_sanitize_filename(raw, expected):
    assert sanitize_filename(raw) == expected


def test_sanitize_rejects_unknown_extension():
    with pytest.raises(DataError, match="unsupported file type"):
        sanitize_filename("../evil.sh")


def test_read_uploaded(tmp_path, small, monkeypatch):
    p = tmp_path / "d.h5ad"
    small.write_h5ad(p)
    made = []
    real = tempfile.mkdtemp

    def spy(*a, **k):
        d = real(*a, **k)
        made.append(Path(d))
        return d

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    got = read_uploaded(p.read_bytes(), "../../etc/passwd.h5ad")
    _assert_same(got, small)
    assert got.uns["cellannot_input"]["file"] == "passwd.h5ad"
    assert made and not made[0].exists()  # temp dir removed
    assert not Path("/etc/passwd.h5ad").exists()


def test_read_uploaded_zip_and_errors(tmp_path, small):
    src = write_mtx_dir(small, tmp_path / "src")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in src.iterdir():
            zf.write(f, f"x/{f.name}")
    _assert_same(read_uploaded(buf.getvalue(), "pbmc.zip"), small)
    with pytest.raises(DataError, match="is empty"):
        read_uploaded(b"", "a.h5ad")
    with pytest.raises(DataError, match="could not read"):
        read_uploaded(b"not an hdf5 file", "a.h5ad")


def test_bad_orientation_value(tmp_path, small):
    p = tmp_path / "d.h5ad"
    small.write_h5ad(p)
    with pytest.raises(DataError, match="orientation must be"):
        read_dataset(p, orientation="rows")


def test_tar_extract_leaves_no_temp(tmp_path, small, monkeypatch):
    src = write_mtx_dir(small, tmp_path / "src")
    tpath = tmp_path / "d.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        tf.add(src, arcname="m")
    # a temp folder of this test's own: another test run on the machine makes and removes its own
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    read_dataset(tpath)
    assert not list((tmp_path / "tmp").iterdir())
    shutil.rmtree(src)


def test_orientation_guess_on_real_names():
    import anndata as ad

    from cellannot_core.data.io import _guess_orientation

    a = ad.read_h5ad(Path(__file__).resolve().parents[1] / "data" / "pbmc3k_small.h5ad")
    genes, cells = a.var_names, a.obs_names  # symbols; 10x barcodes
    numbered = pd.Index([str(i) for i in range(a.n_obs)])
    assert _guess_orientation(genes, cells)[0] == "genes_x_cells"
    assert _guess_orientation(cells, genes)[0] == "cells_x_genes"
    assert _guess_orientation(genes, numbered) == ("genes_x_cells", "row names look like genes")
    assert _guess_orientation(numbered, genes) == ("cells_x_genes", "column names look like genes")


def test_float16_x_and_a_gzipped_table_named_csv_are_read(tmp_path, small):
    """Issue 14: float16 X surfaced as 'internal error'; a gzip file named .csv as a utf-8 error."""
    import gzip

    a = small.copy()
    a.X = np.asarray(_dense(small), dtype=np.float16)
    p = tmp_path / "half.h5ad"
    a.write_h5ad(p)
    got = read_dataset(p)
    assert got.X.dtype == np.float32 and got.n_obs == small.n_obs
    df = pd.DataFrame(_dense(small), index=small.obs_names, columns=small.var_names)
    q = tmp_path / "counts.csv"
    with gzip.open(q, "wt") as fh:
        df.to_csv(fh)
    _assert_same(read_dataset(q), small)


def test_a_geo_download_with_a_table_of_cell_annotations_is_read_with_its_labels(tmp_path, small):
    """GEO names a sample's files GSM123_matrix.mtx.gz and so on, and gives the cell types in a
    table beside them: the folder was 'no matrix.mtx', and a 10x folder could carry no labels, so
    it could not be a reference."""
    from cellannot_core.data import summarize_dataset

    a = small.copy()
    a.obs_names = [f"{'ACGT'[i % 4] * 3}{i:05d}-1" for i in range(a.n_obs)]  # Cell Ranger's barcodes
    folder = write_mtx_dir(a, tmp_path / "plain")
    geo = tmp_path / "GSE1"
    geo.mkdir()
    for f in folder.iterdir():
        f.rename(geo / f"GSM1_{f.name}")
    meta = pd.DataFrame({"barcode": [b[:-2] for b in a.obs_names], "cell_type": a.obs["cell_type"].astype(str),
                         "n_genes": np.arange(a.n_obs)}).iloc[:50]  # without the -1; ten cells not in it
    meta.to_csv(geo / "GSE1_metadata.csv.gz", index=False)
    pd.DataFrame({"x": [1, 2]}).to_csv(geo / "notes.csv")
    pd.DataFrame(_dense(a), index=a.obs_names).reindex(columns=range(250), fill_value=0).to_csv(geo / "counts.csv")
    for path in (geo, shutil.make_archive(str(tmp_path / "GSE1"), "zip", geo)):
        got = read_dataset(path)
        _assert_same(got, a)
        assert list(got.obs["cell_type"].iloc[:50]) == list(a.obs["cell_type"].astype(str).iloc[:50])
        assert got.obs["cell_type"].iloc[50:].isna().all() and got.obs["n_genes"].iloc[3] == 3
        notes = summarize_dataset(got)["notes"]
        assert any("2 columns of cell annotations to 50 of the 60 cells" in n for n in notes)
        assert any("was left out: fewer than half" in n for n in notes)
        assert any("251 columns are not a table of cell annotations" in n for n in notes)
    (geo / "GSM2_matrix.mtx.gz").write_bytes((geo / "GSM1_matrix.mtx.gz").read_bytes())
    with pytest.raises(DataError, match="holds 2 matrices"):
        read_dataset(geo)


def test_a_kallisto_bustools_folder_is_read(tmp_path, small):
    """`kb count` writes cells_x_genes.mtx (cells x genes, not 10x's genes x cells) with its
    barcodes and gene IDs listed beside it, and the gene names since kb-python 0.28; `--workflow nac`
    a cells_x_genes.total.mtx among others. Such a folder was 'no matrix.mtx'."""
    a = small.copy()
    ids = a.var["gene_ids"].to_numpy()

    def write(folder: Path, *, names: bool, stem: str = "cells_x_genes") -> Path:
        folder.mkdir(parents=True)
        scipy.io.mmwrite(str(folder / f"{stem}.mtx"), sp.coo_matrix(a.X.astype(np.int64)), field="integer")
        (folder / "cells_x_genes.genes.txt").write_text("".join(f"{i}\n" for i in ids))
        (folder / "cells_x_genes.barcodes.txt").write_text("".join(f"{b}\n" for b in a.obs_names))
        if names:
            (folder / "cells_x_genes.genes.names.txt").write_text("".join(f"{g}\n" for g in a.var_names))
        return folder

    kb = write(tmp_path / "out" / "counts_unfiltered", names=True)
    for path in (kb, tmp_path / "out", shutil.make_archive(str(tmp_path / "kb"), "zip", tmp_path / "out")):
        got = read_dataset(path)
        _assert_same(got, a)
        assert list(got.var["gene_ids"]) == list(ids)
    nac = write(tmp_path / "nac", names=True, stem="cells_x_genes.total")
    (nac / "cells_x_genes.mature.mtx").write_text("not read")
    _assert_same(read_dataset(nac), a)
    ids_only = read_dataset(write(tmp_path / "old_kb", names=False))  # kb-python before 0.28: IDs only
    assert list(ids_only.var_names) == list(ids)
    np.testing.assert_array_equal(_dense(ids_only), _dense(a))


def test_a_tables_text_columns_beside_its_row_names_are_kept_as_annotations(tmp_path, small):
    """GEO count tables often give each gene's ID and its symbol in two leading columns, and a
    cells x genes table may give each cell's type beside its name: both were 'non-numeric columns'.
    Up to three such columns are the rows' annotations (gene symbols matched as the reference's
    names, a cell-type column a label column)."""
    from cellannot_core.data.genes import match_genes

    genes = pd.DataFrame(_dense(small).T, columns=small.obs_names)
    genes.insert(0, "Symbol", small.var_names)
    genes.insert(0, "GeneID", small.var["gene_ids"].to_numpy())
    genes.to_csv(tmp_path / "geo.tsv.gz", sep="\t", index=False)
    got = read_dataset(tmp_path / "geo.tsv.gz")
    assert got.shape == small.shape and list(got.var_names) == list(small.var["gene_ids"])
    assert list(got.var["symbol"]) == list(small.var_names)
    np.testing.assert_array_equal(_dense(got), _dense(small))
    m = match_genes(small.var, got.var)  # the reference's symbols found through the symbol column
    assert m.n_shared == small.n_vars
    cells = pd.DataFrame(_dense(small), index=small.obs_names, columns=small.var_names)
    cells.insert(0, "cell_type", small.obs["cell_type"].astype(str).to_numpy())
    cells.to_csv(tmp_path / "ref.csv")
    ref = read_dataset(tmp_path / "ref.csv")
    _assert_same(ref, small)
    assert list(ref.obs["cell_type"]) == list(small.obs["cell_type"].astype(str))
    for k in range(4):  # a fourth column of text, or one among the numbers, is still refused
        cells.insert(1, f"note{k}", "x")
    cells.to_csv(tmp_path / "four.csv")
    with pytest.raises(DataError, match=r"5 non-numeric columns \(the first is column 2\).*up to 3 columns"):
        read_dataset(tmp_path / "four.csv")


def test_a_parse_biosciences_folder_is_read_with_its_cell_metadata(tmp_path, small):
    """Parse Biosciences' split-pipe writes DGE_filtered/ with count_matrix.mtx (DGE.mtx before
    v1.1; cells x genes), all_genes.csv (gene_id, gene_name, genome) and cell_metadata.csv (a row per
    cell: bc_wells, sample, ...): 'no matrix.mtx' until 2026-12-06."""
    a = small.copy()
    a.obs_names = [f"{i:02d}_{(i * 7) % 96:02d}_{(i * 5) % 96:02d}" for i in range(a.n_obs)]  # bc_wells
    run = tmp_path / "parse_run"
    for name, mtx in (("DGE_filtered", "count_matrix.mtx"), ("DGE_old", "DGE.mtx")):
        folder = run / name
        folder.mkdir(parents=True)
        scipy.io.mmwrite(str(folder / mtx), sp.coo_matrix(a.X.astype(np.int64)), field="integer")
        pd.DataFrame({"gene_id": a.var["gene_ids"], "gene_name": a.var_names, "genome": "hg38"}).to_csv(
            folder / "all_genes.csv", index=False)
        pd.DataFrame({"bc_wells": a.obs_names, "sample": np.where(np.arange(a.n_obs) % 2, "s1", "s2"),
                      "gene_count": np.arange(a.n_obs)}).to_csv(folder / "cell_metadata.csv", index=False)
        got = read_dataset(folder)
        _assert_same(got, a)
        assert list(got.var["gene_ids"]) == list(a.var["gene_ids"]) and "feature_types" not in got.var
        assert list(got.obs["sample"][:2]) == ["s2", "s1"] and got.obs["gene_count"].iloc[5] == 5
    with pytest.raises(DataError, match="contains 2 matrix folders"):
        read_dataset(run)


def test_a_featurecounts_table_is_read_genes_by_samples(tmp_path, small):
    """Smart-seq counts often come as featureCounts' output: a '#' line with its command, then
    Geneid, Chr, Start, End, Strand, Length and a column per BAM file. It was 'non-numeric
    columns'; Length would have been taken for a cell."""
    a = small.copy()
    bams = [f"/data/run1/{c}.bam" for c in a.obs_names]
    df = pd.DataFrame(_dense(a).T.astype(int), columns=bams)
    for i, (k, v) in enumerate({"Geneid": a.var_names, "Chr": "chr1;chr1", "Start": "100;200", "End": "150;260",
                                "Strand": "+;+", "Length": 111}.items()):
        df.insert(i, k, v)
    p = tmp_path / "counts.txt"
    p.write_text('# Program:featureCounts v2.0.1; Command:"featureCounts" "-a" "genes.gtf"\n'
                 + df.to_csv(sep="\t", index=False))
    got = read_dataset(p)
    assert list(got.obs_names) == bams and list(got.var_names) == list(a.var_names)
    np.testing.assert_array_equal(_dense(got), _dense(a))
    assert list(got.var.columns) == ["Chr", "Start", "End", "Strand", "Length"]
    assert got.uns["cellannot_input"]["orientation_reason"] == "featureCounts' table: genes x samples"


def _write_h5mu(path: Path, mods: dict, obs: pd.DataFrame | None = None) -> Path:
    """An .h5mu as mudata writes one: each modality an AnnData under /mod, the joint obs at the top."""
    from anndata.io import write_elem

    with h5py.File(path, "w") as f:
        for name, a in mods.items():
            write_elem(f, f"mod/{name}", a)
        if obs is not None:
            write_elem(f, "obs", obs)
    return path


def test_a_mudata_file_is_read_as_its_rna_modality_with_the_joint_cell_types(tmp_path, small, monkeypatch):
    """CITE-seq and multiome data come as MuData .h5mu (muon, scvi-tools' totalVI / MultiVI), the
    cell types often in the joint obs: it was refused with how to convert it."""
    import anndata as ad

    a = small.copy()
    a.obs = a.obs.drop(columns=["cell_type"])
    prot = ad.AnnData(X=sp.csr_matrix(np.ones((a.n_obs, 5), dtype=np.float32)), obs=pd.DataFrame(index=a.obs_names),
                      var=pd.DataFrame(index=[f"CD{i}_TotalSeqB" for i in range(5)]))
    joint = pd.DataFrame({"celltype": small.obs["cell_type"].astype(str).to_numpy(), "rna:n_genes": 1,
                          "prot:n_proteins": 5}, index=a.obs_names)
    path = _write_h5mu(tmp_path / "cite.h5mu", {"prot": prot, "rna": a}, joint)
    got = read_dataset(path)
    _assert_same(got, a)
    assert list(got.obs["celltype"]) == list(small.obs["cell_type"].astype(str))
    assert "prot:n_proteins" not in got.obs and got.uns["cellannot_input"] == {"format": "h5mu", "modality": "rna"}
    other = _write_h5mu(tmp_path / "two.h5mu", {"atac": prot, "prot": prot})
    with pytest.raises(DataError, match="2 modalities and none is named rna"):
        read_dataset(other)
    with h5py.File(tmp_path / "plain.h5mu", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataError, match="not a MuData file"):
        read_dataset(tmp_path / "plain.h5mu")
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "0.000001")  # too large to hold: how to stream it instead
    with pytest.raises(DataError, match=r"GiB in memory.*save its rna modality as an \.h5ad.*a chunk at a time"):
        read_dataset(path)
    monkeypatch.delenv("CELLANNOT_MEMORY_LIMIT_GB")
    with h5py.File(path, "r+") as f:  # guarded as an .h5ad is: nothing reaches outside the file
        f["mod/rna/obsm_link"] = h5py.ExternalLink("/etc/passwd", "/")
    with pytest.raises(DataError, match="external link"):
        read_dataset(path)


def test_a_folder_is_searched_for_its_matrix_within_bounds(tmp_path, small, monkeypatch):
    """A server path naming a data root was walked whole (every file of every folder below it) in
    search of a matrix.mtx, links included: the search keeps to four levels and a bounded number of
    entries, and does not follow links."""
    from cellannot_core.data import io as dio

    deep = write_mtx_dir(small, tmp_path / "root" / "a" / "b" / "c" / "d" / "e")
    with pytest.raises(DataError, match="folder .root. contains no matrix.mtx"):  # five levels down: not looked for
        read_dataset(tmp_path / "root")
    _assert_same(read_dataset(tmp_path / "root" / "a"), small)  # four: found
    (tmp_path / "root" / "a" / "loop").symlink_to(tmp_path / "root")  # a link back up is not followed
    _assert_same(read_dataset(tmp_path / "root" / "a"), small)
    monkeypatch.setattr(dio, "MATRIX_SEARCH_ENTRIES", 20)
    for i in range(25):
        (tmp_path / "root" / f"f{i}.txt").write_text("x")
    with pytest.raises(DataError, match="more than 20 files and folders: give the matrix folder itself"):
        read_dataset(tmp_path / "root")
    assert deep.is_dir()


def test_tables_saved_by_excel_in_its_own_encodings_are_read(tmp_path, small):
    """Excel on Windows saves a CSV in Windows-1252 ("Müller glia" as one byte 0xFC) and "Unicode
    text" as tab-separated UTF-16: a cell-type table beside a 10x matrix in Windows-1252 was left out
    ("could not be read as a table"), and a count table so saved was refused with a UTF-8 codec error."""
    from cellannot_core.data import summarize_dataset

    a = small.copy()
    a.obs_names = [f"{'ACGT'[i % 4] * 3}{i:05d}-1" for i in range(a.n_obs)]
    types = np.where(a.obs["cell_type"].astype(str) == "type0", "Müller glia", "Cellule épithéliale")
    folder = write_mtx_dir(a, tmp_path / "tenx")
    pd.DataFrame({"barcode": a.obs_names, "celltype": types}).to_csv(folder / "meta.csv", index=False,
                                                                     encoding="cp1252")
    got = read_dataset(folder)
    assert list(got.obs["celltype"]) == list(types)
    assert any("gave 1 column of cell annotations to 60 of the 60 cells" in n for n in summarize_dataset(got)["notes"])
    table = pd.DataFrame(_dense(a), index=a.obs_names, columns=a.var_names)
    table.insert(0, "cell_type", types)
    for enc, sep, name in (("cp1252", ",", "excel.csv"), ("utf-16", "\t", "unicode.txt"), ("latin-1", ",", "l1.csv")):
        table.to_csv(tmp_path / name, sep=sep, encoding=enc)
        got = read_dataset(tmp_path / name)
        _assert_same(got, a)
        assert list(got.obs["cell_type"]) == list(types), enc


def test_a_loom_file_is_read_without_loompy(tmp_path):
    """Loom files (velocyto's output, the Linnarsson lab's mouse brain atlas, SCope, the Human Cell
    Atlas's older matrices) were refused with a hint to install loompy and convert them. They are read
    with h5py: the main matrix, the cells' and genes' names and the cells' attributes (a cluster
    name a reference's labels can come from), guarded as an .h5ad is."""
    import h5py

    from cellannot_core.data.prepare import read_notes
    from conftest import make_synthetic, write_loom

    a = make_synthetic(120, 50, 3, seed=4)
    path = tmp_path / "atlas.loom"
    write_loom(a, path, layers=("spliced", "unspliced"))
    got = read_dataset(path, name="reference")
    assert (got.n_obs, got.n_vars) == (a.n_obs, a.n_vars)
    assert list(got.obs_names) == list(a.obs_names) and list(got.var_names) == list(a.var_names)
    np.testing.assert_array_equal(got.X.toarray(), np.asarray(a.X.toarray() if sp.issparse(a.X) else a.X))
    assert (got.obs["cell_type"].astype(str).to_numpy() == a.obs["cell_type"].astype(str).to_numpy()).all()
    assert any("main matrix, its layers left out (spliced, unspliced)" in n for n in read_notes(got))
    with h5py.File(path, "a") as f:  # one that reaches outside itself is refused, as an .h5ad is
        f["col_attrs"]["Secret"] = h5py.ExternalLink("/etc/passwd", "/")
    with pytest.raises(DataError, match="external link"):
        read_dataset(path)
    with h5py.File(tmp_path / "huge.loom", "w") as f:  # compressed zeros: megabytes that read for hours
        f.create_dataset("matrix", shape=(60_000, 2_000_000), dtype=np.float32, chunks=(1000, 1000), compression="gzip")
        f.create_group("row_attrs")["Gene"] = np.array([f"g{i}" for i in range(60_000)], dtype="S")
    with pytest.raises(DataError, match="as stored .dense., more than 10 times"):
        read_dataset(tmp_path / "huge.loom")
    with h5py.File(tmp_path / "plain.loom", "w") as f:
        f["matrix"] = np.ones((5, 4), dtype=np.float32)  # no gene names: one line, not a numbered gene list
    with pytest.raises(DataError, match="names its genes in none"):
        read_dataset(tmp_path / "plain.loom")
