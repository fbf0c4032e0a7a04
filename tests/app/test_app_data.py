"""Data page: uploads (handler and widget), bad files, server paths, label picker, gene overlap, QC."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import shown
from ui import data as data_ui
from ui.state import StateKeys, WidgetKeys

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
SMALL = ROOT / "tests" / "data" / "pbmc3k_small.h5ad"
DATA_PAGE = "pages/data.py"


@pytest.fixture(autouse=True)
def _runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLANNOT_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("CELLANNOT_DATA_ROOT", raising=False)


def _data_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    return at.switch_page(DATA_PAGE).run()


def _errors(at: AppTest) -> str:
    return " | ".join(shown(e.value) for e in at.error)


def _upload(at: AppTest, role: str, adata, path: Path) -> AppTest:
    """``adata`` written to ``path`` and uploaded as the ``role`` through the Data page's widget."""
    adata.write_h5ad(path)
    at.file_uploader(key=WidgetKeys.UPLOAD.format(role=role)).set_value(
        (path.name, path.read_bytes(), "application/octet-stream"))
    return at.run()


def test_empty_data_page_says_what_to_do():
    at = _data_page()
    assert not at.exception
    assert any("No reference loaded" in i.value for i in at.info)
    assert any("2,000 MB" in c.value for c in at.caption)  # the upload limit is stated


def test_upload_handler_reports_garbage_in_plain_words():
    at = AppTest.from_string(
        "from ui.data import handle_upload\n"
        "import streamlit as st\n"
        "err = handle_upload('reference', b'this is not hdf5 at all', 'x.h5ad')\n"
        "st.error(err) if err else st.success('loaded')\n", default_timeout=30).run()
    assert not at.exception
    msg = _errors(at)
    assert "could not read reference file 'x.h5ad'" in msg and "Traceback" not in msg


def test_garbage_upload_through_the_widget_shows_error_not_traceback():
    at = _data_page()
    at.file_uploader(key=WidgetKeys.UPLOAD.format(role="reference")).set_value(
        ("x.h5ad", b"\x00garbage" * 10, "application/octet-stream"))
    at.run()
    assert not at.exception
    assert "could not read reference file 'x.h5ad'" in _errors(at)
    assert "is not HDF5 inside" in _errors(at) and len(_errors(at)) < 300  # one line, not the format list
    assert at.session_state[StateKeys.REFERENCE] is None
    # a good file, then a damaged one: the page says which stays loaded
    at.file_uploader(key=WidgetKeys.UPLOAD.format(role="reference")).set_value(
        ("good.h5ad", SMALL.read_bytes(), "application/octet-stream"))
    at.run()
    assert at.session_state[StateKeys.REFERENCE] is not None and not at.error
    at.file_uploader(key=WidgetKeys.UPLOAD.format(role="reference")).set_value(
        ("y.h5ad", SMALL.read_bytes()[:5000], "application/octet-stream"))
    at.run()
    assert "cut short" in _errors(at) and "The reference loaded before, good.h5ad, is kept." in _errors(at)


def test_unsupported_extension_and_bad_path():
    assert "unsupported file type" in data_ui.handle_upload("query", b"abc", "cells.docx")
    at = _data_page()
    at.text_input(key=WidgetKeys.PATH.format(role="query")).set_value("/nonexistent/q.h5ad")
    at.button(key=WidgetKeys.PATH_BUTTON.format(role="query")).click().run()
    assert not at.exception
    assert "does not exist" in _errors(at)


