"""The kernels as PyTorch custom ops (``torch.ops.attend.triton_attention`` and
``triton_attention_backward``): ``torch.compile`` sees one opaque call with a fake-tensor rule
and autograd. Attention sinks (:class:`WithSinks`) correct the op's output in PyTorch.

Everything about the plan's arguments is derived from :class:`~.plan.Plan`'s fields: the ops'
schemas, the fakes, what autograd saves, and which inputs get a gradient (the fields marked
``grad``: the additive bias and the relative-position table).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor

from ..base import _logaddexp
from . import launch
from .plan import Plan

_FIELDS = dataclasses.fields(Plan)
_SCHEMA_TYPE = {"Optional[Tensor]": "Tensor?", "bool": "bool", "int": "int", "float": "float"}
NAMES = [f.name for f in _FIELDS]  # the plan's arguments, in op order
GRADS = [f.name for f in _FIELDS if f.metadata.get("grad")]  # the plan fields that get a gradient
_PLAN = ", ".join(f"{_SCHEMA_TYPE[f.type]} {f.name}" for f in _FIELDS)
_N = len(NAMES)
_TENSORS = [i for i, f in enumerate(_FIELDS) if f.type == "Optional[Tensor]"]  # saved for backward


def _save(ctx, tensors: tuple, fields: tuple) -> None:
    """Save ``tensors`` and the plan's tensor fields for backward (the others kept as values)."""
    ctx.save_for_backward(*tensors, *(fields[i] for i in _TENSORS))
    ctx.fields = tuple(None if i in _TENSORS else x for i, x in enumerate(fields))
    ctx.n_saved = len(tensors)


def _saved(ctx) -> tuple[tuple, tuple]:
    """(the tensors saved by :func:`_save`, the plan's fields)."""
    saved = ctx.saved_tensors
    fields = list(ctx.fields)
    for i, t in zip(_TENSORS, saved[ctx.n_saved:]):
        fields[i] = t
    return saved[:ctx.n_saved], tuple(fields)


def _plan(values) -> Plan:
    return Plan(**dict(zip(NAMES, values)))


def _forward(q, k, v, *rest):
    *fields, block_m, block_n = rest
    return launch.flash_forward(q, k, v, _plan(fields), block_m=block_m, block_n=block_n)


triton_attention = torch.library.custom_op(
    "attend::triton_attention", _forward, mutates_args=(),
    schema=f"(Tensor q, Tensor k, Tensor v, {_PLAN}, int block_m, int block_n) -> (Tensor, Tensor)")


@triton_attention.register_fake
def _(q, k, v, *rest):
    B, Hq, L, _ = q.shape
    return q.new_empty(B, Hq, L, v.shape[-1]), q.new_empty(B, Hq, L, dtype=torch.float32)


def _backward_impl(do, q, k, v, out, lse, *rest):
    fields, (block_m, block_n), wanted = rest[:_N], rest[_N:_N + 2], rest[_N + 2:]
    p = _plan(fields)
    grads = dict(zip(GRADS, wanted))
    dq, dk, dv, dbias, dtable = launch.flash_backward(do, q, k, v, out, lse, p, bias_grad=grads["bias"],
                                               table_grad=grads["table"], block_m=block_m, block_n=block_n)
    got = {"bias": dbias, "table": dtable}
    empty = q.new_empty(0, dtype=torch.float32)
    return (dq, dk, dv) + tuple(got[n] if got[n] is not None else empty.clone() for n in GRADS)


triton_attention_backward = torch.library.custom_op(
    "attend::triton_attention_backward", _backward_impl, mutates_args=(),
    schema=(f"(Tensor do, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, {_PLAN}, int block_m, int block_n, "
            + ", ".join(f"bool {n}_grad" for n in GRADS) + ") -> (Tensor, Tensor, Tensor"
            + ", Tensor" * len(GRADS) + ")"))


@triton_attention_backward.register_fake
def _(do, q, k, v, out, lse, *rest):
    B, Hq, L, _ = q.shape
    S = k.shape[2]
    fields, wanted = dict(zip(NAMES, rest[:_N])), rest[_N + 2:]
    grads = []
    for name, want in zip(GRADS, wanted):
        if not want:
            grads.append(q.new_empty(0, dtype=torch.float32))
            continue
        shape = (B, Hq, L, S) if name == "bias" else fields[name].shape  # dS for the bias: per score
        grads.append(q.new_empty(shape, dtype=torch.float32))
    # contiguous, as the real op allocates them (strides must match for compiled graphs)
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), *grads)


def _setup_context(ctx, inputs, output):
    _save(ctx, (*inputs[:3], *output), inputs[3:3 + _N])
    ctx.blocks = inputs[3 + _N:]


