"""A self-contained HTML page showing a model's attention (no CDN, no network, works
offline, one file): a head view (lines from each token to what it attends to, heads
selectable), a model view (every layer x head, click to zoom) and a heat map; hovering a
token highlights its attention; the current view exports as PNG.

    view = AttentionView.from_encoder(encoder, ["I sat on the bank of the river"])
    view.save("attention.html")         # or display(view) in Jupyter

Safety: the weights and tokens travel as one JSON block with ``<``, ``>``, ``&`` and the
line separators escaped, so no token text can close the block; the page's script puts
tokens on screen only through canvas ``fillText`` and ``textContent``, never as markup;
a Content-Security-Policy forbids every network request.

Size: weights are quantised to 255 levels (1/254 steps; 255 marks a NaN or infinite
weight, drawn red) and base64-encoded: layers x heads x n^2 bytes per text. Texts longer
than ``max_tokens`` (default 512) are refused with a clear error instead of writing a page
too large to open.

Shape legend::

    L layers   H heads   n tokens of one text
    attention per text: (L, H, n, n), or a sequence of L tensors (H, n, n) / (1, H, n, n)
"""
from __future__ import annotations

import base64
import html
import json
import os
from importlib import resources
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .. import _check, _io

__all__ = ["AttentionView", "attention_page"]

_CSS = """
body{font:14px system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:10px 16px;background:#fff;border-bottom:1px solid #ddd;position:sticky;top:0;z-index:1}
h1{font-size:17px;margin:0 0 8px}
.controls{display:flex;gap:14px;align-items:center;flex-wrap:wrap}
button{font:inherit;padding:3px 9px;border:1px solid #bbb;background:#f4f4f4;border-radius:4px;cursor:pointer}
button.tab.on{background:#333;color:#fff;border-color:#333}
#heads{margin-top:8px;display:flex;gap:4px;flex-wrap:wrap}
button.head{border-color:var(--c);color:var(--c);min-width:2.2em;background:#fff}
button.head.on{background:var(--c);color:#fff}
main{padding:12px 16px}
#stage{overflow:auto;max-height:calc(100vh - 190px);background:#fff;border:1px solid #ddd;display:inline-block}
#grid{display:grid;gap:4px;align-items:center;overflow:auto;max-height:calc(100vh - 190px)}
#grid .axis{font-size:11px;color:#555;white-space:nowrap}
canvas.thumb{cursor:zoom-in;border:1px solid #ddd}
footer{position:fixed;bottom:0;left:0;right:0;background:#fff;border-top:1px solid #ddd;padding:6px 16px;
  min-height:1.4em;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
[hidden]{display:none!important}
"""

_BODY = """<header><h1 id="title"></h1><div class="controls">
<label id="text-box">Text <select id="text"></select></label>
<label id="layer-box">Layer <select id="layer"></select></label>
<span><button type="button" class="tab" data-view="head">Head view</button>
<button type="button" class="tab" data-view="model">Model view</button>
<button type="button" class="tab" data-view="heat">Heat map</button></span>
<button type="button" id="export">Export PNG</button></div>
<div id="heads"></div></header>
<main><div id="stage"><canvas id="canvas"></canvas></div><div id="grid" hidden></div></main>
<footer id="status"></footer>"""

# No network at all; inline style and script only (the page carries everything it needs).
_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data: blob:"


def _script() -> str:
    return resources.files("attend.viz").joinpath("_page.js").read_text(encoding="utf-8")


