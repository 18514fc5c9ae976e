"""attend.nn transformer layers: parity with torch.nn's layers, positional encodings,
key/value-cache decoding equal to the full forward, argument errors."""
from __future__ import annotations

import math

import pytest
import torch

import attend
from attend.nn import (ALiBi, Decoder, DecoderLayer, Encoder, EncoderDecoder, EncoderLayer, KVCache, LayerKV,
                       LearnedPositions, MultiHeadAttention, RotaryEmbedding, SinusoidalPositions)

POSITIONAL = ["sinusoidal", "learned", "rope", "alibi", "none"]


def _copy_from_torch(ours, theirs, decoder=False):
    ours.self_attn = MultiHeadAttention.from_torch(theirs.self_attn)
    ours.ff.linear1.load_state_dict(theirs.linear1.state_dict())
    ours.ff.linear2.load_state_dict(theirs.linear2.state_dict())
    ours.norm1.load_state_dict(theirs.norm1.state_dict())
    if decoder:
        ours.cross_attn = MultiHeadAttention.from_torch(theirs.multihead_attn)
        ours.norm_cross.load_state_dict(theirs.norm2.state_dict())
        ours.norm_ff.load_state_dict(theirs.norm3.state_dict())
    else:
        ours.norm_ff.load_state_dict(theirs.norm2.state_dict())
    return ours


def _randomise_norms(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name or "bias" in name:
                p.normal_()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_equals_torch(norm_first, activation):
    t = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation=activation, batch_first=True,
                                         norm_first=norm_first).double().eval()
    _randomise_norms(t)
    ours = _copy_from_torch(EncoderLayer(16, 4, ff_dim=32, dropout=0.0, activation=activation,
                                         norm_first=norm_first).double(), t).eval()
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    real = torch.ones(3, 6, dtype=torch.bool)
    real[1, 4:] = False
    expected = t(x, src_key_padding_mask=~real)
    got, w = ours(x, key_mask=real, need_weights=True)
    torch.testing.assert_close(got[real], expected[real], rtol=1e-12, atol=1e-12)
    assert w.shape == (3, 4, 6, 6)
    assert torch.all(w[1, :, :, 4:] == 0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_equals_torch(norm_first):
    t = torch.nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, activation="gelu", batch_first=True,
                                         norm_first=norm_first).double().eval()
    _randomise_norms(t)
    ours = _copy_from_torch(DecoderLayer(16, 4, ff_dim=32, dropout=0.0, norm_first=norm_first).double(), t,
                            decoder=True).eval()
    x, mem = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 7, 16, dtype=torch.float64)
    real = torch.ones(2, 7, dtype=torch.bool)
    real[0, 5:] = False
    causal = torch.nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    expected = t(x, mem, tgt_mask=causal, memory_key_padding_mask=~real)
    got, _, w_cross = ours(x, mem, memory_mask=real, need_weights=True)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.all(w_cross[0, :, :, 5:] == 0)


def test_every_attention_goes_through_attend(monkeypatch):
    calls = []
    real = attend.functional.attention

    def spy(*a, **kw):
        calls.append(kw.get("causal"))
        return real(*a, **kw)

    monkeypatch.setattr("attend.nn.multihead.attention", spy)
    model = EncoderDecoder(d_model=16, num_heads=2, num_layers=2, dropout=0.0)
    model(torch.randn(1, 4, 16), torch.randn(1, 3, 16))
    # 2 encoder self-attentions, 2 decoder self (causal) + 2 cross
    assert sorted(calls) == [False] * 4 + [True] * 2


@pytest.mark.parametrize("positional", POSITIONAL)
def test_cached_decoding_equals_full_forward(positional):
    dec = Decoder(num_layers=2, d_model=16, num_heads=4, positional=positional, max_len=64,
                  dropout=0.0).double().eval()
    mem = torch.randn(2, 7, 16, dtype=torch.float64)
    mem_mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    full = dec(x, mem, memory_mask=mem_mask, need_weights=True)
    cache = dec.new_cache(capacity=2)  # forces the storage to grow while decoding
    outs, self_w = [dec(x[:, :3], mem, memory_mask=mem_mask, cache=cache).hidden], []
    for t in range(3, 11):
        step = dec(x[:, t : t + 1], mem, memory_mask=mem_mask, cache=cache, need_weights=True)
        outs.append(step.hidden)
        self_w.append(step.self_attentions[-1])
    assert cache.length == 11
    torch.testing.assert_close(torch.cat(outs, 1), full.hidden, rtol=1e-10, atol=1e-10)
    # the last step's weights are the last row of the full causal weights
    torch.testing.assert_close(self_w[-1][:, :, 0], full.self_attentions[-1][:, :, -1], rtol=1e-10, atol=1e-10)


