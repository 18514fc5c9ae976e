"""ALiBi's reach (``backends/_alibi_reach.py``, run by ``flex``): blocks whose keys are all
farther than a per-head distance are left out where |q|·|k| bounds their weight below 2^-40 of
the row's. Checked against the float64 reference by the tolerance rule with blocks really left
out (causal, L != S, no rule, a window, grouped heads), a far key that dominates its rows (the
bound must keep it), calls the bound does not cover, non-finite data, the head order that
balances threads (no number changes), and what ``explain`` says."""
from __future__ import annotations

import math

import pytest
import torch

import attend
import reference as R
from attend.backends import Flex, _alibi_reach
from attend.functional import _prepare
from attend._nonfinite import quarantine
from cases import check_case, inputs

pytestmark = pytest.mark.skipif(bool(attend.backends.inductor._no_compiler()), reason="no C++ compiler")

SMALL = Flex(block_size=16)
B, H, HKV, E = 2, 4, 2, 8
# steep slopes, so that at these lengths each head leaves blocks out (Press et al.'s 2^-1..2^-8
# do the same at thousands of keys)
SLOPES = torch.tensor([4.0, 2.0, 1.0, 0.5])


def _alibi_ref(slopes, L, S):
    pos = torch.arange(L).view(-1, 1) + (S - L)
    j = torch.arange(S).view(1, -1)
    return lambda s: s - slopes.double().view(1, -1, 1, 1) * (pos - j).abs()


def _kept(call, with_reach: bool) -> int:
    """Blocks the kernel computes, over sequences and heads."""
    call, _ = quarantine(call)
    reach = _alibi_reach.reach(call, call.query, call.key, 1.0) if with_reach else None
    mask = SMALL.block_mask(call, reach)[0]
    per = 1 if mask.kv_num_blocks.shape[1] > 1 else call.Hq
    return int(mask.kv_num_blocks.sum() + mask.full_kv_num_blocks.sum()) * per


CASES = [  # (L, S, causal, window)
    (160, 160, True, None),
    (130, 170, True, None),  # queries sit at S - L + i; ragged last blocks
    (170, 130, True, None),  # the first L - S rows attend nothing
    (150, 150, False, None),  # no rule: every block full, the reach alone leaves blocks out
    (150, 170, False, (100, 30)),
]


@pytest.mark.parametrize("L,S,causal,window", CASES)
def test_far_blocks_left_out_within_the_tolerance_rule(L, S, causal, window):
    q, k, v = inputs(B, H, HKV, L, S, E, E, torch.float32)
    kw = dict(causal=causal, window=window, score_mod=attend.mods.alibi(SLOPES))
    call, _ = _prepare(q, k, v, **kw)
    assert _kept(call, True) < 0.85 * _kept(call, False)  # the case really leaves blocks out
    allowed = R.causal_mask(L, S) if causal else None
    if window is not None:
        allowed = R.window_mask(L, S, *window)
    out, _ = check_case(SMALL, q, k, v, kw=kw, ref_scores=R.scaled_dot(E), allowed=allowed,
                        mod=_alibi_ref(SLOPES, L, S), dtype=torch.float32, what=f"alibi reach {L}x{S}", grads=False)
    if causal and L > S:
        assert torch.equal(out[:, :, : L - S], torch.zeros_like(out[:, :, : L - S]))


def test_a_far_key_that_dominates_is_kept():
    """Queries aligned with key 0 and long: key 0's score outweighs ALiBi's penalty at every
    row. The bound grows with |q|·|k|, so nothing that matters is left out."""
    L = S = 160
    q, k, v = inputs(1, H, H, L, S, E, E, torch.float32, seed=3)
    q = 10.0 * k[:, :, :1].expand(-1, -1, L, -1).clone() + 0.1 * q
    k[:, :, 0] *= 10.0
    slopes = torch.tensor([0.5, 0.4, 0.3, 0.2])
    kw = dict(causal=True, score_mod=attend.mods.alibi(slopes))
    ref, weights = R.reference(q.double(), k.double(), v.double(), R.scaled_dot(E), allowed=R.causal_mask(L, S),
                               mod=_alibi_ref(slopes, L, S))
    assert weights[0, :, -1, 0].min() > 0.5  # the farthest key carries the last row
    check_case(SMALL, q, k, v, kw=kw, ref_scores=R.scaled_dot(E), allowed=R.causal_mask(L, S),
               mod=_alibi_ref(slopes, L, S), dtype=torch.float32, what="dominant far key", grads=False)


