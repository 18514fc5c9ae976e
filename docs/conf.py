"""Sphinx configuration of attend's concept guide (one site, five languages).

Build: ``scripts/docs`` (or ``python -m sphinx -b html -W docs docs/_build/html``). The figures
are generated from code (``docs/figures.py``) when the build starts, by the local extension
``_ext/attend_figures.py``; nothing is fetched from the network, so the site builds and reads
offline.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

project = "attend"
author = "the attend developers"
copyright = "2026, the attend developers"
extensions = ["myst_parser", "attend_figures"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated/*.stamp", "README.md"]
myst_heading_anchors = 3
html_theme = "alabaster"
html_theme_options = {"description": "the attention mechanism, every variant, one API", "show_powered_by": False}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
html_show_sourcelink = False
html_static_path = []
