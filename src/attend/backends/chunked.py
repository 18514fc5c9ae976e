"""``chunked``: attention over key blocks with an online softmax; memory O(L·block), not O(L·S).

Any score function runs here, including the additive (Bahdanau) one, whose scores
``vᵀ tanh(W_q q + W_k k)`` would otherwise need a ``(L, S, hidden)`` tensor.

Inference (no gradient needed) is one pass over key blocks, carrying per query row a
running max ``m``, normaliser ``l`` and output accumulator ``acc`` (Milakov & Gimelshein
2018, "Online normalizer calculation for softmax"; Dao et al. 2022, FlashAttention)::

    m' = max(m, rowmax(s_blk));  p = exp(s_blk - m')
    l' = l·exp(m - m') + rowsum(p);  acc' = acc·exp(m - m') + p v_blk;  o = acc / l

(Attention sinks add ``exp(sink_h - m)`` to ``l`` once, after the last block.)

With gradients, two passes over the blocks instead, each block under activation
checkpointing, so backward *recomputes* a block's scores rather than storing them all:
pass 1 gives each row's log-sum-exp ``lse``; pass 2 sums ``exp(s_blk - lse) v_blk``.
Autograd through the recomputed blocks reaches every input, including score-function
parameters and tensors used by ``score_mod``. Key blocks that ``causal``/``window`` rule
out entirely are skipped.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .base import AttentionCall, Backend, compute_dtype, safe_lse


class Chunked(Backend):
    """Online-softmax attention over blocks of ``block_size`` keys (any score function)."""

    name = "chunked"

    def __init__(self, *, block_size: int = 256):
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        self.block_size = block_size

    def can_run(self, call: AttentionCall) -> list[str]:
        if call.hard:
            return ["hard attention needs the argmax over all keys; use eager"]
        return []

    def _blocks(self, call: AttentionCall) -> list[tuple[int, int]]:
        spans = [(j0, min(j0 + self.block_size, call.S)) for j0 in range(0, call.S, self.block_size)]
        kept = [(j0, j1) for j0, j1 in spans if not call.block_is_empty(0, call.L, j0, j1)]
        return kept or spans[:1]  # keep one block so the output stays connected to the inputs

    def run(self, call: AttentionCall) -> tuple[Tensor, Optional[Tensor]]:
        dtype = call.query.dtype
        cdt = compute_dtype(dtype)
        q = call.query.to(cdt).contiguous()  # (B, Hq, L, E); contiguous: same bits for any input layout
        if call.needs_grad or call.return_weights:
            out, weights = self._two_pass(call, q, cdt)
        else:
            out, weights = self._online(call, q, cdt), None
        return out.to(dtype), (weights.to(dtype) if weights is not None else None)

    def _kv(self, call: AttentionCall, j0: int, j1: int, cdt: torch.dtype) -> tuple[Tensor, Tensor]:
        k = call.expand_kv(call.key[:, :, j0:j1]).to(cdt).contiguous()  # (B, Hq, s, Ek)
        v = call.expand_kv(call.value[:, :, j0:j1]).to(cdt).contiguous()  # (B, Hq, s, Ev)
        return k, v

    def _online(self, call: AttentionCall, q: Tensor, cdt: torch.dtype) -> Tensor:
        B, H, L = q.shape[:3]
        m = q.new_full((B, H, L, 1), -math.inf)  # running row max
        l = q.new_zeros((B, H, L, 1))  # running normaliser
        acc = q.new_zeros((B, H, L, call.Ev))  # running unnormalised output
        for j0, j1 in self._blocks(call):
            k, v = self._kv(call, j0, j1, cdt)
            s = call.scores(q, k, 0, j0)  # (B, Hq, L, s)
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            m_safe = torch.where(m_new == -math.inf, torch.zeros_like(m_new), m_new)
            alpha = torch.exp(m - m_safe)  # rescales what was accumulated so far
            p = torch.exp(s - m_safe)  # (B, Hq, L, s)
            l = l * alpha + p.sum(dim=-1, keepdim=True)
            if call.dropout_p > 0:
                p = F.dropout(p, call.dropout_p, training=True)
            acc = acc * alpha + torch.matmul(p, v)
            m = m_new
        if call.sinks is not None:  # the sink is one more term of the denominator: exp(sink - m)
            sink = call.sinks.to(cdt).view(1, -1, 1, 1)
            m_new = torch.maximum(m, sink)
            m_safe = torch.where(m_new == -math.inf, torch.zeros_like(m_new), m_new)
            alpha = torch.exp(m - m_safe)
            acc, l = acc * alpha, l * alpha + torch.exp(sink - m_safe)
        return acc / torch.where(l == 0, torch.ones_like(l), l)

    def _two_pass(self, call: AttentionCall, q: Tensor, cdt: torch.dtype) -> tuple[Tensor, Optional[Tensor]]:
        blocks = self._blocks(call)

        def block_lse(q: Tensor, j0: int, j1: int) -> Tensor:
            k, _ = self._kv(call, j0, j1, cdt)
            return safe_lse(call.scores(q, k, 0, j0))  # (B, Hq, L)

        def block_out(q: Tensor, lse: Tensor, j0: int, j1: int) -> tuple[Tensor, Tensor]:
            k, v = self._kv(call, j0, j1, cdt)
            p = torch.exp(call.scores(q, k, 0, j0) - lse.unsqueeze(-1))  # (B, Hq, L, s)
            pd = F.dropout(p, call.dropout_p, training=True) if call.dropout_p > 0 else p
            return torch.matmul(pd, v), p

        ck = dict(use_reentrant=False, preserve_rng_state=True)
        lses = torch.stack([checkpoint(block_lse, q, j0, j1, **ck) for j0, j1 in blocks])  # (nb, B, Hq, L)
        lse = _combine_lse(lses, call.sinks)  # (B, Hq, L); 0 for rows with no key (and no sink)
        out = None
        weights = [] if call.return_weights else None
        for j0, j1 in blocks:
            o, p = checkpoint(block_out, q, lse, j0, j1, **ck)
            out = o if out is None else out + o
            if weights is not None:
                weights.append((j0, j1, p))
        if weights is not None:
            full = q.new_zeros((q.shape[0], q.shape[1], q.shape[2], call.S))  # (B, Hq, L, S)
            for j0, j1, p in weights:
                full[..., j0:j1] = p
            weights = full
        return out, weights


def _combine_lse(lses: Tensor, sinks: Optional[Tensor] = None) -> Tensor:
    """Combine per-block log-sum-exps (nb, B, Hq, L) into one; rows with no key get 0 (so
    exp(-inf - 0) = 0). A head's sink logit (``sinks`` (Hq,)) is one more block."""
    if sinks is not None:
        lses = torch.cat([lses, sinks.to(lses.dtype).view(1, 1, -1, 1).expand(1, *lses.shape[1:])])
    m = lses.amax(dim=0).detach()
    m = torch.where(m == -math.inf, torch.zeros_like(m), m)
    t = torch.exp(lses - m).sum(dim=0)
    return m + torch.log(torch.where(t == 0, torch.ones_like(t), t))
