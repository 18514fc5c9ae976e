"""Sentence pairs from Tatoeba-style TSV files: reading, filtering and splitting.

A TSV line is ``source<TAB>target[<TAB>attribution…]`` (the Tatoeba / manythings.org
export). Columns are chosen with ``src_col`` / ``tgt_col`` (0-based), so
``--src-col 1 --tgt-col 0`` translates the other way.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from .. import _check
from .text import tokenize

__all__ = ["read_tsv", "prepare", "Splits", "split_by_source"]

Pair = tuple[list[str], list[str]]


#: the longest line :func:`read_tsv` reads by default (Tatoeba's longest is 647 bytes; a line of a
#: million tokens took 3 GB to translate and 11 GB, then the allocator's error, to train on)
MAX_LINE_BYTES = 1 << 16


def read_tsv(path: str | os.PathLike, *, src_col: int = 0, tgt_col: int = 1,
             limit: Optional[int] = None, max_line_bytes: int = MAX_LINE_BYTES) -> list[tuple[str, str]]:
    """Read ``(source, target)`` strings. Blank lines are skipped; a UTF-8 byte-order mark
    at the start of the file is dropped; a line without the requested columns, a line longer
    than ``max_line_bytes`` (refused before it is read whole), or a file that is not UTF-8
    text, is an error naming file and line."""
    for name, col in (("src_col", src_col), ("tgt_col", tgt_col)):
        _check.integer(col, name, low=0)
    if src_col == tgt_col:
        raise ValueError(f"src_col and tgt_col must differ, both are {src_col}")
    _check.integer(limit, "limit", low=1, optional=True)
    _check.integer(max_line_bytes, "max_line_bytes", low=1)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"data file is a directory: {path}")
    need = max(src_col, tgt_col) + 1
    pairs: list[tuple[str, str]] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(iter(lambda: f.readline(max_line_bytes + 2), b""), 1):
            if limit is not None and len(pairs) >= limit:
                break
            ended = raw.endswith(b"\n")  # (its end read: "\n" or "\r\n", neither counted in the limit)
            body = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if ended else raw
            if not ended and body.endswith(b"\r") and len(raw) <= max_line_bytes + 1:
                body = body[:-1]  # (the file's last line, ended by a lone "\r")
            if len(body) > max_line_bytes or (not ended and len(raw) == max_line_bytes + 2):
                raise ValueError(f"{path}:{lineno}: a line longer than {max_line_bytes} bytes (max_line_bytes); "
                                 "is this a file of sentence pairs, one per line?")
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) < need:
                raise ValueError(f"{path}:{lineno}: expected at least {need} tab-separated columns "
                                 f"(src_col={src_col}, tgt_col={tgt_col}), found {len(cols)}")
            pairs.append((cols[src_col], cols[tgt_col]))
    if not pairs:
        raise ValueError(f"{path}: no sentence pairs found")
    return pairs


def prepare(pairs: Iterable[tuple[str, str]], *, max_len: Optional[int] = None, min_len: int = 1) -> list[Pair]:
    """Normalise and tokenise both sides; keep pairs whose both sides have between
    ``min_len`` and ``max_len`` tokens."""
    _check.integer(max_len, "max_len", low=1, optional=True)
    _check.integer(min_len, "min_len", low=1)
    out = []
    for src, tgt in pairs:
        s, t = tokenize(src), tokenize(tgt)
        if min_len <= len(s) and min_len <= len(t) and (max_len is None or (len(s) <= max_len and len(t) <= max_len)):
            out.append((s, t))
    return out


@dataclass(frozen=True)
class Splits:
    train: list[Pair]
    valid: list[Pair]
    test: list[Pair]


def split_by_source(pairs: Sequence[Pair], *, valid: float = 0.05, test: float = 0.05, seed: int = 0) -> Splits:
    """Split so that one source sentence never appears in two splits (Tatoeba has many
    translations of the same sentence). Groups are shuffled with ``seed``; each split gets
    about the requested fraction of the *pairs*."""
    for name, frac in (("valid", valid), ("test", test)):
        _check.number(frac, name, expected="a fraction in [0, 1)")
        if not (0.0 <= frac < 1.0):
            raise ValueError(f"{name} must be a fraction in [0, 1), got {frac!r}")
    if valid + test >= 1.0:
        raise ValueError(f"valid + test must be < 1, got {valid + test}")
    groups: dict[tuple[str, ...], list[Pair]] = {}
    for p in pairs:
        groups.setdefault(tuple(p[0]), []).append(p)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    n = len(pairs)
    parts: list[list[Pair]] = [[], [], []]
    targets = [test * n, valid * n]
    for k in keys:
        g = groups[k]
        if len(parts[0]) < targets[0]:
            parts[0].extend(g)
        elif len(parts[1]) < targets[1]:
            parts[1].extend(g)
        else:
            parts[2].extend(g)
    return Splits(train=parts[2], valid=parts[1], test=parts[0])
