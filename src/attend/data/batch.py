"""Padded batches of sentence pairs, grouped by length.

Shape legend::

    B sentences   S longest source   T longest target + 1 (for <bos>/<eos>)
    src (B, S)  src_lengths (B,)  tgt_in (B, T) = <bos> y   tgt_out (B, T) = y <eos>
    src_mask (B, S) bool, True = a real source token (may attend)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .. import _check
from .text import Vocab

__all__ = ["Batch", "make_batch", "LengthGroupedBatches"]


@dataclass
class Batch:
    src: Tensor
    src_lengths: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    index: Tensor  # position of each row in the list the batch was drawn from

    @property
    def src_mask(self) -> Tensor:
        return torch.arange(self.src.shape[1]) < self.src_lengths[:, None]  # (B, S)

    @property
    def n_tgt_tokens(self) -> int:
        return int((self.tgt_out != Vocab.pad_id).sum())

    @property
    def n_src_tokens(self) -> int:
        return int(self.src_lengths.sum())


def make_batch(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], index: Sequence[int] | None = None) -> Batch:
    """Pad id pairs into a :class:`Batch` (targets may be empty lists for translation)."""
    if not pairs:
        raise ValueError("make_batch needs at least one pair")
    B = len(pairs)
    S = max(len(s) for s, _ in pairs)
    T = max(len(t) for _, t in pairs) + 1
    if S == 0:
        raise ValueError("every source sentence in the batch is empty")
    src = torch.full((B, S), Vocab.pad_id, dtype=torch.long)
    tgt_in = torch.full((B, T), Vocab.pad_id, dtype=torch.long)
    tgt_out = torch.full((B, T), Vocab.pad_id, dtype=torch.long)
    lengths = torch.empty(B, dtype=torch.long)
    for b, (s, t) in enumerate(pairs):
        if len(s) == 0:
            raise ValueError(f"source sentence {b} of the batch is empty")
        src[b, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        lengths[b] = len(s)
        tgt_in[b, 0] = Vocab.bos_id
        if len(t):
            tgt_in[b, 1 : len(t) + 1] = torch.as_tensor(list(t), dtype=torch.long)
            tgt_out[b, : len(t)] = torch.as_tensor(list(t), dtype=torch.long)
        tgt_out[b, len(t)] = Vocab.eos_id
    idx = torch.arange(B) if index is None else torch.as_tensor(list(index), dtype=torch.long)
    if idx.shape != (B,):
        raise ValueError(f"index: expected one index per pair ({B}), got {tuple(idx.shape)}")
    return Batch(src, lengths, tgt_in, tgt_out, idx)


class LengthGroupedBatches:
    """Batches of similar source length, so little compute goes to padding.

    Each epoch: shuffle the pairs, cut them into pools of ``pool`` batches, sort each pool
    by length, cut it into batches, shuffle the batches. The order depends only on
    ``seed`` and the epoch number, so a resumed run sees the same batches.
    """

    def __init__(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *, batch_size: int,
                 seed: int = 0, pool: int = 50, shuffle: bool = True):
        _check.integer(batch_size, "batch_size", low=1)
        _check.integer(pool, "pool", low=1)
        _check.integer(seed, "seed")
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be a bool, got {type(shuffle).__name__}")
        if not pairs:
            raise ValueError("no sentence pairs to batch")
        self.pairs, self.batch_size, self.seed, self.pool, self.shuffle = pairs, batch_size, seed, pool, shuffle

    def order(self, epoch: int) -> list[list[int]]:
        """The batches (lists of pair indices) of ``epoch``."""
        n = len(self.pairs)
        if not self.shuffle:
            idx = sorted(range(n), key=lambda i: len(self.pairs[i][0]))
            return [idx[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        # modulo 2**64, what a generator's seed holds (the same number below it; no overflow above)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2 ** 64)
        perm = torch.randperm(n, generator=g).tolist()
        size = self.batch_size * self.pool
        batches = []
        for p in range(0, n, size):
            chunk = sorted(perm[p : p + size], key=lambda i: len(self.pairs[i][0]))
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        shuffled = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in shuffled]

    def __len__(self) -> int:
        return -(-len(self.pairs) // self.batch_size)

    def batch(self, indices: Sequence[int]) -> Batch:
        return make_batch([self.pairs[i] for i in indices], indices)
