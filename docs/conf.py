"""Sphinx configuration of the ZiPo documentation (how to build it: development.md)."""

from __future__ import annotations

import zipo  # installed: pip install -e ".[docs]"

project = "ZiPo"
author = "ZiPo developers"
copyright = "ZiPo developers, BSD-3-Clause"
version = release = zipo.__version__

extensions = [
    "myst_nb",  # Markdown pages (MyST) and notebooks written as Markdown, executed at build
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # numpydoc-style sections (Parameters, Returns) in docstrings
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}
exclude_patterns = ["_build", "README.md", "**.ipynb_checkpoints", "jupyter_execute"]

# Markdown
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

# Tutorials execute on every build; an error in a cell fails the build.
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 600
nb_merge_streams = True

# API reference
autosummary_generate = True
templates_path = ["_templates"]
autodoc_typehints = "none"  # the signatures carry them; docstrings say what the values mean
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_preprocess_types = True


html_theme = "pydata_sphinx_theme"
html_title = "ZiPo"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_static_path = []
