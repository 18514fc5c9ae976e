"""RELIABILITY.md B-C: invariances, fully masked rows, overflow, NaN propagation."""
from __future__ import annotations

import math

import pytest
import torch

import attend
import reference as R
from cases import (BACKENDS, BASELINE, SCORES, attention, backend_arg, check_case, device, inputs, make_score,
                   runnable, skip_unquarantined, wide)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["all_false", "all_neg_inf_bias", "whole_head", "rule"])
def test_fully_masked_rows_are_exactly_zero_with_finite_gradients(backend, how):
    B, H, L, S = 2, 2, 5, 20  # 20 keys: a dead row spans two 16-key blocks (chunked16, triton)
    q, k, v = inputs(B, H, H, L, S, 8, 8, torch.float32, grad=True)
    if how == "all_false":
        m = torch.rand(B, H, L, S) > 0.3
        m[:, :, 2] = False
        dead = (slice(None), slice(None), 2)
    elif how == "all_neg_inf_bias":
        m = torch.randn(B, H, L, S)
        m[0, 1, 3] = -math.inf
        dead = (0, 1, 3)
    elif how == "whole_head":
        m = torch.ones(B, H, L, S, dtype=torch.bool)
        m[1, 0] = False
        dead = (1, 0)
    else:
        m = lambda b, h, i, j: (i != 4) & (j >= 0)  # noqa: E731  query 4 sees nothing
        dead = (slice(None), slice(None), 4)
    out = attention(backend, q, k, v, mask=m)
    assert torch.equal(out[dead], torch.zeros_like(out[dead]))
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(q.grad[dead], torch.zeros_like(q.grad[dead]))  # a dead row's query gets no gradient
    if backend != "sdpa":
        _, w = attention(backend, q, k, v, mask=m, return_weights=True)
        assert torch.equal(w[dead], torch.zeros_like(w[dead]))
        rows = w.sum(-1)
        alive = rows != 0
        torch.testing.assert_close(rows[alive], torch.ones_like(rows[alive]))


