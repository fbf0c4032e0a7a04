"""Who the visitor is, what is theirs, and what survives a reload.

Each browser session has a random token, kept in the URL (``?s=...``) so that a reload or a
server restart finds the same session. On the server only its SHA-256 (the *owner id*) is
written: runs record it, and a visitor lists and opens only runs with their owner id (plus the
command line's runs, which have none, while the app listens on 127.0.0.1 only). The session's
datasets are remembered in ``<runs root>/.sessions/<owner id>/`` (the uploaded bytes, the path
or the demo, and the column choices), so a reload or a restart brings them back. The link with
``?s=`` is the session's private link: whoever has it sees its data and runs.
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
from pathlib import Path
from typing import Any

import streamlit as st

SESSION_PARAM = "s"
TOKEN_KEY = "session_token"
SAVED_CHOICES_KEY = "session_saved_choices"
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
LOCAL_ADDRESSES = ("127.0.0.1", "localhost", "::1")
SESSIONS_DIR = ".sessions"  # under the runs root; not a run id (RUN_ID_RE needs a letter or digit first)


def server_is_local() -> bool:
    """Whether the app listens on this machine only (then its visitor is the machine's user)."""
    return str(st.get_option("server.address") or "") in LOCAL_ADDRESSES


def token() -> str:
    """This browser session's token: from the session, else from the URL, else a new one; always
    mirrored in the URL so that a reload keeps it."""
    tok = st.session_state.get(TOKEN_KEY)
    if tok is None:
        from_url = st.query_params.get(SESSION_PARAM)
        tok = from_url if isinstance(from_url, str) and TOKEN_RE.match(from_url) else secrets.token_urlsafe(24)
        st.session_state[TOKEN_KEY] = tok
    if st.query_params.get(SESSION_PARAM) != tok:
        st.query_params[SESSION_PARAM] = tok
    return tok


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
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def _write(path: Path, data: bytes) -> None:
    from cellannot_core.runs import write_bytes_atomic

    write_bytes_atomic(path, data)


def remember_dataset(role: str, kind: str, *, name: str, dataset_id: str, data: bytes | None = None,
                     path: str | None = None) -> None:
    """Keep what brings a loaded dataset back: the uploaded bytes, the server path or the demo."""
    d = session_dir(create=True)
    if kind == "upload" and data is not None:
        _write(d / f"{role}.upload", data)
    _write(d / f"{role}.json", json.dumps({"kind": kind, "name": name, "dataset_id": dataset_id,
                                           "path": path}).encode())


def remember_choices(choices: dict[str, Any]) -> None:
    """Keep the column choices and QC options (written only when they change)."""
    if st.session_state.get(SAVED_CHOICES_KEY) == choices:
        return
    st.session_state[SAVED_CHOICES_KEY] = dict(choices)
    _write(session_dir(create=True) / "choices.json", json.dumps(choices).encode())


def restore() -> list[str]:
    """Bring back the session's datasets and choices after a reload or a restart; returns the
    roles restored (a dataset that can no longer be read is skipped, never raised)."""
    from cellannot_core.errors import CellannotError
    from cellannot_core.data.stream import stream_source
    from cellannot_core.runs import read_json
    from ui import data as data_ui
    from ui.state import CHOICE_KEYS, DATA_KEY, INFO_KEY, put

    d = session_dir()
    if not d.is_dir():
        return []
    restored = []
    for role in ("reference", "query"):
        if st.session_state.get(DATA_KEY[role]) is not None:
            continue
        meta = read_json(d / f"{role}.json")
        if not isinstance(meta, dict):
            continue
        try:
            if meta.get("kind") == "demo":
                adata = data_ui.demo_dataset(role)
            elif meta.get("kind") == "upload":
                from cellannot_core.data import read_uploaded

                adata = read_uploaded((d / f"{role}.upload").read_bytes(), str(meta.get("name")), name=role)
            elif meta.get("kind") == "path" and not data_ui.allowed_path(Path(str(meta.get("path")))):
                adata = data_ui.read_path(role, Path(str(meta.get("path"))))
            else:
                continue
        except (CellannotError, OSError):
            continue
        put(DATA_KEY[role], adata)
        put(INFO_KEY[role], {"id": str(meta.get("dataset_id")), "name": str(meta.get("name")),
                             "source": f"{meta.get('kind')} (restored)",
                             "n_cells": int((stream_source(adata) or {}).get("n_obs", adata.n_obs)),
                             "n_genes": int(adata.n_vars)})
        restored.append(role)
    if restored:
        choices = read_json(d / "choices.json") or {}
        for key in CHOICE_KEYS:
            if key in choices:
                put(key, choices[key])
        st.session_state[SAVED_CHOICES_KEY] = dict(choices)
    return restored
