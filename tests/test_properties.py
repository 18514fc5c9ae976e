"""Property tests (hypothesis): random shapes, heads, masks and windows against the reference."""
from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attend
import reference as R
from cases import BACKENDS, BASELINE, attention, wide


@st.composite
def calls(draw):
    B = draw(st.integers(1, 2))
    Hkv = draw(st.integers(1, 2))
    Hq = Hkv * draw(st.integers(1, 3))
    L = draw(st.integers(1, 40))
    S = draw(st.integers(1, 40))
    E = draw(st.sampled_from([1, 3, 8, 17]))
    Ev = draw(st.sampled_from([1, 4, 9]))
    causal = draw(st.booleans())
    window = draw(st.one_of(st.none(), st.integers(0, 8), st.tuples(st.one_of(st.none(), st.integers(0, 6)),
                                                                     st.one_of(st.none(), st.integers(0, 6)))))
    mask_kind = draw(st.sampled_from(["none", "bool", "bias"]))
    seed = draw(st.integers(0, 2**16))
    backend = draw(st.sampled_from(BACKENDS))
    return B, Hq, Hkv, L, S, E, Ev, causal, window, mask_kind, seed, backend


@settings(max_examples=60, deadline=None)
@given(calls())
def test_random_calls_match_reference(c):
    """float64 to rounding; triton (no float64) in float32 by the tolerance rule against the eager baseline."""
    B, Hq, Hkv, L, S, E, Ev, causal, window, mask_kind, seed, backend = c
    dtype = wide(backend)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, L, E, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(B, Hkv, S, E, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(B, Hkv, S, Ev, generator=g, dtype=torch.float64).to(dtype)
    allowed = torch.ones(L, S, dtype=torch.bool)
    if causal:
        allowed &= R.causal_mask(L, S)
    if window is not None:
        left, right = (window, window) if isinstance(window, int) else window
        allowed &= R.window_mask(L, S, left, right)
    kw = {"causal": causal, "window": window}
    bias = None
    if mask_kind == "bool":
        m = torch.rand(B, 1, L, S, generator=g) > 0.3
        allowed = allowed & m
        kw["mask"] = m
    elif mask_kind == "bias":
        bias = torch.randn(1, Hq, 1, S, generator=g, dtype=torch.float64).to(dtype)
        kw["mask"] = bias
    out = attention(backend, q, k, v, **kw)
    ref, _ = R.reference(q, k, v, lambda a, b: R.dot(a, b) / math.sqrt(E), allowed=allowed, bias=bias)
    if dtype == torch.float64:
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    else:
        R.check(out, attend.attention(q, k, v, backend=BASELINE, **kw), ref, dtype=dtype, m=2, what=str(c))
