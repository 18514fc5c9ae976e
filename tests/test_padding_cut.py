"""Key padding on SDPA's kernel with each sequence's keys cut to its length
(:mod:`attend.backends._padding`): outputs and gradients against the float64 reference by
the tolerance rule, the calls actually made (no mask, keys cut), empty sequences, NaN kept
where it is used, and the calls that keep the dense mask."""
from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

import attend
import reference as R
from attend.backends import _padding
from cases import check_case, inputs


def _allowed(lengths, L, S, causal=False):
    """(B, 1, L, S): key j < lengths[b] (and j <= i with causal), built by a Python loop."""
    return R.loop_mask(len(lengths), L, S, lambda b, i, j: j < lengths[b] and (not causal or j <= i + S - L))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["mixed", "equal", "one empty", "causal", "gqa", "L > S"])
def test_matches_reference_with_gradients(case, dtype):
    B, Hq, Hkv, L, S, causal = 3, 2, 2, 40, 40, False
    lengths = [40, 17, 29]
    if case == "equal":
        lengths = [23, 23, 23]
    elif case == "one empty":
        lengths = [0, 31, 40]
    elif case == "causal":
        causal, lengths = True, [12, 40, 33]
    elif case == "gqa":
        Hq, Hkv = 4, 2
    elif case == "L > S":
        L = 52
    q, k, v = inputs(B, Hq, Hkv, L, S, 8, 8, dtype)
    kw = {"mask": attend.masks.padding(torch.tensor(lengths)), "causal": causal}
    out, grads = check_case("sdpa", q, k, v, kw=kw, ref_scores=R.scaled_dot(8),
                            allowed=_allowed(lengths, L, S, causal), dtype=dtype, what=f"padding cut, {case}")
    empty = [b for b, n in enumerate(lengths) if n == 0]
    for b in empty:  # no key: rows exactly zero, gradients exactly zero
        assert torch.equal(out[b], torch.zeros_like(out[b]))
        assert torch.equal(grads[0][b], torch.zeros_like(grads[0][b]))


