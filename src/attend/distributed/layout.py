"""How a sequence is split over the ranks of a group, and back.

Two layouts, both over ``torch.tensor_split`` pieces (the first ``n % pieces`` pieces one
position longer, so any length splits):

- ``"contiguous"``: rank ``r`` holds piece ``r`` of ``W`` pieces;
- ``"zigzag"``: the sequence is cut into ``2W`` pieces and rank ``r`` holds pieces ``r`` and
  ``2W - 1 - r``, one early and one late. Under a causal mask the early queries see few keys and
  the late ones many, so every rank gets about the same work (ring-flash-attention's zigzag
  order; with ``contiguous`` the last rank does ~2W-1 times the first's work).

Every rank computes every rank's spans from the global length alone: no communication.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

LAYOUTS = ("contiguous", "zigzag")


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    return layout


def _bounds(n: int, pieces: int) -> list[int]:
    size, extra = divmod(n, pieces)
    out = [0]
    for p in range(pieces):
        out.append(out[-1] + size + (1 if p < extra else 0))
    return out


def spans(n: int, rank: int, world: int, layout: str = "contiguous") -> list[tuple[int, int]]:
    """The global ``[start, stop)`` spans of positions ``rank`` holds, in the order it holds them."""
    check_layout(layout)
    if layout == "contiguous":
        b = _bounds(n, world)
        return [(b[rank], b[rank + 1])]
    b = _bounds(n, 2 * world)
    late = 2 * world - 1 - rank
    return [(b[rank], b[rank + 1]), (b[late], b[late + 1])]


def local_length(n: int, rank: int, world: int, layout: str = "contiguous") -> int:
    return sum(z - a for a, z in spans(n, rank, world, layout))


def _group(group):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: call torch.distributed.init_process_group first "
                           "(or launch with torchrun)")
    return dist.get_rank(group), dist.get_world_size(group)


def shard(x: Tensor, dim: int = -2, *, group=None, layout: str = "contiguous",
          rank: Optional[int] = None, world: Optional[int] = None) -> Tensor:
    """This rank's part of a full sequence ``x`` (every rank holds all of it) along ``dim``.

    ``rank``/``world`` default to the group's; give them to shard without a process group.
    """
    if rank is None or world is None:
        rank, world = _group(group)
    n = x.shape[dim]
    parts = [x.narrow(dim, a, z - a) for a, z in spans(n, rank, world, layout)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def unshard(x: Tensor, n: int, dim: int = -2, *, group=None, layout: str = "contiguous") -> Tensor:
    """The full sequence (length ``n`` along ``dim``) from every rank's part ``x``, on every rank.

    Parts may differ in length by one (the split of ``n``); they are padded to one length for
    the all-gather and trimmed. No gradient flows through it.
    """
    import torch.distributed as dist

    rank, world = _group(group)
    dim = dim % x.ndim
    want = local_length(n, rank, world, layout)
    if x.shape[dim] != want:
        raise ValueError(f"x: this rank holds {x.shape[dim]} positions along dim {dim}; the {layout} layout of "
                         f"{n} positions over {world} ranks gives rank {rank} {want}")
    longest = max(local_length(n, r, world, layout) for r in range(world))
    pad = list(x.shape)
    pad[dim] = longest - want
    padded = torch.cat([x.detach(), x.new_zeros(pad)], dim=dim).contiguous()
    got = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(got, padded, group=group)
    pieces = []
    for r, part in enumerate(got):
        at = 0
        for a, z in spans(n, r, world, layout):
            pieces.append((a, part.narrow(dim, at, z - a)))
            at += z - a
    pieces.sort(key=lambda p: p[0])
    return torch.cat([p for _, p in pieces], dim=dim)
