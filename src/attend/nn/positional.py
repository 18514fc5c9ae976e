"""Where a token is: positional encodings for transformers (seed 001: self-attention alone
is blind to word order).

Shape legend::

    B batch   L length   D model width   H heads   d head dim
    x (B, L, D) -> x + P[offset : offset + L]           (sinusoidal, learned: added to the input)
    q or k (B, H, L, d) -> rotated (B, H, L, d)         (RoPE: rotates queries and keys)
    ALiBi: a score modifier, ``score - slope[h] * |i - j|`` (see :func:`attend.mods.alibi`)

``offset`` is the position of the first token, so a decoder with a key/value cache feeds
one new token at position ``cache.length``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import _check, mods

__all__ = ["SinusoidalPositions", "LearnedPositions", "RotaryEmbedding", "ALiBi", "POSITIONAL_KINDS"]

POSITIONAL_KINDS = ("sinusoidal", "learned", "rope", "alibi", "none")


def _check_x(x, dim: int) -> None:
    if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != dim:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: expected (B, L, {dim}), got {got}")


def sinusoid_table(length: int, dim: int, *, base: float = 10000.0) -> Tensor:
    """(length, dim) table of Vaswani et al. 2017: ``P[p, 2i] = sin(p / base^(2i/dim))``,
    ``P[p, 2i+1] = cos(...)``, computed in float64 then cast by the caller."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]  # (length, 1)
    freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (ceil(dim/2),)
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class SinusoidalPositions(nn.Module):
    """Fixed sine/cosine encodings added to the input; no length limit, no parameters."""

    def __init__(self, dim: int, *, base: float = 10000.0):
        super().__init__()
        _check.integer(dim, "dim", low=1)
        self.dim, self.base = dim, float(base)
        self._table: Optional[Tensor] = None  # float64 cache, grown on demand

    def table(self, length: int) -> Tensor:
        if self._table is None or self._table.shape[0] < length:
            self._table = sinusoid_table(max(length, 64), self.dim, base=self.base)
        return self._table[:length]

    def forward(self, x: Tensor, *, offset: int = 0) -> Tensor:
        _check_x(x, self.dim)
        offset = _check.integer(offset, "offset", low=0)
        L = x.shape[1]
        return x + self.table(offset + L)[offset:].to(x.device, x.dtype)  # (B, L, D)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}"


class LearnedPositions(nn.Module):
    """A trained vector per position (BERT, GPT-2), added to the input; at most ``max_len``."""

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        for arg, v in (("max_len", max_len), ("dim", dim)):
            _check.integer(v, arg, low=1)
        self.max_len, self.dim = max_len, dim
        self.weight = nn.Parameter(torch.randn(max_len, dim) * 0.02)

    def forward(self, x: Tensor, *, offset: int = 0) -> Tensor:
        _check_x(x, self.dim)
        offset = _check.integer(offset, "offset", low=0)
        end = offset + x.shape[1]
        if end > self.max_len:
            raise ValueError(f"positions up to {end} requested but learned positions stop at max_len={self.max_len}")
        return x + self.weight[offset:end].to(x.dtype)  # (B, L, D)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021, RoFormer): rotates each pair of query and
    key features by an angle proportional to the position, so ``q·k`` depends only on the
    distance. Pairs are the two halves of the head dim (the layout of GPT-NeoX and Llama).
    """

    def __init__(self, head_dim: int, *, base: float = 10000.0):
        super().__init__()
        if not _check.is_int(head_dim) or head_dim < 2 or head_dim % 2:
            raise _check.fail("head_dim", "an even int >= 2", head_dim)
        self.head_dim, self.base = head_dim, float(base)
        self._cache: Optional[tuple[Tensor, Tensor]] = None  # float64 (cos, sin), (n, head_dim)

    def _angles(self, length: int) -> tuple[Tensor, Tensor]:
        if self._cache is None or self._cache[0].shape[0] < length:
            n = max(length, 64)
            inv = self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim)  # (d/2,)
            ang = torch.arange(n, dtype=torch.float64)[:, None] * inv  # (n, d/2)
            ang = torch.cat([ang, ang], dim=-1)  # (n, d)
            self._cache = (ang.cos(), ang.sin())
        cos, sin = self._cache
        return cos[:length], sin[:length]

    def forward(self, x: Tensor, *, offset: int = 0) -> Tensor:
        """Rotate ``x`` (…, L, head_dim) whose first row sits at position ``offset``."""
        if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[-1] != self.head_dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected (..., L, {self.head_dim}), got {got}")
        offset = _check.integer(offset, "offset", low=0)
        L = x.shape[-2]
        cos, sin = self._angles(offset + L)
        cos = cos[offset:].to(x.device, x.dtype)  # (L, d)
        sin = sin[offset:].to(x.device, x.dtype)
        half = self.head_dim // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # (…, L, d)
        return x * cos + rotated * sin

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"


class ALiBi(nn.Module):
    """Attention with linear biases (Press et al. 2022) as a module: ``.score_mod`` is the
    :func:`attend.mods.alibi` modifier with the paper's head slopes (or given ones)."""

    def __init__(self, num_heads: int, *, slopes: Optional[Tensor] = None):
        super().__init__()
        slopes = mods.alibi_slopes(num_heads) if slopes is None else torch.as_tensor(slopes, dtype=torch.float32)
        if slopes.shape != (num_heads,):
            raise ValueError(f"slopes: expected shape ({num_heads},), got {tuple(slopes.shape)}")
        self.register_buffer("slopes", slopes, persistent=False)
        self.score_mod = mods.alibi(self.slopes)

    def extra_repr(self) -> str:
        return f"num_heads={self.slopes.numel()}"

