"""A bias of the distance (relative-bias table, ALiBi) as one call of SDPA's CPU kernel, the
(L, S) biases a strided view.

``mods.relative_bias(table)`` adds ``table[h, clip(j - p, -R, R) + R]`` to the score of query
``i`` (at key position ``p = i + offset``) and key ``j``; ``mods.alibi(slopes)`` adds
``-slopes[h] * |j - p|``. Either depends on ``j - i`` only, so the (L, S) matrix of biases is a
Toeplitz matrix and all of it lives in one vector of ``L + S - 1`` entries per head. A Toeplitz
matrix's rows step *back* one entry per row, which a tensor's (non-negative) strides cannot
say; its rows read in reverse order step forward one entry per row. So the queries are
reversed, the mask handed to the kernel is ``vec.as_strided((1, H, L, S), (0, L + S - 1, 1, 1))``
(row ``r``, key ``j`` reads ``vec[r + j]``), and the output is reversed back. SDPA's CPU kernel
reads a float mask through its strides, a block at a time, so the matrix is never materialised:
a few kilobytes of mask for any length, where a dense float mask is 4·H·L·S bytes.

With ``causal`` (bottom-right, ``S >= L``) the vector holds ``-inf`` past each row's position,
and the rows run in blocks of :data:`ROWS`, each call over the keys the block's last row may see
(the keys after it are never read), so about half the pairs are skipped.

The kernel's backward takes the same mask, so training runs here too when the table or slopes
are fixed; a learned table's gradient is the scores' gradient summed along its diagonals, which
the kernel does not give: that stays on :mod:`._relbias_regions` or ``inductor``.
Measured in ``benchmarks/results/cpu-distance-bias.md`` (see :func:`preferred`).

Before its first use in a process, :func:`reads_strides` checks on a small call that the kernel
of this PyTorch build reads the view as the view (against the same mask made contiguous), forward
and backward; where it does not, this path declines.
"""
from __future__ import annotations

import functools
import math
import weakref
from typing import Optional

import torch
from torch import Tensor

from .._rules import Alibi, RelativeBias
from ._causal_blocks import untraceable
from ._programs import no_double_backward
from ._relbias_regions import _strided, kernel_reasons
from .base import AttentionCall

#: query rows per kernel call with ``causal`` (each call reads the keys its rows may see)
ROWS = 256
_FWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
_MODS = (RelativeBias, Alibi)


def _what(mod) -> str:
    return "relative bias" if isinstance(mod, RelativeBias) else "ALiBi"


def _param(mod) -> Tensor:
    """The modifier's one tensor: the table, or the slopes."""
    return mod.table if isinstance(mod, RelativeBias) else mod.slopes


def sdpa_reason(call: AttentionCall) -> str:
    """Why flex and inductor leave ``call`` to sdpa, in ``explain``."""
    what = "relative-bias table" if isinstance(call.score_mod, RelativeBias) else "ALiBi"
    return (f"sdpa runs this {what} faster: one call of SDPA's kernel with the biases as a strided view "
            f"(benchmarks/results/cpu-distance-bias.md)")


#: ``flex`` keeps ALiBi's inference without causal past this many keys (its proven reach leaves
#: out more blocks the longer the sequence; see :func:`preferred`)
ALIBI_FLEX_KEYS = 2048


def preferred(call: AttentionCall, *, over: str) -> bool:
    """Whether ``auto`` should run ``call`` here rather than on ``over`` ("flex" or "inductor"),
    where this path can run it. Measured in ``benchmarks/results/cpu-distance-bias.md``, over SDPA
    with no bias (causal where the call is), at (1, 8, 2048, 64), (4, 8, 512, 64), (2, 8, 1024, 64)
    and (1, 8, 4096, 64):

    - a relative-bias table's forward: 1.01-1.13x here against 1.42-1.92x on the regions path and
      1.53-2.45x on FlexAttention's kernel; with causal 0.94-1.26x against 0.93-1.57x on
      FlexAttention's (a tie at 512 keys);
    - training (q, k, v learn, the table or slopes fixed): 0.87-1.21x here against 1.11-2.11x on
      ``inductor``'s tiles and, for a table, 1.15-1.59x on the regions path, every variant and shape;
    - ALiBi's forward on FlexAttention's kernel leaves out the blocks past ALiBi's proven reach
      (:mod:`._alibi_reach`), more of them the longer the sequence: without causal 1.08-1.13x here
      against 1.26-1.45x up to 2048 keys, and at 4096 a tie (1.02x against 1.07x, and 1.03x against
      0.99x in the run before); with causal FlexAttention's was faster at every shape (0.80-1.13x
      against 0.92-1.40x).

    So ``flex`` keeps ALiBi's inference with causal or past :data:`ALIBI_FLEX_KEYS` keys, and
    this path takes that only over ``inductor`` (where FlexAttention's kernel cannot run)."""
    mod = call.score_mod
    if type(mod) not in _MODS:
        return False
    if (over == "flex" and isinstance(mod, Alibi) and not call.needs_grad
            and (call.causal or call.S > ALIBI_FLEX_KEYS)):
        return False
    return not reasons(call)


