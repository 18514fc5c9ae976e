"""Rules evaluated at global positions or heads, for the blocks a rank computes.

A rank computes attention between a span of the global queries and a span of the global keys
(ring), or over a slice of the heads (all-to-all). attend's rules are written for a whole
call: ``rule(b, h, i, j)`` with ``i``, ``j`` the call's query and key indices and ``h`` its
head. The wrappers here give a backend a rule of the block's own indices that evaluates the
global rule where the block sits: ``i + q0``, ``j + k0`` (:class:`Shifted`), or ``h + h0``
(:class:`HeadShifted`). They are :class:`attend._rules.Rule` s, so every backend treats them
as attend's own: ``keys()`` maps the global rule's key span into the block (blocks it rules
out are skipped), and ``inner`` holds the tensors a backend takes gradients for.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from .._rules import (Alibi, And, Causal, Chunked, Document, KeyMask, Or, Padding, PrefixLM, RelativeBias, Rule,
                      Softcap, Window, full_of, keys_of)


@dataclass(frozen=True, eq=False)
class Shifted(Rule):
    """Mask rule ``inner`` (bound to the global lengths) at global query ``i + q0`` and key
    ``j + k0``. ``local_offset`` is the block's own ``S - L``; ``global_offset``, ``S_global``:
    the global call's."""

    inner: Any
    q0: int
    k0: int
    local_offset: int
    global_offset: int
    S_global: int

    def bind(self, L: int, S: int) -> "Shifted":
        return self  # already placed

    def __call__(self, b, h, i, j):
        return self.inner(b, h, i + self.q0, j + self.k0)

    def keys(self, first, last, S):
        if not isinstance(self.inner, Rule):
            return 0, S
        shift = self.q0 + self.global_offset - self.local_offset  # local key position -> global
        lo, hi = keys_of(self.inner, first + shift, last + shift, self.S_global)
        lo, hi = lo - self.k0, hi - self.k0
        lo = min(max(lo, 0), S)
        return lo, max(lo, min(hi, S))

    def full(self, first, last, S):
        if not isinstance(self.inner, Rule):
            return 0, 0
        shift = self.q0 + self.global_offset - self.local_offset
        lo, hi = full_of(self.inner, first + shift, last + shift, self.S_global)
        lo, hi = min(max(lo - self.k0, 0), S), min(hi - self.k0, S)
        return (lo, hi) if hi > lo else (0, 0)

    def program_key(self):
        return ("Shifted", _key(self.inner))

    def __repr__(self):
        return f"{self.inner!r} at queries +{self.q0}, keys +{self.k0}"


@dataclass(frozen=True, eq=False)
class ShiftedScore(Rule):
    """Score modifier ``inner`` (bound to the global lengths) at global ``i + q0``, ``j + k0``."""

    inner: Any
    q0: int
    k0: int
    role: ClassVar[str] = "score"

    def bind(self, L: int, S: int) -> "ShiftedScore":
        return self

    def __call__(self, score, b, h, i, j):
        return self.inner(score, b, h, i + self.q0, j + self.k0)

    def program_key(self):
        return ("ShiftedScore", _key(self.inner))

    def __repr__(self):
        return f"{self.inner!r} at queries +{self.q0}, keys +{self.k0}"


@dataclass(frozen=True, eq=False)
class HeadShifted(Rule):
    """A rule of one's own (mask or score) at global head ``h + h0``."""

    inner: Any
    h0: int
    score: bool = False

    @property
    def role(self):  # type: ignore[override]
        return "score" if self.score else "mask"

    def bind(self, L: int, S: int) -> "HeadShifted":
        return dataclasses.replace(self, inner=self.inner.bind(L, S)) if isinstance(self.inner, Rule) else self

    def __call__(self, *args):
        *head, h, i, j = args
        return self.inner(*head, h + self.h0, i, j)

    def keys(self, first, last, S):
        return keys_of(self.inner, first, last, S) if isinstance(self.inner, Rule) and not self.score else (0, S)

    def full(self, first, last, S):
        return full_of(self.inner, first, last, S) if isinstance(self.inner, Rule) and not self.score else (0, 0)

    def program_key(self):
        return ("HeadShifted", _key(self.inner))


#: attend's rules and modifiers that never read the head index (exactly these classes: a subclass may)
_HEADLESS = (Causal, Window, Chunked, Padding, KeyMask, Document, PrefixLM, Softcap)


def heads(fn: Callable | None, h0: int, h1: int, score: bool):
    """``fn`` for query heads ``h0:h1`` only: per-head tensors sliced (ALiBi slopes, a per-head
    relative-bias table; autograd reaches the full tensor through the slice), rules that read
    no head as they are, anything else evaluated at ``h + h0``."""
    if fn is None:
        return None
    if type(fn) is Alibi:  # (exactly, here and below: a subclass may read more than its tensors)
        return dataclasses.replace(fn, slopes=fn.slopes[h0:h1])
    if type(fn) is RelativeBias:
        return fn if fn.table.ndim == 1 else dataclasses.replace(fn, table=fn.table[h0:h1])
    if type(fn) in (And, Or):
        return dataclasses.replace(fn, mods=tuple(heads(m, h0, h1, score) for m in fn.mods))
    if type(fn) in _HEADLESS:
        return fn
    return HeadShifted(fn, h0, score)


def _key(fn):
    if isinstance(fn, Rule):
        own = getattr(fn, "program_key", None)
        if own is not None:
            return own()
        mods = getattr(fn, "mods", None)
        if mods is not None:
            return (type(fn).__name__,) + tuple(_key(m) for m in mods)
        return type(fn).__name__
    return getattr(getattr(fn, "fn", fn), "__code__", None) or type(fn)
