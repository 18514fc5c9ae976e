"""How the viewer stores attention weights in its page.

A short text keeps every weight (``"full"``): L × H × rows × cols bytes, each weight
quantised to 1/254 (255 marks a NaN or infinite weight, drawn red). A long one keeps what a
person can see (``"summary"``), per layer and head:

- each row's ``top_k`` strongest weights, exactly (to 1/254), with their columns;
- the share of the row's weight those keep (so the page can say what was dropped);
- an overview of at most ``OVERVIEW`` × ``OVERVIEW`` blocks, each block its largest weight
  (a sparse pattern stays visible; a mean would wash it out).

Each (layer, head) travels as its own base64 string, so the page decodes only what it draws.
Layers are read one at a time: a caller may hand a lazy sequence of layers and never hold
the whole model's weights at once.
"""
from __future__ import annotations

import base64
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

OVERVIEW = 256
MAX_COLUMNS = 2 ** 15 - 1
# Weights are probabilities; values this far outside [0, 1] are not attention weights (the
# slack covers rounding in 16-bit weights).
TOLERANCE = 1e-3


def check_dtype(t: Tensor, what: str) -> None:
    if t.is_complex():
        raise TypeError(f"{what}: weights must be real numbers, got dtype {t.dtype}")


def check_layer(a, what: str, index: int, shape: Optional[tuple] = None) -> Tensor:
    """One layer's weights as (H, rows, cols) float32 on the CPU, checked."""
    if not isinstance(a, Tensor):
        raise TypeError(f"{what}: layer {index} is a {type(a).__name__}, not a tensor")
    check_dtype(a, f"{what}[{index}]")
    if not (a.ndim == 3 or (a.ndim == 4 and a.shape[0] == 1)):
        raise ValueError(f"{what}: layer {index} has shape {tuple(a.shape)}; expected (heads, n, n) or "
                         "(1, heads, n, n)")
    t = (a.squeeze(0) if a.ndim == 4 else a).detach().to("cpu", torch.float32)
    if t.shape[0] == 0:
        raise ValueError(f"{what}: layer {index} has 0 heads (shape {tuple(a.shape)}); the viewer needs at least one")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{what}: layer {index} has shape {tuple(t.shape)}, but layer 0 has {shape} (heads, n, n); "
                         "every layer needs the same heads and tokens")
    if bool(torch.isfinite(t.sum())):  # every weight finite (they are near [0, 1]): one pass for the range
        low, high = torch.aminmax(t)
        if -TOLERANCE <= float(low) and float(high) <= 1 + TOLERANCE:
            return t
    bad = torch.isfinite(t) & ((t < -TOLERANCE) | (t > 1 + TOLERANCE))
    if bool(bad.any()):
        head, row, col = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"{what}: weights must be in [0, 1] (attention probabilities), got {float(t[head, row, col]):.6g} "
                         f"at layer {index}, head {head}, row {row}, column {col}")
    return t


def _b64(*parts: Tensor) -> str:
    return base64.b64encode(b"".join(p.contiguous().numpy().tobytes() for p in parts)).decode("ascii")


def quantise(w: Tensor) -> Tensor:
    """uint8: round(254 w) for finite weights, 255 for NaN and infinities."""
    finite = torch.isfinite(w)
    q = (w.clamp(0, 1).nan_to_num(0.0) * 254).round().to(torch.uint8)
    q[~finite] = 255
    return q


def full(w: Tensor) -> str:
    """Every weight of one (rows, cols) map."""
    return _b64(quantise(w))


def overview_shape(rows: int, cols: int) -> tuple[int, int, int, int]:
    """(block rows, block cols, overview rows, overview cols)."""
    br, bc = math.ceil(rows / OVERVIEW), math.ceil(cols / OVERVIEW)
    return br, bc, math.ceil(rows / br), math.ceil(cols / bc)


def summary(w: Tensor, top_k: int) -> tuple[str, float]:
    """One (rows, cols) map as top-k per row + kept share + block-max overview; also returns
    the mean share of a row's weight the top-k keep."""
    rows, cols = w.shape
    k = min(top_k, cols)
    br, bc, orows, ocols = overview_shape(rows, cols)
    if bool(torch.isfinite(w.sum())):  # the usual case (weights are in [0, 1]): no masks of NaN to carry
        values, idx = w.topk(k, dim=-1)  # (rows, k)
        kept = (values.sum(-1) / w.sum(-1).clamp_min(1e-12)).clamp(0, 1)
        ov = quantise(F.max_pool2d(w[None, None], (br, bc), ceil_mode=True)[0, 0])
    else:
        finite = torch.isfinite(w)
        ranked = torch.where(finite, w, torch.full_like(w, 2.0))  # non-finite weights first: they are drawn red
        val, idx = ranked.topk(k, dim=-1)
        clean = torch.where(finite, w, torch.zeros_like(w))
        kept_w = torch.where(val > 1.5, torch.zeros_like(val), val).sum(-1)  # the finite part kept
        kept = (kept_w / clean.sum(-1).clamp_min(1e-12)).clamp(0, 1)
        values = torch.where(val > 1.5, torch.full_like(val, float("nan")), val)
        ov = quantise(F.max_pool2d(clean[None, None], (br, bc), ceil_mode=True)[0, 0])
        broken = F.max_pool2d((~finite).float()[None, None], (br, bc), ceil_mode=True)[0, 0] > 0
        ov[broken] = 255
    assert ov.shape == (orows, ocols)
    if cols > MAX_COLUMNS:
        raise ValueError(f"weights over {cols} keys; the viewer stores column numbers in 15 bits (at most {MAX_COLUMNS})")
    return _b64(idx.to(torch.int16), quantise(values), quantise(kept), ov), float(kept.mean())
