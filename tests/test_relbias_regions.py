"""A relative-bias table on SDPA's kernel (:mod:`attend.backends._relbias_regions`): the keys
beyond the table's reach as plain kernel calls with the edge entry added to their log-sum-exp,
the band near the diagonal with the table's entries as a float mask. Against a float64
reference written here by the tolerance rule, the kernel calls made, where the path is not
taken, what ``auto`` and ``explain`` say, and non-finite input."""
from __future__ import annotations

import math

import pytest
import torch

import attend
import reference as R
from attend.backends import _relbias_regions as RR, _distance_bias as RS
from attend.backends._relbias import bias_tile, clipped_span
from attend.functional import _prepare
from cases import BASELINE, check_case, inputs, make_score


@pytest.fixture(autouse=True)
def _regions_path(monkeypatch):
    """``sdpa`` runs a relative-bias table as one strided kernel call wherever that path can
    (:mod:`attend.backends._distance_bias`, tested in ``test_distance_bias.py``); the regions
    path runs where it cannot, e.g. a PyTorch whose kernel does not read the strided view. These
    tests are about the regions path, so the strided one is declined here as that PyTorch would."""
    monkeypatch.setattr(RS, "reads_strides", lambda: False)


def _bias(table: torch.Tensor, Hq: int, L: int, S: int) -> torch.Tensor:
    """The reference's dense (1, Hq, L, S) bias: entry clip(j - i - (S - L), -R, R) + R, in float64."""
    M = (table.shape[-1] - 1) // 2
    rel = (torch.arange(S).view(1, -1) - torch.arange(L).view(-1, 1) - (S - L)).clamp(-M, M) + M
    t = table.double() if table.ndim == 2 else table.double().expand(Hq, -1)
    return t[:, rel].unsqueeze(0)


def _check(q, k, v, table, *, score="scaled_dot", causal=False, dtype, what):
    E, L, S = q.shape[-1], q.shape[-2], k.shape[-2]
    arg, ref_scores = make_score(score, E)
    if isinstance(arg, torch.nn.Module):  # (inference here: training is checked below)
        arg.requires_grad_(False)
    bias = _bias(table, q.shape[1], L, S)
    return check_case("sdpa", q, k, v, kw=dict(score=arg, score_mod=attend.mods.relative_bias(table), causal=causal),
                      ref_scores=ref_scores, mod=lambda s: s + bias, allowed=R.causal_mask(L, S) if causal else None,
                      dtype=dtype, what=what, grads=False)


@pytest.mark.parametrize("L,S,M", [(1100, 1100, 128), (700, 1500, 50), (1500, 600, 20), (300, 300, 128),
                                   (600, 600, 1), (520, 520, 700), (300, 300, 0)])  # (L > S; R = 1; reach past
# the sequence; R = 0)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(L, S, M, dtype):
    q, k, v = inputs(1, 2, 2, L, S, 16, 16, dtype)
    table = torch.randn(2, 2 * M + 1, generator=torch.Generator().manual_seed(3))
    _check(q, k, v, table, dtype=dtype, what=f"relative bias L={L} S={S} R={M}")


@pytest.mark.parametrize("L,S,M", [(1100, 1100, 128), (700, 1500, 50), (600, 600, 1), (520, 600, 700),
                                   (300, 300, 0)])  # (R = 0: a one-entry table; the band keeps each row's own key)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_causal_matches_reference(L, S, M, dtype):
    q, k, v = inputs(1, 2, 2, L, S, 16, 16, dtype)
    table = torch.randn(2, 2 * M + 1, generator=torch.Generator().manual_seed(6))
    _check(q, k, v, table, causal=True, dtype=dtype, what=f"causal relative bias L={L} S={S} R={M}")


@pytest.mark.parametrize("score", ["cosine", "General", "dot"])
def test_dot_like_scores_and_a_shared_table(score):
    q, k, v = inputs(2, 2, 2, 600, 640, 8, 8, torch.float32)
    table = torch.randn(2 * 40 + 1, generator=torch.Generator().manual_seed(4))  # one table for every head
    _check(q, k, v, table, score=score, dtype=torch.float32, what=f"relative bias, {score} score")


