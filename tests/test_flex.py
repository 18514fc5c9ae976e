"""The ``flex`` backend (FlexAttention compiled for the CPU, inference only) against the float64
reference by the tolerance rule: the block masks it builds from attend's rules (masked, full and
skipped blocks, ragged edges, per-sequence rules, rows with no key), ALiBi, grouped heads,
L != S, bfloat16; the block-mask cache and its invalidation; what it refuses, and what ``auto``
and ``explain`` say. Each distinct variant compiles once (seconds), so the cases are few and
each covers several features."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import attend
import reference as R
from attend.backends import Flex
from cases import check_case, inputs

pytestmark = pytest.mark.skipif(bool(attend.backends.inductor._no_compiler()), reason="no C++ compiler")

# blocks of 16: at these lengths rows of blocks cross rule edges, and the last block of rows
# and of keys is ragged
SMALL = Flex(block_size=16)
B, H, E = 2, 4, 8


def _alibi_ref(slopes, L, S):
    pos = torch.arange(L).view(-1, 1) + (S - L)
    j = torch.arange(S).view(1, -1)
    return lambda s: s - slopes.double().view(1, -1, 1, 1) * (pos - j).abs()


def _call(q, k, v, **kw):
    return attend.functional._prepare(q, k, v, **kw)[0]


def _allowed(fn, L, S):
    return R.loop_mask(B, L, S, fn).view(B, 1, L, S)


@pytest.mark.parametrize("L,S", [(37, 29), (29, 45)])
def test_alibi_causal_with_grouped_heads_and_rows_without_keys(L, S):
    """L > S: the first L - S rows may attend no key and are exactly zero; L < S: the causal
    diagonal is shifted by S - L. Two kv heads serve four query heads."""
    q, k, v = inputs(B, H, 2, L, S, E, E, torch.float32)
    slopes = attend.mods.alibi_slopes(H)
    kw = dict(causal=True, score_mod=attend.mods.alibi(slopes))
    out, _ = check_case(SMALL, q, k, v, kw=kw, ref_scores=R.scaled_dot(E), allowed=R.causal_mask(L, S),
                        mod=_alibi_ref(slopes, L, S), dtype=torch.float32, what=f"alibi causal {L}x{S}", grads=False)
    if L > S:
        assert torch.equal(out[:, :, : L - S], torch.zeros_like(out[:, :, : L - S]))


def test_per_sequence_rules_combined_with_a_window():
    """Documents (one id list per sequence) AND padding (one length per sequence) AND a window:
    block masks differ per sequence; the cached mask is reused for fresh rule objects of the same
    tensors, and a fresh lengths tensor neither recompiles nor reuses the old mask."""
    L = S = 45
    q, k, v = inputs(B, H, H, L, S, E, E, torch.float32)
    ids = torch.tensor([[0] * 10 + [1] * 20 + [2] * 15, [0] * 30 + [1] * 15])
    lengths = torch.tensor([45, 33])

    def kw_for(lens):
        mask = attend.masks.and_masks(attend.masks.document(ids), attend.masks.padding(lens))
        return dict(mask=mask, window=(6, 3))

    def allowed_for(lens):
        return _allowed(lambda b, i, j: ids[b, i] == ids[b, j] and j < lens[b] and i - 6 <= j <= i + 3, L, S)

    check_case(SMALL, q, k, v, kw=kw_for(lengths), ref_scores=R.scaled_dot(E), allowed=allowed_for(lengths),
               dtype=torch.float32, what="documents, padding, window", grads=False)
    graphs = counters["stats"]["unique_graphs"]
    other = torch.tensor([20, 45])
    check_case(SMALL, q, k, v, kw=kw_for(other), ref_scores=R.scaled_dot(E), allowed=allowed_for(other),
               dtype=torch.float32, what="other lengths", grads=False)
    assert counters["stats"]["unique_graphs"] == graphs  # same program, new block mask
    first = SMALL.block_mask(_call(q, k, v, **kw_for(lengths)))
    assert SMALL.block_mask(_call(q, k, v, **kw_for(lengths))) is first  # fresh rule objects, same tensors: cached
    assert SMALL.block_mask(_call(q, k, v, **kw_for(lengths.clone()))) is not first  # another tensor: built


def test_a_rule_tensor_changed_in_place_builds_its_mask_anew():
    L = S = 40
    q, k, v = inputs(1, H, H, L, S, E, E, torch.float32)
    ids = torch.tensor([0] * 20 + [1] * 20)
    rule = attend.masks.document(ids)
    with torch.no_grad():
        attend.attention(q, k, v, mask=rule, backend=SMALL)
        ids[10:] = 1  # documents of 10 and 30 keys now
        got = attend.attention(q, k, v, mask=rule, backend=SMALL)
        want = attend.attention(q.double(), k.double(), v.double(), mask=rule, backend="eager")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_a_mask_function_of_ones_own_and_bfloat16():
    L, S = 33, 40
    q, k, v = inputs(B, H, H, L, S, E, E, torch.bfloat16)
    stripes = lambda b, h, i, j: (j % 3 != 0) | (i == j)  # noqa: E731
    check_case(SMALL, q, k, v, kw=dict(mask=stripes), ref_scores=R.scaled_dot(E),
               allowed=_allowed(lambda b, i, j: j % 3 != 0 or i == j, L, S), dtype=torch.bfloat16,
               what="own mask_mod, bfloat16", grads=False)


def test_a_relative_bias_table():
    """``auto`` takes flex for a relative-bias table up to 2048 x 2048: its values at clipped
    distances (max_distance 5, so most pairs are clipped), L < S, against a reference written here."""
    L, S, M = 30, 41, 5
    q, k, v = inputs(B, H, H, L, S, E, E, torch.float32)
    table = torch.randn(H, 2 * M + 1)
    rel = (torch.arange(S).view(1, -1) - torch.arange(L).view(-1, 1) - (S - L)).clamp(-M, M) + M
    bias = table.double()[:, rel]  # (H, L, S)
    check_case(SMALL, q, k, v, kw=dict(score_mod=attend.mods.relative_bias(table)),
               ref_scores=R.scaled_dot(E), mod=lambda s: s + bias.unsqueeze(0), dtype=torch.float32,
               what="relative bias table", grads=False)


def test_a_new_soft_cap_in_the_same_process():
    """A second cap compiles a program of its own, with its value fixed (compiled again in place,
    dynamo made the float dynamic and FlexAttention's CPU lowering raised "unbacked_bindings")."""
    L, S = 13, 17
    q, k, v = inputs(B, H, 2, L, S, E, E, torch.float32)
    for cap in (5.0, 3.0):
        check_case(SMALL, q, k, v, kw=dict(causal=True, score_mod=attend.mods.softcap(cap)), ref_scores=R.scaled_dot(E),
                   allowed=R.causal_mask(L, S), mod=lambda s: cap * torch.tanh(s / cap), dtype=torch.float32,
                   what=f"soft-capping {cap}", grads=False)


def test_calls_with_another_head_count_in_one_process():
    """ALiBi + causal at 4 heads, then 2, then 4 again with another length: FlexAttention's CPU
    template recompiled with a dynamic head count made C++ that did not compile (torch 2.13);
    each head count now has its own program, and every call equals the reference."""
    for heads, L in ((4, 40), (2, 40), (4, 52)):
        q, k, v = inputs(1, heads, heads, L, L, E, E, torch.float32)
        slopes = attend.mods.alibi_slopes(heads)
        check_case(SMALL, q, k, v, kw=dict(causal=True, score_mod=attend.mods.alibi(slopes)),
                   ref_scores=R.scaled_dot(E), allowed=R.causal_mask(L, L), mod=_alibi_ref(slopes, L, L),
                   dtype=torch.float32, what=f"alibi causal, {heads} heads, L={L}", grads=False)


def test_block_counts_of_a_causal_mask():
    """Blocks of 16 over 64 x 64 causal: 4 diagonal blocks masked, 6 below full, 6 above skipped."""
    q, k, v = inputs(1, 1, 1, 64, 64, E, E, torch.float32)
    call = _call(q, k, v, causal=True)
    mask, masked, full, per_head = SMALL.block_mask(call)
    assert (masked, full, per_head) == (4, 6, (10.0,))
    assert mask.kv_num_blocks.flatten().tolist() == [1, 1, 1, 1]
    assert mask.full_kv_num_blocks.flatten().tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("kw,needle", [
    (dict(sinks=torch.zeros(H)), "no sinks"),
    (dict(return_weights=True), "no weights"),
    (dict(mask=torch.ones(10, 10, dtype=torch.bool)), "no dense mask or bias"),
    (dict(score=attend.scores.Additive(E, E, 4)), "dot-like scores only"),
    (dict(dtype=torch.float64), "float32, bfloat16 or float16 only"),
    (dict(grad=True), "inference only"),
])
def test_refusals_name_the_reason(kw, needle):
    kw = dict(kw)
    dtype = kw.pop("dtype", torch.float32)
    q, k, v = inputs(1, H, H, 10, 10, E, E, dtype, grad=kw.pop("grad", False))
    with pytest.raises(attend.backends.UnsupportedCall, match=needle):
        attend.attention(q, k, v, backend="flex", **kw)


@pytest.mark.parametrize("L,kw,size,pairs", [
    # a window's band edges cut blocks of 128: 640 keys a row of blocks against 576 with blocks of 64
    (2048, dict(window=256), 64, (16 * 128 * 640 - 2 * 128 * (256 + 128), 32 * 64 * 576 - 2 * 64 * (256 + 192 + 128 + 64))),
    (2048, dict(window=(256, 0)), 64, None),
    # causal at 2048: the diagonal blocks' waste is 3% of the pairs, under FINE_SAVING
    (2048, dict(causal=True), 128, (128 * 128 * 136, 64 * 64 * 528)),
    # ... and 10% at 512
    (512, dict(causal=True), 64, (128 * 128 * 10, 64 * 64 * 36)),
    # ALiBi's reach per head ends inside blocks: blocks of 64 whatever the rules
    (2048, dict(causal=True, score_mod=attend.mods.alibi(2)), 64, None),
    # documents of 512: their edges fall on block edges, so blocks of 64 compute the same pairs
    (2048, dict(mask=attend.masks.document(torch.arange(2048).div(512, rounding_mode="floor")[None])), 128,
     (4 * 512 * 512, 4 * 512 * 512)),
    (2048, dict(mask=attend.masks.chunked(256)), 128, None),
    (2048, dict(score_mod=attend.mods.alibi(2)), 64, None),
    (2048, dict(score_mod=attend.mods.softcap(20.0)), 128, None),  # no mask rule: every pair
])
def test_the_block_size_chosen_per_call(L, kw, size, pairs):
    """``Flex()`` takes blocks of 64 where they compute at least FINE_SAVING fewer pairs than
    blocks of 128, counted over whole blocks of each row of blocks' key span, or where ALiBi's
    reach applies; explain says so. A block size given is kept whatever the call."""
    q = torch.zeros(1, 2, L, 8)
    call = _call(q, q, q, **kw)
    chosen = Flex()
    assert chosen.size(call) == size
    if pairs is not None:
        assert (chosen._pairs(call, 128)[1], chosen._pairs(call, 64)[1]) == pairs
    alibi = isinstance(kw.get("score_mod"), type(attend.mods.alibi(2)))
    if not alibi and (kw.get("mask") is not None or "window" in kw or kw.get("causal")):  # counted once, cached
        assert sorted(v[1:] for v in chosen._spans.values()) == sorted([chosen._pairs(call, 128), chosen._pairs(call, 64)])
    assert Flex(block_size=128).size(call) == 128 and Flex(block_size=32).size(call) == 32
    with torch.no_grad():
        detail = attend.explain(q, q, q, backend=chosen, **kw).detail
    mask = chosen.block_mask(call)
    assert detail.startswith(f"blocks of {size}" if mask is not None else "no mask rule: every block computed")
    assert ("fewer pairs than blocks of 128" in detail) == (size == 64 and not alibi)
    assert ("ALiBi's reach per head ends inside blocks" in detail) == alibi
    if mask is not None:
        assert mask[0].BLOCK_SIZE == (size, size)


@pytest.mark.parametrize("L,S,kw", [
    (1, 300, dict(causal=True)),  # one decoding step: one row, whatever the block
    (160, 160, dict(mask=attend.masks.chunked(256))),  # a ragged last row of blocks
    (300, 1, dict(window=256)),
])
def test_short_and_ragged_lengths_keep_blocks_of_128(L, S, kw):
    """The last row of blocks counts the rows it has: where blocks of 64 compute the same pairs,
    128 is kept (a count of whole blocks of rows once made a one-row call claim 50% fewer)."""
    q, k = torch.zeros(1, 2, L, 8), torch.zeros(1, 2, S, 8)
    call = _call(q, k, k, **kw)
    chosen = Flex()
    assert chosen._pairs(call, 128) == chosen._pairs(call, 64)
    assert chosen.size(call) == 128


def test_counts_are_not_reused_for_a_new_rule_tensor():
    """The cached pair counts name a rule's tensors by id and version: a tensor changed in place, or a
    new tensor (which may take a freed tensor's id), is counted afresh."""
    import gc
    L = 1024
    chosen = Flex()
    q = torch.zeros(1, 2, L, 8)
    ids = torch.arange(L).div(512, rounding_mode="floor")[None]
    call = _call(q, q, q, mask=attend.masks.document(ids))
    assert chosen.size(call) == 128  # documents of 512 fall on block edges
    ids.copy_(torch.arange(L).div(96, rounding_mode="floor")[None])  # in place: documents of 96
    call = _call(q, q, q, mask=attend.masks.document(ids))
    assert chosen._pairs(call, 64) == Flex()._pairs(call, 64) and chosen.size(call) == Flex().size(call) == 64
    for _ in range(5):  # new tensors of the same shape, after the old one is freed
        del ids, call
        gc.collect()
        ids = torch.arange(L).div(512, rounding_mode="floor")[None]
        call = _call(q, q, q, mask=attend.masks.document(ids))
        assert chosen._pairs(call, 64) == Flex()._pairs(call, 64) and chosen.size(call) == 128
        ids = torch.arange(L).div(96, rounding_mode="floor")[None]
        call = _call(q, q, q, mask=attend.masks.document(ids))
        assert chosen._pairs(call, 64) == Flex()._pairs(call, 64) and chosen.size(call) == 64


def test_blocks_of_64_chosen_for_a_window_are_exact():
    """The window the choice gives blocks of 64, on ragged lengths and L != S, against float64."""
    for L, S in ((150, 131), (131, 200)):
        q, k, v = inputs(B, H, H, L, S, E, E, torch.float32)
        call = _call(q, k, v, window=(40, 20))
        assert Flex().size(call) == 64
        check_case(Flex(), q, k, v, kw=dict(window=(40, 20)), ref_scores=R.scaled_dot(E),
                   allowed=R.window_mask(L, S, 40, 20), dtype=torch.float32, what=f"window {L}x{S}", grads=False)


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="block_size"):
        Flex(block_size=0)
    with pytest.raises((TypeError, ValueError), match="block_size"):
        Flex(block_size=64.0)
    with pytest.raises((TypeError, ValueError), match="min_work"):
        Flex(min_work=1.5)


