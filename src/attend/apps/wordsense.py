"""Word sense from context (seed 003): the same word gets a different contextual vector in
each sentence, because self-attention mixes in the words around it. "bank" next to
"river" and "bank" next to "money" end up further apart than two uses of "bank" in the
same sense — and the attention weights show which heads look from the word to the words
that decide its sense.

    report = explain_word(encoder, ["I sat on the bank of the river", "I deposited money at the bank"])
    print(report.format())

A word's vector is the mean of its word pieces' vectors in the encoder's last layer.
The same-sense comparison uses sentences given with ``same=`` or, for a few classic
ambiguous words, attend's own example sentences (two per sense).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SENSE_EXAMPLES", "WordSenseReport", "HeadFocus", "explain_word", "shared_word"]

# Two example sentences per sense (written for attend), for the same-sense baseline.
SENSE_EXAMPLES: dict[str, dict[str, tuple[str, str]]] = {
    "bank": {"river": ("We had a picnic on the grassy bank of the stream.", "The boat drifted slowly toward the muddy bank."),
             "money": ("She opened a savings account at the bank.", "The bank approved his loan this morning.")},
    "bat": {"animal": ("A bat flew out of the cave at dusk.", "The bat hung upside down from the branch."),
            "sport": ("He swung the bat and hit the ball.", "She bought a new cricket bat for the season.")},
    "bark": {"tree": ("The bark of the old oak was rough and cracked.", "Deer had stripped the bark from the young tree."),
             "dog": ("We heard the bark of a dog next door.", "The puppy gave a loud bark at the stranger.")},
    "spring": {"season": ("The flowers bloom early in the spring.", "We plan to travel in the spring next year."),
               "coil": ("The spring inside the pen was broken.", "He replaced the rusty spring in the mattress.")},
    "mouse": {"animal": ("A mouse ran across the kitchen floor.", "The cat caught a mouse in the barn."),
              "device": ("Click the left button of the mouse to select the file.", "My computer mouse needs new batteries.")},
    "plant": {"organism": ("Water the plant on the windowsill every week.", "This plant grows well in the shade."),
              "factory": ("The car plant employs two thousand workers.", "The power plant supplies the whole city.")},
    "match": {"game": ("The football match ended in a draw.", "They won the tennis match in three sets."),
              "fire": ("He struck a match to light the candle.", "The last match in the box was damp.")},
    "crane": {"bird": ("A crane stood on one leg in the marsh.", "The crane spread its wings and flew off."),
              "machine": ("The crane lifted the steel beam onto the roof.", "A tall crane towers over the building site.")},
}

_STOP = set("a an the of at on in to and or is was are were be been it he she i we you they his her my our "
            "their this that these those with for from by as into over under".split())


@dataclass
class HeadFocus:
    layer: int  # 0-based
    head: int  # 0-based
    score: float  # mean over sentences of the largest weight from the word to another word
    targets: list[tuple[str, float]]  # per sentence: (token attended most, weight)


@dataclass
class WordSenseReport:
    word: str
    sentences: list[str]
    similarity: Tensor  # (N, N) cosine similarity of the word's vectors
    same_sense: list[tuple[str, float]] = field(default_factory=list)  # (label, cosine) of same-sense pairs
    closest: list[Optional[tuple[str, float, float]]] = field(default_factory=list)  # per sentence: (sense, cos, next best)
    heads: list[HeadFocus] = field(default_factory=list)
    source: str = ""  # where the same-sense pairs came from
    tokens: list[list[str]] = field(default_factory=list)  # per sentence, its tokens
    attentions: list[list[Tensor]] = field(default_factory=list)  # per sentence, per layer (H, n, n): for the viewer

    def format(self) -> str:
        lines = [f'Word "{self.word}": its contextual vector in each sentence (last layer, mean of its word pieces)']
        lines += [f"  {i + 1}  {s}" for i, s in enumerate(self.sentences)]
        n = len(self.sentences)
        if n > 1:
            pairs = [f"cos({i + 1},{j + 1}) = {self.similarity[i, j]:.3f}" for i in range(n) for j in range(i + 1, n)]
            lines.append("Across the sentences given:   " + "   ".join(pairs))
        if self.same_sense:
            lines.append(f"Same sense ({self.source}):   " +
                         "   ".join(f"{label} {cos:.3f}" for label, cos in self.same_sense))
            for i, c in enumerate(self.closest):
                if c is not None:
                    lines.append(f"  sentence {i + 1} is closest to the {c[0]!r} sense: cos {c[1]:.3f} (other: {c[2]:.3f})")
        elif n > 1:
            lines.append("No same-sense reference for this word: pass sentences with --same.")
        if self.heads:
            lines.append(f'Heads that attend most from "{self.word}" (to the word they weigh most, per sentence):')
            for f in self.heads:
                to = "   ".join(f"{i + 1}: {tok} {w:.2f}" for i, (tok, w) in enumerate(f.targets))
                lines.append(f"  layer {f.layer + 1} head {f.head + 1:<3} {to}")
        return "\n".join(lines)


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.lower())


def shared_word(sentences: Sequence[str]) -> str:
    """The word all sentences share (not a stop word); a classic ambiguous one if any."""
    common = set(_words(sentences[0]))
    for s in sentences[1:]:
        common &= set(_words(s))
    common -= _STOP
    if not common:
        raise ValueError("the sentences share no word (other than stop words); name one with word=/--word")
    known = sorted(w for w in common if w in SENSE_EXAMPLES)
    return known[0] if known else max(sorted(common), key=len)


def _word_positions(text: str, offsets: list[tuple[int, int]], word: str, which: int) -> list[int]:
    """Token positions of the word's first occurrence in ``text``."""
    m = re.search(r"(?<!\w)" + re.escape(word) + r"(?!\w)", text, flags=re.IGNORECASE)
    if m is None:
        raise ValueError(f"sentence {which + 1} does not contain the word {word!r}: {text!r}")
    pos = [k for k, (a, b) in enumerate(offsets) if b > a and a >= m.start() and b <= m.end()]
    if not pos:
        raise ValueError(f"sentence {which + 1}: the word {word!r} was cut off by the tokenizer's length limit")
    return pos


