"""Hard attention, score modifiers, grouped heads, dropout and determinism (RELIABILITY D)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import attend
import reference as R
from cases import BACKENDS, attention, backend_arg, inputs, runnable, wide


def test_hard_attention_selects_value_of_argmax_key():
    q, k, v = inputs(2, 2, 2, 5, 7, 8, 6, torch.float64)
    mask = torch.rand(2, 2, 5, 7) > 0.3
    mask[0, 0, 1] = False
    out, w = attend.attention(q, k, v, hard=True, mask=mask, return_weights=True)
    s = torch.where(mask, R.dot(q, k), torch.tensor(-math.inf, dtype=torch.float64))
    idx = s.argmax(-1)
    expect = torch.gather(v, 2, idx.unsqueeze(-1).expand(-1, -1, -1, 6))
    expect[0, 0, 1] = 0.0  # fully masked row
    torch.testing.assert_close(out, expect)
    assert torch.equal(w.sum(-1)[0, 0, 1], torch.tensor(0.0, dtype=torch.float64))
    assert set(w.unique().tolist()) <= {0.0, 1.0}
    assert attend.explain(q, k, v, hard=True).backend == "eager"


def test_hard_has_no_score_gradient_and_straight_through_has_the_soft_one():
    q, k, v = inputs(1, 1, 1, 4, 6, 8, 8, torch.float64, grad=True)
    hard = attend.attention(q, k, v, hard=True)
    st = attend.attention(q, k, v, hard="straight_through")
    assert torch.equal(hard, st)  # same forward value
    hard.sum().backward()
    assert q.grad is None or torch.equal(q.grad, torch.zeros_like(q))
    assert v.grad.abs().sum() > 0  # the selected values get gradient
    q.grad = k.grad = v.grad = None
    st.sum().backward()
    # the soft gradient w.r.t. scores flows through the straight-through estimator
    qs = q.detach().clone().requires_grad_(True)
    soft = attend.attention(qs, k.detach(), v.detach())
    soft.sum().backward()
    torch.testing.assert_close(q.grad, qs.grad)


# float64 to rounding: not sdpa (no score_mod) nor triton (no float64; its compiled mods: test_triton)
@pytest.mark.parametrize("backend", [b for b in BACKENDS if runnable(b, "dot", score_mod=attend.mods.softcap(2.0),
                                                                     dtype=torch.float64)])
def test_score_mods_match_explicit_formulas(backend):
    B, H, L, S, E = 2, 4, 6, 9, 8
    q, k, v = inputs(B, H, H, L, S, E, E, torch.float64)
    b = backend_arg(backend)
    pos = torch.arange(L).view(-1, 1) + (S - L)
    j = torch.arange(S).view(1, -1)
    base = lambda x, y: R.dot(x, y) / math.sqrt(E)  # noqa: E731
    # ALiBi
    slopes = attend.mods.alibi_slopes(H).double()
    out = attend.attention(q, k, v, score_mod=attend.mods.alibi(slopes), causal=True, backend=b)
    ref, _ = R.reference(q, k, v, base, mod=lambda s: s - slopes.view(1, H, 1, 1) * (pos - j).abs(),
                         allowed=R.causal_mask(L, S))
    torch.testing.assert_close(out, ref)
    # soft-capping
    out = attend.attention(q, k, v, score="dot", score_mod=attend.mods.softcap(2.0), backend=b)
    ref, _ = R.reference(q, k, v, R.dot, mod=lambda s: 2.0 * torch.tanh(s / 2.0))
    torch.testing.assert_close(out, ref)
    # relative bias (per head, R = 3)
    table = torch.randn(H, 7, dtype=torch.float64)
    out = attend.attention(q, k, v, score_mod=attend.mods.relative_bias(table), backend=b)
    rel = (j - pos).clamp(-3, 3) + 3
    ref, _ = R.reference(q, k, v, base, mod=lambda s: s + table[:, rel].unsqueeze(0))
    torch.testing.assert_close(out, ref)


def test_alibi_slopes_follow_the_paper():
    torch.testing.assert_close(attend.mods.alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    s12 = attend.mods.alibi_slopes(12)
    assert s12.shape == (12,)
    torch.testing.assert_close(s12[:8], attend.mods.alibi_slopes(8))
    torch.testing.assert_close(s12[8:], attend.mods.alibi_slopes(16)[0::2][:4])


@pytest.mark.parametrize("fn, pattern", [
    (lambda: attend.mods.softcap(0), r"cap must be a finite number > 0, got 0"),
    (lambda: attend.mods.relative_bias(torch.zeros(4)), r"table's last dimension must be odd"),
    (lambda: attend.mods.alibi(torch.zeros(2, 2)), r"slopes must be a 1-D float tensor"),
    (lambda: attend.mods.alibi_slopes(0), r"num_heads must be a positive int, got 0"),
    (lambda: attend.scores.Cosine(0.0), r"temperature must be a finite number > 0, got 0.0"),
    (lambda: attend.scores.Additive(4, 0, 3), r"key_dim must be a positive int, got 0"),
])
def test_mod_and_score_argument_errors(fn, pattern):
    with pytest.raises(ValueError, match=pattern):
        fn()


@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_query_heads_read_the_right_kv_head(backend):
    """Query head h reads key/value head h // (Hq // Hkv) (float64; triton in float32)."""
    q, k, v = inputs(1, 6, 2, 5, 7, 8, 8, wide(backend))
    out = attention(backend, q, k, v)
    for h in range(6):
        one = attend.attention(q[:, h:h + 1], k[:, h // 3:h // 3 + 1], v[:, h // 3:h // 3 + 1], backend="eager")
        torch.testing.assert_close(out[:, h:h + 1], one)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reruns_are_bit_identical(backend):
    q, k, v = inputs(2, 2, 2, 33, 47, 16, 16, torch.float32, grad=True)
    results = []
    for _ in range(2):
        out = attention(backend, q, k, v, causal=True)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        results.append((out, grads))
    assert torch.equal(results[0][0], results[1][0])
    for a, c in zip(results[0][1], results[1][1]):
        assert torch.equal(a, c)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if runnable(b, "scaled_dot", dropout_p=0.3)])
