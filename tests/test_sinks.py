"""Attention sinks (``attend.attention(..., sinks=)``): one logit per query head in every
row's softmax denominator, on every backend that can run them, against the float64
reference (RELIABILITY.md's tolerance rule), gradients of q, k, v and the sinks included."""
from __future__ import annotations

import pytest
import torch

import attend
import reference as R
from cases import BACKENDS, BASELINE, attention, inputs, interpreted, mask_kwargs, runnable

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, Hq, Hkv, L, S, E, mask kind): fully masked rows in "causal" L > S and "bool"
SHAPES = [(2, 2, 2, 5, 17, 8, "causal"), (1, 4, 2, 17, 5, 16, "causal"), (2, 2, 1, 33, 40, 8, "window"),
          (1, 2, 2, 20, 37, 8, "bool"), (1, 2, 2, 9, 23, 8, "bias")]


SINK_BACKENDS = [b for b in BACKENDS if runnable(b, "scaled_dot", sinks=True)]  # all but sdpa (test_sdpa_says_why_not)


def _sinks(H, dtype, seed=5):
    return (torch.randn(H, generator=torch.Generator().manual_seed(seed)) * 2).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", SINK_BACKENDS)
def test_tolerance_rule_with_sinks(backend, dtype):
    if interpreted(backend) and dtype != torch.float32:
        shapes = SHAPES[:2]  # the interpreter is slow: fp16/bf16 on two shapes
    else:
        shapes = SHAPES
    for B, Hq, Hkv, L, S, E, kind in shapes:
        kw, allowed, bias = mask_kwargs(kind, B, Hq, L, S)
        q, k, v = inputs(B, Hq, Hkv, L, S, E, E, dtype, grad=True)
        sinks = _sinks(Hq, dtype).requires_grad_(True)
        qd, kd, vd, sd = (t.detach().double().requires_grad_(True) for t in (q, k, v, sinks))
        ref, ref_w = R.reference(qd, kd, vd, lambda a, b: R.dot(a, b) / E ** 0.5, allowed=allowed, bias=bias, sinks=sd)
        dout = torch.randn_like(ref)
        ref_grads = torch.autograd.grad(ref, (qd, kd, vd, sd), dout)

        def run(b):
            out, w = attention(b, q, k, v, sinks=sinks, return_weights=True, **kw)
            return out, w, torch.autograd.grad(out, (q, k, v, sinks), dout.to(dtype))

        out, w, grads = run(backend)
        base, base_w, base_grads = run(BASELINE)
        where = f"{backend} {dtype} {(B, Hq, Hkv, L, S, E)} {kind}"
        R.check(out, base, ref, dtype=dtype, m=2, what=f"output {where}")
        R.check(w, base_w, ref_w, dtype=dtype, m=2, what=f"weights {where}")
        for name, g, gb, gr in zip(["dq", "dk", "dv", "dsinks"], grads, base_grads, ref_grads):
            R.check(g, gb, gr, dtype=dtype, m=3, what=f"{name} {where}")


