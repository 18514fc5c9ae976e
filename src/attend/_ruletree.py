"""Walking a rule's tree (combinations in ``mods``, wrappers holding rules in fields): the
tensors it holds that require grad, whether it is attend's own all the way down, and its
learned tensors widened to the call's compute dtype."""
from __future__ import annotations

import dataclasses

import torch

from ._rules import Rule


def rule_tensors(fn) -> list:
    """Tensors requiring grad that a rule holds, through combinations (``mods``) and wrappers
    (rules held in fields, e.g. :mod:`attend.distributed`'s)."""
    found: list = []

    def walk(x):
        if isinstance(x, torch.Tensor):
            if x.requires_grad and not any(x is y for y in found):
                found.append(x)
        elif isinstance(x, Rule):
            for f in dataclasses.fields(x):
                walk(getattr(x, f.name))
        elif isinstance(x, tuple):
            for m in x:
                walk(m)

    walk(fn)
    return found


def is_own(fn) -> bool:
    """Whether ``fn`` is attend's rule all the way down: no function of one's own inside a
    combination or wrapper (whose tensors could not be found for their gradients). A subclass of
    :class:`Rule` written elsewhere is one's own too: it may hold a tensor where the walk above
    does not look (a list, an attribute set in ``__post_init__``), and ``inductor`` trained it
    without that tensor's gradient, without a word."""
    if not isinstance(fn, Rule) or type(fn).__module__.split(".")[0] != "attend":
        return False
    for f in dataclasses.fields(fn):
        x = getattr(fn, f.name)
        if isinstance(x, tuple) and any(callable(m) and not is_own(m) for m in x):
            return False
        if callable(x) and not isinstance(x, torch.Tensor) and not is_own(x):
            return False
    return True


def widened(fn, dtype: torch.dtype):
    """``fn`` with each tensor that requires grad in attend's own rules (a learned relative-bias
    table) cast to ``dtype`` where that is wider, once per call (the cast is differentiable), so
    that the gradient contributions of every tile and pass are summed in ``dtype`` and rounded to
    the table's own dtype once. Blocked backends otherwise round each block's share (a bfloat16
    table on ``chunked``: shares from the log-sum-exp and output passes that cancel, each rounded
    to 8 bits, left a gradient 30x further off than eager's). Other rules are returned as they are."""
    if not torch.is_grad_enabled():
        return fn

    def widen(x):
        if isinstance(x, torch.Tensor):
            wider = x.requires_grad and x.is_floating_point() and torch.finfo(x.dtype).bits < torch.finfo(dtype).bits
            return x.to(dtype) if wider else x
        if isinstance(x, tuple):
            new = tuple(widen(m) for m in x)
            return x if all(a is b for a, b in zip(new, x)) else new
        if isinstance(x, Rule) and type(x).__module__.split(".")[0] == "attend":
            changes = {f.name: widen(getattr(x, f.name)) for f in dataclasses.fields(x) if f.init}
            changes = {k: v for k, v in changes.items() if v is not getattr(x, k)}
            return dataclasses.replace(x, **changes) if changes else x
        return x

    return widen(fn)
