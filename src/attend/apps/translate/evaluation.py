"""How good a translator is: corpus BLEU and chrF, and BLEU by source length.

BLEU and chrF come from sacrebleu, computed on the tokenised, lower-cased text that the
model reads and writes (``tokenize="none"``), as Bahdanau et al. scored tokenised output.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ... import _check as check
from ...data import tokenize
from .translator import Translation, Translator

__all__ = ["evaluate", "EvalResult", "LENGTH_BUCKETS", "bleu"]

Pair = tuple[list[str], list[str]]
LENGTH_BUCKETS = ((1, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 10_000))


@dataclass
class EvalResult:
    bleu: float
    chrf: float
    n: int
    by_length: list[dict] = field(default_factory=list)  # {"lo", "hi", "n", "bleu"} per source-length bucket
    translations: list[Translation] = field(default_factory=list)

    def summary(self) -> dict:
        return {"bleu": round(self.bleu, 2), "chrf": round(self.chrf, 2), "n": self.n, "by_length": self.by_length}


def _tokens(pair, i: int) -> Pair:
    """A pair as two token lists: a side given as a string is tokenised as the translator's
    input is (so lengths count words, not characters)."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"pairs[{i}]: expected (source, target), got {type(pair).__name__}")
    sides = [tokenize(x) if isinstance(x, str) else list(x) for x in pair]
    if not all(isinstance(w, str) for side in sides for w in side):
        raise TypeError(f"pairs[{i}]: expected strings or lists of token strings")
    return sides[0], sides[1]


def bleu(hyps: list[str], refs: list[str]) -> float:
    """Corpus BLEU (sacrebleu) of tokenised hypotheses against one reference each."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", force=True).score)


def evaluate(translator: Translator, pairs: Sequence[Pair], *, beam: int = 1,
             buckets: Sequence[tuple[int, int]] = LENGTH_BUCKETS) -> EvalResult:
    """Corpus BLEU and chrF (sacrebleu) of ``translator`` on token pairs (a side given as a
    string is tokenised first), and BLEU per source-length bucket, in words (a bucket with no
    sentences is left out)."""
    try:
        import sacrebleu
    except ImportError:
        raise ImportError("evaluation needs sacrebleu: pip install 'attend[translate]'") from None
    if isinstance(pairs, str) or not pairs:
        raise ValueError("pairs: no pairs to evaluate" if not pairs else "pairs: expected a list of (source, target)")
    pairs = [_tokens(p, i) for i, p in enumerate(pairs)]
    for lo, hi in buckets:
        if not (check.is_int(lo) and check.is_int(hi) and 0 <= lo <= hi):
            raise ValueError(f"buckets: expected (lo, hi) source lengths with 0 <= lo <= hi, got {(lo, hi)!r}")
    outs = translator.translate([s for s, _ in pairs], beam=beam)
    hyps = [o.text for o in outs]
    refs = [" ".join(t) for _, t in pairs]
    total = bleu(hyps, refs)
    chrf = float(sacrebleu.corpus_chrf(hyps, [refs]).score)
    rows = []
    for lo, hi in buckets:
        sel = [i for i, (s, _) in enumerate(pairs) if lo <= len(s) <= hi]
        if sel:
            rows.append({"lo": lo, "hi": hi, "n": len(sel), "bleu": round(bleu([hyps[i] for i in sel], [refs[i] for i in sel]), 2)})
    return EvalResult(total, chrf, len(pairs), rows, outs)
