"""cellannot core: single-cell label transfer with calibrated confidence and novelty detection.

Never imports streamlit. Heavy libraries (torch, scanpy, umap) are imported by the modules
that need them.
"""
__version__ = "0.1.0"
