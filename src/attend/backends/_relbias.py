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
    if isinstance(mod, RelativeBias) and call.bias is None and any(x is mod.table for x in extras):
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


def edge_entry(mod: RelativeBias, i0: int, i1: int, j0: int, j1: int) -> Optional[int]:
    """The one table entry every (row, key) of the tile reads, when all its distances are clipped
    (``0``: every key at least R before every row, ``2R``: at least R after), else None. Such a
    tile's bias goes in as one value per head, and its gradient is the tile's summed dS: no
    dense tile and no diagonal sums."""
    R = mod.max_distance
    if j1 - 1 - (i0 + mod.offset) <= -R:
        return 0
    if j0 - (i1 - 1 + mod.offset) >= R:
        return 2 * R
    return None


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
