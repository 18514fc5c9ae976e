"""Word sense from context (seed 003): the same word gets a different contextual vector in
each sentence, because self-attention mixes in the words around it. "bank" next to "river"
and "bank" next to "money" should end up further apart than two uses of "bank" in the same
sense. This tool measures whether they do, in a given encoder, and says so plainly:

    report = explain_word(encoder, ["I sat on the bank of the river", "I deposited money at the bank"])
    print(report.format())

- **the verdict**: the model *separates* the senses when every same-sense pair of the word's
  vectors is more similar (cosine) than every different-sense pair, and *does not* otherwise;
- **layer by layer**: the same comparison after the embeddings (layer 0, before any
  attention) and after each layer, so a learner sees where context enters;
- **heads ranked by how much they separate the senses**: for each head, the part of the
  word's vector that head contributes (its weights times its values), compared across and
  within senses the same way; heads that mostly look at the neighbouring tokens or at
  special tokens and punctuation are flagged as *positional* or *special*.

A word's vector is the mean of its word pieces' vectors. The senses come from ``same=``
(sentences using the word as the first sentence does; the other sentences are taken to use
it differently) or, for a few classic ambiguous words, attend's own example sentences (two
per sense; the sentences given are then placed at the nearest sense). With neither, there is
no verdict, and the report says how to get one.
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from itertools import combinations
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _check

__all__ = ["SENSE_EXAMPLES", "WordSenseReport", "HeadSeparation", "LayerSimilarity", "Trace", "explain_word",
           "shared_word", "analyse"]

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

_STOP = set("a an the of at on in to and or is was are were be been it he she i we you they his her my our "
            "their this that these those with for from by as into over under".split())
_SPECIAL = {"[CLS]", "[SEP]", "<s>", "</s>", "[PAD]", "<pad>"}


@dataclass
class Trace:
    """One sentence through the encoder, for the word followed.

    ``states`` (layers + 1, D): the word's vector after the embeddings and after each layer;
    ``heads`` (layers, H, d): each head's contribution to the word (its weights times its
    values); ``rows`` (layers, H, S): each head's weights from the word over the tokens.
    """

    text: str
    tokens: list[str]
    positions: list[int]  # the word's pieces
    states: Tensor
    heads: Tensor
    rows: Tensor
    attentions: list[Tensor] = field(default_factory=list)  # per layer (H, S, S), for the viewer


@dataclass
class LayerSimilarity:
    layer: int  # 0 = the embeddings, before any attention
    within: Optional[float]  # mean cosine of same-sense pairs (None: no senses known)
    across: float  # mean cosine of different-sense pairs (or of the sentences given, with no senses)
    separated: Optional[bool]  # every same-sense pair above every different-sense pair


@dataclass
class HeadSeparation:
    layer: int  # 0-based
    head: int  # 0-based
    separation: Optional[float]  # mean same-sense cosine minus mean different-sense cosine of its contribution
    kind: str  # "context", "positional" (the word itself and its neighbours) or "special" ([CLS], [SEP], punctuation)
    share: float  # the share of its weight on what its kind names (on context words, for "context")
    targets: list[tuple[str, float]]  # per sentence given: the context token it weighs most, and the weight


@dataclass
class WordSenseReport:
    word: str
    sentences: list[str]
    similarity: Tensor  # (N, N) cosine similarity of the word's vectors in the last layer
    same_sense: list[tuple[str, float]] = field(default_factory=list)  # (label, cosine) of same-sense pairs
    different: list[float] = field(default_factory=list)  # cosines of different-sense pairs
    closest: list[Optional[tuple[str, float, float]]] = field(default_factory=list)  # per sentence: (sense, cos, next best)
    separates: Optional[bool] = None  # the verdict (None: no senses to judge by)
    verdict: str = ""
    layers: list[LayerSimilarity] = field(default_factory=list)
    heads: list[HeadSeparation] = field(default_factory=list)  # context heads, best first
    flagged: list[HeadSeparation] = field(default_factory=list)  # positional/special heads ranked above the last of those
    source: str = ""  # where the senses came from
    tokens: list[list[str]] = field(default_factory=list)  # per sentence, its tokens
    attentions: list[list[Tensor]] = field(default_factory=list)  # per sentence, per layer (H, n, n): for the viewer

    def format(self) -> str:
        lines = [f'Word "{self.word}": its contextual vector in each sentence (mean of its word pieces)']
        lines += [f"  {i + 1}  {s}" for i, s in enumerate(self.sentences)]
        n = len(self.sentences)
        if n > 1:
            pairs = [f"cos({i + 1},{j + 1}) = {self.similarity[i, j]:.3f}" for i in range(n) for j in range(i + 1, n)]
            lines.append("Across the sentences given:   " + "   ".join(pairs))
        if self.same_sense:
            lines.append(f"Same sense ({self.source}):   " +
                         "   ".join(f"{label} {cos:.3f}" for label, cos in self.same_sense))
            if self.different:
                pairs = "the examples" if self.closest else "sentence 1 and the --same sentences against the others"
                lines.append(f"Different senses ({pairs}):"
                             f"   {min(self.different):.3f} to {max(self.different):.3f}")
            for i, c in enumerate(self.closest):
                if c is not None:
                    lines.append(f"  sentence {i + 1} reads as the {c[0]!r} sense: cos {c[1]:.3f} (other: {c[2]:.3f})")
        lines += textwrap.wrap("Verdict: " + self.verdict, width=100, subsequent_indent="  ")
        if self.layers:
            judged = self.layers[0].within is not None
            lines.append("Layer by layer (layer 0 = the word embeddings, before any attention):")
            lines.append("  layer   " + ("same sense   different senses   separated" if judged else "cosine across the sentences"))
            for s in self.layers:
                if judged:
                    lines.append(f"  {s.layer:>5}   {s.within:10.3f}   {s.across:16.3f}   {'yes' if s.separated else 'no':>9}")
                else:
                    lines.append(f"  {s.layer:>5}   {s.across:10.3f}")
        if self.layers and self.layers[0].within is not None and not self.heads:
            lines.append("Heads that separate the senses: none (no head's same-sense minus different-sense cosine is "
                         "above 0)")
        if self.heads:
            ranked = self.heads[0].separation is not None
            lines.append(f'Heads that separate the senses most (same-sense minus different-sense cosine of what each '
                         f'head adds to "{self.word}"):' if ranked else
                         f'Heads that weigh context words most from "{self.word}" (no senses to rank them by):')
            for h in self.heads:
                score = f"separation {h.separation:+.3f}   " if ranked else ""
                kind = f"{h.share:.2f} on context words"
                to = "; ".join(f"sentence {i + 1} \u2192 {tok} {w:.2f}" for i, (tok, w) in enumerate(h.targets))
                lines.append(f"  layer {h.layer + 1} head {h.head + 1:<3} {score}{kind}   looks at: {to}")
        if self.flagged:
            lines.append("Also high, but looking mostly at the word's neighbours or at special tokens and punctuation "
                         "(they pass on position or the sentence as a whole, not one word's meaning):")
            for h in self.flagged:
                score = f"separation {h.separation:+.3f}   " if h.separation is not None else ""
                what = "on the word and its neighbours" if h.kind == "positional" else "on [CLS]/[SEP]/punctuation"
                lines.append(f"  layer {h.layer + 1} head {h.head + 1:<3} {score}{h.kind.upper()} ({h.share:.2f} {what})")
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


def _word_positions(text: str, offsets: list[tuple[int, int]], word: str, label: str) -> list[int]:
    """Token positions of the word's first occurrence in ``text``."""
    m = re.search(r"(?<!\w)" + re.escape(word) + r"(?!\w)", text, flags=re.IGNORECASE)
    if m is None:
        raise ValueError(f"{label} does not contain the word {word!r}: {text!r}")
    pos = [k for k, (a, b) in enumerate(offsets) if b > a and a >= m.start() and b <= m.end()]
    if not pos:
        raise ValueError(f"{label}: the word {word!r} was cut off by the tokenizer's length limit")
    return pos