def _json_for_html(obj) -> str:
    """JSON that is inert inside a <script> element: no '<', '>', '&' or line separators."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


# Weights are probabilities; values this far outside [0, 1] are not attention weights (the
# slack covers rounding in 16-bit weights).
_TOLERANCE = 1e-3


def _check_dtype(t: Tensor, what: str) -> None:
    if t.is_complex():
        raise TypeError(f"{what}: weights must be real numbers, got dtype {t.dtype}")


def _as_layers(att, what: str) -> Tensor:
    """(L, H, n, n) float tensor from a tensor or a sequence of per-layer tensors; every
    layer with the same heads and tokens, at least one layer and one head, real numbers in
    [0, 1] (NaN and infinities pass: the page draws them red)."""
    if isinstance(att, Tensor):
        _check_dtype(att, what)
        t = att
    elif isinstance(att, (list, tuple)) and att and all(isinstance(a, Tensor) for a in att):
        layers = []
        for i, a in enumerate(att):
            _check_dtype(a, f"{what}[{i}]")
            if not (a.ndim == 3 or (a.ndim == 4 and a.shape[0] == 1)):
                raise ValueError(f"{what}: layer {i} has shape {tuple(a.shape)}; expected (heads, n, n) or "
                                 "(1, heads, n, n)")
            layers.append(a.squeeze(0) if a.ndim == 4 else a)
            if layers[-1].shape != layers[0].shape:
                raise ValueError(f"{what}: layer {i} has shape {tuple(layers[-1].shape)}, but layer 0 has "
                                 f"{tuple(layers[0].shape)} (heads, n, n); every layer needs the same heads and tokens")
        t = torch.stack(layers)
    else:
        raise TypeError(f"{what}: expected a tensor (layers, heads, n, n) or a list of per-layer tensors")
    if t.ndim == 3:
        t = t.unsqueeze(0)  # one layer
    if t.ndim != 4 or t.shape[-1] != t.shape[-2]:
        raise ValueError(f"{what}: expected shape (layers, heads, n, n), got {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{what}: {t.shape[0]} layers and {t.shape[1]} heads (shape {tuple(t.shape)}); the viewer "
                         "needs at least one layer and one head")
    t = t.detach().to("cpu", torch.float32)
    bad = torch.isfinite(t) & ((t < -_TOLERANCE) | (t > 1 + _TOLERANCE))
    if bool(bad.any()):
        layer, head, row, col = (int(x) for x in bad.nonzero()[0])
        value = float(t[layer, head, row, col])
        raise ValueError(f"{what}: weights must be in [0, 1] (attention probabilities), got {value:.6g} at layer "
                         f"{layer}, head {head}, row {row}, column {col}")
    return t


def _quantise(w: Tensor) -> str:
    finite = torch.isfinite(w)
    q = (w.clamp(0, 1).nan_to_num(0.0) * 254).round().to(torch.uint8)
    q[~finite] = 255
    return base64.b64encode(q.numpy().tobytes()).decode("ascii")


def _title(title) -> str:
    """The page's heading: a string, or None for the default ("Attention")."""
    if title is None:
        return "Attention"
    if not isinstance(title, str):
        raise TypeError(f"title: expected None or a string, got {type(title).__name__}")
    return title


def _check_max_tokens(max_tokens) -> None:
    if not _check.is_int(max_tokens) or max_tokens < 1:  # the viewer's "name: expected ..." wording
        raise ValueError(f"max_tokens: expected an int >= 1, got {max_tokens!r}")


_EXTENSIONS = (".html", ".htm")


def attention_page(tokens: Sequence[Sequence[str]], attentions: Sequence, *, labels: Optional[Sequence[str]] = None,
                   title: str = "Attention", note: Optional[str] = None, max_tokens: int = 512) -> str:
    """The HTML page (a string) for one or more texts.

    Args:
        tokens: per text, its token strings (n of them).
        attentions: per text, weights (L, H, n, n) or a list of L tensors (H, n, n).
        labels: names shown in the text selector (default: the first tokens).
        title: the page's heading (None: "Attention"); note: a line shown under it (or None).
        max_tokens: longest text accepted.

    Every argument is checked (its name is in the error); a text with no tokens is refused,
    and so are weights with no layer or no head, layers with different shapes, complex
    weights and finite weights outside [0, 1] (beyond 1e-3 of rounding); NaN and infinite
    weights are drawn red.
    """
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence) or not tokens:
        raise TypeError("tokens: expected a non-empty list with one list of token strings per text")
    if isinstance(attentions, (str, bytes)) or not isinstance(attentions, (Sequence, Tensor)):
        raise TypeError(f"attentions: expected a list with the weights of each text, got {type(attentions).__name__}")
    if len(attentions) != len(tokens):
        raise ValueError(f"attentions: {len(attentions)} entries for {len(tokens)} texts")
    if labels is not None:
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence) \
                or not all(isinstance(x, str) for x in labels):
            raise TypeError(f"labels: expected None or a list of strings, got {type(labels).__name__}")
        if len(labels) != len(tokens):
            raise ValueError(f"labels: {len(labels)} labels for {len(tokens)} texts")
    title = _title(title)
    if note is not None and not isinstance(note, str):
        raise TypeError(f"note: expected None or a string, got {type(note).__name__}")
    _check_max_tokens(max_tokens)
    for k, toks in enumerate(tokens):
        if isinstance(toks, str) or not isinstance(toks, Sequence) or not all(isinstance(t, str) for t in toks):
            raise TypeError(f"tokens[{k}]: expected a list of strings")
        if len(toks) == 0:
            raise ValueError(f"tokens[{k}]: text {k} has no tokens; the viewer needs at least one per text")
    texts = []
    for k, (toks, att) in enumerate(zip(tokens, attentions)):
        w = _as_layers(att, f"attentions[{k}]")
        n = len(toks)
        if n > max_tokens:
            raise ValueError(f"text {k} has {n} tokens; the viewer shows at most max_tokens={max_tokens} "
                             "(split the text or raise max_tokens)")
        if w.shape[-1] != n:
            raise ValueError(f"attentions[{k}]: weights over {w.shape[-1]} tokens, but tokens[{k}] has {n}")
        label = labels[k] if labels is not None else " ".join(toks[:8]) + (" …" if n > 8 else "")
        texts.append({"label": str(label), "tokens": list(toks), "layers": int(w.shape[0]), "heads": int(w.shape[1]),
                      "n": n, "weights": _quantise(w)})
    doc = {"title": str(title), "note": note, "texts": texts}
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">"
            f"<title>{html.escape(str(title))}</title><style>{_CSS}</style></head><body>{_BODY}\n"
            f"<script type=\"application/json\" id=\"attend-data\">{_json_for_html(doc)}</script>\n"
            f"<script>{_script()}</script></body></html>\n")


