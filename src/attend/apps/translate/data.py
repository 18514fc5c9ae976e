"""Where a training's sentence pairs come from, as ``attend translate train`` takes them:
a TSV file or the embedded corpus, filtered, split by source sentence, and described in
notes the run's ``config.json`` keeps (so a resume can tell other data from the run's)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple, Optional

from ... import data as _data

__all__ = ["DataSource", "PreparedData", "read_pairs", "read_pairs_counted"]

Pair = tuple[list[str], list[str]]


class PreparedData(NamedTuple):
    split: "_data.Splits"  # train / valid / test token pairs
    note: dict  # where they came from and how they were split (config.json's "data")
    dropped: int = 0  # pairs read but left out: a side with no words, or longer than max_len


@dataclass(frozen=True)
class DataSource:
    """A TSV file (``file``: ``source<TAB>target[<TAB>...]`` per line; columns ``src_col``,
    ``tgt_col``; at most ``limit`` lines) or ``synthetic`` pairs of
    :func:`attend.data.synthetic_pairs`; pairs with a side longer than ``max_len`` tokens are
    dropped; ``valid`` and ``test`` are the fractions held out (no source sentence in two
    splits). ``seed`` seeds the corpus and the split."""
    file: Optional[str] = None
    src_col: int = 0
    tgt_col: int = 1
    limit: Optional[int] = None
    synthetic: Optional[int] = None
    max_len: Optional[int] = None
    valid: float = 0.05
    test: float = 0.05
    seed: int = 0

    def __post_init__(self):
        if (self.file is None) == (self.synthetic is None):
            raise ValueError("give a data file or a number of synthetic pairs (one of them)")
        v, t = self.valid, self.test
        if not (0 <= v < 1 and 0 <= t < 1 and v + t < 1) or v == 0:
            raise ValueError(f"valid and test must be fractions with 0 < valid, valid + test < 1; got {v} and {t}")

    def read(self) -> PreparedData:
        """Read, filter and split the pairs (a ``ValueError`` names what is wrong with them)."""
        if self.file is not None:
            raw = _data.read_tsv(self.file, src_col=self.src_col, tgt_col=self.tgt_col, limit=self.limit)
            note = {"file": os.path.abspath(self.file), "src_col": self.src_col, "tgt_col": self.tgt_col}
        else:
            raw = _data.synthetic_pairs(self.synthetic, seed=self.seed, max_words=60)
            note = {"corpus": "attend.data.synthetic_pairs", "pairs": self.synthetic, "seed": self.seed}
        pairs = _data.prepare(raw, max_len=self.max_len)
        source = self.file if self.file is not None else "the synthetic corpus"
        if len(pairs) < 3:
            longer = "" if self.max_len is None else f" or longer than max_len {self.max_len}"
            raise ValueError(f"{source}: only {len(pairs)} of {len(raw)} sentence pairs left (3 needed) once pairs "
                             f"with a side of no words{longer} are left out")
        split = _data.split_by_source(pairs, valid=self.valid, test=self.test, seed=self.seed)
        if not split.valid or not split.train:
            sources = len({tuple(s) for s, _ in pairs})
            raise ValueError(f"{source}: too few pairs ({len(pairs)}, {sources} distinct sources) for a train / "
                             "validation split (no source sentence is in two splits)")
        note.update(max_len=self.max_len, limit=self.limit, valid=self.valid, test=self.test,
                    n_train=len(split.train), n_valid=len(split.valid), n_test=len(split.test))
        return PreparedData(split, note, len(raw) - len(pairs))


def read_pairs(path: str | os.PathLike, *, src_col: int = 0, tgt_col: int = 1, limit: Optional[int] = None) -> list[Pair]:
    """The sentence pairs of a TSV file, tokenised (to evaluate on): a ``ValueError`` if none is usable.
    A pair with a side of no words is left out (:func:`read_pairs_counted` counts them)."""
    return read_pairs_counted(path, src_col=src_col, tgt_col=tgt_col, limit=limit)[0]


def read_pairs_counted(path: str | os.PathLike, *, src_col: int = 0, tgt_col: int = 1,
                       limit: Optional[int] = None) -> tuple[list[Pair], int]:
    """:func:`read_pairs`, and how many pairs of the file were left out (a side with no words)."""
    raw = _data.read_tsv(path, src_col=src_col, tgt_col=tgt_col, limit=limit)
    pairs = _data.prepare(raw)
    if not pairs:
        raise ValueError(f"{os.fspath(path)}: no usable sentence pairs (each has a side with no words)")
    return pairs, len(raw) - len(pairs)
