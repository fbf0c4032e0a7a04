"""The only Streamlit-aware code outside ``pages/``: state keys, caching, the job runner, widgets.

Dependencies point one way: ``pages -> ui -> cellannot_core``.
"""