class AttentionView:
    """The attention of every layer and head of a model on one or more texts, as a page.

    ``save(path)`` writes it (atomically, never over an existing file unless
    ``force=True``); in Jupyter the object displays itself in a sandboxed frame.
    """

    def __init__(self, tokens: Sequence[Sequence[str]], attentions: Sequence, *,
                 labels: Optional[Sequence[str]] = None, title: Optional[str] = "Attention", note: Optional[str] = None,
                 max_tokens: int = 512):
        """``title=None`` gives the default title, as in :meth:`from_encoder`."""
        self.html = attention_page(tokens, attentions, labels=labels, title=title, note=note, max_tokens=max_tokens)

    @classmethod
    def from_encoder(cls, encoder, texts: Sequence[str], *, title: Optional[str] = None,
                     max_tokens: int = 512) -> "AttentionView":
        """Run a :class:`~attend.models.bert.SentenceEncoder` on ``texts`` and show its attention."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts: expected a string or a non-empty list of strings")
        title = _title(title)  # checked as the constructor checks it, before the encoder runs
        _check_max_tokens(max_tokens)
        if not callable(getattr(encoder, "embed_tokens", None)):
            raise TypeError(f"encoder: expected a SentenceEncoder (attend.models.bert), got {type(encoder).__name__}")
        tokens, atts = [], []
        for text in texts:  # one at a time: no padding in the pictures
            batch, out = encoder.embed_tokens([text], need_weights=True)
            tokens.append(batch.tokens[0])
            atts.append([a[0] for a in out.attentions])
        return cls(tokens, atts, labels=list(texts), title=title, max_tokens=max_tokens)

    def save(self, path: Union[str, os.PathLike], *, force: bool = False) -> str:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
        path = os.fspath(path)
        if isinstance(path, bytes):
            raise TypeError("path: expected a str or os.PathLike of a str, got bytes")
        if os.path.isdir(path):
            raise IsADirectoryError(f"path: {path} is a folder, not a file")
        ext = os.path.splitext(path)[1]
        if ext.lower() not in _EXTENSIONS:
            problem = f"extension {ext!r} is not" if ext else "no file extension: it must be"
            raise ValueError(f"path: {path}: {problem} .html or .htm (the viewer is an HTML page)")
        folder = os.path.dirname(path)
        if folder and not os.path.isdir(folder):
            raise FileNotFoundError(f"path: {path}: the folder {folder} does not exist")
        if os.path.exists(path) and not force:
            raise FileExistsError(f"{path} exists (use force=True / --force to overwrite)")
        _io.atomic_write(path, self.html.encode("utf-8"))
        return path

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html.escape(self.html, quote=True)}" sandbox="allow-scripts allow-downloads" '
                'style="width:100%;height:720px;border:1px solid #ddd"></iframe>')