def test_sinks_take_weight_away_from_the_keys_and_fully_masked_rows_stay_zero():
    q, k, v = inputs(1, 2, 2, 4, 6, 8, 8, torch.float64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[0] = False  # row 0 sees no key
    for backend in ("eager", "chunked"):
        out, w = attend.attention(q, k, v, mask=mask, sinks=torch.tensor([0.0, 3.0], dtype=torch.float64),
                                  return_weights=True, backend=backend)
        assert torch.equal(out[:, :, 0], torch.zeros(1, 2, 8)) and torch.equal(w[:, :, 0], torch.zeros(1, 2, 6))
        rows = w[:, :, 1:].sum(-1)  # (1, 2, 3): below 1, and less for the larger sink
        assert (rows < 1).all() and (rows[:, 1] < rows[:, 0]).all()
        # a sink of -inf is no sink at all
        plain = attend.attention(q, k, v, mask=mask, backend=backend)
        none = attend.attention(q, k, v, mask=mask, sinks=torch.full((2,), float("-inf"), dtype=torch.float64),
                                backend=backend)
        torch.testing.assert_close(none, plain, rtol=0, atol=1e-15)
        with torch.no_grad():  # chunked's one-pass inference path too
            torch.testing.assert_close(attend.attention(q, k, v, mask=mask, sinks=torch.full(
                (2,), float("-inf"), dtype=torch.float64), backend=backend), plain, rtol=0, atol=1e-15)


def test_online_inference_path_matches_two_pass():
    """chunked has a one-pass path for inference (no grad, no weights): sinks there too."""
    q, k, v = inputs(2, 4, 2, 30, 50, 8, 8, torch.float64)
    sinks = _sinks(4, torch.float64)
    with torch.no_grad():
        online = attend.attention(q, k, v, causal=True, sinks=sinks, backend=attend.backends.Chunked(block_size=7))
    ref = attend.attention(q, k, v, causal=True, sinks=sinks, backend="eager")
    torch.testing.assert_close(online, ref, rtol=0, atol=1e-13)


def test_gradcheck_float64():
    q, k, v = inputs(1, 2, 1, 3, 5, 4, 4, torch.float64, grad=True)
    sinks = _sinks(2, torch.float64).requires_grad_(True)
    for backend in ("eager", "chunked"):
        assert torch.autograd.gradcheck(
            lambda a, b, c, s: attend.attention(a, b, c, sinks=s, causal=True, backend=backend), (q, k, v, sinks))


def test_sdpa_says_why_not_and_auto_falls_back():
    q, k, v = inputs(1, 2, 2, 3, 4, 8, 8, torch.float32)
    sinks = torch.zeros(2)
    with pytest.raises(attend.UnsupportedCall, match="SDPA has no attention sinks"):
        attend.attention(q, k, v, sinks=sinks, backend="sdpa")
    assert attend.explain(q, k, v, sinks=sinks).backend != "sdpa"


@pytest.mark.parametrize("sinks,err,match", [
    ([0.0, 1.0], TypeError, "sinks must be a tensor"),
    (torch.zeros(3), ValueError, r"one logit per query head, shape \(2,\), got \(3,\)"),
    (torch.zeros(2, dtype=torch.int64), TypeError, "sinks must be a floating-point tensor"),
    (torch.zeros(1, 2), ValueError, r"shape \(2,\), got \(1, 2\)"),
])
def test_bad_sinks_are_refused_by_name(sinks, err, match):
    q, k, v = inputs(1, 2, 2, 3, 4, 8, 8, torch.float32)
    with pytest.raises(err, match=match):
        attend.attention(q, k, v, sinks=sinks)


def test_hard_attention_refuses_sinks():
    q, k, v = inputs(1, 2, 2, 3, 4, 8, 8, torch.float32)
    with pytest.raises(ValueError, match="sinks apply to soft attention"):
        attend.attention(q, k, v, sinks=torch.zeros(2), hard=True)


def test_module_learns_its_sinks():
    mha = attend.nn.MultiHeadAttention(16, 4, sinks=True)
    assert tuple(mha.sinks.shape) == (4,) and "sinks=True" in repr(mha)
    x = torch.randn(2, 5, 16)
    y, _ = mha(x, causal=True)
    y.sum().backward()
    assert mha.sinks.grad is not None and mha.sinks.grad.abs().sum() > 0
    plain = attend.nn.MultiHeadAttention(16, 4)
    assert plain.sinks is None
    with pytest.raises(TypeError, match="sinks must be a bool"):
        attend.nn.MultiHeadAttention(16, 4, sinks=1)


@pytest.mark.parametrize("backend", SINK_BACKENDS)
def test_an_infinite_sink_takes_all_attention_on_every_backend(backend):
    """The reviewer's case: sinks=+inf gave 0 on eager and NaN on chunked."""
    q, k, v = inputs(1, 2, 2, 5, 7, 16, 16, torch.float32)
    sinks = torch.tensor([float("inf"), 0.0])
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            out, w = attention(backend, q, k, v, sinks=sinks, return_weights=True)
        assert torch.equal(out[:, 0], torch.zeros(1, 5, 16)) and torch.equal(w[:, 0], torch.zeros(1, 5, 7))
        assert torch.isfinite(out[:, 1]).all() and (out[:, 1] != 0).any()
