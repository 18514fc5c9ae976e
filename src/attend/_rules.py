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

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Union

import torch
from torch import Tensor

__all__ = ["Rule", "keys_of", "full_of", "Causal", "Window", "Chunked", "Padding", "KeyMask", "Document",
           "PrefixLM", "And", "Or", "Alibi", "Softcap", "RelativeBias"]


@dataclass(frozen=True, eq=False)
class Rule:
    """A mask_mod or score_mod that may depend on the call's query/key lengths.

    attend's rules are frozen dataclasses of this type (their tensors and sizes are the
    fields), so a backend can recognise each by its type and read its fields; ``offset`` is
    ``S - L`` once bound, and ``bind`` is :func:`dataclasses.replace`. ``check`` refuses a
    call whose sizes the rule's own tensors do not fit (before any backend runs); ``keys``
    tells a blocked backend which keys the rule can allow at all, so it skips the others;
    ``full`` which keys it allows to every query of a block, so it computes them unmasked.
    A rule of your own: subclass as a frozen dataclass and define ``__call__`` (and ``keys``
    or ``full`` where you can say; the defaults only cost speed).
    """

    offset: int = field(default=0, kw_only=True)
    #: "mask" for a mask_mod (b, h, i, j), "score" for a score_mod (score, b, h, i, j)
    role: ClassVar[str] = "mask"

    def bind(self, L: int, S: int) -> "Rule":
        """Return a copy that aligns query ``i`` with key position ``i + (S - L)``."""
        return dataclasses.replace(self, offset=S - L)

    def check(self, B: int, H: int, L: int, S: int) -> Optional[str]:
        """Why this rule cannot serve a call of batch ``B`` (flattened), ``H`` query heads,
        ``L`` queries and ``S`` keys (None: it can)."""
        return None

    def keys(self, first: int, last: int, S: int) -> tuple[int, int]:
        """Keys ``[lo, hi)`` outside which this rule allows no key to any query at key
        positions ``first..last`` (a mask rule; for every sequence and head). Default: all."""
        return 0, S

    def full(self, first: int, last: int, S: int) -> tuple[int, int]:
        """Keys ``[lo, hi)`` allowed to *every* query at key positions ``first..last`` (a mask rule;
        every sequence and head): a block within needs no mask. Less than true, never more."""
        return 0, 0


# ---- mask rules -----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Causal(Rule):
    """Key ``j`` allowed iff ``j <= i + offset``."""

    def __call__(self, b, h, i, j):
        return j <= i + self.offset

    def keys(self, first, last, S):
        return 0, max(0, min(S, last + 1))

    def full(self, first, last, S):
        return 0, max(0, min(S, first + 1))

    def __repr__(self):
        return "causal()"


@dataclass(frozen=True, eq=False)
class Window(Rule):
    """Keys within ``left`` positions before and ``right`` after (None: unbounded)."""

    left: Optional[int]
    right: Optional[int]

    def __call__(self, b, h, i, j):
        pos = i + self.offset  # key position of query i
        ok = torch.ones_like(pos - j, dtype=torch.bool)
        if self.left is not None:
            ok = ok & (j >= pos - self.left)
        if self.right is not None:
            ok = ok & (j <= pos + self.right)
        return ok

    def keys(self, first, last, S):
        lo = 0 if self.left is None else max(0, first - self.left)
        hi = S if self.right is None else max(0, min(S, last + self.right + 1))
        return lo, hi

    def full(self, first, last, S):
        lo = 0 if self.left is None else min(S, max(0, last - self.left))
        hi = S if self.right is None else max(0, min(S, first + self.right + 1))
        return lo, max(lo, hi)

    def __repr__(self):
        return f"sliding_window(({self.left}, {self.right}))"


