"""What the ``inductor`` backend reads off a call: its program key, the tensors whose gradients its
tiles must return, whether it holds functions of one's own, and when SDPA with a dense mask is faster."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._rule_prep import and_terms
from .._rules import Rule
from .._ruletree import is_own, rule_tensors
from .base import AttentionCall


def score_kind(call: AttentionCall) -> tuple[str, int]:
    score = call.score
    if getattr(score, "dot_like", False):
        return "dot", 0
    additive = getattr(score, "as_additive", None)
    if additive is not None:
        return "additive", int(getattr(score, "hidden_dim"))
    return "score", 0


def sdpa_share(call: AttentionCall, every_chunk_full: bool = False) -> float:
    """Above this share of (query, key) pairs kept, SDPA with the rules as a dense mask beats the
    tiles (benchmarks/results/cpu.md, fwd+bwd, where inductor cost 1.5-2.4x SDPA per kept pair):
    at 512 x 512, 0.5 kept (chunks of 256) ran 1.32x against SDPA's 1.09x; at 2048 and 4096, where
    SDPA also reads a larger dense mask, 0.53 kept (prefix-LM) ran 0.91x and 0.82x of SDPA's time.
    Where every chunk runs without the rules (``every_chunk_full``), the larger share holds at every
    size: at 512, chunks of 256 (0.5 kept, all full) then ran 0.84x against SDPA's 1.20x
    (benchmarks/results/cpu-run8.md, fwd+bwd)."""
    return 0.4 if call.L * call.S <= 1024 * 1024 and not every_chunk_full else 0.75


def program_key(call: AttentionCall, kind: str) -> tuple:
    """The program key: what makes one compiled program differ from another."""

    def what(fn):
        if fn is None:
            return None
        if isinstance(fn, Rule):
            def term(r):  # a wrapper (attend.distributed's) names itself and what it wraps
                own = getattr(r, "program_key", None)
                return own() if own is not None else type(r).__name__

            return tuple(term(r) for r in and_terms(fn)) if fn.role == "mask" else term(fn)
        fn = getattr(fn, "fn", fn)  # a custom score's wrapper: the user's function
        return getattr(fn, "__code__", None) or type(fn)  # not id(): a lambda remade per call is one program

    return (kind, str(call.query.dtype), call.causal, call.window is not None, what(call.score_mod),
            what(call.mask_mod), call.bias is not None, call.mask is not None,
            what(call.score) if kind == "score" else None)


def grad_tensors(call: AttentionCall) -> list[Tensor]:
    """Tensors the tile programs read that require grad, besides the operands: the fields of
    attend's score_mod and mask rules (a learned relative-bias table), through combinations and
    wrappers. Functions of one's own do not get here with autograd on (``can_run`` refuses them)."""
    found: list[Tensor] = []
    for t in rule_tensors(call.score_mod) + rule_tensors(call.mask_mod):
        if not any(t is x for x in found):
            found.append(t)
    return found


def user_functions(call: AttentionCall) -> bool:
    """A score function (not dot-like or additive), score_mod or mask_mod that is not attend's
    own all the way down."""
    user = [f for f in (call.score_mod, call.mask_mod) if f is not None and not is_own(f)]
    return bool(user) or score_kind(call)[0] == "score"


def keys_apart(t: Tensor, tiles: list) -> Tensor:
    """``t`` (B, H, S, E) as a view of a buffer one key longer where a plan of varied chunk widths
    (a dynamic key dimension) has a chunk of all S keys, so that no chunk is a contiguous tensor:
    dynamo guards the first chunk's strides against its width, and a whole chunk after a part of
    one (or before) would compile each program again. Costs one copy of ``t``: S is at most a
    chunk here."""
    S = t.shape[2]
    if any(j0 == 0 and j1 == S for _, _, _, chunks in tiles for j0, j1, _ in chunks):
        return F.pad(t, (0, 0, 0, 1))[:, :, :S]
    return t


def tile_dout(dout: Tensor, i0: int, i1: int, skip: int) -> Tensor:
    """Rows ``i0:i1`` of the output's gradient for a backward tile: a copy where the tile's first
    ``skip`` rows (done by the tile before) are to be zeroed, and a dense dO made contiguous
    otherwise, so that every tile hands the program the copy's strides (one compiled program,
    not one per layout). An expanded dO (``out.sum()``) stays as it is: the program compiled for it
    ran soft-capping's backward ~5% faster at (1, 8, 2048, 64)."""
    do = dout[:, :, i0:i1]
    if skip:
        return do.clone(memory_format=torch.contiguous_format)
    return do if 0 in do.stride() else do.contiguous()