def test_upload_and_path_load_then_picker_overlap_and_check():
    at = _data_page()
    at.file_uploader(key=WidgetKeys.UPLOAD.format(role="reference")).set_value(
        ("ref.h5ad", (ROOT / "assets" / "kang_pbmc_example_sce_1556.h5ad").read_bytes(), "application/octet-stream"))
    at.run()
    assert not at.exception, at.exception
    assert at.session_state[StateKeys.REFERENCE].n_obs == 1556
    # the label picker offers the candidate columns and defaults to the best guess
    picker = at.selectbox(key=WidgetKeys.LABEL_PICKER)
    assert "cell_type_harmonized" in picker.options
    picker.set_value("cell_type_harmonized").run()
    assert at.session_state[StateKeys.LABEL_KEY] == "cell_type_harmonized"
    assert any(df.value.shape[0] == 5 for df in at.dataframe)  # class counts of the reference
    # the query from a server path
    at.text_input(key=WidgetKeys.PATH.format(role="query")).set_value(str(SMALL))
    at.button(key=WidgetKeys.PATH_BUTTON.format(role="query")).click().run()
    assert not at.exception, at.exception
    assert at.session_state[StateKeys.QUERY] is not None
    md = " ".join(m.value for m in at.markdown)
    assert "Gene overlap" in md and "Good overlap" in md
    said = " ".join(str(p.proto.text) for p in at.get("progress"))
    assert "1,039 of 1,267 reference genes found in the query (82%)" in said, said  # (rounded down: 2,500 of 2,511
    # were "100%", found 2026-12-07)
    assert any(c.value.startswith("Matched by exact symbols") for c in at.caption)
    # QC options flow into the state used for training
    at.checkbox(key=WidgetKeys.QC_ON).check().run()
    assert at.session_state[StateKeys.QC] == {"min_genes": 200, "min_counts": None, "max_pct_mito": 20.0}
    assert not at.exception  # the pair check ran on load, no button needed
    assert any(s.value.startswith("Ready:") for s in at.success), _errors(at)


def test_check_shows_core_validation_message():
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.button(key=WidgetKeys.DEMO_BUTTON).click().run()
    at.switch_page(DATA_PAGE).run()
    at.selectbox(key=WidgetKeys.LABEL_PICKER).set_value("group_id").run()  # 2 classes: fine
    at.checkbox(key=WidgetKeys.QC_ON).check().run()
    at.number_input(key=WidgetKeys.QC_MIN_GENES).set_value(100_000).run()  # removes every cell
    assert not at.exception
    assert "quality control removed all" in _errors(at)


def test_traffic_light_thresholds():
    assert data_ui.traffic_light(0.9) == "green"
    assert data_ui.traffic_light(0.9, approximate=True) == "yellow"
    assert data_ui.traffic_light(0.3) == "yellow"
    assert data_ui.traffic_light(0.05) == "red"
    assert data_ui.traffic_light(0.9, ok=False) == "red"


def test_path_outside_data_root_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("CELLANNOT_DATA_ROOT", str(tmp_path))
    assert "only reads files under" in data_ui.allowed_path(SMALL)
    assert data_ui.allowed_path(tmp_path / "inside.h5ad") is None
    # the answer is the same whether or not the path exists
    assert data_ui.allowed_path(Path("/etc/passwd")) == data_ui.allowed_path(Path("/etc/no_such_file"))


def test_a_10x_folder_in_the_data_root_may_not_link_out_of_it(monkeypatch, tmp_path):
    """The folder's own path was checked, not the files the 10x reader opens inside it by name."""
    root, outside = tmp_path / "data", tmp_path / "secret"
    (root / "pbmc").mkdir(parents=True)
    outside.mkdir()
    (outside / "barcodes.tsv").write_text("private\n")
    (root / "pbmc" / "matrix.mtx").write_text("%%MatrixMarket matrix coordinate integer general\n1 1 0\n")
    (root / "pbmc" / "features.tsv").write_text("g1\tG1\n")
    monkeypatch.setenv("CELLANNOT_DATA_ROOT", str(root))
    assert data_ui.allowed_path(root / "pbmc") is None
    (root / "pbmc" / "barcodes.tsv").symlink_to(outside / "barcodes.tsv")
    for given in (root / "pbmc", root / "pbmc" / "matrix.mtx", root):
        assert "only reads files under" in data_ui.allowed_path(given)
    (root / "pbmc" / "barcodes.tsv").unlink()
    (root / "pbmc" / "barcodes.tsv").symlink_to(root / "pbmc" / "features.tsv")  # a link inside is fine
    assert data_ui.allowed_path(root / "pbmc") is None
    # a link past the entries looked at was let through (2026-12-06): too many entries are refused
    monkeypatch.setattr(data_ui, "LINKS_CHECKED", 2)
    assert "too many to check" in data_ui.allowed_path(root / "pbmc")


def test_server_paths_are_off_on_a_shared_server_without_a_data_root(monkeypatch):
    """Issue 14: with CELLANNOT_DATA_ROOT unset, 'Path on the server' read any file of the server."""
    monkeypatch.delenv("CELLANNOT_DATA_ROOT", raising=False)
    monkeypatch.setattr(data_ui, "server_is_local", lambda: True)
    assert data_ui.allowed_path(SMALL) is None  # one person on their own machine
    monkeypatch.setattr(data_ui, "server_is_local", lambda: False)
    msg = data_ui.allowed_path(Path("/etc/passwd"))
    assert "off on a shared server" in msg and "CELLANNOT_DATA_ROOT" in msg
    assert data_ui.handle_path("reference", "/etc/passwd") == msg


