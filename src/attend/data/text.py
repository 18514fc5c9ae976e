"""Text to token ids: Unicode normalisation, tokenisation and vocabularies.

The tokeniser is deliberately simple and reversible enough for BLEU on tokenised text:
words (with hyphens kept inside), a French-style elided article or pronoun (``l'``,
``j'``, ``qu'``) as its own token, and every punctuation mark as a token.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Iterable, Sequence

from .. import _check

__all__ = ["normalize", "tokenize", "Vocab", "PAD", "UNK", "BOS", "EOS"]

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_SPACES = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+'|\w+(?:[-']\w+)*|[^\w\s]")


def normalize(text: str) -> str:
    """NFC, lower case, one kind of apostrophe, single spaces (non-breaking ones included),
    no byte-order marks (U+FEFF, which an editor may leave at the start of a file)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text = text.replace("\ufeff", "").translate(_APOSTROPHES).lower()
    text = unicodedata.normalize("NFC", text)  # (last: lower case can leave a letter and a mark NFC would join)
    return _SPACES.sub(" ", text).strip()


def tokenize(text: str) -> list[str]:
    """``normalize`` then split: ``"L'homme a-t-il vu?"`` -> ``["l'", "homme", "a-t-il", "vu", "?"]``.
    A combining mark stays in its word (Devanagari vowel signs, a dot above): ``"हिन्दी"`` is one token."""
    out: list[str] = []
    end = -1
    for m in _TOKEN.finditer(normalize(text)):
        tok = m.group()
        if out and m.start() == end and (_marks(tok) or (_marks(out[-1][-1]) and (tok[0].isalnum() or tok[0] == "_"))):
            out[-1] += tok  # (\w has no combining marks: they would stand alone, and split their word)
        else:
            out.append(tok)
        end = m.end()
    return out


def _marks(text: str) -> bool:
    return all(unicodedata.category(c).startswith("M") for c in text)


class Vocab:
    """Token <-> id. Ids 0-3 are ``<pad>``, ``<unk>``, ``<bos>``, ``<eos>``; the rest are
    ordered by frequency (then alphabetically), so building is deterministic."""

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tokens[: len(SPECIALS)] != list(SPECIALS):
            raise ValueError(f"vocabulary must start with {list(SPECIALS)}, got {tokens[:4]}")
        if len(set(tokens)) != len(tokens):
            dup = next(t for t, c in Counter(tokens).items() if c > 1)
            raise ValueError(f"vocabulary has the token {dup!r} twice")
        if not all(isinstance(t, str) and t for t in tokens):
            raise ValueError("vocabulary tokens must be non-empty strings")
        self.itos = tokens
        self.stoi = {t: i for i, t in enumerate(tokens)}

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], *, min_freq: int = 1, max_size: int | None = None) -> "Vocab":
        """From tokenised sentences: tokens seen at least ``min_freq`` times, the
        ``max_size`` most frequent (specials not counted); the rest become ``<unk>``."""
        _check.integer(min_freq, "min_freq", low=1)
        _check.integer(max_size, "max_size", low=0, optional=True)
        sentences = list(sentences)
        for i, s in enumerate(sentences):
            if isinstance(s, str):  # (its characters would become the vocabulary)
                raise TypeError(f"sentences[{i}]: expected a list of tokens, got a string (tokenise it first)")
        counts = Counter(t for s in sentences for t in s)
        for s in SPECIALS:
            counts.pop(s, None)
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[:max_size]
        return cls(list(SPECIALS) + kept)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Sequence[str]) -> list[int]:
        if isinstance(tokens, str):  # (each character would be looked up)
            raise TypeError("tokens: expected a list of tokens, got a string (tokenise it first)")
        return [self.stoi.get(t, self.unk_id) for t in tokens]

    def decode(self, ids: Iterable[int], *, strip: bool = True) -> list[str]:
        """Ids to tokens; with ``strip``, stops at ``<eos>`` and drops ``<pad>``/``<bos>``."""
        out = []
        for i in ids:
            i = int(i)
            if strip and i == self.eos_id:
                break
            if strip and i in (self.pad_id, self.bos_id):
                continue
            if not 0 <= i < len(self.itos):
                raise ValueError(f"ids: {i} is not an id of this vocabulary of {len(self.itos)} tokens")
            out.append(self.itos[i])
        return out

    def to_list(self) -> list[str]:
        return list(self.itos)

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens)"
