"""Sphinx configuration of the sb3-iql documentation (MyST Markdown pages, autodoc of the package)."""

import importlib.util
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

with open(os.path.join(os.path.dirname(__file__), "..", "sb3_iql", "version.txt")) as file_handler:
    __version__ = file_handler.read().strip()

project = "sb3-iql"
copyright = "2026, sb3-iql contributors"
author = "sb3-iql contributors"
version = __version__
release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
master_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# Autodoc: SB3-style ``:param name:`` docstrings, members in source order.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}
# sb3_iql.zoo needs rl-zoo3 (the "zoo" extra): mocked when it is not installed, so that the API pages still build.
autodoc_mock_imports = [name for name in ("rl_zoo3",) if importlib.util.find_spec(name) is None]

html_theme = "sphinx_rtd_theme"
html_title = f"sb3-iql {version}"
pygments_style = "sphinx"