_LAST: tuple = (None, ())  # (a weak reference to the latest call asked about, its reasons)


def reasons(call: AttentionCall) -> list[str]:
    """Why this path cannot run ``call`` (empty: it can). Worked out once per call object: ``auto``'s
    choice asks from flex, inductor and sdpa, then sdpa's run and explain ask again. (One tuple,
    read and replaced whole; weak, so the call's tensors are not kept alive.)"""
    global _LAST
    last = _LAST
    if last[0] is not None and last[0]() is call:
        return list(last[1])
    why = _reasons(call)
    _LAST = (weakref.ref(call), tuple(why))
    return why


def _reasons(call: AttentionCall) -> list[str]:
    mod = call.score_mod
    if type(mod) not in _MODS:  # (exactly: a subclass may score differently)
        return ["score_mod is not a bias of the distance (a relative-bias table or ALiBi, not a subclass)"]
    why = kernel_reasons(call, forward_only=True)
    if untraceable():
        why.append("under torch.compile, autocast or torch.func (a strided view handed to the kernel directly)")
    if call.needs_grad and _param(mod).requires_grad:
        why.append(f"a learned {'table' if isinstance(mod, RelativeBias) else 'slope'}'s gradient sums the scores' "
                   f"gradient along the diagonals, which the kernel's backward does not give")
    if not why and not bool(torch.isfinite(_param(mod).detach().to(call.query.dtype)).all()):  # (last: it reads
        # the tensor; in the inputs' dtype, which a float64 entry past float32's range overflows)
        why.append(f"the {'table holds' if isinstance(mod, RelativeBias) else 'slopes hold'} a non-finite entry")
    if not why and not reads_strides():
        why.append("this PyTorch's SDPA CPU kernel does not read a strided mask as its strides say")
    return why


def vector(mod, L: int, S: int, dtype: torch.dtype, causal: bool, device: torch.device | str = "cpu") -> Tensor:
    """``(H|1, L + S - 1)`` on ``device``: entry ``r + j`` is the bias of key ``j`` for the query
    ``L - 1 - r`` (``-inf`` past its position with ``causal``). ``mod`` is bound to ``(L, S)``."""
    p = _param(mod).detach().to(device)
    d = torch.arange(L + S - 1, device=p.device) - (L - 1) - mod.offset  # j - p
    if isinstance(mod, RelativeBias):
        idx = d.clamp(-mod.max_distance, mod.max_distance) + mod.max_distance
        vec = p[:, idx] if p.ndim == 2 else p[idx].unsqueeze(0)
    else:
        vec = -p.reshape(-1, 1).to(dtype) * d.abs().to(dtype)
    vec = vec.to(dtype)
    if causal:
        vec = vec.masked_fill(d > 0, -math.inf)
    return vec.contiguous()


def _view(vec: Tensor, r0: int, rows: int, keys: int) -> Tensor:
    """The mask of reversed rows ``r0:r0+rows`` over keys ``0:keys``: ``(1, H|1, rows, keys)``, no copy."""
    n = vec.shape[-1]
    return vec.as_strided((1, vec.shape[0], rows, keys), (0, n, 1, 1), vec.storage_offset() + r0)


def _blocks(L: int, S: int, causal: bool) -> list[tuple[int, int, int]]:
    """``(r0, r1, keys)`` per kernel call, in reversed rows: reversed row ``r`` is the query at
    position ``S - 1 - r``, which sees keys ``0 : S - r`` with ``causal``."""
    if not causal:
        return [(0, L, S)]
    return [(r0, min(L, r0 + ROWS), S - r0) for r0 in range(0, L, ROWS)]


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float, mod, causal: bool) -> Tensor:
    """Attention of ``(B, H, L, E)`` queries over ``(B, H, S, E)`` keys and values with the bias
    ``mod`` (a relative-bias table or ALiBi, bound to the call's lengths), causal (bottom-right, ``S >= L``) or not; differentiable
    in ``q``, ``k`` and ``v`` (the table or slopes taken as fixed: :func:`reasons` says so)."""
    vec = vector(mod, q.shape[2], k.shape[2], q.dtype, causal, q.device)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _Strided.apply(q, k, v, vec, float(scale), causal)
    with torch.no_grad():
        return _forward(q.flip(2).contiguous(), *_strided(k, v), vec, scale, causal)[0].flip(2)


