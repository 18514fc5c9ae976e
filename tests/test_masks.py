"""Mask rules, their combination, rendering, and agreement with the explicit dense masks."""
from __future__ import annotations

import pytest
import torch

import attend
import reference as R
from attend import masks
from cases import BACKENDS, BASELINE, attention, backend_arg, device, inputs, wide


def test_causal_picture_from_design():
    assert masks.render(masks.causal(), 2, 4) == "1 1 1 0\n1 1 1 1"
    assert masks.render(masks.causal(), 4, 2) == "0 0\n0 0\n1 0\n1 1"


@pytest.mark.parametrize("L,S", [(1, 1), (3, 3), (2, 5), (5, 2), (7, 7)])
def test_rules_equal_loop_masks(L, S):
    d = lambda rule: masks.to_dense(rule, 1, 1, L, S)[0, 0]  # noqa: E731
    assert torch.equal(d(masks.causal()), R.causal_mask(L, S))
    for w in [0, 1, 3, 100, (2, 0), (0, 2), (None, 1), (1, None)]:
        left, right = (w, w) if isinstance(w, int) else w
        assert torch.equal(d(masks.sliding_window(w)), R.window_mask(L, S, left, right)), w


def test_padding_document_prefix_and_combinations():
    lengths = torch.tensor([2, 4])
    pad = masks.to_dense(masks.padding(lengths), 2, 1, 3, 4)
    assert pad[0, 0].tolist() == [[True, True, False, False]] * 3
    assert pad[1, 0].all()
    ids = torch.tensor([0, 0, 1, 1, 1, 2])
    doc = masks.to_dense(masks.and_masks(masks.document(ids), masks.causal()), 1, 1, 6, 6)[0, 0]
    expect = torch.tensor([[bool(ids[i] == ids[j] and j <= i) for j in range(6)] for i in range(6)])
    assert torch.equal(doc, expect)
    pre = masks.render(masks.prefix_lm(2), 4, 4)
    assert pre == "1 1 0 0\n1 1 0 0\n1 1 1 0\n1 1 1 1"
    either = masks.to_dense(masks.or_masks(masks.causal(), lambda b, h, i, j: j == 3), 1, 1, 4, 4)[0, 0]
    assert either[:, 3].all() and either[1, :2].all() and not either[1, 2]
    km = masks.to_dense(masks.key_mask(torch.tensor([[True, False, True]])), 1, 2, 2, 3)
    assert km[0, 1].tolist() == [[True, False, True]] * 2


def test_rule_repr_and_render_tensor():
    r = masks.and_masks(masks.causal(), masks.sliding_window((2, 0)))
    assert repr(r) == "and_masks(causal(), sliding_window((2, 0)))"
    t = torch.tensor([[True, False], [True, True]])
    assert masks.render(t, allowed="#", masked=".") == "# .\n# #"
    assert masks.render(t.view(1, 1, 2, 2)) == "1 0\n1 1"


