"""Complete models built on attend's attention modules."""
from .search import Hypothesis, beam_search, greedy
from .seq2seq import ATTENTION_KINDS, Encoded, Seq2Seq, Seq2SeqConfig

__all__ = ["Seq2Seq", "Seq2SeqConfig", "Encoded", "ATTENTION_KINDS", "Hypothesis", "greedy", "beam_search"]
