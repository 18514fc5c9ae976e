"""Attention modules built on :func:`attend.attention`."""
from .multihead import MultiHeadAttention
from .recurrent import AdditiveAttention, LuongAttention

__all__ = ["MultiHeadAttention", "AdditiveAttention", "LuongAttention"]
