"""The block programs of the ``inductor`` backend, and the cache of their compiled forms.

A *block* is a tile of query rows ``i`` against a contiguous span of keys ``j``. Each
program below is plain PyTorch on one block; ``torch.compile`` (inductor's C++ code
generation) turns it into the library matrix products with the elementwise work around
them (score function, scale, score_mod, bias, mask rules, exponent, row sums) fused into
loops over the block, so a score modifier costs a few instructions per score rather than
one pass over memory per operation.

- :func:`forward` gives the block's output normalised over its keys and its
  log-sum-exp (``-inf`` for rows with no key);
- :func:`probs` gives ``P = exp(S - lse)`` from a saved log-sum-exp (the weights);
- :func:`surrogate` gives ``sum(P ∘ (dO Vᵀ - Δ))`` with ``lse``, ``dO`` and
  ``Δ = rowsum(dO ∘ O)`` held fixed. Its gradient *is* the attention gradient of the block:
  with respect to the scores it is ``P ∘ (dP - Δ)`` (FlashAttention-2's ``dS``), with
  respect to ``V`` it is ``Pᵀ dO``, and through the scores autograd takes the score
  function's and the score modifier's own gradients on this block only. Compiled, its
  forward does the two recomputing matrix products and its backward the other three.

Exponents below ``log(tiny)`` of the dtype (-87.3 in float32) are set to exactly 0 rather
than left to produce subnormal numbers: a term that small is below the precision of any
row's sum, and subnormal operands made the matrix products after ALiBi 2-3x slower on this
CPU (``shared/docs/CPU-PERF.md``). NaN still propagates.

Compiled programs are kept per *program key* (the call's structure: kinds of score,
modifier and rules, dtype, which tensors are present), each as its own code object, so one
key's shapes never count against another key's recompile limit. A tile's shape is fixed per
call (rows, head count, features; the key dimension is marked dynamic where chunk widths
vary), but its strides follow the sequence lengths: a new length compiles the program once
more (about a second once inductor's disk cache holds the code). Inductor keeps what it
compiles on disk (its FX graph cache, on by default), so a new process pays tracing, not
code generation, for a program it has compiled before.
"""
from __future__ import annotations

import math
import shutil
import threading
import time
import types
from functools import lru_cache
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .._rules import Softcap


class Spec(NamedTuple):
    """What a program computes (the static part; tensors are arguments)."""

    kind: str  # "dot": S = a bᵀ; "additive": S = w · tanh(a_i + b_j); "score": S = score(a, b)
    scale: float
    causal: bool
    window: Optional[tuple]  # (left, right), either None for unbounded
    offset: int  # S - L: query i sits at key position i + offset
    floor: float  # exponents below this are flushed to 0 (log of the dtype's tiny)


def scores(sp: Spec, a, b, w, i, j, hb, bb, score, score_mod, mask_mod, bias, mask) -> Tensor:
    """The block's final scores (B, H, l, s); ``-inf`` where a rule or mask forbids."""
    if sp.kind == "dot":
        s = torch.matmul(a, b.transpose(-1, -2))
    elif sp.kind == "additive":  # vᵀ tanh(W_q q + W_k k + c), with tanh through exp (fused by inductor)
        x = a.unsqueeze(-2) + b.unsqueeze(-3)  # (B, H, l, s, hidden): never stored, a loop of the reduction
        s = (_tanh(x) * w).sum(-1)
    else:
        s = score(a, b).to(a.dtype)
    if sp.scale != 1.0:
        s = s * sp.scale
    if type(score_mod) is Softcap:  # cap·tanh(s/cap), its tanh through exp as below (exactly: a subclass may score differently)
        s = score_mod.cap * _tanh(s / score_mod.cap)
    elif score_mod is not None:
        s = score_mod(s, bb, hb, i, j).to(a.dtype)
    if bias is not None:
        s = s + bias.to(a.dtype)
    keep = None
    if sp.causal:
        keep = j <= i + sp.offset
    if sp.window is not None:
        left, right = sp.window
        if left is not None:
            keep = _and(keep, j >= i + sp.offset - left)
        if right is not None:
            keep = _and(keep, j <= i + sp.offset + right)
    if mask is not None:
        keep = _and(keep, mask)
    if mask_mod is not None:
        keep = _and(keep, mask_mod(bb, hb, i, j))
    if keep is not None:
        s = torch.where(keep, s, -math.inf)
    return s


def _tanh(x: Tensor) -> Tensor:
    """tanh(x) = 1 - 2 / (exp(2x) + 1): inductor vectorises exp well and its own tanh less so
    (measured here: ~4x fewer elements per second). Exact at ±inf; near 0 the absolute error is
    a few units of the dtype's epsilon. Clamped to [-20, 20] first (tanh(20) rounds to 1 in
    float64): past ~44 exp(2x) overflows to inf and its backward gives 0·inf = NaN, even at
    positions a mask removes later."""
    x = x.clamp(-20.0, 20.0)
    return 1.0 - 2.0 / (torch.exp(2.0 * x) + 1.0)


def _and(a, b):
    return b if a is None else a & b


def _exp(x: Tensor, floor: float) -> Tensor:
    """exp(x), exactly 0 below ``floor`` (and for -inf); NaN stays NaN."""
    return torch.where(x < floor, 0.0, torch.exp(x))


