"""attend.data: text, vocabularies, TSV loading, splits, the embedded corpus, batching."""
from __future__ import annotations

import unicodedata

import pytest
import torch

from attend.data import (SYNTHETIC_EXAMPLE, LengthGroupedBatches, Vocab, make_batch, normalize, prepare, read_tsv,
                         split_by_source, synthetic_pairs, tokenize)


def test_normalize_and_tokenize():
    assert normalize("  Ça\u00a0VA ?  ") == "ça va ?"
    assert normalize("e\u0301") == "é"  # NFC
    assert tokenize("L’homme a-t-il vu «le» chat?") == ["l'", "homme", "a-t-il", "vu", "«", "le", "»", "chat", "?"]
    assert tokenize("Don't stop.") == ["don'", "t", "stop", "."]
    # combining marks stay in their word (before: "हिन्दी" was 6 pieces, "İstanbul" 3), and the text is NFC after
    # lower case (which can split a letter from its mark)
    assert tokenize("हिन्दी है") == ["हिन्दी", "है"] and tokenize("İstanbul") == ["i\u0307stanbul"]
    assert tokenize("a \u0301b") == ["a", "\u0301b"]  # (a mark after a space: the start of a word, kept with it)
    assert unicodedata.is_normalized("NFC", normalize("\u0130\u094d"))
    with pytest.raises(TypeError, match="text must be a str"):
        tokenize(3)


def test_vocab_build_min_freq_unk_and_roundtrip():
    v = Vocab.build([["a", "b", "a"], ["c", "a", "b"]], min_freq=2)
    assert v.to_list() == ["<pad>", "<unk>", "<bos>", "<eos>", "a", "b"]
    assert v.encode(["a", "c", "b"]) == [4, 1, 5]
    assert v.decode([2, 4, 5, 3, 4]) == ["a", "b"]  # stops at <eos>, drops <bos>
    assert Vocab(v.to_list()).stoi == v.stoi
    assert len(Vocab.build([["x", "y", "y"]], max_size=1)) == 5
    with pytest.raises(ValueError, match="min_freq"):
        Vocab.build([["a"]], min_freq=0)
    with pytest.raises(ValueError, match="must start with"):
        Vocab(["a", "b"])
    with pytest.raises(ValueError, match="twice"):
        Vocab(["<pad>", "<unk>", "<bos>", "<eos>", "a", "a"])


def test_read_tsv_columns_attribution_and_limits(tmp_path):
    f = tmp_path / "pairs.tsv"
    f.write_text("Go.\tVa !\tCC-BY 2.0 (France) Attribution: tatoeba.org #2877272\n\nHi.\tSalut !\tCC-BY\n",
                 encoding="utf-8")
    assert read_tsv(f) == [("Go.", "Va !"), ("Hi.", "Salut !")]
    assert read_tsv(f, src_col=1, tgt_col=0, limit=1) == [("Va !", "Go.")]


def test_read_tsv_errors_name_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found: .*nope.tsv"):
        read_tsv(tmp_path / "nope.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nonly one column\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv:2: expected at least 2 tab-separated columns .* found 1"):
        read_tsv(bad)
    with pytest.raises(ValueError, match=r"bad.tsv:1: expected at least 4"):
        read_tsv(bad, tgt_col=3)
    binary = tmp_path / "bin.tsv"
    binary.write_bytes(b"ok\tfine\n\xff\xfe\tx\n")
    with pytest.raises(ValueError, match=r"bin.tsv:2: not UTF-8"):
        read_tsv(binary)
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no sentence pairs"):
        read_tsv(empty)
    with pytest.raises(ValueError, match="src_col and tgt_col must differ"):
        read_tsv(bad, src_col=1, tgt_col=1)
    with pytest.raises(ValueError, match="src_col must be an int >= 0"):
        read_tsv(bad, src_col=-1)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_tsv(tmp_path)


