"""Key padding on SDPA's kernel without the masked work: each sequence's keys cut to its length.

``masks.padding(lengths)`` masks the keys ``j >= lengths[b]`` for every query. Handed to SDPA
as a dense mask, the kernel still computes every masked pair and reads the mask besides: at
(1, 8, 2048, 64) with a quarter of the keys padding, 1.02-1.04x SDPA plain, forward and
forward+backward, in every full run of ``benchmarks/cpu.py``. Here each sequence's keys and
values are cut to its own length instead (a view), one kernel call per sequence, with no mask
left: the kernel does the work the rule allows and nothing else. The cut is a view and the
calls are SDPA's own, so autograd differentiates it as it stands. With ``causal`` (L == S) each
call keeps SDPA's ``is_causal``: cutting keys from the end leaves its top-left rule attend's.

A sequence of length 0 gives rows of exactly zero (no key to attend) with zero gradients.
Taken on the CPU only (the lengths are read as Python numbers, which on a GPU would wait for
the stream), for at most ``MAX_SEQUENCES`` sequences of different lengths (one call each;
equal lengths take one call), and not while torch.compile traces.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._rules import Padding
from ._causal_blocks import untraceable
from .base import AttentionCall

#: the most sequences of different lengths cut one call each (beyond, SDPA's dense mask)
MAX_SEQUENCES = 32
#: why ``auto`` passes over the backends before ``sdpa`` for such a call
AUTO_REASON = ("SDPA's kernel computes key padding on each sequence's own keys (cut to its length): no masked "
               "work and no compiling")


def lengths(call: AttentionCall) -> Optional[list[int]]:
    """Each sequence's number of keys when the call's one mask is key padding that leaves
    some key out, and the cut applies (see the module text); None otherwise."""
    rule = call.mask_mod
    if (type(rule) is not Padding or call.mask is not None or call.bias is not None or call.window is not None
            or (call.causal and call.L != call.S) or call.dropout_p > 0 or call.query.device.type != "cpu"
            or rule.lengths.device.type != "cpu" or untraceable()):
        return None
    n = [min(int(x), call.S) for x in rule.lengths.tolist()]
    if min(n) >= call.S or (len(set(n)) > 1 and len(n) > MAX_SEQUENCES):
        return None
    return n


def attention(q: Tensor, k: Tensor, v: Tensor, n: list[int], scale: float, causal: bool, gqa: bool) -> Tensor:
    """``(B, Hq, L, Ev)``: sequence ``b`` attends its first ``n[b]`` keys (``k``, ``v`` as SDPA takes them)."""
    def one(qb: Tensor, kb: Tensor, vb: Tensor, m: int) -> Tensor:
        if m == 0:  # no key: exactly zero, still attached to the inputs (zero gradients, not none)
            return qb.new_zeros(*qb.shape[:-1], vb.shape[-1]) + (qb[..., :0].sum() + kb[..., :0].sum()
                                                                 + vb[..., :0].sum())
        return F.scaled_dot_product_attention(qb, kb[..., :m, :], vb[..., :m, :], is_causal=causal, scale=scale,
                                              enable_gqa=gqa)
    if len(set(n)) == 1:
        return one(q, k, v, n[0])
    return torch.cat([one(q[b:b + 1], k[b:b + 1], v[b:b + 1], m) for b, m in enumerate(n)])


def dead(n: list[int]) -> Tensor:
    """``(B, 1, 1, 1)``: the sequences with no key, whose rows are exactly zero."""
    return (torch.tensor(n) == 0).view(-1, 1, 1, 1)


def describe(n: list[int], S: int) -> str:
    kept = sum(n) / (len(n) * S)
    calls = int(n[0] > 0) if len(set(n)) == 1 else sum(m > 0 for m in n)  # (a sequence with no key: none)
    return (f"key padding: each sequence's keys cut to its length ({kept:.0%} of the keys), "
            f"{calls} kernel call{'' if calls == 1 else 's'} without a mask")