def _count(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def counted(q, k, v, attn_mask=None, **kw):
        calls.append((tuple(q.shape), tuple(k.shape), attn_mask is None, kw.get("is_causal", False)))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(_padding, "F", types.SimpleNamespace(scaled_dot_product_attention=counted))  # its calls only
    return calls


def test_one_unmasked_call_per_sequence_on_its_own_keys(monkeypatch):
    calls = _count(monkeypatch)
    q, k, v = inputs(3, 2, 2, 30, 30, 8, 8, torch.float32)
    attend.attention(q, k, v, mask=attend.masks.padding(torch.tensor([30, 0, 11])), backend="sdpa")
    assert calls == [((1, 2, 30, 8), (1, 2, 30, 8), True, False), ((1, 2, 30, 8), (1, 2, 11, 8), True, False)]
    calls.clear()
    attend.attention(q, k, v, mask=attend.masks.padding(torch.tensor([9, 9, 9])), causal=True, backend="sdpa")
    assert calls == [((3, 2, 30, 8), (3, 2, 9, 8), True, True)]  # equal lengths: one call


def test_auto_takes_it_and_explain_says_so():
    q, k, v = inputs(2, 8, 8, 2048, 2048, 64, 64, torch.float32)
    kw = {"mask": attend.masks.padding(torch.tensor([2048, 1536]))}
    e = attend.explain(q, k, v, **kw)
    assert e.backend == "sdpa"
    assert "cut to its length (88% of the keys), 2 kernel calls without a mask" in str(e)
    assert _padding.AUTO_REASON in str(e)


@pytest.mark.parametrize("lengths", [[0], [0, 0]])
def test_no_sequence_with_a_key_gives_zeros_and_zero_gradients(lengths):
    """All sequences empty: one 'call' that makes none; the zeros stay attached to the inputs
    (a review found them detached: backward raised)."""
    q, k, v = inputs(len(lengths), 2, 2, 8, 8, 4, 4, torch.float32, grad=True)
    kw = {"mask": attend.masks.padding(torch.tensor(lengths))}
    out = attend.attention(q, k, v, backend="sdpa", **kw)
    assert torch.equal(out, torch.zeros_like(out)) and out.requires_grad
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    assert "0 kernel calls" in attend.explain(q, k, v, **kw).detail


def test_explain_counts_the_calls_made():
    q, k, v = inputs(3, 2, 2, 8, 8, 4, 4, torch.float32)
    assert "1 kernel call without" in attend.explain(q, k, v, mask=attend.masks.padding(torch.tensor([8, 0, 0]))).detail
    assert "2 kernel calls" in attend.explain(q, k, v, mask=attend.masks.padding(torch.tensor([5, 0, 3]))).detail


def test_auto_takes_it_with_gradients_where_a_dense_mask_would_be_too_big():
    """At L = S = 16384 SDPA's dense mask would take 1.25 GiB: the cut needs none."""
    q, k, v = inputs(1, 1, 1, 16384, 16384, 8, 8, torch.float32, grad=True)
    e = attend.explain(q, k, v, mask=attend.masks.padding(torch.tensor([12288])))
    assert e.backend == "sdpa" and "75% of the keys" in e.detail


@pytest.mark.parametrize("case", ["no key cut", "window", "dense mask too", "many lengths", "dropout",
                                  "causal, L != S", "another rule"])
def test_other_calls_keep_the_dense_mask(monkeypatch, case):
    calls = _count(monkeypatch)
    B, L, S, kw = 2, 16, 16, {}
    lengths = [16, 5]
    if case == "no key cut":
        lengths = [16, 20]  # (lengths past S cut nothing)
    elif case == "window":
        kw["window"] = (3, 3)
    elif case == "many lengths":
        B = _padding.MAX_SEQUENCES + 1
        lengths = [1 + b % 16 for b in range(B)]
    elif case == "dropout":
        kw["dropout_p"] = 0.1
    elif case == "causal, L != S":
        kw["causal"], L = True, 12
    q, k, v = inputs(B, 2, 2, L, S, 8, 8, torch.float32)
    rule = attend.masks.padding(torch.tensor(lengths))
    if case == "dense mask too":  # (a rule on top of padding: no longer key padding alone)
        rule = attend.masks.and_masks(rule, attend.masks.causal())
    if case == "another rule":
        rule = attend.masks.key_mask(torch.arange(S)[None].expand(B, S) < torch.tensor(lengths)[:, None])
    out = attend.attention(q, k, v, mask=rule, backend="sdpa", **kw)
    assert calls == [] and out.shape == (B, 2, L, 8)


def test_a_nan_query_row_is_nan_and_the_others_are_untouched():
    q, k, v = inputs(2, 2, 2, 24, 24, 8, 8, torch.float64)
    rule = attend.masks.padding(torch.tensor([24, 10]))
    clean = attend.attention(q, k, v, mask=rule, backend="sdpa")
    q[1, 0, 5, 2] = math.nan
    out = attend.attention(q, k, v, mask=rule, backend="sdpa")
    assert out[1, 0, 5].isnan().all()
    keep = torch.ones(2, 2, 24, dtype=torch.bool)
    keep[1, 0, 5] = False
    assert torch.equal(out[keep], clean[keep])


def test_a_nan_in_a_padding_key_reaches_no_row():
    q, k, v = inputs(2, 1, 1, 24, 24, 8, 8, torch.float64)
    rule = attend.masks.padding(torch.tensor([24, 10]))
    clean = attend.attention(q, k, v, mask=rule, backend="sdpa")
    k[1, 0, 15, 0] = v[1, 0, 20, 1] = math.nan  # past sequence 1's length
    assert torch.equal(attend.attention(q, k, v, mask=rule, backend="sdpa"), clean)


def test_not_while_torch_compile_traces(monkeypatch):
    q, k, v = inputs(2, 1, 1, 16, 16, 8, 8, torch.float32)
    call = attend.functional._prepare(q, k, v, mask=attend.masks.padding(torch.tensor([16, 3])))[0]
    assert _padding.lengths(call) == [16, 3]
    monkeypatch.setattr(_padding, "untraceable", lambda: True)
    assert _padding.lengths(call) is None


def test_a_padding_subclass_that_changes_the_rule_is_not_cut_as_padding():
    """The cut reads ``lengths`` as the rule; a subclass that changes ``__call__`` (here: every key
    allowed) must get its own rule, not its parent's cut."""
    import dataclasses

    from attend._rules import Padding

    @dataclasses.dataclass(frozen=True, eq=False)
    class Everything(Padding):
        def __call__(self, b, h, i, j):
            return (i + j) >= 0

    q, k, v = inputs(2, 2, 2, 8, 8, 8, 8, torch.float32)
    rule = Everything(torch.tensor([3, 5]))
    with torch.no_grad():
        got = attend.attention(q, k, v, mask=rule, backend="sdpa")
        want = attend.attention(q, k, v, backend="eager")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