def test_grouped_query_heads_and_a_models_layout():
    """Two query heads per key/value head; q, k, v as (B, H, L, E) views of a model's (B, L, H, E)."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 700, 4, 16, generator=g).transpose(1, 2)
    k, v = (torch.randn(1, 700, 2, 16, generator=g).transpose(1, 2) for _ in range(2))
    table = torch.randn(4, 2 * 30 + 1, generator=g)
    _check(q, k, v, table, dtype=torch.float32, what="relative bias, GQA, strided")


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_features_not_contiguous(which):
    """A tensor whose features are not contiguous (``.mT`` of a (.., E, L) tensor): SDPA's raw
    kernel reads the features with stride 1, so such tensors are copied first."""
    q, k, v = inputs(1, 2, 2, 600, 600, 8, 8, torch.float32)
    q, k, v = ((t.mT.contiguous().mT if name == which else t) for name, t in zip("qkv", (q, k, v)))
    assert {"q": q, "k": k, "v": v}[which].stride(-1) != 1
    _check(q, k, v, torch.randn(2, 41, generator=torch.Generator().manual_seed(7)), dtype=torch.float32,
           what=f"relative bias, {which} transposed")


def _kernel_calls(monkeypatch):
    calls = []
    real = RR._FWD

    def counted(q, k, *args, attn_mask=None, **kw):
        calls.append((k.shape[2], attn_mask is not None))  # (keys, with the band's mask)
        return real(q, k, *args, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(RR, "_FWD", counted)
    return calls


def test_keys_beyond_the_reach_run_without_a_mask(monkeypatch):
    """Rows in blocks of 256; reach 10: the band of the block of rows 256:512 is keys 247:521."""
    calls = _kernel_calls(monkeypatch)
    q, k, v = inputs(1, 1, 1, 768, 768, 8, 8, torch.float32)
    with torch.no_grad():
        attend.attention(q, k, v, score_mod=attend.mods.relative_bias(torch.randn(21)), backend="sdpa")
    assert calls == [(265, True), (503, False),  # rows 0:256: band 0:265, then keys 265:768
                     (274, True), (247, False), (247, False),  # rows 256:512: band 247:521, keys :247, 521:
                     (265, True), (503, False)]  # rows 512:768: band 503:768, keys :503
    calls.clear()
    with torch.no_grad():
        attend.attention(q, k, v, score_mod=attend.mods.relative_bias(torch.randn(21)), causal=True, backend="sdpa")
    assert calls == [(256, True),  # rows 0:256: band 0:256, no key after it is seen
                     (265, True), (247, False),  # rows 256:512: band 247:512, keys :247
                     (265, True), (503, False)]


def test_the_band_mask_is_built_once_for_interior_blocks(monkeypatch):
    built = []
    real = RR.table_tile

    def counting(mod, i0, i1, j0, j1):
        built.append(i0)
        return real(mod, i0, i1, j0, j1)

    monkeypatch.setattr(RR, "table_tile", counting)
    q, k, v = inputs(1, 1, 1, 2048, 2048, 8, 8, torch.float32)
    with torch.no_grad():
        attend.attention(q, k, v, score_mod=attend.mods.relative_bias(torch.randn(21)), backend="sdpa")
    assert built == [0, 256, 1792]  # first, interior (shared by the 6 after it), last


def _call(q, k, v, **kw):
    return _prepare(q, k, v, **kw)[0]


@pytest.mark.parametrize("case,needle", [
    ("autocast", "training under torch.compile, autocast or torch.func"), ("causal L > S", "rows that see no key"), ("window", "other than causal"),
    ("bias", "other than causal"), ("values wider", "one width"), ("float16", "float32 or float64"),
    ("nan table", "non-finite entry"), ("alibi", "not a relative-bias table"),
])
def test_calls_that_do_not_take_the_path(case, needle):
    q, k, v = inputs(1, 2, 2, 512, 512, 8, 8, torch.float32)
    table = torch.randn(2, 21)
    kw = {}
    if case == "autocast":
        q.requires_grad_(True)
    elif case == "causal L > S":
        kw["causal"] = True
        k, v = k[:, :, :500], v[:, :, :500]
    elif case == "window":
        kw["window"] = (8, 8)
    elif case == "bias":
        kw["mask"] = torch.zeros(512, 512)  # a float mask: an additive bias
    elif case == "values wider":
        v = torch.randn(1, 2, 512, 16)
    elif case == "float16":
        q, k, v = (t.half() for t in (q, k, v))
    elif case == "nan table":
        table[1, 3] = math.nan
    mod = attend.mods.alibi(2) if case == "alibi" else attend.mods.relative_bias(table)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        call = _call(q, k, v, score_mod=mod, **kw)
        assert any(needle in r for r in RR.reasons(call))
        if case != "alibi":  # (the tensors and rules are sound: another backend runs the call)
            with pytest.raises(attend.backends.UnsupportedCall, match="score_mod needs the scores"):
                attend.attention(q, k, v, score_mod=mod, backend="sdpa", **kw)


def test_auto_takes_it_where_the_bands_are_a_small_share():
    table = torch.randn(8, 257)
    with torch.no_grad():
        for L, expect in ((2048, True), (1024, False)):
            q, k, v = inputs(1, 8, 8, L, L, 64, 64, torch.float32)
            call = _call(q, k, v, score_mod=attend.mods.relative_bias(table))
            assert RR.preferred(call) is expect and (RR.band_share(call) <= RR.BAND_SHARE) is expect
            why = attend.explain(q, k, v, score_mod=attend.mods.relative_bias(table))
            assert why.backend == ("sdpa" if expect else "flex")
    q, k, v = inputs(1, 8, 8, 2048, 2048, 64, 64, torch.float32)
    with torch.no_grad():
        why = attend.explain(q, k, v, score_mod=attend.mods.relative_bias(table))
    assert "band (23% of the pairs)" in why.detail
    assert "sdpa runs this relative-bias table faster" in " ".join(why.reasons["flex"])


def test_non_finite_input_stays_in_the_rows_that_use_it():
    """A NaN query row gives NaN in that row only; an inf key reaches every row (no mask here)."""
    q, k, v = inputs(1, 1, 1, 600, 600, 8, 8, torch.float32)
    table = torch.randn(21)
    q[0, 0, 300, 2] = math.nan
    with torch.no_grad():
        out = attend.attention(q, k, v, score_mod=attend.mods.relative_bias(table), backend="sdpa")
    nan_rows = out.isnan().any(-1)[0, 0]
    assert nan_rows.nonzero().flatten().tolist() == [300]
    q[0, 0, 300, 2] = 0.0
    v[0, 0, 17, 0] = math.inf
    with torch.no_grad():
        out = attend.attention(q, k, v, score_mod=attend.mods.relative_bias(table), backend="sdpa")
    assert out.isnan().any(-1).all()


def test_auto_leaves_causal_to_flex_and_takes_it_where_nothing_compiled_would():
    """With causal, FlexAttention's kernel measured faster (at 4096 too); below flex's and
    inductor's min_work, or without a C++ compiler, the call runs here rather than on chunked."""
    table = torch.randn(8, 257)
    small = inputs(1, 2, 2, 2048, 2048, 8, 8, torch.float32)
    q, k, v = inputs(1, 8, 8, 4096, 4096, 64, 64, torch.float32)
    with torch.no_grad():
        assert attend.explain(*small, score_mod=attend.mods.relative_bias(table[:2]), causal=True).backend == "sdpa"
        call = _call(q, k, v, score_mod=attend.mods.relative_bias(table), causal=True)
        assert not RR.reasons(call) and not RR.preferred(call)
        assert attend.explain(q, k, v, score_mod=attend.mods.relative_bias(table), causal=True).backend == "flex"
        import attend.backends.flex as flex_mod
        import attend.backends.inductor as inductor_mod
        monkeypatch = pytest.MonkeyPatch()
        with monkeypatch.context() as m:
            m.setattr(flex_mod, "_no_compiler", lambda: "no C++ compiler (test)")
            m.setattr(inductor_mod, "_no_compiler", lambda: "no C++ compiler (test)")
            why = attend.explain(q, k, v, score_mod=attend.mods.relative_bias(table), causal=True)
    assert why.backend == "sdpa" and why.detail.startswith("causal relative bias in blocks of 256 rows")


