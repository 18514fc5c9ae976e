"""Complete models built on attend's attention modules: the seed-002 RNN encoder-decoder
(:class:`Seq2Seq`), the transformer encoder-decoder (:class:`TransformerSeq2Seq`) and, in
:mod:`attend.models.bert`, a BERT-architecture encoder. Training them, decoding and the
files of a run are the translator application's (:mod:`attend.apps.translate`)."""
from .seq2seq import ATTENTION_KINDS, Encoded, Seq2Seq, Seq2SeqConfig
from .transformer import TransformerConfig, TransformerSeq2Seq

__all__ = ["Seq2Seq", "Seq2SeqConfig", "TransformerSeq2Seq", "TransformerConfig", "Encoded", "ATTENTION_KINDS"]