def test_safe_softmax_log_sum_exp_is_minus_inf_for_dead_rows():
    from attend.backends.base import safe_softmax

    s = torch.tensor([[0.0, 1.0], [-math.inf, -math.inf]], requires_grad=True)
    p, lse = safe_softmax(s)
    assert lse[1].item() == -math.inf
    assert torch.equal(p[1], torch.zeros(2))
    torch.testing.assert_close(lse[0], torch.logsumexp(s[0], 0))
    p.sum().backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_scores_beyond_65504_stay_finite(backend):
    """q·k exceeds fp16's range; scores accumulate in fp32, so the result is finite and right."""
    q = torch.full((1, 1, 4, 64), 40.0, dtype=torch.float16)
    k = torch.full((1, 1, 6, 64), 40.0, dtype=torch.float16)  # q·k = 102400 > 65504
    k[..., 2, :] = 41.0
    v = torch.randn(1, 1, 6, 8).half()
    out = attention(backend, q, k, v, score="dot")
    assert torch.isfinite(out).all()
    ref, _ = R.reference(q, k, v, R.dot)
    torch.testing.assert_close(out.double(), ref, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_shift_invariance(backend):
    """+1e4 on whole rows of scores changes nothing (20 keys: across 16-key blocks)."""
    dtype = wide(backend)
    q, k, v = inputs(1, 2, 2, 5, 20, 8, 8, dtype)
    shift = torch.full((1, 2, 5, 1), 1e4, dtype=dtype)  # +1e4 on whole rows
    a = attention(backend, q, k, v)
    b = attention(backend, q, k, v, mask=shift)
    if dtype == torch.float64:
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    else:  # triton, float32: nothing beyond what fp32 rounding of the shifted scores costs the eager baseline too
        ref, _ = R.reference(q, k, v, lambda x, y: R.dot(x, y) / 8**0.5)
        base = attend.attention(q, k, v, mask=shift, backend=BASELINE)
        R.check(b, base, ref, dtype=dtype, m=2, what=f"{backend} shifted rows")


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates_to_affected_rows_only(backend):
    q, k, v = inputs(1, 1, 1, 4, 20, 8, 8, torch.float32)  # 20 keys: two 16-key blocks
    q[0, 0, 1, 3] = math.nan
    out = attention(backend, q, k, v)
    assert torch.isnan(out[0, 0, 1]).all()
    assert torch.isfinite(out[0, 0, [0, 2, 3]]).all()


@pytest.mark.parametrize("L", [4, 512])  # 512: plain causal through sdpa's blocks of 256
def test_a_nan_in_a_general_scores_weight_shows_on_sdpa(L):
    """attend's input check finds q, k and v finite and sdpa then skips its own NaN-row pass,
    but only when the score hands q to SDPA unchanged: q W with a NaN in W must still give NaN
    (SDPA's CPU kernel returns zeros for a row whose scores are all NaN)."""
    q, k, v = inputs(1, 1, 1, L, L, 8, 8, torch.float32)
    score = attend.scores.General(8, 8)
    with torch.no_grad():
        score.weight[2, 5] = math.nan
    out = attend.attention(q, k, v, score=score, causal=True, backend="sdpa")
    assert out.isnan().all()


def test_cosine_skips_the_nan_row_pass_only_where_it_keeps_finite_queries_finite(monkeypatch):
    """Normalising finite queries (divided by at least eps > 0) gives finite ones, so sdpa skips its
    NaN-row pass for cosine once attend's input check found q, k, v finite; not with eps = 0 (a
    zero query is then 0/0), nor for a subclass that changes ``as_dot``; and a NaN query still
    gives its NaN row."""
    import attend.backends.sdpa as sdpa_mod

    filled = []
    real = sdpa_mod._fill_rows
    monkeypatch.setattr(sdpa_mod, "_fill_rows", lambda out, rows, value: filled.append(value) or real(out, rows, value))

    class Shifted(attend.scores.Cosine):
        def as_dot(self, q, k):
            qn, kn, f = super().as_dot(q, k)
            return qn - 1.0, kn, f

    q, k, v = inputs(1, 2, 2, 6, 6, 8, 8, torch.float32)
    with torch.no_grad():
        for score, pass_runs in ((attend.scores.Cosine(), False), (attend.scores.Cosine(eps=0.0), True),
                                 (Shifted(), True)):
            filled.clear()
            attend.attention(q, k, v, score=score, backend="sdpa")
            assert bool(filled) == pass_runs, score
        q[0, 1, 2] = math.nan
        out = attend.attention(q, k, v, score="cosine", backend="sdpa")
    assert out[0, 1, 2].isnan().all() and not out[0, 0].isnan().any() and not out[0, 1, [0, 1, 3, 4, 5]].isnan().any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_values_reach_only_the_rows_that_may_attend_them(backend):
    """One behaviour on every backend (README, Semantics): a fully masked row is exactly 0
    whatever its query holds; a NaN/inf key or value reaches exactly the rows that may attend
    it (they are NaN), never a row that masks it. Before, a NaN query in a fully masked row
    gave NaN on sdpa and 0 elsewhere, and a masked NaN value leaked through 0 * NaN."""
    skip_unquarantined(backend)
    B, H, L, S, E = 1, 2, 6, 8, 16
    q, k, v = inputs(B, H, H, L, S, E, E, torch.float32)
    mask = torch.ones(L, S, dtype=torch.bool).tril(S - L)  # causal, bottom-right
    mask[0] = False  # row 0 sees nothing
    q[0, 0, 0] = math.nan  # NaN query, fully masked row: stays 0
    q[0, 1, 3] = math.nan  # NaN query, live row: NaN
    v[0, 0, 7] = math.nan  # masked for rows 0-4, allowed for row 5
    k[0, 1, 6] = math.inf  # masked for rows 0-3
    out = attention(backend, q, k, v, mask=mask)
    expect = [[False, False, False, False, False, True], [False, False, False, True, True, True]]
    assert out.isnan().any(-1)[0].tolist() == expect
    assert out.isnan().all(-1)[0].tolist() == expect  # whole rows, no stray element
    assert torch.equal(out[0, :, 0], torch.zeros(2, E))
    clean_q, clean_k, clean_v = inputs(B, H, H, L, S, E, E, torch.float32)
    clean = attention(backend, clean_q, clean_k, clean_v, mask=mask)
    assert torch.equal(out[0, 0, 1:5], clean[0, 0, 1:5])  # rows that mask the NaN value: bit-identical
    assert torch.equal(out[0, 1, 1:3], clean[0, 1, 1:3])


@pytest.mark.parametrize("backend", ["eager", "chunked", "chunked16", "inductor"])
def test_weights_and_key_totals_keep_non_finite_inputs_where_attention_does(backend):
    """attention_weights and key_totals see the inputs attention sees: a NaN key that a -inf
    float mask removes changes no weight (before, both returned every row NaN while attention's
    weights were finite), and a row that may attend a NaN key is NaN in all three, so every total
    of its head is NaN, on every backend (before, inductor left keys outside a tile's span finite)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    k[0, 0, 3, 0] = math.nan
    removed = torch.where(torch.arange(6) == 3, -math.inf, 0.0)  # (S,): key 3 masked for every row
    be = backend_arg(backend)
    _, w = attend.attention(q, k, v, mask=removed, return_weights=True, backend=be)
    assert torch.isfinite(w).all()
    assert torch.equal(attend.attention_weights(q, k, mask=removed, backend=be), w)
    assert torch.equal(attend.attention_weights(q, k, mask=removed, heads=[1, 0], rows=[4, 0], backend=be),
                       w[:, [1, 0]][:, :, [4, 0]])
    assert torch.allclose(attend.key_totals(q, k, mask=removed, backend=be), w.sum(-2), atol=1e-6)
    kw = dict(window=(0, 0), backend=be)  # row 2 alone may attend key 3 (bottom-right: offset 1)
    _, w = attend.attention(q, k, k, return_weights=True, **kw)
    nan_rows = [[False, False, True, False, False], [False] * 5]
    assert torch.isnan(w).all(-1)[0].tolist() == nan_rows
    assert torch.isnan(attend.attention_weights(q, k, **kw)).all(-1)[0].tolist() == nan_rows
    assert torch.isnan(attend.attention_weights(q, k, heads=[0], rows=[2, 1], **kw)).all(-1)[0].tolist() == [[True,
                                                                                                              False]]
    totals = attend.key_totals(q, k, **kw)
    assert torch.isnan(totals[0, 0]).all() and torch.isfinite(totals[0, 1]).all()


def test_empty_head_and_row_selections_are_empty_weights_and_bad_ones_are_refused():
    q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 4, 8)
    assert attend.attention_weights(q, k, heads=[]).shape == (1, 0, 3, 4)  # (an empty list is float to torch)
    assert attend.attention_weights(q, k, rows=()).shape == (1, 2, 0, 4)
    for bad in (3, [[0]], [0.5], [True], torch.tensor(1)):
        with pytest.raises(ValueError, match=r"^heads must be a sequence or 1-D integer tensor of indices, got "):
            attend.attention_weights(q, k, heads=bad)
    with pytest.raises(ValueError, match=r"^rows must be indices in \[0, 3\), got \[3\]$"):
        attend.attention_weights(q, k, rows=[3])
    with pytest.raises(attend.backends.UnsupportedCall, match="SDPA does not return the attention weights"):
        attend.attention_weights(q, k, heads=[], backend="sdpa")  # refused as a selection with heads would be


def test_finite_values_whose_sum_overflows_are_not_taken_for_non_finite():
    """The cheap check is a sum; values near float32's largest overflow it to inf, and the
    per-row test that follows finds no bad row: the result is the reference's."""
    q, k, v = inputs(1, 1, 1, 3, 5, 4, 4, torch.float32)
    v[0, 0, :, 0] = 3e38  # every row's output is ~3e38 in that feature; the sum is inf
    assert math.isinf(v.sum().item())
    out = attend.attention(q, k, v, backend="eager")
    assert torch.isfinite(out).all()
    ref, _ = R.reference(q.double(), k.double(), v.double(), R.scaled_dot(4))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_padding_changes_nothing_with_gradients(backend):
    skip_unquarantined(backend)
    q, k, v = inputs(2, 2, 2, 4, 6, 8, 8, wide(backend), grad=True)
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[1, :, 4:] = math.nan
    v2[1, :, 4:] = math.inf
    k2.requires_grad_(True)
    v2.requires_grad_(True)
    rule = attend.masks.padding([6, 4])
    a = attention(backend, q, k, v, mask=rule)
    b = attention(backend, q, k2, v2, mask=rule)
    assert torch.equal(a, b)
    gb = torch.autograd.grad(b.sum(), (q, k2, v2))
    assert all(torch.isfinite(g).all() for g in gb)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_value_in_masked_key_changes_nothing(backend):
    q, k, v = inputs(1, 1, 1, 4, 20, 8, 8, torch.float32)
    mask = torch.ones(20, dtype=torch.bool)
    mask[17] = False  # a key in the second 16-key block (chunked16, triton)
    a = attention(backend, q, k, v, mask=mask)
    k2, v2 = k.clone(), v.clone()
    k2[..., 17, :] = 1e30
    v2[..., 17, :] = 1e30
    b = attention(backend, q, k2, v2, mask=mask)
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend,L,rule", [(b, 40, r) for b in BACKENDS for r in ("causal", "padding")]
                         + [("sdpa", 600, "causal")])  # (600 keys: sdpa's causal blocks of 256)
