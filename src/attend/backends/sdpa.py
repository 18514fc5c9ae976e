"""``sdpa``: hands dot-like attention to ``torch.nn.functional.scaled_dot_product_attention``.

Dot-like scores (dot, scaled_dot, cosine, general) become a plain dot product of
transformed queries and keys (``score.as_dot``), which SDPA computes with its fused CPU
or GPU kernels. attend's semantics are kept at the boundary:

- every mask (bool, additive, ``causal`` bottom-right, ``window``, ``mask_mod``) is
  folded into one ``attn_mask``; SDPA's own ``is_causal`` is top-left aligned, so it is
  used only when ``L == S`` and nothing else masks;
- rows with no key to attend are given an all-open mask row for SDPA and their output
  is set to exactly zero afterwards, so neither the output nor the gradients see NaN;
- a query row containing NaN gives NaN (SDPA's CPU kernel would return zeros for it).

Plain causal attention from 512 to 1024 keys on the CPU runs the same kernel on blocks of
256 (:mod:`._causal_blocks`), since the kernel computes its 512-key diagonal block whole.
Key padding (``masks.padding``) on the CPU cuts each sequence's keys to its length instead
of masking them (:mod:`._padding`).

SDPA cannot return the weights, run score_mod or hard attention; ``can_run`` says so.
"""
from __future__ import annotations

import math
from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from .._rules import Alibi, RelativeBias
from . import _causal_blocks, _distance_bias, _padding, _relbias_regions
from .base import DENSE_RULE_LIMIT, AttentionCall, Backend


class SDPA(Backend):
    """``dense_rule_limit``: ``auto`` prefers a backend that evaluates mask rules block by
    block (``chunked``) over materialising them for SDPA as a dense mask larger than this
    many bytes (SDPA turns a boolean mask into a float one: 4 bytes per entry, plus the
    boolean, for every sequence and head the rules tell apart). Measured in
    ``benchmarks/results/cpu-backends.md`` (mask rules): where it fits, the dense path is
    2-6x faster than chunked, and its peak memory grows as L·S, to 1.5 GiB for one head at
    L = S = 16384, where chunked stays at O(tile) (76 MiB). The default, 256 MiB, is the
    limit ``eager`` has for materialised scores."""

    name = "sdpa"

    def __init__(self, *, dense_rule_limit: int = DENSE_RULE_LIMIT):
        self.dense_rule_limit = dense_rule_limit

    def auto_skip(self, call: AttentionCall) -> list[str]:
        if _padding.lengths(call) is not None:
            return []  # (no dense mask: each sequence's keys are cut to its length)
        need = call.dense_rule_bytes()  # the boolean (B|1, H|1, L, S) mask the rules give, and SDPA's float copy
        if need > self.dense_rule_limit:
            return [f"would materialise the mask rules as a dense mask ({need / 2**20:.0f} MiB; auto limit "
                    f"{self.dense_rule_limit / 2**20:.0f} MiB), where a backend that evaluates them per block can run"]
        return []

    def can_run(self, call: AttentionCall) -> list[str]:
        why = []
        if not getattr(call.score, "dot_like", False):
            why.append(f"score {_score_name(call.score)} is not dot-like")
        if call.score_mod is not None:
            dist = _distance_bias.reasons(call)
            table = _relbias_regions.reasons(call) if dist else []  # (the regions path only where that one cannot)
            if table and dist:
                here = table if type(call.score_mod) is RelativeBias else dist if type(call.score_mod) is Alibi else []
                here = f"; here: {', '.join(here)}" if here else ""
                why.append("score_mod needs the scores, which SDPA does not expose (a relative-bias table or ALiBi runs "
                           f"here with no mask or bias other than causal{here})")
        if call.hard:
            why.append("SDPA has no hard attention")
        if call.return_weights:
            why.append("SDPA does not return the attention weights")
        if call.sinks is not None:
            why.append("SDPA has no attention sinks (no extra term in its softmax denominator)")
        return why

    def describe(self, call: AttentionCall) -> str:
        if call.score_mod is not None:
            return _distance_bias.describe(call) or _relbias_regions.describe(call) or ""
        n = _padding.lengths(call)
        if n is not None:
            return _padding.describe(n, call.S)
        if _use_is_causal(call) and _causal_blocks.applies(call.query, call.key, call.value, call.dropout_p,
                                                           q_features=call.key.shape[-1]):  # (as_dot's q: the keys' width)
            return (f"causal in blocks of {_causal_blocks.BLOCK} keys (SDPA's kernel would compute its 512-key "
                    f"diagonal block whole): the diagonal blocks as one causal call, the keys before them as full calls")
        return ""

    def run(self, call: AttentionCall) -> tuple[Tensor, Optional[Tensor]]:
        q, k, factor = call.score.as_dot(call.query, call.key)  # (B, Hq, L, D), (B, Hkv, S, D)
        q, scale = positive_scale(q, call.scale * factor)
        L, S = call.L, call.S
        use_is_causal = _use_is_causal(call)
        attn_mask: Optional[Tensor] = None
        dead: Optional[Tensor] = None  # (B|1, H|1, L, 1): rows with no key
        if call.score_mod is not None:  # a relative-bias table or ALiBi (can_run has checked)
            args = (q, call.expand_kv(k), call.expand_kv(call.value), scale, call.score_mod, call.causal)
            if not _distance_bias.reasons(call):  # one kernel call, the biases a strided view
                out = _distance_bias.attention(*args)
            else:
                out = _relbias_regions.trained(*args) if call.needs_grad else _relbias_regions.attention(*args)[0]
            return self._nan_rows(call, q, out, None), None
        n = _padding.lengths(call)
        if n is not None:  # key padding: each sequence's keys cut to its length, no mask
            out = _padding.attention(q, k, call.value, n, scale, call.causal, call.groups > 1)
            return self._nan_rows(call, q, out, _padding.dead(n)), None
        if use_is_causal and _causal_blocks.applies(q, k, call.value, call.dropout_p):
            out = _causal_blocks.attention(q, k, call.value, scale)
            return self._nan_rows(call, q, out, dead), None
        if not use_is_causal and (call.has_rule_mask or call.mask is not None or call.bias is not None):
            allowed = call.allowed(0, L, 0, S)  # bool or None
            if call.bias is not None:
                attn_mask = call.bias.to(q.dtype)
                if allowed is not None:
                    attn_mask = attn_mask.masked_fill(~allowed, -math.inf)
                dead = (attn_mask == -math.inf).all(dim=-1, keepdim=True)
                attn_mask = attn_mask.masked_fill(dead, 0.0)
            elif allowed is not None:  # (None: the rules allow everything, e.g. window=(None, None))
                dead = ~allowed.any(dim=-1, keepdim=True)
                attn_mask = allowed | dead
        out = F.scaled_dot_product_attention(
            q,
            k,
            call.value,
            attn_mask=attn_mask,
            dropout_p=call.dropout_p,
            is_causal=use_is_causal,
            scale=scale,
            enable_gqa=call.groups > 1,
        )  # (B, Hq, L, Ev)
        if dead is not None:
            out = _fill_rows(out, dead, 0.0)
        return self._nan_rows(call, q, out, dead), None

    @staticmethod
    def _nan_rows(call: AttentionCall, q: Tensor, out: Tensor, dead: Optional[Tensor]) -> Tensor:
        """SDPA's CPU kernel treats a row whose scores are all NaN like a fully masked row and
        returns zeros; corrupt input must show, so such rows become NaN again. One reduction
        finds them (a NaN anywhere in a row makes its sum NaN). A row that is fully masked stays
        exactly zero: it reads no key, so its query is never used. Queries attend has already
        found finite (on the CPU) need no such pass, when the score handed them to SDPA
        unchanged or says it keeps them finite (cosine's normalising; a General score's weight
        could still be NaN)."""
        if call.finite and (q is call.query or _keeps_finite(call.score)):
            return out
        nan_rows = q.sum(dim=-1, keepdim=True).isnan()  # (B, Hq, L, 1)
        if dead is not None:
            nan_rows = nan_rows & ~dead
        return _fill_rows(out, nan_rows, math.nan)


