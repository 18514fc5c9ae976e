"""attend.nn: MultiHeadAttention (parity with torch.nn.MultiheadAttention), Additive and Luong attention."""
from __future__ import annotations

import math

import pytest
import torch

import attend
from attend.nn import AdditiveAttention, LuongAttention, MultiHeadAttention


def _torch_mha(**kw):
    torch.manual_seed(0)
    m = torch.nn.MultiheadAttention(**kw).double().eval()
    with torch.no_grad():  # non-zero biases so the copy of every tensor is exercised
        for name, p in m.named_parameters():
            if "bias" in name:
                p.normal_()
    return m


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kv_dims", [False, True])
def test_from_torch_gives_same_outputs_and_weights(batch_first, kv_dims):
    kw = dict(embed_dim=16, num_heads=4, batch_first=batch_first)
    if kv_dims:
        kw.update(kdim=6, vdim=10)
    t = _torch_mha(**kw)
    a = MultiHeadAttention.from_torch(t).eval()
    B, L, S = 3, 5, 7
    q = torch.randn(B, L, 16, dtype=torch.float64)
    k = torch.randn(B, S, kw.get("kdim", 16), dtype=torch.float64)
    v = torch.randn(B, S, kw.get("vdim", 16), dtype=torch.float64)
    if not batch_first:
        q, k, v = (x.transpose(0, 1) for x in (q, k, v))
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[1, 4:] = True  # torch: True = padding
    blocked = torch.rand(L, S) > 0.8  # torch bool attn_mask: True = NOT allowed
    blocked[:, 0] = False
    for avg in (True, False):
        to, tw = t(q, k, v, key_padding_mask=pad, attn_mask=blocked, need_weights=True, average_attn_weights=avg)
        ao, aw = a(q, k, v, key_mask=~pad, mask=~blocked, need_weights=True, average_weights=avg)
        torch.testing.assert_close(ao, to)
        torch.testing.assert_close(aw, tw)
    # float additive mask: same polarity in both
    fm = torch.randn(L, S, dtype=torch.float64)
    to, _ = t(q, k, v, attn_mask=fm)
    ao, _ = a(q, k, v, mask=fm)
    torch.testing.assert_close(ao, to)


def test_self_attention_causal_matches_torch():
    t = _torch_mha(embed_dim=12, num_heads=3, batch_first=True)
    a = MultiHeadAttention.from_torch(t)
    x = torch.randn(2, 6, 12, dtype=torch.float64)
    causal_block = torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)  # torch: True = blocked
    to, tw = t(x, x, x, attn_mask=causal_block)
    ao, aw = a(x, causal=True, need_weights=True)
    torch.testing.assert_close(ao, to)
    torch.testing.assert_close(aw, tw)


def test_fully_padded_sequence_gives_zero_attention_not_nan():
    """torch's MHA returns NaN for a fully padded row; attend returns the output projection of zero."""
    a = MultiHeadAttention(8, 2).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    keys = torch.tensor([[True, True, True], [False, False, False]])
    out, w = a(x, key_mask=keys, need_weights=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], a.out_proj.bias.expand(3, 8))
    assert torch.equal(w[1], torch.zeros(3, 3, dtype=torch.float64))


