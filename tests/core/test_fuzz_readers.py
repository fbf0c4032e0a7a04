"""Fuzz every reader with generated malformed files (issue 14).

Valid files of every supported format (``.h5ad``, 10x ``.h5``, 10x matrix folders plain and
gzipped, ``.zip`` / ``.tar.gz`` of a folder, ``.csv``, ``.tsv.gz``; since 2026-12-06 kallisto | bustools
and Parse Biosciences folders, MuData ``.h5mu``, featureCounts' ``.txt`` and ``.loom``) are broken in seeded ways:
emptied, truncated, bytes flipped, replaced by noise of the same length, and a list of
structural faults (missing HDF5 members, ragged tables, matrix headers that lie, indices out of
range, listings of the wrong length). Each broken input goes through the three ways in:

* the reader (:func:`cellannot_core.data.read_dataset`): it returns an AnnData or raises
  ``DataError``, nothing else;
* the app's upload handler (:func:`ui.data.handle_upload`): it returns ``None`` or one line;
* the command line (``annotate --reference <broken> ...``, in-process): exit 0, or exit 2 with
  one ``error:`` line, never "internal error" or a traceback.

No message may quote the file's contents (a marker is planted in gene names, cell names and
values). The cases run in a child process, so a crash of a native library (h5py, zlib) fails
this test naming the case instead of killing the test run.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MARKER = "ZQXSECRET"


# ------------------------------------------------------------------------------ valid files


def _base_adata():
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n, g = 40, 30
    X = rng.poisson(2.0, size=(n, g)).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["A", "B"], n))},
                       index=[f"{MARKER}cell{i}" for i in range(n)])
    var = pd.DataFrame({"gene_ids": [f"ENSG{j:011d}" for j in range(g)]}, index=[f"{MARKER}G{j}" for j in range(g)])
    return ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=var)


def _mtx_files(a, gz: bool) -> dict[str, bytes]:
    import gzip

    import scipy.io
    import scipy.sparse as sp

    buf = io.BytesIO()
    scipy.io.mmwrite(buf, sp.coo_matrix(a.X.T.astype(np.int64)), field="integer")
    files = {
        "matrix.mtx": buf.getvalue(),
        "features.tsv": "".join(f"{i}\t{n}\tGene Expression\n" for i, n in zip(a.var["gene_ids"], a.var_names)).encode(),
        "barcodes.tsv": "".join(f"{b}\n" for b in a.obs_names).encode(),
    }
    if gz:
        return {f"{k}.gz": gzip.compress(v, mtime=0) for k, v in files.items()}
    return files


def _kb_files(a) -> dict[str, bytes]:
    """A kallisto | bustools folder: cells x genes, its listings beside it."""
    import scipy.io
    import scipy.sparse as sp

    buf = io.BytesIO()
    scipy.io.mmwrite(buf, sp.coo_matrix(a.X.astype(np.int64)), field="integer")
    return {"cells_x_genes.mtx": buf.getvalue(),
            "cells_x_genes.genes.txt": "".join(f"{i}\n" for i in a.var["gene_ids"]).encode(),
            "cells_x_genes.genes.names.txt": "".join(f"{n}\n" for n in a.var_names).encode(),
            "cells_x_genes.barcodes.txt": "".join(f"{b}\n" for b in a.obs_names).encode()}


def _parse_files(a) -> dict[str, bytes]:
    """A Parse Biosciences DGE folder, the cell types in its cell_metadata.csv."""
    import pandas as pd

    kb = _kb_files(a)
    genes = pd.DataFrame({"gene_id": a.var["gene_ids"], "gene_name": a.var_names, "genome": "hg38"})
    cells = pd.DataFrame({"bc_wells": a.obs_names, "sample": "s1", "cell_type": a.obs["cell_type"].astype(str)})
    return {"count_matrix.mtx": kb["cells_x_genes.mtx"], "all_genes.csv": genes.to_csv(index=False).encode(),
            "cell_metadata.csv": cells.to_csv(index=False).encode()}


def _h5mu_bytes(a, path: Path) -> bytes:
    """A MuData file: the RNA modality and a protein one, the cell types in the joint obs."""
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    rna = a.copy()
    joint = pd.DataFrame({"cell_type": rna.obs.pop("cell_type").astype(str)}, index=rna.obs_names)
    with h5py.File(path, "w") as f:
        write_elem(f, "mod/rna", rna)
        write_elem(f, "mod/prot", rna[:, :3].copy())
        write_elem(f, "obs", joint)
    return path.read_bytes()


def _loom_bytes(a, path: Path) -> bytes:
    from conftest import write_loom

    write_loom(a, path, layers=("spliced",))
    return path.read_bytes()


def _featurecounts(a) -> bytes:
    """featureCounts' table: a '#' line, Geneid, five columns of gene facts, a column per sample."""
    df = a.to_df().T
    for i, (k, v) in enumerate({"Chr": "chr1", "Start": "1;5", "End": "4;9", "Strand": "+;+", "Length": 8}.items()):
        df.insert(i, k, v)
    return b"# Program:featureCounts v2.0.1\n" + df.rename_axis("Geneid").to_csv(sep="\t").encode()