def test_the_reach_follows_the_bound():
    """W_h = (2A + ln S + 40 ln 2) / slope_h with A = scale · max|q| · max|k| (and margins)."""
    q, k, v = inputs(1, H, H, 64, 64, E, E, torch.float32)
    call, _ = quarantine(_prepare(q, k, v, causal=True, score_mod=attend.mods.alibi(SLOPES))[0])
    W = torch.tensor(_alibi_reach.reach(call, q, k, 1.0), dtype=torch.float64)
    A = q.norm(dim=-1).max() * k.norm(dim=-1).max() / math.sqrt(E)
    need = 2 * A + math.log(64) + 40 * math.log(2)
    assert torch.all(W >= need / SLOPES.double())
    assert torch.all(W <= (need + 3) / SLOPES.double())  # the margins are small


@pytest.mark.parametrize("what,kw,L,S", [
    ("another mask rule", dict(mask=attend.masks.document(torch.tensor([0] * 30 + [1] * 34))), 64, 64),
    ("no causal, more queries than keys", dict(), 80, 64),
    ("a zero slope", dict(slopes=torch.tensor([1.0, 0.0, 1.0, 1.0])), 64, 64),
])
def test_calls_the_bound_does_not_cover_get_no_reach(what, kw, L, S):
    slopes = kw.pop("slopes", SLOPES)
    q, k, v = inputs(1, H, H, L, S, E, E, torch.float32)
    call, _ = quarantine(_prepare(q, k, v, score_mod=attend.mods.alibi(slopes), **kw)[0])
    assert not _alibi_reach.applies(call), what
    assert _alibi_reach.reach(call, q, k, 1.0) is None, what


def test_unchecked_data_gets_no_reach():
    q, k, v = inputs(1, H, H, 64, 64, E, E, torch.float32)
    call, _ = _prepare(q, k, v, causal=True, score_mod=attend.mods.alibi(SLOPES))
    assert not call.finite and _alibi_reach.reach(call, q, k, 1.0) is None


def test_non_finite_data_reaches_the_rows_that_use_it():
    """A NaN value at key 3 and an inf key at 120: every row that may attend them is NaN, as
    on eager, although their blocks lie far beyond the reach of the steep heads."""
    L = S = 160
    q, k, v = inputs(1, H, H, L, S, E, E, torch.float32)
    v[0, 0, 3, 2] = math.nan
    k[0, 1, 120, 0] = math.inf
    kw = dict(causal=True, score_mod=attend.mods.alibi(SLOPES))
    out = attend.attention(q, k, v, backend=SMALL, **kw)
    eager = attend.attention(q, k, v, backend="eager", **kw)
    assert torch.equal(out.isnan(), eager.isnan())
    assert out[0, 0, 3:].isnan().all() and out[0, 1, 120:].isnan().all() and not out[0, 2:].isnan().any()


def test_the_head_order_balances_threads_and_changes_no_number(monkeypatch):
    L = S = 256
    q, k, v = inputs(1, H, H, L, S, E, E, torch.float32)
    kw = dict(causal=True, score_mod=attend.mods.alibi(SLOPES))
    call, _ = quarantine(_prepare(q, k, v, **kw)[0])
    mask = SMALL.block_mask(call, _alibi_reach.reach(call, q, k, 1.0))[0]
    kept = (mask.kv_num_blocks.sum((0, 2)) + mask.full_kv_num_blocks.sum((0, 2))).double()
    order = _alibi_reach.balanced(call, kept, 2)
    assert order is not None
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    reordered = attend.attention(q, k, v, backend=SMALL, **kw)
    monkeypatch.setattr(_alibi_reach, "balanced", lambda *a: None)
    plain = attend.attention(q, k, v, backend=SMALL, **kw)
    assert torch.equal(reordered, plain)


def test_balanced_orders():
    q, k, v = inputs(1, 8, 8, 16, 16, E, E, torch.float32)
    call, _ = _prepare(q, k, v, causal=True, score_mod=attend.mods.alibi(8))
    work = torch.tensor([45.0, 58, 81, 115, 136, 136, 136, 136])
    order = _alibi_reach.balanced(call, work, 2)
    halves = [float(work[order[:4]].sum()), float(work[order[4:]].sum())]
    assert max(halves) <= 432 < float(work[4:].sum())  # 544 in head order
    assert _alibi_reach.balanced(call, torch.full((8,), 7.0), 2) is None  # nothing to even out
    two, _ = _prepare(q.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1), causal=True,
                      score_mod=attend.mods.alibi(8))
    assert _alibi_reach.balanced(two, work, 2) is None  # each thread takes whole sequences
    grouped, _ = _prepare(q, k[:, :4], v[:, :4], causal=True, score_mod=attend.mods.alibi(8))
    order = _alibi_reach.balanced(grouped, work, 2).tolist()
    assert all(order[2 * u + 1] == order[2 * u] + 1 and order[2 * u] % 2 == 0 for u in range(4))


def test_explain_names_the_reach():
    q, k, v = inputs(1, H, H, 160, 160, E, E, torch.float32)
    text = str(attend.explain(q, k, v, causal=True, score_mod=attend.mods.alibi(SLOPES), backend=SMALL))
    assert "reach for these inputs" in text and "2^-40" in text


