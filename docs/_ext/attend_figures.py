"""Sphinx extension: generate the guide's figures from ``docs/figures.py`` when a build starts.

Each figure is written to ``docs/_generated/<name>.png``; a figure is redrawn when the code of
``figures.py`` or attend's source changed since it was drawn (a stamp holds their digest).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os


def _digest(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        with open(p, "rb") as f:
            h.update(p.encode() + b"\0" + f.read())
    return h.hexdigest()


def _sources(docs: str) -> list[str]:
    src = os.path.join(os.path.dirname(docs), "src", "attend")
    found = [os.path.join(docs, "figures.py")]
    for root, _, files in os.walk(src):
        found += [os.path.join(root, f) for f in files if f.endswith(".py")]
    return found


def generate(app) -> None:
    docs = app.srcdir if isinstance(app.srcdir, str) else str(app.srcdir)
    out = os.path.join(docs, "_generated")
    os.makedirs(out, exist_ok=True)
    spec = importlib.util.spec_from_file_location("attend_docs_figures", os.path.join(docs, "figures.py"))
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    stamp = os.path.join(out, "figures.stamp")
    digest = _digest(_sources(docs))
    have = open(stamp).read() if os.path.exists(stamp) else ""
    missing = [n for n in figures.FIGURES if not os.path.exists(os.path.join(out, n + ".png"))]
    if have == digest and not missing:
        return
    figures.draw_all(out)
    with open(stamp, "w") as f:
        f.write(digest)


LANGUAGES = {"en": "en", "id": "id", "pl": "pl", "zh": "zh-Hans", "es": "es"}


def page_language(app, pagename, templatename, context, doctree) -> None:
    """Each language's pages say their language (``<html lang=...>``), so browsers pick the right
    fonts (Chinese glyphs in particular); Sphinx's own labels stay in English."""
    first = pagename.split("/", 1)[0]
    if first in LANGUAGES:
        context["language"] = LANGUAGES[first]


def setup(app):
    app.connect("builder-inited", generate)
    app.connect("html-page-context", page_language)
    return {"version": "1", "parallel_read_safe": True}
