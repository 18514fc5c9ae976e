"""Plain causal attention from 512 to 1024 keys: ``sdpa`` cuts it into blocks of 256 keys
(:mod:`attend.backends._causal_blocks`). Outputs and gradients against the float64
reference by the tolerance rule, the calls actually made, where the path is not taken, and
non-finite input kept in the rows that use it."""
from __future__ import annotations

import math

import pytest
import torch

import attend
import reference as R
from attend.backends import _causal_blocks as CB
from cases import check_case, inputs, make_score


@pytest.mark.parametrize("L", [512, 600, 1024])  # 600: a shorter last diagonal block
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_with_gradients(L, dtype):
    q, k, v = inputs(1, 2, 2, L, L, 16, 16, dtype)
    check_case("sdpa", q, k, v, kw={"causal": True}, ref_scores=R.scaled_dot(16), allowed=R.causal_mask(L, L),
               dtype=dtype, what=f"causal blocks L={L}")


def test_cosine_score_gradients_flow_through_the_blocks():
    q, k, v = inputs(2, 1, 1, 512, 512, 8, 8, torch.float64)
    arg, ref_scores = make_score("cosine", 8)
    check_case("sdpa", q, k, v, kw={"causal": True, "score": arg}, ref_scores=ref_scores,
               allowed=R.causal_mask(512, 512), dtype=torch.float64, what="cosine causal blocks")


def _count_kernel_calls(monkeypatch):
    calls = []
    real = CB._FWD

    def counted(*args, **kw):
        calls.append(bool(args[4]))  # is_causal
        return real(*args, **kw)

    monkeypatch.setattr(CB, "_FWD", counted)
    return calls


@pytest.mark.parametrize("L,expect", [(512, [True, False]), (600, [True, True, False, False]),
                                      (1024, [True, False, False, False])])
def test_one_causal_call_for_the_diagonal_and_one_full_call_per_row_block(monkeypatch, L, expect):
    calls = _count_kernel_calls(monkeypatch)
    q, k, v = inputs(1, 2, 2, L, L, 8, 8, torch.float32)
    attend.attention(q, k, v, causal=True, backend="sdpa")
    assert calls == expect
    assert "blocks of 256" in attend.explain(q, k, v, causal=True).detail


@pytest.mark.parametrize("case", ["long", "short", "gqa", "half", "not square", "window", "values wider", "dropout"])
def test_other_calls_keep_sdpas_own_kernel(monkeypatch, case):
    calls = _count_kernel_calls(monkeypatch)
    L, S, Hkv, Ev, dtype, kw = 512, 512, 2, 8, torch.float32, {"causal": True}
    if case == "long":
        L = S = 2048
    elif case == "short":
        L = S = 256
    elif case == "gqa":
        Hkv = 1
    elif case == "half":
        dtype = torch.bfloat16
    elif case == "not square":
        S = 520
    elif case == "window":
        kw["window"] = (100, 0)
    elif case == "values wider":
        Ev = 12
    else:
        kw["dropout_p"] = 0.1
    q, k, v = inputs(1, 2, Hkv, L, S, 8, Ev, dtype)
    out = attend.attention(q, k, v, backend="sdpa", **kw)
    assert calls == [] and out.shape == (1, 2, L, Ev)
    assert "blocks of 256" not in str(attend.explain(q, k, v, **kw))


def test_a_nan_query_row_is_nan_and_the_others_are_untouched():
    q, k, v = inputs(1, 2, 2, 512, 512, 8, 8, torch.float64)
    clean = attend.attention(q, k, v, causal=True, backend="sdpa")
    q[0, 1, 300, 3] = math.nan
    out = attend.attention(q, k, v, causal=True, backend="sdpa")
    assert out[0, 1, 300].isnan().all()
    keep = torch.ones(1, 2, 512, dtype=torch.bool)
    keep[0, 1, 300] = False
    assert torch.equal(out[keep], clean[keep])


def test_an_inf_key_reaches_only_the_rows_at_or_after_it():
    q, k, v = inputs(1, 1, 1, 512, 512, 8, 8, torch.float64)
    clean = attend.attention(q, k, v, causal=True, backend="sdpa")
    k[0, 0, 400, 0] = math.inf
    out = attend.attention(q, k, v, causal=True, backend="sdpa")
    assert out[0, 0, 400:].isnan().all()
    assert torch.equal(out[0, 0, :400], clean[0, 0, :400])


def test_non_contiguous_inputs_and_gradients_for_some_inputs_only():
    """A model's usual layout, (B, L, H, E) viewed as (B, H, L, E), and k, v without gradients."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 600, 2, 8, generator=g, dtype=torch.float64).transpose(1, 2) for _ in range(3))
    q.requires_grad_(True)
    out = attend.attention(q, k, v, causal=True, backend="sdpa")
    ref = attend.attention(q, k, v, causal=True, backend="eager")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    dout = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, q, dout)
    (want,) = torch.autograd.grad(ref, q, dout)
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


def test_autocast_keeps_sdpas_own_kernel_and_its_dtype(monkeypatch):
    calls = _count_kernel_calls(monkeypatch)
    q, k, v = inputs(1, 2, 2, 512, 512, 8, 8, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attend.attention(q, k, v, causal=True, backend="sdpa")
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert calls == [] and out.dtype == want.dtype == torch.bfloat16


def test_torch_func_transforms_keep_sdpas_own_kernel(monkeypatch):
    calls = _count_kernel_calls(monkeypatch)
    q, k, v = inputs(1, 1, 1, 512, 512, 8, 8, torch.float64)
    got = torch.func.grad(lambda x: attend.attention(x, k, v, causal=True, backend="sdpa").sum())(q)
    qq = q.clone().requires_grad_(True)
    attend.attention(qq, k, v, causal=True, backend="eager").sum().backward()
    assert calls == []
    torch.testing.assert_close(got, qq.grad, rtol=1e-10, atol=1e-10)


def test_double_backward_raises():
    """With create_graph, even for a loss linear in the output."""
    q, k, v = (torch.randn(1, 2, 512, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert CB.applies(q, k, v, 0.0)
    out = attend.attention(q, k, v, causal=True, backend="sdpa")
    with pytest.raises(RuntimeError, match="causal blocks on SDPA's kernel has no double backward"):
        torch.autograd.grad(out.sum(), q, create_graph=True)