def test_decoder_only_cache_and_causality():
    dec = Decoder(num_layers=2, d_model=8, num_heads=2, cross_attention=False, positional="rope",
                  dropout=0.0).double().eval()
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    y = x.clone()
    y[:, 4:] = torch.randn(1, 2, 8, dtype=torch.float64)  # change the future only
    a, b = dec(x).hidden, dec(y).hidden
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=0)
    cache = dec.new_cache()
    steps = torch.cat([dec(x[:, t : t + 1], cache=cache).hidden for t in range(6)], 1)
    torch.testing.assert_close(steps, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("positional", ["rope", "learned"])
def test_gradients_flow_through_cached_decoding_steps(positional):
    dec = Decoder(num_layers=2, d_model=8, num_heads=2, cross_attention=False, positional=positional, max_len=16,
                  dropout=0.0).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 5, 8, dtype=torch.float64)
    gx, *gp = torch.autograd.grad((dec(x).hidden * w).sum(), [x, *dec.parameters()])
    cache = dec.new_cache(capacity=2)
    steps = torch.cat([dec(x[:, :2], cache=cache).hidden] + [dec(x[:, t : t + 1], cache=cache).hidden
                                                             for t in range(2, 5)], 1)
    sx, *sp = torch.autograd.grad((steps * w).sum(), [x, *dec.parameters()])  # (before: modified by an inplace op)
    torch.testing.assert_close(sx, gx, rtol=1e-10, atol=1e-10)
    for a, b in zip(sp, gp):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    with torch.no_grad():  # and the cache keeps decoding without gradients after them
        last = dec(x[:, 4:], cache=cache).hidden
    assert cache.length == 6 and last.shape == (2, 1, 8)


@pytest.mark.parametrize("norm_first", [True, False])
def test_padding_rows_are_the_same_alone_or_in_a_batch(norm_first):
    enc = Encoder(num_layers=2, d_model=16, num_heads=2, norm_first=norm_first, dropout=0.0).double().eval()
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    km = torch.ones(3, 6, dtype=torch.bool)
    km[0, 4:] = False
    km[2] = False  # all padding
    batched = enc(x, key_mask=km).hidden
    for b in range(3):  # (before: padding rows were 0 only in a batch of more than one, 2.5 alone)
        torch.testing.assert_close(enc(x[b : b + 1], key_mask=km[b : b + 1]).hidden[0], batched[b], rtol=1e-12,
                                   atol=1e-12)


def test_cache_reorders_rows_for_beam_search():
    dec = Decoder(num_layers=1, d_model=8, num_heads=2, cross_attention=False, dropout=0.0).double().eval()
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    cache = dec.new_cache()
    dec(x[:, :3], cache=cache)
    picked = cache.index_select(torch.tensor([2, 0]))
    got = dec(x[[2, 0], 3:], cache=picked).hidden
    torch.testing.assert_close(got, dec(x[[2, 0]]).hidden[:, 3:], rtol=1e-10, atol=1e-10)


def test_sinusoidal_table_values_and_offset():
    pe = SinusoidalPositions(6)
    x = torch.zeros(1, 3, 6, dtype=torch.float64)
    table = pe(x)[0]
    p, i = 2, 1  # P[2, 2] = sin(2 / 10000^(2/6)), P[2, 3] = cos(...)
    assert table[p, 2 * i].item() == pytest.approx(math.sin(p / 10000 ** (2 * i / 6)), abs=1e-12)
    assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * i / 6)), abs=1e-12)
    torch.testing.assert_close(pe(x[:, :1], offset=2)[0, 0], table[2])