def test_a_score_sdpa_cannot_run_is_not_deferred_to_it():
    """An additive score with a relative-bias table: flex and inductor must not stand aside for
    sdpa, which cannot run it (it went to chunked's tiles before this was checked)."""
    table = torch.randn(8, 257)
    q, k, v = inputs(1, 8, 8, 2048, 2048, 64, 64, torch.float32)
    score = attend.scores.Additive(64, 64, 16).requires_grad_(False)
    with torch.no_grad():
        call = _call(q, k, v, score=score, score_mod=attend.mods.relative_bias(table))
        assert any("not dot-like" in r for r in RR.reasons(call)) and not RR.preferred(call)
        assert attend.explain(q, k, v, score=score, score_mod=attend.mods.relative_bias(table)).backend == "inductor"


def test_sdpas_refusal_names_what_stands_in_the_way():
    q, k, v = inputs(1, 2, 2, 64, 64, 8, 8, torch.float16)
    with torch.no_grad(), pytest.raises(attend.backends.UnsupportedCall, match="here: float32 or float64 only"):
        attend.attention(q, k, v, score_mod=attend.mods.relative_bias(torch.randn(5)), backend="sdpa")


@pytest.mark.parametrize("L,S,M", [(2048, 2048, 128), (700, 1500, 50), (300, 300, 0), (600, 600, 700)])
def test_the_causal_band_share_counts_the_pairs_one_by_one(L, S, M):
    q, k, v = inputs(1, 1, 1, L, S, 4, 4, torch.float32)
    call = _call(q, k, v, score_mod=attend.mods.relative_bias(torch.randn(2 * M + 1)), causal=True)
    band = allowed = 0
    for i0 in range(0, L, RR.ROWS):
        jl, jr = clipped_span(S - L, i0, min(L, i0 + RR.ROWS), M, S, True)
        for i in range(i0, min(L, i0 + RR.ROWS)):
            band += sum(1 for j in range(jl, jr) if j <= i + S - L)
    allowed = sum(i + S - L + 1 for i in range(L))
    assert RR.band_share(call) == pytest.approx(band / allowed)


