"""``eager``: the readable reference backend. It materialises the whole score matrix.

Soft attention (seed 000): for each query, a weighted average of the values, with
weights from a softmax over the scores of the query against every key::

    s_ij = scale * score(q_i, k_j)  (+ score_mod, + bias; -inf where masked)
    p_ij = exp(s_ij) / sum_j' exp(s_ij')       (a row with no finite s_ij: p_i = 0)
                                              (with sinks: + exp(sink_h) in the denominator)
    o_i  = sum_j p_ij v_j

Hard attention is the non-differentiable contrast: ``o_i = v_{argmax_j s_ij}``;
``hard="straight_through"`` uses that value forward and the soft gradient backward.
16-bit inputs are computed in float32 and the result cast back.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import AttentionCall, Backend, compute_dtype, safe_softmax


class Eager(Backend):
    """The reference: every score function, mask, modifier, hard attention and dropout.

    ``auto`` skips it when the score matrix would exceed ``auto_limit_bytes`` (the
    memory-bounded ``chunked`` backend runs those calls instead), and for calls without
    weights from the sizes where ``chunked`` measured faster (``chunked_from_infer`` /
    ``chunked_from_train``, in L·S). ``upcast=False``
    computes 16-bit inputs in their own dtype (the tests' "eager in the test dtype"
    baseline; fp16 scores may then overflow).
    """

    name = "eager"

    def __init__(self, *, auto_limit_bytes: int = 1 << 28, upcast: bool = True,
                 chunked_from_infer: int = 512 * 512, chunked_from_train: int = 2048 * 2048):
        self.auto_limit_bytes = auto_limit_bytes
        self.upcast = upcast
        self.chunked_from_infer = chunked_from_infer
        self.chunked_from_train = chunked_from_train

    def auto_skip(self, call: AttentionCall) -> list[str]:
        itemsize = torch.empty((), dtype=compute_dtype(call.query.dtype)).element_size()
        need = call.B * call.Hq * call.L * call.S * itemsize
        # an additive score materialises (B, H, L, S, hidden) before reducing it
        need *= getattr(call.score, "hidden_dim", 1)
        if need > self.auto_limit_bytes:
            return [f"would materialise {need / 2**20:.0f} MiB of scores (auto limit {self.auto_limit_bytes / 2**20:.0f} MiB)"]
        # Measured on CPU (benchmarks/results/cpu-backends.md): chunked's single online-softmax
        # pass beats eager's separate passes for inference from L·S = 512², and with gradients
        # from L·S = 2048², where eager's (L, S) tensors no longer fit in cache.
        threshold = self.chunked_from_train if call.needs_grad else self.chunked_from_infer
        if not call.return_weights and call.L * call.S >= threshold:
            return [f"chunked is faster from L·S = {threshold} {'with gradients' if call.needs_grad else 'for inference'}"]
        return []

    def run(self, call: AttentionCall) -> tuple[Tensor, Optional[Tensor]]:
        dtype = call.query.dtype
        cdt = compute_dtype(dtype) if self.upcast else dtype
        # contiguous: results must not depend on the caller's memory layout (BLAS picks
        # kernels by stride), so a transposed or expanded input gives the same bits
        q = call.query.to(cdt).contiguous()  # (B, Hq, L, E)
        k = call.expand_kv(call.key).to(cdt).contiguous()  # (B, Hq, S, Ek)
        v = call.expand_kv(call.value).to(cdt).contiguous()  # (B, Hq, S, Ev)
        s = call.scores(q, k, 0, 0)  # (B, Hq, L, S)
        p, _ = safe_softmax(s, call.sinks)  # (B, Hq, L, S)
        weights = p
        if call.hard:
            alive = (p.sum(dim=-1, keepdim=True) > 0).to(cdt)  # (B, Hq, L, 1)
            onehot = F.one_hot(s.argmax(dim=-1), s.shape[-1]).to(cdt) * alive  # (B, Hq, L, S)
            weights = onehot
            # straight-through: the value of the one-hot forward, the gradient of the softmax
            p = onehot if call.hard is True else onehot + (p - p.detach())
        if call.dropout_p > 0:
            p = F.dropout(p, call.dropout_p, training=True)
        out = torch.matmul(p, v)  # (B, Hq, L, Ev)
        return out.to(dtype), (weights.to(dtype) if call.return_weights else None)
