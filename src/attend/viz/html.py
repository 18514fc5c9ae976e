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
weight, drawn red) and base64-encoded. Texts up to ``full_tokens`` (512) keep every weight;
longer ones, up to ``max_tokens`` (4096), keep what a person can see — each row's ``top_k``
strongest weights exactly and a block-max overview of at most 256 x 256 blocks
(:mod:`attend.viz._store`); the page says what was dropped. Aggregations across heads and
layers (mean, max, attention rollout, attention flow; :mod:`attend.viz.aggregate`) are
computed here and shown as views. Encoder–decoder models get a section per attention
(encoder, decoder, cross: :func:`seq2seq_page`).

Shape legend::

    L layers   H heads   n tokens of one text
    attention per text: (L, H, n, n), or a sequence of L tensors (H, n, n) / (1, H, n, n)
"""
from __future__ import annotations

import html
import json
import os
from importlib import resources
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .. import _check, _io
from . import _store, aggregate

__all__ = ["AttentionView", "attention_page", "seq2seq_page", "TooManyTokens", "labels_read"]


class TooManyTokens(ValueError):
    """A text longer than the viewer's ``max_tokens`` (``index``: which text, ``count``: its tokens)."""

    def __init__(self, message: str, index: int, count: int, limit: int):
        super().__init__(message)
        self.index, self.count, self.limit = index, count, limit


def labels_read(texts: Sequence[str], cut: Sequence[bool], limit: Optional[int]) -> list[str]:
    """Each text as a label, saying so where an encoder of ``limit`` tokens read only its first
    ones (``cut``: per text, from the tokenizer)."""
    return [text + (f" (its first {limit} tokens: the encoder's limit)" if c else "") for text, c in zip(texts, cut)]

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
#stage{overflow:auto;max-height:calc(100vh - 190px);background:#fff;border:1px solid #ddd;display:inline-flex;gap:12px;
  align-items:flex-start}
#grid{display:grid;gap:4px;align-items:center;justify-content:start;align-content:start;overflow:auto;
  max-height:calc(100vh - 190px)}
