"""`attend demo` tells why: example sentences chosen to show the difference, the explanation
beside the BLEU table (true to the table's numbers), and no fused-kernel section without a GPU."""
from __future__ import annotations

import io
from types import SimpleNamespace

import torch

from attend.apps import demo


def _result(texts, by_length):
    return SimpleNamespace(translations=[SimpleNamespace(text=t) for t in texts], by_length=by_length)


PAIRS = [(["a"] * 5, ["x"] * 5), (["b"] * 12, ["y"] * 12), (["c"] * 35, ["z"] * 35), (["d"] * 45, ["w"] * 45),
         (["e"] * 15, ["v"] * 15)]


def test_examples_are_ones_the_attention_model_gets_right_and_the_baseline_does_not():
    right = [" ".join(t) for _, t in PAIRS]
    wrong = list(right)
    wrong[1] = wrong[2] = wrong[4] = "nonsense"
    results = {"attention": _result(right, []), "no attention": _result(wrong, [])}
    chosen, telling = demo._telling_examples(results, PAIRS)
    assert telling and chosen == [PAIRS[1], PAIRS[2]]  # a 10-20 word one, then the longest <= 40 words
    same = {"attention": _result(right, []), "no attention": _result(right, [])}
    chosen, telling = demo._telling_examples(same, PAIRS)
    assert not telling and chosen == [PAIRS[2]]  # nothing tells them apart: the longest <= 40 words


def test_the_explanation_follows_the_numbers():
    rows = lambda a, b: [{"bleu": a}, {"bleu": b}]  # noqa: E731
    grows = {"attention": _result([], rows(100.0, 75.3)), "no attention": _result([], rows(91.1, 13.6))}
    out = io.StringIO()
    demo._why(out, grows, 256)
    text = out.getvalue()
    assert "one vector" in text and "of 256 numbers" in text
    assert "attention leads by 8.9 BLEU in the\nshortest row and by 61.7 in the longest" in text
    flat = {"attention": _result([], rows(1.0, 0.1)), "no attention": _result([], rows(1.0, 0.2))}
    out = io.StringIO()
    demo._why(out, flat, 48)
    assert "does not grow with length" in out.getvalue() and "leads by" not in out.getvalue()
    little = {"attention": _result([], rows(1.0, 0.9)), "no attention": _result([], rows(1.7, 0.7))}  # -0.7 to 0.2
    out = io.StringIO()
    demo._why(out, little, 48)  # (before: "does not grow", though it grew by 0.9)
    assert "the gap grows only a little with length, to a lead under 5 BLEU (-0.7 BLEU in the shortest" in \
        out.getvalue()


def test_no_fused_section_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = io.StringIO()
    demo._fused(out)
    assert out.getvalue() == ""