def _punct(token: str) -> bool:
    return token in _SPECIAL or not any(ch.isalnum() for ch in token)


def _trace(encoder, text: str, word: str, label: str) -> Trace:
    """Run one sentence through ``encoder`` (a :class:`attend.models.bert.SentenceEncoder`),
    keeping the word's vector after every layer and each head's contribution to it."""
    batch = encoder.tokenize([text])
    pos = _word_positions(text, batch.offsets[0], word, label)
    model = encoder.model
    states: list[Tensor] = []
    inputs: list[Tensor] = []
    hooks = [model.embeddings.register_forward_hook(lambda m, a, out: states.append(out[0]))]
    for layer in model.encoder.layers:
        hooks.append(layer.register_forward_hook(lambda m, a, out: states.append(out[0][0])))
        hooks.append(layer.self_attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0][0])))
    try:
        with torch.inference_mode():
            out = model(batch.input_ids, batch.attention_mask, need_weights=True)
            heads, rows = [], []
            for layer, x, att in zip(model.encoder.layers, inputs, out.attentions):
                mha = layer.self_attn
                v = mha.v_proj(x).view(x.shape[0], mha.kv_heads, mha.head_dim)  # (S, kv heads, d)
                v = v.repeat_interleave(mha.num_heads // mha.kv_heads, dim=1)  # (S, H, d)
                row = att[0][:, pos].mean(1)  # (H, S): from the word's pieces
                rows.append(row)
                heads.append(torch.einsum("hs,shd->hd", row, v))  # (H, d): weights times values
    finally:
        for h in hooks:
            h.remove()
    word_states = torch.stack([s[pos].mean(0) for s in states])  # (layers + 1, D)
    return Trace(text, batch.tokens[0], pos, word_states, torch.stack(heads), torch.stack(rows),
                 [a[0] for a in out.attentions])


def _cosines(vectors: Sequence[Tensor], pairs) -> list[float]:
    return [float(F.cosine_similarity(vectors[a], vectors[b], dim=-1)) for a, b in pairs]


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _kind(traces: Sequence[Trace], layer: int, head: int) -> tuple[str, float, list[tuple[str, float]]]:
    """What a head looks at from the word, over the sentences given: its kind, share, targets."""
    positional = special = 0.0
    targets = []
    for t in traces:
        row = t.rows[layer, head].clone()  # (S,)
        near = set(t.positions) | {t.positions[0] - 1, t.positions[-1] + 1}
        near = [k for k in near if 0 <= k < len(t.tokens) and not _punct(t.tokens[k])]
        marks = [k for k, tok in enumerate(t.tokens) if _punct(tok)]
        positional += float(row[near].sum())
        special += float(row[marks].sum()) if marks else 0.0
        row[[*near, *marks]] = -1.0
        k = int(row.argmax())
        targets.append((t.tokens[k], float(row[k])) if row[k] >= 0 else ("-", 0.0))
    positional, special = positional / len(traces), special / len(traces)
    context = max(0.0, 1.0 - positional - special)
    if positional >= max(special, context):  # a head is what most of its weight goes to
        return "positional", positional, targets
    if special >= context:
        return "special", special, targets
    return "context", context, targets


def analyse(traces: Sequence[Trace], within, across, *, given: int, top: int = 5):
    """Layer-by-layer similarity and the heads ranked, from traces of one word: the ``top``
    best context heads, then the positional/special heads ranked above the last of them (at
    most 3).

    ``within``/``across``: index pairs into ``traces`` known to use the word in the same /
    different senses (``within`` empty: no senses known; the layers then show the mean
    cosine across the ``given`` first traces, and heads are ranked by their weight on
    context words). Returns ``(layers, heads, flagged)``.
    """
    n_layers = traces[0].states.shape[0]
    if not within:
        across = list(combinations(range(given), 2))
    layers = []
    for l in range(n_layers if within or across else 0):
        vecs = [t.states[l] for t in traces]
        a = _cosines(vecs, across) if across else [1.0]
        if within:
            w = _cosines(vecs, within)
            layers.append(LayerSimilarity(l, _mean(w), _mean(a), min(w) > max(a)))
        else:
            layers.append(LayerSimilarity(l, None, _mean(a), None))
    heads = []
    n_heads = traces[0].heads.shape[1]
    for l in range(n_layers - 1):
        for h in range(n_heads):
            kind, share, targets = _kind(traces[:given], l, h)
            sep = None
            if within:
                vecs = [t.heads[l, h] for t in traces]
                sep = _mean(_cosines(vecs, within)) - _mean(_cosines(vecs, across))
            heads.append(HeadSeparation(l, h, sep, kind, share, targets))
    if within:
        heads.sort(key=lambda x: -x.separation)
    else:
        heads.sort(key=lambda x: -(x.share if x.kind == "context" else 0.0))
    context = [h for h in heads if h.kind == "context" and (not within or h.separation > 0)][:top]  # (one that
    # brings the senses closer does not separate them)
    cut = heads.index(context[-1]) if context else len(heads)
    flagged = [h for h in heads[:cut] if h.kind != "context"][:3] if within else []
    return layers, context, flagged


def _verdict(word: str, layers: list[LayerSimilarity], within: list[float], across: list[float]) -> tuple[bool, str]:
    last = layers[-1]
    if last.separated:
        start = len(layers) - 1
        while start > 0 and layers[start - 1].separated:
            start -= 1
        where = "already in the embeddings" if start == 0 else f"from layer {start} on"
        return True, (f'this model separates the senses of "{word}": every same-sense pair (lowest cosine '
                      f"{min(within):.3f}) is closer than every different-sense pair (highest {max(across):.3f}), "
                      f"{where}.")
    text = (f'this model does NOT separate the senses of "{word}" here: a different-sense pair (cosine '
            f"{max(across):.3f}) is closer than a same-sense pair ({min(within):.3f})")
    if _mean(within) > _mean(across):
        text += (f"; same-sense pairs are closer only on average ({_mean(within):.3f} against "
                 f"{_mean(across):.3f})")
    return False, text + ". Its vectors for this word do not tell the senses apart; read the heads below with that in mind."


def explain_word(encoder, sentences: Sequence[str], *, word: Optional[str] = None,
                 same: Optional[Sequence[str]] = None, top: int = 5) -> WordSenseReport:
    """Whether ``encoder`` gives ``word`` (default: the word the sentences share) different
    vectors in different senses, layer by layer, and which heads make the difference."""
    if isinstance(sentences, str) or not sentences:
        raise ValueError("sentences: give one or more sentences")
    if same is not None and (isinstance(same, str) or not all(isinstance(x, str) for x in same)):
        raise TypeError("same: expected a list of sentences (not one string)")
    _check.integer(top, "top", low=1)
    if word is not None and (not isinstance(word, str) or not word.strip()):
        raise ValueError(f"word: expected a non-empty string (None: the word the sentences share), got {word!r}")
    word = (word if word is not None else shared_word(sentences)).lower()
    n = len(sentences)
    traces = [_trace(encoder, t, word, f"sentence {i + 1}") for i, t in enumerate(sentences)]
    last = torch.stack([t.states[-1] for t in traces[:n]])
    sim = F.cosine_similarity(last[:, None], last[None], dim=-1)  # (N, N)
    report = WordSenseReport(word, list(sentences), sim, tokens=[t.tokens for t in traces],
                             attentions=[t.attentions for t in traces])
    within: list[tuple[int, int]] = []
    across: list[tuple[int, int]] = []
    if same:
        traces += [_trace(encoder, t, word, f"--same sentence {k + 1}") for k, t in enumerate(same)]
        group = [0, *range(n, len(traces))]
        within = list(combinations(group, 2))
        across = [(a, b) for a in group for b in range(1, n)]
        vecs = [t.states[-1] for t in traces]
        report.same_sense = [(f"1 vs --same {k + 1}", c) for k, c in enumerate(_cosines(vecs, [(0, n + k) for k in range(len(same))]))]
        report.source = "sentence 1 against the --same sentences; the other sentences taken as other senses"
    elif word in SENSE_EXAMPLES:
        groups = {}
        for sense, pair in SENSE_EXAMPLES[word].items():
            groups[sense] = [len(traces), len(traces) + 1]
            traces += [_trace(encoder, t, word, f"example {t!r}") for t in pair]
        within = [tuple(g) for g in groups.values()]
        across = [(a, b) for s1, s2 in combinations(groups, 2) for a in groups[s1] for b in groups[s2]]
        vecs = [t.states[-1] for t in traces]
        report.same_sense = [(sense, _cosines(vecs, [tuple(g)])[0]) for sense, g in groups.items()]
        report.source = "two example sentences per sense, built in"
        centres = {sense: torch.stack([vecs[i] for i in g]).mean(0) for sense, g in groups.items()}
        for v in vecs[:n]:
            scored = sorted(((float(F.cosine_similarity(v, c, dim=-1)), s) for s, c in centres.items()), reverse=True)
            report.closest.append((scored[0][1], scored[0][0], scored[1][0]))
    if within and not across:  # same-sense pairs only: nothing of another sense to compare them with
        within = []
    report.layers, report.heads, report.flagged = analyse(traces, within, across, given=n, top=top)
    if within:
        vecs = [t.states[-1] for t in traces]
        w, a = _cosines(vecs, within), _cosines(vecs, across)
        report.different = a
        report.separates, text = _verdict(word, report.layers, w, a)
        basis = ("judged on attend's example sentences, two per sense" if report.closest else
                 "judged on sentence 1 and the --same sentences against the other sentences")
        report.verdict = f"({basis}) {text}"
        senses = [c[0] for c in report.closest]
        if n > 1 and len(set(senses)) == 1:
            report.verdict += f" All {n} sentences given read as the {senses[0]!r} sense."
        elif n == 2 and senses:
            c = float(sim[0, 1])
            where = (f"as close as the examples' same-sense pairs (from {min(w):.3f}): here the model does not tell "
                     "your two apart" if c >= min(w) else
                     f"between the examples' different-sense pairs (up to {max(a):.3f}) and same-sense pairs (from "
                     f"{min(w):.3f})" if c > max(a) else
                     f"as far apart as the examples' different-sense pairs (up to {max(a):.3f}): the model tells your "
                     "two apart")
            report.verdict += (f" Your two sentences read as different senses ({senses[0]!r}, {senses[1]!r}); "
                               f"their cosine, {c:.3f}, is {where}.")
        if report.closest and not report.separates:
            report.verdict += (" (A sentence can still be nearest its own sense's examples on average: separating "
                               "means every same-sense pair is closer than every different-sense pair.)")
    elif same:
        report.verdict = ("none: the --same sentences give same-sense pairs, but no sentence of another sense was "
                          "given to compare them with (give one more TEXT using the word differently).")
    else:
        report.verdict = (f'none: attend has no example sentences for "{word}"; give one or more --same sentences '
                          f"(same= in Python) that use it as sentence 1 does, and the other sentences are taken as "
                          f"other senses.")
    return report