def test_a_visitor_through_a_proxy_or_a_shared_server_is_not_the_machines_user(monkeypatch):
    """Found 2026-12-07 (a probe of the app served to a lab): an app listening on 127.0.0.1 is reached
    by a lab through a reverse proxy or a tunnel, and every visitor counted as local: any of them
    could open and delete the command line's runs and read any file by its path."""
    from types import SimpleNamespace

    from ui import session

    def visitor(headers: dict, ip: str | None, address: str = "127.0.0.1") -> bool:
        fake = SimpleNamespace(context=SimpleNamespace(headers=headers, ip_address=ip),
                               get_option=lambda key: address)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(session, "st", fake)
            return session.server_is_local()

    monkeypatch.delenv("CELLANNOT_SHARED", raising=False)
    assert visitor({}, "127.0.0.1") and visitor({}, "::1")  # the machine's user, in a browser on it
    assert not visitor({"X-Forwarded-For": "10.0.0.7"}, "127.0.0.1")  # a reverse proxy on the machine
    assert not visitor({"Forwarded": "for=10.0.0.7"}, "127.0.0.1")
    assert not visitor({}, "10.0.0.7")  # (an app listening elsewhere than 127.0.0.1 is not local either)
    assert not visitor({}, "127.0.0.1", address="0.0.0.0")
    # a second probe: proxies that add other headers, or none at all (nginx's plain proxy_pass)
    assert not visitor({"Via": "1.1 proxy"}, "127.0.0.1") and not visitor({"Cf-Connecting-Ip": "1.2.3.4"}, None)
    local_page = {"Origin": "http://127.0.0.1:8501", "Host": "127.0.0.1:8501"}
    assert visitor(local_page, "127.0.0.1") and visitor({"Origin": "http://localhost:8501"}, None)
    assert not visitor({"Origin": "https://lab.example.org", "Host": "127.0.0.1:8501"}, "127.0.0.1")
    assert not visitor({"Origin": "http://127.0.0.1:8501", "Host": "lab.example.org"}, "127.0.0.1")
    monkeypatch.setenv("CELLANNOT_SHARED", "1")  # a tunnel looks local: the server is declared shared
    assert not visitor({}, "127.0.0.1")


def test_demo_pair_reports_types_missing_from_reference():
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.button(key=WidgetKeys.DEMO_BUTTON).click().run()
    at.switch_page(DATA_PAGE).run()
    assert not at.exception
    assert any("NK (155), DC (32), Platelet (14)" in i.value and "201 cells" in i.value for i in at.info)
    assert at.selectbox(key=WidgetKeys.QUERY_LABEL_PICKER).value == "cell_type_harmonized"


