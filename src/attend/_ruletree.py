"""Walking a rule's tree (combinations in ``mods``, wrappers holding rules in fields): the
tensors it holds that require grad, and whether it is attend's own all the way down."""
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
