"""One block of a sequence-parallel call: this rank's queries against one span of keys.

A block is an :class:`attend.backends.AttentionCall` whose rules sit at global positions
(:mod:`._rules`). The ring needs of it what no public backend call gives: the block's
normalised output *and* its log-sum-exp (to merge blocks), and its gradients given the
*global* output and log-sum-exp (``dS = P ∘ (dP − Δ)`` with ``P = exp(S − lse)`` and
``Δ = rowsum(dO ∘ O)`` of the whole row: each block's share of the exact gradient, with no
per-block state kept from the forward). Two engines give them:

- ``eager``: the scores of the block in one tensor (O(rows x keys) memory), autograd for the
  score function's and the rules' own gradients; any device, any dtype;
- ``inductor``: attend's compiled CPU tiles (:mod:`attend.backends.inductor`): memory
  O(tile), the same programs and backward as the ``inductor`` backend.

- ``sdpa``: PyTorch's fused CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``),
  which returns the log-sum-exp and whose backward takes the output and log-sum-exp it is
  given: for blocks of a dot-like score with no score modifier that a rule allows whole, or
  that sit on the causal diagonal (the blocks of plain and causal attention in the zigzag
  layout). Memory O(tile), as fast as single-process SDPA.

- ``triton``: attend's fused kernels (:mod:`attend.backends.triton`), the same ones as the
  ``triton`` backend: forward with its log-sum-exp, backward given the rows' global output and
  log-sum-exp. A block a rule allows whole runs with no mask and a block on the causal diagonal
  as causal; other blocks have their rules evaluated into a dense (rows x keys) mask. Dot-like
  scores, float16/bfloat16/float32; on a GPU, or on the CPU under Triton's interpreter (tests).

``auto`` takes ``sdpa`` for the blocks it fits (on the CPU), ``triton`` on a GPU where it can
run the block, else ``inductor`` where that backend can run the block and the block is worth
compiling (its ``min_work``), else ``eager``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import Tensor

from .. import backends as _backends
from ..backends.base import AttentionCall, compute_dtype, safe_lse
from ..backends.sdpa import positive_scale

ENGINES = ("auto", "eager", "inductor", "sdpa", "triton")
_LN2 = math.log(2.0)


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"backend must be one of {list(ENGINES)} for the blocks of a sequence-parallel call, "
                         f"got {engine!r}")
    return engine


def pick(engine: str, call: AttentionCall) -> str:
    """The engine for block ``call``: ``sdpa:full``, ``sdpa:causal``, ``triton``, ``inductor`` or ``eager``."""
    fused = _sdpa_kind(call)
    if engine == "triton" or (engine == "auto" and call.query.device.type == "cuda"):
        why = _triton_why(call)
        if not why:
            return "triton"
        if engine == "triton":
            raise _backends.UnsupportedCall(f"backend 'triton' cannot run this call's blocks: {'; '.join(why)}")
    if engine != "auto":
        if engine == "inductor":
            why = _inductor_why(call)
            if why:
                raise _backends.UnsupportedCall(f"backend 'inductor' cannot run this call's blocks: {'; '.join(why)}")
        if engine == "sdpa":
            if fused is None:
                raise _backends.UnsupportedCall("backend 'sdpa' computes blocks of a dot-like score without score_mod "
                                                "that a rule allows whole or that sit on the causal diagonal, on the CPU")
            return fused
        return engine
    if fused is not None:
        return fused
    ind = _backends.get("inductor")
    if _inductor_why(call) or ind.plan(call).work < ind.min_work:
        return "eager"
    return "inductor"


def _sdpa_kind(call: AttentionCall) -> Optional[str]:
    """``sdpa:full`` (no mask needed), ``sdpa:causal`` (the causal diagonal) or None."""
    if (call.query.device.type != "cpu" or call.score_mod is not None or call.mask is not None or call.bias is not None
            or not getattr(call.score, "dot_like", False) or call.query.dtype not in _FLASH_DTYPES
            or not call.query.shape[-1] == call.key.shape[-1] == call.Ev):  # (the fused kernel: one head size)
        return None
    return _shape_of_rule(call)


def _shape_of_rule(call: AttentionCall) -> Optional[str]:
    """``sdpa:full`` when the block's rule allows it whole, ``sdpa:causal`` on the causal diagonal, else None."""
    from .._rules import Causal
    from ._rules import Shifted

    rule = call.mask_mod
    if rule is None:
        return "sdpa:full"
    if not (isinstance(rule, Shifted) and type(rule.inner) is Causal):
        return None
    first = rule.q0 + rule.global_offset  # global key position of the block's first query
    if rule.k0 + call.S - 1 <= first:  # every key at or before every query: allowed whole
        return "sdpa:full"
    if rule.k0 == first and call.L == call.S:
        return "sdpa:causal"
    return None


