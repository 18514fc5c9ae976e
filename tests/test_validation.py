"""RELIABILITY.md A: bad arguments raise at the boundary, naming the argument, expected and received."""
from __future__ import annotations

import math

import pytest
import torch

import attend
from cases import inputs

Q, K, V = inputs(2, 4, 2, 5, 7, 8, 6, torch.float32)


def call(**kw):
    q, k, v = kw.pop("q", Q), kw.pop("k", K), kw.pop("v", V)
    return attend.attention(q, k, v, **kw)


@pytest.mark.parametrize(
    "kw, exc, pattern",
    [
        ({"q": [1.0]}, TypeError, r"query must be a torch.Tensor, got list"),
        ({"q": Q.long()}, TypeError, r"query must be a floating-point tensor, got dtype torch.int64"),
        ({"k": K.half()}, TypeError, r"one dtype.*query torch.float32, key torch.float16, value torch.float32"),
        ({"v": V.double()}, TypeError, r"value torch.float64"),
        ({"q": torch.randn(8)}, ValueError, r"query must have at least 2 dimensions.*got shape \(8,\)"),
        ({"k": torch.randn(2, 2, 7, 5)}, ValueError, r"key: expected last dimension E=8 \(the query's\), got 5"),
        ({"v": torch.randn(2, 2, 6, 6)}, ValueError, r"value: expected length S=7 \(the key's\), got 6"),
        ({"k": torch.randn(2, 3, 7, 8), "v": torch.randn(2, 3, 7, 6)}, ValueError, r"query heads \(4\) must be a multiple of key/value heads \(3\)"),
        ({"v": torch.randn(2, 1, 7, 6)}, ValueError, r"value: expected 2 heads \(the key's\), got 1"),
        ({"k": torch.randn(3, 2, 7, 8), "v": torch.randn(3, 2, 7, 6)}, ValueError, r"batch dimensions must broadcast: query \(2,\), key \(3,\)"),
        ({"mask": torch.ones(5, 6, dtype=torch.bool)}, ValueError, r"mask must broadcast to \(2, 4, 5, 7\).*got shape \(5, 6\)"),
        ({"mask": torch.ones(3, 1, 5, 7, dtype=torch.bool)}, ValueError, r"got shape \(3, 1, 5, 7\)"),
        ({"mask": torch.ones(5, 7, dtype=torch.int64)}, TypeError, r"mask must be a boolean .* got dtype torch.int64; integer masks are ambiguous"),
        ({"mask": torch.ones(5, 7, dtype=torch.uint8)}, TypeError, r"got dtype torch.uint8"),
        ({"mask": torch.ones(5, 7, dtype=torch.complex64)}, TypeError, r"got dtype torch.complex64$"),  # (not "integer")
        ({"score_mod": lambda s, b, h, i, j: s > 0}, TypeError, r"score_mod must return floating scores, got "
                                                                r"torch.bool \(a mask is a mask_mod"),
        ({"mask": "causal"}, TypeError, r"mask must be a tensor, a mask_mod callable or None, got str"),
        ({"dropout_p": 1.0}, ValueError, r"dropout_p must be in \[0, 1\), got 1.0"),
        ({"dropout_p": -0.1}, ValueError, r"dropout_p must be in \[0, 1\), got -0.1"),
        ({"dropout_p": math.nan}, ValueError, r"dropout_p must be in \[0, 1\), got nan"),
        ({"dropout_p": "0.1"}, TypeError, r"dropout_p must be a float"),
        ({"scale": math.nan}, ValueError, r"scale must be finite, got nan"),
        ({"scale": math.inf}, ValueError, r"scale must be finite, got inf"),
        ({"scale": "1"}, TypeError, r"scale must be a float or None, got str"),
        ({"score": "softmax"}, ValueError, r"score must be one of \['cosine', 'dot', 'scaled_dot'\].*got 'softmax'"),
        ({"score": "additive"}, ValueError, r"has weights: pass a module, e.g. attend.scores.Additive"),
        ({"score": 3}, TypeError, r"score must be a name"),
        ({"backend": "flash"}, ValueError, r"backend must be 'auto' or one of \['flex', 'inductor', 'sdpa', 'triton', 'eager', 'chunked'\], got 'flash'"),
        ({"backend": 1}, TypeError, r"backend must be a name or an attend.backends.Backend, got int"),
        ({"window": -1}, ValueError, r"window size must be an int >= 0 or None, got -1"),
        ({"window": (2, -3)}, ValueError, r"window right must be an int >= 0 or None, got -3"),
        ({"window": (1, 2, 3)}, ValueError, r"window must be an int >= 0 or a \(left, right\) pair, got \(1, 2, 3\)"),
        ({"window": 1.5}, TypeError, r"window must be an int >= 0 or a \(left, right\) pair, got float"),
        ({"hard": "yes"}, ValueError, r"hard must be False, True or 'straight_through', got 'yes'"),
        ({"causal": 1}, TypeError, r"causal must be a bool, got int"),
        ({"return_weights": None}, TypeError, r"return_weights must be a bool, got NoneType"),
        ({"score_mod": 5}, TypeError, r"score_mod must be a callable"),
        ({"score": attend.scores.General(8, 9)}, ValueError, r"key: expected last dimension 9 \(the score's key_dim\), got 8"),
        ({"score": attend.scores.Additive(6, 8, 4)}, ValueError, r"query: expected last dimension 6 \(the score's query_dim\), got 8"),
    ],
)
def test_bad_arguments(kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(**kw)


def test_bad_arguments_are_caught_by_explain_too():
    with pytest.raises(ValueError, match=r"dropout_p"):
        attend.explain(Q, K, V, dropout_p=2.0)


def test_named_backend_that_cannot_run_says_why():
    with pytest.raises(attend.UnsupportedCall, match=r"backend 'sdpa' cannot run this call: SDPA does not return the attention weights"):
        call(backend="sdpa", return_weights=True)
    with pytest.raises(attend.UnsupportedCall, match=r"'chunked' cannot run this call: hard attention"):
        call(backend="chunked", hard=True)
    with pytest.raises(attend.UnsupportedCall, match=r"score_mod needs the scores"):
        call(backend="sdpa", score_mod=attend.mods.softcap(5.0))


def test_explain_reports_choice_and_reasons():
    e = attend.explain(Q, K, V)
    assert e.backend == "sdpa"
    e = attend.explain(Q, K, V, score=attend.scores.Additive(8, 8, 4))
    assert e.backend == "eager"
    assert "not dot-like" in " ".join(e.reasons["sdpa"])
    assert "auto picks: eager" in str(e)
    # eager is skipped by auto when its score matrix would be too large; chunked runs instead
    big = attend.backends.Eager(auto_limit_bytes=10)
    chosen, reasons = attend.backends.select(_call_for(Q, K, V, return_weights=True), "auto")
    assert chosen.name == "eager"
    assert big.auto_skip(_call_for(Q, K, V))[0].startswith("would materialise")


def _call_for(q, k, v, **kw):
    from attend.functional import _prepare

    return _prepare(q, k, v, **kw)[0]


def test_auto_prefers_chunked_for_huge_score_matrices(monkeypatch):
    eager = attend.backends.get("eager")
    monkeypatch.setattr(eager, "auto_limit_bytes", 100)
    e = attend.explain(Q, K, V, return_weights=True)
    assert e.backend == "chunked"
    assert "would materialise" in e.reasons["eager"][0]
    # hard attention only runs on eager, so auto still falls back to it
    assert attend.explain(Q, K, V, hard=True).backend == "eager"


def test_bad_mask_mod_output():
    with pytest.raises(TypeError, match=r"mask_mod must return a boolean tensor \(True = may attend\), got torch.int64"):
        call(mask=lambda b, h, i, j: i - j, backend="eager")


def test_bad_score_callable_output():
    with pytest.raises(ValueError, match=r"score must return scores of shape \(..., L=5, S=7\), got \(2, 4, 5\)"):
        call(score=lambda q, k: q.sum(-1), backend="eager")


def test_device_mismatch_names_both_devices():
    meta = torch.empty(2, 2, 7, 8, device="meta")
    with pytest.raises(ValueError, match=r"one device, got query on cpu, key on meta, value on cpu"):
        call(k=meta)


def test_zero_and_negative_scale_are_valid():
    out0 = call(scale=0.0, backend="eager")
    # scale 0: uniform weights, the mean of the values per kv head
    mean = V.mean(dim=2, keepdim=True).repeat_interleave(2, dim=1).expand_as(out0)
    torch.testing.assert_close(out0, mean)
    neg = call(scale=-1.0, backend="eager")
    assert torch.isfinite(neg).all()


def test_value_dim_may_differ_from_key_dim():
    out = call()
    assert out.shape == (2, 4, 5, 6)


def test_float_01_mask_is_additive_not_boolean():
    """A 0/1 float mask is a bias: 0 adds nothing, 1 adds one to the score; nothing is masked."""
    m = torch.zeros(5, 7)
    m[:, 3:] = 1.0
    out = call(mask=m, backend="eager")
    by_bias = call(mask=m, backend="chunked")
    as_bool = call(mask=m.bool(), backend="eager")
    torch.testing.assert_close(out, by_bias)
    assert not torch.allclose(out, as_bool)
    _, w = call(mask=m, return_weights=True)
    assert (w > 0).all()


@pytest.mark.parametrize("backend", ["eager", "sdpa", "chunked"])
def test_empty_inputs(backend):
    """L = 0 or B = 0: empty output; S = 0: every row fully masked -> zeros; gradients flow."""
    for B, L, S in [(0, 3, 4), (2, 0, 4), (2, 3, 0), (0, 0, 0)]:
        q, k, v = inputs(B, 2, 2, L, S, 8, 6, torch.float32, grad=True)
        out, w = attend.attention(q, k, v, return_weights=True, backend=backend) if backend != "sdpa" else (
            attend.attention(q, k, v, backend=backend), None)
        assert out.shape == (B, 2, L, 6)
        assert torch.equal(out, torch.zeros_like(out))
        if w is not None:
            assert w.shape == (B, 2, L, S)
        out.sum().backward()
        for t in (q, k, v):
            assert t.grad is not None and torch.equal(t.grad, torch.zeros_like(t))


@pytest.mark.parametrize("backend", ["eager", "sdpa", "chunked"])
def test_noncontiguous_and_expanded_inputs(backend):
    q, k, v = inputs(2, 3, 3, 6, 9, 8, 8, torch.float32)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    kx = k[:1].expand(2, -1, -1, -1)  # stride 0 in batch
    vx = v[:1].expand(2, -1, -1, -1)
    mask = (torch.rand(9, 6) > 0.3).t()  # transposed (6, 9) view
    a = attend.attention(qt, kx, vx, mask=mask, backend=backend)
    b = attend.attention(qt.contiguous(), kx.contiguous(), vx.contiguous(), mask=mask.contiguous(), backend=backend)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_leading_dims_broadcast_and_2d_inputs():
    q = torch.randn(3, 2, 4, 5, 8)  # (*batch=(3, 2), H, L, E)
    k = torch.randn(1, 2, 4, 7, 8)  # broadcasts over the first batch dim
    v = torch.randn(1, 2, 4, 7, 8)
    out, w = attend.attention(q, k, v, return_weights=True)
    assert out.shape == (3, 2, 4, 5, 8) and w.shape == (3, 2, 4, 5, 7)
    ref = attend.attention(q[1, 1], k[0, 1], v[0, 1])
    torch.testing.assert_close(out[1, 1], ref)
    q2, k2, v2 = torch.randn(5, 8), torch.randn(7, 8), torch.randn(7, 3)
    out2, w2 = attend.attention(q2, k2, v2, causal=True, return_weights=True, mask=torch.ones(5, 7, dtype=torch.bool))
    assert out2.shape == (5, 3) and w2.shape == (5, 7)
    with pytest.raises(ValueError, match="all be 2-D"):
        attend.attention(q2, torch.randn(1, 7, 8), torch.randn(1, 7, 3))


def test_auto_prefers_chunked_where_it_measured_faster():
    add = attend.scores.Additive(8, 8, 4)
    q, k, v = inputs(1, 1, 1, 520, 520, 8, 8, torch.float32)
    with torch.no_grad():
        e = attend.explain(q, k, v, score=add)
    assert e.backend == "chunked" and "chunked is faster from L·S = 262144 for inference" in e.reasons["eager"][0]
    assert attend.explain(q, k, v, score=add).backend == "eager"  # module parameters need gradients
    with torch.no_grad():
        assert attend.explain(q, k, v, score=add, return_weights=True).backend == "eager"


def test_overflowing_scale_is_an_error():
    """The measured break: scale=1e308 with float32 inputs gave NaN silently."""
    with pytest.raises(ValueError, match=r"scale must be representable in the scores' dtype torch.float32 .* got 1e\+308"):
        call(scale=1e308)
    with pytest.raises(ValueError, match="representable"):
        call(q=Q.half(), k=K.half(), v=V.half(), scale=-1e39)  # fp16 scores are computed in float32
    assert torch.isfinite(call(q=Q.double(), k=K.double(), v=V.double(), scale=1e300, backend="eager") * 0).all()


# Rules checked at the boundary, before any backend runs: an uncalled factory, a rule of the
# other kind, a function with the wrong arity, a rule whose own sizes do not fit the call.
@pytest.mark.parametrize(
    "kw, exc, pattern",
    [
        ({"mask": attend.masks.causal}, TypeError,
         r"mask: attend.masks.causal is the function that makes the rule, not the rule; call it: attend.masks.causal\(\)"),
        ({"mask": attend.masks.padding}, TypeError, r"call it: attend.masks.padding\(lengths\)"),
        ({"mask": attend.masks.and_masks}, TypeError, r"call it: attend.masks.and_masks\(\*mods\)"),
        ({"score_mod": attend.mods.alibi}, TypeError, r"score_mod: attend.mods.alibi is the function .*alibi\(slopes\)"),
        ({"mask": attend.mods.softcap(3.0)}, TypeError, r"mask: softcap\(3.0\) is a score_mod, not a mask_mod; pass it as score_mod="),
        ({"score_mod": attend.masks.causal()}, TypeError, r"score_mod: causal\(\) is a mask_mod, not a score_mod; pass it as mask="),
        ({"mask": lambda b, h, i: i > 0}, TypeError, r"mask must be a mask_mod .*<lambda>\(b, h, i\) cannot take 4 positional"),
        ({"score_mod": lambda s, b, h, i: s}, TypeError, r"score_mod must be a score_mod .*cannot take 5 positional"),
        ({"score_mod": attend.mods.alibi(2)}, ValueError,
         r"score_mod: alibi\(slopes of 2 heads\) does not fit this call: 2 slopes for 4 query heads"),
        ({"score_mod": attend.mods.relative_bias(torch.zeros(3, 5))}, ValueError, r"a table for 3 heads, but the call has 4"),
        ({"mask": attend.masks.padding([3, 4, 5])}, ValueError,
         r"mask: padding\(lengths=\[3, 4, 5\]\) does not fit this call: 3 lengths for a batch of 2 sequences"),
        ({"mask": attend.masks.key_mask(torch.ones(2, 6, dtype=torch.bool))}, ValueError,
         r"valid has shape \(2, 6\); this call needs \(B, S\) = \(2, 7\)"),
        ({"mask": attend.masks.document([0, 0, 1])}, ValueError, r"ids have shape \(3,\); this call needs \(7,\)"),
        ({"mask": attend.masks.document(torch.zeros(3, 7, dtype=torch.long))}, ValueError, r"this call needs \(2, 7\)"),
        ({"mask": attend.masks.prefix_lm(torch.tensor([1]))}, ValueError, r"1 prefix lengths for a batch of 2"),
        ({"mask": attend.masks.and_masks(attend.masks.causal(), attend.masks.padding([1]))}, ValueError,
         r"and_masks\(causal\(\), padding\(lengths=\[1\]\)\) does not fit this call: padding\(lengths=\[1\]\): 1 lengths"),
    ],
)
def test_rules_are_checked_at_the_boundary(kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(**kw)


def test_combinators_refuse_factories_and_score_mods():
    with pytest.raises(TypeError, match=r"and_masks argument 1: attend.masks.causal is the function"):
        attend.masks.and_masks(attend.masks.causal(), attend.masks.causal)
    with pytest.raises(TypeError, match=r"or_masks argument 0 is alibi\(slopes of 4 heads\), a score modifier"):
        attend.masks.or_masks(attend.mods.alibi(4))


def test_rules_that_fit_still_run_with_several_batch_dims():
    q, k, v = torch.randn(2, 3, 4, 5, 8), torch.randn(2, 3, 4, 7, 8), torch.randn(2, 3, 4, 7, 8)
    out = attend.attention(q, k, v, mask=attend.masks.padding(torch.arange(1, 7)), score_mod=attend.mods.alibi(4))
    assert out.shape == (2, 3, 4, 5, 8)  # b indexes the 6 flattened batch entries


def test_rule_helpers_and_rule_results_are_checked():
    """The reviewer's cases: helpers outside attention() and rules returning the wrong shape."""
    with pytest.raises(ValueError, match=r"mask_mod: padding\(lengths=\[1, 2, 3\]\) does not fit this call: 3 lengths "
                                         r"for a batch of 2"):
        attend.masks.to_dense(attend.masks.padding(torch.tensor([1, 2, 3])), 2, 1, 3, 4)
    with pytest.raises(TypeError, match=r"call it: attend.masks.causal\(\)"):
        attend.masks.render(attend.masks.causal, 2, 4)
    assert attend.masks.render(attend.masks.padding(torch.tensor([1, 3])), 2, 4, b=1) == "1 1 1 0\n1 1 1 0"
    with pytest.raises(ValueError, match=r"mask_mod must return a tensor that broadcasts to \(B, H, l, s\) = "
                                         r"\(2, 4, 5, 7\) .* got shape \(5,\)"):
        call(mask=lambda b, h, i, j: torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"score_mod must return a tensor that broadcasts .* got shape \(2, 4, 5\)"):
        call(score_mod=lambda s, b, h, i, j: s.sum(-1), backend="eager")
    with pytest.raises(TypeError, match=r"score_mod: attend.masks.to_dense is one of attend's helpers, not a score_mod"):
        call(score_mod=attend.masks.to_dense)