def test_read_tsv_refuses_a_line_past_its_limit_before_reading_it_whole(tmp_path):
    f = tmp_path / "long.tsv"
    f.write_bytes(b"a\tb\n" + b"x" * 65534 + b"\ty\n" + b"c\td\n")  # line 2: 65536 bytes and its newline
    assert [len(s) for s, _ in read_tsv(f)] == [1, 65534, 1]
    f.write_bytes(b"a\tb\n" + b"x " * 40000 + b"\ty\n")
    with pytest.raises(ValueError, match=r"long\.tsv:2: a line longer than 65536 bytes \(max_line_bytes\); is this a "
                                         r"file of sentence pairs, one per line\?$"):
        read_tsv(f)
    assert len(read_tsv(f, max_line_bytes=1 << 20)) == 2
    f.write_bytes(b"a\tb\n" + b"x" * 300_000)  # no newline at all: at most the limit is read
    with pytest.raises(ValueError, match=r"long\.tsv:2: a line longer than 100 bytes"):
        read_tsv(f, max_line_bytes=100)
    with pytest.raises(ValueError, match=r"^max_line_bytes must be an int >= 1, got 0$"):
        read_tsv(f, max_line_bytes=0)
    for end in (b"\n", b"\r\n"):  # the line's end is not counted (before: CRLF counted one byte of it)
        f.write_bytes(b"abc\tdef" + end + b"ab\tdefgh" + end)
        assert read_tsv(f, max_line_bytes=8) == [("abc", "def"), ("ab", "defgh")]
        with pytest.raises(ValueError, match=r"long\.tsv:2: a line longer than 7 bytes"):
            read_tsv(f, max_line_bytes=7)
    f.write_bytes(b"abc\tdef\r\nab\tdefgh\r")  # the last line ended by a lone carriage return
    assert read_tsv(f, max_line_bytes=8) == [("abc", "def"), ("ab", "defgh")]


def test_data_arguments_are_checked_by_name():
    # (before: a hang for max_words 4-5, an empty epoch for pool=-1, a vocabulary of characters, ...)
    for call, exc, message in [
        (lambda: synthetic_pairs(3, max_words=5), ValueError, r"max_words must be an int >= 6 \(the shortest"),
        (lambda: synthetic_pairs(3, relative_p=5), ValueError, r"relative_p must be a probability in \[0, 1\]"),
        (lambda: LengthGroupedBatches([([4], [5])], batch_size=2, pool=-1), ValueError, "pool must be an int >= 1"),
        (lambda: LengthGroupedBatches([([4], [5])], batch_size=2, seed=1.5), ValueError, "seed must be an int"),
        (lambda: Vocab.build(["the cat"]), TypeError, r"sentences\[0\]: expected a list of tokens, got a string"),
        (lambda: Vocab.build([["a"]]).encode("ab"), TypeError, "tokens: expected a list of tokens, got a string"),
        (lambda: Vocab.build([["a"]]).decode([4, 99]), ValueError, "ids: 99 is not an id of this vocabulary of 5"),
        (lambda: prepare([("a", "b")], min_len=0), ValueError, "min_len must be an int >= 1"),
        (lambda: split_by_source([(["a"], ["b"])], valid="0.1"), ValueError, r"valid must be a fraction in \[0, 1\)"),
        (lambda: make_batch([([4], [5])], index=[0, 1]), ValueError, r"index: expected one index per pair \(1\)"),
        (lambda: read_tsv(__file__, limit=0), ValueError, "limit must be None or an int >= 1, got 0"),
    ]:
        with pytest.raises(exc, match=message):
            call()


def test_prepare_filters_by_length():
    pairs = [("a b c", "x y"), ("a", "x y z w"), ("", "x")]
    assert prepare(pairs, max_len=3) == [(["a", "b", "c"], ["x", "y"])]
    assert len(prepare(pairs)) == 2


def test_split_never_puts_one_source_in_two_splits():
    pairs = prepare([(f"s{i % 40}", f"t{i}") for i in range(400)])  # every source has 10 translations
    sp = split_by_source(pairs, valid=0.1, test=0.1, seed=1)
    sources = [{tuple(s) for s, _ in part} for part in (sp.train, sp.valid, sp.test)]
    assert not (sources[0] & sources[1]) and not (sources[0] & sources[2]) and not (sources[1] & sources[2])
    assert len(sp.train) + len(sp.valid) + len(sp.test) == 400
    assert 30 <= len(sp.test) <= 60 and 30 <= len(sp.valid) <= 60
    assert split_by_source(pairs, valid=0.1, test=0.1, seed=1) == sp
    with pytest.raises(ValueError, match="valid"):
        split_by_source(pairs, valid=1.0)