@pytest.mark.parametrize("scale", [0.0, -0.5])
def test_a_scale_of_zero_or_below_with_causal_is_computed_not_nan(backend, L, rule, scale):
    """A scale of 0 (uniform weights over the allowed keys) or below: SDPA's CPU kernel with
    ``is_causal`` made its masked entries NaN (-inf times the scale, torch 2.13), and every row
    with them, silently; padding with causal runs sdpa's per-sequence cut."""
    E = 8
    q, k, v = inputs(2, 2, 2, L, L, E, E, torch.float32)
    if rule == "causal":
        kw, allowed = dict(causal=True), R.causal_mask(L, L)
    else:  # key padding with causal: sdpa cuts each sequence's keys and keeps is_causal
        lengths = torch.tensor([L, L - 9])
        kw = dict(causal=True, mask=attend.masks.padding(lengths))
        allowed = R.causal_mask(L, L) & (torch.arange(L) < lengths.view(2, 1, 1, 1))
    kw["scale"] = scale
    check_case(backend, q, k, v, kw=kw, ref_scores=lambda a, b: (a @ b.transpose(-1, -2)) * scale, allowed=allowed,
               dtype=torch.float32, what=f"scale {scale} {rule} L={L}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_invariances(backend):
    """Permuting key/value pairs; masking a key equals deleting it; padding inside a batch
    (float64; triton in float32, to float32's tolerance)."""
    q, k, v = inputs(1, 2, 2, 6, 8, 8, 8, wide(backend))
    perm = torch.randperm(8)
    torch.testing.assert_close(attention(backend, q, k, v), attention(backend, q, k[:, :, perm], v[:, :, perm]))
    keep = torch.ones(8, dtype=torch.bool)
    keep[5] = False
    torch.testing.assert_close(attention(backend, q, k, v, mask=keep),
                               attention(backend, q, k[:, :, keep], v[:, :, keep]))
    # a sequence alone equals the same sequence padded inside a batch
    short = attention(backend, q[:, :, :4], k[:, :, :5], v[:, :, :5])
    kb = torch.cat([k, k.flip(2)], 0)
    vb = torch.cat([v, v.flip(2)], 0)
    qb = torch.cat([q, q], 0)
    padded = attention(backend, qb, kb, vb, mask=attend.masks.padding(torch.tensor([5, 8])))
    torch.testing.assert_close(padded[0, :, :4], short[0])


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("backend", ["eager", "chunked16", "sdpa"])
def test_gradcheck_float64(backend, score):
    """torch.autograd.gradcheck with a partial mask and a fully masked row (RELIABILITY B10). Not triton:
    gradcheck needs float64, which its kernels do not take (its gradients: the tolerance rule, test_backends)."""
    if not runnable(backend, score):
        pytest.skip(f"{backend} does not run score {score} (tested in test_backends)")
    arg, _ = make_score(score, 4)
    if isinstance(arg, torch.nn.Module):
        arg = arg.double()
    q, k, v = inputs(1, 2, 1, 3, 20, 4, 3, torch.float64, grad=True)
    mask = torch.rand(1, 2, 3, 20) > 0.3
    mask[0, 1, 2] = False  # a fully masked row
    mask[..., 0] = True
    mask[0, 1, 2] = False
    b = backend_arg(backend)
    fn = lambda q, k, v: attend.attention(q, k, v, score=arg, mask=mask, backend=b)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-5)