def test_what_auto_takes_and_explain_says():
    q, k, v = inputs(1, 8, 8, 2048, 2048, 64, 64, torch.float32)
    with torch.no_grad():
        alibi = attend.explain(q, k, v, causal=True, score_mod=attend.mods.alibi(8))
        window = attend.explain(q, k, v, window=256)
        softcap = attend.explain(q, k, v, score_mod=attend.mods.softcap(20.0))
        causal = attend.explain(q, k, v, causal=True)
        small = attend.explain(q[:, :, :64], k[:, :, :64], v[:, :, :64], window=8)
    assert alibi.backend == "flex" and "full (computed without the mask)" in alibi.detail
    assert window.backend == "flex"
    assert softcap.backend == "inductor" and "slower than inductor" in " ".join(softcap.reasons["flex"])
    with torch.no_grad():
        table = torch.randn(8, 257)
        rel = attend.explain(q, k, v, score_mod=attend.mods.relative_bias(table))
        half = q[:, :, :1024]
        rel_short = attend.explain(half, half, half, score_mod=attend.mods.relative_bias(table))
        wide = torch.randn(8, 2 * 1024 + 1)  # reach 1024: the bands are most of the pairs
        q2 = torch.cat([q, q], dim=2)
        rel_wide = attend.explain(q2, q2, q2, score_mod=attend.mods.relative_bias(wide))
    # a relative-bias table: one call of SDPA's kernel, the biases a strided view, at any length and reach
    for why in (rel, rel_short, rel_wide):
        assert why.backend == "sdpa" and "strided view" in why.detail
        assert "sdpa runs this relative-bias table faster" in " ".join(why.reasons["flex"])
    assert causal.backend == "sdpa" and "plain causal" in " ".join(causal.reasons["flex"])
    assert "min_work" in " ".join(small.reasons["flex"])
    qg = q.clone().requires_grad_()
    training = attend.explain(qg, k, v, causal=True, score_mod=attend.mods.alibi(8))  # (fixed slopes: SDPA's kernel)
    assert training.backend == "sdpa" and "inference only" in " ".join(training.reasons["flex"])


def test_inputs_that_require_grad_under_no_grad_and_inference_mode():
    """Leaf tensors that require grad, in a no_grad or inference_mode block (a model's eval loop):
    flex runs them (FlexAttention itself refuses inputs that require grad on the CPU)."""
    L = S = 45
    q, k, v = inputs(B, H, H, L, S, E, E, torch.float32, grad=True)
    want = attend.attention(q.detach(), k.detach(), v.detach(), window=(8, 0), backend="eager")
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            out = attend.attention(q, k, v, window=(8, 0), backend=SMALL)
        torch.testing.assert_close(out, want, rtol=0, atol=1e-5)
