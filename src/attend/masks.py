"""Mask rules: ``mask_mod(b, h, i, j) -> bool``, True = query ``i`` may attend key ``j``.

One convention everywhere in attend: **True = may attend** (as SDPA and Keras; the
opposite of ``torch.nn.MultiheadAttention``'s ``key_padding_mask``). Pass a rule as
``attend.attention(..., mask=rule)``; rules combine with :func:`and_masks` /
:func:`or_masks`, become dense with :func:`to_dense` and print with :func:`render`.

Rules are called with broadcastable index tensors (see :mod:`attend._rules`), so any
function of tensors works as a rule. The rules below relate positions the way
``causal=True`` does: with ``L`` queries and ``S`` keys, the last query lines up with
the last key, so query ``i`` sits at key position ``i + S - L``. ``causal()`` for
``L = 2, S = 4``::

    1 1 1 0
    1 1 1 1
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from . import _check
from ._rule_prep import bind
from ._rules import And, Causal, Chunked, Document, KeyMask, Or, Padding, PrefixLM, Rule, Window

__all__ = [
    "causal",
    "sliding_window",
    "chunked",
    "padding",
    "key_mask",
    "document",
    "varlen",
    "prefix_lm",
    "and_masks",
    "or_masks",
    "to_dense",
    "render",
    "normalize_window",
]

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def normalize_window(window, *, arg: str = "window") -> Optional[tuple[Optional[int], Optional[int]]]:
    """``w`` -> ``(w, w)``; ``(left, right)`` with ints ≥ 0 or None (= unbounded) -> itself."""
    if window is None:
        return None

    def side(x, which):
        if x is None:
            return None
        return _check.integer(x, f"{arg} {which}", low=0, expected="an int >= 0 or None")

    if isinstance(window, (tuple, list)):
        if len(window) != 2:
            raise ValueError(f"{arg} must be an int >= 0 or a (left, right) pair, got {window!r}")
        return side(window[0], "left"), side(window[1], "right")
    if not _check.is_int(window):
        raise _check.fail(arg, "an int >= 0 or a (left, right) pair", window, TypeError)
    return side(window, "size"), side(window, "size")


def causal() -> Rule:
    """Key ``j`` is allowed when ``j <= i + S - L`` (bottom-right, as ``causal=True``).

    The last query lines up with the last key. ``L = 2, S = 4`` (decoding with a cache:
    earlier keys are all visible) and ``L = 4, S = 2`` (more queries than keys: the first
    ``L - S`` rows have no key at all, and their output is exactly zero)::

        1 1 1 0        0 0
        1 1 1 1        0 0
                       1 0
                       1 1
    """
    return Causal()


def sliding_window(window) -> Rule:
    """``window=w`` allows keys within ``w`` positions either side; ``(left, right)`` each side.

    ``None`` for a side leaves it unbounded: ``(w, 0)`` is a causal window of ``w + 1`` keys.
    """
    left, right = normalize_window(window)
    return Window(left, right)


def chunked(size: int) -> Rule:
    """Attention only within fixed chunks of ``size`` positions (Llama 4's chunked local
    attention): positions ``0..size-1`` form one chunk, ``size..2*size-1`` the next, and a
    query sees only the keys of its own chunk. With ``causal=True`` (or ``and_masks`` with
    :func:`causal`) it is causal within each chunk. ``chunked(2)`` for ``L = S = 4``::

        1 1 0 0
        1 1 0 0
        0 0 1 1
        0 0 1 1

    Positions are aligned as ``causal`` aligns them (query ``i`` at key position
    ``i + S - L``); a query whose position is negative (``L > S``) sees no key.
    """
    return Chunked(_check.integer(size, "size", low=1))


def padding(lengths) -> Rule:
    """Keys at positions ``>= lengths[b]`` are padding: masked for every query. ``lengths`` (B,)."""
    lengths = torch.as_tensor(lengths)
    if lengths.ndim != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be a 1-D integer tensor (B,), got dtype {lengths.dtype} shape {tuple(lengths.shape)}")
    if bool((lengths < 0).any()):
        raise ValueError(f"lengths must be >= 0, got {lengths.tolist()}")
    return Padding(lengths)


def key_mask(valid: Tensor) -> Rule:
    """Keys where ``valid[b, j]`` is False are masked (``valid`` (B, S), True = real token)."""
    if not isinstance(valid, Tensor) or valid.dtype != torch.bool or valid.ndim != 2:
        got = f"{valid.dtype} {tuple(valid.shape)}" if isinstance(valid, Tensor) else type(valid).__name__
        raise ValueError(f"key_mask must be a boolean tensor (B, S) with True = real token, got {got}")
    return KeyMask(valid)


def document(ids) -> Rule:
    """Packed sequences: a query sees only keys of its own document. ``ids`` (S,) or (B, S).

    ``ids[..., t]`` is the document of position ``t`` (e.g. ``[0, 0, 0, 1, 1, 2]``). Combine
    with :func:`causal` for packed causal language modelling. Query ``i`` sits at key
    position ``i + S - L``; with ``L > S`` the rows before position 0 count as position 0's
    document (add :func:`causal` to give them no key).
    """
    ids = torch.as_tensor(ids)
    if ids.ndim not in (1, 2) or ids.dtype.is_floating_point:
        raise ValueError(f"ids must be an integer tensor (S,) or (B, S), got dtype {ids.dtype} shape {tuple(ids.shape)}")
    return Document(ids)


def varlen(cu_seqlens) -> Rule:
    """Packed variable-length sequences given by cumulative lengths (FlashAttention's ``cu_seqlens``).

    ``cu_seqlens`` = ``[0, n0, n0 + n1, ..., S]``: sequence ``d`` holds positions
    ``cu_seqlens[d]:cu_seqlens[d + 1]``. The same rule as :func:`document` with those ids.
    """
    cu = torch.as_tensor(cu_seqlens)
    if cu.ndim != 1 or cu.numel() < 2 or cu.dtype.is_floating_point or cu.dtype == torch.bool:
        raise ValueError(f"cu_seqlens must be a 1-D integer sequence [0, n0, n0 + n1, ...], got {cu_seqlens!r}")
    if int(cu[0]) != 0 or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"cu_seqlens must start at 0 and never decrease, got {cu.tolist()}")
    lengths = cu[1:] - cu[:-1]
    return Document(torch.repeat_interleave(torch.arange(lengths.numel()), lengths))


def prefix_lm(prefix_len) -> Rule:
    """Bidirectional over the first ``prefix_len`` keys, causal after (T5/UniLM prefix LM).

    ``prefix_len`` is an int or a (B,) tensor.
    """
    if isinstance(prefix_len, Tensor):
        if prefix_len.ndim != 1 or prefix_len.dtype.is_floating_point or prefix_len.is_complex() \
                or prefix_len.dtype == torch.bool:
            raise ValueError(f"prefix_len must be an int or a 1-D integer tensor (B,), got {prefix_len.dtype} "
                             f"{tuple(prefix_len.shape)}")
        if prefix_len.numel() and bool((prefix_len < 0).any()):
            raise ValueError(f"prefix_len must be >= 0, got {prefix_len.tolist()}")
    else:
        _check.integer(prefix_len, "prefix_len", low=0, expected="an int >= 0 or a (B,) tensor")
    return PrefixLM(prefix_len)


def and_masks(*mods: MaskMod) -> Rule:
    """A rule that allows (b, h, i, j) when every one of ``mods`` does."""
    _check_mods(mods, "and_masks")
    return And(tuple(mods))


def or_masks(*mods: MaskMod) -> Rule:
    """A rule that allows (b, h, i, j) when any of ``mods`` does."""
    _check_mods(mods, "or_masks")
    return Or(tuple(mods))


def _check_mods(mods, fn: str) -> None:
    from ._rule_prep import check_rule

    if not mods:
        raise ValueError(f"{fn} needs at least one mask_mod")
    for k, m in enumerate(mods):
        if not callable(m):
            raise TypeError(f"{fn} takes mask_mod functions (b, h, i, j) -> bool, got {type(m).__name__}")
        if not isinstance(m, Rule):  # a rule's sizes are checked against the call that uses it
            check_rule(m, f"{fn} argument {k}", "mask", (0, 0, 0, 0))
        elif m.role != "mask":
            raise TypeError(f"{fn} argument {k} is {m!r}, a score modifier, not a mask rule")


def to_dense(mask_mod: MaskMod, B: int, H: int, L: int, S: int, *, device=None) -> Tensor:
    """Evaluate a rule on every (b, h, i, j): a boolean tensor (B, H, L, S), True = may attend.

    The rule is checked as :func:`attend.attention` checks it (an uncalled factory, a score
    modifier, a rule whose own sizes do not fit ``B``, ``H``, ``L``, ``S`` are refused)."""
    from ._rule_prep import check_rule

    check_rule(mask_mod, "mask_mod", "mask", (B, H, L, S))
    fn = bind(mask_mod, L, S)
    b = torch.arange(B, device=device).view(-1, 1, 1, 1)
    h = torch.arange(H, device=device).view(1, -1, 1, 1)
    i = torch.arange(L, device=device).view(1, 1, -1, 1)
    j = torch.arange(S, device=device).view(1, 1, 1, -1)
    out = fn(b, h, i, j)
    if not isinstance(out, Tensor) or out.dtype != torch.bool:
        got = out.dtype if isinstance(out, Tensor) else type(out).__name__
        raise TypeError(f"mask_mod must return a boolean tensor, got {got}")
    return out.expand(B, H, L, S)


def render(mask, L: Optional[int] = None, S: Optional[int] = None, *, b: int = 0, h: int = 0,
           allowed: str = "1", masked: str = "0") -> str:
    """Text picture of one (b, h) slice of a mask: rows are queries, columns keys.

    ``mask`` is a rule (then give ``L`` and ``S``) or a boolean tensor (..., L, S).
    """
    if isinstance(mask, Tensor):
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean to render, got {mask.dtype}")
        m = mask
        while m.ndim > 4:
            m = m[0]
        if m.ndim == 4:
            m = m[b if m.shape[0] > 1 else 0]  # (H, L, S)
        if m.ndim == 3:
            m = m[h if m.shape[0] > 1 else 0]  # (L, S)
    elif callable(mask):
        from ._rule_prep import check_rule

        if L is None or S is None:
            raise ValueError("render needs L and S to draw a mask rule")
        check_rule(mask, "mask", "mask", None)  # its sizes are the caller's: only sequence b is drawn
        for name, x in (("b", b), ("h", h)):
            _check.integer(x, name, low=0)
        fn = bind(mask, L, S)
        try:
            out = fn(torch.tensor(b).view(1, 1, 1, 1), torch.tensor(h).view(1, 1, 1, 1),
                     torch.arange(L).view(1, 1, -1, 1), torch.arange(S).view(1, 1, 1, -1))
        except IndexError as e:  # (a rule's tensors hold its sequences and heads: b or h past them)
            raise ValueError(f"b={b}, h={h}: the rule has no such sequence or head to draw ({e})") from None
        if not isinstance(out, Tensor) or out.dtype != torch.bool:
            got = out.dtype if isinstance(out, Tensor) else type(out).__name__
            raise TypeError(f"mask must return a boolean tensor, got {got}")
        m = out.expand(1, 1, L, S)[0, 0]
    else:
        raise TypeError(f"mask must be a boolean tensor or a mask rule, got {type(mask).__name__}")
    return "\n".join(" ".join(allowed if x else masked for x in row) for row in m.tolist())