@dataclass(frozen=True, eq=False)
class Chunked(Rule):
    """Attention only within fixed chunks of ``size`` positions (Llama 4's chunked local
    attention): key ``j`` allowed iff it is in the chunk of query ``i``'s key position."""

    size: int

    def __call__(self, b, h, i, j):
        pos = i + self.offset
        return (pos >= 0) & (torch.div(pos.clamp(min=0), self.size, rounding_mode="floor")
                             == torch.div(j, self.size, rounding_mode="floor"))

    def keys(self, first, last, S):
        if last < 0:
            return 0, 0
        return min(S, max(first, 0) // self.size * self.size), min(S, (last // self.size + 1) * self.size)

    def full(self, first, last, S):
        if first < 0 or first // self.size != last // self.size:  # rows of more than one chunk share no key
            return 0, 0
        lo = min(S, first // self.size * self.size)
        return lo, min(S, lo + self.size)

    def __repr__(self):
        return f"chunked({self.size})"


@dataclass(frozen=True, eq=False)
class Padding(Rule):
    """Keys at positions ``>= lengths[b]`` masked. ``lengths`` (B,) integer."""

    lengths: Tensor

    def check(self, B, H, L, S):
        if self.lengths.numel() != B:
            return f"{self.lengths.numel()} lengths for a batch of {B} sequences"
        return None

    def __call__(self, b, h, i, j):
        return j < self.lengths.to(j.device)[b]

    def full(self, first, last, S):
        shortest = int(self.lengths.min()) if self.lengths.numel() else 0
        return 0, max(0, min(S, shortest))

    def __repr__(self):
        return f"padding(lengths={self.lengths.tolist()})"


@dataclass(frozen=True, eq=False)
class KeyMask(Rule):
    """Keys where ``valid[b, j]`` is False masked. ``valid`` (B, S) bool."""

    valid: Tensor

    def check(self, B, H, L, S):
        if tuple(self.valid.shape) != (B, S):
            return f"valid has shape {tuple(self.valid.shape)}; this call needs (B, S) = {(B, S)}"
        return None

    def __call__(self, b, h, i, j):
        return self.valid.to(j.device)[b, j]

    def __repr__(self):
        return f"key_mask(shape={tuple(self.valid.shape)})"


@dataclass(frozen=True, eq=False)
class Document(Rule):
    """A query sees only keys of its own document. ``ids`` (S,) or (B, S) integer."""

    ids: Tensor

    def check(self, B, H, L, S):
        want = (S,) if self.ids.ndim == 1 else (B, S)
        if tuple(self.ids.shape) != want:
            return f"ids have shape {tuple(self.ids.shape)}; this call needs {want} (one id per key position)"
        return None

    def __call__(self, b, h, i, j):
        ids = self.ids.to(j.device)
        pos = (i + self.offset).clamp(min=0)
        if ids.ndim == 1:
            return ids[pos] == ids[j]
        return ids[b, pos] == ids[b, j]

    def keys(self, first, last, S):
        """For ids that never decrease along the keys (packed documents): from the start of the
        document at key position ``first`` to the end of the one at ``last`` (over every
        sequence). Ids in any other order: all keys."""
        runs = self._runs()
        if last < 0 or runs is None:
            return 0, S
        n = len(runs[0])
        first, last = min(max(first, 0), n - 1), min(last, n - 1)
        return runs[0][first], min(S, runs[3][last])

    def full(self, first, last, S):
        """Sorted ids, queries ``first..last`` in one document in every sequence: its keys in all."""
        runs = self._runs()
        if runs is None or last < first:
            return 0, 0
        n = len(runs[0])
        first, last = min(max(first, 0), n - 1), min(max(last, 0), n - 1)  # (a query before key 0 reads id 0's)
        lo, hi = runs[1][first], min(S, runs[2][first])
        return (lo, hi) if hi > max(lo, last) else (0, 0)  # (last's document ends past it in every sequence)

    def _runs(self) -> Optional[tuple]:
        """Per key position, over the sequences: (min start, max start, min end, max end) of its
        document, lists of S; None unless the ids never decrease. Once per bound rule (per call)."""
        runs = self.__dict__.get("_runs_made", False)
        if runs is False:
            ids = self.ids if self.ids.ndim == 2 else self.ids.view(1, -1)
            runs = None
            if ids.shape[-1] and not bool((ids[:, 1:] < ids[:, :-1]).any()):
                ids = ids.contiguous()
                start = torch.searchsorted(ids, ids, right=False)
                end = torch.searchsorted(ids, ids, right=True)
                runs = tuple(t.tolist() for t in (start.amin(0), start.amax(0), end.amin(0), end.amax(0)))
            object.__setattr__(self, "_runs_made", runs)
        return runs

    def __repr__(self):
        return f"document(ids of shape {tuple(self.ids.shape)})"


@dataclass(frozen=True, eq=False)
class PrefixLM(Rule):
    """Bidirectional over the first ``prefix_len`` keys (an int or a (B,) tensor), causal after."""

    prefix_len: Union[int, Tensor]

    def check(self, B, H, L, S):
        if isinstance(self.prefix_len, Tensor) and self.prefix_len.numel() != B:
            return f"{self.prefix_len.numel()} prefix lengths for a batch of {B} sequences"
        return None

    def __call__(self, b, h, i, j):
        p = self.prefix_len
        if isinstance(p, Tensor):
            p = p.to(j.device)[b]
        return (j < p) | (j <= i + self.offset)

    def keys(self, first, last, S):
        if isinstance(self.prefix_len, Tensor):
            return 0, S
        return 0, max(0, min(S, max(self.prefix_len, last + 1)))

    def full(self, first, last, S):
        p = self.prefix_len
        if isinstance(p, Tensor):
            p = int(p.min()) if p.numel() else 0
        return 0, max(0, min(S, max(p, first + 1)))

    def __repr__(self):
        p = self.prefix_len.tolist() if isinstance(self.prefix_len, Tensor) else self.prefix_len
        return f"prefix_lm({p})"


@dataclass(frozen=True, eq=False)
class _Combine(Rule):
    """A rule made of mask rules ``mods``, joined by ``_join`` (AND or OR)."""

    mods: tuple

    def bind(self, L: int, S: int) -> "_Combine":
        return dataclasses.replace(self, mods=tuple(m.bind(L, S) if isinstance(m, Rule) else m for m in self.mods), offset=S - L)

    def check(self, B, H, L, S):
        return _check_terms(self.mods, B, H, L, S)

    def __call__(self, b, h, i, j):
        out = None
        for m in self.mods:
            r = m(b, h, i, j)
            out = r if out is None else self._join(out, r)
        return out

    def __repr__(self):
        return f"{self.name}({', '.join(map(repr, self.mods))})"


@dataclass(frozen=True, eq=False, repr=False)
class And(_Combine):
    """Allowed where every one of ``mods`` allows."""

    name: ClassVar[str] = "and_masks"

    @staticmethod
    def _join(a, b):
        return a & b

    def keys(self, first, last, S):
        lo, hi = 0, S
        for m in self.mods:
            if isinstance(m, Rule):
                a, z = keys_of(m, first, last, S)
                lo, hi = max(lo, a), min(hi, z)
        return lo, max(lo, hi)

    def full(self, first, last, S):
        if not all(isinstance(m, Rule) for m in self.mods):
            return 0, 0
        lo, hi = 0, S
        for m in self.mods:
            a, z = full_of(m, first, last, S)
            lo, hi = max(lo, a), min(hi, z)
        return (lo, hi) if hi > lo else (0, 0)


@dataclass(frozen=True, eq=False, repr=False)
class Or(_Combine):
    """Allowed where any of ``mods`` allows."""

    name: ClassVar[str] = "or_masks"

    @staticmethod
    def _join(a, b):
        return a | b

    def keys(self, first, last, S):
        if not all(isinstance(m, Rule) for m in self.mods):
            return 0, S
        spans = [keys_of(m, first, last, S) for m in self.mods]
        return min(a for a, _ in spans), max(z for _, z in spans)

    def full(self, first, last, S):
        """The widest of the terms' spans (keys any one term allows to every query)."""
        spans = [full_of(m, first, last, S) for m in self.mods if isinstance(m, Rule)]
        return max(spans, key=lambda t: t[1] - t[0], default=(0, 0))


_RULE_PARTS = ("__call__", "bind", "_join")  # what a rule's keys and full answer for


def _written_with_call(rule: Rule, name: str) -> bool:
    """Whether ``rule``'s ``name`` (keys, full) was written for its rule: a subclass that changes a
    part of :data:`_RULE_PARTS` but inherits them would get its parent's answer (silently wrong)."""
    mro = type(rule).__mro__
    defined = next(c for c in mro if name in c.__dict__)
    return all(issubclass(defined, next((c for c in mro if part in c.__dict__), Rule)) for part in _RULE_PARTS)


def keys_of(rule: Rule, first: int, last: int, S: int) -> tuple[int, int]:
    """``rule.keys(...)`` where it answers for the rule's own ``__call__``; else all keys."""
    return rule.keys(first, last, S) if _written_with_call(rule, "keys") else (0, S)


def full_of(rule: Rule, first: int, last: int, S: int) -> tuple[int, int]:
    """``rule.full(...)`` where it answers for the rule's own ``__call__``; else none."""
    return rule.full(first, last, S) if _written_with_call(rule, "full") else (0, 0)


def _check_terms(mods, B, H, L, S) -> Optional[str]:
    for m in mods:
        if isinstance(m, Rule):
            if m.role != "mask":
                return f"{m!r} is a score modifier, not a mask rule"
            why = m.check(B, H, L, S)
            if why:
                return f"{m!r}: {why}"
    return None


# ---- score modifiers --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Alibi(Rule):
    """``score - slopes[h] * |i + offset - j|``; ``slopes`` (Hq,) float."""

    slopes: Tensor
    role: ClassVar[str] = "score"

    def check(self, B, H, L, S):
        if self.slopes.numel() != H:
            return f"{self.slopes.numel()} slopes for {H} query heads (one slope per head)"
        return None

    def __call__(self, score, b, h, i, j):
        dist = (i + self.offset - j).abs().to(score.dtype)  # |key position of i - j|
        return score - self.slopes.to(score.device, score.dtype)[h] * dist

    def __repr__(self):
        return f"alibi(slopes of {self.slopes.numel()} heads)"


@dataclass(frozen=True, eq=False)
class Softcap(Rule):
    """``cap * tanh(score / cap)``."""

    cap: float
    role: ClassVar[str] = "score"

    def __call__(self, score, b, h, i, j):
        return self.cap * torch.tanh(score / self.cap)

    def __repr__(self):
        return f"softcap({self.cap})"


@dataclass(frozen=True, eq=False)
class RelativeBias(Rule):
    """``score + table[(h,) clip(j - i - offset, -R, R) + R]``; ``table`` (2R+1,) or (Hq, 2R+1)."""

    table: Tensor
    role: ClassVar[str] = "score"

    @property
    def max_distance(self) -> int:
        return (self.table.shape[-1] - 1) // 2

    def check(self, B, H, L, S):
        if self.table.ndim == 2 and self.table.shape[0] != H:
            return f"a table for {self.table.shape[0]} heads, but the call has {H} query heads"
        return None

    def __call__(self, score, b, h, i, j):
        R = self.max_distance
        rel = (j - (i + self.offset)).clamp(-R, R) + R
        table = self.table.to(score.device)
        bias = table[rel] if table.ndim == 1 else table[h, rel]  # (…, l, s)
        return score + bias.to(score.dtype)

    def __repr__(self):
        return f"relative_bias(table of shape {tuple(self.table.shape)})"
