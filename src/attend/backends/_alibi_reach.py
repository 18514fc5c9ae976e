"""ALiBi's far blocks, left out where a bound proves their weight negligible (run by ``flex``).

ALiBi subtracts ``slope[h] * |d|`` from the score of a key ``d`` positions from the query.
With Press et al.'s slopes (2^-1 ... 2^-8 for 8 heads), the steep heads' weights fall by
e^-0.5 per position: past a hundred or so positions they are far below float32's resolution,
yet the kernel still computes them. This module finds, per head, the distance past which
that is *proven* for the call's data, so those blocks need not be computed.

The bound: a score is ``c * a_i . b_j`` (``c`` the scale, ``a``, ``b`` the dot-like score's
vectors), so by Cauchy-Schwarz every score lies within ``±A``, ``A = |c| max|a_i| max|b_j|``.
Each row keeps the key at distance 0 (causal, a window holding the diagonal, or none, with
L <= S), whose weight is at least ``e^-A`` in the softmax's numerator; every key at distance
>= W weighs at most ``e^(A - slope W)``, at most S of them. So with

    W_h = (2A + ln S + 40 ln 2) / slope[h]

the keys left out hold less than 2^-40 of the row's weight, and the output moves by less than
2^-39 max|v|: below float32's rounding of the same sum (2^-24 per term). (The code adds margins:
A is raised by 0.1% for the norms' float32 sums, and by 1 for the kernel's float32 scores.)
float32 only: with bfloat16 or float16 inputs the kernel's own rounding of the distance penalty
could exceed those margins. Only blocks whose
every key is at least W_h from every row of the block are left out; the result is otherwise
the same kernel's. Data with large norms gets a long reach, up to every block: the bound never
guesses. Non-finite inputs never reach it: attend's quarantine zeroes them first (``call.finite``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import Tensor

from .._rules import Alibi
from .base import AttentionCall

#: the weight left out of a row is below 2^-BITS of the row's
BITS = 40


def applies(call: AttentionCall) -> bool:
    """Whether the bound holds for this call's rules: ALiBi with positive slopes, each row's
    key at distance 0 kept, no rule that could drop it (the data is checked by :func:`reach`)."""
    mod = call.score_mod
    if type(mod) is not Alibi or call.query.dtype != torch.float32:
        return False
    if call.mask is not None or call.bias is not None or call.mask_mod is not None or call.sinks is not None:
        return False  # another rule or bias could leave a row only far keys
    if not call.causal and call.L > call.S:
        return False  # first rows' nearest key is not at distance 0
    if call.window is not None and any(w is not None and w < 0 for w in call.window):
        return False
    return _slopes(mod.slopes) is not None


_SEEN: tuple = (None, -1, None)  # the last slopes tensor read, its version, and what it held


def _slopes(t: Tensor) -> Optional[tuple[float, ...]]:
    """The slopes as floats if all are finite and > 0, else None; kept for the last tensor seen
    (by identity and version), so that a model's calls read it once. (One tuple, read and
    replaced whole: threads never see one tensor's version with another's values.) A tensor
    made under ``torch.inference_mode`` has no version: it is read on every call."""
    global _SEEN
    if t.is_inference():
        vals = tuple(float(x) for x in t.detach().cpu().tolist())
        return vals if all(math.isfinite(x) and x > 0 for x in vals) else None
    seen = _SEEN
    version = t._version  # (read first: a change while reading makes the next call read again)
    if seen[0] is not t or seen[1] != version:
        vals = tuple(float(x) for x in t.detach().cpu().tolist())
        ok = all(math.isfinite(x) and x > 0 for x in vals)
        seen = _SEEN = (t, version, vals if ok else None)
    return seen[2]


def reach(call: AttentionCall, a: Tensor, b: Tensor, factor: float) -> Optional[tuple[float, ...]]:
    """Per query head, the distance ``W_h`` at and past which keys weigh < 2^-BITS of a row, for
    scores ``call.scale * factor * a @ b^T``; None where the bound does not apply."""
    if not call.finite or not applies(call):  # finite: attend's quarantine zeroed any NaN or inf
        return None
    with torch.no_grad():
        amax = float(torch.linalg.vector_norm(a, dim=-1, dtype=torch.float32).max())
        bmax = float(torch.linalg.vector_norm(b, dim=-1, dtype=torch.float32).max())
    # margins: the norms' float32 sums (relative error < E * 2^-24) and the kernel's float32 scores
    bound = abs(call.scale * factor) * amax * bmax * (1 + 1e-3)
    return _reach(call, bound) if math.isfinite(bound) else None


def floor(call: AttentionCall) -> tuple[float, ...]:
    """The shortest reach any data can give (scores bounded by 0): where even it leaves out few
    blocks, the norms need not be read. For a call :func:`applies` to."""
    return _reach(call, 0.0)


def _reach(call: AttentionCall, bound: float) -> tuple[float, ...]:
    need = 2 * (bound + 1.0) + math.log(max(call.S, 1)) + BITS * math.log(2)  # +1: the kernel's float32 scores
    return tuple(need / s for s in _slopes(call.score_mod.slopes))


def band(call: AttentionCall, W, n: int) -> Tensor:
    """(1, Hq, nq, nk) bool: the blocks of ``n`` with a key nearer than ``W[h]`` to one of their rows."""
    nq, nk = -(-call.L // n), -(-call.S // n)
    first_i = torch.arange(nq) * n + call.offset
    last_i = torch.clamp(torch.arange(nq) * n + n, max=call.L) - 1 + call.offset
    first_j = torch.arange(nk) * n
    last_j = torch.clamp(first_j + n, max=call.S) - 1
    lo = first_i[:, None] - last_j[None, :]  # the least i - j in the block
    hi = last_i[:, None] - first_j[None, :]  # the greatest
    near = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
    return near.view(1, 1, nq, nk).to(torch.float64) < torch.tensor(W, dtype=torch.float64).view(1, -1, 1, 1)


def rounded(W, n: int, cap: int) -> tuple[int, ...]:
    """``W`` rounded up to whole blocks and capped past any distance in the call (a cache key:
    a longer reach keeps more blocks, so rounding up keeps the bound)."""
    return tuple(int(min(cap, math.ceil(w / n) * n)) if w < cap else cap for w in W)  # (w may be inf)


def balanced(call: AttentionCall, work: Tensor, threads: int) -> Optional[Tensor]:
    """A query-head order (Hq,) that evens out ``work`` (kept blocks per query head) between
    threads, or None when the given order is as good.

    FlexAttention's CPU kernel hands each thread an equal run of (sequence, head, row block)
    items. With a reach, steep heads keep a few blocks and gentle ones all, so in head order
    one thread gets the steep heads and waits for the other (measured at (1, 8, 2048, 64), 2
    threads: 27 ms in head order, 24 ms reordered, for 0.77 of the blocks). Heads move in
    groups (a key/value head and its query heads), so grouped-query attention still reads
    each key/value head once. The order changes no number: each head is computed alone.
    """
    chunks = threads // math.gcd(call.B, threads)  # runs of one sequence's heads that threads split
    units = call.Hkv
    if chunks <= 1 or units % chunks:
        return None
    per = work.view(units, call.groups).sum(-1).tolist()
    bins: list[list[int]] = [[] for _ in range(chunks)]
    load = [0.0] * chunks
    for u in sorted(range(units), key=lambda u: -per[u]):
        room = [c for c in range(chunks) if len(bins[c]) < units // chunks]
        c = min(room, key=lambda c: load[c])
        bins[c].append(u)
        load[c] += per[u]
    order = [u for b in bins for u in sorted(b)]
    if order == list(range(units)) or max(load) >= max(_loads(per, chunks)):
        return None
    g = call.groups
    return torch.tensor([u * g + r for u in order for r in range(g)])


def _loads(per: list, chunks: int) -> list:
    n = len(per) // chunks
    return [sum(per[c * n:(c + 1) * n]) for c in range(chunks)]


def permuted(mod: Alibi, heads: Tensor) -> Alibi:
    """The same ALiBi with its slopes in the order ``heads``."""
    return dataclasses.replace(mod, slopes=mod.slopes[heads.to(mod.slopes.device)])
