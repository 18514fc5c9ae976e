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
import inspect
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator, Optional, Union

import torch
from torch import Tensor

__all__ = ["Rule", "bind", "check_rule", "and_terms", "Causal", "Window", "Chunked", "Padding", "KeyMask", "Document",
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
        """Keys ``[lo, hi)`` that this rule allows to *every* query at key positions
        ``first..last`` (a mask rule; for every sequence and head), so a block within them needs
        no mask. It may say less than is true, never more. Default: none (``(0, 0)``)."""
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
        """For ids that never decrease along the keys, where the queries at ``first..last`` are
        in one document in every sequence: the keys every sequence's document holds."""
        runs = self._runs()
        if runs is None or last < first:
            return 0, 0
        n = len(runs[0])
        first, last = min(max(first, 0), n - 1), min(max(last, 0), n - 1)  # (a query before key 0 reads id 0's)
        lo, hi = runs[1][first], min(S, runs[2][first])
        return (lo, hi) if hi > max(lo, last) else (0, 0)  # (last's document ends past it in every sequence)

    def _runs(self) -> Optional[tuple]:
        """Per key position p, over the sequences: the first and the last start of p's document,
        and the first and the last end (``(min start, max start, min end, max end)``, lists of S);
        None for ids in any other order than never decreasing, or none. Made once per bound rule
        (a call binds its own), so the tiles read it rather than search the ids each."""
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
        return dataclasses.replace(self, mods=tuple(bind(m, L, S) for m in self.mods), offset=S - L)

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


def _written_with_call(rule: Rule, name: str) -> bool:
    """Whether ``rule``'s method ``name`` was written for its ``__call__``: a subclass that changes
    ``__call__`` but inherits ``keys`` or ``full`` would get its parent's answer, which may skip or
    leave unmasked keys its own rule treats otherwise (a silently wrong result)."""
    mro = type(rule).__mro__
    defined = next(c for c in mro if name in c.__dict__)
    called = next(c for c in mro if "__call__" in c.__dict__)
    return issubclass(defined, called)


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


def and_terms(rule) -> Iterator:
    """The terms of a rule that is an AND of rules (nested :class:`And` flatten)."""
    if rule is None:
        return
    if isinstance(rule, And):
        for r in rule.mods:
            yield from and_terms(r)
    else:
        yield rule


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


def bind(fn: Callable | None, L: int, S: int) -> Callable | None:
    """Bind ``fn`` to a call's lengths when it is a :class:`Rule`; return plain functions as is."""
    if isinstance(fn, Rule):
        return fn.bind(L, S)
    return fn


_ROLES = {"mask": ("a mask_mod (b, h, i, j) -> bool", 4), "score": ("a score_mod (score, b, h, i, j) -> score", 5)}


def check_rule(fn: Callable, arg: str, role: str, sizes: Optional[tuple[int, int, int, int]]) -> None:
    """Refuse, naming ``arg``, what cannot serve as a ``role`` rule ("mask" or "score") for a
    call of ``sizes`` (B, H, L, S): a rule factory passed uncalled, one of attend's helpers, a
    rule of the other kind, a function that cannot take the rule's arguments, a rule whose
    tensors do not fit (``sizes=None`` skips that last check)."""
    what, nargs = _ROLES[role]
    if isinstance(fn, Rule):
        if fn.role != role:
            other = "score_mod" if fn.role == "score" else "mask"
            raise TypeError(f"{arg}: {fn!r} is {_ROLES[fn.role][0].split(' (')[0]}, not {what.split(' (')[0]}; "
                            f"pass it as {other}=")
        why = fn.check(*sizes) if sizes is not None else None
        if why:
            raise ValueError(f"{arg}: {fn!r} does not fit this call: {why}")
        return
    helper = _named_in(fn, _HELPERS)
    if helper is not None:
        raise TypeError(f"{arg}: {helper} is one of attend's helpers, not {what.split(' (')[0]}")
    factory = _named_in(fn, _FACTORIES)
    if factory is not None:
        raise TypeError(f"{arg}: {factory} is the function that makes the rule, not the rule; call it: "
                        f"{factory}({_example_args(fn)})")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and the like: nothing to check
        return
    try:
        sig.bind(*range(nargs))
    except TypeError:
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        raise TypeError(f"{arg} must be {what}, called with {nargs} broadcastable index tensors; "
                        f"{name}{sig} cannot take {nargs} positional arguments") from None


def _named_in(fn, table: dict) -> Optional[str]:
    """``attend.masks.causal`` and the like: the dotted name of ``fn`` when it is one of the
    functions ``table`` lists (module -> names), else None."""
    module = getattr(fn, "__module__", "")
    name = getattr(fn, "__name__", "")
    if inspect.isfunction(fn) and name in table.get(module, ()):
        return f"{module}.{name}"
    return None


def _example_args(fn) -> str:
    params = [p.name for p in inspect.signature(fn).parameters.values()
              if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    star = [p.name for p in inspect.signature(fn).parameters.values() if p.kind == p.VAR_POSITIONAL]
    return ", ".join(params + [f"*{n}" for n in star])


# the functions of attend.masks / attend.mods that return rules
_FACTORIES = {
    "attend.masks": ("causal", "sliding_window", "chunked", "padding", "key_mask", "document", "varlen", "prefix_lm",
                     "and_masks", "or_masks"),
    "attend.mods": ("alibi", "softcap", "relative_bias"),
}
# functions of those modules that are neither rules nor their factories
_HELPERS = {"attend.masks": ("to_dense", "render", "normalize_window"), "attend.mods": ("alibi_slopes",)}
