"""A bias of the distance (a relative-bias table, ALiBi) as one call of SDPA's CPU kernel with its
biases a strided view (:mod:`attend.backends._distance_bias`): against the float64 reference by the tolerance rule,
forward and q/k/v gradients; that the kernel is handed a view of L + S - 1 entries per head, not
a dense mask; the calls made with ``causal``; where the path declines; what ``auto`` and
``explain`` say; the check that the kernel reads the view's strides."""
from __future__ import annotations

import math

import pytest
import torch

import attend
import reference as R
from attend.backends import _distance_bias as RS
from attend.functional import _prepare
from cases import BASELINE, inputs
from test_relbias_regions import _bias, _check


def _kernel_masks(monkeypatch):
    """Record, for every forward and backward kernel call, the mask's shape and its storage's size."""
    RS.reads_strides()  # (its own small calls, made once per process, before recording)
    seen = []

    def wrap(real, kind):
        def counted(*args, attn_mask=None, **kw):
            seen.append((kind, tuple(attn_mask.shape), attn_mask.untyped_storage().nbytes() // attn_mask.element_size()))
            return real(*args, attn_mask=attn_mask, **kw)
        return counted

    monkeypatch.setattr(RS, "_FWD", wrap(RS._FWD, "fwd"))
    monkeypatch.setattr(RS, "_BWD", wrap(RS._BWD, "bwd"))
    return seen


@pytest.mark.parametrize("L,S,M,causal", [
    (1100, 1100, 128, False), (700, 1500, 50, False), (1500, 600, 20, False), (300, 300, 0, False),
    (520, 520, 700, False),  # (the reach past the sequence)
    (1100, 1100, 128, True), (700, 1500, 50, True), (600, 600, 1, True), (1, 300, 8, True),  # (one query: decoding)
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_and_hands_the_kernel_a_view(monkeypatch, L, S, M, causal, dtype):
    seen = _kernel_masks(monkeypatch)
    q, k, v = inputs(1, 2, 2, L, S, 16, 16, dtype)
    table = torch.randn(2, 2 * M + 1, generator=torch.Generator().manual_seed(L + M))
    _check(q, k, v, table, causal=causal, dtype=dtype, what=f"relative bias L={L} S={S} R={M} causal={causal}")
    assert seen, "the strided path did not run"
    rows = [(r0, min(L, r0 + RS.ROWS)) for r0 in range(0, L, RS.ROWS)] if causal else [(0, L)]
    # each call: its rows over the keys they may see (reversed row r is the query at key position S - 1 - r)
    want = [(1, 2, r1 - r0, S - r0 if causal else S) for r0, r1 in rows]
    assert [shape for _, shape, _ in seen] == want * (len(seen) // len(want))
    assert all(n == 2 * (L + S - 1) for _, _, n in seen)  # the storage: L + S - 1 entries per head


@pytest.mark.parametrize("L,S,M,causal,shared,Hq,Hkv", [
    (1100, 1100, 128, False, False, 2, 2),
    (700, 1500, 50, False, True, 4, 2),  # L < S, grouped heads, one table for every head
    (1500, 600, 20, False, False, 2, 2),  # L > S
    (600, 900, 30, True, True, 2, 2),  # causal, queries at S - L + i, rows in 3 blocks
    (600, 600, 0, True, False, 2, 2),  # R = 0
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_training_with_a_fixed_table_matches_reference(monkeypatch, L, S, M, causal, shared, Hq, Hkv, dtype):
    """Output and the q, k, v gradients by the tolerance rule (m = 2 output, 3 gradients), the
    backward being the kernel's own with the same view."""
    seen = _kernel_masks(monkeypatch)
    g = torch.Generator().manual_seed(L + S + M)
    q, k, v = inputs(1, Hq, Hkv, L, S, 16, 16, dtype, seed=L + M)
    table = torch.randn(*(() if shared else (Hq,)), 2 * M + 1, generator=g).to(dtype)
    dout = torch.randn(1, Hq, L, 16, generator=g).double()

    def run(backend, qq, kk, vv, tt):
        qq, kk, vv = (t.detach().clone().requires_grad_(True) for t in (qq, kk, vv))
        if backend is None:
            bias = _bias(tt, Hq, L, S)
            out, _ = R.reference(qq, kk, vv, R.scaled_dot(16), mod=lambda s: s + bias,
                                 allowed=R.causal_mask(L, S) if causal else None)
        else:
            out = attend.attention(qq, kk, vv, score_mod=attend.mods.relative_bias(tt), causal=causal, backend=backend)
        return [out] + list(torch.autograd.grad(out, (qq, kk, vv), dout.to(out.dtype)))

    got = run("sdpa", q, k, v, table)
    assert any(kind == "bwd" for kind, _, _ in seen), "the kernel's backward did not run"
    base = run(BASELINE, q, k, v, table)
    ref = run(None, q.double(), k.double(), v.double(), table.double())
    for name, a, b, r, m in zip(["out", "dq", "dk", "dv"], got, base, ref, [2, 3, 3, 3]):
        R.check(a, b, r, dtype=dtype, m=m, what=f"{name} {L}x{S} R={M} causal={causal}")


@pytest.mark.parametrize("case", ["float64 table", "one row", "model layout", "alibi gqa causal", "subclass"])
def test_more_calls_against_the_reference(monkeypatch, case):
    """A float64 table with float32 inputs; a one-row training call; q, k, v as (B, H, L, E) views
    of a model's (B, L, H, E) tensors; ALiBi with grouped heads and causal; a subclass of the
    table's rule, which scores its own way and so is not taken here. Training, by the tolerance rule."""
    seen = _kernel_masks(monkeypatch)
    g = torch.Generator().manual_seed(11)
    Hq, Hkv, L, S, causal = 4, 4, 300, 420, case != "float64 table"
    if case == "one row":
        L = 1
    if case == "alibi gqa causal":
        Hkv = 2
    base = [torch.randn(1, n, h, 16, generator=g) for n, h in ((L, Hq), (S, Hkv), (S, Hkv))]  # (B, L, H, E)
    table = torch.randn(Hq, 2 * 20 + 1, generator=g, dtype=torch.float64)
    dout = torch.randn(1, Hq, L, 16, generator=g).double()

    class Doubled(attend.mods.relative_bias(table).__class__):
        def __call__(self, score, b, h, i, j):
            return super().__call__(score, b, h, i, j) * 2

    def mod_for(dtype):
        if case == "alibi gqa causal":
            return attend.mods.alibi(attend.mods.alibi_slopes(Hq))
        t = table if case == "float64 table" else table.to(dtype)
        return Doubled(t) if case == "subclass" else attend.mods.relative_bias(t)

    def run(backend, dtype):
        leaves = [t.to(dtype).requires_grad_(True) for t in base]
        q, k, v = (t.transpose(1, 2) for t in leaves)  # (features contiguous, heads strided)
        out = attend.attention(q, k, v, score_mod=mod_for(dtype), causal=causal, backend=backend)
        return [out] + list(torch.autograd.grad(out, leaves, dout.to(dtype)))

    got = run("sdpa" if case != "subclass" else "auto", torch.float32)
    assert bool(seen) is (case != "subclass")
    base32, ref = run(BASELINE, torch.float32), run("eager", torch.float64)
    for name, a, b, r, m in zip(["out", "dq", "dk", "dv"], got, base32, ref, [2, 3, 3, 3]):
        R.check(a, b, r, dtype=torch.float32, m=m, what=f"{case}: {name}")


def test_a_view_at_an_offset():
    vec = torch.arange(2 * 11, dtype=torch.float32).view(2, 11)
    view = RS._view(vec, 3, 4, 5)  # reversed rows 3:7, keys 0:5: entry r + j
    want = torch.stack([torch.stack([vec[h, r + 3: r + 8] for r in range(4)]) for h in range(2)]).unsqueeze(0)
    assert torch.equal(view, want) and view.untyped_storage().data_ptr() == vec.untyped_storage().data_ptr()


def test_the_view_reads_each_rows_entries():
    """Reversed row r, key j reads entry r + j: the view equals the dense biases with rows reversed."""
    for L, S, M, causal in ((5, 9, 2, False), (9, 5, 1, False), (6, 8, 3, True)):
        table = torch.randn(3, 2 * M + 1)
        mod = attend.mods.relative_bias(table).bind(L, S)
        vec = RS.vector(mod, L, S, torch.float32, causal)
        dense = _bias(table, 3, L, S).float()
        if causal:
            dense = dense.masked_fill(~R.causal_mask(L, S), -math.inf)
        assert torch.equal(RS._view(vec, 0, L, S), dense.flip(2))
        slopes = torch.rand(3) + 0.1
        mod = attend.mods.alibi(slopes).bind(L, S)
        dense = _alibi_bias(slopes, L, S).float()
        if causal:
            dense = dense.masked_fill(~R.causal_mask(L, S), -math.inf)
        assert torch.equal(RS._view(RS.vector(mod, L, S, torch.float32, causal), 0, L, S), dense.flip(2))


def _alibi_bias(slopes: torch.Tensor, L: int, S: int) -> torch.Tensor:
    """The reference's dense (1, H, L, S) ALiBi bias, -slope * |j - i - (S - L)|, in float64."""
    d = (torch.arange(S).view(1, -1) - torch.arange(L).view(-1, 1) - (S - L)).abs().double()
    return (-slopes.double().view(-1, 1, 1) * d).unsqueeze(0)


@pytest.mark.parametrize("L,S,causal,grad", [
    (1100, 1100, False, False), (700, 1500, True, False), (1500, 600, False, True), (600, 900, True, True),
    (1, 300, True, False), (600, 600, True, True),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_alibi_matches_reference(monkeypatch, L, S, causal, grad, dtype):
    """ALiBi (fixed slopes) here: output, and q, k, v gradients when ``grad``, by the tolerance rule."""
    seen = _kernel_masks(monkeypatch)
    H = 4
    q, k, v = inputs(1, H, H, L, S, 16, 16, dtype, seed=L + S)
    slopes = attend.mods.alibi_slopes(H)
    dout = torch.randn(1, H, L, 16, generator=torch.Generator().manual_seed(2)).double()

    def run(backend, qq, kk, vv):
        qq, kk, vv = (t.detach().clone().requires_grad_(grad) for t in (qq, kk, vv))
        with torch.set_grad_enabled(grad):
            if backend is None:
                bias = _alibi_bias(slopes, L, S)
                out, _ = R.reference(qq, kk, vv, R.scaled_dot(16), mod=lambda s: s + bias,
                                     allowed=R.causal_mask(L, S) if causal else None)
            else:
                out = attend.attention(qq, kk, vv, score_mod=attend.mods.alibi(slopes.to(dtype)), causal=causal,
                                       backend=backend)
            return [out] + (list(torch.autograd.grad(out, (qq, kk, vv), dout.to(out.dtype))) if grad else [])

    got = run("sdpa", q, k, v)
    assert seen and all(n == H * (L + S - 1) for _, _, n in seen)
    base = run(BASELINE, q, k, v)
    ref = run(None, q.double(), k.double(), v.double())
    for name, a, b, r, m in zip(["out", "dq", "dk", "dv"], got, base, ref, [2, 3, 3, 3]):
        R.check(a, b, r, dtype=dtype, m=m, what=f"ALiBi {name} {L}x{S} causal={causal}")


def _call(q, k, v, **kw):
    return _prepare(q, k, v, **kw)[0]


NEEDS_COMPILER = pytest.mark.skipif(bool(attend.backends.inductor._no_compiler()),
                                    reason="no C++ compiler: flex and inductor cannot run, so none stands aside")


@NEEDS_COMPILER
def test_auto_takes_it_and_explain_says_so():
    table = torch.randn(8, 257)
    for B, L, causal in ((1, 2048, False), (4, 512, False), (1, 4096, True), (4, 512, True)):
        q, k, v = inputs(B, 8, 8, L, L, 64, 64, torch.float32)
        with torch.no_grad():
            why = attend.explain(q, k, v, score_mod=attend.mods.relative_bias(table), causal=causal)
        assert why.backend == "sdpa" and f"strided view of {2 * L - 1} entries per head" in why.detail, (B, L, causal)
        assert RS.sdpa_reason(_call(q, k, v, score_mod=attend.mods.relative_bias(table))) in why.reasons["flex"]
        assert ("in blocks of 256 rows" in why.detail) is causal
    q, k, v = inputs(1, 8, 8, 1024, 1024, 64, 64, torch.float32, grad=True)
    why = attend.explain(q, k, v, score_mod=attend.mods.relative_bias(table))  # training, a fixed table
    assert why.backend == "sdpa" and "the backward is the kernel's, with the same view" in why.detail
    assert RS.sdpa_reason(_call(q, k, v, score_mod=attend.mods.relative_bias(table))) in why.reasons["inductor"]
    assert RS.sdpa_reason(_call(q, k, v, score_mod=attend.mods.relative_bias(table))).startswith(
        "sdpa runs this relative-bias table faster")
    learned = attend.mods.relative_bias(table.clone().requires_grad_(True))
    why = attend.explain(q, k, v, score_mod=learned)
    assert "strided view" not in why.detail  # (regions or inductor: the table's gradient)
    assert any("along the diagonals" in r for r in RS.reasons(_call(q, k, v, score_mod=learned)))


@NEEDS_COMPILER
def test_auto_leaves_alibis_inference_to_flex_with_causal_or_past_2048_keys():
    """ALiBi: here for training (fixed slopes) and for inference without causal up to
    ALIBI_FLEX_KEYS keys; flex (its proven reach) for inference with causal or longer."""
    for B, L, causal, grad, want in ((1, 2048, False, False, "sdpa"), (4, 512, False, False, "sdpa"),
                                     (1, 4096, False, False, "flex"), (1, 2048, True, False, "flex"),
                                     (4, 512, True, False, "flex"), (1, 2048, True, True, "sdpa"),
                                     (1, 4096, False, True, "sdpa")):
        q, k, v = inputs(B, 8, 8, L, L, 64, 64, torch.float32, grad=grad)
        with torch.set_grad_enabled(grad):
            why = attend.explain(q, k, v, score_mod=attend.mods.alibi(8), causal=causal)
        assert why.backend == want, (B, L, causal, grad, why)
        if want == "sdpa":
            assert why.detail.startswith(f"{'causal ' if causal else ''}ALiBi on SDPA's kernel")
            assert "sdpa runs this ALiBi faster" in " ".join(why.reasons["flex" if not grad else "inductor"])
    q, k, v = inputs(1, 8, 8, 2048, 2048, 64, 64, torch.float32, grad=True)
    learned = attend.mods.alibi(attend.mods.alibi_slopes(8).requires_grad_(True))
    assert attend.explain(q, k, v, score_mod=learned, causal=True).backend == "inductor"
    assert any("a learned slope's gradient" in r for r in RS.reasons(_call(q, k, v, score_mod=learned)))


@pytest.mark.parametrize("case,needle", [
    ("learned", "a learned table's gradient"), ("autocast", "under torch.compile, autocast or torch.func"),
    ("window", "other than causal"), ("float16", "float32 or float64"), ("nan table", "non-finite entry"),
    ("kernel", "does not read a strided mask"), ("nan slopes", "the slopes hold a non-finite entry"),
    ("softcap", "not a bias of the distance"), ("table past float32", "the table holds a non-finite entry"),
])
def test_calls_that_do_not_take_the_path(monkeypatch, case, needle):
    q, k, v = inputs(1, 2, 2, 300, 300, 8, 8, torch.float32)
    table = torch.randn(2, 21)
    kw = {}
    if case == "learned":
        q.requires_grad_(True)
        table.requires_grad_(True)
    elif case == "window":
        kw["window"] = (8, 8)
    elif case == "float16":
        q, k, v = (t.half() for t in (q, k, v))
    elif case == "nan table":
        table[1, 3] = math.nan
    elif case == "kernel":
        monkeypatch.setattr(RS, "reads_strides", lambda: False)
    mod = attend.mods.relative_bias(table)
    if case == "nan slopes":
        mod = attend.mods.alibi(torch.tensor([0.5, math.nan]))
    elif case == "softcap":
        mod = attend.mods.softcap(20.0)
    elif case == "table past float32":  # (finite in float64, inf in the inputs' float32)
        mod = attend.mods.relative_bias(torch.full((2, 21), 1e39, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        call = _call(q, k, v, score_mod=mod, **kw)
        assert any(needle in r for r in RS.reasons(call)), RS.reasons(call)
        assert not RS.preferred(call, over="flex") and not RS.preferred(call, over="inductor")
    if case == "kernel":  # the regions path runs it instead, and explain says so
        with torch.no_grad():
            why = attend.explain(q, k, v, score_mod=attend.mods.relative_bias(table), backend="sdpa")
        assert why.detail.startswith("relative bias in blocks of 256 rows")


def test_the_stride_check_finds_a_kernel_that_misreads_the_view(monkeypatch):
    assert RS.reads_strides() is True  # this PyTorch's kernel reads the strides

    def contiguous_reader(real):
        def kernel(*args, attn_mask=None, **kw):  # one that misreads a mask whose rows overlap (as row 0)
            bad = attn_mask if attn_mask.is_contiguous() else attn_mask[:, :, :1].expand(attn_mask.shape)
            return real(*args, attn_mask=bad, **kw)
        return kernel

    for name in ("_FWD", "_BWD"):
        with monkeypatch.context() as m:
            m.setattr(RS, name, contiguous_reader(getattr(RS, name)))
            assert RS.reads_strides.__wrapped__() is False, name


def test_a_nan_query_row_stays_in_its_row():
    q, k, v = inputs(1, 1, 1, 600, 600, 8, 8, torch.float32)
    q[0, 0, 300, 2] = math.nan
    with torch.no_grad():
        out = attend.attention(q, k, v, score_mod=attend.mods.relative_bias(torch.randn(21)), backend="sdpa")
        assert "strided view" in attend.explain(q, k, v, score_mod=attend.mods.relative_bias(torch.randn(21))).detail
    assert out.isnan().any(-1)[0, 0].nonzero().flatten().tolist() == [300]


@pytest.mark.parametrize("mod", ["table", "alibi"])
@pytest.mark.parametrize("causal", [False, True])
def test_queries_whose_features_are_not_stride_1_give_the_contiguous_result(mod, causal):
    """A transposed q ((B, H, E, L) stored, or a 2-D ``X.T``): the reversed queries handed to the
    kernel are made dense, which it needs (flip keeps the strides: the kernel read the features
    with the wrong stride, and gave errors up to 1e25 or NaN, silently). Forward and gradients,
    with an expanded dO (``out.sum()``), against the same call on contiguous q, and by the rule."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 8, 600, generator=g, dtype=torch.float64).transpose(-1, -2).requires_grad_()
    k, v = (torch.randn(1, 2, 600, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    kw = dict(score_mod=attend.mods.relative_bias(torch.randn(2, 17, generator=g, dtype=torch.float64))
              if mod == "table" else attend.mods.alibi(2), causal=causal)
    assert "strided view" in attend.explain(q, k, v, **kw).detail
    got = [attend.attention(q, k, v, backend="sdpa", **kw)]
    got += torch.autograd.grad(got[0].sum(), (q, k, v))
    qc = q.detach().contiguous().requires_grad_()
    want = [attend.attention(qc, k, v, backend="sdpa", **kw)]
    want += torch.autograd.grad(want[0].sum(), (qc, k, v))
    ref = [attend.attention(qc, k, v, backend="eager", **kw)]
    ref += torch.autograd.grad(ref[0].sum(), (qc, k, v))
    for name, a, b, r in zip(["out", "dq", "dk", "dv"], got, want, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-10, msg=name)
    with torch.no_grad():  # the inference path, 2-D X.T in float32
        x = torch.randn(8, 700, generator=g)
        k2, v2 = (torch.randn(700, 8, generator=g) for _ in range(2))
        kw2 = dict(kw, score_mod=attend.mods.relative_bias(torch.randn(17, generator=g)) if mod == "table"
                   else attend.mods.alibi(1))  # (2-D: one head)
        got2 = attend.attention(x.T, k2, v2, backend="sdpa", **kw2)
        want2 = attend.attention(x.T.contiguous(), k2, v2, backend="sdpa", **kw2)
    torch.testing.assert_close(got2, want2, rtol=0, atol=1e-6)


def test_double_backward_raises():
    q, k, v = inputs(1, 2, 2, 64, 64, 8, 8, torch.float64, grad=True)
    out = attend.attention(q, k, v, score_mod=attend.mods.relative_bias(torch.randn(2, 9, dtype=torch.float64)),
                           backend="sdpa")
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out.sum(), q, create_graph=True)


def test_reasons_are_worked_out_once_per_call_and_never_reused_for_another():
    q, k, v = inputs(1, 2, 2, 64, 64, 8, 8, torch.float32)
    bad = torch.randn(2, 9)
    bad[0, 0] = math.nan
    good_call = _call(q, k, v, score_mod=attend.mods.relative_bias(torch.randn(2, 9)))
    bad_call = _call(q, k, v, score_mod=attend.mods.relative_bias(bad))
    assert RS.reasons(good_call) == []
    assert RS.reasons(bad_call) == ["the table holds a non-finite entry"]
    assert RS.reasons(good_call) == []  # (worked out again: the latest call asked about was the other)
    assert RS.reasons(bad_call) == RS.reasons(bad_call)
