"""The ``inductor`` backend (compiled tiles on the CPU) against the float64 reference: outputs and
gradients by the tolerance rule, learned tables, sinks and score parameters, tile edges, chunk
merges and the overlapping last tile, exact zeros, NaN, weights, and what ``auto`` and
``explain`` say about it. Each distinct program compiles once (a few seconds; inductor's disk
cache makes reruns fast), so the cases here are few and each covers several features."""
from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

import attend
import reference as R
from attend.backends import Inductor
from attend._rules import Document
from cases import check_case, inputs, make_score, mask_kwargs

pytestmark = pytest.mark.skipif(bool(attend.backends.inductor._no_compiler()), reason="no C++ compiler")

# 16-row tiles and 16-key chunks: at L = 37, S = 41 every tile crosses a chunk edge (merged by
# log-sum-exp) and the last tile overlaps the one before it
SMALL = Inductor(key_chunk=16, max_rows=16)
B, H, L, S, E = 2, 4, 37, 41, 8


@pytest.fixture
def own_programs(monkeypatch):
    """The compiled-program cache emptied for this test (its programs compile here, whatever ran
    before), given back after it: ``attend.backends._programs``."""
    from attend.backends import _programs

    monkeypatch.setattr(_programs, "_COMPILED", {})
    monkeypatch.setattr(_programs, "FIRST_CALL", {})
    return _programs


def _alibi_ref(slopes):
    pos = torch.arange(L).view(-1, 1) + (S - L)
    j = torch.arange(S).view(1, -1)
    return lambda s: s - slopes.double().view(1, -1, 1, 1) * (pos - j).abs()


CASES = [  # (score, mask kind, score_mod)
    ("scaled_dot", "none", None),
    ("scaled_dot", "causal", "alibi"),
    ("cosine", "window", "softcap"),
    ("General", "bool", None),
    ("Additive", "none", None),
    ("scaled_dot", "bias", "softcap"),
]


def _check(backend, score, mask, mod, what):
    """One CASES entry on ``backend`` against the float64 reference, gradients included."""
    q, k, v = inputs(B, H, H, L, S, E, E, torch.float64)
    arg, ref_scores = make_score(score, E)
    kw, allowed, bias = mask_kwargs(mask, B, H, L, S)
    ref_mod = None
    if mod == "alibi":
        slopes = attend.mods.alibi_slopes(H).double()
        kw["score_mod"], ref_mod = attend.mods.alibi(slopes), _alibi_ref(slopes)
    elif mod == "softcap":
        kw["score_mod"], ref_mod = attend.mods.softcap(1.5), lambda s: 1.5 * torch.tanh(s / 1.5)
    kw["score"] = arg
    check_case(backend, q, k, v, kw=kw, ref_scores=ref_scores, allowed=allowed, bias=bias, mod=ref_mod,
               dtype=torch.float64, what=f"{what}{score}/{mask}/{mod}")


@pytest.mark.parametrize("score,mask,mod", CASES)
def test_matches_reference_with_gradients(score, mask, mod):
    _check(SMALL, score, mask, mod, "")


def test_float32_softcap_causal_within_the_tolerance_rule():
    q, k, v = inputs(B, H, H, L, L, E, E, torch.float32)
    kw = {"score_mod": attend.mods.softcap(2.0), "causal": True}
    check_case(SMALL, q, k, v, kw=kw, ref_scores=R.scaled_dot(E), allowed=R.causal_mask(L, L),
               mod=lambda s: 2.0 * torch.tanh(s / 2.0), dtype=torch.float32, what="float32 softcap causal")


def _grads(backend, q, k, v, params, **kw):
    out = attend.attention(q, k, v, backend=backend, **kw)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
    return [out] + list(torch.autograd.grad(out, [q, k, v] + params, dout))


