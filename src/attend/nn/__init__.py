"""Attention modules built on :func:`attend.attention`."""
from .cache import KVCache, LayerKV
from .multihead import MultiHeadAttention
from .positional import ALiBi, LearnedPositions, RotaryEmbedding, SinusoidalPositions
from .recurrent import AdditiveAttention, LuongAttention
from .transformer import (Decoder, DecoderLayer, DecoderOutput, Encoder, EncoderDecoder, EncoderLayer, EncoderOutput,
                          FeedForward)

__all__ = [
    "MultiHeadAttention", "AdditiveAttention", "LuongAttention",
    "SinusoidalPositions", "LearnedPositions", "RotaryEmbedding", "ALiBi",
    "EncoderLayer", "DecoderLayer", "FeedForward", "Encoder", "Decoder", "EncoderDecoder",
    "EncoderOutput", "DecoderOutput", "KVCache", "LayerKV",
]
