"""Non-finite inputs kept where they belong: the rows that use them (see :func:`quarantine`)."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import Tensor

from .backends.base import AttentionCall


def quarantine(call: AttentionCall) -> tuple[AttentionCall, Optional[Tensor]]:
    """Keep non-finite numbers where they belong: in the rows that use them.

    A masked key never affects a row, whatever it holds, NaN and inf included, and a row
    that may attend no key is exactly zero, with finite gradients, whatever its query holds.
    Without care neither holds: ``0 · NaN`` in ``p @ v`` (and ``NaN + (-inf)`` in an additive
    mask) leaks a masked NaN into rows that never see it, and a NaN query in a fully masked
    row sends NaN into dK through ``0 · NaN``, differently on each backend. So when a key,
    value or query holds a non-finite number, it is zeroed for the computation, and the
    rows that use it — rows that *may* attend such a key or value, and such query rows that
    attend anything — are returned, to be set to NaN afterwards: corrupt data still shows
    where it is used. Returns ``(call, rows to set to NaN (B, Hq, L) or None)``.

    Finding those rows evaluates the masks only on the tiles around the bad positions.
    Runs on CPU tensors, where the check is one cheap read of Q, K and V; on a GPU it would
    stall the stream on every call, so there (and while torch.compile traces) it is skipped.
    """
    q, k, v = call.query, call.key, call.value
    if k.device.type != "cpu" or torch.compiler.is_compiling():
        return call, None
    if _all_finite(q, k, v):  # the usual case, in one cheap read (a sum) of each tensor
        return dataclasses.replace(call, finite=True), None
    bad_kv = ~(torch.isfinite(k).all(dim=-1) & torch.isfinite(v).all(dim=-1))  # (B, Hkv, S)
    bad_q = ~torch.isfinite(q).all(dim=-1)  # (B, Hq, L)
    any_kv, any_q = bool(bad_kv.any()), bool(bad_q.any())
    if not (any_kv or any_q):
        return dataclasses.replace(call, finite=True), None
    hit = torch.zeros(call.B, call.Hq, call.L, dtype=torch.bool)
    if any_kv:
        cell = bad_kv.unsqueeze(-1)
        k, v = k.masked_fill(cell, 0.0), v.masked_fill(cell, 0.0)
        bad = call.expand_kv(bad_kv.unsqueeze(-1)).squeeze(-1)  # (B, Hq, S): per query head
        for j0, j1 in _runs(bad.any(dim=1).any(dim=0)):
            for i0 in range(0, call.L, _TILE):
                i1 = min(i0 + _TILE, call.L)
                seen = bad[:, :, None, j0:j1]  # (B, Hq, 1, s)
                allowed = _open(call, i0, i1, j0, j1)
                hit[:, :, i0:i1] |= (seen if allowed is None else allowed & seen).any(dim=-1)
    if any_q:
        q = q.masked_fill(bad_q.unsqueeze(-1), 0.0)
        for i0, i1 in _runs(bad_q.any(dim=1).any(dim=0)):
            live = torch.zeros(call.B, call.Hq, i1 - i0, dtype=torch.bool)
            for j0 in range(0, call.S, _TILE):
                allowed = _open(call, i0, i1, j0, min(j0 + _TILE, call.S))
                live |= True if allowed is None else allowed.any(dim=-1)
            hit[:, :, i0:i1] |= bad_q[:, :, i0:i1] & live
    return dataclasses.replace(call, query=q, key=k, value=v, finite=True), hit  # (the bad numbers zeroed)


def _all_finite(*tensors: Tensor) -> bool:
    """True only if every element is finite. A sum is finite only if every term is (inf and
    NaN propagate; inf - inf is NaN); a finite sum is therefore proof, and the ~45x dearer
    per-row ``isfinite`` test runs only when a sum is not finite (non-finite data, or a sum
    that overflowed)."""
    with torch.no_grad():
        return all(bool(torch.isfinite(_dense(t).sum())) for t in tensors)


def _dense(t: Tensor) -> Tensor:
    """``t`` with its dimensions in memory order when that makes it contiguous (a model's
    (B, L, H, E) tensor seen as (B, H, L, E)): the sum then reads memory in order."""
    if t.is_contiguous():
        return t
    p = t.permute(sorted(range(t.dim()), key=lambda d: -t.stride(d)))
    return p if p.is_contiguous() else t


_TILE = 1024  # rows/keys per tile when finding the rows non-finite inputs reach


def _open(call: AttentionCall, i0: int, i1: int, j0: int, j1: int) -> Optional[Tensor]:
    """Which (i, j) of a tile are not masked (boolean masks, rules, a -inf bias); None = all."""
    allowed = call.allowed(i0, i1, j0, j1)
    if call.bias is not None:
        b = call.bias
        b = b[..., i0:i1, :] if b.shape[-2] != 1 else b
        b = b[..., j0:j1] if b.shape[-1] != 1 else b
        open_ = b != -math.inf
        allowed = open_ if allowed is None else allowed & open_
    return allowed


def _runs(flags: Tensor):
    """Contiguous runs ``(start, stop)`` of True in a 1-D boolean tensor, at most ``_TILE`` long."""
    idx = flags.nonzero().flatten().tolist()
    start = prev = None
    for x in idx:
        if start is not None and x == prev + 1 and x - start < _TILE:
            prev = x
            continue
        if start is not None:
            yield start, prev + 1
        start = prev = x
    if start is not None:
        yield start, prev + 1
