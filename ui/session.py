"""Who the visitor is, what is theirs, and what survives a reload.

Each browser session has a random token, kept in the URL (``?s=...``) so that a reload or a
server restart finds the same session. On the server only its SHA-256 (the *owner id*) is
written: runs record it, and a visitor lists and opens only runs with their owner id (plus the
command line's runs, which have none, while the app listens on 127.0.0.1 only). The session's
datasets are remembered in ``<runs root>/.sessions/<owner id>/`` (the uploaded bytes, the path
or the demo, and the column choices), so a reload or a restart brings them back. The link with
``?s=`` is the session's private link.

The same browser opening the app without the link (a bookmark of the bare address, a sidebar page
opened in a new tab) comes back to the last session it used: the server keeps, per browser, that
session's token encrypted with the browser's own XSRF secret, in a file named by another hash of it
(``<runs root>/.browsers/``), so the folder alone opens nothing (:func:`remember_browser_session`).

A link is not adopted silently by another browser (session fixation: a visitor could send a
colleague a link to a session of their own and see what the colleague then loads into it). The
server keeps a hash of each browser that used a session (Streamlit's per-browser XSRF cookie,
unmasked); a link opened in a browser the session has not seen shows what it is and asks
(:func:`pending_link`), and a link to a session the server does not hold starts a new one.

The Compare page keeps its last jobs' records in the same folder (:func:`ui.compare.record_path`).
With ``$CELLANNOT_SESSION_DAYS`` set, what the server keeps of a session's datasets is deleted
once the session has not been opened for that many days (:func:`expire_sessions`), and so is a
browser's record of its last session; runs stay.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import streamlit as st

SESSION_PARAM = "s"
TOKEN_KEY = "session_token"
SAVED_CHOICES_KEY = "session_saved_choices"
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
LOCAL_ADDRESSES = ("127.0.0.1", "localhost", "::1")
SESSIONS_DIR = ".sessions"  # under the runs root; not a run id (RUN_ID_RE needs a letter or digit first)
PENDING_KEY = "session_pending_link"  # a link's token (and run) waiting for this browser's answer
BROWSERS_FILE = "browsers.json"  # hashes of the browsers that used a session
BROWSER_COOKIE = "_streamlit_xsrf"  # Streamlit's XSRF cookie: one random token per browser
SESSION_DAYS_ENV = "CELLANNOT_SESSION_DAYS"  # unset: kept datasets stay until their visitor forgets them
EXPIRY_EVERY_S = 3600.0  # the sessions folder is looked through at most this often per server process
_EXPIRY = {"last": None}  # monotonic time of the last look
_EXPIRY_LOCK = threading.Lock()


SHARED_ENV = "CELLANNOT_SHARED"  # "1": served to a lab through a proxy or tunnel, though it listens on 127.0.0.1
#: headers a proxy adds for the visitor behind it (a visitor with any of them is not the machine's user)
FORWARDED_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-Ip", "X-Forwarded-Host", "X-Forwarded-Proto",
                     "X-Forwarded-Server", "Via", "X-Client-Ip", "Cf-Connecting-Ip", "True-Client-Ip",
                     "X-Cluster-Client-Ip", "X-Original-Forwarded-For")


def _is_loopback(host: str | None) -> bool:
    import ipaddress

    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def server_is_local() -> bool:
    """Whether this visitor is the machine's own user, who may open the command line's runs and read
    files by any path: the app listens on this machine only, the server was not declared shared
    (``CELLANNOT_SHARED=1``), and the visitor's connection comes from this machine for a page of this
    machine: a loopback client address, no proxy's forwarding header, and the page's address (the
    browser's ``Origin``, the ``Host`` asked for) a loopback one. Found 2026-12-07: a lab reaches an app
    that listens on 127.0.0.1 only through a reverse proxy or a tunnel, and every visitor then counted
    as local; nginx's plain ``proxy_pass`` adds no forwarding header, but the browser's ``Origin`` is
    the proxy's address. A tunnel (``ssh -L``) looks local in every way: declare the server shared."""
    from urllib.parse import urlsplit

    if os.environ.get(SHARED_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if str(st.get_option("server.address") or "") not in LOCAL_ADDRESSES:
        return False
    try:
        headers, ip = st.context.headers, st.context.ip_address
    except Exception:  # noqa: BLE001 - no script context: not a visitor
        return True
    if any(h in headers for h in FORWARDED_HEADERS):
        return False
    for name, prefix in (("Origin", ""), ("Host", "//")):
        value = headers.get(name)
        if isinstance(value, str):  # (AppTest's client is a mock)
            try:
                host = urlsplit(prefix + value.strip()).hostname
            except ValueError:
                return False
            if not _is_loopback(host):
                return False
    return not isinstance(ip, str) or _is_loopback(ip)


def token() -> str:
    """This browser session's token: from the session, else from the URL when that session is on
    the server and this browser has used it (or none can be told apart), else a new one; always
    mirrored in the URL so that a reload keeps it. A link to a session this browser has not used
    waits in :data:`PENDING_KEY` for :func:`open_pending`."""
    tok = st.session_state.get(TOKEN_KEY)
    if tok is None:
        from_url = st.query_params.get(SESSION_PARAM)
        if from_url is None:  # the bare address: this browser's last session, if it has one here
            from_url = browser_session()
        if isinstance(from_url, str) and TOKEN_RE.match(from_url) and _on_server(from_url):
            if _seen_here(from_url):
                tok = from_url
                note_browser(tok)
            else:
                from ui.state import RUN_PARAM

                run = st.query_params.get(RUN_PARAM)
                st.session_state[PENDING_KEY] = {"token": from_url, "run": run if isinstance(run, str) else None}
        tok = tok or secrets.token_urlsafe(24)
        st.session_state[TOKEN_KEY] = tok
    if st.query_params.get(SESSION_PARAM) != tok:
        st.query_params[SESSION_PARAM] = tok
    return tok


#: :func:`browser_id` of a browser that sends no XSRF cookie (it refuses cookies, or the server's
#: XSRF protection is off): it cannot be told from another such browser, so it is never taken for
#: one a session has seen (found 2026-12-07: a link made in a browser without the cookie recorded no
#: browser, and was then taken silently by the colleague it was sent to, and back by its maker)
NO_COOKIE = "no-cookie"


def browser_id() -> str | None:
    """A hash of this browser's XSRF token (the cookie's token unmasked: Streamlit re-masks it on
    every page load); :data:`NO_COOKIE` for a browser that sends none; None without a browser
    (no script context, Streamlit's AppTest, whose client is a mock)."""
    try:
        raw = st.context.cookies.get(BROWSER_COOKIE)
    except Exception:  # noqa: BLE001 - no script context
        return None
    if raw is None:
        return NO_COOKIE
    return (browser_hash(raw) or NO_COOKIE) if isinstance(raw, str) else None


def browser_secret(cookie: str) -> bytes | None:
    """The token of an XSRF cookie's value (``2|mask|masked token|time``, or a version-1 token),
    the same whatever mask the value carries."""
    raw = cookie.strip("\"'")
    if not raw:
        return None
    parts = raw.split("|")
    try:
        if len(parts) == 4 and parts[0] == "2":
            mask, masked = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
            return bytes(b ^ mask[i % len(mask)] for i, b in enumerate(masked)) if mask else masked
        return raw.encode()
    except ValueError:
        return None


def browser_hash(cookie: str) -> str | None:
    """What :func:`browser_id` keeps of an XSRF cookie's value: a hash of its token."""
    secret = browser_secret(cookie)
    return None if secret is None else hashlib.sha256(b"cellannot-browser|" + secret).hexdigest()[:32]


BROWSERS_DIR = ".browsers"  # under the runs root: each browser's last session, encrypted (remember_browser_session)


def _browser_file() -> tuple[Path, bytes] | None:
    """This browser's file of its last session and the key it is encrypted with, both from the
    browser's XSRF secret (the file's name a hash of it, the key another); None without a cookie."""
    from cellannot_core.runs import default_root

    try:
        raw = st.context.cookies.get(BROWSER_COOKIE)
    except Exception:  # noqa: BLE001 - no script context
        return None
    secret = browser_secret(raw) if isinstance(raw, str) else None
    if not secret:
        return None
    name = hashlib.sha256(b"cellannot-resume-file|" + secret).hexdigest()[:32]
    key = hashlib.sha256(b"cellannot-resume-key|" + secret).digest()
    return default_root() / BROWSERS_DIR / name, key


def remember_browser_session(tok: str) -> None:
    """Keep ``tok`` as this browser's last session, encrypted with the browser's own secret."""
    found = _browser_file()
    if found is None or len(tok) > 64:
        return
    path, key = found
    sealed = bytes(b ^ key[i] for i, b in enumerate(tok.encode())).hex()
    try:
        if path.is_file() and path.read_text().strip() == sealed:
            os.utime(path)  # used now: what keeps it from expiring (expire_sessions)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, sealed.encode())
    except OSError:  # a full disk: the link still brings the session back
        pass


def browser_session() -> str | None:
    """The last session this browser used on this server (:func:`remember_browser_session`), or None."""
    found = _browser_file()
    if found is None:
        return None
    path, key = found
    try:
        sealed = bytes.fromhex(path.read_text().strip())
        os.utime(path)  # used now: what keeps it from expiring (expire_sessions)
    except (OSError, ValueError):
        return None
    if len(sealed) > len(key):
        return None
    tok = bytes(b ^ key[i] for i, b in enumerate(sealed)).decode("ascii", errors="replace")
    return tok if TOKEN_RE.match(tok) else None


def _session_dir_of(tok: str) -> Path:
    from cellannot_core.runs import default_root

    return default_root() / SESSIONS_DIR / owner_id(tok)


def _on_server(tok: str) -> bool:
    """Whether the server holds ``tok``'s session: its datasets or a run of its own."""
    from cellannot_core.runs import default_root, list_runs

    return _session_dir_of(tok).is_dir() or bool(list_runs(default_root(), owner=owner_id(tok),
                                                           include_unowned=False))


def _seen_here(tok: str) -> bool:
    """Whether this browser may take ``tok``'s session without asking: it is on the session's record
    of browsers, or there is no browser (AppTest). A browser without a cookie (:data:`NO_COOKIE`) is
    always asked, and so is every browser at a session with no browser on record."""
    from cellannot_core.runs import read_json

    me = browser_id()
    if me is None:
        return True
    seen = read_json(_session_dir_of(tok) / BROWSERS_FILE, [])
    return me != NO_COOKIE and isinstance(seen, list) and me in seen


def note_browser(tok: str) -> None:
    """Record this browser among those that used ``tok``'s session, and that session as this
    browser's last (:func:`remember_browser_session`)."""
    from cellannot_core.runs import read_json

    remember_browser_session(tok)
    d = _session_dir_of(tok)
    me = browser_id()
    if me is None:
        return
    try:
        d.mkdir(parents=True, exist_ok=True)  # a session known by its runs alone
    except OSError:
        return
    seen = read_json(d / BROWSERS_FILE, [])
    seen = seen if isinstance(seen, list) else []
    if me not in seen:
        try:
            _write(d / BROWSERS_FILE, json.dumps((seen + [me])[-50:]).encode())
        except OSError:  # a full disk: this browser is asked again next time, nothing is lost
            pass


def pending_link() -> dict[str, Any] | None:
    """A link to another browser's session waiting for this browser's answer: what it holds
    (dataset names, runs), for the page to show before anything of it is opened."""
    from cellannot_core.runs import default_root, list_runs, read_json

    pend = st.session_state.get(PENDING_KEY)
    if not pend:
        return None
    d = _session_dir_of(pend["token"])
    names = [str(m.get("name")) for m in (read_json(d / f"{r}.json") for r in ("reference", "query"))
             if isinstance(m, dict)]
    runs = list_runs(default_root(), owner=owner_id(pend["token"]), include_unowned=False)
    return {"datasets": names, "runs": len(runs)}


def open_pending(accept: bool) -> None:
    """Answer the pending link: open its session in this browser (and its run), or drop it and
    keep this browser's own new session."""
    pend = st.session_state.pop(PENDING_KEY, None)
    if not pend or not accept:
        return
    from ui.state import DATA_KEY, INFO_KEY, put, set_run

    tok = pend["token"]
    st.session_state[TOKEN_KEY] = tok
    st.query_params[SESSION_PARAM] = tok
    note_browser(tok)
    for role in DATA_KEY:  # the session of the link replaces whatever this browser had begun
        put(DATA_KEY[role], None)
        put(INFO_KEY[role], None)
    set_run(None)
    restore()
    if pend.get("run") and can_open(pend["run"]):
        set_run(pend["run"])


def owner_id(tok: str | None = None) -> str:
    """What the server stores of a session token (its SHA-256, 32 hex digits)."""
    return hashlib.sha256((tok or token()).encode()).hexdigest()[:32]


def can_open(run_id: str) -> bool:
    """A run this session may list and open: its own, or the command line's on a local server."""
    from cellannot_core.errors import CellannotError
    from cellannot_core.runs import RunDir, default_root

    try:
        run_owner = RunDir.open(default_root(), run_id).owner
    except CellannotError:
        return False
    return run_owner == owner_id() if run_owner is not None else server_is_local()


def session_dir(create: bool = False) -> Path:
    from cellannot_core.runs import default_root

    d = default_root() / SESSIONS_DIR / owner_id()
    if create and not d.is_dir():
        d.mkdir(parents=True, exist_ok=True)
        note_browser(token())
    return d


def _write(path: Path, data: bytes) -> None:
    from cellannot_core.runs import write_bytes_atomic

    write_bytes_atomic(path, data)


def remember_dataset(role: str, kind: str, *, name: str, dataset_id: str, data: bytes | None = None,
                     path: str | None = None, orientation: str = "auto", layer: str | None = None) -> None:
    """Keep what brings a loaded dataset back: the uploaded bytes, the server path or the demo.
    When the server cannot write them (a full disk, a read-only folder), the dataset stays loaded
    for this session and the page says that a reload will not bring it back."""
    from ui.jobs import write_problem

    try:
        d = session_dir(create=True)
        (d / f"{role}.json").unlink(missing_ok=True)  # never an old record beside a failed new copy
        if kind == "upload" and data is not None:
            _write(d / f"{role}.upload", data)
        elif kind != "upload":  # a copy of an earlier upload is no longer what brings the role back
            (d / f"{role}.upload").unlink(missing_ok=True)
        _write(d / f"{role}.json", json.dumps({"kind": kind, "name": name, "dataset_id": dataset_id,
                                               "path": path, "orientation": orientation, "layer": layer}).encode())
    except OSError as err:
        st.warning(f"The {role} is loaded for this session, but {write_problem(err, 'keep a copy of it')}; until "
                   "then a reload or a restart will not bring it back.", icon=":material/warning:")


def remember_choices(choices: dict[str, Any]) -> None:
    """Keep the column choices and QC options (written only when they change)."""
    if st.session_state.get(SAVED_CHOICES_KEY) == choices:
        return
    st.session_state[SAVED_CHOICES_KEY] = dict(choices)
    try:
        _write(session_dir(create=True) / "choices.json", json.dumps(choices).encode())
    except OSError:  # the datasets' own warning says the server cannot keep this session's files
        pass


KEPT_AS = {"upload": "a copy of the uploaded file", "path": "its path on the server", "demo": "the bundled demo",
           "run": "the run whose reference cells it is"}


def kept_datasets() -> list[dict[str, Any]]:
    """What the server keeps of this session's datasets so that a reload brings them back: one
    row per role (how it is kept, its name, the megabytes held)."""
    from cellannot_core.runs import read_json

    d = session_dir()
    rows = []
    for role in ("reference", "query"):
        meta = read_json(d / f"{role}.json")
        if isinstance(meta, dict):
            up = d / f"{role}.upload"
            rows.append({"dataset": role, "kept as": KEPT_AS.get(str(meta.get("kind")), str(meta.get("kind"))),
                         "name": str(meta.get("name")),
                         "MB on the server": round(up.stat().st_size / 1e6, 1) if up.is_file() else 0.0})
    return rows


def forget_datasets() -> None:
    """Delete what the server keeps of this session's datasets (uploaded copies, paths, column
    choices) and drop them from the session; its runs stay until deleted on the Runs page."""
    from ui.state import DATA_KEY, INFO_KEY, put

    d = session_dir()
    for role in DATA_KEY:  # the files remember_dataset wrote, and the dataset in the session
        (d / f"{role}.upload").unlink(missing_ok=True)
        (d / f"{role}.json").unlink(missing_ok=True)
        put(DATA_KEY[role], None)
        put(INFO_KEY[role], None)
    (d / "choices.json").unlink(missing_ok=True)
    st.session_state.pop(SAVED_CHOICES_KEY, None)


def session_days() -> float | None:
    """Days a session's kept datasets outlive its last visit (``$CELLANNOT_SESSION_DAYS``), or
    None to keep them until their visitor deletes them."""
    from cellannot_core._constants import env_number

    days = env_number(SESSION_DAYS_ENV, None)
    return days if days is not None and days > 0 else None


def expire_sessions(days: float, *, now: float | None = None) -> list[str]:
    """Delete the kept datasets (uploaded copies, paths, choices) of every session not opened for
    ``days`` days: its folder under ``<runs root>/.sessions``, last opened at the folder's
    modification time (:func:`restore` touches it). Runs are left alone. Returns the owner ids."""
    from cellannot_core.runs import default_root

    base = default_root() / SESSIONS_DIR
    cutoff = (time.time() if now is None else now) - days * 86400.0
    removed = []
    try:
        folders = sorted(base.iterdir()) if base.is_dir() else []
    except OSError:
        return removed
    for d in folders:
        try:
            if d.is_dir() and not d.is_symlink() and d.stat().st_mtime < cutoff:
                shutil.rmtree(d)
                removed.append(d.name)
        except OSError:  # another server process removed it first, or it cannot be removed
            continue
    browsers = default_root() / BROWSERS_DIR  # each browser's last session, by the same clock
    try:
        for f in list(browsers.iterdir()) if browsers.is_dir() else []:
            if f.is_file() and not f.is_symlink() and f.stat().st_mtime < cutoff:
                f.unlink(missing_ok=True)
    except OSError:
        pass
    return removed


def _expire_due() -> None:
    """:func:`expire_sessions` when ``$CELLANNOT_SESSION_DAYS`` is set, at most once an hour."""
    days = session_days()
    if days is None:
        return
    with _EXPIRY_LOCK:
        last = _EXPIRY["last"]
        if last is not None and time.monotonic() - last < EXPIRY_EVERY_S:
            return
        _EXPIRY["last"] = time.monotonic()
    expire_sessions(days)


def restore() -> list[str]:
    """Bring back the session's datasets and choices after a reload or a restart; returns the
    roles restored (a dataset that can no longer be read is skipped, never raised). Marks the
    session as opened now, after deleting the kept datasets of sessions expired (:func:`_expire_due`)."""
    from cellannot_core.errors import CellannotError
    from cellannot_core.data.stream import stream_source
    from cellannot_core.runs import read_json
    from ui import data as data_ui
    from ui.state import CHOICE_KEYS, DATA_KEY, INFO_KEY, RUN_PARAM, StateKeys, put

    _expire_due()
    d = session_dir()
    if not d.is_dir():
        return []
    try:
        os.utime(d)  # opened now: what keeps it from expiring
    except OSError:
        pass
    restored = []
    for role in ("reference", "query"):
        if st.session_state.get(DATA_KEY[role]) is not None:
            continue
        meta = read_json(d / f"{role}.json")
        if not isinstance(meta, dict):
            continue
        orientation = str(meta.get("orientation") or "auto")  # (read_dataset refuses any other value)
        try:
            if meta.get("kind") == "demo":
                adata = data_ui.demo_dataset(role)
            elif meta.get("kind") == "upload":
                from cellannot_core.data import read_uploaded

                adata = data_ui.with_layer(read_uploaded((d / f"{role}.upload").read_bytes(), str(meta.get("name")),
                                                         name=role, orientation=orientation), meta.get("layer"), role)
            elif meta.get("kind") == "path" and not data_ui.allowed_path(Path(str(meta.get("path")))):
                adata = data_ui.with_layer(data_ui.read_path(role, Path(str(meta.get("path"))), orientation),
                                           meta.get("layer"), role)
            elif meta.get("kind") == "run" and role == "reference":  # (read_run_reference checks the owner)
                adata = data_ui.read_run_reference(str(meta.get("dataset_id")).removeprefix("run-"))[0]
            else:
                continue
        except (CellannotError, OSError):
            continue
        put(DATA_KEY[role], adata)
        put(INFO_KEY[role], {"id": str(meta.get("dataset_id")), "name": str(meta.get("name")),
                             # as it was set (the home page told a restored demo from the visitor's own data by
                             # it: "demo (restored)" read as their own, found 2026-12-07)
                             "source": (f"server path {meta.get('path')}" if meta.get("kind") == "path"
                                        else str(meta.get("kind"))), "restored": True, "layer": meta.get("layer"),
                             "n_cells": int((stream_source(adata) or {}).get("n_obs", adata.n_obs)),
                             "n_genes": int(adata.n_vars)})
        restored.append(role)
    if restored:
        choices = read_json(d / "choices.json")
        choices = choices if isinstance(choices, dict) else {}
        for key in CHOICE_KEYS:
            if key == StateKeys.RUN_ID:  # the run last shown, unless the link names one (or it is gone)
                run_id = choices.get(key)
                if isinstance(run_id, str) and not st.query_params.get(RUN_PARAM) and can_open(run_id):
                    put(key, run_id)
            elif key in choices:
                put(key, choices[key])
        st.session_state[SAVED_CHOICES_KEY] = dict(choices)
    return restored


def link_notice() -> None:
    """Ask, above every page, about a link to a session this browser has not used: nothing of it
    is shown or opened until the visitor says it is theirs."""
    from ui.state import WidgetKeys

    info = pending_link()
    if info is None:
        return
    what = ", ".join(info["datasets"]) or "no datasets"
    runs = f"{info['runs']} run" + ("" if info["runs"] == 1 else "s")
    with st.container(border=True):
        st.warning(
            f"**This link opens a session that another browser used** ({what}; {runs}). Open it only if it "
            "is yours: you used this link in another browser, or your browser was restarted. If someone "
            "sent you the link, start your own session: what you load into theirs, they would see."
            + (" Your browser sends this server no cookie, so it cannot be told from another browser and is "
               "asked each time." if browser_id() == NO_COOKIE else ""),
            icon=":material/link:")
        left, right = st.columns(2)
        left.button("Start my own session", key=WidgetKeys.LINK_NEW, type="primary", on_click=open_pending,
                    args=(False,), width="stretch")
        right.button("Open that session", key=WidgetKeys.LINK_OPEN, on_click=open_pending, args=(True,),
                     width="stretch")


def kept_datasets_panel() -> None:
    """The Data page's "Your datasets on this server": what is kept, and a button that forgets it."""
    from ui.state import WidgetKeys

    kept = kept_datasets()
    if not kept:
        return
    with st.expander("Your datasets on this server"):
        days = session_days()
        st.caption("Kept so that a reload or a restart brings them back; only this session's private link "
                   "opens them" + (f", and this server deletes them when the session has not been opened for "
                                   f"{days:g} days" if days else "") + ". Runs keep their own results and trained "
                   "model (which holds the expression of up to 10,000 reference cells) until you delete them on "
                   "the Runs page.")
        st.dataframe(kept, hide_index=True)
        st.button("Forget my datasets on this server", key=WidgetKeys.FORGET_DATA, icon=":material/delete:",
                  on_click=forget_datasets,
                  help="Deletes the uploaded copies, the paths and the column choices kept for this session, "
                       "and unloads both datasets.")