def test_dropout(backend):
    q, k, v = inputs(1, 2, 2, 64, 64, 16, 16, torch.float32)
    b = backend_arg(backend)
    plain = attend.attention(q, k, v, backend=b)
    assert torch.equal(attend.attention(q, k, v, dropout_p=0.0, backend=b), plain)
    torch.manual_seed(3)
    a = attend.attention(q, k, v, dropout_p=0.3, backend=b)
    torch.manual_seed(3)
    c = attend.attention(q, k, v, dropout_p=0.3, backend=b)
    assert torch.equal(a, c)
    assert not torch.equal(a, plain)


@pytest.mark.parametrize("backend", ["eager", "chunked16"])
def test_dropout_rate_and_weights_before_dropout(backend):
    """Measure the drop rate with values = one-hot key indicators: output = dropped weights."""
    S = 256
    q = torch.randn(1, 4, 256, 8)
    k = torch.randn(1, 4, S, 8)
    v = torch.eye(S).expand(1, 4, S, S)  # output row = the (dropped, rescaled) weight row
    out, w = attend.attention(q, k, v, dropout_p=0.2, return_weights=True, backend=backend_arg(backend))
    rate = (out == 0).float().mean().item()
    assert abs(rate - 0.2) < 0.01, rate
    kept = out != 0
    torch.testing.assert_close(out[kept], (w / 0.8)[kept])  # weights are the undropped ones
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 4, 256))


def test_parity_with_torch_sdpa():
    """attend equals torch's SDPA (math backend in float64) where the semantics coincide
    (triton in float32: to float32's tolerance)."""
    q, k, v = inputs(2, 4, 4, 9, 9, 16, 8, torch.float64)
    m = torch.rand(2, 1, 9, 9) > 0.3
    m[..., 0] = True
    for kw, tkw in [({}, {}), ({"causal": True}, {"is_causal": True}), ({"mask": m}, {"attn_mask": m}),
                    ({"scale": 0.3}, {"scale": 0.3}), ({"mask": m.double()}, {"attn_mask": m.double()})]:
        expect = F.scaled_dot_product_attention(q, k, v, **tkw)
        for b in BACKENDS:
            dt = wide(b)
            kw_b = {key: x.to(dt) if torch.is_tensor(x) and x.is_floating_point() else x for key, x in kw.items()}
            torch.testing.assert_close(attention(b, q.to(dt), k.to(dt), v.to(dt), **kw_b), expect.to(dt))
    # grouped-query heads, as torch's enable_gqa
    kg, vg = k[:, :2], v[:, :2]
    expect = F.scaled_dot_product_attention(q, kg, vg, enable_gqa=True)
    torch.testing.assert_close(attend.attention(q, kg, vg, backend="eager"), expect)
