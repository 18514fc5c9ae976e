"""``attend tour``: a terminal tour of the attention core on one small example.

The example is seed 002's sentence, "the black cat ate the mouse", with small
hand-made word vectors whose four features are (animal, colour, action, function
word). Everything printed is computed when the tour runs.
"""
from __future__ import annotations

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


def _table(out: TextIO, title: str, rows: list[tuple[str, list[float]]], cols: list[str]) -> None:
    w = max(6, *(len(c) for c in cols)) + 1
    lw = max(len(r[0]) for r in rows) + 2
    out.write(f"\n{title}\n")
    out.write(" " * lw + "".join(c.rjust(w) for c in cols) + "\n")
    for name, vals in rows:
        out.write(name.ljust(lw) + "".join(f"{x:{w}.3f}" for x in vals) + "\n")


def run(out: TextIO, *, seed: int = 0) -> None:
    """Print the tour to ``out``."""
    _check.integer(seed, "seed", low=0, high=2 ** 63 - 1, expected="an int in [0, 2**63)")
    torch.manual_seed(seed)
    x = torch.tensor([FEATURES[w] for w in WORDS])  # (S, 4): keys = values = word vectors
    q = x[WORDS.index("ate")].view(1, 4)  # (1, 4): the query "ate"
    out.write("attend: the attention mechanism, every variant behind one API\n")
    out.write(f"example: {' '.join(WORDS)!r}; word vectors = (animal, colour, action, function word)\n")

    scores: list[tuple[str, object, dict]] = [
        ("dot", "dot", {}),
        ("scaled_dot (1/sqrt 4)", "scaled_dot", {}),
        ("cosine (temperature 0.2)", Cosine(0.2), {}),
        ("general  qW k (random W)", General(4, 4), {}),
        ("additive v.tanh(Wq+Wk)", Additive(4, 4, 8), {}),
        ("hard (argmax of dot)", "dot", {"hard": True}),
    ]
    rows = []
    with torch.no_grad():
        for name, score, kw in scores:
            _, w = attention(q, x, x, score=score, return_weights=True, **kw)  # w (1, S)
            rows.append((name, w[0].tolist()))
    _table(out, "1. What does 'ate' attend to? Weights per score function (each row sums to 1):", rows, WORDS)

    out.write("\n2. Which keys each query may see (rows = queries, columns = keys):\n")
    L = len(WORDS)
    pictures = [
        ("bidirectional (encoder, BERT)", torch.ones(L, L, dtype=torch.bool)),
        ("causal (decoder, GPT)", masks.causal()),
        ("sliding window of 1", masks.sliding_window(1)),
        ("causal, 2 queries over 4 keys (KV cache)", None),
    ]
    for name, rule in pictures:
        text = masks.render(rule, L, L) if rule is not None else masks.render(masks.causal(), 2, 4)  # rule or tensor
        out.write(f"   {name}:\n" + "\n".join("      " + line for line in text.splitlines()) + "\n")

    with torch.no_grad():
        _, w_bi = attention(x, x, x, return_weights=True)
        _, w_c = attention(x, x, x, causal=True, return_weights=True)
    cat = WORDS.index("cat")
    _table(out, "3. Self-attention of 'cat' (scaled dot), bidirectional vs causal:",
           [("bidirectional", w_bi[cat].tolist()), ("causal", w_c[cat].tolist())], WORDS)

    torch.manual_seed(seed)
    mha = MultiHeadAttention(4, 2, bias=False).eval()
    with torch.no_grad():
        _, w_heads = mha(x.unsqueeze(0), need_weights=True, average_weights=False)  # (1, 2, L, S)
    _table(out, "4. Multi-head self-attention (2 heads, random projections): row of 'ate' per head:",
           [(f"head {h}", w_heads[0, h, WORDS.index('ate')].tolist()) for h in range(2)], WORDS)

    _check_backends(out, seed)


def _check_backends(out: TextIO, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    B, H, L, S, E = 2, 4, 33, 47, 16
    q, k, v = (torch.randn(B, H, n, E, generator=g, dtype=torch.float64) for n in (L, S, S))
    cases: list[tuple[str, dict]] = [
        ("scaled_dot, causal", {"causal": True}),
        ("cosine, window (4, 0)", {"score": "cosine", "window": (4, 0)}),
        ("scaled_dot + ALiBi", {"score_mod": mods.alibi(H)}),
    ]
    out.write("\n5. Backends against the float64 reference (max |difference| of float32 outputs):\n")
    names = backends.names()
    out.write("   " + "case".ljust(24) + "".join(n.rjust(10) for n in names) + "   auto picks\n")
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
    out.write("\n   attend.explain(q, k, v, score_mod=alibi):\n")
    out.write("\n".join("      " + line for line in str(why).splitlines()) + "\n")
