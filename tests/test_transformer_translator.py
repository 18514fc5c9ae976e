"""The transformer translator: cached decoding equals teacher forcing, search invariants,
learning the embedded corpus, checkpoints, `attend translate train --model transformer`."""
from __future__ import annotations


import pytest
import torch

from attend.apps import Translator, evaluate, train_translator
from attend.cli import main
from attend.data import make_batch, prepare, split_by_source, synthetic_pairs
from attend.apps.translate import TrainConfig, beam_search, greedy
from attend.models import TransformerConfig, TransformerSeq2Seq

SENTENCES = [[4, 5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17, 18], [19]]


def tiny(**kw) -> TransformerSeq2Seq:
    torch.manual_seed(0)
    cfg = dict(src_vocab=23, tgt_vocab=29, d_model=16, heads=4, encoder_layers=2, decoder_layers=2, dropout=0.0)
    cfg.update(kw)
    return TransformerSeq2Seq(TransformerConfig(**cfg)).eval()


def batch(sentences=SENTENCES):
    return make_batch([(s, [4, 5, 6]) for s in sentences])


@pytest.mark.parametrize("positional", ["sinusoidal", "rope", "alibi", "learned"])
@torch.no_grad()
def test_greedy_with_cache_equals_teacher_forcing(positional):
    m = tiny(positional=positional)
    b = batch()
    for i, h in enumerate(greedy(m, b.src, b.src_lengths, max_len=7)):
        one = make_batch([(SENTENCES[i], h.tokens)])
        logits, w = m(one.src, one.src_lengths, one.tgt_in, need_weights=True)
        n = len(h.tokens)
        logp = logits.log_softmax(-1)[0].double()
        steps = n + (1 if n < 7 else 0)
        assert h.score == pytest.approx(float(logp[torch.arange(steps), one.tgt_out[0, :steps]].sum()), abs=1e-4)
        torch.testing.assert_close(h.weights, w[0, :n], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_decode_leaves_its_state_as_it_was_so_branches_are_exact():
    m = tiny().double()
    b = batch()
    enc = m.encode(b.src, b.src_lengths)
    bos = torch.ones(4, 1, dtype=torch.long)
    first, state, _ = m.decode(bos, enc.state, enc)
    again, _, _ = m.decode(bos, enc.state, enc)  # (before: the cache had advanced, 0.3 off)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    for t in (7, 8):
        _, state, _ = m.decode(torch.full((4, 1), t), state, enc)  # a prefix of three tokens
    branches = {}
    for word in (11, 12, 13):  # three continuations from the same state, in turn
        steps = []
        s = state
        for t in (word, 9):
            logits, s, _ = m.decode(torch.full((4, 1), t), s, enc)
            steps.append(logits)
        branches[word] = torch.cat(steps, 1)
    for word, got in branches.items():
        tgt = torch.tensor([[1, 7, 8, word, 9]] * 4)
        full, _ = m(b.src, b.src_lengths, tgt)
        torch.testing.assert_close(got, full[:, 3:], rtol=1e-10, atol=1e-10)


def test_cache_views_share_storage_until_both_go_on():
    from attend.nn import LayerKV

    kv = lambda n, x: (torch.full((1, 1, n, 2), float(x)), torch.full((1, 1, n, 2), -float(x)))
    a = LayerKV(capacity=8)
    a.append(*kv(3, 1))
    b = a.view()
    a.append(*kv(1, 2))
    ptr = a.keys.data_ptr()
    a.append(*kv(1, 3))
    assert a.keys.data_ptr() == ptr  # one line of decoding never copies while there is room
    keys, values = b.append(*kv(2, 4))  # b goes on from 3 positions: a's 4th and 5th are not b's
    assert keys[0, 0, :, 0].tolist() == [1, 1, 1, 4, 4] and values[0, 0, 3, 0] == -4
    assert a.keys[0, 0, :, 0].tolist() == [1, 1, 1, 2, 3]  # and a keeps what it had


@torch.no_grad()
def test_padded_batch_equals_one_by_one_and_beam_one_is_greedy():
    m = tiny()
    b = batch()
    together = greedy(m, b.src, b.src_lengths, max_len=9)
    beams = beam_search(m, b.src, b.src_lengths, beam=1, max_len=9)
    for i, s in enumerate(SENTENCES):
        one = batch([s])
        alone = greedy(m, one.src, one.src_lengths, max_len=9)[0]
        assert alone.tokens == together[i].tokens == beams[i].tokens
        assert alone.score == pytest.approx(together[i].score, abs=1e-4)
        assert beams[i].score == pytest.approx(together[i].score, abs=1e-9)


@torch.no_grad()
@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_a_sentences_default_length_is_its_own_not_its_batchs(search):
    m = tiny()  # untrained: it rarely says <eos>, so the length limit decides
    run = (lambda b: greedy(m, b.src, b.src_lengths)) if search == "greedy" else \
        (lambda b: beam_search(m, b.src, b.src_lengths, beam=2))
    short, long = [4, 5], [6] * 20
    alone = run(batch([short]))[0]
    together = run(batch([short, long]))[0]  # (before: 2 x 20 + 10 = 50 words for the short one too)
    assert len(alone.tokens) <= 2 * 2 + 10 and together.tokens == alone.tokens
    assert together.score == pytest.approx(alone.score, abs=1e-6)


@torch.no_grad()
def test_search_arguments_and_learned_positions_are_checked():
    m = tiny(positional="learned", max_len=16)
    b = batch([[4, 5, 6, 7, 8]])
    assert len(greedy(m, b.src, b.src_lengths)[0].tokens) <= 16  # the default cut at the positions it has
    with pytest.raises(ValueError, match=r"max_len: 17 output words, but the model's learned positions stop at 16"):
        greedy(m, b.src, b.src_lengths, max_len=17)
    for call, message in [
        (lambda: greedy(m, b.src, b.src_lengths.float()), "src_lengths: expected integer lengths, got dtype"),
        (lambda: greedy(m, b.src + 30, b.src_lengths), r"src: ids must be in \[0, 23\) \(the source vocabulary\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()
    assert greedy(m, b.src[:0], b.src_lengths[:0]) == [] == beam_search(m, b.src[:0], b.src_lengths[:0])


def test_translate_and_evaluate_check_their_arguments():
    from attend.data import Vocab

    src = tgt = Vocab.build([["the", "cat", "dog", "a", "b", "c", "d"]])
    tr = Translator(tiny(src_vocab=len(src), tgt_vocab=len(tgt)), src, tgt)
    for kw, message in [(dict(batch_size=-1), "batch_size must be an int >= 1"),  # (before: [None, None])
                        (dict(batch_size=2.5), "batch_size must be an int"),
                        (dict(beam=True), "beam must be an int"), (dict(beam=1.0), "beam must be an int"),
                        (dict(length_penalty=-1), "length_penalty must be"),
                        (dict(length_penalty="x"), "length_penalty must be")]:
        with pytest.raises(ValueError, match=message):
            tr.translate(["the cat", "a dog"], **kw)
    with pytest.raises(TypeError, match=r"source sentence 0: expected a string or a list of token strings"):
        tr.translate([[1, 2]])
    # strings are tokenised, so lengths count words (before: "a b c d a b c" fell in 10-19, its 13 characters)
    r = evaluate(tr, [("a b c d a b c", "the cat")], buckets=[(1, 9), (10, 19)])
    assert [(row["lo"], row["n"]) for row in r.by_length] == [(1, 1)]
    assert r.bleu == evaluate(tr, [(["a", "b", "c", "d", "a", "b", "c"], ["the", "cat"])]).bleu
    with pytest.raises(ValueError, match=r"buckets: expected \(lo, hi\) source lengths with 0 <= lo <= hi, got \(5, 1\)"):
        evaluate(tr, [("a b", "the cat")], buckets=[(5, 1)])


@torch.no_grad()
def test_beam_score_is_sum_of_token_log_probs():
    m = tiny()
    b = batch()
    for h, s in zip(beam_search(m, b.src, b.src_lengths, beam=3, max_len=6), SENTENCES):
        one = make_batch([(s, h.tokens)])
        logp = m(one.src, one.src_lengths, one.tgt_in)[0].log_softmax(-1)[0]
        n = len(h.tokens) + (1 if len(h.tokens) < 6 else 0)
        assert h.score == pytest.approx(float(logp[torch.arange(n), one.tgt_out[0, :n]].double().sum()), abs=1e-4)


def test_config_errors_are_named():
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by heads \(4\)"):
        TransformerConfig(src_vocab=10, tgt_vocab=10, d_model=30)
    with pytest.raises(ValueError, match="positional must be one of"):
        TransformerConfig(src_vocab=10, tgt_vocab=10, positional="none")


@pytest.fixture(scope="module")
def tiny_corpus():
    pairs = prepare(synthetic_pairs(2000, seed=3, max_words=8, max_clauses=1))
    return split_by_source(pairs, valid=0.05, test=0.05, seed=0)


def test_learns_the_tiny_corpus_and_reloads(tiny_corpus, tmp_path):
    sp = tiny_corpus
    model = dict(kind="transformer", d_model=64, heads=4, encoder_layers=2, decoder_layers=2, dropout=0.0)
    tr, hist = train_translator(sp.train, sp.valid, tmp_path, model=model,
                                train_config=TrainConfig(epochs=8, batch_size=32, lr=2e-3, warmup_steps=50),
                                progress=False)
    r = evaluate(tr, sp.test)
    assert r.bleu > 80, r.summary()
    again = Translator.load(tmp_path)
    assert isinstance(again.model, TransformerSeq2Seq)
    out = again.translate(["the black cat ate the mouse ."], beam=3)[0]
    assert out.weights.shape == (len(out.tokens), 7)


def test_cli_trains_a_transformer(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["translate", "train", "--synthetic", "300", "--model", "transformer", "--hidden", "32", "--heads", "2",
               "--layers", "1", "--epochs", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert "trained" in capsys.readouterr().out
    assert isinstance(Translator.load(out).model, TransformerSeq2Seq)
    heat = tmp_path / "h.png"
    assert main(["translate", "le chat", "--checkpoint", str(out), "--heatmap", str(heat)]) == 0
    assert heat.stat().st_size > 0
    assert main(["translate", "train", "--synthetic", "30", "--model", "transformer", "--hidden", "30",
                 "--heads", "4", "--out", str(tmp_path / "x")]) == 2
    assert "--hidden (30) must be divisible by --heads (4)" in capsys.readouterr().err
