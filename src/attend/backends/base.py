"""The contract between :func:`attend.attention` and its backends.

Shape legend (the canonical form every backend receives)::

    B    batch (all leading dimensions of the public call, flattened)
    Hq   query heads            Hkv  key/value heads (Hq is a multiple of Hkv)
    L    query length           S    key length
    E    query/key features     Ev   value features

    query (B, Hq, L, E)   key (B, Hkv, S, Ek)   value (B, Hkv, S, Ev)
    mask  (B|1, Hq|1, L|1, S|1) bool, True = may attend
    bias  (B|1, Hq|1, L|1, S|1) float, added to the scores

:class:`AttentionCall` holds one validated call. Its :meth:`AttentionCall.scores` gives
the final scores of any block of rows and columns (score function, scale, score_mod,
bias, then every mask rule applied by AND as ``-inf``), so every backend shares one
definition of *what* is computed and differs only in *how*.
"""
from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from .._rules import Rule, full_of, keys_of

DENSE_RULE_LIMIT = 1 << 28  # bytes: auto hands mask rules to a dense-mask path (sdpa) up to this

__all__ = ["DENSE_RULE_LIMIT", "AttentionCall", "Backend", "UnsupportedCall", "compute_dtype", "safe_lse", "safe_softmax"]


class UnsupportedCall(ValueError):
    """A named backend cannot run the call; the message says why."""


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores and softmax run in float32 for 16-bit inputs (no fp16 overflow), else as given."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@dataclass(frozen=True)
class AttentionCall:
    """One validated attention call in canonical 4-D form (see the module's shape legend)."""

    query: Tensor
    key: Tensor
    value: Tensor
    score: Callable  # score(q, k) -> (..., L, S); may have as_dot(q, k) -> (q', k', factor) | None
    scale: float
    mask: Optional[Tensor] = None
    bias: Optional[Tensor] = None
    mask_mod: Optional[Callable] = None
    causal: bool = False
    window: Optional[tuple[Optional[int], Optional[int]]] = None
    score_mod: Optional[Callable] = None
    dropout_p: float = 0.0
    hard: bool | str = False
    sinks: Optional[Tensor] = None  # (Hq,) one extra logit per query head in the softmax denominator
    return_weights: bool = False
    finite: bool = False  # q, k and v were checked to hold only finite numbers (attend's quarantine, CPU)

    # ---- sizes -------------------------------------------------------------------------
    @property
    def B(self) -> int:
        return self.query.shape[0]

    @property
    def Hq(self) -> int:
        return self.query.shape[1]

    @property
    def Hkv(self) -> int:
        return self.key.shape[1]

    @property
    def L(self) -> int:
        return self.query.shape[2]

    @property
    def S(self) -> int:
        return self.key.shape[2]

    @property
    def Ev(self) -> int:
        return self.value.shape[3]

    @property
    def groups(self) -> int:
        """Query heads per key/value head (1 = plain multi-head attention)."""
        return self.Hq // self.Hkv

    @property
    def offset(self) -> int:
        """Query ``i`` sits at key position ``i + offset`` (bottom-right alignment)."""
        return self.S - self.L

    @property
    def has_rule_mask(self) -> bool:
        return self.causal or self.window is not None or self.mask_mod is not None

    @property
    def needs_grad(self) -> bool:
        if not torch.is_grad_enabled():
            return False
        tensors = [self.query, self.key, self.value, self.bias, self.sinks]
        if any(t is not None and t.requires_grad for t in tensors):
            return True
        params = getattr(self.score, "parameters", None)
        if params is not None and any(p.requires_grad for p in params()):
            return True
        return any(_holds_grad_tensor(fn) for fn in (self.score, self.score_mod, self.mask_mod))

    # ---- heads ---------------------------------------------------------------------------
    def expand_kv(self, t: Tensor) -> Tensor:
        """(B, Hkv, s, D) -> (B, Hq, s, D): query head h reads key/value head h // groups."""
        g = self.groups
        return t if g == 1 else t.repeat_interleave(g, dim=1)

    # ---- masks ---------------------------------------------------------------------------
    def allowed(self, i0: int, i1: int, j0: int, j1: int) -> Optional[Tensor]:
        """Boolean (B|1, H|1, i1-i0, j1-j0): True where query i may attend key j; None = all.

        The AND of: the dense boolean mask, ``causal``, ``window`` and ``mask_mod``.
        """
        dev = self.query.device
        result: Optional[Tensor] = None

        def both(a: Optional[Tensor], b: Tensor) -> Tensor:
            return b if a is None else a & b

        if self.causal or self.window is not None:
            i = torch.arange(i0, i1, device=dev).view(1, 1, -1, 1) + self.offset  # key position of query i
            j = torch.arange(j0, j1, device=dev).view(1, 1, 1, -1)
            if self.causal:
                result = both(result, j <= i)
            if self.window is not None:
                left, right = self.window
                if left is not None:
                    result = both(result, j >= i - left)
                if right is not None:
                    result = both(result, j <= i + right)
        if self.mask is not None:
            result = both(result, _block(self.mask, i0, i1, j0, j1))
        if self.mask_mod is not None:
            b, h, i, j = self.indices(i0, i1, j0, j1)
            m = self.mask_mod(b, h, i, j)
            if not isinstance(m, Tensor) or m.dtype != torch.bool:
                got = m.dtype if isinstance(m, Tensor) else type(m).__name__
                raise TypeError(f"mask_mod must return a boolean tensor (True = may attend), got {got}")
            _fits("mask_mod", m, (self.B, self.Hq, i1 - i0, j1 - j0))
            result = both(result, m)
        return result

    def mask_planes(self) -> int:
        """How many (L, S) planes the dense mask of this call's masks and rules spans: the
        product of its batch and head extents (1 when every sequence and head share one).
        Rules are evaluated at a single (i, j) to see which of b and h they depend on."""
        extent = [1, 1]

        def widen(shape) -> None:
            full = (1,) * (4 - len(shape)) + tuple(shape)
            extent[0], extent[1] = max(extent[0], full[0]), max(extent[1], full[1])

        if self.mask is not None:
            widen(self.mask.shape)
        if self.mask_mod is not None:
            b, h, i, j = self.indices(0, 1, 0, 1)
            try:
                m = self.mask_mod(b, h, i, j)
            except Exception:  # a rule that cannot be probed: assume it spans every sequence and head
                return self.B * self.Hq
            if isinstance(m, Tensor):
                widen(m.shape)
        return extent[0] * extent[1]

    @property
    def spans_every_key(self) -> bool:
        """Whether :meth:`key_span` is all the keys for every query row (no ``causal``, ``window``
        or mask rule with a key span)."""
        return not (self.causal or self.window is not None or isinstance(self.mask_mod, Rule))

    def key_span(self, i0: int, i1: int) -> tuple[int, int]:
        """Keys ``[lo, hi)`` outside which ``causal``, ``window`` and a rule's key span
        (:meth:`attend._rules.Rule.keys`) allow no key to query rows ``i0:i1`` (``lo == hi``: none)."""
        S = self.key.shape[2]  # (read once: the planner asks for every tile of every row count)
        off = S - self.query.shape[2]
        first, last = i0 + off, i1 - 1 + off  # key positions of the first/last query
        lo, hi = 0, S
        if self.causal:
            hi = min(hi, last + 1)
        if self.window is not None:
            left, right = self.window
            if left is not None:
                lo = max(lo, first - left)
            if right is not None:
                hi = min(hi, last + right + 1)
        if isinstance(self.mask_mod, Rule):
            a, z = keys_of(self.mask_mod, first, last, S)
            lo, hi = max(lo, a), min(hi, z)
        lo = min(max(0, lo), S)
        return lo, max(lo, min(hi, S))

    def full_span(self, i0: int, i1: int) -> tuple[int, int]:
        """Keys ``[lo, hi)`` that ``causal``, ``window`` and the mask rule allow to *every* query
        row of ``i0:i1`` (:meth:`attend._rules.Rule.full`), so a block of them needs no mask;
        ``(0, 0)`` where none is known (a dense ``mask``, a mask function of one's own)."""
        if self.mask is not None or (self.mask_mod is not None and not isinstance(self.mask_mod, Rule)):
            return 0, 0
        first, last = i0 + self.offset, i1 - 1 + self.offset
        lo, hi = 0, self.S
        if self.causal:
            hi = min(hi, first + 1)
        if self.window is not None:
            left, right = self.window
            if left is not None:
                lo = max(lo, last - left)
            if right is not None:
                hi = min(hi, first + right + 1)
        if self.mask_mod is not None:
            a, z = full_of(self.mask_mod, first, last, self.S)
            lo, hi = max(lo, a), min(hi, z)
        lo, hi = min(max(0, lo), self.S), min(hi, self.S)
        return (lo, hi) if hi > lo else (0, 0)

    def block_is_empty(self, i0: int, i1: int, j0: int, j1: int) -> bool:
        """True when rows ``i0:i1`` may attend no key of ``j0:j1`` by :meth:`key_span` (skip it)."""
        lo, hi = self.key_span(i0, i1)
        return hi <= lo or j1 <= lo or j0 >= hi

    def dense_rule_bytes(self) -> int:
        """Bytes of the boolean (B|1, H|1, L, S) mask the mask rules would give, plus its float
        copy (what SDPA needs to be handed them); 0 when no rule needs one."""
        rules = self.mask_mod is not None or self.window is not None or (self.causal and self.L != self.S)
        return self.mask_planes() * self.L * self.S * 5 if rules else 0

    def indices(self, i0: int, i1: int, j0: int, j1: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Broadcastable index tensors b (B,1,1,1), h (1,H,1,1), i (1,1,l,1), j (1,1,1,s)."""
        dev = self.query.device
        b = torch.arange(self.B, device=dev).view(-1, 1, 1, 1)
        h = torch.arange(self.Hq, device=dev).view(1, -1, 1, 1)
        i = torch.arange(i0, i1, device=dev).view(1, 1, -1, 1)
        j = torch.arange(j0, j1, device=dev).view(1, 1, 1, -1)
        return b, h, i, j

    # ---- scores --------------------------------------------------------------------------
    def raw_scores(self, q: Tensor, k: Tensor) -> Tensor:
        """``scale * score(q, k)`` for q (B, Hq, l, E), k (B, Hq, s, Ek) -> (B, Hq, l, s)."""
        s = self.score(q, k)
        if not isinstance(s, Tensor) or s.shape[-2:] != (q.shape[-2], k.shape[-2]):
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(
                f"score must return scores of shape (..., L={q.shape[-2]}, S={k.shape[-2]}), got {got}"
            )
        if self.scale != 1.0:
            s = s * self.scale
        return s

    def scores(self, q: Tensor, k: Tensor, i0: int, j0: int) -> Tensor:
        """Final scores of rows ``i0:i0+l`` and keys ``j0:j0+s``; masked entries are ``-inf``.

        ``q`` (B, Hq, l, E) and ``k`` (B, Hq, s, Ek) are the slices, already in the
        compute dtype; the result has that dtype.
        """
        i1, j1 = i0 + q.shape[2], j0 + k.shape[2]
        s = self.raw_scores(q, k).to(q.dtype)
        if self.score_mod is not None:
            b, h, i, j = self.indices(i0, i1, j0, j1)
            s = self.score_mod(s, b, h, i, j)
            if not isinstance(s, Tensor):
                raise TypeError(f"score_mod must return a tensor, got {type(s).__name__}")
            _fits("score_mod", s, (self.B, self.Hq, i1 - i0, j1 - j0))
            floating_scores(s)
            s = s.to(q.dtype)
        if self.bias is not None:
            s = s + _block(self.bias, i0, i1, j0, j1).to(q.dtype)
        allowed = self.allowed(i0, i1, j0, j1)
        if allowed is not None:
            s = s.masked_fill(~allowed, -math.inf)
        return s


def floating_scores(s: Tensor) -> None:
    """A score_mod's result must be scores: a bool from a comparison (meant as a mask) would
    become scores of 0 and 1."""
    if not s.is_floating_point():
        raise TypeError(f"score_mod must return floating scores, got {s.dtype} (a mask is a mask_mod: mask=..., "
                        "True = may attend)")


def _fits(what: str, t: Tensor, shape: tuple[int, int, int, int]) -> None:
    """A rule's result must broadcast to the block it was asked for (B, H, l, s)."""
    try:
        ok = t.ndim <= 4 and torch.broadcast_shapes(t.shape, shape) == torch.Size(shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{what} must return a tensor that broadcasts to (B, H, l, s) = {shape} for the indices "
                         f"it was given, got shape {tuple(t.shape)}")


def _holds_grad_tensor(fn: object) -> bool:
    """Whether a score/mask function carries a tensor that requires grad (attribute or closure)."""
    if fn is None:
        return False
    held = list(getattr(fn, "__dict__", {}).values())
    held += [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if _cell_is_set(c)]
    return any(isinstance(t, Tensor) and t.requires_grad for t in held)


def _cell_is_set(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _block(t: Tensor, i0: int, i1: int, j0: int, j1: int) -> Tensor:
    """Rows i0:i1, columns j0:j1 of a mask that may broadcast (size 1) in L or S."""
    if t.shape[-2] != 1:
        t = t[..., i0:i1, :]
    if t.shape[-1] != 1:
        t = t[..., j0:j1]
    return t


def safe_lse(s: Tensor) -> Tensor:
    """log-sum-exp over the last dim: ``-inf`` for rows with no finite score, and a NaN-free gradient.

    The row max is subtracted for stability and detached: the result does not depend on
    it, and keeping it out of the graph keeps a fully masked row's gradient at zero.
    """
    m = s.amax(dim=-1, keepdim=True).detach()
    m = torch.where(m == -math.inf, torch.zeros_like(m), m)  # (…, l, 1)
    d = torch.exp(s - m).sum(dim=-1, keepdim=True)
    dead = d == 0
    lse = m + torch.log(torch.where(dead, torch.ones_like(d), d))
    return torch.where(dead, torch.full_like(lse, -math.inf), lse).squeeze(-1)


def with_sinks(lse: Tensor, sinks: Optional[Tensor]) -> Tensor:
    """Add each head's sink logit to the log-sum-exp of its rows: ``log(exp(lse) + exp(sink_h))``.

    ``lse`` is (B, Hq, l) (``-inf`` for rows with no key: they get ``sink_h``, so their
    weights stay exactly 0); ``sinks`` (Hq,) or None (then ``lse`` is returned as is).
    """
    if sinks is None:
        return lse
    return _logaddexp(lse, sinks.to(lse.dtype).view(1, -1, 1), torch.logaddexp)


def _logaddexp(a: Tensor, b: Tensor, op) -> Tensor:
    """``op(a, b)`` (torch.logaddexp or logaddexp2) that gives -inf, and a zero gradient,
    where both are -inf (plain logaddexp gives NaN there)."""
    both = torch.isneginf(a) & torch.isneginf(b)
    safe = torch.where(both, torch.zeros_like(a), a)
    return torch.where(both, torch.full_like(safe, -math.inf), op(safe, b))


def safe_softmax(s: Tensor, sinks: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Softmax over the last dim that gives **exactly zero** for rows with no finite score.

    ``s`` is (B, Hq, l, s); with ``sinks`` (Hq,) each head's sink logit joins every row's
    denominator. Returns ``(p, lse)``; ``lse`` is the log-sum-exp, sinks included
    (``-inf`` for rows with no finite score and no sink).
    """
    lse = with_sinks(safe_lse(s), sinks)
    p = torch.exp(s - torch.where(lse == -math.inf, torch.zeros_like(lse), lse).unsqueeze(-1))
    return p, lse


class Backend(abc.ABC):
    """How to compute a call. Subclass, give it a ``name``, and :func:`attend.backends.register` it.

    - ``can_run(call)`` returns the reasons it cannot run the call (empty list: it can).
      ``backend="auto"`` and :func:`attend.explain` use this same predicate.
    - ``auto_skip(call)`` returns reasons ``auto`` should prefer another backend even though
      this one could run (e.g. it would allocate too much); naming the backend still runs it.
    - ``run(call)`` returns ``(output (B, Hq, L, Ev), weights (B, Hq, L, S) or None)``.
    """

    name: str = "?"

    def can_run(self, call: AttentionCall) -> list[str]:
        return []

    def auto_skip(self, call: AttentionCall) -> list[str]:
        return []

    @abc.abstractmethod
    def run(self, call: AttentionCall) -> tuple[Tensor, Optional[Tensor]]:
        """Compute the call: ``(output (B, Hq, L, Ev), weights (B, Hq, L, S) or None)``."""

    def describe(self, call: AttentionCall) -> str:
        """How this backend would run ``call``, for :func:`attend.explain` ('' = nothing to add)."""
        return ""

    def weights(self, call: AttentionCall, heads: Optional[Tensor], rows: Optional[Tensor]) -> Tensor:
        """Weights ``(B, h, r, S)`` of query heads ``heads`` (h,) and rows ``rows`` (r,) only
        (None = all). This default computes every weight and selects; a backend that can
        compute fewer overrides it."""
        with torch.no_grad():
            _, w = self.run(dataclasses.replace(call, return_weights=True))  # (B, Hq, L, S)
        if heads is not None:
            w = w.index_select(1, heads.to(w.device))
        if rows is not None:
            w = w.index_select(2, rows.to(w.device))
        return w

    def key_totals(self, call: AttentionCall) -> Tensor:
        """``(B, Hq, S)`` float32: for each key, the sum of its weights over all query rows."""
        with torch.no_grad():
            _, w = self.run(dataclasses.replace(call, return_weights=True))
        return w.float().sum(dim=2)

    def __repr__(self) -> str:
        return f"<attend backend {self.name!r}>"