def _write_10x_h5(a, path: Path) -> None:
    import h5py
    import scipy.sparse as sp

    X = sp.csr_matrix(a.X.astype(np.int32))
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"], m["indices"], m["indptr"] = X.data, X.indices, X.indptr
        m["shape"] = np.array([a.n_vars, a.n_obs], dtype=np.int32)
        m["barcodes"] = np.array(list(a.obs_names), dtype="S")
        feats = m.create_group("features")
        feats["id"] = np.array(list(a.var["gene_ids"]), dtype="S")
        feats["name"] = np.array(list(a.var_names), dtype="S")
        feats["feature_type"] = np.array(["Gene Expression"] * a.n_vars, dtype="S")
        feats["genome"] = np.array(["GRCh38"] * a.n_vars, dtype="S")


def _archive(files: dict[str, bytes], kind: str) -> bytes:
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for n, data in files.items():
                zf.writestr(f"sample/{n}", data)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for n, data in files.items():
                info = tarfile.TarInfo(f"sample/{n}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _valid_files(tmp: Path) -> dict[str, bytes | dict[str, bytes]]:
    """Format name -> file bytes (or, for 10x folders, file name -> bytes)."""
    import gzip

    a = _base_adata()
    a.write_h5ad(tmp / "base.h5ad")
    _write_10x_h5(a, tmp / "base.h5")
    df = a.to_df()
    csv = df.to_csv().encode()
    return {
        "h5ad": (tmp / "base.h5ad").read_bytes(),
        "h5": (tmp / "base.h5").read_bytes(),
        "mtx": _mtx_files(a, gz=False),
        "mtx.gz": _mtx_files(a, gz=True),
        "zip": _archive(_mtx_files(a, gz=True), "zip"),
        "tar.gz": _archive(_mtx_files(a, gz=False), "tar.gz"),
        "csv": csv,
        "tsv.gz": gzip.compress(df.to_csv(sep="\t").encode(), mtime=0),
        "kb": _kb_files(a),
        "parse": _parse_files(a),
        "h5mu": _h5mu_bytes(a, tmp / "base.h5mu"),
        "loom": _loom_bytes(a, tmp / "base.loom"),
        "txt": _featurecounts(a),
    }


# ------------------------------------------------------------------------------ broken files


def _mutations(data: bytes, rng: np.random.Generator) -> dict[str, bytes]:
    n = len(data)
    out = {"empty": b"", "one byte": data[:1]}
    for frac in (0.1, 0.5, 0.9):
        out[f"truncated at {int(frac * 100)}%"] = data[: int(n * frac)]
    out["last byte cut"] = data[:-1]
    for k in range(3):
        b = bytearray(data)
        for pos in rng.integers(0, n, size=max(4, n // 200)):
            b[pos] = int(rng.integers(0, 256))
        out[f"bytes flipped #{k}"] = bytes(b)
    out["noise"] = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
    return out


def _structural_h5(tmp: Path, valid_h5ad: bytes, valid_h5: bytes) -> dict[str, tuple[str, bytes]]:
    """HDF5 files that are valid HDF5 but not what the reader expects."""
    import h5py

    out: dict[str, tuple[str, bytes]] = {}

    def variant(name: str, src: bytes, ext: str, edit) -> None:
        p = tmp / f"struct_{len(out)}{ext}"
        p.write_bytes(src)
        with h5py.File(p, "a") as f:
            edit(f)
        out[name] = (ext, p.read_bytes())

    def drop(key):
        return lambda f: f.__delitem__(key)

    def replace(key, value):
        def edit(f):
            del f[key]
            f[key] = value
        return edit

    variant("h5ad without X/indptr", valid_h5ad, ".h5ad", drop("X/indptr"))
    variant("h5ad without obs", valid_h5ad, ".h5ad", drop("obs"))
    variant("h5ad with obs as a dataset", valid_h5ad, ".h5ad", replace("obs", np.arange(3)))
    variant("h5ad X indices out of range", valid_h5ad, ".h5ad",
            lambda f: f["X/indices"].__setitem__(slice(0, 5), 10**6))
    variant("h5ad X of text", valid_h5ad, ".h5ad", replace("X", np.array([b"a", b"b"])))

    def counts_beside(where: str) -> bytes:  # X log-normalised, the counts in layers['counts'] or raw.X
        import anndata as ad

        a = _base_adata()
        counts = a.X.copy()
        a.X = np.log1p(counts.toarray())
        if where == "layers":
            a.layers["counts"] = counts
        else:
            a.raw = ad.AnnData(X=counts, var=a.var)
        p = tmp / f"beside_{where}.h5ad"
        a.write_h5ad(p)
        return p.read_bytes()

    # found 2026-12-06: only X was checked, and these crashed the process (scipy reads past the arrays)
    variant("h5ad layers/counts indices out of range", counts_beside("layers"), ".h5ad",
            lambda f: f["layers/counts/indices"].__setitem__(slice(0, 5), 10**6))
    variant("h5ad raw/X indices out of range", counts_beside("raw"), ".h5ad",
            lambda f: f["raw/X/indices"].__setitem__(slice(0, 5), 10**6))
    variant("h5ad shape attribute lies", valid_h5ad, ".h5ad",
            lambda f: f["X"].attrs.__setitem__("shape", np.array([10**9, 10**9])))
    variant("10x h5 without features", valid_h5, ".h5", drop("matrix/features"))
    variant("10x h5 shape lies", valid_h5, ".h5", replace("matrix/shape", np.array([3, 3], dtype=np.int32)))
    variant("10x h5 indptr too short", valid_h5, ".h5", replace("matrix/indptr", np.array([0, 1], dtype=np.int64)))
    variant("empty HDF5 file", valid_h5ad, ".h5ad", lambda f: [f.__delitem__(k) for k in list(f.keys())])
    return out


def _structural_mtx(files: dict[str, bytes]) -> dict[str, dict[str, bytes]]:
    hdr = b"%%MatrixMarket matrix coordinate integer general\n"
    return {
        "mtx entries fewer than declared": {**files, "matrix.mtx": hdr + b"30 40 500\n1 1 3\n"},
        "mtx index out of range": {**files, "matrix.mtx": hdr + b"30 40 1\n99 99 3\n"},
        "mtx negative size": {**files, "matrix.mtx": hdr + b"-30 40 1\n1 1 3\n"},
        "mtx text values": {**files, "matrix.mtx": hdr + b"30 40 1\n1 1 " + MARKER.encode() + b"\n"},
        "mtx no header": {**files, "matrix.mtx": b"1 1 3\n2 2 4\n"},
        "features too short": {**files, "features.tsv": files["features.tsv"].split(b"\n", 3)[-1]},
        "barcodes empty": {**files, "barcodes.tsv": b""},
        "features binary": {**files, "features.tsv": bytes(range(256)) * 4},
        "no barcodes file": {k: v for k, v in files.items() if k != "barcodes.tsv"},
    }


def _structural_tables(csv: bytes) -> dict[str, bytes]:
    lines = csv.split(b"\n")
    return {
        "ragged rows": b"\n".join(lines[:3] + [lines[3] + b",1,2,3"] + lines[4:]),
        "header only": lines[0] + b"\n",
        "text values": b"\n".join(lines[:2] + [lines[2].replace(b",0", b"," + MARKER.encode(), 1)] + lines[3:]),
        "one column": b"cell\n" + b"\n".join(f"c{i}".encode() for i in range(5)),
        "binary zeros": b"\x00" * 4096,
        "utf-16 text": csv.decode().encode("utf-16"),
        "quotes never closed": lines[0] + b'\n"' + lines[1],
        "huge numbers": b"\n".join(lines[:2] + [lines[2].replace(b",0", b",1e400", 1)] + lines[3:]),
    }


def build_cases(tmp: Path) -> list[dict]:
    """Write every broken input under ``tmp`` and return the manifest the child process runs."""
    rng = np.random.default_rng(14)
    valid = _valid_files(tmp)
    cases: list[dict] = []

    def add_file(name: str, ext: str, data: bytes) -> None:
        p = tmp / f"case{len(cases):03d}{ext}"
        p.write_bytes(data)
        cases.append({"name": name, "path": str(p), "upload": (p.name, str(p))})

    def add_folder(name: str, files: dict[str, bytes]) -> None:
        d = tmp / f"case{len(cases):03d}"
        d.mkdir()
        for fn, data in files.items():
            (d / fn).write_bytes(data)
        z = tmp / f"case{len(cases):03d}.zip"
        z.write_bytes(_archive(files, "zip"))
        cases.append({"name": name, "path": str(d), "upload": (z.name, str(z))})

    for fmt, data in valid.items():
        if isinstance(data, dict):
            add_folder(f"{fmt}: valid", data)
            for fn in data:
                for mname, broken in _mutations(data[fn], rng).items():
                    if mname in ("one byte", "truncated at 10%"):
                        continue  # enough of these through the single files
                    add_folder(f"{fmt}: {fn} {mname}", {**data, fn: broken})
        else:
            add_file(f"{fmt}: valid", f".{fmt}", data)
            for mname, broken in _mutations(data, rng).items():
                add_file(f"{fmt}: {mname}", f".{fmt}", broken)
    for name, (ext, data) in _structural_h5(tmp, valid["h5ad"], valid["h5"]).items():
        add_file(name, ext, data)
    for name, files in _structural_mtx(valid["mtx"]).items():
        add_folder(name, files)
    for name, data in _structural_tables(valid["csv"]).items():
        add_file(f"csv: {name}", ".csv", data)
    return cases


# ------------------------------------------------------------------------------ the child process


def _run_cases(manifest: Path, results: Path) -> None:
    """Child process: every case through the reader, the upload handler and the CLI."""
    import contextlib
    import warnings

    warnings.filterwarnings("ignore")
    from cellannot_core import cli
    from cellannot_core.data import read_dataset
    from cellannot_core.errors import DataError
    from ui import data as data_ui

    cases = json.loads(manifest.read_text())
    query = Path(manifest.parent / "query.h5ad")
    _base_adata().write_h5ad(query)
    with open(results, "w") as out:
        for case in cases:
            out.write(json.dumps({"start": case["name"]}) + "\n")
            out.flush()
            rec: dict = {"name": case["name"]}
            try:
                a = read_dataset(case["path"], name="reference")
                rec["read"] = f"ok {a.n_obs}x{a.n_vars}"
            except DataError as err:
                rec["read"] = "DataError"
                rec["read_msg"] = str(err)
            except BaseException as err:  # noqa: BLE001 - what the test is looking for
                rec["read"] = f"CRASH {type(err).__name__}"
                rec["read_msg"] = str(err)[:300]
            fname, fpath = case["upload"]
            try:
                msg = data_ui.handle_upload("reference", Path(fpath).read_bytes(), fname)
                rec["upload"] = "ok" if msg is None else "error"
                rec["upload_msg"] = msg
            except BaseException as err:  # noqa: BLE001
                rec["upload"] = f"CRASH {type(err).__name__}"
                rec["upload_msg"] = str(err)[:300]
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                try:
                    rc = cli.main(["annotate", "--reference", case["path"], "--query", str(query),
                                   "--label-key", "cell_type", "--model", "logreg", "--min-cells-per-class", "2",
                                   "--min-shared-genes", "5", "--n-top-genes", "20",
                                   "--out", str(manifest.parent / "out.h5ad")])
                except BaseException as err:  # noqa: BLE001
                    rc = f"CRASH {type(err).__name__}: {err}"
            rec["cli_rc"] = rc
            rec["cli_err"] = stderr.getvalue()
            out.write(json.dumps(rec) + "\n")
            out.flush()


if __name__ == "__main__":
    _run_cases(Path(sys.argv[1]), Path(sys.argv[2]))


# ------------------------------------------------------------------------------ the test


def test_no_malformed_file_crashes_a_reader_the_app_or_the_cli(tmp_path):
    cases = build_cases(tmp_path)
    assert len(cases) > 100
    manifest, results = tmp_path / "manifest.json", tmp_path / "results.jsonl"
    manifest.write_text(json.dumps(cases))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               CELLANNOT_RUNS=str(tmp_path / "runs"), CELLANNOT_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, str(manifest), str(results)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    lines = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    done = [r for r in lines if "start" not in r]
    if proc.returncode != 0:
        started = [r["start"] for r in lines if "start" in r]
        pytest.fail(f"the fuzz process died (exit {proc.returncode}) during case {started[-1] if started else '?'!r}:"
                    f"\n{proc.stderr[-3000:]}")
    assert len(done) == len(cases)
    problems = []
    for r in done:
        name = r["name"]
        if r["read"].startswith("CRASH"):
            problems.append(f"{name}: reader raised {r['read']}: {r.get('read_msg')}")
        if r["upload"].startswith("CRASH"):
            problems.append(f"{name}: upload handler raised {r['upload']}: {r.get('upload_msg')}")
        if r["cli_rc"] not in (0, 2):
            problems.append(f"{name}: CLI exit {r['cli_rc']}: {r['cli_err'][-300:]}")
        said = r["cli_err"].strip().splitlines()  # progress lines ("reading data"), then the error
        errors = [x for x in said if x.startswith("error:")]
        err = errors[-1] if errors else ""
        if "Traceback" in r["cli_err"] or (r["cli_rc"] == 2 and (len(errors) != 1 or said[-1] != err
                                                                  or "internal error" in err)):
            problems.append(f"{name}: CLI said {r['cli_err'][-300:]!r}")
        for where, msg in (("reader", r.get("read_msg")), ("upload", r.get("upload_msg")), ("CLI", err)):
            if msg and ("\n" in msg.strip() or MARKER in msg):
                problems.append(f"{name}: {where} message is not one clean line: {msg[:300]!r}")
        if name.endswith(": valid") and not r["read"].startswith("ok"):
            problems.append(f"{name}: the valid file did not read: {r.get('read_msg')}")
    n_refused = sum(r["read"] == "DataError" for r in done)
    print(f"\nfuzz: {len(done)} inputs, {n_refused} refused with one line, {len(done) - n_refused} read")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)