def test_a_reach_that_leaves_out_little_is_not_used():
    """Gentle slopes at this length: even scores of 0 would keep over 90% of the blocks, so the
    norms are not read and every head shares the rules' block mask."""
    q, k, v = inputs(1, H, H, 160, 160, E, E, torch.float32)
    gentle = attend.mods.alibi(torch.tensor([0.05, 0.04, 0.03, 0.02]))
    call, _ = quarantine(_prepare(q, k, v, causal=True, score_mod=gentle)[0])
    assert _alibi_reach.applies(call) and SMALL._reach(call, q, k, 1.0) is None
    steep, _ = quarantine(_prepare(q, k, v, causal=True, score_mod=attend.mods.alibi(SLOPES))[0])
    assert SMALL._reach(steep, q, k, 1.0) is not None
    text = str(attend.explain(q, k, v, causal=True, score_mod=gentle, backend=SMALL))
    assert "not used for these inputs: it would leave out less than 10% of the blocks" in text


def test_slopes_changed_in_place_are_read_again():
    """The slopes are read once per tensor version: a slope set to 0 in place turns the bound
    off, and a new value changes the reach."""
    slopes = SLOPES.clone()
    q, k, v = inputs(1, H, H, 64, 64, E, E, torch.float32)
    call, _ = quarantine(_prepare(q, k, v, causal=True, score_mod=attend.mods.alibi(slopes))[0])
    first = _alibi_reach.reach(call, q, k, 1.0)
    slopes[1] = 0.0
    assert not _alibi_reach.applies(call) and _alibi_reach.reach(call, q, k, 1.0) is None
    slopes[1] = 4.0
    again = _alibi_reach.reach(call, q, k, 1.0)
    assert again[1] == pytest.approx(first[1] / 2) and again[0] == first[0]


def test_grouped_heads_reordered_give_the_same_numbers(monkeypatch):
    """One sequence, 8 query heads on 4 key/value heads, 2 threads: the heads move in groups, and
    the output equals the unreordered one bit for bit, and the reference by the tolerance rule."""
    L = S = 256
    q, k, v = inputs(1, 8, 4, L, S, E, E, torch.float32, seed=4)
    slopes = torch.tensor([0.25, 0.3, 0.5, 0.6, 4.0, 5.0, 8.0, 9.0])  # gentle groups first: unbalanced in head order
    kw = dict(causal=True, score_mod=attend.mods.alibi(slopes))
    call, _ = quarantine(_prepare(q, k, v, **kw)[0])
    mask = SMALL.block_mask(call, _alibi_reach.reach(call, q, k, 1.0))
    assert _alibi_reach.balanced(call, torch.tensor(mask[3]), 2) is not None
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    out, _ = check_case(SMALL, q, k, v, kw=kw, ref_scores=R.scaled_dot(E), allowed=R.causal_mask(L, S),
                        mod=_alibi_ref(slopes, L, S), dtype=torch.float32, what="grouped, reordered", grads=False)
    monkeypatch.setattr(_alibi_reach, "balanced", lambda *a: None)
    assert torch.equal(out, attend.attention(q, k, v, backend=SMALL, **kw))


def test_inference_mode_slopes_and_rule_tensors():
    """Tensors made under torch.inference_mode have no version counter: the slopes are read on
    every call and a rule's tensors are not cached by version, rather than raising."""
    L = S = 160
    q, k, v = inputs(1, H, H, L, S, E, E, torch.float32)
    with torch.inference_mode():
        mod = attend.mods.alibi(SLOPES.clone())
        ids = torch.tensor([0] * 80 + [1] * 80)
        out = attend.attention(q, k, v, causal=True, score_mod=mod, backend=SMALL)
        doc = attend.attention(q, k, v, mask=attend.masks.document(ids), backend=SMALL)
    ref = attend.attention(q, k, v, causal=True, score_mod=attend.mods.alibi(SLOPES), backend="eager")
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    doc_ref = attend.attention(q, k, v, mask=attend.masks.document(torch.tensor([0] * 80 + [1] * 80)), backend="eager")
    torch.testing.assert_close(doc, doc_ref, rtol=0, atol=1e-5)


def test_half_precision_gets_no_reach():
    """The margins are for the kernel's float32 scores: bfloat16 keeps every block."""
    q, k, v = (t.bfloat16() for t in inputs(1, H, H, 64, 64, E, E, torch.float32))
    call, _ = quarantine(_prepare(q, k, v, causal=True, score_mod=attend.mods.alibi(SLOPES))[0])
    assert not _alibi_reach.applies(call) and _alibi_reach.reach(call, q, k, 1.0) is None


def test_an_unbounded_reach_keeps_every_block():
    """A slope so small that the reach overflows to inf rounds to the cap, not an error."""
    assert _alibi_reach.rounded((math.inf, 5.0, 1e300), 16, 100) == (100, 16, 100)
