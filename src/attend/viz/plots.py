"""Figures: an alignment heat map, and BLEU against sentence length.

The file format follows the path's extension (:data:`FIGURE_FORMATS`: png, pdf, svg, jpg,
…); any other extension is refused before anything is drawn.
"""
from __future__ import annotations

import io
import os
from typing import Mapping, Sequence

import torch

from .._io import atomic_write

__all__ = ["attention_heatmap", "bleu_by_length_plot", "figure_format", "FIGURE_FORMATS"]

# extension -> matplotlib format (those matplotlib writes without extra software)
FIGURE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".svgz": "svgz", ".jpg": "jpg", ".jpeg": "jpeg",
                  ".webp": "webp", ".tif": "tif", ".tiff": "tiff", ".eps": "eps", ".ps": "ps"}


def figure_format(path: str | os.PathLike, what: str = "path") -> str:
    """The format a figure is written in, from ``path``'s extension; an unknown extension is
    an error naming it and the ones accepted."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a str or os.PathLike, got {type(path).__name__}")
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in FIGURE_FORMATS:
        problem = f"{ext!r} is not a figure format" if ext else "no file extension"
        raise ValueError(f"{what} {os.fspath(path)}: {problem}; use one of {', '.join(FIGURE_FORMATS)}")
    return FIGURE_FORMATS[ext]


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'attend[viz]'") from None
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format=figure_format(path), bbox_inches="tight")
    atomic_write(path, buf.getvalue())
    return os.fspath(path)


def attention_heatmap(weights, source: Sequence[str], output: Sequence[str], path: str | os.PathLike, *,
                      title: str = "") -> str:
    """Write a heat map of ``weights`` (len(output), len(source)): source words along the
    top, output words down the side, darker = more attention. The format follows the
    extension of ``path``. Returns the path."""
    figure_format(path)
    w = torch.as_tensor(weights, dtype=torch.float32).detach().cpu()
    if w.ndim != 2 or tuple(w.shape) != (len(output), len(source)):
        raise ValueError(f"weights: expected shape (len(output), len(source)) = ({len(output)}, {len(source)}), "
                         f"got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weights contain NaN or infinite values")
    cell = 0.32
    fig = _figure(max(3.0, 1.5 + cell * len(source)), max(2.5, 1.2 + cell * len(output)))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(w.numpy(), cmap="Greys", vmin=0.0, vmax=max(1e-9, float(w.max()) if w.numel() else 1.0),
                   aspect="equal", interpolation="nearest")
    ax.set_xticks(range(len(source)), labels=[_plain(t) for t in source], rotation=90, fontsize=8)
    ax.set_yticks(range(len(output)), labels=[_plain(t) for t in output], fontsize=8)
    ax.xaxis.tick_top()
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    if title:
        ax.set_title(_plain(title), fontsize=9, pad=40)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    return _save(fig, _as_written(fig, path))


def _plain(text) -> str:
    """A label drawn as its characters: a character that is not text (a lone surrogate from a
    file's undecodable byte) as its escape, and (see :func:`_as_written`) no math markup."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _as_written(fig, path):
    """Every text of ``fig`` drawn as written: "$5-$6" keeps its dollar signs, rather than
    matplotlib reading the span between them as math (or failing on it)."""
    from matplotlib.text import Text

    for t in fig.findobj(Text):
        t.set_parse_math(False)
    return path


def bleu_by_length_plot(series: Mapping[str, Sequence[Mapping]], path: str | os.PathLike, *,
                        title: str = "BLEU by source sentence length") -> str:
    """Bahdanau et al.'s Figure 2 at our scale: one line per model, from rows
    ``{"lo", "hi", "n", "bleu"}`` (as :func:`attend.apps.evaluate` gives them)."""
    figure_format(path)
    if not series:
        raise ValueError("series is empty: nothing to plot")
    fig = _figure(6.0, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    for name, rows in series.items():
        if not rows:
            continue
        xs = [(r["lo"] + min(r["hi"], r["lo"] + 9)) / 2 for r in rows]
        ax.plot(xs, [r["bleu"] for r in rows], marker="o", label=_plain(name))
    labels = {((r["lo"] + min(r["hi"], r["lo"] + 9)) / 2): (f"{r['lo']}-{r['hi']}" if r["hi"] < 1000 else f"{r['lo']}+")
              for rows in series.values() for r in rows}
    ax.set_xticks(list(labels), labels=list(labels.values()))
    ax.set_xlabel("source sentence length (words)")
    ax.set_ylabel("BLEU")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(_plain(title))
    return _save(fig, _as_written(fig, path))