def test_a_type_the_reference_has_too_few_cells_of_counts_as_missing():
    """Found 2026-12-07 (a probe of the results pages): a type with fewer reference cells than a run keeps (alpha,
    9 cells in mouse pancreas donor 1) is left out when training, and its query cells are Unknown, but the Data
    page counted only the types the reference has no cell of (133 cells said, 343 in the run's accuracy)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"t": ["a"] * 30 + ["b"] * 20 + ["rare"] * 4})
    qry = pd.DataFrame({"t": rng.permutation(["a"] * 40 + ["rare"] * 25 + ["new"] * 5)})
    both = [type("A", (), {"obs": df})() for df in (ref, qry)]
    assert data_ui.labels_missing_from_reference(*both, "t", "t") == {"rare": 25, "new": 5}
    note = data_ui.novel_types_note(*both, "t", "t")
    assert "rare (25), new (5): 30 cells a good model calls *Unknown* (with rare, which the reference has fewer than " \
           "10 cells of: a run leaves such a type out)." in note
    # a query whose labels name no reference type is told so, not that all its cells are of novel types (found
    # 2026-12-07: "Query types the reference lacks: Naive CD4 T (697), ... 2,638 cells", names of the same types)
    other = type("A", (), {"obs": pd.DataFrame({"t": ["A cell"] * 10 + ["B cell"] * 5})})()
    note = data_ui.novel_types_note(both[0], other, "t", "t")
    assert note.startswith("None of the query's labels in t names a reference type (e.g. A cell, B cell against the "
                           "reference's a, b)"), note


def _log_normalised_reference_uploaded(tmp_path, *, of_counts: bool):
    """The data page with a log-normalised reference file uploaded, no counts anywhere in it;
    ``of_counts``: log1p of normalised counts as scanpy leaves them (else values moved cell by cell
    and gene by gene, which cannot be turned back into counts)."""
    import anndata as ad
    import scanpy as sc

    from conftest import not_of_counts

    a = ad.read_h5ad(SMALL)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    if not of_counts:
        a.X = not_of_counts(a.X)
    a.raw = None
    a.layers.clear()
    at = _upload(_data_page(), "reference", a, tmp_path / "lognorm.h5ad")
    assert not at.exception, at.exception
    return at


def test_count_models_warning_for_data_without_counts(tmp_path):
    """A log-normalised file with no raw counts anywhere: the data page says the count models
    cannot use it (and names them, from the registry); a counts file gets no such warning."""
    from ui.widgets import count_model_names

    at = _log_normalised_reference_uploaded(tmp_path, of_counts=False)
    warned = [w.value for w in at.warning if "No raw counts" in w.value]
    assert len(warned) == 1 and count_model_names() and all(n in warned[0] for n in count_model_names())
    at.file_uploader(key=WidgetKeys.UPLOAD.format(role="query")).set_value(
        ("counts.h5ad", SMALL.read_bytes(), "application/octet-stream"))
    at.run()
    assert len([w for w in at.warning if "No raw counts" in w.value]) == 1  # only the reference warns


def test_a_log_normalised_file_gets_its_counts_back_and_says_so(tmp_path):
    """A file saved after normalize_total + log1p, with no counts anywhere: the data page says the
    counts were recovered from those values, and no count-model warning appears."""
    at = _log_normalised_reference_uploaded(tmp_path, of_counts=True)
    assert any("Will use:** raw counts recovered from the log1p values of X" in m.value for m in at.markdown), \
        [m.value for m in at.markdown]
    assert not [w for w in at.warning if "No raw counts" in w.value]


def test_batch_column_is_offered_checked_and_passed_to_training(tmp_path):
    """The demo reference has four samples (two donors, control and IFN-beta stimulated): the
    Data page offers its sample column as the batch key, the check counts the batches, and the
    Train page's options carry it (a run's request records it, so it is run again the same way)."""
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.button(key=WidgetKeys.DEMO_BUTTON).click().run()
    at.switch_page(DATA_PAGE).run()
    picker = at.selectbox(key=WidgetKeys.BATCH_PICKER)
    assert picker.value == data_ui.NO_BATCH and picker.options[1] == "sample_id", picker.options
    assert at.session_state[StateKeys.BATCH_KEY] is None
    picker.set_value("sample_id").run()
    assert not at.exception
    assert at.session_state[StateKeys.BATCH_KEY] == "sample_id"
    assert any("5 batches of `sample_id`" in s.value for s in at.success), [s.value for s in at.success]
    at.switch_page("pages/train.py").run()
    at.selectbox(key=WidgetKeys.MODEL).set_value("logreg").run()
    at.button(key=WidgetKeys.START).click().run()
    assert not at.exception
    import json

    requests = list((tmp_path / "runs").glob("*/request.json"))
    assert len(requests) == 1 and json.loads(requests[0].read_text())["options"]["batch_key"] == "sample_id"
    from ui import jobs

    assert jobs.wait(requests[0].parent.name, timeout=120)["state"] == "done"


def test_a_geo_archive_with_a_table_of_cell_types_is_a_reference_on_the_data_page(tmp_path):
    """A 10x matrix zipped with GEO's file names and a table of cell types beside it: the page
    offers the table's column as the label column and says what was joined (a 10x upload had no
    cell annotations, so it could not be a reference)."""
    import gzip
    import io
    import shutil

    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.io
    import scipy.sparse as sp

    ref = ad.read_h5ad(ROOT / "assets" / "kang_pbmc_example_sce_1556.h5ad")
    folder = tmp_path / "GSE1"
    folder.mkdir()
    bcs = [f"BC{i:06d}-1" for i in range(ref.n_obs)]
    buf = io.BytesIO()
    scipy.io.mmwrite(buf, sp.csr_matrix(ref.X).T.tocoo().astype(np.int64), field="integer")
    files = {"GSM1_matrix.mtx.gz": buf.getvalue(),
             "GSM1_features.tsv.gz": "".join(f"{g}\t{g}\tGene Expression\n" for g in ref.var_names).encode(),
             "GSM1_barcodes.tsv.gz": "".join(b + "\n" for b in bcs).encode()}
    for name, data in files.items():
        with gzip.open(folder / name, "wb") as fh:
            fh.write(data)
    pd.DataFrame({"cell": [b[:-2] for b in bcs], "author_type": ref.obs["cell_type_harmonized"].astype(str)}).to_csv(
        folder / "GSE1_metadata.tsv", sep="\t", index=False)
    archive = Path(shutil.make_archive(str(tmp_path / "GSE1"), "zip", folder))
    at = _data_page()
    at.file_uploader(key=WidgetKeys.UPLOAD.format(role="reference")).set_value(
        ("GSE1.zip", archive.read_bytes(), "application/zip"))
    at.run()
    assert not at.exception and not at.error, _errors(at)
    assert "author_type" in at.selectbox(key=WidgetKeys.LABEL_PICKER).options
    assert any("1 column of cell annotations to 1,556 of the 1,556 cells" in i.value for i in at.info)


def test_a_table_read_the_wrong_way_round_is_read_again_and_stays_so(tmp_path, monkeypatch):
    """Samples named after the markers they were sorted on ("CD4_1") look like genes, so a genes x
    samples table was taken as samples x genes; the page said to save it transposed. A button reads
    it the other way round, and a reload keeps it so."""
    import anndata as ad

    from cellannot_core.data.io import INPUT_UNS_KEY
    from ui.session import SESSION_PARAM, TOKEN_KEY

    q = ad.read_h5ad(SMALL)
    q.obs_names = [f"CD{i % 9}_{i}" for i in range(q.n_obs)]
    csv = q.to_df().T.to_csv().encode()
    at = _data_page()
    at.file_uploader(key=WidgetKeys.UPLOAD.format(role="query")).set_value(("sorted.csv", csv, "text/csv"))
    at.run()
    got = at.session_state[StateKeys.QUERY]
    assert got.n_obs == q.n_vars and got.uns[INPUT_UNS_KEY]["orientation"] == "cells_x_genes"  # the wrong guess
    at.button(key=WidgetKeys.FLIP_TABLE.format(role="query")).click().run()
    assert not at.exception and not at.error, _errors(at)
    got = at.session_state[StateKeys.QUERY]
    assert (got.n_obs, got.n_vars) == (q.n_obs, q.n_vars) and list(got.obs_names) == list(q.obs_names)
    at.run()  # the uploader still holds the file: it is not read again as guessed
    assert at.session_state[StateKeys.QUERY].n_obs == q.n_obs
    assert "Its rows are cells" in at.button(key=WidgetKeys.FLIP_TABLE.format(role="query")).label
    again = AppTest.from_file(APP, default_timeout=60)  # a reload
    again.query_params[SESSION_PARAM] = at.session_state[TOKEN_KEY]
    again.run()
    assert again.session_state[StateKeys.QUERY].n_obs == q.n_obs


def test_counts_in_a_layer_of_another_name_are_taken_from_it_and_stay_so(tmp_path):
    """An .h5ad saved after scanpy's scaling, its counts in layers['umis']: the page said to rename the
    layer in Python. A button takes the counts from it (as layer= in Python), and a reload keeps it."""
    import anndata as ad
    import numpy as np
    import scanpy as sc

    from ui.session import SESSION_PARAM, TOKEN_KEY

    q = ad.read_h5ad(SMALL)
    q.layers["umis"] = q.X.copy()
    sc.pp.normalize_total(q, target_sum=1e4)  # scanpy's steps, the counts kept in a layer of their own
    sc.pp.log1p(q)
    sc.pp.scale(q, max_value=10)
    at = _upload(_data_page(), "query", q, tmp_path / "scaled.h5ad")
    # one line and the button: not the reader's advice for Python, nor "pick another model"
    assert not at.error and any("layers['umis'] holds counts: take them" in w.value for w in at.warning), _errors(at)
    at.button(key=WidgetKeys.COUNTS_LAYER.format(role="query", layer="umis")).click().run()
    assert not at.exception and not at.error and not at.warning, _errors(at)
    assert any("raw counts from layers['umis']" in m.value for m in at.markdown)
    # the values described are the layer's, not said to be X's (X is kept as given)
    assert "Values in layers['umis']" in [m.label for m in at.metric], [m.label for m in at.metric]
    got = at.session_state[StateKeys.QUERY]
    np.testing.assert_array_equal(got.X.toarray(), q.layers["umis"].toarray())
    assert all("layers['umis']" not in b.label for b in at.button)  # offered no more
    again = AppTest.from_file(APP, default_timeout=60)  # a reload
    again.query_params[SESSION_PARAM] = at.session_state[TOKEN_KEY]
    again.run()
    np.testing.assert_array_equal(again.session_state[StateKeys.QUERY].X.toarray(), q.layers["umis"].toarray())


def test_a_reference_without_a_label_column_gets_none_picked_for_it(tmp_path):
    """An .h5ad reference whose obs holds only numbers (n_genes, n_counts): the page picked n_genes as
    the cell types, and only the training said it had hundreds of values. Now nothing is picked, the
    page says why, and a column can still be chosen by hand."""
    import anndata as ad
    import numpy as np

    r = ad.read_h5ad(SMALL)
    r.obs = r.obs[[]].assign(n_genes=np.asarray((r.X > 0).sum(1)).ravel(), n_counts=np.asarray(r.X.sum(1)).ravel())
    at = _upload(_data_page(), "reference", r, tmp_path / "numbers.h5ad")
    assert not at.exception
    assert "no obs column that looks like cell-type labels" in _errors(at)
    assert at.session_state[StateKeys.LABEL_KEY] is None
    assert at.selectbox(key=WidgetKeys.LABEL_PICKER).value is None


def test_a_reference_of_one_type_is_told_so_not_given_its_library_column(tmp_path):
    """Found 2026-12-07 (a new user's probe): a reference of beta cells only had its `library` column
    picked as the cell types, "Ready: ... 3 classes", and would have labelled every query cell by
    library. Now nothing is picked, the page says the label columns hold one type, and a column
    named as samples is warned of when picked by hand."""
    import anndata as ad

    r = ad.read_h5ad(SMALL)
    r.obs = r.obs[[]].assign(cell_type="beta", library=(["lib1", "lib2", "lib3"] * r.n_obs)[: r.n_obs])
    at = _upload(_data_page(), "reference", r, tmp_path / "one.h5ad")
    assert not at.exception
    warned = " | ".join(shown(w.value) for w in at.warning)
    assert "cell_type holds one type only (beta)" in warned
    assert at.selectbox(key=WidgetKeys.LABEL_PICKER).value is None
    assert at.session_state[StateKeys.LABEL_KEY] is None
    at.selectbox(key=WidgetKeys.LABEL_PICKER).set_value("library").run()
    assert "library looks like a sample or batch column" in " | ".join(shown(w.value) for w in at.warning)


def test_a_label_written_as_markdown_is_shown_as_it_is(tmp_path):
    """Found 2026-12-07 (a probe of the app served to a lab): a cell type named
    ``![t](http://host/x.png)`` made every visitor's browser fetch that address from the Explain page;
    labels, names and messages quoting them are now shown as text wherever a page writes Markdown."""
    from conftest import make_synthetic
    from ui.state import code, md

    trap = "![t](http://127.0.0.1:9/x.png) [click](http://127.0.0.1:9/) :red[**x**]"
    assert shown(md(trap)) == trap and "](" not in md(trap) and "![" not in md(trap)
    assert code("a`b") == "`a'b`"
    # a second probe: a blank line ended a code span (a column name), and bare addresses became links
    assert "\n" not in code("lab\n\n![c](http://h/x.png)") and "\n" not in md("a\n\nb")
    for bare in ("see http://127.0.0.1:9/x", "www.example.org", "me@example.org"):
        escaped = md(bare)
        assert "://" not in escaped and "www\\." not in escaped and "@e" not in escaped and shown(escaped) == bare
    ref = make_synthetic(300, 250, 3, seed=1)
    ref.obs["cell_type"] = ref.obs["cell_type"].cat.add_categories([trap])
    ref.obs.iloc[:5, 0] = trap  # too few cells: the page warns it is dropped, naming it
    ref.obs["cell_type"] = ref.obs["cell_type"].astype(str)
    qry = make_synthetic(200, 250, 3, seed=2)
    at = _data_page()
    for role, adata in (("reference", ref), ("query", qry)):
        adata.write_h5ad(tmp_path / f"{role}.h5ad")
        at.file_uploader(key=WidgetKeys.UPLOAD.format(role=role)).set_value(
            (f"{role}.h5ad", (tmp_path / f"{role}.h5ad").read_bytes(), "application/octet-stream"))
        at.run()
    at.selectbox(key=WidgetKeys.LABEL_PICKER).set_value("cell_type").run()
    assert not at.exception, at.exception
    warned = [w.value for w in at.warning if "dropped" in shown(w.value)]
    assert warned and trap in shown(warned[0]) and "![t](" not in warned[0] and "](http" not in warned[0]


def test_a_pair_sharing_no_gene_is_told_once(tmp_path):
    """Found 2026-12-07 (a new user's probe): a query sharing no gene with the reference had the same
    error under the gene overlap and again under the check before training."""
    import anndata as ad

    r = ad.read_h5ad(SMALL)
    q = r.copy()
    q.var_names = [f"ENSG{i:011d}" for i in range(q.n_vars)]
    at = _upload(_upload(_data_page(), "reference", r, tmp_path / "ref.h5ad"), "query", q, tmp_path / "q.h5ad")
    assert not at.exception
    errors = [shown(e.value) for e in at.error]
    assert len(errors) == 1 and "reference genes" in errors[0], errors
    assert any("Training cannot start: see the gene overlap above" in c.value for c in at.caption)


def test_genes_matched_ignoring_case_are_warned_of_once(tmp_path):
    """Found 2026-12-07 (a new user's browser probe): a human reference and a mouse query had the species
    warning under the gene overlap and again under the check before training."""
    import anndata as ad

    r = ad.read_h5ad(SMALL)
    q = r.copy()
    q.var_names = [g.capitalize() for g in r.var_names]  # mouse-style symbols
    at = _upload(_upload(_data_page(), "reference", r, tmp_path / "ref.h5ad"), "query", q, tmp_path / "q.h5ad")
    assert not at.exception
    assert any(s.value.startswith("Ready") for s in at.success)
    said = [w.value for w in at.warning if "same species" in w.value]
    assert len(said) == 1, said


def test_the_gene_overlap_counts_the_genes_the_training_takes_from_raw(tmp_path):
    """Found 2026-12-07 (a SeuratDisk export: X the scaled values of the variable genes, .raw the counts of every
    gene): the page counted X's genes, "only 50 of 300 reference genes found in the query" in red, while the
    training took .raw's and used all 300."""
    import anndata as ad
    import numpy as np
    import scanpy as sc

    ref = ad.read_h5ad(SMALL)
    q = ref.copy()
    q.raw = q
    few = q[:, : q.n_vars // 5].copy()
    sc.pp.log1p(few)
    few.X = few.X.toarray() if hasattr(few.X, "toarray") else few.X
    few.X = (few.X - few.X.mean(0)) / (few.X.std(0) + 1e-6)  # scale.data: negatives, the variable genes only
    at = _upload(_data_page(), "reference", ref, tmp_path / "ref.h5ad")
    at = _upload(at, "query", few, tmp_path / "seurat.h5ad")
    assert not at.exception and not at.error, _errors(at)
    said = " ".join(str(p.proto.text) for p in at.get("progress"))
    assert f"{ref.n_vars:,} of {ref.n_vars:,} reference genes found in the query" in said, said
    assert np.isfinite(few.X).all()


def test_the_check_before_training_points_to_the_layer_button_not_to_python(tmp_path):
    """Found 2026-12-07 (a browser probe): with a query's counts in layers['umis'], the yellow box named the button
    while the check's red box below said to rename the layer in Python or give layer= to ca.annotate."""
    import anndata as ad
    import scanpy as sc

    ref = ad.read_h5ad(SMALL)
    q = ref.copy()
    q.layers["umis"] = q.X.copy()
    sc.pp.normalize_total(q, target_sum=1e4)
    sc.pp.log1p(q)
    sc.pp.scale(q, max_value=10)
    at = _upload(_data_page(), "reference", ref, tmp_path / "ref.h5ad")
    at = _upload(at, "query", q, tmp_path / "scaled.h5ad")
    assert not at.exception
    errors = _errors(at)
    assert "take them with the button under the dataset above" in errors, errors
    assert "ca.annotate" not in errors and "--layer" not in errors, errors
