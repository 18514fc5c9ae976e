"""attend.models: the seed-002 encoder-decoder and its attention; decoding (attend.apps.translate)."""
from __future__ import annotations

import pytest
import torch

import attend.nn.recurrent as recurrent
from attend.apps.translate import beam_search, greedy
from attend.data import make_batch
from attend.models import ATTENTION_KINDS, Seq2Seq, Seq2SeqConfig


def tiny(attention="general", rnn="gru", **kw) -> Seq2Seq:
    torch.manual_seed(0)
    cfg = dict(src_vocab=23, tgt_vocab=29, embed_dim=8, hidden_dim=12, attention=attention, rnn=rnn, dropout=0.0)
    cfg.update(kw)
    return Seq2Seq(Seq2SeqConfig(**cfg)).eval()


SENTENCES = [[4, 5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17, 18], [19]]


def batch(sentences=SENTENCES):
    return make_batch([(s, [4, 5, 6]) for s in sentences])


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_shapes_and_weights(attention, rnn):
    m = tiny(attention, rnn, layers=2)
    b = batch()
    logits, w = m(b.src, b.src_lengths, b.tgt_in)
    assert logits.shape == (4, 4, 29)
    if attention == "none":
        assert w is None
        return
    assert w.shape == (4, 4, 8)
    # rows sum to one over real source words, zero on padding
    torch.testing.assert_close(w.sum(-1), torch.ones(4, 4))
    assert bool((w.masked_select(~b.src_mask[:, None, :].expand_as(w)) == 0).all())


@pytest.mark.parametrize("attention", ["dot", "general", "concat", "additive"])
def test_all_attention_goes_through_attend(attention, monkeypatch):
    calls = []
    real = recurrent.attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("score"))
        return real(*args, **kwargs)

    monkeypatch.setattr(recurrent, "attention", spy)
    m = tiny(attention)
    b = batch()
    m(b.src, b.src_lengths, b.tgt_in)
    assert calls, "the decoder did not call attend.attention"


@pytest.mark.parametrize("attention", ["general", "additive", "none"])
def test_padded_batch_translates_as_sentences_one_by_one(attention):
    m = tiny(attention)
    b = batch()
    logits, w = m(b.src, b.src_lengths, b.tgt_in)
    together = greedy(m, b.src, b.src_lengths, max_len=12)
    for i, s in enumerate(SENTENCES):
        one = batch([s])
        l1, w1 = m(one.src, one.src_lengths, one.tgt_in)
        torch.testing.assert_close(logits[i : i + 1], l1, atol=1e-5, rtol=1e-5)
        if w is not None:
            torch.testing.assert_close(w[i : i + 1, :, : len(s)], w1, atol=1e-6, rtol=1e-5)
        alone = greedy(m, one.src, one.src_lengths, max_len=12)[0]
        assert alone.tokens == together[i].tokens
        assert alone.score == pytest.approx(together[i].score, abs=1e-4)
        if attention != "none":
            torch.testing.assert_close(alone.weights, together[i].weights, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["general", "additive", "none"])
@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_beam_one_is_greedy(attention, rnn):
    m = tiny(attention, rnn)
    b = batch()
    g = greedy(m, b.src, b.src_lengths, max_len=9)
    bs = beam_search(m, b.src, b.src_lengths, beam=1, max_len=9)
    for x, y in zip(g, bs):
        assert x.tokens == y.tokens
        assert x.score == pytest.approx(y.score, abs=1e-9)
        if x.weights is not None:
            assert torch.equal(x.weights, y.weights)


def test_greedy_weights_are_what_the_decoder_computed():
    m = tiny("general")
    b = batch()
    g = greedy(m, b.src, b.src_lengths, max_len=6)
    for i, h in enumerate(g):
        if not h.tokens:
            continue
        one = make_batch([(SENTENCES[i], h.tokens)])
        _, w = m(one.src, one.src_lengths, one.tgt_in)  # teacher-forcing on its own output
        torch.testing.assert_close(h.weights, w[0, : len(h.tokens)], atol=1e-5, rtol=1e-5)
        assert h.weights.shape == (len(h.tokens), len(SENTENCES[i]))


@torch.no_grad()
def test_wide_beam_is_exhaustive_search():
    # With a beam as wide as the search space, beam search must find the best-scoring
    # output of all of them (length_penalty 0: raw log-probability); <pad> and <bos> are
    # never decoded, so the space is the sequences of the other tokens.
    import itertools

    m = tiny("general", tgt_vocab=6)
    T, eos = 3, 3
    allowed = [1, 3, 4, 5]
    for s in SENTENCES[:2]:
        one = make_batch([(s, [])])
        best = beam_search(m, one.src, one.src_lengths, beam=6 ** T, max_len=T, length_penalty=0.0)[0]
        scores = {}
        for n in range(1, T + 1):
            for seq in itertools.product(allowed, repeat=n):
                if eos in seq[:-1] or (n < T and seq[-1] != eos):
                    continue  # ended early, or stopped without <eos> before max_len
                b = make_batch([(s, list(seq))])
                logp = m(b.src, b.src_lengths, b.tgt_in)[0].log_softmax(-1)[0].double()
                scores[seq] = float(logp[torch.arange(n), torch.tensor(seq)].sum())
        top = max(scores, key=scores.get)
        assert best.score == pytest.approx(scores[top], abs=1e-5)
        assert best.tokens == [t for t in top if t != eos]


