"""How a model's attention is split over ranks: :class:`SequenceParallel`, what
:class:`attend.nn.MultiHeadAttention` and the transformer stacks take to run sequence-parallel."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from . import _blocks
from .layout import _group, check_layout, spans, unshard
from .ring import ring_attention
from .ulysses import ulysses_attention

METHODS = ("ring", "ulysses")


@dataclass(frozen=True)
class SequenceParallel:
    """Split every sequence over the ranks of ``group`` (None: the default group).

    ``method``: ``"ring"`` (:func:`ring_attention`: any head count) or ``"ulysses"``
    (:func:`ulysses_attention`: heads divisible by the group size); ``layout``:
    ``"zigzag"`` (balanced causal work; the default) or ``"contiguous"``; ``backend``: the
    ring's block engine or the backend all-to-all attention runs on.

    A module given one takes this rank's positions of each sequence (split with
    :meth:`shard`) and computes attention over the whole sequence; positions (sinusoidal,
    learned, rotary) are the global ones. Parameters get each rank's share of their gradient:
    :func:`attend.distributed.all_reduce_grads` sums them (and DDP over the same ranks would
    average them: scale the loss by the group size, or reduce with a sum).
    """

    group: Any = None
    method: str = "ring"
    layout: str = "zigzag"
    backend: str = "auto"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        check_layout(self.layout)
        if self.method == "ring":
            _blocks.check_engine(self.backend)

    @property
    def rank(self) -> int:
        return _group(self.group)[0]

    @property
    def world(self) -> int:
        return _group(self.group)[1]

    def attention(self, q: Tensor, k: Tensor, v: Tensor, **kw):
        fn = ring_attention if self.method == "ring" else ulysses_attention
        return fn(q, k, v, group=self.group, layout=self.layout, backend=self.backend, **kw)

    def _lengths(self, n_local: int, device=None) -> list[int]:
        """Every rank's length (one small all-gather), checked against the layout."""
        import torch.distributed as dist

        world = self.world
        mine = torch.tensor([n_local], dtype=torch.int64, device=device)
        got = [torch.zeros_like(mine) for _ in range(world)]
        dist.all_gather(got, mine, group=self.group)
        lengths = [int(t) for t in got]
        if self.layout != "contiguous":
            n = sum(lengths)
            for r, have in enumerate(lengths):
                want = sum(z - a for a, z in spans(n, r, world, self.layout))
                if have != want:
                    raise ValueError(f"this rank's sequence: rank {r} holds {have} positions; the {self.layout} layout "
                                     f"of {n} gives it {want} (split with SequenceParallel.shard)")
        return lengths

    def global_length(self, n_local: int, device=None) -> int:
        """The whole sequence's length from this rank's."""
        return sum(self._lengths(n_local, device))

    def spans(self, n_local: int, device=None) -> list[tuple[int, int]]:
        """This rank's global ``[start, stop)`` spans, in the order it holds them."""
        lengths = self._lengths(n_local, device)
        rank = self.rank
        if self.layout == "contiguous":
            start = sum(lengths[:rank])
            return [(start, start + n_local)]
        return spans(sum(lengths), rank, self.world, self.layout)

    def shard(self, x: Tensor, dim: int = 1) -> Tensor:
        """This rank's positions of a whole sequence ``x`` along ``dim`` (every rank holds ``x``)."""
        from .layout import shard

        return shard(x, dim, group=self.group, layout=self.layout)

    def unshard(self, x: Tensor, n: Optional[int] = None, dim: int = 1) -> Tensor:
        """The whole sequence from every rank's part (no gradient)."""
        n = self.global_length(x.shape[dim], x.device) if n is None else n
        return unshard(x, n, dim, group=self.group, layout=self.layout)

    def gather_keys(self, key_mask: Tensor) -> Tensor:
        """A (B, S_r) key mask of this rank's positions -> the (B, S) mask of the whole sequence."""
        return self.unshard(key_mask.to(torch.uint8), dim=1).bool()
