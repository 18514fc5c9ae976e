"""Plain causal attention at short lengths: SDPA's CPU kernel on blocks it can leave out.

PyTorch's fused CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``) walks the keys
in blocks of 512. With ``is_causal`` it stops at the block that holds the diagonal, but it
computes that block whole and masks it afterwards. Up to about 1024 keys, that block is
most of the sequence, so causal attention costs almost what full attention costs. At
(4, 8, 512, 64), SDPA causal took 1.0x SDPA plain in ``benchmarks/results/cpu.md``.

Here rows and keys are cut into blocks of ``T``. The T x T blocks on the diagonal run as
one causal call, with the blocks stacked as extra heads. The keys before each row block's
diagonal run as one full call. The two results are merged by their log-sum-exp. That is
about L²/2 + L·T/2 multiply-adds instead of L². The backward runs the same kernel's
backward on each block, given the merged output and log-sum-exp. ``P = exp(S − lse)`` and
``Δ = rowsum(dO ∘ O)`` then belong to the whole row, so each block's gradients are its share
of the exact ones.

Measured with ``T = 256`` against SDPA causal, in ``benchmarks/results/cpu.md``: 0.82x
forward and 0.81x forward+backward at (4, 8, 512, 64); 0.91x forward+backward at
(2, 8, 1024, 64); no gain from 2048 keys on, where SDPA's own key blocks already skip
most of the upper triangle. q, k and v in a model's layout, (B, L, H, E) seen as (B, H, L, E),
are copied first, which takes most of the forward's gain: 1.03x against 0.94x for contiguous
inputs, but 1.05x on SDPA's own path, whose input check reads strided tensors. With the
backward: 0.90x against 0.89x.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._programs import merge_into, no_double_backward

#: rows and keys per block
BLOCK = 256
#: the longest sequence that takes this path (at 2048 it was 1.12x slower than SDPA causal)
MAX_LENGTH = 1024
_DTYPES = (torch.float32, torch.float64)

_FWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def applies(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, *, q_features: Optional[int] = None) -> bool:
    """Whether a plain causal call (L == S, no other mask) is worth cutting into blocks here.
    ``q_features``: the queries' width as the kernel will see them, if not ``q``'s own.

    Not under ``torch.compile`` (SDPA's op is one node of its graph), autocast (the block kernel
    has no autocast rule: SDPA's result would be bfloat16, this one float32) or ``torch.func``
    transforms (this autograd function has no vmap or forward-mode rule)."""
    L = q.shape[-2]
    if untraceable():
        return False
    return (q.device.type == "cpu" and q.dim() == 4 and 2 * BLOCK <= L <= MAX_LENGTH
            and k.shape[-2] == L and q.shape[1] == k.shape[1] == v.shape[1]
            and (q.shape[-1] if q_features is None else q_features) == k.shape[-1] == v.shape[-1]  # (the kernel's)
            and q.dtype in _DTYPES and k.dtype == v.dtype == q.dtype and dropout_p == 0.0)


def untraceable() -> bool:
    """torch.compile tracing, CPU autocast or a torch.func transform: an autograd function of
    SDPA's CPU kernel calls (here and in :mod:`._relbias_regions`) has no rule for them."""
    level = getattr(torch._C._functorch, "maybe_current_level", None)  # None outside torch.func transforms
    return (torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu")
            or (level is not None and level() is not None))


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal attention (top-left = bottom-right, since L == S) of ``(B, H, L, E)`` tensors,
    differentiable in ``q``, ``k`` and ``v``."""
    return _Blocks.apply(q, k, v, float(scale))


def _rows(L: int) -> list[tuple[int, int]]:
    return [(i, min(i + BLOCK, L)) for i in range(0, L, BLOCK)]


def _stacked(t: Tensor, n: int) -> Tensor:
    """The first ``n`` whole diagonal blocks of a contiguous ``(B, H, L, w)`` tensor as extra heads:
    ``(B, H * n, BLOCK, w)`` (``(B, H * n, BLOCK)`` for a log-sum-exp)."""
    return t[:, :, : n * BLOCK].reshape(t.shape[0], t.shape[1] * n, BLOCK, *t.shape[3:])


def _put(dst: Tensor, src: Tensor, n: int) -> None:
    """Write a stacked kernel result ``src`` back into the first ``n`` blocks of ``dst``, in one copy."""
    dst[:, :, : n * BLOCK].unflatten(2, (n, BLOCK)).copy_(src.unflatten(1, (dst.shape[1], n)))


class _Blocks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, H, L, _ = q.shape
        n, cut = L // BLOCK, L // BLOCK * BLOCK  # whole diagonal blocks, run as one call
        out = q.new_empty(B, H, L, v.shape[-1])
        lse = q.new_empty(B, H, L, dtype=torch.float32 if q.dtype != torch.float64 else q.dtype)
        o, l = _FWD(_stacked(q, n), _stacked(k, n), _stacked(v, n), 0.0, True, scale=scale)
        _put(out, o, n)
        _put(lse, l, n)
        if cut < L:  # the last, shorter, diagonal block
            o, l = _FWD(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], 0.0, True, scale=scale)
            out[:, :, cut:], lse[:, :, cut:] = o, l
        for i0, i1 in _rows(L)[1:]:  # the keys before each row block's diagonal: allowed whole
            o, l = _FWD(q[:, :, i0:i1], k[:, :, :i0], v[:, :, :i0], 0.0, False, scale=scale)
            merge_into(out[:, :, i0:i1], lse[:, :, i0:i1], o, l)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        no_double_backward("attend's causal blocks on SDPA's kernel")
        q, k, v, out, lse = ctx.saved_tensors
        scale = ctx.scale
        dout = dout.contiguous()
        L = q.shape[2]
        n, cut = L // BLOCK, L // BLOCK * BLOCK
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)  # the diagonal writes every row
        grads = _BWD(*(_stacked(t, n) for t in (dout, q, k, v, out, lse)), 0.0, True, scale=scale)
        for dst, src in zip((dq, dk, dv), grads):
            _put(dst, src, n)
        if cut < L:
            s = slice(cut, L)
            grads = _BWD(dout[:, :, s], q[:, :, s], k[:, :, s], v[:, :, s], out[:, :, s], lse[:, :, s],
                         0.0, True, scale=scale)
            for dst, src in zip((dq, dk, dv), grads):
                dst[:, :, s] = src
        for i0, i1 in _rows(L)[1:]:
            r = slice(i0, i1)
            ga, gb, gc = _BWD(dout[:, :, r], q[:, :, r], k[:, :, :i0], v[:, :, :i0], out[:, :, r], lse[:, :, r],
                              0.0, False, scale=scale)
            dq[:, :, r] += ga
            dk[:, :, :i0] += gb
            dv[:, :, :i0] += gc
        return dq, dk, dv, None