@pytest.mark.parametrize(
    "fn, pattern",
    [
        (lambda: masks.padding([[1, 2]]), r"lengths must be a 1-D integer tensor"),
        (lambda: masks.padding([1, -2]), r"lengths must be >= 0, got \[1, -2\]"),
        (lambda: masks.document(torch.randn(3)), r"ids must be an integer tensor"),
        (lambda: masks.prefix_lm(-1), r"prefix_len must be an int >= 0"),
        (lambda: masks.prefix_lm(torch.tensor([-3, 2])), r"prefix_len must be >= 0, got \[-3, 2\]"),
        (lambda: masks.prefix_lm(torch.tensor([True, False])), r"prefix_len must be an int or a 1-D integer tensor"),
        (lambda: masks.render(masks.padding([2]), 2, 3, b=1), r"b=1, h=0: the rule has no such sequence or head"),
        (lambda: masks.and_masks(), r"and_masks needs at least one mask_mod"),
        (lambda: masks.or_masks(3), r"or_masks takes mask_mod functions"),
        (lambda: masks.key_mask(torch.ones(2, 3)), r"key_mask must be a boolean tensor \(B, S\)"),
        (lambda: masks.render(masks.causal()), r"render needs L and S"),
        (lambda: masks.sliding_window(-2), r"window size must be an int >= 0"),
    ],
)
def test_rule_argument_errors(fn, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        fn()


@pytest.mark.parametrize("backend", BACKENDS)
def test_rules_through_attention_equal_dense_masks(backend):
    """mask=rule equals mask=dense tensor, and causal/window flags equal their explicit masks
    (float64; triton in float32, to float32's tolerance)."""
    L, S = 6, 9
    q, k, v = inputs(2, 2, 2, L, S, 8, 8, wide(backend))
    lengths = torch.tensor([9, 4])
    rule = masks.and_masks(masks.padding(lengths), masks.sliding_window((3, 1)))
    dense = masks.to_dense(rule, 2, 2, L, S)
    a1 = attention(backend, q, k, v, mask=rule)
    a2 = attention(backend, q, k, v, mask=dense)
    a3 = attention(backend, q, k, v, mask=masks.padding(lengths), window=(3, 1))
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(a1, a3)
    c1 = attention(backend, q, k, v, causal=True, window=2)
    c2 = attention(backend, q, k, v, mask=R.causal_mask(L, S) & R.window_mask(L, S, 2, 2))
    torch.testing.assert_close(c1, c2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L,S", [(4, 9), (9, 4), (7, 7)])
def test_causal_future_tokens_do_not_leak(backend, L, S):
    """Changing keys/values after a query's last visible key leaves its output bit-identical."""
    q, k, v = inputs(1, 2, 2, L, S, 8, 8, torch.float32)
    out = attention(backend, q, k, v, causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[..., -1, :] += 100.0  # the last key is visible only to the last query
    v2[..., -1, :] -= 50.0
    out2 = attention(backend, q, k2, v2, causal=True)
    assert torch.equal(out[..., :-1, :], out2[..., :-1, :])
    assert not torch.equal(out[..., -1, :], out2[..., -1, :])


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_edge_cases(backend):
    """float64; triton in float32, against the float64 reference by the tolerance rule."""
    L = S = 10
    dtype = wide(backend)
    q, k, v = inputs(1, 1, 1, L, S, 8, 8, dtype)
    # window 0: each query sees only its own key -> output = its value
    torch.testing.assert_close(attention(backend, q, k, v, window=0), v)
    # window >= length, or unbounded on both sides: no restriction
    plain = attention(backend, q, k, v)
    torch.testing.assert_close(attention(backend, q, k, v, window=50), plain)
    torch.testing.assert_close(attention(backend, q, k, v, window=(None, None)), plain)
    # asymmetric with padding and causal
    pad = masks.padding(torch.tensor([7]))
    a = attention(backend, q, k, v, window=(2, 5), causal=True, mask=pad)
    m = R.window_mask(L, S, 2, 5) & R.causal_mask(L, S) & (torch.arange(S) < 7)
    ref, _ = R.reference(q, k, v, lambda x, y: R.dot(x, y) / 8**0.5, allowed=m)
    if dtype == torch.float64:
        torch.testing.assert_close(a, ref)
    else:
        base = attend.attention(q, k, v, window=(2, 5), causal=True, mask=pad, backend=BASELINE)
        R.check(a, base, ref, dtype=dtype, m=2, what=f"{backend} window (2, 5), causal, padding")


def test_varlen_is_document_from_cumulative_lengths():
    a = attend.masks.to_dense(attend.masks.varlen([0, 3, 3, 5]), 1, 1, 5, 5)
    b = attend.masks.to_dense(attend.masks.document([0, 0, 0, 2, 2]), 1, 1, 5, 5)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"cu_seqlens must start at 0 and never decrease, got \[1, 3\]"):
        attend.masks.varlen([1, 3])
    with pytest.raises(ValueError, match=r"cu_seqlens must start at 0 and never decrease, got \[0, 3, 2\]"):
        attend.masks.varlen([0, 3, 2])
    with pytest.raises(ValueError, match="cu_seqlens must be a 1-D integer sequence"):
        attend.masks.varlen([0.0, 2.0])


# ---- chunked local attention (Llama 4): one rule on every backend, block skipping included ----
def _chunk_mask(L: int, S: int, size: int) -> torch.Tensor:
    """Loop reference: query i (at key position i + S - L) sees key j iff both are in one chunk."""
    return torch.tensor([[i + S - L >= 0 and (i + S - L) // size == j // size for j in range(S)]
                         for i in range(L)])


@pytest.mark.parametrize("L,S", [(1, 1), (6, 6), (3, 8), (8, 3), (13, 13)])
@pytest.mark.parametrize("size", [1, 3, 4, 20])
def test_chunked_equals_loop_mask(L, S, size):
    assert torch.equal(masks.to_dense(masks.chunked(size), 1, 1, L, S)[0, 0], _chunk_mask(L, S, size))
    with_causal = masks.to_dense(masks.and_masks(masks.chunked(size), masks.causal()), 1, 1, L, S)[0, 0]
    assert torch.equal(with_causal, _chunk_mask(L, S, size) & R.causal_mask(L, S))


def test_chunked_picture_and_errors():
    assert masks.render(masks.chunked(2), 4, 4) == "1 1 0 0\n1 1 0 0\n0 0 1 1\n0 0 1 1"
    assert repr(masks.chunked(3)) == "chunked(3)"
    for bad in (0, -1, 2.0, True, None):
        with pytest.raises(ValueError, match=rf"size must be an int >= 1, got {bad!r}"):
            masks.chunked(bad)


CHUNK_CASES = {  # (L, S, size, extra keywords)
    "chunks 16": (40, 40, 16, {}),
    "chunks 5, causal": (37, 37, 5, {"causal": True}),
    "L < S, causal": (23, 57, 8, {"causal": True}),
    "L > S (rows with no key)": (57, 23, 8, {}),
    "with a window": (40, 40, 16, {"window": (3, 0)}),
}


@pytest.mark.parametrize("case", list(CHUNK_CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_on_every_backend_equals_the_float64_reference(backend, case):
    """Output, gradients and (where a backend returns them) weights of ``mask=chunked(size)``
    against a float64 loop-mask reference, by the tolerance rule (GQA: 4 query heads, 2 kv)."""
    L, S, size, kw = CHUNK_CASES[case]
    allowed = _chunk_mask(L, S, size)
    if kw.get("causal"):
        allowed = allowed & R.causal_mask(L, S)
    if "window" in kw:
        allowed = allowed & R.window_mask(L, S, *kw["window"])
    q, k, v = inputs(2, 4, 2, L, S, 16, 16, torch.float32, seed=5)
    dev, b = device(backend), backend_arg(backend)
    qq, kk, vv = (t.to(dev).requires_grad_() for t in (q, k, v))
    out = attend.attention(qq, kk, vv, mask=masks.chunked(size), backend=b, **kw)
    grads = torch.autograd.grad(out.sum(), (qq, kk, vv))
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    kv = lambda t: t.repeat_interleave(2, dim=1)  # noqa: E731  (the reference has one head per query head)
    ref, ref_w = R.reference(qd, kv(kd), kv(vd), lambda x, y: R.dot(x, y) / 16**0.5, allowed=allowed)
    ref_grads = torch.autograd.grad(ref.sum(), (qd, kd, vd))
    qb, kb, vb = (t.clone().requires_grad_() for t in (q, k, v))  # float32 baseline: eager
    base = attend.attention(qb, kb, vb, mask=masks.chunked(size), backend="eager", **kw)
    base_grads = torch.autograd.grad(base.sum(), (qb, kb, vb))
    R.check(out.detach().cpu(), base.detach(), ref.detach(), dtype=torch.float32, m=2, what=f"{backend} {case}")
    for g, gb, gr, name in zip(grads, base_grads, ref_grads, "qkv"):
        R.check(g.cpu(), gb, gr, dtype=torch.float32, m=4, what=f"{backend} {case} d{name}")
    if backend != "sdpa":
        w = attend.attention_weights(qq.detach(), kk.detach(), mask=masks.chunked(size), backend=b, **kw).cpu()
        wb = attend.attention_weights(q, k, mask=masks.chunked(size), backend="eager", **kw)
        R.check(w, wb, ref_w, dtype=torch.float32, m=2, what=f"{backend} {case} weights")


def test_chunked_backend_skips_the_key_blocks_of_other_chunks():
    """The blocked CPU backend asks the rule which keys a query tile can reach: tiles of one
    chunk keep only that chunk's key blocks (with ``causal``, only the ones up to the diagonal)."""
    from attend.functional import _prepare

    q, k, v = inputs(1, 1, 1, 64, 64, 8, 8, torch.float32)
    call, _ = _prepare(q, k, v, mask=masks.chunked(16))
    spans = [(j, j + 8) for j in range(0, 64, 8)]
    kept = attend.backends.Chunked._kept
    assert kept(call, spans, 16, 32) == [2, 3]  # rows 16..31: keys 16..31 only
    assert kept(call, spans, 8, 24) == [0, 1, 2, 3]  # rows spanning two chunks: both chunks' keys
    call, _ = _prepare(q, k, v, mask=masks.and_masks(masks.chunked(16), masks.causal()))
    assert kept(call, spans, 16, 24) == [2]
    wide, _ = _prepare(q[..., :8, :], k, v, mask=masks.chunked(16))  # L = 8 < S: rows at positions 56..63
    assert kept(wide, spans, 0, 8) == [6, 7]


@pytest.mark.parametrize("backend", BACKENDS)
def test_document_ids_beyond_int32_stay_apart(backend):
    """Document ids are any integers: ids 2**32 apart (which wrap to equal int32 values) are
    different documents on every backend, sorted (packed) or not."""
    q, k, v = inputs(1, 2, 2, 6, 6, 8, 8, wide(backend))
    for ids in ([0, 0, 2**32, 2**32, 2**33, 2**33], [2**32, 0, 2**32, 0, -2**40, -2**40]):
        rule = masks.document(torch.tensor(ids))
        dense = masks.to_dense(rule, 1, 2, 6, 6)
        assert dense[0, 0, 0].tolist() == [a == ids[0] for a in ids]
        got = attention(backend, q, k, v, mask=rule)
        want = attention(backend, q, k, v, mask=dense)
        torch.testing.assert_close(got, want)
