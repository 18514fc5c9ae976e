"""All-to-all (DeepSpeed-Ulysses) attention: from sequence shards to head shards and back.

Each rank holds all heads of a span of the sequence. One all-to-all gives each rank the whole
sequence for ``H / W`` of the heads; any attend backend then computes ordinary attention
(``auto`` picks, so every variant attend has runs unchanged: rules, score modifiers,
sinks, weights); a second all-to-all returns each rank its own span of rows, all heads. The
backward of each all-to-all is the other, so gradients flow through autograd as usual.

Communication per call is ~4 tensors of the rank's size (q, k, v out, output back) against
the ring's ``W - 1`` key/value spans; the price is that heads (and kv heads) must divide by
the group size, and each rank holds whole sequences for its heads.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .. import functional as _F
from .._rule_prep import check_rule
from ._rules import heads as _heads
from .layout import _group, check_layout
from ._agree import agree, device_of
from .ring import _rank_spans

_PASSED = ("score", "causal", "window", "scale", "dropout_p", "hard", "backend")  # to attend.attention


def ulysses_attention(query: Tensor, key: Tensor, value: Tensor, *, group=None, layout: str = "contiguous",
                      mask=None, score_mod=None, sinks: Optional[Tensor] = None, return_weights: bool = False,
                      **kwargs):
    """Attention over a sequence split across the ranks of ``group`` by exchanging sequence
    spans for heads (every rank calls it with its own spans, as :func:`ring_attention`).

    ``query`` (..., Hq, L_r, E), ``key``/``value`` (..., Hkv, S_r, ·) in ``layout``; ``Hq`` and
    ``Hkv`` must divide by the group size. ``mask`` (a rule, a ``mask_mod`` of global indices,
    or a dense tensor of the global (L, S)), ``score_mod``, ``sinks`` (Hq,) and the other
    arguments are :func:`attend.attention`'s, for the whole sequence (a per-head rule or
    tensor is sliced to each rank's heads). Returns this rank's rows, all heads, and with
    ``return_weights=True`` their weights over all global keys.
    """
    rank, world = _group(group)
    call, failed = None, None
    try:  # (this rank's own checks: what they refuse, every rank refuses, after the gather below)
        check_layout(layout)
        unknown = set(kwargs) - set(_PASSED)
        if unknown:
            raise TypeError(f"ulysses_attention() got unexpected keyword arguments {sorted(unknown)}")
        call, shape = _F._prepare(query, key, value, **kwargs)
    except Exception as e:  # noqa: BLE001 - raised on this rank after the gather, the others told
        failed = e
    options = dict(layout=layout, mask=mask, score_mod=score_mod, sinks=sinks, return_weights=return_weights,
                   **{name: kwargs.get(name) for name in _PASSED})
    lengths = agree(call, group, world, device_of(query, group), options=options, failed=failed).lengths
    Hq, Hkv = call.Hq, call.Hkv
    if Hq % world or Hkv % world:  # (the same on every rank, now that they agree)
        raise ValueError(f"query/key heads: all-to-all attention gives each of the {world} ranks a slice of the heads, "
                         f"so heads must divide by the group size; got {Hq} query heads and {Hkv} kv heads "
                         f"(use ring_attention, which has no such limit)")
    Lg, Sg = sum(l for l, _ in lengths), sum(s for _, s in lengths)
    q_spans = _rank_spans(lengths, 0, Lg, world, layout, "query")
    k_spans = _rank_spans(lengths, 1, Sg, world, layout, "key")
    hq = Hq // world
    h0, h1 = rank * hq, (rank + 1) * hq
    B = call.B
    if mask is not None and not isinstance(mask, Tensor):
        if not callable(mask):
            raise TypeError(f"mask must be a tensor, a mask_mod callable or None, got {type(mask).__name__}")
        check_rule(mask, "mask", "mask", (B, Hq, Lg, Sg))
        mask = _heads(mask, h0, h1, score=False)
    elif isinstance(mask, Tensor) and mask.ndim >= 3 and mask.shape[-3] == Hq and Hq > 1:
        mask = mask[..., h0:h1, :, :]
    if score_mod is not None:
        if not callable(score_mod):
            raise TypeError(f"score_mod must be a callable (score, b, h, i, j) -> score, got {type(score_mod).__name__}")
        check_rule(score_mod, "score_mod", "score", (B, Hq, Lg, Sg))
        score_mod = _heads(score_mod, h0, h1, score=True)
    if sinks is not None:
        _F._check_sinks(sinks, Hq, query.device, False)
        sinks = sinks[h0:h1]
    ex = _Exchange(group, rank, world)
    q = _Exchanged.apply(call.query, ex, q_spans, Lg, True)
    k = _Exchanged.apply(call.key, ex, k_spans, Sg, True)
    v = _Exchanged.apply(call.value, ex, k_spans, Sg, True)
    got = _F.attention(q, k, v, mask=mask, score_mod=score_mod, sinks=sinks, return_weights=return_weights,
                       **{name: x for name, x in kwargs.items() if name != "scale"},
                       scale=call.scale)
    out, w = got if return_weights else (got, None)
    out = _Exchanged.apply(out, ex, q_spans, Lg, False).reshape(*shape.batch, *shape.heads, call.L, call.Ev)
    if not return_weights:
        return out
    with torch.no_grad():
        w = ex.heads_to_seq(w, q_spans, Lg)
    return out, w.reshape(*shape.batch, *shape.heads, call.L, Sg)


class _Exchange:
    """The two all-to-alls, over ``all_to_all_single`` with per-rank sizes (spans may differ)."""

    def __init__(self, group, rank, world):
        self.group, self.rank, self.world = group, rank, world

    def _a2a(self, send: list[Tensor], recv_shapes: list[tuple]) -> list[Tensor]:
        flat = torch.cat([t.reshape(-1) for t in send]) if send else None
        sizes_in = [t.numel() for t in send]
        sizes_out = [int(torch.Size(s).numel()) for s in recv_shapes]
        out = flat.new_empty(sum(sizes_out))
        dist.all_to_all_single(out, flat.contiguous(), sizes_out, sizes_in, group=self.group)
        return [p.view(s) for p, s in zip(out.split(sizes_out), recv_shapes)]

    def seq_to_heads(self, x: Tensor, spans_: list, n: int) -> Tensor:
        """(B, H, n_r, D) this rank's positions, all heads -> (B, H/W, n, D) all positions, its heads."""
        B, H, _, D = x.shape
        h = H // self.world
        send = [x[:, g * h:(g + 1) * h] for g in range(self.world)]
        shapes = [(B, h, sum(z - a for a, z in spans_[s]), D) for s in range(self.world)]
        got = self._a2a(send, shapes)
        pieces = []
        for s, part in enumerate(got):
            at = 0
            for a, z in spans_[s]:
                pieces.append((a, part[:, :, at:at + z - a]))
                at += z - a
        pieces.sort(key=lambda p: p[0])
        return torch.cat([p for _, p in pieces], dim=2)

    def heads_to_seq(self, y: Tensor, spans_: list, n: int) -> Tensor:
        """(B, H/W, n, D) all positions, this rank's heads -> (B, H, n_r, D) its positions, all heads."""
        B, h, _, D = y.shape
        send = [torch.cat([y[:, :, a:z] for a, z in spans_[s]], dim=2) for s in range(self.world)]
        mine = sum(z - a for a, z in spans_[self.rank])
        got = self._a2a(send, [(B, h, mine, D)] * self.world)
        return torch.cat(got, dim=1)


class _Exchanged(torch.autograd.Function):
    """One all-to-all (``to_heads``: sequence spans -> head slices, else back); its backward is
    the other one."""

    @staticmethod
    def forward(ctx, x, ex, spans_, n, to_heads: bool):
        ctx.ex, ctx.spans, ctx.n, ctx.to_heads = ex, spans_, n, to_heads
        return (ex.seq_to_heads if to_heads else ex.heads_to_seq)(x, spans_, n)

    @staticmethod
    def backward(ctx, g):
        back = ctx.ex.heads_to_seq if ctx.to_heads else ctx.ex.seq_to_heads
        return back(g.contiguous(), ctx.spans, ctx.n), None, None, None, None