def forward(sp: Spec, a, b, v, w, i, j, hb, bb, score, score_mod, mask_mod, bias, mask):
    """(out (B, H, l, Ev) normalised over this block's keys, lse (B, H, l))."""
    s = scores(sp, a, b, w, i, j, hb, bb, score, score_mod, mask_mod, bias, mask)
    m = s.amax(-1, keepdim=True)
    m = torch.where(m == -math.inf, 0.0, m)
    p = _exp(s - m, sp.floor)
    total = p.sum(-1, keepdim=True)
    out = torch.matmul(p.to(v.dtype), v) / torch.where(total == 0, 1.0, total)
    lse = torch.where(total == 0, -math.inf, m + torch.log(total))
    return out, lse.squeeze(-1)


def probs(sp: Spec, a, b, w, i, j, hb, bb, score, score_mod, mask_mod, bias, mask, lse):
    """P = exp(S - lse) for the block (B, H, l, s), from the rows' final log-sum-exp."""
    s = scores(sp, a, b, w, i, j, hb, bb, score, score_mod, mask_mod, bias, mask)
    return _exp(s - torch.where(lse == -math.inf, 0.0, lse).unsqueeze(-1), sp.floor)


def surrogate(sp: Spec, a, b, v, w, i, j, hb, bb, score, score_mod, mask_mod, bias, mask, lse, dout, delta):
    """A scalar whose gradient is the block's attention gradient (see the module's docstring)."""
    p = probs(sp, a, b, w, i, j, hb, bb, score, score_mod, mask_mod, bias, mask, lse)
    dp = torch.matmul(dout, v.transpose(-1, -2))  # (B, H, l, s)
    return (p * (dp - delta.unsqueeze(-1))).sum()


# ---- the compiled programs ----------------------------------------------------------------
_LOCK = threading.Lock()
_COMPILED: dict[tuple, Callable] = {}
#: program keys whose compiled form has run in this process, with the seconds the first call took
FIRST_CALL: dict[tuple, float] = {}
_SOURCES = {"forward": forward, "probs": probs, "surrogate": surrogate}


def compiled(name: str, key: tuple, source: Optional[Callable] = None) -> Callable:
    """The compiled program ``name`` (one of this module's, or ``source``) for ``key``, made
    once per process as its own code object."""
    full = (name,) + key
    with _LOCK:
        fn = _COMPILED.get(full)
        if fn is None:
            src = source or _SOURCES[name]
            code = src.__code__.replace(co_name=f"{src.__name__}_{len(_COMPILED)}")
            fresh = types.FunctionType(code, src.__globals__, code.co_name, src.__defaults__, src.__closure__)
            fn = _COMPILED[full] = _timed(full, torch.compile(fresh, dynamic=None))
    return fn


#: compiled versions one program may keep (dynamo's default, 8, is per code object; each new
#: sequence length changes the tiles' strides and so compiles once more; past the limit dynamo
#: would run the program uncompiled, correct but several times slower, without a word)
RECOMPILE_LIMIT = 64


def _timed(full: tuple, fn: Callable) -> Callable:
    def call(*args):
        cfg = torch._dynamo.config  # set and restored by hand: config.patch costs ~4x more per call
        old = cfg.recompile_limit
        cfg.recompile_limit = max(old, RECOMPILE_LIMIT)
        try:
            if full in FIRST_CALL:
                return fn(*args)
            t = time.perf_counter()
            out = fn(*args)
        finally:
            cfg.recompile_limit = old
        FIRST_CALL[full] = time.perf_counter() - t
        return out

    return call


def no_double_backward(what: str) -> None:
    """Raise in an autograd function's backward run with ``create_graph=True``. (``once_differentiable``
    raises only when the incoming gradient itself needs grad: for a loss linear in the output it
    returns gradients with no graph, and a penalty built on them silently loses its terms.)"""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{what} has no double backward (create_graph=True): its backward builds no graph "
                           f"of the gradients; use backend='eager' for higher derivatives")


def is_compiled(key: tuple, name: str = "forward") -> bool:
    """Whether this process has already compiled (and run) program ``name`` for ``key``."""
    return (name,) + key in FIRST_CALL


def merge(o1: Tensor, l1: Tensor, o2: Tensor, l2: Tensor) -> tuple[Tensor, Tensor]:
    """Two chunks' (normalised output, lse) -> those of their union; rows empty in both stay
    (0, -inf)."""
    m = torch.maximum(l1, l2)
    m = torch.where(m == -math.inf, 0.0, m)
    e1, e2 = torch.exp(l1 - m), torch.exp(l2 - m)
    t = e1 + e2
    safe = torch.where(t == 0, 1.0, t)
    out = (o1 * e1.unsqueeze(-1) + o2 * e2.unsqueeze(-1)) / safe.unsqueeze(-1)
    return out, torch.where(t == 0, -math.inf, m + torch.log(safe))


def merge_into(o1: Tensor, l1: Tensor, o2: Tensor, l2: Tensor) -> None:
    """Two blocks' (normalised output, lse) merged in place: ``o1``, ``l1`` (views of the
    running output and log-sum-exp) become their union's (rows empty in both stay (0, -inf));
    ``o2`` is overwritten. Only row-sized temporaries: a block's merge
    allocates no (rows, features) tensor."""
    m = torch.maximum(l1, l2)
    m = torch.where(m == -math.inf, torch.zeros_like(m), m)
    e1, e2 = torch.exp(l1 - m), torch.exp(l2 - m)
    t = e1 + e2
    safe = torch.where(t == 0, torch.ones_like(t), t)
    o1.mul_((e1 / safe).unsqueeze(-1)).add_(o2.mul_((e2 / safe).unsqueeze(-1)))
    l1.copy_(torch.where(t == 0, torch.full_like(t, -math.inf), m + torch.log(safe)))


@lru_cache(maxsize=1)
def no_compiler() -> str:
    """Why torch.compile cannot build CPU code here ('' when it can)."""
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler (g++, c++ or clang++) on PATH for torch.compile's CPU code"
    return ""
