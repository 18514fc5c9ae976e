"""The independent float64 reference and the tolerance rule (RELIABILITY.md), for all tests.

Nothing here imports attend's masking or score code: masks are built with Python loops
and scores with einsum, so a shared bug cannot hide.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

DEFAULT_ATOL = {torch.float16: 1e-5, torch.bfloat16: 1e-5, torch.float32: 1e-5, torch.float64: 1e-7}
# A loose absolute cap per dtype, so the relative rule cannot pass when the baseline is broken.
CAP = {torch.float16: 5e-2, torch.bfloat16: 2e-1, torch.float32: 1e-3, torch.float64: 1e-8}


# ---- dense masks, by loops -------------------------------------------------------------
def causal_mask(L: int, S: int) -> Tensor:
    """Bottom-right: query i may see key j iff j <= i + S - L."""
    return torch.tensor([[j <= i + S - L for j in range(S)] for i in range(L)], dtype=torch.bool).reshape(L, S)


def window_mask(L: int, S: int, left: Optional[int], right: Optional[int]) -> Tensor:
    rows = []
    for i in range(L):
        p = i + S - L
        rows.append([(left is None or j >= p - left) and (right is None or j <= p + right) for j in range(S)])
    return torch.tensor(rows, dtype=torch.bool).reshape(L, S)


def loop_mask(B: int, L: int, S: int, fn: Callable[[int, int, int], bool]) -> Tensor:
    """A dense (B, 1, L, S) mask from a Python predicate ``fn(b, i, j)``."""
    return torch.tensor([[[fn(b, i, j) for j in range(S)] for i in range(L)] for b in range(B)],
                        dtype=torch.bool).reshape(B, 1, L, S)


# ---- scores, by einsum -----------------------------------------------------------------
def dot(q: Tensor, k: Tensor) -> Tensor:
    return torch.einsum("bhle,bhse->bhls", q, k)


def scaled_dot(E: int) -> Callable[[Tensor, Tensor], Tensor]:
    """The scores of ``score="scaled_dot"`` for head dim E: q·k / sqrt(E)."""
    return lambda q, k: dot(q, k) / math.sqrt(E)


def cosine(q: Tensor, k: Tensor, temperature: float = 1.0) -> Tensor:
    qn = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    kn = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return dot(qn, kn) / temperature


def general(q: Tensor, k: Tensor, W: Tensor) -> Tensor:
    return torch.einsum("bhle,ef,bhsf->bhls", q, W.to(q.dtype), k)


def additive(q: Tensor, k: Tensor, Wq: Tensor, Wk: Tensor, bk: Tensor, v: Tensor) -> Tensor:
    a = torch.einsum("bhle,ne->bhln", q, Wq.to(q.dtype))
    c = torch.einsum("bhse,ne->bhsn", k, Wk.to(q.dtype)) + bk.to(q.dtype)
    t = torch.tanh(a[:, :, :, None, :] + c[:, :, None, :, :])
    return torch.einsum("bhlsn,n->bhls", t, v.to(q.dtype).reshape(-1))


def reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scores: Callable[[Tensor, Tensor], Tensor],
    *,
    allowed: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    mod: Optional[Callable[[Tensor], Tensor]] = None,
    sinks: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Attention in float64 over (B, Hq, L, E) queries; ``scores`` returns the scaled scores.

    ``allowed`` / ``bias`` broadcast to (B, Hq, L, S); ``mod`` maps the scores (score_mod);
    ``sinks`` (Hq,) are one more column of logits, softmaxed with the keys and then dropped.
    Returns ``(output, weights)`` with fully masked rows exactly zero.
    """
    q, k, v = q.double(), k.double(), v.double()
    Hq, Hkv = q.shape[1], k.shape[1]
    heads = torch.arange(Hq) // (Hq // Hkv)
    k, v = k.index_select(1, heads), v.index_select(1, heads)
    s = scores(q, k)
    if mod is not None:
        s = mod(s)
    if bias is not None:
        s = s + bias.double()
    if allowed is not None:
        s = torch.where(allowed, s, torch.tensor(-math.inf, dtype=s.dtype))
    if sinks is not None:
        column = sinks.double().view(1, -1, 1, 1).expand(*s.shape[:-1], 1)
        p = torch.softmax(torch.cat([s, column], dim=-1), dim=-1)[..., :-1]
        return p @ v, p
    alive = torch.isfinite(s).any(dim=-1, keepdim=True) | torch.isnan(s).any(dim=-1, keepdim=True)
    p = torch.softmax(torch.where(alive, s, torch.zeros_like(s)), dim=-1) * alive
    return p @ v, p


# ---- the tolerance rule ------------------------------------------------------------------
def _terms(x: Tensor, baseline: Tensor, ref: Tensor, dtype: torch.dtype) -> tuple[float, float, float, float]:
    """(error, baseline error, floor, scale) of the tolerance rule, all max-abs in float64."""
    err = (x.double() - ref).abs().max().item()
    base = (baseline.double() - ref).abs().max().item()
    rd = ref.to(dtype)
    rounding = ((rd + 0.3 - 0.3) - rd).abs().max().double().item()
    return err, base, max(DEFAULT_ATOL[dtype], 2 * rounding), max(1.0, ref.abs().max().item())


def rule_ratio(x: Tensor, baseline: Tensor, ref: Tensor, *, dtype: torch.dtype, m: float) -> float:
    """:func:`check` as a number (passes at <= 1): the larger of error / (m * baseline error +
    floor) and error / the absolute cap; inf for NaN in ``x`` or a non-finite reference.
    For reports that list every case (``benchmarks/gpu.py``) rather than stop at the first."""
    x, baseline, ref = (t.detach().cpu().double() for t in (x, baseline, ref))
    if torch.isnan(x).any() or not torch.isfinite(ref).all():
        return math.inf
    if ref.numel() == 0:
        return 0.0
    err, base, floor, scale = _terms(x, baseline, ref, dtype)
    return max(err / (m * base + floor), err / (CAP[dtype] * scale))


def check(x: Tensor, baseline: Tensor, ref: Tensor, *, dtype: torch.dtype, m: float, what: str = "output") -> None:
    """``max|x - ref| <= m * max|baseline - ref| + floor`` (RELIABILITY.md), with guard rails."""
    ref = ref.double()
    assert torch.isfinite(ref).all(), f"{what}: the reference is not finite"
    assert not torch.isnan(x).any(), f"{what}: NaN in the result"
    if ref.numel() == 0:
        return
    err, base, floor, scale = _terms(x, baseline, ref, dtype)
    assert err <= CAP[dtype] * scale, f"{what}: error {err:.3g} above the absolute cap {CAP[dtype] * scale:.3g}"
    assert err <= m * base + floor, (
        f"{what}: error {err:.3g} > {m} x baseline {base:.3g} + floor {floor:.3g} ({dtype})"
    )