def positive_scale(q: Tensor, scale: float) -> tuple[Tensor, float]:
    """``(q, scale)`` for SDPA's kernels: a scale that is not positive goes into ``q`` (its sign, or
    a zero ``q`` for a zero scale, NaN and inf staying NaN: the scores are the same), because with
    ``is_causal`` the CPU kernel turns its masked entries NaN at a scale of 0 or below (``-inf``
    times the scale; torch 2.13) and every row with them."""
    if scale > 0:
        return q, scale
    return (q.neg(), -scale) if scale < 0 else (q * 0.0, 1.0)  # (negating is exact: q is not rounded again)


def _use_is_causal(call: AttentionCall) -> bool:
    """SDPA's (top-left) ``is_causal`` is attend's rule only when L == S and nothing else masks."""
    return (call.causal and call.L == call.S and call.window is None and call.mask is None and call.mask_mod is None
            and call.bias is None)


def _keeps_finite(score) -> bool:
    """The score says its ``as_dot`` keeps finite vectors finite (``finite_from_finite``), and the
    class that says so is the one that wrote ``as_dot`` (not a subclass that changed it)."""
    mro = type(score).__mro__
    says = next((c for c in mro if "finite_from_finite" in c.__dict__), None)
    wrote = next((c for c in mro if "as_dot" in c.__dict__), None)
    return says is not None and says is wrote and bool(score.finite_from_finite())


def _fill_rows(out: Tensor, rows: Tensor, value: float) -> Tensor:
    """``out.masked_fill(rows, value)``. On the CPU, asking first whether any row is
    selected is free and usually saves a pass over the output; on a GPU that question
    would stall the stream, so the fill always runs there."""
    if out.device.type == "cpu" and not bool(rows.any()):
        return out
    return out.masked_fill(rows, value)


def _score_name(score) -> str:
    return repr(getattr(score, "name", None) or type(score).__name__)
