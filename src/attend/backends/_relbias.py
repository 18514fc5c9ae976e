"""A learned relative-bias table's gradient in the ``inductor`` backend, by diagonal sums.

Inside a compiled tile the table's gradient would be a scatter: one atomic add per (row, key)
into the table entry of its distance. Instead the backward hands the table's values for the
tile in as a dense bias, gets that bias's gradient out, and sums it along the tile's
diagonals (every (row, key) of one ``j - i`` shares an entry), then adds each diagonal into
its clipped entry: a few dense passes over the tile.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._rules import RelativeBias
from .base import AttentionCall


def learned_table(call: AttentionCall, extras) -> Optional[RelativeBias]:
    """The call's relative-bias score_mod when its table is learned and nothing else adds a bias:
    its gradient is then summed along the tiles' diagonals (below) rather than scattered in the
    compiled backward, one atomic add per (row, key), which made its backward 2.3x SDPA's."""
    mod = call.score_mod
    if type(mod) is RelativeBias and call.bias is None and any(x is mod.table for x in extras):
        return mod
    return None


def table_tile(mod: RelativeBias, i0: int, i1: int, j0: int, j1: int) -> Tensor:
    """``table[h, clip(j - i - offset, -R, R) + R]`` for rows i0:i1, keys j0:j1: (1, H|1, rows, keys), no graph."""
    R = mod.max_distance
    dev = mod.table.device
    rel = (torch.arange(j0, j1, device=dev).view(1, -1) - torch.arange(i0, i1, device=dev).view(-1, 1)
           - mod.offset).clamp(-R, R) + R
    t = mod.table.detach()
    return (t[:, rel] if t.ndim == 2 else t[rel].unsqueeze(0)).unsqueeze(0)


def clipped_span(offset: int, i0: int, i1: int, R: int, S: int, causal: bool = False) -> tuple[int, int]:
    """``(jl, jr)``: keys ``[0, jl)`` lie at least R before every row of ``i0:i1`` (rows sit at key
    positions ``i + offset``), keys ``[jr, S)`` at least R after every row (with ``causal``: after
    every row, so none is seen). Every distance there is clipped: one table entry per side."""
    p0, p1 = i0 + offset, i1 - 1 + offset  # key positions of the first and last row
    jl = min(S, max(0, p0 - max(R, 1) + 1))  # (R = 0: the span between keeps each row's own key)
    jr = max(jl, min(S, p1 + 1 if causal else p1 + R))
    return jl, jr


def bias_tile(mod: RelativeBias, i0: int, i1: int, j0: int, j1: int, dtype: torch.dtype) -> tuple[Tensor, Optional[int]]:
    """``(bias, edge)`` for a tile of the backward. When every distance of the tile is clipped it
    reads one entry (``edge``: 0 or 2R): the bias is that entry per head, ``(1, H|1, 1, 1)``, and
    its gradient is the tile's summed dS, with no dense tile and no diagonal sums. Else ``edge``
    is None and the bias is :func:`table_tile`."""
    jl, jr = clipped_span(mod.offset, i0, i1, mod.max_distance, j1)
    edge = 0 if j1 <= jl else 2 * mod.max_distance if j0 >= jr else None
    if edge is None:
        return table_tile(mod, i0, i1, j0, j1).to(dtype), None
    t = mod.table.detach()
    return (t[:, edge] if t.ndim == 2 else t[edge]).to(dtype).reshape(1, -1, 1, 1), edge


def add_tile_grad(dtable: Tensor, g: Tensor, mod: RelativeBias, edge: Optional[int], i0: int, j0: int) -> None:
    """Add the gradient ``g`` of a tile's bias from :func:`bias_tile` into the table's, in place."""
    if edge is None:
        dtable += diagonal_sums(g, mod, i0, j0)
    elif dtable.ndim == 2:
        dtable[:, edge] += g.reshape(-1)
    else:
        dtable[edge] += g.sum()


def diagonal_sums(g: Tensor, mod: RelativeBias, i0: int, j0: int) -> Tensor:
    """The table's gradient from a tile's bias gradient ``g`` (B|1, H|1, rows, keys): entries with
    one ``j - i`` share a table entry, so each diagonal is summed (a skew: rows flipped, padded,
    and read with a stride one longer), then the diagonals are added into their (clipped) entries."""
    g = g.sum(0).flip(-2)  # (H|1, n, m), row n-1-i first
    h, n, m = g.shape
    skew = torch.nn.functional.pad(g, (0, n)).reshape(h, -1)[:, : n * (m + n - 1)].reshape(h, n, m + n - 1)
    diag = skew.sum(1)  # (h, m + n - 1): column c holds j - i = c - (n - 1)
    R = mod.max_distance
    d = torch.arange(m + n - 1, device=g.device) - (n - 1) + (j0 - i0) - mod.offset
    idx = d.clamp(-R, R) + R
    out = torch.zeros(h, 2 * R + 1, dtype=g.dtype, device=g.device).index_add_(1, idx, diag)
    return out if mod.table.ndim == 2 else out.sum(0)
