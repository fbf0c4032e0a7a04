"""Session-state keys (constants), their defaults in one dict, and ``init_state()``.

Only small things live in the session: the loaded datasets (AnnData objects, per session),
the chosen columns/options and the *id* of the current run. Everything about a run (status,
progress, results) lives in its run directory, so it survives reruns, page switches and a
browser refresh.
"""
from __future__ import annotations

import copy
import re
from typing import Any

import streamlit as st


class StateKeys:
    """Session-state keys that persist across pages (never used as widget keys)."""

    REFERENCE = "reference_adata"  # AnnData
    QUERY = "query_adata"  # AnnData
    REFERENCE_INFO = "reference_info"  # dict: id, name, source
    QUERY_INFO = "query_info"
    LABEL_KEY = "label_key"  # reference obs column
    QUERY_LABEL_KEY = "query_label_key"  # query obs column or None
    BATCH_KEY = "batch_key"  # obs column naming each cell's sample / batch, or None
    QC = "qc"  # dict(min_genes=, min_counts=, max_pct_mito=) or None
    DEMO = "demo_loaded"  # bool
    RUN_ID = "current_run_id"  # id of the run the result pages show
    RELABEL_SEEN = "relabel_runs_seen"  # the finished runs the relabel picker offered last time
    DELETE_ERROR = "delete_run_error"  # why the run could not be deleted, shown once
    RUN_PICKER_NONCE = "runs_picker_nonce"  # bumped to give the Runs page's run picker a new, empty widget


class WidgetKeys:
    """Keys of widgets that tests (and callbacks) address; prefixed so they never clash."""

    DEMO_BUTTON = "w_demo"
    FORGET_DATA = "w_forget_data"  # delete the session's kept datasets from the server
    LINK_OPEN = "w_link_open"  # open the session of a link another browser used
    LINK_NEW = "w_link_new"  # keep this browser's own new session instead
    UPLOAD = "w_upload_{role}"
    PATH = "w_path_{role}"
    PATH_BUTTON = "w_path_load_{role}"
    FLIP_TABLE = "w_flip_table_{role}"  # read a table the other way round
    COUNTS_LAYER = "w_counts_layer_{role}_{layer}"  # take the raw counts from a layer of another name
    RUN_REFERENCE = "w_run_reference"  # a finished run whose kept reference cells become the reference
    RUN_REFERENCE_BUTTON = "w_run_reference_load"
    LABEL_PICKER = "w_label_key"
    QUERY_LABEL_PICKER = "w_query_label_key"
    BATCH_PICKER = "w_batch_key"
    QC_ON = "w_qc_on"
    QC_MIN_GENES = "w_qc_min_genes"
    QC_MIN_COUNTS = "w_qc_min_counts"
    QC_MAX_MITO = "w_qc_max_mito"
    MODEL = "w_model"
    HPARAM = "w_hp_{model}_{name}"
    DEVICE = "w_device"
    SEED = "w_seed"
    QUICK = "w_quick"
    QUICK_SECONDS = "w_quick_seconds"
    MAX_EPOCHS = "w_max_epochs"
    N_TOP_GENES = "w_n_top_genes"
    HVG_FLAVOR = "w_hvg_flavor"
    ACCEPT = "w_accept"
    N_GENERATE = "w_n_generate"
    START = "w_start"
    RELABEL_RUN = "w_relabel_run"  # a finished run whose model labels the query without training
    RELABEL_START = "w_relabel_start"
    CANCEL = "w_cancel"
    RUN_PICKER = "w_run_pick"
    OPEN_RUN = "w_open_run"
    DELETE_RUN = "w_delete_run"
    DELETE_POPOVER = "w_delete_popover"  # the popover that asks once more (closed once the run is gone)
    RERUN = "w_rerun"
    RUNS_MODELS = "w_runs_models"
    RUNS_CSV = "w_runs_csv"
    RUNS_RERUN = "w_runs_rerun"
    RUNS_CARD = "w_runs_card"
    RUNS_SWEEP = "w_runs_sweep"
    NORMALIZE = "w_heat_norm"
    FILTER_LABELS = "w_filter_labels"
    FILTER_CONF = "w_filter_conf"
    FILTER_UNKNOWN = "w_filter_unknown"
    EMBED_METHOD = "w_embed_method"
    EMBED_LAYOUT = "w_embed_layout"
    COLOR_BY = "w_color_by"
    SHOW_GENERATED = "w_show_generated"
    SHOW_MEASURED = "w_show_measured"
    SCORE_METHOD = "w_score_method"
    THRESHOLD = "w_threshold_{run}_{method}"
    ACCEPT_GROUPS = "w_accept_groups_{run}"
    ACCEPT_SHORT = "w_accept_short_{run}"


DEFAULTS: dict[str, Any] = {
    StateKeys.REFERENCE: None,
    StateKeys.QUERY: None,
    StateKeys.REFERENCE_INFO: None,
    StateKeys.QUERY_INFO: None,
    StateKeys.LABEL_KEY: None,
    StateKeys.QUERY_LABEL_KEY: None,
    StateKeys.BATCH_KEY: None,
    StateKeys.QC: None,
    StateKeys.DEMO: False,
    StateKeys.RUN_ID: None,
}

