"""attend.viz.plots: the figures draw what they are given, words as written."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("matplotlib", reason="matplotlib is not installed (extra 'viz')")
from attend.viz import attention_heatmap, bleu_by_length_plot  # noqa: E402


def _svg_text(draw, tmp_path) -> str:
    """The figure as SVG with its text kept as text (not paths), to read what was drawn."""
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none"}):
        return open(draw(str(tmp_path / "f.svg")), encoding="utf-8").read()


def test_words_are_drawn_as_written_not_as_math(tmp_path):
    words = ["costs", "$5-$6", "$\\foo$", "\udcff"]  # (before: "5 – 6" without its $, an error, a TypeError)
    svg = _svg_text(lambda p: attention_heatmap(torch.full((1, 4), 0.25), words, ["$x$"], p, title="$t$"), tmp_path)
    for drawn in ("$5-$6", "$\\foo$", "\\udcff", "$x$", "$t$"):
        assert f">{drawn}<" in svg, drawn
    rows = [{"lo": 1, "hi": 9, "n": 3, "bleu": 20.0}]
    svg = _svg_text(lambda p: bleu_by_length_plot({"run $1": rows}, p, title="BLEU in $"), tmp_path)
    assert ">run $1<" in svg and ">BLEU in $<" in svg
