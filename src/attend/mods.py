"""Score modifiers: ``score_mod(score, b, h, i, j) -> score``, applied after the score
function and before any mask.

Called with broadcastable index tensors (see :mod:`attend._rules`). Positions are
aligned as ``causal=True`` aligns them: query ``i`` sits at key position ``i + S - L``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _check
from ._rules import Alibi, RelativeBias, Rule, Softcap

__all__ = ["alibi", "alibi_slopes", "softcap", "relative_bias"]


def alibi_slopes(num_heads: int) -> Tensor:
    """The head slopes of ALiBi (Press et al. 2022): a geometric sequence starting at 2^(-8/n).

    For a head count that is not a power of two, the paper's recipe: the slopes of the
    closest lower power of two, then every other slope of the next power of two.
    """
    _check.integer(num_heads, "num_heads", low=1, expected="a positive int")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (k + 1) for k in range(n)]

    lower = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = power_of_two(lower)
    if lower != num_heads:
        slopes += power_of_two(2 * lower)[0::2][: num_heads - lower]
    return torch.tensor(slopes)


def alibi(slopes) -> Rule:
    """ALiBi (Press et al. 2022): ``score - slope[h] * |i - j|`` with positions aligned bottom-right.

    ``slopes`` is a (Hq,) tensor, or an int number of heads for :func:`alibi_slopes`. For
    causal attention this is the paper's ``slope * (j - i)``; without ``causal`` it
    penalises distance in both directions.
    """
    if isinstance(slopes, int) and not isinstance(slopes, bool):
        slopes = alibi_slopes(slopes)
    slopes = torch.as_tensor(slopes)
    if slopes.ndim != 1 or not slopes.dtype.is_floating_point:
        raise ValueError(f"slopes must be a 1-D float tensor (num_heads,), got {slopes.dtype} {tuple(slopes.shape)}")
    return Alibi(slopes)


def softcap(cap: float) -> Rule:
    """Soft-capping (Gemma 2): ``cap * tanh(score / cap)`` keeps scores within ``(-cap, cap)``."""
    _check.number(cap, "cap", low=0, low_open=True)
    return Softcap(float(cap))


def relative_bias(table: Tensor) -> Rule:
    """A learned bias per clipped relative position ``j - i`` (Shaw et al. 2018; T5-style).

    ``table`` is (2R+1,) shared by all heads or (Hq, 2R+1) per head; entry ``R + d`` is
    the bias for relative position ``d`` in ``[-R, R]`` (farther positions use the edge
    entries). A table that requires grad is learned: gradients reach it on every backend.
    """
    if not isinstance(table, Tensor) or table.ndim not in (1, 2) or not table.dtype.is_floating_point:
        got = f"{table.dtype} {tuple(table.shape)}" if isinstance(table, Tensor) else type(table).__name__
        raise ValueError(f"table must be a float tensor (2R+1,) or (heads, 2R+1), got {got}")
    if table.shape[-1] % 2 != 1:
        raise ValueError(f"table's last dimension must be odd (2R+1 relative positions), got {table.shape[-1]}")
    return RelativeBias(table)
