"""A clipped relative-position bias on SDPA's CPU kernel: constant beyond the table's reach.

``mods.relative_bias(table)`` adds ``table[h, clip(j - p, -R, R) + R]`` to the score of query
``i`` (at key position ``p = i + offset``) and key ``j``. Past ``R`` positions the entry is
clipped, so the bias is the same for every key farther than ``R`` to the left of ``p``
(``table[h, 0]``) and for every key farther than ``R`` to the right (``table[h, 2R]``).
A constant ``c`` added to every score of a set of keys leaves that set's softmax unchanged
and adds ``c`` to its log-sum-exp.

So the rows are cut into blocks of ``ROWS``. For each block, the keys that are far to the
left of every row in it run as one plain call of SDPA's fused CPU kernel, and so do the keys
far to the right; each call's log-sum-exp is raised by its head's edge entry. Only the band
between them, ``ROWS + 2R - 2`` keys wide, needs the table's entries: it runs as one call of
the same kernel with those entries as a dense float mask of ``(H, ROWS, band)`` (one block's
at a time; the interior blocks share it). The three results are merged by their log-sum-exps.
Exact in real arithmetic: nothing is approximated.

With ``causal`` (bottom-right, at least as many keys as queries) the keys after a block's
last row are not read, and the band's mask is ``-inf`` after each row's position.

On the CPU, for a dot-like score and no mask, bias or modifier other than ``causal``; with
gradients too (:class:`_Regions`: q, k, v and a learned table), outside ``torch.compile``,
autocast and ``torch.func``. ``auto`` takes it for inference where the band is at most
``BAND_SHARE`` of the (query, key) pairs and there is no ``causal``: measured in
``benchmarks/results/cpu-relbias-sdpa*.md`` (six runs), forward 1.13-1.44x SDPA plain at
(1, 8, 2048, 64) and 1.12-1.29x at (1, 8, 4096, 64) with R = 128, where FlexAttention's kernel
took 1.38-1.79x and 1.96-2.19x. Shorter sequences are mostly band, where the dense float mask
costs more than FlexAttention's kernel; with ``causal``, FlexAttention's kernel skips the blocks
after the diagonal and was faster at every length measured. For training it is faster than
``inductor``'s tiles at every length measured but causal at 512 (see :func:`preferred`).
Without a C++ compiler (no ``flex`` or ``inductor``), ``auto`` still falls back to this path.

Where :mod:`._distance_bias` can run a call (one kernel call, the biases a strided view: the
table fixed, outside ``torch.compile``, autocast and ``torch.func``), ``sdpa`` runs it there, faster
at every shape measured (``benchmarks/results/cpu-distance-bias.md``: forward 1.01-1.13x SDPA
plain where this path took 1.42-1.92x; training with a fixed table 0.87-1.20x against 1.15-1.59x). So this path runs a learned table's training, inference
under those transforms, and any call on a PyTorch whose kernel misreads the strided view.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import Tensor

from .._rules import RelativeBias
from ._causal_blocks import untraceable
from ._programs import merge_into, no_double_backward
from ._relbias import clipped_span, diagonal_sums, table_tile
from .base import AttentionCall

#: query rows per block: the band is ROWS + 2R - 2 keys wide (ROWS + R - 1 with causal)
ROWS = 256
#: auto takes this path when the band holds at most this share of the (query, key) pairs
BAND_SHARE = 0.3
#: ... and trains a causal table here where the band holds at most this share
TRAIN_CAUSAL_BAND_SHARE = 0.5
#: ... and trains here only where one block's band scores take at most this many bytes
TRAIN_BAND_BYTES = 64 * 2**20
#: why flex and inductor leave such a call to sdpa, in ``explain``
SDPA_REASON = ("sdpa runs this relative-bias table faster: plain kernel calls beyond the table's reach, "
               "the table's entries only on the band near the diagonal")
_DTYPES = (torch.float32, torch.float64)
_FWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def reasons(call: AttentionCall, *, forward_only: bool = False) -> list[str]:
    """Why this path cannot run ``call`` (empty: it can). ``forward_only``: the forward of a
    training call, whose backward another backend computes (gradients are then no reason)."""
    if type(call.score_mod) is not RelativeBias:  # (exactly: a subclass may score differently)
        return ["score_mod is not a relative-bias table (not a subclass)"]
    why = kernel_reasons(call, forward_only=forward_only)
    if not why and not bool(torch.isfinite(call.score_mod.table.detach()).all()):  # (last: it reads the table)
        why.append("the table holds a non-finite entry")
    return why


def kernel_reasons(call: AttentionCall, *, forward_only: bool = False) -> list[str]:
    """Why SDPA's CPU kernel, called directly with a float mask and merged or split by its
    log-sum-exp, cannot run ``call`` with a bias of the distance (the score modifier's own
    parameters aside): the checks this path and :mod:`._distance_bias` share."""
    why = []
    if not getattr(call.score, "dot_like", False):
        why.append("the score is not dot-like (SDPA's kernel multiplies q and k)")
    if call.needs_grad and not forward_only and untraceable():
        why.append("training under torch.compile, autocast or torch.func (this path's backward is an "
                   "autograd function of kernel calls)")
    if call.query.device.type != "cpu":
        why.append("SDPA's CPU kernel returns the log-sum-exp the blocks are merged by")
    if call.query.dtype not in _DTYPES:
        why.append(f"float32 or float64 only, got {call.query.dtype}")
    if call.key.shape[-1] != call.Ev:
        why.append("SDPA's CPU kernel takes keys and values of one width")
    if call.window is not None or call.mask_mod is not None or call.mask is not None or call.bias is not None:
        why.append("no mask or bias other than causal")
    if call.causal and call.offset < 0:
        why.append("causal with more queries than keys (rows that see no key)")
    if call.dropout_p > 0 or call.hard or call.sinks is not None or call.return_weights:
        why.append("no dropout, hard attention, sinks or weights")
    return why


def band_share(call: AttentionCall) -> float:
    """The share of the (query, key) pairs computed that fall in the bands (the part that reads
    the table); with ``causal``, of the pairs the rule allows."""
    off, S, L = call.score_mod.offset, call.S, call.L
    band = 0
    for i0, i1, jl, jr, _ in _blocks(L, S, call.score_mod, call.causal):
        n = i1 - i0
        if call.causal:  # row p of the block sees band keys jl..p
            band += n * (i0 + off - jl + 1) + n * (n - 1) // 2
        else:
            band += n * (jr - jl)
    pairs = L * (off + 1) + L * (L - 1) // 2 if call.causal else L * S  # (causal: row i sees i + off + 1 keys)
    return band / max(1, pairs)


def band_bytes(call: AttentionCall) -> int:
    """Bytes of one block's (B, H, rows, band) scores: the backward holds a few such at once."""
    R = call.score_mod.max_distance
    width = min(call.S, ROWS + 2 * max(R, 1) - 2)
    return call.B * call.Hq * min(ROWS, call.L) * width * call.query.element_size()


