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

import inspect
from typing import Callable, Optional

__all__ = ["Rule", "bind", "check_rule"]


class Rule:
    """A mask_mod or score_mod that may depend on the call's query/key lengths.

    Subclasses implement ``__call__`` with an ``offset`` attribute (``S - L`` once bound)
    and return a bound copy from ``bind``; ``check`` refuses a call whose sizes the rule's
    own tensors do not fit (before any backend runs).
    """

    offset: int = 0
    #: what the rule is ("causal", "padding", "alibi", ...): lets a fused backend compile
    #: the rules it knows from their attributes without importing attend.masks/mods
    kind: str = "custom"
    #: "mask" for a mask_mod (b, h, i, j), "score" for a score_mod (score, b, h, i, j)
    role: str = "mask"

    def bind(self, L: int, S: int) -> "Rule":
        """Return a copy that aligns query ``i`` with key position ``i + (S - L)``."""
        bound = object.__new__(type(self))
        bound.__dict__.update(self.__dict__)
        bound.offset = S - L
        return bound

    def check(self, B: int, H: int, L: int, S: int) -> Optional[str]:
        """Why this rule cannot serve a call of batch ``B`` (flattened), ``H`` query heads,
        ``L`` queries and ``S`` keys (None: it can)."""
        return None


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
    "attend.masks": ("causal", "sliding_window", "padding", "key_mask", "document", "varlen", "prefix_lm",
                     "and_masks", "or_masks"),
    "attend.mods": ("alibi", "softcap", "relative_bias"),
}
# functions of those modules that are neither rules nor their factories
_HELPERS = {"attend.masks": ("to_dense", "render", "normalize_window"), "attend.mods": ("alibi_slopes",)}
