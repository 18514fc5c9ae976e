"""Index rules: the common base of attend's ``mask_mod`` and ``score_mod`` functions.

A *mask_mod* is ``mask_mod(b, h, i, j) -> bool tensor`` and a *score_mod* is
``score_mod(score, b, h, i, j) -> score``. attend calls them with **broadcastable index
tensors**, not Python ints, so they run vectorised over a whole block at once::

    b: (B, 1, 1, 1)   batch index        h: (1, H, 1, 1)   query head index
    i: (1, 1, l, 1)   query index        j: (1, 1, 1, s)   key index

``i`` and ``j`` are positions in the query and key sequences (``0 <= i < L``,
``0 <= j < S``). Any function written with tensor operations that broadcast works
(``lambda b, h, i, j: i >= j``).

Rules that relate query and key positions (causal, sliding window, ALiBi, relative
bias, ...) must agree with ``causal=True`` when ``L != S``: attend aligns the **last
query with the last key**, so query ``i`` sits at key position ``i + (S - L)``. The
rules attend ships are ``Rule`` objects: just before a call, attend ``bind``s them to
the call's ``L`` and ``S`` so they use that alignment. A plain function is used as is.
"""
from __future__ import annotations

from typing import Callable

__all__ = ["Rule", "bind"]


class Rule:
    """A mask_mod or score_mod that may depend on the call's query/key lengths.

    Subclasses implement ``__call__`` with an ``offset`` attribute (``S - L`` once bound)
    and return a bound copy from ``bind``.
    """

    offset: int = 0
    #: what the rule is ("causal", "padding", "alibi", ...): lets a fused backend compile
    #: the rules it knows from their attributes without importing attend.masks/mods
    kind: str = "custom"

    def bind(self, L: int, S: int) -> "Rule":
        """Return a copy that aligns query ``i`` with key position ``i + (S - L)``."""
        bound = object.__new__(type(self))
        bound.__dict__.update(self.__dict__)
        bound.offset = S - L
        return bound


def bind(fn: Callable | None, L: int, S: int) -> Callable | None:
    """Bind ``fn`` to a call's lengths when it is a :class:`Rule`; return plain functions as is."""
    if isinstance(fn, Rule):
        return fn.bind(L, S)
    return fn