def preferred(call: AttentionCall) -> bool:
    """Whether ``auto`` should run ``call`` here, where it can. Inference: without causal and with
    the bands a small share (FlexAttention's kernel, which skips the blocks after the diagonal,
    measured faster with causal: 1.18x against 1.28x SDPA causal at (1, 8, 4096, 64), 1.11x
    against 1.38x at 2048; and where the bands are most of the pairs). Training: without causal
    at every length, with causal where the bands are at most half the pairs, measured against
    ``inductor`` (forward+backward over SDPA's, interleaved, 7 calls): 1.28x against 1.82x at
    (1, 8, 2048, 64), 1.19x against 1.88x at 4096, 1.46x against 1.94x at (2, 8, 1024, 64),
    1.79x against 1.95-2.0x at (4, 8, 512, 64); causal 1.31x against 1.77x at 2048, 1.26x against
    1.53x at 1024, but 1.27x against 1.14x at 512, where the bands are 75% of the pairs."""
    if reasons(call):
        return False
    if call.needs_grad:  # (the backward holds a few (B, H, rows, band) tensors at once: kept under a limit)
        if band_bytes(call) > TRAIN_BAND_BYTES:
            return False
        return not call.causal or band_share(call) <= TRAIN_CAUSAL_BAND_SHARE
    return not call.causal and band_share(call) <= BAND_SHARE


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float, mod: RelativeBias, causal: bool) -> tuple[Tensor, Tensor]:
    """Attention of ``(B, H, L, E)`` queries over ``(B, H, S, E)`` keys and values with the bias
    ``mod`` (bound to the call's lengths), causal (bottom-right, S >= L) or not: ``(out, lse)``,
    the log-sum-exp (B, H, L) in float32 (float64 for float64 inputs); no autograd."""
    with torch.no_grad():
        return _forward(*_strided(q, k, v), scale, mod, causal)[:2]


def trained(q: Tensor, k: Tensor, v: Tensor, scale: float, mod: RelativeBias, causal: bool) -> Tensor:
    """:func:`attention`'s output, differentiable in ``q``, ``k``, ``v`` and a learned table."""
    return _Regions.apply(q, k, v, mod.table, float(scale), mod, causal)


