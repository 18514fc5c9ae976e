"""What a caller hands attend as a rule (``mask=`` a mask_mod, ``score_mod=``), prepared before any
backend runs: checked (the wrong kind, a rule factory passed uncalled, one of attend's helpers, a
function that cannot take the rule's arguments, a rule whose tensors do not fit the call), then
bound to the call's lengths; and the terms of an AND of rules, for the backends."""
from __future__ import annotations

import inspect
from typing import Callable, Iterator, Optional

import torch

from ._rules import And, Rule
from ._ruletree import widened


def bind(fn: Callable | None, L: int, S: int, compute: Optional[torch.dtype] = None) -> Callable | None:
    """Bind ``fn`` to a call's lengths when it is a :class:`Rule`, its learned tensors widened to the
    call's ``compute`` dtype where given (:func:`~attend._ruletree.widened`); plain functions as is."""
    if isinstance(fn, Rule):
        fn = fn.bind(L, S)
        return widened(fn, compute) if compute is not None else fn
    return fn


def and_terms(rule) -> Iterator:
    """The terms of a rule that is an AND of rules (nested :class:`And` flatten)."""
    if rule is None:
        return
    if type(rule) is And:  # (exactly: a subclass may join its terms otherwise)
        for r in rule.mods:
            yield from and_terms(r)
    else:
        yield rule


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
