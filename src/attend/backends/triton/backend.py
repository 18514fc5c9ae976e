"""``triton``: fused attention kernels (forward and backward) that keep attend's semantics.

Shape legend: as :mod:`attend.backends.base` — q (B, Hq, L, E), k (B, Hkv, S, E),
v (B, Hkv, S, Ev); lse (B, Hq, L) float32 in log2 units.

The kernels (:mod:`.kernels`) run FlashAttention-2's scheme: an online
softmax over key blocks in fp32, the log-sum-exp saved, and a backward that recomputes
the probabilities from it. On top of that they keep what attend promises:

- dot-like scores (``dot``, ``scaled_dot``, ``cosine``, ``General``): the score's
  ``as_dot`` transforms q and k in PyTorch (so its parameters get gradients), the kernel
  takes the dot product;
- masks: ``causal`` (bottom-right), ``window``, and the rules of :mod:`attend.masks`
  (``padding``, ``key_mask``, ``document``, ``prefix_lm``, ``chunked``, ``causal``,
  ``sliding_window`` and their ``and_masks``) compiled in, with key blocks they rule
  out entirely never loaded; boolean and additive dense masks (a bias that requires
  grad gets its gradient); any other ``mask_mod`` is evaluated into a dense boolean
  mask first;
- score_mods compiled in: :func:`attend.mods.alibi`, :func:`~attend.mods.softcap`,
  :func:`~attend.mods.relative_bias` (its table learns: the gradient is summed in);
- grouped/multi-query heads, fp16/bf16/fp32, head dims up to 256 (any, padded to a power
  of two inside), any L and S, any strides; a row with no key gives exactly zero;
- **the weights**: ``return_weights=True`` runs a second kernel that turns the saved
  log-sum-exp into the exact probabilities the forward used; :func:`attend.attention_weights`
  computes only chosen heads/rows, :func:`attend.key_totals` the per-key column sums.
  The returned weights carry no gradient (the output's gradients are exact).
- **attention sinks** (``sinks=``, one logit per query head): the kernels' log-sum-exp and
  output are corrected in PyTorch and the backward runs on the corrected ones
  (:class:`.ops.WithSinks`), so no kernel changes.

It cannot do dropout, hard attention, additive (Bahdanau) or arbitrary callable scores,
other score_mods, or float64; ``can_run`` says so and ``auto`` falls back.

The kernels are registered as PyTorch custom ops (``torch.ops.attend.triton_attention``
and ``triton_attention_backward``, with fake-tensor rules and autograd), so
``torch.compile`` keeps them whole. On a GPU they autotune their block sizes; on the
CPU they run only under Triton's interpreter (``TRITON_INTERPRET=1``, set before the
first call), which is how CPU CI tests them — ``auto`` never picks that path.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ... import _check
from ..base import AttentionCall, Backend
from . import launch
from .ops import GRADS, WithSinks, plan_values, sink_lse
from .plan import fold, import_error, interpreting, plan, reasons


class Triton(Backend):
    """Fused Triton kernels (see the module doc). ``block_m``/``block_n`` fix the block
    shape (powers of two >= 16); by default a GPU autotunes and the interpreter uses 16."""

    name = "triton"

    def __init__(self, *, block_m: int = 0, block_n: int = 0, dense_rule_limit: int = 1 << 28):
        for arg, b in (("block_m", block_m), ("block_n", block_n)):
            if not _check.is_int(b) or (b != 0 and (b < 16 or b & (b - 1))):
                raise _check.fail(arg, "0 (automatic) or a power of two >= 16", b)
        self.block_m, self.block_n = block_m, block_n
        self.dense_rule_limit = dense_rule_limit  # bytes of a dense boolean (L, S) mask auto accepts

    def can_run(self, call: AttentionCall) -> list[str]:
        err = import_error()
        if err:
            return [err]
        dev = call.query.device
        why = []
        if dev.type == "cpu" and not interpreting():
            why.append("inputs are on the CPU: Triton runs on a GPU (on the CPU only under TRITON_INTERPRET=1)")
        elif dev.type not in ("cpu", "cuda"):
            why.append(f"inputs are on {dev.type}: Triton runs on CUDA GPUs")
        return why + reasons(call)

    def auto_skip(self, call: AttentionCall) -> list[str]:
        if call.query.device.type == "cpu":
            return ["on the CPU it runs through Triton's interpreter (for tests), far slower than the other backends"]
        if fold(call, build=False)[1] and call.mask_planes() * call.L * call.S > self.dense_rule_limit:
            need = call.mask_planes() * call.L * call.S
            return [f"would evaluate a mask rule it does not compile into a dense mask ({need / 2**20:.0f} MiB; "
                    f"auto limit {self.dense_rule_limit / 2**20:.0f} MiB), where a backend that evaluates it per "
                    "block can run"]
        return []

    def run(self, call: AttentionCall) -> tuple[Tensor, Optional[Tensor]]:
        p = plan(call)
        q, k, factor = call.score.as_dot(call.query, call.key)  # (B, Hq, L, E), (B, Hkv, S, E)
        p.scale = call.scale * factor
        if call.sinks is not None:
            out, lse = WithSinks.apply(q, k, call.value, call.sinks, p, self.block_m, self.block_n,
                                       *(getattr(p, n) for n in GRADS))
        else:
            out, lse = torch.ops.attend.triton_attention(q, k, call.value, *plan_values(p), self.block_m, self.block_n)
        weights = None
        if call.return_weights:
            weights = launch.flash_weights(q.detach(), k.detach(), lse, p, block_m=self.block_m, block_n=self.block_n)
        return out, weights

    def weights(self, call: AttentionCall, heads: Optional[Tensor], rows: Optional[Tensor]) -> Tensor:
        p = plan(call)
        with torch.no_grad():
            q, k, factor = call.score.as_dot(call.query, call.key)
            p.scale = call.scale * factor
            dev = q.device
            rows = rows.to(dev, torch.int32) if rows is not None else None
            heads = heads.to(dev, torch.int32) if heads is not None else None
            _, lse = launch.flash_forward(q, k, call.value, p, rows=rows, heads=heads, compute_out=False,
                                   block_m=self.block_m, block_n=self.block_n)
            if call.sinks is not None:
                lse = sink_lse(lse, call.sinks, heads)
            return launch.flash_weights(q, k, lse, p, rows=rows, heads=heads, block_m=self.block_m, block_n=self.block_n)

    def key_totals(self, call: AttentionCall) -> Tensor:
        p = plan(call)
        with torch.no_grad():
            q, k, factor = call.score.as_dot(call.query, call.key)
            p.scale = call.scale * factor
            _, lse = launch.flash_forward(q, k, call.value, p, compute_out=False, block_m=self.block_m, block_n=self.block_n)
            if call.sinks is not None:
                lse = sink_lse(lse, call.sinks)
            return launch.flash_key_totals(q, k, lse, p, block_m=self.block_m, block_n=self.block_n)
