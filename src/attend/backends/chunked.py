"""``chunked``: attention over blocks of keys with an online softmax; memory O(tile), not O(L·S).

Any score function runs here, including the additive (Bahdanau) one, whose scores
``vᵀ tanh(W_q q + W_k k)`` would otherwise need a ``(L, S, hidden)`` tensor.

Inference (no gradient needed) is one pass over key blocks, carrying per query row a
running max ``m``, normaliser ``l`` and output accumulator ``acc`` (Milakov & Gimelshein
2018, "Online normalizer calculation for softmax"; Dao et al. 2022, FlashAttention)::

    m' = max(m, rowmax(s_blk));  p = exp(s_blk - m')
    l' = l·exp(m - m') + rowsum(p);  acc' = acc·exp(m - m') + p v_blk;  o = acc / l

(Attention sinks add ``exp(sink_h - m)`` to ``l`` once, after the last block.) It runs
one such pass per tile of query rows, so its memory is O(tile) beyond the inputs and the
output.

With gradients, two passes over tiles of ``query_block_size`` queries x ``block_size``
keys instead, each tile under activation checkpointing, so backward *recomputes* a tile's
scores rather than storing them all: pass 1 gives each row's log-sum-exp ``lse``; pass 2
sums ``exp(s_tile - lse) v_tile``. Autograd through the recomputed tiles reaches every
input, including score-function parameters and tensors used by ``score_mod``. Tiles that
``causal``/``window`` or a rule's key span (:meth:`attend._rules.Rule.keys`: causal,
sliding_window, chunked, an int prefix_lm) rule out entirely are skipped; mask rules are
evaluated per tile.
Memory: O(tile) beyond the inputs, the output and their gradients (measured as the process
sees it in ``benchmarks/results/cpu-backends.md``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .. import _check
from ._heap import HeapGuard as _HeapGuard
from .base import AttentionCall, Backend, compute_dtype, safe_lse


class Chunked(Backend):
    """Online-softmax attention over blocks of ``block_size`` keys (any score function).

    Query rows go in tiles of at most ``query_block_size``, fewer when many sequences and
    heads make a tile's scores larger than ``tile_bytes`` (so a tile's temporaries stay a
    few MiB whatever the batch and head count).
    """

    name = "chunked"

    def __init__(self, *, block_size: int = 512, query_block_size: int = 1024, tile_bytes: int = 4 << 20):
        for arg, val in (("block_size", block_size), ("query_block_size", query_block_size), ("tile_bytes", tile_bytes)):
            _check.integer(val, arg, low=1, expected="a positive int")
        self.block_size, self.query_block_size, self.tile_bytes = block_size, query_block_size, tile_bytes

    def _rows(self, call: AttentionCall, item: int) -> int:
        """Query rows per tile: ``query_block_size``, or fewer (at least 16) to keep one tile's
        (B, Hq, rows, block) scores within ``tile_bytes``."""
        per_row = call.B * call.Hq * min(self.block_size, call.S) * item
        return max(1, min(self.query_block_size, max(16, self.tile_bytes // max(per_row, 1))))

    def can_run(self, call: AttentionCall) -> list[str]:
        if call.hard:
            return ["hard attention needs the argmax over all keys; use eager"]
        return []

    def run(self, call: AttentionCall) -> tuple[Tensor, Optional[Tensor]]:
        dtype = call.query.dtype
        cdt = compute_dtype(dtype)
        q = call.query.to(cdt).contiguous()  # (B, Hq, L, E); contiguous: same bits for any input layout
        if call.needs_grad or call.return_weights:
            out, weights = self._two_pass(call, q, cdt)
        else:
            out, weights = self._online(call, q, cdt), None
        return out.to(dtype), (weights.to(dtype) if weights is not None else None)

    def _key_blocks(self, call: AttentionCall, cdt: torch.dtype):
        """``(spans, kv)``: the key blocks ``(j0, j1)`` and ``kv(n)``, block n's keys and values
        (B, Hq, s, Ek|Ev) in ``cdt``. K and V are split once (``Tensor.split``), so with
        gradients each block's lands in its piece and the pieces are joined once, instead of
        every block's backward allocating a full-size zero gradient for a slice."""
        spans = [(j0, min(j0 + self.block_size, call.S)) for j0 in range(0, call.S, self.block_size)]
        keys = call.key.split(self.block_size, dim=2)  # (B, Hkv, s, Ek) each
        values = call.value.split(self.block_size, dim=2)  # (B, Hkv, s, Ev) each

        def kv(n: int) -> tuple[Tensor, Tensor]:
            return (call.expand_kv(keys[n]).to(cdt).contiguous(), call.expand_kv(values[n]).to(cdt).contiguous())

        return spans, kv

    @staticmethod
    def _kept(call: AttentionCall, spans, i0: int, i1: int) -> list[int]:
        """The key blocks ``causal``/``window`` and the mask rule's key span leave rows
        ``i0:i1`` (at least one, so the output stays connected to the inputs)."""
        return [n for n, (j0, j1) in enumerate(spans) if not call.block_is_empty(i0, i1, j0, j1)] or [0]

    def _online(self, call: AttentionCall, q: Tensor, cdt: torch.dtype) -> Tensor:
        """One pass over key blocks per tile of query rows (no graph is kept)."""
        guard = self._guard(call, q)
        rows = self._rows(call, q.element_size())
        blocks = self._key_blocks(call, cdt)
        outs = []
        for i0, qi in zip(range(0, call.L, rows), q.split(rows, dim=2)):
            outs.append(self._online_rows(call, qi, i0, cdt, blocks, guard))  # (B, Hq, l, Ev)
        return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]

    def _online_rows(self, call: AttentionCall, q: Tensor, i0: int, cdt: torch.dtype, blocks, guard) -> Tensor:
        B, H, l_rows = q.shape[:3]
        i1 = i0 + l_rows
        m = q.new_full((B, H, l_rows, 1), -math.inf)  # running row max
        l = q.new_zeros((B, H, l_rows, 1))  # running normaliser
        acc = q.new_zeros((B, H, l_rows, call.Ev))  # running unnormalised output
        spans, kv = blocks
        for n in self._kept(call, spans, i0, i1):
            guard()
            k, v = kv(n)
            s = call.scores(q, k, i0, spans[n][0])  # (B, Hq, l, s)
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            m_safe = torch.where(m_new == -math.inf, torch.zeros_like(m_new), m_new)
            alpha = torch.exp(m - m_safe)  # rescales what was accumulated so far
            p = torch.exp(s - m_safe)  # (B, Hq, l, s)
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

    def _guard(self, call: AttentionCall, q: Tensor, *, grads: bool = False):
        """A :class:`_HeapGuard` for this call on the CPU (a no-op elsewhere): the process may
        grow by what the call allocates for good — the output, and with ``grads`` the inputs'
        gradients — and a few tiles' temporaries before freed memory is handed back."""
        if q.device.type != "cpu":
            return lambda: None
        item = q.element_size()
        tile = call.B * call.Hq * min(self._rows(call, item), call.L) * min(self.block_size, call.S) * item
        kept = call.B * call.Hq * call.L * call.Ev * item  # the output
        if grads:
            kept += sum(t.numel() for t in (call.query, call.key, call.value)) * item
        return _HeapGuard(kept + (6 if grads else 4) * tile)

    def _two_pass(self, call: AttentionCall, q: Tensor, cdt: torch.dtype) -> tuple[Tensor, Optional[Tensor]]:
        """Tiles of ``query_block_size`` rows x ``block_size`` keys, each under checkpointing.

        q, k and v are split once, outside the checkpoints (:meth:`_key_blocks`).

        Memory as the process sees it: the tiles' temporaries are freed block after block,
        but glibc's allocator raises its mmap threshold each time a large block is freed
        (up to 32 MiB), so later blocks come from the heap, which fragments and is not given
        back: measured at L = S = 16384, the process grew by 3 GiB while at most 72 MiB was
        ever live. :class:`_HeapGuard` hands the freed memory back (``malloc_trim``) whenever
        the process has grown past what the call can need."""
        bq, L = self._rows(call, q.element_size()), call.L
        spans, kv = self._key_blocks(call, cdt)
        guard = self._guard(call, q, grads=True)

        def block_lse(q: Tensor, i0: int, n: int) -> Tensor:
            guard()
            k, _ = kv(n)
            return safe_lse(call.scores(q, k, i0, spans[n][0]))  # (B, Hq, l)

        def block_out(q: Tensor, lse: Tensor, i0: int, n: int) -> tuple[Tensor, Tensor]:
            guard()
            k, v = kv(n)
            p = torch.exp(call.scores(q, k, i0, spans[n][0]) - lse.unsqueeze(-1))  # (B, Hq, l, s)
            pd = F.dropout(p, call.dropout_p, training=True) if call.dropout_p > 0 else p
            return torch.matmul(pd, v), p

        ck = dict(use_reentrant=False, preserve_rng_state=True)
        outs = []
        weights = q.new_zeros((q.shape[0], q.shape[1], L, call.S)) if call.return_weights else None  # (B, Hq, L, S)
        for i0, qi in zip(range(0, L, bq), q.split(bq, dim=2)):  # qi (B, Hq, l, E)
            i1 = i0 + qi.shape[2]
            kept = self._kept(call, spans, i0, i1)
            lses = torch.stack([checkpoint(block_lse, qi, i0, n, **ck) for n in kept])  # (nb, B, Hq, l)
            lse = _combine_lse(lses, call.sinks)  # (B, Hq, l); 0 for rows with no key (and no sink)
            out = None
            for n in kept:
                o, p = checkpoint(block_out, qi, lse, i0, n, **ck)
                out = o if out is None else out + o
                if weights is not None:
                    weights[:, :, i0:i1, spans[n][0]:spans[n][1]] = p
            outs.append(out)
        return torch.cat(outs, dim=2), weights  # (B, Hq, L, Ev)


def _combine_lse(lses: Tensor, sinks: Optional[Tensor] = None) -> Tensor:
    """Combine per-block log-sum-exps (nb, B, Hq, L) into one; rows with no key get 0 (so
    exp(-inf - 0) = 0). A head's sink logit (``sinks`` (Hq,)) is one more block."""
    if sinks is not None:
        lses = torch.cat([lses, sinks.to(lses.dtype).view(1, 1, -1, 1).expand(1, *lses.shape[1:])])
    m = lses.amax(dim=0).detach()
    m = torch.where(m == -math.inf, torch.zeros_like(m), m)
    t = torch.exp(lses - m).sum(dim=0)
    return m + torch.log(torch.where(t == 0, torch.ones_like(t), t))