def grads_of(fields: dict, raw: tuple, wanted: tuple) -> dict:
    """The plan tensors' gradients (by name): a bias's summed over its broadcast dims, each cast
    to its tensor's dtype; None where not wanted."""
    out = {}
    for name, g, want in zip(GRADS, raw, wanted):
        if not want:
            out[name] = None
            continue
        t = fields[name]
        if name == "bias":
            dims = [d for d in range(4) if t.shape[d] == 1]
            g = g.sum(dim=dims, keepdim=True) if dims else g
        out[name] = g.to(t.dtype)
    return out


def backward_op(dout, q, k, v, out, lse, fields: tuple, blocks: tuple, needs) -> tuple:
    """Run the backward op: (dq, dk, dv, {field: gradient or None}); ``needs(name)`` says
    whether plan field ``name`` wants one."""
    named = dict(zip(NAMES, fields))
    wanted = tuple(named[n] is not None and needs(n) for n in GRADS)
    dq, dk, dv, *raw = torch.ops.attend.triton_attention_backward(dout, q, k, v, out, lse, *fields, *blocks, *wanted)
    return dq, dk, dv, grads_of(named, raw, wanted)


def _backward(ctx, dout, dlse):
    (q, k, v, out, lse), fields = _saved(ctx)
    need = ctx.needs_input_grad
    dq, dk, dv, g = backward_op(dout, q, k, v, out, lse, fields, ctx.blocks,
                                lambda n: need[3 + NAMES.index(n)])
    return (dq, dk, dv) + tuple(g.get(n) for n in NAMES) + (None, None)


torch.library.register_autograd("attend::triton_attention", _backward, setup_context=_setup_context)


def plan_values(p: Plan) -> tuple:
    """The plan as the ops' arguments (in :data:`NAMES` order)."""
    return tuple(getattr(p, n) for n in NAMES)


# ---- attention sinks: one more term in each row's softmax denominator ------------------------
_LOG2E = 1.4426950408889634


def sink_lse(lse: Tensor, sinks: Tensor, heads: Optional[Tensor] = None) -> Tensor:
    """log2(2^lse + 2^sink_h) for lse (B, h, r) in log2 units; rows with no key get the sink."""
    s2 = sinks.float() * _LOG2E
    if heads is not None:
        s2 = s2.index_select(0, heads.to(s2.device, torch.int64))
    return _logaddexp(lse, s2.view(1, -1, 1), torch.logaddexp2)


class WithSinks(torch.autograd.Function):
    """The fused kernels with attention sinks, without a kernel change.

    With a sink the probabilities are ``p' = exp(s - lse')``, ``lse' = log(e^lse + e^sink)``,
    and the output ``o' = o · e^(lse - lse')``. The backward's formulas hold unchanged for
    ``p'`` (the sink is a constant in ``d p'_j / d s_k``), so the kernel's backward, given
    ``o'`` and ``lse'``, gives the exact dQ, dK, dV (and the plan tensors' gradients); the
    sink's own gradient is ``-sum_rows p'_sink · (dO · o')``.

    ``apply(q, k, v, sinks, p, block_m, block_n, *grad_tensors)``: the plan fields that take
    a gradient (:data:`GRADS`) are passed again at the end so autograd sees them as inputs.
    """

    @staticmethod
    def forward(ctx, q, k, v, sinks, p, block_m, block_n, *grad_tensors):
        values = plan_values(p)
        out, lse = torch.ops.attend.triton_attention(q, k, v, *values, block_m, block_n)
        lse_s = sink_lse(lse, sinks)  # (B, Hq, L), log2 units
        out = (out.float() * torch.exp2(lse - lse_s).unsqueeze(-1)).to(out.dtype)  # (B, Hq, L, Ev)
        _save(ctx, (q, k, v, out, lse_s, sinks), values)
        ctx.blocks = (block_m, block_n)
        ctx.mark_non_differentiable(lse_s)
        return out, lse_s

    @staticmethod
    def backward(ctx, dout, dlse):
        (q, k, v, out, lse_s, sinks), fields = _saved(ctx)
        need = ctx.needs_input_grad
        dout = dout.contiguous()
        dq, dk, dv, g = backward_op(dout, q, k, v, out, lse_s, fields, ctx.blocks,
                                    lambda n: need[7 + GRADS.index(n)])
        gsinks = None
        if need[3]:
            delta = (dout.float() * out.float()).sum(-1)  # (B, Hq, L): dO · o'
            p_sink = torch.exp2(sinks.float().view(1, -1, 1) * _LOG2E - lse_s)  # (B, Hq, L)
            gsinks = (-(p_sink * delta).sum(dim=(0, 2))).to(sinks.dtype)
        return (dq, dk, dv, gsinks, None, None, None) + tuple(g[n] for n in GRADS)