_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _flash_operands(call: AttentionCall):
    a, b, factor = call.score.as_dot(call.query, call.key)
    a, scale = positive_scale(a, call.scale * factor)  # (the causal kernel's NaN at a scale <= 0)
    return a, call.expand_kv(b), call.expand_kv(call.value), scale


def _triton_why(call: AttentionCall) -> list:
    return _backends.get("triton").can_run(call)


def _triton_block(call: AttentionCall):
    """(the block as the kernels take it, its plan, a, b, scale): a rule that allows it whole
    dropped, the causal diagonal as ``causal``; a, b from the score's ``as_dot`` (in the graph)."""
    from ..backends.triton import plan as TP

    shape = _shape_of_rule(call) if call.score_mod is None else None
    if shape is not None:
        call = dataclasses.replace(call, mask_mod=None, causal=shape == "sdpa:causal")
    p = TP.plan(call)
    a, b, factor = call.score.as_dot(call.query, call.key)
    p.scale = call.scale * factor
    return call, p, a, b


def _inductor_why(call: AttentionCall) -> list:
    with torch.no_grad():  # the engine takes the gradients itself (see backward)
        return _backends.get("inductor").can_run(call)


def forward(engine: str, call: AttentionCall) -> tuple[Tensor, Tensor]:
    """(out (B, Hq, l, Ev) normalised over the block's keys, lse (B, Hq, l)), compute dtype, no graph."""
    cdt = compute_dtype(call.query.dtype)
    with torch.no_grad():
        if engine.startswith("sdpa"):
            a, b, v, scale = _flash_operands(call)
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                a.contiguous(), b.contiguous(), v.contiguous(), 0.0, engine == "sdpa:causal", scale=scale)
            return out.to(cdt), lse.to(cdt)
        if engine == "triton":
            from ..backends.triton import ops

            _, p, a, b = _triton_block(call)
            out, lse2 = torch.ops.attend.triton_attention(a, b, call.value, *ops.plan_values(p), 0, 0)
            return out.to(cdt), (lse2 * _LN2).to(cdt)  # its log-sum-exp is in log2 units
        if engine == "inductor":
            from ..backends import inductor as I

            ind = _backends.get("inductor")
            plan = ind.plan(call)
            a, b, v, w, spec, score = I._operands(call, plan, cdt)
            return I._Job(call, plan, spec, score).forward(a, b, v, w)
        s = call.scores(call.query.to(cdt), call.expand_kv(call.key).to(cdt), 0, 0)
        lse = safe_lse(s)
        p = torch.exp(s - _finite(lse).unsqueeze(-1))
        return p @ call.expand_kv(call.value).to(cdt), lse


def weights(call: AttentionCall, lse: Tensor) -> Tensor:
    """The block's weights ``exp(S - lse)`` (B, Hq, l, s) from the rows' global log-sum-exp."""
    cdt = compute_dtype(call.query.dtype)
    with torch.no_grad():
        s = call.scores(call.query.to(cdt), call.expand_kv(call.key).to(cdt), 0, 0)
        return torch.exp(s - _finite(lse).unsqueeze(-1))