@torch.no_grad()
def test_beam_search_returns_the_sum_of_its_token_log_probs():
    m = tiny("additive")
    b = batch()
    for h, s in zip(beam_search(m, b.src, b.src_lengths, beam=3, max_len=6), SENTENCES):
        one = make_batch([(s, h.tokens)])
        logits, _ = m(one.src, one.src_lengths, one.tgt_in)
        logp = logits.log_softmax(-1)[0]
        n = len(h.tokens) + (1 if len(h.tokens) < 6 else 0)  # + <eos> if it ended
        tgt = one.tgt_out[0, :n]
        assert h.score == pytest.approx(float(logp[torch.arange(n), tgt].double().sum()), abs=1e-4)


def test_config_and_argument_errors():
    with pytest.raises(ValueError, match="attention must be one of"):
        Seq2SeqConfig(src_vocab=10, tgt_vocab=10, attention="luong")
    with pytest.raises(ValueError, match="hidden_dim must be even"):
        Seq2SeqConfig(src_vocab=10, tgt_vocab=10, hidden_dim=5)
    with pytest.raises(ValueError, match="rnn must be one of"):
        Seq2SeqConfig(src_vocab=10, tgt_vocab=10, rnn="rnn")
    with pytest.raises(ValueError, match="dropout"):
        Seq2SeqConfig(src_vocab=10, tgt_vocab=10, dropout=1.0)
    with pytest.raises(ValueError, match=r"unknown fields 'heads'$"):  # nothing near it
        Seq2SeqConfig.from_dict({"src_vocab": 10, "tgt_vocab": 10, "heads": 3})
    with pytest.raises(ValueError, match=r"unknown fields 'heads', 'hidden' \(did you mean 'hidden_dim'\?\)$"):
        Seq2SeqConfig.from_dict({"src_vocab": 10, "tgt_vocab": 10, "hidden": 64, "heads": 3})
    with pytest.raises(dataclasses_frozen()):
        Seq2SeqConfig(src_vocab=10, tgt_vocab=10).hidden_dim = 3
    m = tiny()
    b = batch()
    with pytest.raises(ValueError, match="src_lengths must be in"):
        m.encode(b.src, torch.tensor([5, 2, 9, 1]))
    with pytest.raises(ValueError, match="src: expected a .B, S. tensor"):
        m.encode(b.src.float(), b.src_lengths)
    for beam in (0, 1025, 10 ** 7):
        with pytest.raises(ValueError, match=rf"^beam must be an int in \[1, 1024\] \(each beam holds a copy of the "
                                             rf"encoder's states\), got {beam}$"):
            beam_search(m, b.src, b.src_lengths, beam=beam)
    with pytest.raises(ValueError, match="max_len must be an int >= 1"):
        greedy(m, b.src, b.src_lengths, max_len=0)


def dataclasses_frozen():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("attention", ["general", "additive"])
@torch.no_grad()
def test_search_never_emits_pad_or_bos(attention):
    # an undertrained model that rates <bos> and <pad> highest (seen: "<bos> <bos> <bos> ...")
    m = tiny(attention)
    m.out.bias[2] += 50.0  # <bos>
    m.out.bias[0] += 40.0  # <pad>
    b = batch()
    for hyps in (greedy(m, b.src, b.src_lengths, max_len=6), beam_search(m, b.src, b.src_lengths, beam=3, max_len=6)):
        for i, h in enumerate(hyps):
            assert h.tokens and not {0, 2} & set(h.tokens), h.tokens
            one = make_batch([(SENTENCES[i], h.tokens)])
            logp = m(one.src, one.src_lengths, one.tgt_in)[0].log_softmax(-1)[0].double()
            n = len(h.tokens) + (1 if len(h.tokens) < 6 else 0)
            # the score is still the model's own log-probability of the words chosen
            assert h.score == pytest.approx(float(logp[torch.arange(n), one.tgt_out[0, :n]].sum()), abs=1e-4)


def test_sizes_past_what_a_machine_trains_are_refused_before_anything_is_built():
    from attend.apps.translate.presets import build_model
    from attend.models.transformer import TransformerConfig

    for field, value, limit in (("hidden_dim", 10 ** 9, r"\[2, 65536\]"), ("embed_dim", 10 ** 9, r"\[1, 65536\]"),
                                ("layers", 10 ** 6, r"\[1, 64\]")):
        with pytest.raises(ValueError, match=rf"^{field} must be an int in {limit}, got {value}$"):
            Seq2SeqConfig(src_vocab=10, tgt_vocab=10, **{field: value})
    with pytest.raises(ValueError, match=r"^ff_dim must be an int in \[0, 262144\], got 10000000000$"):
        TransformerConfig(src_vocab=10, tgt_vocab=10, ff_dim=10 ** 10)
    big = Seq2SeqConfig(src_vocab=600, tgt_vocab=1200, embed_dim=20000, hidden_dim=20000)  # each size allowed
    with pytest.raises(ValueError, match=r"^the model would have 5,\d{3},\d{3},\d{3} parameters, more than "
                                         r"2,147,483,648 \(src_vocab 600, tgt_vocab 1200, embed_dim 20000, hidden_dim"):
        build_model(big)  # (counted on the meta device: nothing allocated)
    assert sum(p.numel() for p in build_model(Seq2SeqConfig(src_vocab=10, tgt_vocab=10)).parameters()) > 0
