"""Corpora, tokenisation, vocabularies and batching for the translator.

- :func:`synthetic_pairs`: the embedded English -> French-like corpus (no download);
- :func:`read_tsv`, :func:`prepare`, :func:`split_by_source`: Tatoeba-style TSV files;
- :class:`Vocab`, :func:`tokenize`, :func:`normalize`;
- :class:`LengthGroupedBatches`, :func:`make_batch`, :class:`Batch`.
"""
from .batch import Batch, LengthGroupedBatches, make_batch
from .pairs import Splits, prepare, read_tsv, split_by_source
from .synthetic import SYNTHETIC_EXAMPLE, synthetic_pairs
from .text import Vocab, normalize, tokenize

__all__ = ["synthetic_pairs", "SYNTHETIC_EXAMPLE", "read_tsv", "prepare", "split_by_source", "Splits",
           "Vocab", "tokenize", "normalize", "Batch", "make_batch", "LengthGroupedBatches"]