def test_gradients_reach_score_parameters_and_score_mod_tables():
    """chunked recomputes blocks; gradients still reach module parameters and a learned bias table."""
    for backend in ("eager", "chunked16"):
        torch.manual_seed(0)
        add = attend.scores.Additive(8, 8, 6).double()
        table = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)
        q, k, v = inputs(1, 2, 2, 5, 40, 8, 8, torch.float64, grad=True)
        out = attend.attention(q, k, v, score=add, score_mod=attend.mods.relative_bias(table), causal=True,
                               backend=backend_arg(backend))
        out.sum().backward()
        grads = [p.grad.clone() for p in add.parameters()] + [table.grad.clone()]
        if backend == "eager":
            ref_grads = grads
        else:
            for a, b in zip(grads, ref_grads):
                torch.testing.assert_close(a, b)
        assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("backend", BACKENDS + ["inductor"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16_bit_learned_table_gets_its_gradient_within_the_tolerance_rule(backend, dtype):
    """A relative-bias table learned in the inputs' 16-bit dtype: its gradient is the sum of many
    tiles' shares (chunked: from both the log-sum-exp and the output pass, which cancel), so it is
    summed in float32 and rounded once. (Rounded per share, a bfloat16 table's gradient on
    ``chunked`` was 30x further off than eager's, silently.)"""
    if backend == "inductor" and attend.backends.inductor._no_compiler():
        pytest.skip("no C++ compiler")
    skip_unquarantined(backend)
    B, H, L, R_ = 1, 4, 64, 3
    q, k, v = inputs(B, H, H, L, L, 8, 8, dtype)
    dev = device(backend)
    g = torch.Generator().manual_seed(7)
    table0 = torch.randn(H, 2 * R_ + 1, generator=g)
    dout = torch.randn(B, H, L, 8, generator=g, dtype=torch.float64)
    rel = (torch.arange(L).view(1, -1) - torch.arange(L).view(-1, 1)).clamp(-R_, R_) + R_  # (L, S): j - i

    def table_grad(b, table, q, k, v):
        out = attend.attention(q, k, v, score_mod=attend.mods.relative_bias(table), causal=True, backend=b)
        return torch.autograd.grad(out, table, dout.to(out.device, out.dtype))[0].cpu()

    t64 = table0.double().requires_grad_()
    ref, _ = R.reference(q.double(), k.double(), v.double(), R.scaled_dot(8), allowed=R.causal_mask(L, L),
                         mod=lambda s: s + t64[:, rel])
    want = torch.autograd.grad(ref, t64, dout)[0]
    on = [x.to(dev) for x in (q, k, v)]
    if backend == "sdpa":  # its path for tables takes float32 and float64 only: refused, by name
        with pytest.raises(attend.backends.UnsupportedCall, match=f"float32 or float64 only, got {dtype}"):
            table_grad("sdpa", table0.to(dtype).requires_grad_(), *on)
        return
    got = table_grad(backend_arg(backend), table0.to(dev, dtype).requires_grad_(), *on)
    base = table_grad(BASELINE, table0.to(dtype).requires_grad_(), q, k, v)
    R.check(got, base, want, dtype=dtype, m=3, what=f"d(table) {backend} {dtype}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_query_in_a_fully_masked_row_leaves_gradients_finite(backend):
    """The reviewer's case: row 1 sees no key and its query holds NaN. Its output is 0, and
    (before) dK got NaN through 0 * NaN on eager/chunked, dQ/dK/dV on sdpa."""
    skip_unquarantined(backend)
    q, k, v = inputs(1, 2, 2, 4, 6, 16, 16, torch.float32)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1] = False
    clean = q.clone()
    q[0, 0, 1, 0] = math.nan

    def grads(qq):
        t = [x.clone().requires_grad_(True) for x in (qq, k, v)]
        out = attention(backend, *t, mask=mask)
        return out, torch.autograd.grad(out.sum(), t)

    out, g = grads(q)
    ref_out, ref_g = grads(clean)
    assert torch.equal(out[0, 0, 1], torch.zeros(16)) and all(torch.isfinite(x).all() for x in g)
    for a, b in zip(g[1:], ref_g[1:]):  # dK, dV: the dead row's query never mattered
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