@pytest.mark.parametrize("causal,shared", [(False, False), (True, True)])
def test_inductor_training_takes_its_forward_from_here(monkeypatch, causal, shared):
    """With gradients, inductor takes the output and log-sum-exp from this path where the bands are
    a small share, and recomputes its tiles in the backward: q, k, v and the learned table's
    gradients against eager in float64 (the backward uses the forward's log-sum-exp, so an error
    in it would show in every gradient)."""
    from attend.backends import inductor as IND

    ran = []
    real = RR.attention
    monkeypatch.setattr(RR, "attention", lambda *a: ran.append(1) or real(*a))
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 2, 1100, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    table = torch.randn(*(() if shared else (2,)), 2 * 20 + 1, generator=g, dtype=torch.float64, requires_grad=True)
    kw = dict(score_mod=attend.mods.relative_bias(table), causal=causal)
    small = attend.backends.Inductor(key_chunk=512, max_rows=128)

    def grads(backend):
        out = attend.attention(q, k, v, backend=backend, **kw)
        dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
        return [out] + list(torch.autograd.grad(out, [q, k, v, table], dout))

    got = grads(small)
    assert ran
    want = grads("eager")
    for name, a, b in zip(["out", "dq", "dk", "dv", "dtable"], got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    # turned off, the forward runs the tiles: what explain() says and what a run decides (a run
    # itself would compile the forward's tile programs once more, ~10 s each with an empty cache)
    call = _prepare(q, k, v, **kw)[0]
    plan = small.plan(call)

    def job_regions():
        return IND._Job(call, plan, *IND._operands(call, plan, torch.float64)[4:]).regions

    assert "SDPA's kernel" in attend.explain(q, k, v, backend=small, **kw).detail and job_regions()
    monkeypatch.setattr(IND, "REGIONS_FORWARD", False)
    assert "SDPA's kernel" not in attend.explain(q, k, v, backend=small, **kw).detail and not job_regions()


def test_explain_says_where_a_training_forward_comes_from():
    q, k, v = inputs(1, 8, 8, 2048, 2048, 64, 64, torch.float32, grad=True)
    table = torch.randn(8, 257, requires_grad=True)
    why = attend.explain(q, k, v, score_mod=attend.mods.relative_bias(table), backend="inductor")
    assert why.backend == "inductor" and "the forward from SDPA's kernel beyond the relative-bias table's reach" in why.detail
    half = [t[:, :, :1024] for t in (q, k, v)]
    detail = attend.explain(*half, score_mod=attend.mods.relative_bias(table), backend="inductor").detail
    assert "SDPA's kernel" not in detail


def test_a_tile_reads_one_edge_entry_exactly_when_every_distance_is_clipped():
    """inductor's backward gives such a tile's bias as one value per head (its gradient: the
    tile's summed dS); checked against the clipped indices of every (row, key), at the boundary."""
    for M, offset in ((3, 0), (3, 5), (1, -2), (0, 0)):
        mod = attend.mods.relative_bias(torch.randn(2 * M + 1)).bind(10, 10 + offset)
        for i0 in range(0, 12, 2):
            for j0 in range(0, 20, 3):
                for rows, keys in ((1, 1), (2, 3), (4, 2)):
                    i1, j1 = i0 + rows, j0 + keys
                    d = torch.arange(j0, j1).view(1, -1) - torch.arange(i0, i1).view(-1, 1) - offset
                    entries = set((d.clamp(-M, M) + M).flatten().tolist())
                    want = next(iter(entries)) if len(entries) == 1 and entries <= {0, 2 * M} else None
                    bias, got = bias_tile(mod, i0, i1, j0, j1, torch.float64)
                    t = mod.table.double()
                    assert torch.equal(bias.expand(1, 1, rows, keys)[0, 0], t[(d.clamp(-M, M) + M)])
                    if M == 0:  # one entry: the dense tile (None) is right too
                        assert got in (None, 0), (offset, i0, j0, got)
                    else:
                        assert got == want, (M, offset, i0, i1, j0, j1, got, want)


def test_the_table_is_read_only_when_nothing_else_refuses():
    """The finiteness check reads the table (on a GPU that would wait for the stream): it runs
    last, only for a call the path could otherwise take."""
    q, k, v = inputs(1, 2, 2, 64, 64, 8, 8, torch.float32)
    table = torch.randn(2, 21)
    table[0, 0] = math.nan
    call = _call(q, k, v, score_mod=attend.mods.relative_bias(table), window=(4, 4))
    assert RR.reasons(call) == ["no mask or bias other than causal"]
    assert RR.reasons(_call(q, k, v, score_mod=attend.mods.relative_bias(table))) == ["the table holds a non-finite entry"]


# ---- training on this path -------------------------------------------------------------------
TRAIN_CASES = [  # (L, S, R, causal, shared table, Hq, Hkv)
    (1100, 1100, 128, False, False, 2, 2),
    (700, 1500, 50, False, True, 4, 2),  # L < S, grouped heads, one table for every head
    (1500, 600, 20, False, False, 2, 2),  # L > S: no key at distance 0 for the first rows
    (600, 900, 30, True, True, 2, 2),  # causal, queries at S - L + i
    (520, 520, 700, False, False, 2, 2),  # the reach past the sequence: all band
    (600, 600, 0, True, False, 2, 2),  # R = 0 with causal: the band is each block's causally masked square
]


@pytest.mark.parametrize("L,S,M,causal,shared,Hq,Hkv", TRAIN_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_training_matches_reference(L, S, M, causal, shared, Hq, Hkv, dtype):
    """Output and the gradients of q, k, v and the learned table, by the tolerance rule against the
    float64 reference (m = 2 for the output, 3 for gradients), the eager baseline in the test dtype."""
    g = torch.Generator().manual_seed(L + S + M)
    q, k, v = inputs(1, Hq, Hkv, L, S, 16, 16, dtype, seed=L + M)
    table = torch.randn(*(() if shared else (Hq,)), 2 * M + 1, generator=g).to(dtype)
    dout = torch.randn(1, Hq, L, 16, generator=g).double()

    def run(backend, qq, kk, vv, tt):
        qq, kk, vv, tt = (t.detach().clone().requires_grad_(True) for t in (qq, kk, vv, tt))
        if backend is None:  # the float64 reference (tests/reference.py), the bias written here
            bias = _bias(tt, Hq, L, S)
            out, _ = R.reference(qq, kk, vv, R.scaled_dot(16), mod=lambda s: s + bias,
                                 allowed=R.causal_mask(L, S) if causal else None)
        else:
            out = attend.attention(qq, kk, vv, score_mod=attend.mods.relative_bias(tt), causal=causal, backend=backend)
        return [out] + list(torch.autograd.grad(out, (qq, kk, vv, tt), dout.to(out.dtype)))

    learned = attend.mods.relative_bias(table.clone().requires_grad_(True))
    call = _call(q.clone().requires_grad_(True), k, v, score_mod=learned, causal=causal)
    assert call.needs_grad and not RR.reasons(call)  # (the path runs it: sdpa would refuse otherwise)
    got = run("sdpa", q, k, v, table)
    base = run(BASELINE, q, k, v, table)
    ref = run(None, q.double(), k.double(), v.double(), table.double())
    for name, a, b, r, m in zip(["out", "dq", "dk", "dv", "dtable"], got, base, ref, [2, 3, 3, 3, 3]):
        R.check(a, b, r, dtype=dtype, m=m, what=f"{name} {L}x{S} R={M} causal={causal}")


def test_training_with_a_learned_general_score_and_a_model_layout():
    """A General score's weight learns through ``q W`` ahead of the kernel; q, k, v are (B, L, H, E)
    views. Gradients against eager in float64."""
    g = torch.Generator().manual_seed(5)
    base = [torch.randn(2, 900, 2, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    table = torch.randn(2, 2 * 40 + 1, generator=g, dtype=torch.float64)
    score = attend.scores.General(8, 8).double()
    dout = torch.randn(2, 2, 900, 8, generator=g, dtype=torch.float64)

    def grads(backend):
        score.zero_grad()
        leaves = [t.clone().requires_grad_(True) for t in base + [table]]
        q, k, v = (t.transpose(1, 2) for t in leaves[:3])  # (B, H, L, E) views, features contiguous
        out = attend.attention(q, k, v, score=score, score_mod=attend.mods.relative_bias(leaves[3]), backend=backend)
        out.backward(dout)
        return [out.detach()] + [t.grad for t in leaves] + [score.weight.grad.clone()]

    got, want = grads("sdpa"), grads("eager")
    for name, a, b in zip(["out", "dq", "dk", "dv", "dtable", "dW"], got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_auto_trains_here_and_explain_says_so():
    table = torch.randn(8, 257, requires_grad=True)
    for L, B, causal, expect in ((2048, 1, False, True), (512, 4, False, True), (1024, 2, True, True),
                                 (512, 4, True, False)):
        q, k, v = inputs(B, 8, 8, L, L, 64, 64, torch.float32, grad=True)
        why = attend.explain(q, k, v, score_mod=attend.mods.relative_bias(table), causal=causal)
        assert (why.backend == "sdpa") is expect, (L, causal, why)
        if expect:
            assert "the backward: the far keys through the kernel's backward" in why.detail


def test_double_backward_raises_and_a_table_changed_in_place_is_caught():
    """No graph of the gradient (a second backward would drop terms without a word); a table
    changed in place between forward and backward raises autograd's version error."""
    q, k, v = inputs(1, 2, 2, 200, 200, 8, 8, torch.float64, grad=True)
    table = torch.randn(2, 2 * 128 + 1, dtype=torch.float64, requires_grad=True)  # all band: no kernel backward
    mod = attend.mods.relative_bias(table)
    for loss in (lambda o: o.sum(), lambda o: (o ** 2).sum()):  # (linear too: once_differentiable would not raise)
        out = attend.attention(q, k, v, score_mod=mod, backend="sdpa")
        with pytest.raises(RuntimeError, match="has no double backward"):
            torch.autograd.grad(loss(out), (q, table), create_graph=True)
    out = attend.attention(q, k, v, score_mod=mod, backend="sdpa")
    with torch.no_grad():
        table.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_training_with_large_bands_stays_off_auto():
    """One block's band scores over TRAIN_BAND_BYTES (here 4 x 16 x 256 x 8190 floats, 512 MiB): auto
    trains elsewhere; the call itself fits this path."""
    q = torch.randn(1, 1, 1, 64).expand(4, 16, 8192, 64).requires_grad_(True)
    table = torch.randn(16, 2 * 4096 + 1, requires_grad=True)
    call = _call(q, q, q, score_mod=attend.mods.relative_bias(table))
    assert not RR.reasons(call) and RR.band_bytes(call) > RR.TRAIN_BAND_BYTES and not RR.preferred(call)
    small = _call(q[:1, :8, :2048], q[:1, :8, :2048], q[:1, :8, :2048],
                  score_mod=attend.mods.relative_bias(torch.randn(8, 257, requires_grad=True)))
    assert RR.band_bytes(small) == 8 * 256 * 510 * 4 and RR.preferred(small)
