"""``attend tour``: a terminal tour of the attention core on one small example.

The example is seed 002's sentence, "the black cat ate the mouse", with small
hand-made word vectors whose four features are (animal, colour, action, function
word). Everything printed is computed when the tour runs.

The tour speaks the five languages of the seeds (``lang``: en, id, pl, zh, es); its
sentences come from ``tour_text/<lang>.json`` (the translations were made as the concept
guide's were: see ``docs/index.md``). What the library itself prints (``attend.explain``)
stays in English.
"""
from __future__ import annotations

import json
import os
import unicodedata
from typing import TextIO

import torch

from .. import _check, attention, backends, explain, masks, mods
from ..nn import MultiHeadAttention
from ..scores import Additive, Cosine, General

WORDS = ["the", "black", "cat", "ate", "the", "mouse"]
#                       animal colour action function
FEATURES = {
    "the": [0.0, 0.0, 0.0, 1.0],
    "black": [0.1, 1.0, 0.0, 0.2],
    "cat": [1.0, 0.2, 0.3, 0.0],
    "ate": [0.6, 0.0, 1.0, 0.0],
    "mouse": [0.9, 0.1, 0.1, 0.0],
}


LANGS = ("en", "id", "pl", "zh", "es")


def texts(lang: str = "en") -> dict[str, str]:
    """The tour's sentences in ``lang`` (one of :data:`LANGS`)."""
    _check.choice(lang, "lang", LANGS)
    with open(os.path.join(os.path.dirname(__file__), "tour_text", f"{lang}.json"), encoding="utf-8") as f:
        return json.load(f)


def _width(text: str) -> int:
    """Columns ``text`` takes in a terminal (Chinese characters take two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _ljust(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def _table(out: TextIO, title: str, rows: list[tuple[str, list[float]]], cols: list[str]) -> None:
    w = max(6, *(len(c) for c in cols)) + 1
    lw = max(_width(r[0]) for r in rows) + 2
    out.write(f"\n{title}\n")
    out.write(" " * lw + "".join(c.rjust(w) for c in cols) + "\n")
    for name, vals in rows:
        out.write(_ljust(name, lw) + "".join(f"{x:{w}.3f}" for x in vals) + "\n")


def run(out: TextIO, *, seed: int = 0, lang: str = "en") -> None:
    """Print the tour to ``out``, in ``lang`` (en, id, pl, zh or es)."""
    _check.integer(seed, "seed", low=0, high=2 ** 63 - 1, expected="an int in [0, 2**63)")
    t = texts(lang)
    torch.manual_seed(seed)
    x = torch.tensor([FEATURES[w] for w in WORDS])  # (S, 4): keys = values = word vectors
    q = x[WORDS.index("ate")].view(1, 4)  # (1, 4): the query "ate"
    out.write(t["title"] + "\n")
    out.write(t["example"].format(sentence=repr(" ".join(WORDS))) + "\n")

    scores: list[tuple[str, object, dict]] = [
        ("dot", "dot", {}),
        ("scaled_dot (1/sqrt 4)", "scaled_dot", {}),
        (t["score_cosine"], Cosine(0.2), {}),
        (t["score_general"], General(4, 4), {}),
        (t["score_additive"], Additive(4, 4, 8), {}),
        (t["score_hard"], "dot", {"hard": True}),
    ]
    rows = []
    with torch.no_grad():
        for name, score, kw in scores:
            _, w = attention(q, x, x, score=score, return_weights=True, **kw)  # w (1, S)
            rows.append((name, w[0].tolist()))
    _table(out, t["section1"], rows, WORDS)

    out.write("\n" + t["section2"] + "\n")
    L = len(WORDS)
    pictures = [
        (t["mask_bidirectional"], torch.ones(L, L, dtype=torch.bool)),
        (t["mask_causal"], masks.causal()),
        (t["mask_window"], masks.sliding_window(1)),
        (t["mask_cache"], None),
    ]
    for name, rule in pictures:
        text = masks.render(rule, L, L) if rule is not None else masks.render(masks.causal(), 2, 4)  # rule or tensor
        out.write(f"   {name}:\n" + "\n".join("      " + line for line in text.splitlines()) + "\n")

    with torch.no_grad():
        _, w_bi = attention(x, x, x, return_weights=True)
        _, w_c = attention(x, x, x, causal=True, return_weights=True)
    cat = WORDS.index("cat")
    _table(out, t["section3"], [(t["row_bidirectional"], w_bi[cat].tolist()), (t["row_causal"], w_c[cat].tolist())],
           WORDS)

    torch.manual_seed(seed)
    mha = MultiHeadAttention(4, 2, bias=False).eval()
    with torch.no_grad():
        _, w_heads = mha(x.unsqueeze(0), need_weights=True, average_weights=False)  # (1, 2, L, S)
    _table(out, t["section4"],
           [(t["row_head"].format(head=h + 1), w_heads[0, h, WORDS.index('ate')].tolist()) for h in range(2)], WORDS)

    _check_backends(out, seed, t)
    out.write("\n" + t["guide"].format(lang=lang) + "\n")


def _check_backends(out: TextIO, seed: int, t: dict[str, str]) -> None:
    g = torch.Generator().manual_seed(seed)
    B, H, L, S, E = 2, 4, 33, 47, 16
    q, k, v = (torch.randn(B, H, n, E, generator=g, dtype=torch.float64) for n in (L, S, S))
    cases: list[tuple[str, dict]] = [
        ("scaled_dot, causal", {"causal": True}),
        ("cosine, window (4, 0)", {"score": "cosine", "window": (4, 0)}),
        ("scaled_dot + ALiBi", {"score_mod": mods.alibi(H)}),
    ]
    out.write("\n" + t["section5"] + "\n")
    names = backends.names()
    out.write("   " + _ljust(t["column_case"], 24) + "".join(n.rjust(10) for n in names) + "   " + t["column_auto"] + "\n")
    for name, kw in cases:
        ref = attention(q, k, v, backend="eager", **kw)
        cells = []
        for b in names:
            try:
                o = attention(q.float(), k.float(), v.float(), backend=b, **kw)
                cells.append(f"{(o.double() - ref).abs().max().item():10.1e}")
            except backends.UnsupportedCall:
                cells.append("       n/a")
        choice = explain(q.float(), k.float(), v.float(), **kw).backend
        out.write("   " + name.ljust(24) + "".join(cells) + f"   {choice}\n")
    why = explain(q.float(), k.float(), v.float(), score_mod=mods.alibi(H))
    out.write("\n   " + t["explain"] + "\n")
    out.write("\n".join("      " + line for line in str(why).splitlines()) + "\n")