@pytest.mark.parametrize("score", ["dot", "scaled_dot", "cosine", "general", "additive"])
def test_mha_scores_gqa_and_backprop(score):
    m = MultiHeadAttention(16, 4, kv_heads=2, score=score)
    x = torch.randn(2, 5, 16)
    mem = torch.randn(2, 7, 16)
    out, w = m(x, mem, need_weights=True, average_weights=False)
    assert out.shape == (2, 5, 16) and w.shape == (2, 4, 5, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_mha_masks_rules_unbatched_and_dropout():
    torch.manual_seed(0)
    m = MultiHeadAttention(8, 2, dropout=0.5)
    x = torch.randn(2, 5, 8)
    keys = torch.tensor([[True] * 5, [True, True, True, False, False]])
    m.eval()
    a, _ = m(x, mask=attend.masks.causal(), key_mask=keys)
    dense = torch.tril(torch.ones(5, 5, dtype=torch.bool))
    b, _ = m(x, mask=dense.expand(2, 5, 5), key_mask=keys)
    c, _ = m(x, causal=True, key_mask=keys)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    u, uw = m(x[0], need_weights=True)  # unbatched (L, D)
    assert u.shape == (5, 8) and uw.shape == (5, 5)
    torch.testing.assert_close(u, m(x[:1])[0][0])
    assert torch.equal(m(x)[0], m(x)[0])  # eval: dropout is a no-op
    m.train()
    assert not torch.equal(m(x)[0], m(x)[0])


@pytest.mark.parametrize("kw, pattern", [
    (dict(embed_dim=10, num_heads=3), r"embed_dim \(10\) must be divisible by num_heads \(3\)"),
    (dict(embed_dim=12, num_heads=4, kv_heads=3), r"num_heads \(4\) must be a multiple of kv_heads \(3\)"),
    (dict(embed_dim=0, num_heads=1), r"embed_dim must be a positive int, got 0"),
    (dict(embed_dim=8, num_heads=2, dropout=1.5), r"dropout must be a float in \[0, 1\), got 1.5"),
    (dict(embed_dim=8, num_heads=2, score="bahdanau"), r"score must be one of .*got 'bahdanau'"),
])
def test_mha_constructor_errors(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        MultiHeadAttention(**kw)


def test_mha_forward_errors():
    m = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"query: expected \(B, L, 8\), got shape \(2, 5, 7\)"):
        m(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"key_mask must be a boolean tensor of shape \(B, S\) = \(2, 5\)"):
        m(torch.randn(2, 5, 8), key_mask=torch.ones(2, 5))
    # (before: torch's "shape '[3, 9, 2, 4]' is invalid for input of size 72", naming no argument)
    with pytest.raises(ValueError, match=r"key: shape \(1, 9, 8\) does not fit the query's \(3, 6, 8\) "
                                         r"\(batch in dimension 0\)"):
        m(torch.randn(3, 6, 8), torch.randn(1, 9, 8))
    seq_first = MultiHeadAttention(8, 2, batch_first=False)
    with pytest.raises(ValueError, match=r"value: shape \(9, 1, 8\) does not fit the query's \(6, 3, 8\) "
                                         r"\(batch in dimension 1\)"):
        seq_first(torch.randn(6, 3, 8), torch.randn(9, 3, 8), torch.randn(9, 1, 8))
    with pytest.raises(ValueError, match=r"key: shape \(1, 9, 8\) does not fit the query's \(6, 8\) \(unbatched\)"):
        m(torch.randn(6, 8), torch.randn(1, 9, 8))
    with pytest.raises(TypeError, match=r"key must be a torch.Tensor, got list"):
        m(torch.randn(3, 6, 8), [[0.0] * 8])
    with pytest.raises(TypeError, match=r"mha must be a torch.nn.MultiheadAttention, got Linear"):
        MultiHeadAttention.from_torch(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"add_bias_kv and add_zero_attn"):
        MultiHeadAttention.from_torch(torch.nn.MultiheadAttention(8, 2, add_bias_kv=True))


def test_additive_attention_is_bahdanau():
    torch.manual_seed(0)
    att = AdditiveAttention(6, 4, 5).double()
    s = torch.randn(3, 6, dtype=torch.float64)  # decoder state
    h = torch.randn(3, 7, 4, dtype=torch.float64)  # encoder states
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[2, 5:] = False
    ctx, w = att(s, h, mask=mask)
    sc = att.score
    e = (torch.tanh(s.unsqueeze(1) @ sc.query_proj.weight.T + h @ sc.key_proj.weight.T + sc.key_proj.bias)
         @ sc.v.weight.T).squeeze(-1)  # (3, 7)
    e = e.masked_fill(~mask, -math.inf)
    expect_w = torch.softmax(e, -1)
    torch.testing.assert_close(w, expect_w)
    torch.testing.assert_close(ctx, (expect_w.unsqueeze(-1) * h).sum(1))
    ctx2, w2 = att(s.unsqueeze(1).expand(3, 2, 6), h, values=h * 2)  # (B, L, Dq) queries, other values
    assert ctx2.shape == (3, 2, 4) and w2.shape == (3, 2, 7)


@pytest.mark.parametrize("mode", ["dot", "general", "concat"])
def test_luong_attention_modes(mode):
    torch.manual_seed(0)
    att = LuongAttention(5, 5, mode).double()
    ht = torch.randn(2, 5, dtype=torch.float64)
    hs = torch.randn(2, 6, 5, dtype=torch.float64)
    ctx, w = att(ht, hs)
    if mode == "dot":
        e = torch.einsum("bd,bsd->bs", ht, hs)
    elif mode == "general":
        e = torch.einsum("bd,de,bse->bs", ht, att.score.weight, hs)
    else:
        sc = att.score
        e = (torch.tanh(ht.unsqueeze(1) @ sc.query_proj.weight.T + hs @ sc.key_proj.weight.T + sc.key_proj.bias)
             @ sc.v.weight.T).squeeze(-1)
    torch.testing.assert_close(w, torch.softmax(e, -1))
    torch.testing.assert_close(ctx, torch.einsum("bs,bsd->bd", w, hs))


def test_recurrent_attention_errors():
    with pytest.raises(ValueError, match=r"mode 'dot' needs query_dim == key_dim, got 4 and 5"):
        LuongAttention(4, 5, "dot")
    with pytest.raises(ValueError, match=r"mode must be one of \['dot', 'general', 'concat'\], got 'bilinear'"):
        LuongAttention(4, 4, "bilinear")
    att = AdditiveAttention(4, 3, 2)
    with pytest.raises(ValueError, match=r"query: expected \(B, 4\) or \(B, L, 4\), got shape \(2, 5\)"):
        att(torch.randn(2, 5), torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match=r"keys: expected \(B, S, 3\), got shape \(2, 3\)"):
        att(torch.randn(2, 4), torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"mask: expected \(B, S\) or \(B, L, S\)"):
        att(torch.randn(2, 4), torch.randn(2, 3, 3), mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask: expected a boolean tensor, True = real source position; got "
                                         r"torch.float32"):  # (before: added to the scores, padding kept 0.017)
        att(torch.randn(2, 4), torch.randn(2, 3, 3), mask=torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]))