def test_rope_scores_depend_only_on_distance():
    rope = RotaryEmbedding(8)
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)

    def score(i, j):
        qi = rope(q.view(1, 8), offset=i)[0]
        kj = rope(k.view(1, 8), offset=j)[0]
        return float(qi @ kj)

    assert score(5, 3) == pytest.approx(score(12, 10), abs=1e-10)
    assert score(0, 0) == pytest.approx(float(q @ k), abs=1e-12)  # position 0: no rotation
    assert score(5, 3) != pytest.approx(score(5, 4), abs=1e-6)
    assert rope(q.view(1, 8), offset=7).norm().item() == pytest.approx(q.norm().item())  # a rotation


def test_alibi_penalises_distance():
    al = ALiBi(4)
    s = torch.zeros(1, 4, 3, 3)
    b, h, i, j = (torch.arange(n).view(*shape) for n, shape in
                  ((1, (1, 1, 1, 1)), (4, (1, 4, 1, 1)), (3, (1, 1, 3, 1)), (3, (1, 1, 1, 3))))
    out = al.score_mod.bind(3, 3)(s, b, h, i, j)
    assert out[0, 0, 0, 2].item() == pytest.approx(-2 * al.slopes[0].item())
    assert out[0, 3, 1, 1].item() == 0.0


def test_learned_positions_limit():
    lp = LearnedPositions(4, 8)
    with pytest.raises(ValueError, match="max_len=4"):
        lp(torch.zeros(1, 3, 8), offset=2)


def test_gradients_match_finite_differences():
    torch.manual_seed(1)
    enc = Encoder(num_layers=1, d_model=8, num_heads=2, positional="rope", dropout=0.0).double()
    x = torch.randn(1, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: enc(t).hidden, (x,), eps=1e-6, atol=1e-6)


def test_dropout_only_in_training():
    enc = Encoder(num_layers=1, d_model=8, num_heads=2, dropout=0.5)
    x = torch.randn(2, 5, 8)
    enc.eval()
    torch.testing.assert_close(enc(x).hidden, enc(x).hidden, rtol=0, atol=0)
    enc.train()
    assert not torch.equal(enc(x).hidden, enc(x).hidden)


@pytest.mark.parametrize("kwargs, message", [
    (dict(positional="relative"), "positional must be one of"),
    (dict(positional="learned"), "max_len is required"),
    (dict(num_layers=0), "num_layers must be an int >= 1"),
    (dict(dropout=1.5), "dropout must be a number in"),
    (dict(activation="tanh"), "activation must be one of"),
    (dict(norm_first="yes"), "norm_first must be a bool"),
])
def test_bad_arguments_are_named(kwargs, message):
    base = dict(num_layers=1, d_model=8, num_heads=2)
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Encoder(**base)


def test_bad_inputs_are_named():
    dec = Decoder(num_layers=1, d_model=8, num_heads=2)
    with pytest.raises(ValueError, match="memory: this decoder layer has cross-attention"):
        dec(torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match=r"memory: shape \(3, 5, 8\) does not fit x's \(2, 3, 8\) "
                                         r"\(a different batch size\)"):
        dec(torch.randn(2, 3, 8), torch.randn(3, 5, 8))
    with pytest.raises(ValueError, match=r"x: expected embeddings \(B, L, 8\)"):
        dec(torch.randn(1, 2, 7), torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="cache: expected a KVCache"):
        dec(torch.randn(1, 2, 8), torch.randn(1, 3, 8), cache=KVCache(2, cross=True))
    with pytest.raises(RuntimeError, match="static"):
        LayerKV(static=True).append(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    with pytest.raises(ValueError, match="head_dim must be an even int"):
        RotaryEmbedding(7)


def test_cache_refuses_keys_that_do_not_match_what_it_holds():
    """The measured break: float64 keys appended after float32 ones were cast silently."""
    c = LayerKV()
    c.append(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    with pytest.raises(TypeError, match="cache holds keys of dtype torch.float32, got torch.float64"):
        c.append(torch.zeros(1, 2, 1, 4, dtype=torch.float64), torch.zeros(1, 2, 1, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"cache holds values of shape \(B, Hkv, n, d\) = \(1, 2, n, 4\), got \(1, 2, 1, 5\)"):
        c.append(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 5))
    with pytest.raises(ValueError, match=r"cache holds keys of shape .* got \(2, 2, 1, 4\)"):
        c.append(torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1, 4))
    assert c.length == 3  # nothing was appended by the refused calls