def backward(engine: str, call: AttentionCall, out: Tensor, lse: Tensor, dout: Tensor,
             params: list) -> tuple[Tensor, Tensor, Tensor, list]:
    """The block's share of (dq, dk, dv, d params) given the rows' global ``out``, ``lse`` and
    ``dout``; dk, dv at the block's kv heads (grouped heads summed)."""
    cdt = compute_dtype(call.query.dtype)
    dt = call.query.dtype if engine == "triton" else cdt  # (the kernels take half precision as it is)
    q, k, v = (t.detach().to(dt).requires_grad_() for t in (call.query, call.key, call.value))
    leaf = dataclasses.replace(call, query=q, key=k, value=v)
    out, lse, dout = out.detach().to(cdt), lse.detach().to(cdt), dout.detach().to(cdt)
    with torch.enable_grad():
        if engine.startswith("sdpa"):
            grads = _sdpa_backward(leaf, out, lse, dout, params, engine == "sdpa:causal")
        elif engine == "triton":
            grads = _triton_backward(leaf, out, lse, dout, params)
        elif engine == "inductor":
            grads = _inductor_backward(leaf, out, lse, dout, params, cdt)
        else:
            s = leaf.scores(q, leaf.expand_kv(k), 0, 0)
            p = torch.exp(s - _finite(lse).unsqueeze(-1))
            dp = dout @ leaf.expand_kv(v).transpose(-1, -2)
            delta = (dout * out).sum(-1, keepdim=True)
            surrogate = (p * (dp - delta)).sum()  # its gradient is the attention gradient (module docstring)
            grads = torch.autograd.grad(surrogate, [q, k, v] + list(params), allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, [q, k, v] + list(params))]
    return grads[0], grads[1], grads[2], grads[3:]


def _sdpa_backward(call: AttentionCall, out, lse, dout, params, causal: bool):
    """The fused kernel's backward, given the rows' *global* output and log-sum-exp: its
    ``P = exp(S·scale - lse)`` and ``Δ = rowsum(dO ∘ O)`` are then the whole row's."""
    a, b, v, scale = _flash_operands(call)  # in the graph of q, k, v (and a General score's weight)
    dt = a.dtype
    da, db, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        dout.to(dt).contiguous(), a.detach().contiguous(), b.detach().contiguous(), v.detach().contiguous(),
        out.to(dt).contiguous(), lse.float().contiguous() if dt != torch.float64 else lse.contiguous(), 0.0, causal,
        scale=scale)
    leaves = [call.query, call.key, call.value] + list(params)
    return list(torch.autograd.grad([a, b, v], leaves, [da, db, dv], allow_unused=True))


def _triton_backward(call: AttentionCall, out, lse, dout, params):
    """The kernels' backward given the rows' global output and log-sum-exp (in log2 units)."""
    from ..backends.triton import ops

    _, p, a, b = _triton_block(call)  # a, b in the graph of q, k (and a General score's weight)
    dt = a.dtype
    da, db, dv, _ = ops.backward_op(dout.to(dt).contiguous(), a.detach(), b.detach(), call.value.detach(),
                                    out.to(dt).contiguous(), (lse.float() / _LN2).contiguous(),
                                    ops.plan_values(p), (0, 0), lambda name: False)
    leaves = [call.query, call.key, call.value] + list(params)
    return list(torch.autograd.grad([a, b, call.value], leaves, [da, db, dv], allow_unused=True))


def _inductor_backward(call: AttentionCall, out, lse, dout, params, cdt):
    from ..backends import inductor as I

    ind = _backends.get("inductor")
    plan = ind.plan(call)
    a, b, v, w, spec, score = I._operands(call, plan, cdt)  # in the graph of q, k, v and a score's weights
    job = I._Job(call, plan, spec, score)
    extras = I._grad_tensors(call)
    da, db, dv, dw, dx = job.backward(a.detach(), b.detach(), v.detach(), w.detach() if w is not None else None,
                                      out, lse, dout, None, extras)
    roots, seeds = [a, b, v], [da, db, dv]
    if w is not None:
        roots.append(w)
        seeds.append(dw)
    leaves = [call.query, call.key, call.value] + [p for p in params if not any(p is x for x in extras)]
    got = torch.autograd.grad(roots, leaves, seeds, allow_unused=True)
    by_id = {id(x): g for x, g in zip(leaves, got)}
    for x, g in zip(extras, dx):
        by_id[id(x)] = g if by_id.get(id(x)) is None else by_id[id(x)] + g
    return [by_id.get(id(x)) for x in [call.query, call.key, call.value] + list(params)]


def _finite(lse: Tensor) -> Tensor:
    return torch.where(lse == -math.inf, torch.zeros_like(lse), lse)
