"""cellannot web app: page config, navigation, session state. Nothing else (pages live in pages/)."""
import streamlit as st

from ui.data import guard_uploads
from ui.session import link_notice
from ui.state import init_state

st.set_page_config(page_title="cellannot", page_icon=":material/biotech:", layout="wide")
guard_uploads()
init_state()
link_notice()
nav = st.navigation({
    "": [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True)],
    "Workflow": [
        st.Page("pages/data.py", title="Data", icon=":material/folder_open:"),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
    ],
    "Results": [
        st.Page("pages/results.py", title="Label transfer", icon=":material/label:"),
        st.Page("pages/latent.py", title="Latent space", icon=":material/scatter_plot:"),
        st.Page("pages/calibration.py", title="Calibration & novelty", icon=":material/tune:"),
        st.Page("pages/explain.py", title="Explain", icon=":material/psychology:"),
        st.Page("pages/compare.py", title="Compare models", icon=":material/leaderboard:"),
    ],
})
nav.run()