def test_synthetic_corpus_is_deterministic_and_has_the_phenomena():
    a, b = synthetic_pairs(300, seed=5), synthetic_pairs(300, seed=5)
    assert a == b and a != synthetic_pairs(300, seed=6)
    text = " ".join(f for _, f in synthetic_pairs(3000, seed=0))
    for phrase in ["l'", "du ", "cet ", " a ", " ont ", " qui ", " et "]:
        assert phrase in text, phrase
    lengths = [len(e.split()) for e, _ in synthetic_pairs(2000, seed=0)]
    assert max(lengths) >= 40 and min(lengths) <= 6
    assert all(len(e.split()) <= 20 for e, _ in synthetic_pairs(200, seed=0, max_words=20))
    # the seed sentence is in the grammar: adjective after the noun, past tense in two words
    en, fr = SYNTHETIC_EXAMPLE
    assert fr == "le chat noir a mangé la souris ."
    pairs = synthetic_pairs(20000, seed=0, max_clauses=1, depth=0)
    assert any(p[0].startswith("the black cat ate ") for p in pairs)
    with pytest.raises(ValueError, match="n must be an int"):
        synthetic_pairs(-1)


def test_agreement_in_synthetic_corpus():
    # every French plural article "les" after "the" + English plural is matched; adjectives agree
    pairs = synthetic_pairs(3000, seed=2, max_clauses=1, depth=0)
    for en, fr in pairs:
        if en.startswith("the black mice "):
            assert fr.startswith("les souris noires ")
        if en.startswith("a white mouse "):
            assert fr.startswith("une souris blanche ")


def test_make_batch_pads_and_masks():
    b = make_batch([([5, 6, 7], [8]), ([5], [8, 9, 10])])
    assert b.src.tolist() == [[5, 6, 7], [5, 0, 0]]
    assert b.src_mask.tolist() == [[True, True, True], [True, False, False]]
    assert b.tgt_in.tolist() == [[2, 8, 0, 0], [2, 8, 9, 10]]
    assert b.tgt_out.tolist() == [[8, 3, 0, 0], [8, 9, 10, 3]]
    assert b.n_tgt_tokens == 6
    with pytest.raises(ValueError, match="source sentence 1 of the batch is empty"):
        make_batch([([5], [8]), ([], [8])])


def test_length_grouped_batches_cover_everything_deterministically():
    pairs = [([1] * (1 + i % 23), [1]) for i in range(500)]
    lb = LengthGroupedBatches(pairs, batch_size=16, seed=3, pool=4)
    o1, o2 = lb.order(0), lb.order(0)
    assert o1 == o2 and o1 != lb.order(1)
    flat = sorted(i for b in o1 for i in b)
    assert flat == list(range(500))
    # grouping: far less padding than batches drawn in random order
    def padding(batches):
        return sum(max(len(pairs[i][0]) for i in b) * len(b) - sum(len(pairs[i][0]) for i in b) for b in batches)

    perm = torch.randperm(500).tolist()
    assert padding(o1) < 0.4 * padding([perm[i : i + 16] for i in range(0, 500, 16)])
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedBatches(pairs, batch_size=0)


def test_a_byte_order_mark_is_dropped(tmp_path):
    assert normalize("\ufeffThe cat") == "the cat"
    assert tokenize("\ufeffthe\ufeff cat") == ["the", "cat"]
    f = tmp_path / "bom.tsv"
    f.write_bytes("\ufeffGo.\tVa !\nHi.\tSalut !\n".encode("utf-8"))  # as Windows editors save UTF-8
    assert read_tsv(f) == [("Go.", "Va !"), ("Hi.", "Salut !")]
    assert read_tsv(f, src_col=1, tgt_col=0)[0] == ("Va !", "Go.")


def test_batch_order_takes_every_seed_a_run_accepts():
    pairs = [([4] * (1 + i % 7), [5, 6]) for i in range(40)]
    for seed in (0, 5, 2 ** 63 - 1):  # the largest seed `--seed` accepts (its product overflowed torch's seed)
        orders = [LengthGroupedBatches(pairs, batch_size=4, seed=seed, pool=2).order(e) for e in (0, 1)]
        assert sorted(i for b in orders[0] for i in b) == list(range(40)) and orders[0] != orders[1]
    # seeds that fitted before give the same batches as before (a resumed run sees the same order)
    g = torch.Generator().manual_seed(5 * 1_000_003 + 1)
    assert LengthGroupedBatches(pairs, batch_size=4, seed=5, pool=100).order(1)[0] == \
        sorted(torch.randperm(40, generator=g).tolist(), key=lambda i: len(pairs[i][0]))[
            4 * torch.randperm(10, generator=g).tolist()[0]:][:4]
