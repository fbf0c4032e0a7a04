"""Browser sessions (issues 13 and 14): a visitor lists and opens only their own runs; a reload
(a new Streamlit session with the same private link) brings back the datasets and the run."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cellannot_core.pipeline import AnnotateOptions
from conftest import demo_subset
from ui import jobs
from ui.session import SESSION_PARAM, TOKEN_KEY, owner_id
from ui.state import RUN_PARAM, StateKeys, WidgetKeys

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
LABEL = "cell_type_harmonized"


@pytest.fixture(autouse=True)
def _runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLANNOT_RUNS", str(tmp_path / "runs"))


def _visit(token: str | None = None, run: str | None = None, page: str | None = "pages/train.py") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    if token:
        at.query_params[SESSION_PARAM] = token
    if run:
        at.query_params[RUN_PARAM] = run
    at.run()
    return at.switch_page(page).run() if page else at


def _tiny_run(token: str) -> str:
    ref, qry = demo_subset(200, 150)
    run_id = jobs.start_job(ref, qry, AnnotateOptions(label_key=LABEL, model="logreg", n_top_genes=200),
                            owner=owner_id(token))
    assert jobs.wait(run_id, timeout=120)["state"] == "done"
    return run_id


def test_a_visitor_sees_only_their_own_runs():
    alice = _visit()
    tok_a = alice.session_state[TOKEN_KEY]
    run_a = _tiny_run(tok_a)
    bob = _visit()
    tok_b = bob.session_state[TOKEN_KEY]
    assert tok_b != tok_a and len(tok_a) >= 22
    # Bob's run list does not show Alice's run, and her run's link does not open it for him
    bob.switch_page("pages/runs.py").run()
    assert not [sb for sb in bob.selectbox if sb.key == WidgetKeys.RUN_PICKER]
    assert any("No runs yet" in i.value for i in bob.info)
    bob = _visit(tok_b, run=run_a)
    assert bob.session_state[StateKeys.RUN_ID] is None
    assert RUN_PARAM not in bob.query_params
    bob.switch_page("pages/results.py").run()
    assert any("Train a model" in i.value for i in bob.info)
    # Alice's own link (token + run) opens it, and her list has it
    alice = _visit(tok_a, run=run_a, page="pages/runs.py")
    assert alice.session_state[StateKeys.RUN_ID] == run_a
    assert any(run_a in o for o in alice.selectbox(key=WidgetKeys.RUN_PICKER).options)
    # the server keeps only a hash of the token
    status = (Path(jobs.runs_root()) / run_a / "status.json").read_text()
    assert owner_id(tok_a) in status and tok_a not in status


def test_a_reload_keeps_the_datasets_and_the_run():
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.button(key=WidgetKeys.DEMO_BUTTON).click().run()
    tok = at.session_state[TOKEN_KEY]
    n_ref, n_q = at.session_state[StateKeys.REFERENCE].n_obs, at.session_state[StateKeys.QUERY].n_obs
    run = _tiny_run(tok)
    again = _visit(tok, run=run)  # a reload: a new session with the same link
    assert again.session_state[StateKeys.REFERENCE] is not None
    assert again.session_state[StateKeys.REFERENCE].n_obs == n_ref and again.session_state[StateKeys.QUERY].n_obs == n_q
    assert again.session_state[StateKeys.LABEL_KEY] == LABEL
    assert again.session_state[StateKeys.RUN_ID] == run
    # the demo comes back as the demo: "demo (restored)" read as the visitor's own data, and the home page's
    # button offered to replace it with the demo (found 2026-12-07)
    assert again.session_state[StateKeys.REFERENCE_INFO]["source"] == "demo"
    home = _visit(tok, page=None)
    assert "replaces" not in home.button(key=WidgetKeys.DEMO_BUTTON).label
    assert not again.button(key=WidgetKeys.START).disabled  # ready to train the next model
    other = _visit()  # another visitor gets none of it
    assert other.session_state[StateKeys.REFERENCE] is None


def test_a_column_picked_just_before_a_reload_comes_back():
    """Found 2026-12-07 (a probe of the results pages): the choices were kept at the top of the next page run, so
    a pick followed at once by a reload came back as it was before it (a run was then trained without the query's
    labels)."""
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.button(key=WidgetKeys.DEMO_BUTTON).click().run()
    tok = at.session_state[TOKEN_KEY]
    at.switch_page("pages/data.py").run()
    assert at.selectbox(key=WidgetKeys.QUERY_LABEL_PICKER).value == "cell_type_harmonized"
    at.selectbox(key=WidgetKeys.QUERY_LABEL_PICKER).set_value("(none: the query is unlabelled)").run()  # then a reload
    assert _visit(tok).session_state[StateKeys.QUERY_LABEL_KEY] is None


def test_the_sessions_link_alone_reopens_the_run_last_shown():
    """Found 2026-12-07 (a new user's probe): the session's link without "&run=" (a bookmark, a second
    tab) brought the datasets back, but every results page said to train a model first. The run
    last shown now comes back with them; a link naming a run still opens that one."""
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.button(key=WidgetKeys.DEMO_BUTTON).click().run()
    tok = at.session_state[TOKEN_KEY]
    first, second = _tiny_run(tok), _tiny_run(tok)
    _visit(tok, run=second)  # the run shown last
    again = _visit(tok, page="pages/results.py")
    assert again.session_state[StateKeys.RUN_ID] == second and again.query_params[RUN_PARAM] == second
    assert not any("Train a model" in i.value for i in again.info)
    assert _visit(tok, run=first).session_state[StateKeys.RUN_ID] == first
    shutil.rmtree(Path(jobs.runs_root()) / first)
    assert _visit(tok).session_state[StateKeys.RUN_ID] is None  # the run last shown was deleted


def test_an_uploaded_dataset_comes_back_after_a_reload():
    from ui import data as data_ui

    small = (ROOT / "tests" / "data" / "pbmc3k_small.h5ad").read_bytes()
    at = _visit(page="pages/data.py")
    tok = at.session_state[TOKEN_KEY]
    with pytest.MonkeyPatch.context() as mp:  # what the Data page's uploader calls, in this session
        mp.setattr(data_ui.st, "session_state", at.session_state)
        mp.setattr(data_ui.st, "query_params", {SESSION_PARAM: tok})
        assert data_ui.handle_upload("query", small, "my cells.h5ad") is None
    again = _visit(tok, page="pages/data.py")
    assert again.session_state[StateKeys.QUERY] is not None
    assert again.session_state[StateKeys.QUERY_INFO]["name"] == "my_cells.h5ad"


def test_an_interrupted_run_is_shown_as_such_and_can_be_deleted():
    """Issue 14: a run whose process died showed 'about 2 min left' forever and could not be removed."""
    import json

    from cellannot_core.runs import RunDir

    at = _visit()
    tok = at.session_state[TOKEN_KEY]
    rd = RunDir.create(jobs.runs_root(), model="clams", owner=owner_id(tok))
    status = json.loads(rd.file("status.json").read_text())
    status.update(state="running", eta=120, pid=2**22 + 12345, pid_start="1")  # a process that is gone
    rd.file("status.json").write_text(json.dumps(status))
    at = _visit(tok, run=rd.id)
    assert not at.exception
    assert any("interrupted" in w.value for w in at.warning)
    assert rd.status()["state"] == "interrupted"
    at.switch_page("pages/runs.py").run()
    at.selectbox(key=WidgetKeys.RUN_PICKER).set_value(rd.id)
    at.button(key=WidgetKeys.DELETE_RUN).click().run()
    assert not at.exception
    assert not rd.path.exists() and at.session_state[StateKeys.RUN_ID] is None


def test_a_link_another_browser_used_asks_before_opening_its_session(monkeypatch):
    """Session fixation: a visitor sent a colleague a link to a session of their own and saw what
    the colleague loaded into it. A browser the session has not seen is asked first; a link to a
    session the server does not hold starts a new one."""
    from ui import session
    from ui.session import PENDING_KEY

    me = {"id": "browser-a"}
    monkeypatch.setattr(session, "browser_id", lambda: me["id"])
    alice = AppTest.from_file(APP, default_timeout=60).run()
    alice.button(key=WidgetKeys.DEMO_BUTTON).click().run()
    tok = alice.session_state[TOKEN_KEY]
    run = _tiny_run(tok)
    again = _visit(tok, run=run)  # her own reload: no question
    assert again.session_state[TOKEN_KEY] == tok and PENDING_KEY not in again.session_state
    assert again.session_state[StateKeys.REFERENCE] is not None and again.session_state[StateKeys.RUN_ID] == run

    me["id"] = "browser-b"  # her link in another browser: nothing of hers until asked
    bob = _visit(tok, run=run, page=None)
    assert bob.session_state[TOKEN_KEY] != tok and bob.query_params[SESSION_PARAM] != tok
    assert bob.session_state[StateKeys.REFERENCE] is None and bob.session_state[StateKeys.RUN_ID] is None
    notice = [w.value for w in bob.warning if "another browser used" in w.value]
    assert notice and "1 run" in notice[0] and "kang" in notice[0]
    bob.button(key=WidgetKeys.LINK_NEW).click().run()  # his own session
    assert PENDING_KEY not in bob.session_state and bob.session_state[TOKEN_KEY] != tok
    assert not [w for w in bob.warning if "another browser used" in w.value]
    assert bob.session_state[StateKeys.REFERENCE] is None

    carol = _visit(tok, run=run, page=None)  # the same browser again, this time it is hers: open it
    carol.button(key=WidgetKeys.LINK_OPEN).click().run()
    assert not carol.exception
    assert carol.session_state[TOKEN_KEY] == tok and carol.query_params[SESSION_PARAM] == tok
    assert carol.session_state[StateKeys.REFERENCE] is not None and carol.session_state[StateKeys.RUN_ID] == run
    later = _visit(tok)  # that browser is now one of the session's
    assert later.session_state[TOKEN_KEY] == tok and PENDING_KEY not in later.session_state

    stranger = _visit("x" * 30)  # a made-up link is no session: a new one
    assert stranger.session_state[TOKEN_KEY] != "x" * 30


def test_a_browser_without_a_cookie_neither_hands_on_nor_takes_a_session_silently(monkeypatch):
    """Found 2026-12-07 (a probe of the app served to a lab): a session begun in a browser that sent no
    XSRF cookie had no browser on record, so the colleague its link was sent to took it without a
    question, uploaded into it, and the link's maker, reopening it, saw the upload. Such a browser is
    now recorded as one without a cookie and asked at every link, and so is any browser at a session
    with no browser on record."""
    from ui import session
    from ui.session import BROWSERS_FILE, NO_COOKIE, PENDING_KEY

    me = {"id": NO_COOKIE}
    monkeypatch.setattr(session, "browser_id", lambda: me["id"])
    maker = AppTest.from_file(APP, default_timeout=60).run()
    maker.button(key=WidgetKeys.DEMO_BUTTON).click().run()
    tok = maker.session_state[TOKEN_KEY]
    me["id"] = "browser-v"  # the colleague's browser, sent the link
    victim = _visit(tok, page=None)
    assert victim.session_state[TOKEN_KEY] != tok and PENDING_KEY in victim.session_state
    assert any("another browser used" in w.value for w in victim.warning)
    me["id"] = NO_COOKIE  # the maker, at their own link again: asked too, told why
    again = _visit(tok, page=None)
    assert again.session_state[TOKEN_KEY] != tok and again.session_state[StateKeys.REFERENCE] is None
    assert any("sends this server no cookie" in w.value for w in again.warning)
    (Path(jobs.runs_root()) / ".sessions" / owner_id(tok) / BROWSERS_FILE).unlink()  # no browser on record
    me["id"] = "browser-v"
    assert _visit(tok, page=None).session_state[TOKEN_KEY] != tok
    monkeypatch.undo()  # what a browser sending no cookie is taken for (a real server's cookies are a mapping)
    from types import SimpleNamespace

    monkeypatch.setattr(session, "st", SimpleNamespace(context=SimpleNamespace(cookies={})))
    assert session.browser_id() == NO_COOKIE
    monkeypatch.setattr(session, "st", SimpleNamespace(context=SimpleNamespace(cookies={"_streamlit_xsrf": "abc"})))
    assert session.browser_id() == session.browser_hash("abc") not in (None, NO_COOKIE)


def test_a_browser_is_told_by_its_xsrf_token_whatever_the_mask():
    from streamlit.web.server.starlette.starlette_app_utils import generate_xsrf_token_string

    from ui.session import browser_hash

    one, two = b"\x01" * 16, b"\x02" * 16
    a1, a2 = generate_xsrf_token_string(one, 1), generate_xsrf_token_string(one, 1)
    assert a1 != a2  # Streamlit masks the token anew on each page load
    assert browser_hash(a1) == browser_hash(a2) == browser_hash(f'"{a1}"')
    assert browser_hash(generate_xsrf_token_string(two, 1)) != browser_hash(a1)
    assert browser_hash("") is None and browser_hash("2|zz|zz|1") is None


def test_a_visitor_can_delete_their_uploaded_data_from_the_server():
    """A shared server kept every uploaded dataset for good, with no way for its owner to remove it."""
    from ui import data as data_ui

    small = (ROOT / "tests" / "data" / "pbmc3k_small.h5ad").read_bytes()
    at = _visit(page="pages/data.py")
    tok = at.session_state[TOKEN_KEY]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data_ui.st, "session_state", at.session_state)
        mp.setattr(data_ui.st, "query_params", {SESSION_PARAM: tok})
        assert data_ui.handle_upload("query", small, "my cells.h5ad") is None
    kept = Path(jobs.runs_root()) / ".sessions" / owner_id(tok)
    assert (kept / "query.upload").read_bytes() == small
    with pytest.MonkeyPatch.context() as mp:  # the query replaced by the demo's: the upload's copy goes
        mp.setattr(data_ui.st, "session_state", at.session_state)
        mp.setattr(data_ui.st, "query_params", {SESSION_PARAM: tok})
        data_ui.set_dataset("query", data_ui.demo_dataset("query"), name="demo", source="demo", dataset_id="demo-query")
        assert not (kept / "query.upload").exists()
        assert data_ui.handle_upload("query", small, "my cells.h5ad") is None
    at = _visit(tok, page="pages/data.py")
    assert at.session_state[StateKeys.QUERY] is not None
    table = [d.value for d in at.dataframe if "kept as" in d.value.columns]
    assert table and table[0]["name"].tolist() == ["my_cells.h5ad"] and table[0]["MB on the server"].iloc[0] > 0
    at.button(key=WidgetKeys.FORGET_DATA).click().run()
    assert not at.exception
    assert at.session_state[StateKeys.QUERY] is None
    assert not (kept / "query.upload").exists() and not (kept / "query.json").exists()
    again = _visit(tok, page="pages/data.py")  # a reload brings nothing back
    assert again.session_state[StateKeys.QUERY] is None
    assert not [b for b in again.button if b.key == WidgetKeys.FORGET_DATA]


def test_kept_datasets_expire_after_the_days_the_server_is_set_to(monkeypatch):
    """CELLANNOT_SESSION_DAYS: a session not opened for that long loses what the server kept of
    its datasets (its runs stay); one opened since keeps it; unset, nothing expires."""
    import os
    import time

    from ui import session

    tok_old = _visit(page="pages/data.py").session_state[TOKEN_KEY]
    tok_recent = _visit(page="pages/data.py").session_state[TOKEN_KEY]
    sessions = Path(jobs.runs_root()) / ".sessions"
    for tok in (tok_old, tok_recent):  # what a loaded dataset leaves on the server
        d = sessions / owner_id(tok)
        d.mkdir(parents=True, exist_ok=True)
        (d / "query.json").write_text('{"kind": "demo", "name": "demo", "dataset_id": "x", "path": null}')
    run_old = _tiny_run(tok_old)
    ten_days_ago = time.time() - 10 * 86400
    for tok in (tok_old, tok_recent):
        os.utime(sessions / owner_id(tok), (ten_days_ago, ten_days_ago))
    _visit(tok_recent, page="pages/data.py")  # the recent session is opened again: its clock restarts
    monkeypatch.setattr(session, "_EXPIRY", {"last": None})
    monkeypatch.delenv(session.SESSION_DAYS_ENV, raising=False)
    _visit()  # nothing set: nothing expires
    assert (sessions / owner_id(tok_old)).is_dir()
    monkeypatch.setenv(session.SESSION_DAYS_ENV, "7")
    _visit()  # any visit looks through the sessions (at most once an hour)
    assert not (sessions / owner_id(tok_old)).exists()
    assert (sessions / owner_id(tok_recent) / "query.json").is_file()
    assert jobs.run_status(run_old)["state"] == "done"  # runs are not the datasets' to expire
    back = _visit(tok_old, run=run_old, page="pages/data.py")
    assert back.session_state[StateKeys.QUERY] is None and back.session_state[StateKeys.RUN_ID] == run_old
    assert session.expire_sessions(7, now=time.time()) == []  # the recent one was opened today
    browsers = Path(jobs.runs_root()) / session.BROWSERS_DIR  # a browser's record of its last session
    browsers.mkdir(parents=True, exist_ok=True)
    (browsers / ("a" * 32)).write_text("00")
    assert session.expire_sessions(7, now=time.time() + 8 * 86400) == [owner_id(tok_recent)]
    assert not list(browsers.iterdir())  # expired by the same clock


def test_a_full_disk_keeps_the_upload_loaded_and_says_a_reload_will_not_bring_it_back(monkeypatch):
    """A server that cannot write its session files (disk full, read-only folder) raised an OSError
    out of the upload handler (an exception box); the dataset now stays loaded, with one line."""
    import errno

    from ui import data as data_ui
    from ui import session
    from ui import train as train_ui

    small = (ROOT / "tests" / "data" / "pbmc3k_small.h5ad").read_bytes()
    at = _visit(page="pages/data.py")
    tok = at.session_state[TOKEN_KEY]

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    said: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(session, "_write", full)
        mp.setattr(session.st, "warning", lambda text, **kw: said.append(text))
        mp.setattr(data_ui.st, "session_state", at.session_state)
        mp.setattr(session.st, "session_state", at.session_state)
        mp.setattr(data_ui.st, "query_params", {SESSION_PARAM: tok})
        assert data_ui.handle_upload("query", small, "my cells.h5ad") is None
        assert at.session_state[StateKeys.QUERY] is not None  # loaded for this session
        assert len(said) == 1 and "could not keep a copy of it (no space left on device)" in said[0]
        assert "reload" in said[0] and str(jobs.runs_root()) not in said[0]  # no server path echoed
    kept = Path(jobs.runs_root()) / ".sessions" / owner_id(tok)
    assert not (kept / "query.json").exists()  # a reload brings nothing back rather than something old
    with pytest.MonkeyPatch.context() as mp:  # a run cannot get its folder: one line, no path
        mp.setattr(jobs.RunDir, "create", classmethod(lambda cls, *a, **k: full("/runs/x", b"")))
        mp.setattr(train_ui, "get", lambda key: None)
        msg = train_ui.start(AnnotateOptions(label_key=LABEL, model="logreg"))
    assert msg.startswith("the server could not create the run's folder (no space left on device)")
    assert "/runs/x" not in msg


def test_a_finished_runs_reference_cells_can_be_the_next_runs_reference(monkeypatch):
    """A visitor who trained once had to load the reference file again for the next query. A run's
    model keeps the reference cells it trained on with their counts and labels; the Data page offers
    the visitor's own finished runs as a reference, and a reload brings it back."""
    import numpy as np

    at = _visit(page="pages/data.py")
    tok = at.session_state[TOKEN_KEY]
    assert any("No finished run yet" in c.value for c in at.caption)
    ref, qry = demo_subset(200, 150)
    run_id = jobs.start_job(ref, qry, AnnotateOptions(label_key=LABEL, model="scanvi_svm", max_epochs=1,
                                                      n_top_genes=200), owner=owner_id(tok))
    assert jobs.wait(run_id, timeout=300)["state"] == "done"
    at = _visit(tok, page="pages/data.py")
    at.selectbox(key=WidgetKeys.RUN_REFERENCE).set_value(run_id)
    at.button(key=WidgetKeys.RUN_REFERENCE_BUTTON).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    got = at.session_state[StateKeys.REFERENCE]
    assert 100 < got.n_obs < 200 and at.session_state[StateKeys.LABEL_KEY] == LABEL
    assert set(got.obs[LABEL].astype(str)) <= set(ref.obs[LABEL].astype(str))
    x = got.X.data
    assert len(x) and np.allclose(x, np.round(x))  # counts, as training needs them
    assert run_id in at.session_state[StateKeys.REFERENCE_INFO]["name"]
    again = _visit(tok, page="pages/data.py")  # a reload brings it back
    assert again.session_state[StateKeys.REFERENCE].n_obs == got.n_obs
    bob = _visit(page="pages/data.py")  # another visitor is not offered it
    assert not [sb for sb in bob.selectbox if sb.key == WidgetKeys.RUN_REFERENCE]
    plain = _tiny_run(tok)  # a logreg run keeps its reference cells too (its input is its latent space)
    again = _visit(tok, page="pages/data.py")
    again.selectbox(key=WidgetKeys.RUN_REFERENCE).set_value(plain)
    again.button(key=WidgetKeys.RUN_REFERENCE_BUTTON).click().run()
    assert not again.exception and not again.error and again.session_state[StateKeys.REFERENCE].n_obs > 100
    from cellannot_core import pipeline
    from cellannot_core.errors import ConfigError

    def no_counts(model, bundle):  # a model saved before bundles kept counts, or trained without them
        raise ConfigError("this saved model keeps no reference counts")

    monkeypatch.setattr(pipeline, "bundle_reference", no_counts)
    again.selectbox(key=WidgetKeys.RUN_REFERENCE).set_value(run_id)
    again.button(key=WidgetKeys.RUN_REFERENCE_BUTTON).click().run()
    assert not again.exception and any("keeps no reference cells" in e.value for e in again.error)
    assert run_id not in again.session_state[StateKeys.REFERENCE_INFO]["name"]  # the loaded one stays