def _strided(*ts: Tensor) -> tuple:
    """The kernel reads the features with stride 1 (a (B, L, H, E) view is fine, a transposed one is not)."""
    return tuple(t if t.stride(-1) == 1 else t.contiguous() for t in ts)


def _edges(mod: RelativeBias, H: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The table's two edge entries per head, ``(1, H, 1)`` each: keys far to the left, far to the right."""
    table = mod.table.detach()
    table = table if table.ndim == 2 else table.unsqueeze(0).expand(H, -1)
    return tuple(table[:, e].to(dtype).view(1, H, 1) for e in (0, 2 * mod.max_distance))


def _blocks(L: int, S: int, mod: RelativeBias, causal: bool):
    """Per block of rows: ``(i0, i1, jl, jr, far)``: keys ``jl:jr`` are the band, ``far`` the key
    ranges of the far pieces, left (entry 0) then right (entry 2R; none seen after with causal)."""
    for i0 in range(0, L, ROWS):
        i1 = min(L, i0 + ROWS)
        jl, jr = clipped_span(mod.offset, i0, i1, mod.max_distance, S, causal)
        yield i0, i1, jl, jr, ((0, jl), (jr, jr if causal else S))


def _forward(q: Tensor, k: Tensor, v: Tensor, scale: float, mod: RelativeBias, causal: bool,
             keep: bool = False) -> tuple:
    """``(out, lse)``, and with ``keep`` the far pieces' own ``(out, lse)`` per row, left then right
    (what the edge entries' gradients need)."""
    B, H, L, _ = q.shape
    S = k.shape[2]
    out = q.new_zeros(B, H, L, v.shape[-1])  # (0, -inf): nothing seen yet; each piece merges in
    lse = q.new_full((B, H, L), -math.inf, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)
    far = [(torch.zeros_like(out), torch.full_like(lse, -math.inf)) for _ in range(2)] if keep else None
    left, right = _edges(mod, H, lse.dtype)
    last: list = [None, None]  # the latest band mask and its key: interior blocks, one after another, share it
    for i0, i1, jl, jr, pieces in _blocks(L, S, mod, causal):
        rows, o_blk, l_blk = q[:, :, i0:i1], out[:, :, i0:i1], lse[:, :, i0:i1]
        if jr > jl:
            o, l = _FWD(rows, k[:, :, jl:jr], v[:, :, jl:jr], 0.0, False,
                        attn_mask=_band(last, mod, i0, i1, jl, jr, q.dtype, causal), scale=scale)
            merge_into(o_blk, l_blk, o, l)
        for side, ((j0, j1), edge) in enumerate(zip(pieces, (left, right))):
            if j1 > j0:  # the same entry for every key here: the kernel's softmax, its total scaled
                o, l = _FWD(rows, k[:, :, j0:j1], v[:, :, j0:j1], 0.0, False, scale=scale)
                l = l + edge
                if keep:  # (before the merge, which overwrites o)
                    far[side][0][:, :, i0:i1], far[side][1][:, :, i0:i1] = o, l
                merge_into(o_blk, l_blk, o, l)
    return (out, lse) if not keep else (out, lse, *far[0], *far[1])


class _Regions(torch.autograd.Function):
    """The backward, block by block: each far piece through the kernel's own backward, given the
    merged output and a log-sum-exp lowered by the piece's edge entry (``P = exp(S + edge - lse)``
    and ``Δ = rowsum(dO ∘ O)`` then belong to the whole row, so the piece's gradients are its
    share of the exact ones); the band by hand, since the table's gradient needs its ``dS``,
    summed along diagonals. An edge entry's gradient is its piece's ``Σ dS``, which is per row
    ``mass · (dO · O_piece − Δ)`` (``mass = exp(lse_piece − lse)``): the forward keeps each far
    piece's output and log-sum-exp for it."""

    @staticmethod
    def forward(ctx, q, k, v, table, scale, mod, causal):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse, *far = _forward(q, k, v, scale, mod, causal, keep=True)
        ctx.save_for_backward(q, k, v, table, out, lse, *far)  # (the table too: changed in place, autograd says so)
        ctx.scale, ctx.mod, ctx.causal = scale, mod, causal
        return out

    @staticmethod
    def backward(ctx, dout):
        no_double_backward("attend's relative-bias path on SDPA's kernel")
        q, k, v, table, out, lse, o_left, l_left, o_right, l_right = ctx.saved_tensors
        scale, causal = ctx.scale, ctx.causal
        mod = dataclasses.replace(ctx.mod, table=table)  # the table as saved
        B, H, L, _ = q.shape
        S, R = k.shape[2], mod.max_distance
        dout = dout.contiguous()
        acc = lse.dtype  # float32, or float64 for float64 inputs
        delta = (dout.to(acc) * out.to(acc)).sum(-1)  # (B, H, L)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        want_table = ctx.needs_input_grad[3]
        dtable = torch.zeros(H, 2 * R + 1, dtype=acc, device=q.device) if want_table else None
        edges = _edges(mod, H, acc)
        last: list = [None, None]
        for i0, i1, jl, jr, pieces in _blocks(L, S, mod, causal):
            r = slice(i0, i1)
            do, qr, o, l = dout[:, :, r], q[:, :, r], out[:, :, r], lse[:, :, r]
            if jr > jl:  # the band: P and dS by hand
                kb, vb = k[:, :, jl:jr], v[:, :, jl:jr]
                s = torch.matmul(qr, kb.transpose(-1, -2)).mul_(scale).add_(_band(last, mod, i0, i1, jl, jr, q.dtype, causal))
                p = torch.exp_(s.sub_(l.unsqueeze(-1).to(s.dtype)))
                ds = torch.matmul(do, vb.transpose(-1, -2)).sub_(delta[:, :, r].unsqueeze(-1).to(s.dtype)).mul_(p)
                dq[:, :, r] += torch.matmul(ds, kb).mul_(scale)
                dk[:, :, jl:jr] += torch.matmul(ds.transpose(-1, -2), qr).mul_(scale)
                dv[:, :, jl:jr] += torch.matmul(p.transpose(-1, -2), do)
                if want_table:
                    g = diagonal_sums(ds, mod, i0, jl)  # (H, 2R+1), or (2R+1,) summed over heads for a shared table
                    if g.ndim == 2:
                        dtable += g
                    else:
                        dtable[0] += g
            for side, ((j0, j1), o_far, l_far) in enumerate(zip(pieces, (o_left, o_right), (l_left, l_right))):
                if j1 <= j0:
                    continue
                lowered = (l - edges[side]).contiguous()
                ga, gb, gc = _BWD(do, qr, k[:, :, j0:j1], v[:, :, j0:j1], o, lowered, 0.0, False, scale=scale)
                dq[:, :, r] += ga
                dk[:, :, j0:j1] += gb
                dv[:, :, j0:j1] += gc
                if want_table:
                    mass = torch.exp(l_far[:, :, r] - l)
                    piece = (do.to(acc) * o_far[:, :, r].to(acc)).sum(-1) - delta[:, :, r]
                    dtable[:, 0 if side == 0 else 2 * R] += (mass * piece).sum((0, 2))
        if want_table:
            dtable = (dtable if mod.table.ndim == 2 else dtable.sum(0)).to(mod.table.dtype)
        return dq, dk, dv, dtable, None, None, None


def _band(last: list, mod: RelativeBias, i0: int, i1: int, jl: int, jr: int, dtype: torch.dtype,
          causal: bool) -> Tensor:
    """The table's entries for rows ``i0:i1`` and keys ``jl:jr``, ``(1, H|1, rows, keys)``, -inf
    after each row's position with ``causal`` (every row keeps its own key: the band starts at or
    before it). Made again only when (first key - first row's position, keys, rows) changes:
    ``last`` holds the latest, so at most one block's mask is alive."""
    key = (jl - i0 - mod.offset, jr - jl, i1 - i0)
    if last[0] != key:
        mask = table_tile(mod, i0, i1, jl, jr).to(dtype)
        if causal:
            dev = mask.device
            after = torch.arange(jl, jr, device=dev).view(1, -1) > torch.arange(i0, i1, device=dev).view(-1, 1) + mod.offset
            mask = mask.masked_fill(after, -math.inf)
        last[0], last[1] = key, mask
    return last[1]


def describe(call: AttentionCall) -> Optional[str]:
    """One line for :func:`attend.explain` when this path runs ``call``."""
    if reasons(call):
        return None
    R = call.score_mod.max_distance
    return (f"{'causal ' if call.causal else ''}relative bias in blocks of {ROWS} rows: the keys beyond the table's reach ({R} "
            f"position{'s' if R != 1 else ''}) as plain kernel calls with the edge entries added to their log-sum-exp, the band "
            f"({100 * band_share(call):.0f}% of the pairs) with the table's entries as a float mask"
            + ("; the backward: the far keys through the kernel's backward, the band by hand (the table's gradient "
               "summed along its diagonals)" if call.needs_grad else ""))
