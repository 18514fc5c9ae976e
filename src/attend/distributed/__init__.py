"""attend past one machine: sequence-parallel attention on ``torch.distributed``.

A sequence too long for one device is split over the ranks of a process group; each rank
holds a span of the queries, keys and values (:func:`shard`) and calls one of:

- :func:`ring_attention`: keys and values travel between the ranks in pieces (P2P, the next
  piece on its way while one is computed) and each rank computes its queries against every
  piece, blocks merged by log-sum-exp; no limit on heads; pieces and blocks every rule rules
  out are skipped; ``layout="zigzag"`` balances causal work;
- :func:`ulysses_attention`: two all-to-alls turn sequence spans into head slices and back,
  around any attend backend; heads (and kv heads) must divide by the group size.

Both give attend's semantics on global positions (rules of :mod:`attend.masks`, score
modifiers, every dot-like score, grouped kv heads, rows with no key exactly zero) and the
gradients of single-process attention; gloo (CPU) and NCCL (GPU) alike, as ``torch.distributed``
provides. :class:`SequenceParallel` makes :class:`attend.nn.MultiHeadAttention` and the
transformer stacks (``set_sequence_parallel``) run this way. :func:`unshard` gathers a sequence back; :func:`all_reduce_grads` sums the
gradients of parameters every rank shares (each rank's hold its own rows' share).
"""
from __future__ import annotations

from typing import Iterable

import torch

from .layout import LAYOUTS, local_length, shard, spans, unshard
from .parallel import SequenceParallel
from .ring import ring_attention
from .ulysses import ulysses_attention

__all__ = ["ring_attention", "ulysses_attention", "SequenceParallel", "shard", "unshard", "spans", "local_length", "LAYOUTS",
           "all_reduce_grads"]


def all_reduce_grads(params: Iterable[torch.Tensor], group=None) -> None:
    """Sum, over the ranks of ``group``, the ``.grad`` of parameters every rank holds a copy of
    (a sequence-parallel model's weights: each rank's backward gives its own rows' share).
    One flattened all-reduce; parameters without a gradient are left alone."""
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    for dtype in sorted({g.dtype for g in grads}, key=str):  # one all-reduce per dtype
        same = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in same])
        dist.all_reduce(flat, group=group)
        at = 0
        for g in same:
            g.copy_(flat[at:at + g.numel()].view_as(g))
            at += g.numel()