def test_learned_table_sinks_gqa_and_documents_match_eager_in_float64():
    """Everything at once against eager in float64: a learned relative-bias table, learned sinks,
    grouped kv heads, a packed-document rule (its keys() skips other documents' keys) and L < S."""
    g = torch.Generator().manual_seed(0)
    Lq = 29
    q = torch.randn(B, H, Lq, E, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(B, 2, S, E, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    table = torch.randn(H, 9, generator=g, dtype=torch.float64, requires_grad=True)
    sinks = torch.randn(H, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0] * 9 + [1] * 20 + [2] * 12)
    kw = dict(score_mod=attend.mods.relative_bias(table), sinks=sinks, mask=attend.masks.document(ids), causal=True)
    got = _grads(SMALL, q, k, v, [table, sinks], **kw)
    want = _grads("eager", q, k, v, [table, sinks], **kw)
    for name, a, b in zip(["out", "dq", "dk", "dv", "dtable", "dsinks"], got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("shape", [(), (H,), (H + 2,)],
                         ids=["shared table", "per-head table", "heads of a larger table"])
def test_a_learned_table_gets_its_gradient_from_diagonal_sums(shape):
    """The table's gradient is summed along each tile's diagonals (not scattered): shared and
    per-head tables, distances past the table's reach (clipped), L > S, a window, 16-row tiles.
    The last case passes a slice of a larger table (as the all-to-all does with each rank's
    heads): its gradient reaches the larger table through autograd."""
    g = torch.Generator().manual_seed(4)
    Lq, Sk = 41, 29
    q = torch.randn(B, H, Lq, E, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(B, H, Sk, E, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    table = torch.randn(*shape, 7, generator=g, dtype=torch.float64, requires_grad=True)  # reach 3
    used = table[1:1 + H] if shape == (H + 2,) else table
    kw = dict(score_mod=attend.mods.relative_bias(used), window=(9, 4))
    got = _grads(SMALL, q, k, v, [table], **kw)
    want = _grads("eager", q, k, v, [table], **kw)
    for name, a, b in zip(["out", "dq", "dk", "dv", "dtable"], got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


# The tests below take the shapes, dtypes and settings of a case above where they can: each new
# combination compiles its own programs (~10 s each with an empty compile cache), a shared one
# runs what is compiled (tile programs are dynamic in the sequence lengths, static in the rest).


def test_additive_parameters_get_the_eager_gradients():
    q, k, v = inputs(B, H, H, L, S, E, E, torch.float64, grad=True)
    score = attend.scores.Additive(E, E, 12).double()
    params = list(score.parameters())
    got = _grads(SMALL, q, k, v, params, score=score)
    want = _grads("eager", q, k, v, params, score=score)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_additive_tiles_give_freed_memory_back_and_other_kinds_never_look(monkeypatch):
    """The measured break: the additive backward at L = S = 16384 raised the process's peak by
    74 MiB while 16 MiB of results were live (glibc keeps freed tile buffers); with the guard,
    36 MiB (benchmarks/results). The guard trims past its allowance; other kinds skip it."""
    from attend.backends import _heap

    calls = []
    monkeypatch.setattr(_heap, "_TRIM", lambda pad: calls.append(pad))
    ticks = itertools.count(10 ** 12, 10 ** 9)  # a process far past any allowance, and still growing
    monkeypatch.setattr(_heap, "_rss", lambda: next(ticks))
    monkeypatch.setattr(_heap.HeapGuard, "__init__", lambda self, allowance: self.__dict__.update(limit=0, allowance=0))
    q, k, v = inputs(B, H, H, L, S, E, E, torch.float64, grad=True)
    out = attend.attention(q, k, v, score=attend.scores.Additive(E, E, 12).double(), backend=SMALL)
    out.sum().backward()
    assert len(calls) >= 2 * 2  # every chunk of both passes checked the guard
    calls.clear()
    q, k, v = inputs(B, H, H, L, L, E, E, torch.float32, grad=True)
    out = attend.attention(q, k, v, score_mod=attend.mods.softcap(2.0), causal=True, backend=SMALL)
    out.sum().backward()
    assert calls == []  # small tiles: no /proc read per tile


def test_fully_masked_rows_are_exactly_zero_and_nan_shows():
    q, k, v = inputs(1, 2, 2, L, S, E, E, torch.float64, grad=True)
    mask = torch.ones(1, 1, L, S, dtype=torch.bool)
    mask[..., 5, :] = False  # row 5 sees no key
    out = attend.attention(q, k, v, mask=mask, score_mod=attend.mods.softcap(3.0), backend=SMALL)
    assert torch.equal(out[:, :, 5], torch.zeros_like(out[:, :, 5]))
    out.sum().backward()
    assert torch.equal(q.grad[:, :, 5], torch.zeros_like(q.grad[:, :, 5]))
    assert not torch.isnan(q.grad).any() and not torch.isnan(k.grad).any()
    bad = q.detach().clone()
    bad[0, 1, 7, 0] = math.nan
    with torch.no_grad():
        out = attend.attention(bad, k, v, score_mod=attend.mods.softcap(3.0), backend=SMALL)
    assert torch.isnan(out[0, 1, 7]).all() and not torch.isnan(out[0, 0]).any()


def test_weights_come_from_the_saved_lse():
    q, k, v = inputs(2, 2, 2, L, S, E, E, torch.float64)
    kw = dict(score_mod=attend.mods.alibi(2), window=(5, 2), return_weights=True)
    out, w = attend.attention(q, k, v, backend=SMALL, **kw)
    ref_out, ref_w = attend.attention(q, k, v, backend="eager", **kw)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(w, ref_w, rtol=1e-12, atol=1e-13)


def test_key_totals_are_summed_tile_by_tile_from_the_lse():
    """Per-key totals without the (L, S) weights: every tile's rows counted once (the last
    tile overlaps the one before), sinks in the denominator, against eager's full weights."""
    q, k, _ = inputs(2, 2, 2, L, S, E, E, torch.float64)
    kw = dict(score_mod=attend.mods.alibi(2), causal=True, sinks=torch.tensor([0.5, -1.0], dtype=torch.float64))
    got = attend.key_totals(q, k, backend=SMALL, **kw)
    want = attend.attention_weights(q, k, backend="eager", **kw).sum(2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


def test_auto_counts_the_compile_and_explain_says_why(monkeypatch):
    q, k, v = inputs(1, 2, 2, 64, 64, 16, 16, torch.float32)
    small = attend.explain(q, k, v, score_mod=attend.mods.softcap(5.0))
    assert small.backend != "inductor"
    assert "would not repay compiling" in str(small)
    plain = attend.explain(q, k, v)
    assert plain.backend == "sdpa" and "SDPA's fused kernel computes this call" in str(plain)
    monkeypatch.setattr(attend.backends.get("inductor"), "min_work", 1)
    picked = attend.explain(q, k, v, score_mod=attend.mods.softcap(7.0), causal=True)
    assert picked.backend == "inductor"
    assert re.search(r"auto picks: inductor \(\d+ tiles? of \d+ rows, \d+% of the \(query, key\) pairs computed; "
                     r"(the first call compiles|its program is compiled in this process)", str(picked)), str(picked)
    assert attend.explain(q, k, v, window=4).backend == "sdpa"  # one tile of 64 rows: nothing to skip
    long = torch.randn(1, 2, 1024, 16)
    assert attend.explain(long, long, long, window=16).backend == "inductor"  # ~33 of 1024 keys per row
    assert attend.explain(long, long, long, causal=True).backend == "sdpa"  # SDPA's is_causal: half the work
    why = str(attend.explain(q, k, v, score_mod=attend.mods.softcap(5.0), dropout_p=0.1))
    assert "no dropout inside compiled tiles" in why
    bias = torch.randn(64, 64, requires_grad=True)
    assert "a dense bias that requires grad" in str(attend.explain(q, k, v, mask=bias, backend="auto"))
    with pytest.raises(attend.backends.UnsupportedCall, match="no dropout inside compiled tiles"):
        attend.attention(q, k, v, dropout_p=0.1, backend="inductor")


def test_document_keys_span_sorted_ids_only():
    d = Document(torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2]))
    assert d.keys(0, 2, 9) == (0, 3) and d.keys(2, 3, 9) == (0, 5) and d.keys(4, 4, 9) == (3, 5)
    assert d.keys(5, 8, 9) == (5, 9)
    both = Document(torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 2, 2]]))
    assert both.keys(1, 1, 6) == (0, 4) and both.keys(4, 5, 6) == (2, 6)  # the union over sequences
    assert Document(torch.tensor([1, 0, 1])).keys(0, 0, 3) == (0, 3)  # not sorted: every key
    assert d.keys(-3, -1, 9) == (0, 9)  # rows before key 0 (L > S) see document ids[0]: no narrowing


@pytest.mark.parametrize("score,mask,mod", [CASES[1], CASES[2], CASES[3]])
def test_backward_with_its_own_narrower_chunks_matches_reference(score, mask, mod):
    """The backward's tiles (``back_key_chunk``) need not be the forward's: 16-key chunks forward,
    7-key chunks backward, so the backward merges nothing and crosses different edges."""
    be = Inductor(key_chunk=16, back_key_chunk=7, max_rows=16)
    q, k, v = inputs(B, H, H, L, S, E, E, torch.float64)
    plan = be.plan(attend.functional._prepare(q, k, v)[0])
    assert {j1 - j0 for *_, c in plan.back_tiles for j0, j1, _ in c} != {j1 - j0 for *_, c in plan.tiles for j0, j1, _ in c}
    _check(be, score, mask, mod, "narrow backward ")


def test_plan_skips_what_rules_rule_out():
    q = torch.randn(1, 1, 1024, 8)
    call, _ = attend.functional._prepare(q, q, q, window=(64, 0))
    plan = Inductor().plan(call)
    assert plan.kept <= 0.3 * 1024 * 1024  # 65 keys per row, plus a tile's width (256 rows for one head)
    assert all(j0 >= max(0, i0 - 64) for i0, _, _, chunks in plan.tiles for j0, _, _ in chunks)
    doc, _ = attend.functional._prepare(q, q, q, mask=attend.masks.document(torch.arange(1024) // 256))
    assert Inductor().plan(doc).kept == 4 * 256 * 256


@pytest.mark.parametrize("kw, every, narrowed", [
    ({}, True, False), ({"score_mod": attend.mods.softcap(5.0)}, True, False), ({"causal": True}, False, True),
    ({"window": (3, 40)}, False, True), ({"mask": attend.masks.document(torch.arange(300) // 70)}, False, True),
    ({"mask": attend.masks.prefix_lm(30)}, False, True),
    ({"mask": attend.masks.padding(torch.tensor([250]))}, False, False)])  # (a rule, cut per tile: no narrower)
def test_one_key_span_for_every_tile_only_where_every_key_is_spanned(kw, every, narrowed):
    """The planner cuts the keys once for all tiles where ``spans_every_key`` says no rule narrows
    them: ``key_span`` must then be all the keys for every block of rows, and the tiles must be
    those of a span per tile."""
    q = torch.randn(1, 2, 300, 8)
    call, _ = attend.functional._prepare(q, q, q, **kw)
    spans = {call.key_span(i0, i0 + n) for n in (1, 7, 64) for i0 in range(0, 300 - n + 1, 13)}
    assert call.spans_every_key == every
    assert (spans != {(0, 300)}) == narrowed
    be = Inductor()
    for rows, chunk in ((16, 64), (64, 1024), (128, 100)):
        tiles = be._tiles(call, rows, chunk)[0]
        for i0, i1, _, chunks in tiles:
            assert chunks == attend.backends._chunks.cut(*call.key_span(i0, i1), 0, 0, chunk)


def test_own_functions_run_without_grad_and_are_refused_with_it():
    """A score function or score_mod of one's own may hold tensors that need gradients and that no
    backend can list for certain: inductor runs them under no_grad only (then it matches eager)."""
    W = torch.randn(E, E, dtype=torch.float64, requires_grad=True)
    q, k, v = inputs(1, 2, 2, 21, 19, E, E, torch.float64)
    kw = dict(score=lambda a, b: a @ W @ b.transpose(-1, -2), score_mod=lambda s, b, h, i, j: s - 0.1 * (i - j).abs())
    with pytest.raises(attend.backends.UnsupportedCall, match="of your own while autograd is on"):
        attend.attention(q, k, v, backend=SMALL, **kw)
    with torch.no_grad():
        got = attend.attention(q, k, v, backend=SMALL, **kw)
        want = attend.attention(q, k, v, backend="eager", **kw)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)


def test_softcap_gradients_stay_finite_past_the_overflow_of_exp():
    """tanh through exp overflows at 44 in float32; a future key with a huge score, masked for
    every query but the last (whose own score overflows too), must not turn the gradients NaN."""
    q, k, v = inputs(B, H, H, L, L, E, E, torch.float32, grad=True)
    with torch.no_grad():
        k[0, 0, -1] *= 400.0  # the last key: scores far past 44, visible only to the last query
    out = attend.attention(q, k, v, score_mod=attend.mods.softcap(2.0), causal=True, backend=SMALL)
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_backward_compiles_once_whatever_the_layout_of_a_dense_incoming_gradient(own_programs):
    """Each tile's dense dO is made contiguous, as the last tile's copy (its rows overlap the tile
    before) is: a random dO and a slice of a larger one run the backward programs compiled for
    the first, with the same gradients. An expanded dO (``out.sum()``) keeps its own program."""
    from torch._dynamo.utils import counters

    q, k, v = inputs(B, H, H, L, L, E, E, torch.float32, grad=True)
    kw = dict(score_mod=attend.mods.softcap(2.5), causal=True, backend=SMALL)
    call, _ = attend.functional._prepare(q, k, v, score_mod=kw["score_mod"], causal=True)
    assert any(skip for _, _, skip, _ in SMALL.plan(call).back_tiles)
    dout = torch.randn(B, H, L, E, generator=torch.Generator().manual_seed(4))
    out = attend.attention(q, k, v, **kw)
    first = torch.autograd.grad(out, (q, k, v), dout)
    graphs = counters["stats"]["unique_graphs"]
    wide = torch.zeros(B, H, L, 3 * E)
    wide[..., E:2 * E] = dout
    out = attend.attention(q, k, v, **kw)
    got = torch.autograd.grad(out, (q, k, v), wide[..., E:2 * E])
    assert counters["stats"]["unique_graphs"] == graphs
    for a, b in zip(got, first):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    out = attend.attention(q, k, v, **kw)
    ones = torch.autograd.grad(out, (q, k, v), torch.ones(()).expand(out.shape))
    dense = torch.autograd.grad(attend.attention(q, k, v, **kw), (q, k, v), torch.ones(out.shape))
    for a, b in zip(ones, dense):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_each_program_compiles_once_when_a_chunk_holds_all_the_keys(own_programs):
    """Chunks of varied widths compile the key dimension as dynamic, and dynamo guards a chunk's
    strides against its width: a chunk of all S keys (the last causal tile here) would be a
    contiguous tensor and compile each program again, unless the keys sit in a longer buffer."""
    from torch._dynamo.utils import counters

    wide, S2 = Inductor(key_chunk=128, max_rows=16), L + 40  # chunks of 56, 72 and all 77 keys
    q, k, v = inputs(B, H, H, L, S2, E, E, torch.float32)
    kw = dict(score_mod=attend.mods.softcap(2.0), causal=True)
    plan = wide.plan(attend.functional._prepare(q, k, v, **kw)[0])
    assert plan.varied and any(c[:2] == (0, S2) for *_, chunks in plan.tiles for c in chunks)
    # (each chunk's B·H·rows·keys is over 4096, where inductor's sums change code: a guard of their own)
    graphs = counters["stats"]["unique_graphs"]
    check_case(wide, q, k, v, kw=kw, ref_scores=R.scaled_dot(E), allowed=R.causal_mask(L, S2),
               mod=lambda s: 2.0 * torch.tanh(s / 2.0), dtype=torch.float32, what="a chunk of all the keys")
    assert counters["stats"]["unique_graphs"] - graphs == len(own_programs.FIRST_CALL) >= 2  # forward, backward


def test_double_backward_raises_instead_of_dropping_terms():
    """With create_graph, even for a loss linear in the output (where once_differentiable would
    hand back gradients with no graph, and a penalty on them would lose its terms unnoticed)."""
    q, k, v = inputs(B, H, H, L, S, E, E, torch.float64, grad=True)
    for loss in (lambda o: o.sum(), lambda o: (o ** 2).sum()):
        out = attend.attention(q, k, v, backend=SMALL)
        with pytest.raises(RuntimeError, match="has no double backward"):
            torch.autograd.grad(loss(out), q, create_graph=True)
    out = attend.attention(q, k, v, backend=SMALL)
    assert torch.isfinite(torch.autograd.grad(out.sum(), q)[0]).all()  # a plain backward still runs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32_within_the_tolerance_rule(dtype):
    q, k, v = inputs(B, H, H, L, L, E, E, dtype)
    kw = {"score_mod": attend.mods.softcap(2.0), "causal": True}
    check_case(SMALL, q, k, v, kw=kw, ref_scores=R.scaled_dot(E), allowed=R.causal_mask(L, L),
               mod=lambda s: 2.0 * torch.tanh(s / 2.0), dtype=dtype, what=f"{dtype} softcap causal")


@pytest.mark.parametrize("arg", ["tile_bytes", "key_chunk", "back_key_chunk", "max_rows", "min_work"])
def test_bad_settings_are_refused_by_name(arg):
    with pytest.raises((TypeError, ValueError), match=f"{arg} must be a positive int"):
        Inductor(**{arg: 0})


@pytest.mark.parametrize("L,mask,expect", [
    (512, attend.masks.prefix_lm(128), "sdpa"),  # over half the pairs kept, masked: SDPA with a dense mask is faster
    (512, attend.masks.chunked(256), "inductor"),  # half kept, but every chunk runs without the rules (run 8)
    (512, attend.masks.document(torch.arange(512) // 128), "inductor"),  # a quarter kept
    (1536, attend.masks.chunked(768), "inductor"),  # half kept, past 1024 x 1024: the tiles are faster
])
def test_training_with_mask_rules_goes_where_the_benchmark_measured_it_faster(monkeypatch, L, mask, expect):
    monkeypatch.setattr(attend.backends.get("inductor"), "min_work", 1)
    q = torch.randn(4, 8, L, 16, requires_grad=True)  # the benchmark's batch and heads: the tiles' plan depends on them
    got = attend.explain(q, q, q, mask=mask)
    assert got.backend == expect, str(got)
    if expect == "sdpa":
        assert "SDPA's fused kernel computes this call" in " ".join(got.reasons["inductor"])


def test_auto_plans_the_tiles_once_per_call(monkeypatch):
    """auto's choice plans the tiles; the run must reuse that plan (it is Python work, ~0.5 ms)."""
    ind = attend.backends.get("inductor")
    monkeypatch.setattr(ind, "min_work", 1)
    made = []
    real = ind._plan
    monkeypatch.setattr(ind, "_plan", lambda call: made.append(1) or real(call))
    q = torch.randn(1, 2, 64, 8, requires_grad=True)
    attend.attention(q, q, q, score_mod=attend.mods.softcap(5.0), causal=True)
    assert len(made) == 1