RUN_PARAM = "run"  # URL query parameter holding the current run id
ROLES = ("reference", "query")
# kept across reloads; the run shown too, so the session's link alone (no "&run=") reopens it (found 2026-12-07:
# the link brought the datasets back and every results page said to train a model first)
CHOICE_KEYS = (StateKeys.LABEL_KEY, StateKeys.QUERY_LABEL_KEY, StateKeys.BATCH_KEY, StateKeys.QC, StateKeys.DEMO,
               StateKeys.RUN_ID)
DATA_KEY = {"reference": StateKeys.REFERENCE, "query": StateKeys.QUERY}
INFO_KEY = {"reference": StateKeys.REFERENCE_INFO, "query": StateKeys.QUERY_INFO}


def run_through_app() -> None:
    """Have ``app.py``'s navigation run this page. Until a script of the server process has called
    ``st.navigation``, Streamlit runs a page of ``pages/`` by itself (its first multipage scheme,
    kept for apps with that folder): the first request after a server start that names a page (a
    reload of an open tab) got a menu of file names and no ``app.py``. The rerun goes through it."""
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        if not _THROUGH_APP["rerun"]:  # once per process, on a page load: a later rerun could drop a click
            _THROUGH_APP["rerun"] = True  # (Streamlit's AppTest sets the flag again before each of its runs)
            st.rerun()


_THROUGH_APP = {"rerun": False}


#: the results pages' view choices, kept over a visit to another page (the Latent page's layout, embedding and
#: colouring and the Label transfer page's percentages went back to their defaults, found 2026-12-07)
VIEW_KEYS = (WidgetKeys.EMBED_LAYOUT, WidgetKeys.EMBED_METHOD, WidgetKeys.COLOR_BY, WidgetKeys.NORMALIZE)


def init_state() -> None:
    """Set every missing key to its default (idempotent; call at the top of every page)."""
    from ui import session

    run_through_app()
    fresh = StateKeys.RUN_ID not in st.session_state
    for key, value in DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = copy.deepcopy(value)
    for key in VIEW_KEYS:  # kept while another page shows (Streamlit drops a widget's value when it is not drawn)
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
    session.token()
    if fresh:  # a new browser session (first visit, reload, restart): bring back its datasets
        session.restore()
    if st.session_state[StateKeys.REFERENCE] is not None or st.session_state[StateKeys.QUERY] is not None:
        session.remember_choices({k: st.session_state[k] for k in CHOICE_KEYS})
    sync_run_param()


def sync_run_param() -> None:
    """Mirror the current run id in the URL (``?run=...``) so a browser refresh (a new session)
    reopens it; an id from the URL is only taken when that run exists and is this session's."""
    from ui.session import can_open

    run_id = st.session_state.get(StateKeys.RUN_ID)
    from_url = st.query_params.get(RUN_PARAM)
    if run_id is None and from_url:
        if not can_open(from_url):  # not this session's run (or none): as if it did not exist
            del st.query_params[RUN_PARAM]
            return
        st.session_state[StateKeys.RUN_ID] = from_url
    elif run_id and from_url != run_id:
        st.query_params[RUN_PARAM] = run_id


_MARKDOWN = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|~$:=])")
_LINE_BREAK = re.compile(r"[\r\n\t\v\f]+")
# where GFM makes a link of bare text ("http://...", "www...", "name@host"): a word joiner (U+2060,
# invisible) breaks it, since escaping does not (found 2026-12-07 by a second probe)
_AUTOLINK = re.compile(r"(?<=:)(?=//)|(?<=www)(?=\.)|(?<=@)", re.IGNORECASE)


def md(text: Any) -> str:
    """``text`` (a cell type, a gene, a column, a file's name, a message quoting them) shown as it
    is where Streamlit renders Markdown: every Markdown character escaped, line breaks made spaces
    and bare addresses kept from becoming links. Found 2026-12-07: a label
    ``![t](http://host/x.png)`` made each visitor's browser fetch that address from the Explain
    page, and a label can as well be a link anywhere a page writes it into Markdown."""
    plain = _AUTOLINK.sub("\u2060", _LINE_BREAK.sub(" ", str(text)))
    return _MARKDOWN.sub(r"\\\1", plain)


def code(text: Any) -> str:
    """``text`` as Markdown code (shown as it is; its own backticks made quotes and its line breaks
    spaces: a blank line ends a code span, and what followed it was Markdown again)."""
    return "`" + _LINE_BREAK.sub(" ", str(text)).replace("`", "'") + "`"


def get(key: str) -> Any:
    return st.session_state.get(key, DEFAULTS.get(key))


def put(key: str, value: Any) -> None:
    """Set a session value; a column choice or QC option is kept with the session's datasets at once (it was kept at
    the next page run, so a reload just after a pick lost it: found 2026-12-07)."""
    st.session_state[key] = value
    if key in CHOICE_KEYS and (st.session_state.get(StateKeys.REFERENCE) is not None
                               or st.session_state.get(StateKeys.QUERY) is not None):
        from ui import session

        session.remember_choices({k: st.session_state.get(k) for k in CHOICE_KEYS})


def data_loaded() -> bool:
    """Both datasets are in the session."""
    return get(StateKeys.REFERENCE) is not None and get(StateKeys.QUERY) is not None


def set_run(run_id: str | None) -> None:
    """Make ``run_id`` the session's current run (and put it in the URL); None: no current run."""
    st.session_state[StateKeys.RUN_ID] = run_id
    if run_id is None:
        if RUN_PARAM in st.query_params:
            del st.query_params[RUN_PARAM]
    else:
        st.query_params[RUN_PARAM] = run_id