.caption{font-weight:600;padding:4px 6px;max-width:560px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
#info{margin-top:6px;font-size:12px;color:#555;max-width:1100px}
#window{width:6em}
#grid .axis{font-size:11px;color:#555;white-space:nowrap}
canvas.thumb{cursor:zoom-in;border:1px solid #ddd}
footer{position:fixed;bottom:0;left:0;right:0;background:#fff;border-top:1px solid #ddd;padding:6px 16px;
  min-height:1.4em;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
[hidden]{display:none!important}
"""

_BODY = """<header><h1 id="title"></h1><div class="controls">
<label id="text-box">Text <select id="text"></select></label>
<label id="compare-box"><input type="checkbox" id="compare"> side by side with <select id="text2"></select></label>
<label id="section-box">Attention <select id="section"></select></label>
<label id="layer-box">Layer <select id="layer"></select></label>
<span><button type="button" class="tab" data-view="head">Head view</button>
<button type="button" class="tab" data-view="model">Model view</button>
<button type="button" class="tab" data-view="heat">Heat map</button></span>
<label id="window-box">tokens from <input type="number" id="window" min="0" step="50" value="0"></label>
<button type="button" id="zoomout">Back to the whole map</button>
<button type="button" id="export">Export PNG</button></div>
<div id="heads"></div><div id="info"></div></header>
<main><div id="stage"><div class="panel"><div class="caption" id="caption1"></div><canvas id="canvas"></canvas></div>
<div class="panel" id="panel2"><div class="caption" id="caption2"></div><canvas id="canvas2"></canvas></div></div>
<div id="grid" hidden></div></main>
<footer id="status"></footer>"""

# No network at all; inline style and script only (the page carries everything it needs).
_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data: blob:"


def _script() -> str:
    return resources.files("attend.viz").joinpath("_page.js").read_text(encoding="utf-8")


def _text(text) -> str:
    """``text`` as UTF-8 can hold it: a lone surrogate (a file's undecodable byte, kept by
    Python in a token, a label or a folder's name) becomes "?"."""
    return str(text).encode("utf-8", "replace").decode("utf-8")


def _json_for_html(obj) -> str:
    """JSON that is inert inside a <script> element: no '<', '>', '&' or line separators."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    text = _text(text)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text




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
    if max_tokens > _store.MAX_COLUMNS:
        raise ValueError(f"max_tokens: at most {_store.MAX_COLUMNS}, got {max_tokens}")


_EXTENSIONS = (".html", ".htm")
AGGREGATIONS = ("mean", "max", "rollout", "flow")
_AGG_TITLES = {"mean": "mean of all heads and layers", "max": "max over all heads and layers",
               "rollout": "attention rollout (Abnar & Zuidema 2020)", "flow": "attention flow (Abnar & Zuidema 2020)"}
ROLLOUT_AUTO, FLOW_AUTO = 1024, 20  # "auto" computes rollout (n^3 per layer) and flow (n^2 max-flows) up to these


def _layers_of(att, what: str):
    """The per-layer tensors of one text's weights (a tensor is split along its first axis)."""
    if isinstance(att, Tensor):
        _store.check_dtype(att, what)
        if att.ndim == 3:
            return [att]
        if att.ndim != 4:
            raise ValueError(f"{what}: expected shape (layers, heads, n, n), got {tuple(att.shape)}")
        if att.shape[0] == 0 or att.shape[1] == 0:
            raise ValueError(f"{what}: {att.shape[0]} layers and {att.shape[1]} heads (shape {tuple(att.shape)}); the "
                             "viewer needs at least one layer and one head")
        return att
    if isinstance(att, (str, bytes)) or not isinstance(att, Sequence) or len(att) == 0:
        raise TypeError(f"{what}: expected a tensor (layers, heads, n, n) or a list of per-layer tensors")
    return att


def _aggregates_wanted(aggregates, square: bool, n: int) -> tuple[list[str], list[str]]:
    """(names to compute, notes on those left out)."""
    if aggregates == "auto":
        want, left = ["mean", "max"], []
        if square:
            for name, limit in (("rollout", ROLLOUT_AUTO), ("flow", FLOW_AUTO)):
                if n <= limit:
                    want.append(name)
                else:
                    left.append(f"{name}: not computed for texts over {limit} tokens (pass aggregates= to ask for it)")
        return want, left
    if isinstance(aggregates, str) or not isinstance(aggregates, Sequence) or \
            any(a not in AGGREGATIONS for a in aggregates):
        raise ValueError(f"aggregates: expected 'auto' or a list from {list(AGGREGATIONS)}, got {aggregates!r}")
    want = [a for a in AGGREGATIONS if a in aggregates]
    left = [f"{a}: only for self-attention" for a in want if a in ("rollout", "flow") and not square]
    return [a for a in want if square or a not in ("rollout", "flow")], left


def _section(name: str, rows: list[str], cols: list[str], att, what: str, *, full_tokens: int, top_k: int,
             aggregates, square: bool = True) -> dict:
    """One attention of one text (``square``: self-attention, rows and columns the same tokens)."""
    layers = _layers_of(att, what)
    store = "full" if max(len(rows), len(cols)) <= full_tokens else "summary"
    want, left = _aggregates_wanted(aggregates, square, len(rows))
    maps, kept, means = [], [], []
    acc_mean = acc_max = roll = None
    shape = None
    finite = True
    for l in range(len(layers)):
        t = _store.check_layer(layers[l], what, l, shape)
        if shape is None:
            shape = tuple(t.shape)
            if shape[1:] != (len(rows), len(cols)):
                raise ValueError(f"{what}: weights over {shape[1]} x {shape[2]} tokens, but the text has "
                                 f"{len(rows)} x {len(cols)}" if not square else
                                 f"{what}: weights over {shape[-1]} tokens, but the text has {len(cols)}")
        for h in range(t.shape[0]):
            if store == "full":
                maps.append(_store.full(t[h]))
            else:
                b64, share = _store.summary(t[h], top_k)
                maps.append(b64)
                kept.append(share)
        if not want:
            continue
        finite = finite and bool(torch.isfinite(t.sum()))
        if not finite:
            continue
        hm = t.sum(0) / t.shape[0]  # (rows, cols): this layer's head mean (float32: drawn to 1/254)
        acc_mean = hm if acc_mean is None else acc_mean + hm
        top = t.amax(0)
        acc_max = top if acc_max is None else torch.maximum(acc_max, top)
        if "rollout" in want:  # float64, as attend.viz.aggregate.rollout
            hm = hm.to(torch.float64)
            a = 0.5 * hm + 0.5 * torch.eye(hm.shape[0], dtype=hm.dtype)
            a = a / a.sum(-1, keepdim=True).clamp_min(1e-300)
            roll = a if roll is None else a @ roll
        if "flow" in want:
            means.append(hm.to(torch.float64))
    out = {"name": name, "rows": rows, "cols": cols, "layers": len(layers), "heads": shape[0], "store": store,
           "k": top_k, "ov": list(_store.overview_shape(len(rows), len(cols))), "maps": maps,
           "kept": round(sum(kept) / len(kept), 4) if kept else None, "aggregates": [], "left_out": left}
    if want and not finite:
        out["left_out"].append("aggregates: not computed, the weights contain NaN or infinity")
        want = []
    found = {"mean": lambda: acc_mean / len(layers), "max": lambda: acc_max, "rollout": lambda: roll,
             "flow": lambda: aggregate.flow(torch.stack(means).clamp(0, 1)[:, None],  # (within the 1e-3 rounding)
                                            max_tokens=max(len(rows), FLOW_AUTO))}
    for a in want:
        m = found[a]().to(torch.float32).clamp(0, 1)
        b64 = _store.full(m) if store == "full" else _store.summary(m, top_k)[0]
        out["aggregates"].append({"name": a, "title": _AGG_TITLES[a], "map": b64})
    return out


def _check_tokens(tokens, what: str) -> list[str]:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence) or not all(isinstance(t, str) for t in tokens):
        raise TypeError(f"{what}: expected a list of strings")
    if len(tokens) == 0:
        raise ValueError(f"{what}: no tokens; the viewer needs at least one per text")
    return list(tokens)


def _page(doc: dict) -> str:
    title = doc["title"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">"
            f"<title>{html.escape(_text(title))}</title><style>{_CSS}</style></head><body>{_BODY}\n"
            f"<script type=\"application/json\" id=\"attend-data\">{_json_for_html(doc)}</script>\n"
            f"<script>{_script()}</script></body></html>\n")


def _common(labels, n_texts: int, title, note, max_tokens, full_tokens, top_k) -> str:
    if labels is not None:
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence) \
                or not all(isinstance(x, str) for x in labels):
            raise TypeError(f"labels: expected None or a list of strings, got {type(labels).__name__}")
        if len(labels) != n_texts:
            raise ValueError(f"labels: {len(labels)} labels for {n_texts} texts")
    if note is not None and not isinstance(note, str):
        raise TypeError(f"note: expected None or a string, got {type(note).__name__}")
    _check_max_tokens(max_tokens)
    _check.integer(full_tokens, "full_tokens", low=1)
    _check.integer(top_k, "top_k", low=1, high=254)
    return _title(title)


def attention_page(tokens: Sequence[Sequence[str]], attentions: Sequence, *, labels: Optional[Sequence[str]] = None,
                   title: str = "Attention", note: Optional[str] = None, max_tokens: int = 4096,
                   full_tokens: int = 512, top_k: int = 8, aggregates="auto") -> str:
    """The HTML page (a string) for the self-attention of one or more texts.

    Args:
        tokens: per text, its token strings (n of them).
        attentions: per text, weights (L, H, n, n) or a list of L tensors (H, n, n) — any
            sequence, read one layer at a time (a lazy one keeps memory to one layer).
        labels: names shown in the text selectors (default: the first tokens).
        title: the page's heading (None: "Attention"); note: a line shown under it (or None).
        max_tokens: longest text accepted (at most 32767).
        full_tokens: texts up to this many tokens keep every weight; longer ones keep each
            row's ``top_k`` strongest weights exactly plus a block-max overview (the page says so).
        aggregates: ``"auto"`` (mean and max over all heads and layers; rollout up to 1024
            tokens; flow up to 20) or a list from ``("mean", "max", "rollout", "flow")``.

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
    title = _common(labels, len(tokens), title, note, max_tokens, full_tokens, top_k)
    toks = [_check_tokens(t, f"tokens[{k}]") for k, t in enumerate(tokens)]
    for k, t in enumerate(toks):
        if len(t) > max_tokens:
            raise TooManyTokens(f"text {k} has {len(t)} tokens; the viewer shows at most max_tokens={max_tokens} "
                                "(split the text or raise max_tokens)", k, len(t), max_tokens)
    texts = []
    for k, (t, att) in enumerate(zip(toks, attentions)):
        label = labels[k] if labels is not None else " ".join(t[:8]) + (" …" if len(t) > 8 else "")
        texts.append({"label": str(label), "sections": [
            _section("self-attention", t, t, att, f"attentions[{k}]", full_tokens=full_tokens, top_k=top_k,
                     aggregates=aggregates)]})
    return _page({"title": str(title), "note": note, "texts": texts})


def seq2seq_page(sources: Sequence[Sequence[str]], targets: Sequence[Sequence[str]], *, cross: Sequence,
                 encoder: Optional[Sequence] = None, decoder: Optional[Sequence] = None,
                 decoder_tokens: Optional[Sequence[Sequence[str]]] = None,
                 labels: Optional[Sequence[str]] = None, title: str = "Attention", note: Optional[str] = None,
                 max_tokens: int = 4096, full_tokens: int = 512, top_k: int = 8, aggregates="auto") -> str:
    """The page for encoder–decoder models: per pair of source and target tokens, the
    cross-attention (weights (L, H, T, S) or per-layer (H, T, S)) and, when given, the
    encoder's self-attention (S × S) and the decoder's (T × T), each a section of the page.
    ``decoder_tokens``: what labels the decoder's self-attention (default the targets; a
    generating decoder reads the start token and the words before each output word)."""
    for name, seq in (("sources", sources), ("targets", targets), ("cross", cross)):
        if isinstance(seq, (str, bytes)) or not isinstance(seq, (Sequence, Tensor)) or len(seq) == 0:
            raise TypeError(f"{name}: expected a non-empty list, one entry per pair")
    n = len(sources)
    for name, seq in (("targets", targets), ("cross", cross), ("encoder", encoder), ("decoder", decoder),
                      ("decoder_tokens", decoder_tokens)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name}: {len(seq)} entries for {n} sources")
    if decoder_tokens is not None and decoder is None:
        raise ValueError("decoder_tokens: given without decoder, the self-attention they label")
    title = _common(labels, n, title, note, max_tokens, full_tokens, top_k)
    texts = []
    for k in range(n):
        src, tgt = _check_tokens(sources[k], f"sources[{k}]"), _check_tokens(targets[k], f"targets[{k}]")
        if max(len(src), len(tgt)) > max_tokens:
            count = max(len(src), len(tgt))
            raise TooManyTokens(f"pair {k} has {count} tokens; at most max_tokens={max_tokens}", k, count, max_tokens)
        kw = dict(full_tokens=full_tokens, top_k=top_k, aggregates=aggregates)
        sections = []
        if encoder is not None:
            sections.append(_section("encoder self-attention", src, src, encoder[k], f"encoder[{k}]", **kw))
        if decoder is not None:
            dec = tgt if decoder_tokens is None else _check_tokens(decoder_tokens[k], f"decoder_tokens[{k}]")
            sections.append(_section("decoder self-attention", dec, dec, decoder[k], f"decoder[{k}]", **kw))
        sections.append(_section("cross-attention", tgt, src, cross[k], f"cross[{k}]", square=False, **kw))
        label = labels[k] if labels is not None else " ".join(src[:8]) + (" …" if len(src) > 8 else "")
        texts.append({"label": str(label), "sections": sections})
    return _page({"title": str(title), "note": note, "texts": texts})


class AttentionView:
    """The attention of every layer and head of a model on one or more texts, as a page.

    ``save(path)`` writes it (atomically, never over an existing file unless
    ``force=True``); in Jupyter the object displays itself in a sandboxed frame.
    """

    def __init__(self, tokens: Sequence[Sequence[str]], attentions: Sequence, *,
                 labels: Optional[Sequence[str]] = None, title: Optional[str] = "Attention", note: Optional[str] = None,
                 max_tokens: int = 4096, full_tokens: int = 512, top_k: int = 8, aggregates="auto"):
        """``title=None`` gives the default title, as in :meth:`from_encoder`; the other
        arguments are :func:`attention_page`'s."""
        self.html = attention_page(tokens, attentions, labels=labels, title=title, note=note, max_tokens=max_tokens,
                                   full_tokens=full_tokens, top_k=top_k, aggregates=aggregates)

    @classmethod
    def seq2seq(cls, sources, targets, *, cross, **kwargs) -> "AttentionView":
        """An encoder–decoder model's attention: :func:`seq2seq_page`'s arguments."""
        view = cls.__new__(cls)
        view.html = seq2seq_page(sources, targets, cross=cross, **kwargs)
        return view

    @classmethod
    def from_encoder(cls, encoder, texts: Sequence[str], *, title: Optional[str] = None,
                     max_tokens: int = 4096, aggregates="auto") -> "AttentionView":
        """Run a :class:`~attend.models.bert.SentenceEncoder` on ``texts`` and show its attention."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts: expected a string or a non-empty list of strings")
        title = _title(title)  # checked as the constructor checks it, before the encoder runs
        _check_max_tokens(max_tokens)
        if not callable(getattr(encoder, "embed_tokens", None)):
            raise TypeError(f"encoder: expected a SentenceEncoder (attend.models.bert), got {type(encoder).__name__}")
        tokens, atts, cut = [], [], []
        for text in texts:  # one at a time: no padding in the pictures
            batch, out = encoder.embed_tokens([text], need_weights=True)
            tokens.append(batch.tokens[0])
            atts.append([a[0] for a in out.attentions])
            read = getattr(batch, "cut", ())  # (an encoder of one's own may not say)
            cut.append(bool(read and read[0]))
        labels = labels_read(texts, cut, getattr(encoder, "max_length", None))
        return cls(tokens, atts, labels=labels, title=title, max_tokens=max_tokens, aggregates=aggregates)

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