def _vectors(encoder, sentences: Sequence[str], word: str, need_weights: bool):
    vecs, infos = [], []
    for i, text in enumerate(sentences):
        batch, out = encoder.embed_tokens([text], need_weights=need_weights)
        pos = _word_positions(text, batch.offsets[0], word, i)
        vecs.append(out.hidden[0, pos].mean(0))  # (D,)
        infos.append((batch.tokens[0], pos, out.attentions))
    return torch.stack(vecs), infos  # (N, D)


def _cos(a: Tensor, b: Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=-1))


def explain_word(encoder, sentences: Sequence[str], *, word: Optional[str] = None,
                 same: Optional[Sequence[str]] = None, top: int = 5) -> WordSenseReport:
    """How the contextual vectors of ``word`` (default: the word the sentences share)
    differ across ``sentences``, against same-sense pairs, and which heads attend from it."""
    if isinstance(sentences, str) or not sentences:
        raise ValueError("sentences: give one or more sentences")
    word = (word or shared_word(sentences)).lower()
    vecs, infos = _vectors(encoder, sentences, word, need_weights=True)
    sim = F.cosine_similarity(vecs[:, None], vecs[None], dim=-1)  # (N, N)
    report = WordSenseReport(word, list(sentences), sim, tokens=[t for t, _, _ in infos],
                             attentions=[[a[0] for a in atts] for _, _, atts in infos])
    if same:
        ref, _ = _vectors(encoder, same, word, need_weights=False)
        report.same_sense = [(f"1 vs --same {k + 1}", _cos(vecs[0], r)) for k, r in enumerate(ref)]
        report.source = "sentence 1 against the --same sentences"
    elif word in SENSE_EXAMPLES:
        senses = SENSE_EXAMPLES[word]
        centres = {}
        for sense, pair in senses.items():
            ref, _ = _vectors(encoder, list(pair), word, need_weights=False)
            report.same_sense.append((sense, _cos(ref[0], ref[1])))
            centres[sense] = ref.mean(0)
        report.source = "two example sentences per sense, built in"
        for v in vecs:
            scored = sorted(((_cos(v, c), s) for s, c in centres.items()), reverse=True)
            report.closest.append((scored[0][1], scored[0][0], scored[1][0]))
    report.heads = _top_heads(infos, top)
    return report


def _top_heads(infos, top: int) -> list[HeadFocus]:
    """Rank heads by how strongly the word attends to one other (non-special) token."""
    layers = len(infos[0][2])
    heads = infos[0][2][0].shape[1]
    found = []
    for l in range(layers):
        for h in range(heads):
            targets = []
            for tokens, pos, atts in infos:
                row = atts[l][0, h, pos].mean(0).clone()  # (S,): from the word's pieces
                for k, t in enumerate(tokens):
                    if k in pos or t in ("[CLS]", "[SEP]", "<s>", "</s>") or not any(ch.isalnum() for ch in t):
                        row[k] = -1.0
                k = int(row.argmax())
                targets.append((tokens[k], float(row[k])))
            found.append(HeadFocus(l, h, sum(w for _, w in targets) / len(targets), targets))
    found.sort(key=lambda f: -f.score)
    return found[:top]