def _forward(qr: Tensor, k: Tensor, v: Tensor, vec: Tensor, scale: float, causal: bool) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` of the reversed queries ``qr``, in reversed order."""
    L, S = qr.shape[2], k.shape[2]
    blocks = _blocks(L, S, causal)
    if len(blocks) == 1:
        return _FWD(qr, k, v, 0.0, False, attn_mask=_view(vec, 0, L, S), scale=scale)
    B, H = qr.shape[:2]
    out = qr.new_empty(B, H, L, v.shape[-1])
    lse = qr.new_empty(B, H, L, dtype=torch.float64 if qr.dtype == torch.float64 else torch.float32)
    for r0, r1, keys in blocks:
        o, l = _FWD(qr[:, :, r0:r1], k[:, :, :keys], v[:, :, :keys], 0.0, False,
                    attn_mask=_view(vec, r0, r1 - r0, keys), scale=scale)
        out[:, :, r0:r1], lse[:, :, r0:r1] = o, l
    return out, lse


class _Strided(torch.autograd.Function):
    """The forward and the backward each as the kernel's own calls with the same strided mask."""

    @staticmethod
    def forward(ctx, q, k, v, vec, scale, causal):
        qr = q.flip(2).contiguous()  # (flip keeps the strides: a transposed q's features would not be stride 1)
        k, v = k.contiguous(), v.contiguous()
        out, lse = _forward(qr, k, v, vec, scale, causal)
        ctx.save_for_backward(qr, k, v, vec, out, lse)
        ctx.scale, ctx.causal = scale, causal
        return out.flip(2)

    @staticmethod
    def backward(ctx, dout):
        no_double_backward("attend's distance-bias path on SDPA's kernel")
        qr, k, v, vec, out, lse = ctx.saved_tensors
        scale = ctx.scale
        dr = dout.flip(2).contiguous()
        L, S = qr.shape[2], k.shape[2]
        blocks = _blocks(L, S, ctx.causal)
        if len(blocks) == 1:
            dqr, dk, dv = _BWD(dr, qr, k, v, out, lse, 0.0, False, attn_mask=_view(vec, 0, L, S), scale=scale)
        else:
            dqr, dk, dv = torch.empty_like(qr), torch.zeros_like(k), torch.zeros_like(v)
            for r0, r1, keys in blocks:
                a, b, c = _BWD(dr[:, :, r0:r1], qr[:, :, r0:r1], k[:, :, :keys], v[:, :, :keys], out[:, :, r0:r1],
                               lse[:, :, r0:r1], 0.0, False, attn_mask=_view(vec, r0, r1 - r0, keys), scale=scale)
                dqr[:, :, r0:r1] = a
                dk[:, :, :keys] += b
                dv[:, :, :keys] += c
        return dqr.flip(2), dk, dv, None, None, None


@functools.lru_cache(maxsize=None)
def reads_strides() -> bool:
    """Whether this PyTorch's SDPA CPU kernel, forward and backward, reads a mask whose rows
    overlap (row stride 1) as its strides say: a small call against the same mask made contiguous."""
    g = torch.Generator().manual_seed(0)
    L, S = 300, 600  # (several of the kernel's row and key blocks)
    q, k, v, dout = (torch.randn(1, 2, n, 8, generator=g, dtype=torch.float32, device="cpu") for n in (L, S, S, L))
    vec = torch.randn(2, L + S - 1, generator=g, dtype=torch.float32, device="cpu")
    view = _view(vec, 0, L, S)
    with torch.no_grad():
        got = _FWD(q, k, v, 0.0, False, attn_mask=view, scale=0.3)
        want = _FWD(q, k, v, 0.0, False, attn_mask=view.contiguous(), scale=0.3)
        if not torch.equal(got[0], want[0]):
            return False
        grads = [_BWD(dout, q, k, v, *want[:2], 0.0, False, attn_mask=m, scale=0.3) for m in (view, view.contiguous())]
    return all(torch.equal(a, b) for a, b in zip(*grads))


def describe(call: AttentionCall) -> Optional[str]:
    """One line for :func:`attend.explain` when this path runs ``call``."""
    if reasons(call):
        return None
    L, S = call.L, call.S
    how = (f"in blocks of {ROWS} rows, each over the keys its rows may see" if call.causal and L > ROWS
           else "as one call")
    return (f"{'causal ' if call.causal else ''}{_what(call.score_mod)} on SDPA's kernel {how}: the (L, S) biases as a strided "
            f"view of {L + S - 1} entries per head (queries reversed, so each row starts one entry further)"
            + ("; the backward is the kernel's, with the same view (the biases are fixed)" if call.needs_grad else ""))
