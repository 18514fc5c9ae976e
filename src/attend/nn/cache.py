"""Key/value caches for incremental decoding.

A decoder that generates one token at a time would recompute the keys and values of
every earlier token at every step (quadratic work in the output length). The cache keeps
them: each step projects only the new token, appends its key and value, and attends over
everything stored. Storage grows by doubling, so appending is amortised O(1) copies.
Decoding with gradients (keys or values that require them) makes each step's keys and
values a new tensor instead, since autograd keeps the earlier ones: a backward through
the steps then works, at the cost of copying the cache at every step.

Shape legend::

    B batch   Hkv key/value heads   n stored positions   d head dim
    keys, values (B, Hkv, n, d)
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _check

__all__ = ["LayerKV", "KVCache"]


class LayerKV:
    """The cached keys and values of one attention layer.

    ``static=False`` (self-attention): :meth:`append` adds positions.
    ``static=True`` (cross-attention): keys and values of the encoder output are computed
    once by the first call and reused unchanged.
    """

    def __init__(self, *, static: bool = False, capacity: int = 0):
        self.static = static
        self.capacity_hint = capacity
        self._k: Optional[Tensor] = None  # (B, Hkv, capacity, d)
        self._v: Optional[Tensor] = None
        self.length = 0
        self._used = [0]  # positions written into this storage, shared with the views of it (see view)

    @property
    def filled(self) -> bool:
        return self._k is not None

    @property
    def keys(self) -> Tensor:
        return self._k[:, :, : self.length]  # (B, Hkv, n, d)

    @property
    def values(self) -> Tensor:
        return self._v[:, :, : self.length]

    def set(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the keys/values of a static (cross-attention) memory."""
        self._k, self._v, self.length = k, v, k.shape[2]
        return k, v

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add ``k``/``v`` (B, Hkv, l, d) after the stored positions; return all of them."""
        if self.static:
            raise RuntimeError("a static (cross-attention) cache cannot be appended to")
        n, new = self.length, k.shape[2]
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or (self._k is not None and (
                self._k.requires_grad or self._v.requires_grad))):
            # autograd saved the views earlier steps returned: never write into them
            if self._k is not None:
                self._check_like(k, v)
                k, v = torch.cat([self.keys, k], 2), torch.cat([self.values, v], 2)
            self._k, self._v, self.length, self._used = k, v, n + new, [n + new]
            return self.keys, self.values
        if self._k is None:
            cap = max(self.capacity_hint, new, 16)
            self._k = k.new_empty(*k.shape[:2], cap, k.shape[3])
            self._v = v.new_empty(*v.shape[:2], cap, v.shape[3])
            self._used = [0]
        else:
            self._check_like(k, v)
        shared = self._used[0] != n  # a view of this storage went on past our end: copy ours first
        if shared or n + new > self._k.shape[2]:  # grow by doubling
            cap = self._k.shape[2] if n + new <= self._k.shape[2] else max(2 * self._k.shape[2], n + new)
            grown_k = self._k.new_empty(*self._k.shape[:2], cap, self._k.shape[3])
            grown_v = self._v.new_empty(*self._v.shape[:2], cap, self._v.shape[3])
            grown_k[:, :, :n] = self._k[:, :, :n]
            grown_v[:, :, :n] = self._v[:, :, :n]
            self._k, self._v, self._used = grown_k, grown_v, [n]
        self._k[:, :, n : n + new] = k
        self._v[:, :, n : n + new] = v
        self.length = self._used[0] = n + new
        return self.keys, self.values

    def view(self) -> "LayerKV":
        """A cache with the same positions, sharing their storage until one of the two is
        appended to after the other has been (that one then copies what it holds first): so
        each can go on from the same point without changing what the other holds."""
        out = LayerKV(static=self.static, capacity=self.capacity_hint)
        out._k, out._v, out.length, out._used = self._k, self._v, self.length, self._used
        return out

    def _check_like(self, k: Tensor, v: Tensor) -> None:
        """New keys/values must match what is stored: no silent cast, no silent reshape."""
        for name, new, held in (("keys", k, self._k), ("values", v, self._v)):
            if new.dtype != held.dtype:
                raise TypeError(f"cache holds {name} of dtype {held.dtype}, got {new.dtype} (no silent cast: "
                                f"convert them, or start a new cache)")
            if new.device != held.device:
                raise ValueError(f"cache holds {name} on {held.device}, got {new.device}")
            if new.ndim != 4 or (new.shape[0], new.shape[1], new.shape[3]) != (held.shape[0], held.shape[1], held.shape[3]):
                raise ValueError(f"cache holds {name} of shape (B, Hkv, n, d) = ({held.shape[0]}, {held.shape[1]}, "
                                 f"n, {held.shape[3]}), got {tuple(new.shape)}")

    def index_select(self, index: Tensor) -> "LayerKV":
        """A cache holding rows ``index`` of the batch (beam search reorders hypotheses)."""
        out = LayerKV(static=self.static, capacity=self.capacity_hint)
        if self._k is not None:
            out._k = self._k.index_select(0, index)
            out._v = self._v.index_select(0, index)
            out.length = out._used[0] = self.length
        return out


class KVCache:
    """Caches of a decoder stack: one self-attention :class:`LayerKV` per layer, and one
    static cross-attention entry per layer (for encoder-decoder models).

    ``capacity`` preallocates that many positions per layer (it grows past it if needed).
    """

    def __init__(self, num_layers: int, *, cross: bool = False, capacity: int = 0):
        _check.integer(num_layers, "num_layers", low=1)
        _check.integer(capacity, "capacity", low=0)
        self.self_attn = [LayerKV(capacity=capacity) for _ in range(num_layers)]
        self.cross_attn = [LayerKV(static=True) for _ in range(num_layers)] if cross else None

    @property
    def length(self) -> int:
        """Positions decoded so far (the position of the next token)."""
        return self.self_attn[0].length

    def __len__(self) -> int:
        return len(self.self_attn)

    def index_select(self, index: Tensor) -> "KVCache":
        out = KVCache.__new__(KVCache)
        out.self_attn = [c.index_select(index) for c in self.self_attn]
        out.cross_attn = None if self.cross_attn is None else [c.index_select(index) for c in self.cross_attn]
        return out

    def view(self) -> "KVCache":
        """A cache that goes on from the same point without changing this one (each layer a
        :meth:`LayerKV.view`: storage is shared until both are appended to)."""
        out = KVCache.__new__(KVCache)
        out.self_attn = [c.view() for c in self.self_attn]
        out.cross_attn = None if self.cross_attn is None else [c.view() for c in self.cross_attn]
        return out

    def __repr__(self) -> str:
        return f"KVCache(layers={len(self)}, length={self.length}, cross={self.cross_attn is not None})"

