"""Transformer layers and stacks (seeds 001, 003, 004), every attention through
:func:`attend.attention` (via :class:`~attend.nn.MultiHeadAttention`).

* :class:`Encoder` — bidirectional self-attention (BERT): every token sees every token.
* :class:`Decoder` — causal ("masked") self-attention (GPT): token ``i`` sees ``0..i``;
  with ``cross_attention=True`` each layer also attends over an encoder's output.
* :class:`EncoderDecoder` — the translation transformer: encoder, then a decoder that
  cross-attends over it.

Layers are post-norm (``x = norm(x + sublayer(x))``, Vaswani et al. 2017, BERT) or
pre-norm (``x = x + sublayer(norm(x))``, GPT-2 and most models since; steadier to train).
Pre-norm stacks end with a final norm. Stacks take embeddings, not token ids, and add the
positional encoding themselves: ``positional`` is ``"sinusoidal"``, ``"learned"``
(needs ``max_len``), ``"rope"`` (rotates queries and keys in every self-attention),
``"alibi"`` (a per-head distance penalty on the scores) or ``"none"``.

Shape legend::

    B batch   S source length   T target length   D d_model   H heads
    Encoder:  x (B, S, D), key_mask (B, S) True = real token    -> hidden (B, S, D)
    Decoder:  x (B, T, D), memory (B, S, D), memory_mask (B, S)  -> hidden (B, T, D)
    attention weights per layer: (B, H, L, S)
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _check
from .cache import KVCache
from .multihead import MultiHeadAttention
from .positional import POSITIONAL_KINDS, ALiBi, LearnedPositions, RotaryEmbedding, SinusoidalPositions

__all__ = ["EncoderLayer", "DecoderLayer", "Encoder", "Decoder", "EncoderDecoder", "EncoderOutput", "DecoderOutput"]

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,  # exact (erf) GELU, as BERT
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's approximation
    "silu": F.silu,
}


class FeedForward(nn.Module):
    """Position-wise ``W2 act(W1 x)``: (B, L, D) -> (B, L, D)."""

    def __init__(self, d_model: int, ff_dim: int, *, activation: str = "gelu", dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.activation = _check.choice(activation, "activation", sorted(_ACTIVATIONS))
        self.linear1 = nn.Linear(d_model, ff_dim, bias=bias)
        self.linear2 = nn.Linear(ff_dim, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(_ACTIVATIONS[self.activation](self.linear1(x))))


class _Layer(nn.Module):
    """What encoder and decoder layers share: width checks, norms, residual dropout."""

    def _setup(self, d_model, num_heads, ff_dim, dropout, activation, norm_first, eps, kv_heads, bias) -> int:
        _check.integer(d_model, "d_model", low=1)
        _check.integer(num_heads, "num_heads", low=1)
        ff_dim = 4 * d_model if ff_dim is None else _check.integer(ff_dim, "ff_dim", low=1)
        self.dropout_p = float(_check.number(dropout, "dropout", low=0, high=1, high_open=True))
        if not isinstance(norm_first, bool):
            raise ValueError(f"norm_first must be a bool, got {norm_first!r}")
        self.norm_first, self.d_model = norm_first, d_model
        self.self_attn = MultiHeadAttention(d_model, num_heads, kv_heads=kv_heads, bias=bias, dropout=dropout)
        self.ff = FeedForward(d_model, ff_dim, activation=activation, dropout=dropout, bias=bias)
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.norm_ff = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)
        return ff_dim

    def _sublayer(self, x: Tensor, norm: nn.LayerNorm, fn: Callable[[Tensor], tuple[Tensor, Optional[Tensor]]]):
        """Residual around ``fn`` with the norm before (pre-norm) or after (post-norm)."""
        if self.norm_first:
            y, w = fn(norm(x))
            return x + self.dropout(y), w
        y, w = fn(x)
        return norm(x + self.dropout(y)), w

    def _ff(self, x: Tensor) -> Tensor:
        return self._sublayer(x, self.norm_ff, lambda h: (self.ff(h), None))[0]


class EncoderLayer(_Layer):
    """Self-attention (bidirectional unless ``causal=True`` is passed) + feed-forward.

    Args:
        d_model: width ``D``; ``num_heads`` must divide it.
        ff_dim: feed-forward width (default ``4 * d_model``).
        activation: ``"gelu"`` (exact), ``"gelu_tanh"``, ``"relu"`` or ``"silu"``.
        norm_first: pre-norm if True (default), post-norm otherwise.
        eps: LayerNorm epsilon. ``kv_heads``: grouped-query attention.
    """

    def __init__(self, d_model: int, num_heads: int, *, ff_dim: Optional[int] = None, dropout: float = 0.1,
                 activation: str = "gelu", norm_first: bool = True, eps: float = 1e-5,
                 kv_heads: Optional[int] = None, bias: bool = True):
        super().__init__()
        self._setup(d_model, num_heads, ff_dim, dropout, activation, norm_first, eps, kv_heads, bias)

    def forward(self, x: Tensor, *, key_mask: Optional[Tensor] = None, mask=None, causal: bool = False,
                score_mod: Optional[Callable] = None, rotary: Optional[RotaryEmbedding] = None,
                need_weights: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        """(B, L, D) -> ((B, L, D), weights (B, H, L, L) or None)."""
        def attend(h):
            return self.self_attn(h, key_mask=key_mask, mask=mask, causal=causal, score_mod=score_mod, rotary=rotary,
                                  need_weights=need_weights, average_weights=False)

        x, w = self._sublayer(x, self.norm1, attend)
        if key_mask is not None and not bool(key_mask.all()):
            # The feed-forward is position-wise: run it on the real tokens only (the
            # padding is skipped, as "unpadded" kernels do); padding rows are 0, whatever
            # the batch size.
            out = torch.zeros_like(x)
            out[key_mask] = self._ff(x[key_mask])  # (N real tokens, D)
            return out, w
        return self._ff(x), w


class DecoderLayer(_Layer):
    """Causal self-attention, optional cross-attention over a memory, feed-forward.

    Same arguments as :class:`EncoderLayer`, plus ``cross_attention`` (default True).
    """

    def __init__(self, d_model: int, num_heads: int, *, ff_dim: Optional[int] = None, dropout: float = 0.1,
                 activation: str = "gelu", norm_first: bool = True, eps: float = 1e-5,
                 kv_heads: Optional[int] = None, bias: bool = True, cross_attention: bool = True):
        super().__init__()
        self._setup(d_model, num_heads, ff_dim, dropout, activation, norm_first, eps, kv_heads, bias)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, kv_heads=kv_heads, bias=bias,
                                             dropout=dropout) if cross_attention else None
        self.norm_cross = nn.LayerNorm(d_model, eps=eps) if cross_attention else None

    def forward(self, x: Tensor, memory: Optional[Tensor] = None, *, memory_mask: Optional[Tensor] = None,
                cache=None, cross_cache=None, score_mod: Optional[Callable] = None,
                rotary: Optional[RotaryEmbedding] = None, need_weights: bool = False
                ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """(B, T, D) -> ((B, T, D), self weights (B, H, T, n) or None, cross weights (B, H, T, S) or None).

        ``cache``/``cross_cache`` are this layer's :class:`~attend.nn.LayerKV` entries."""
        def self_attend(h):
            return self.self_attn(h, causal=True, score_mod=score_mod, rotary=rotary, cache=cache,
                                  need_weights=need_weights, average_weights=False)

        x, w_self = self._sublayer(x, self.norm1, self_attend)
        w_cross = None
        if self.cross_attn is not None:
            if memory is None:
                raise ValueError("memory: this decoder layer has cross-attention and needs the encoder output")
            if isinstance(memory, Tensor) and memory.ndim == x.ndim == 3 and memory.shape[0] != x.shape[0]:
                raise ValueError(f"memory: shape {tuple(memory.shape)} does not fit x's {tuple(x.shape)} "
                                 "(a different batch size)")

            def cross_attend(h):
                return self.cross_attn(h, memory, key_mask=memory_mask, cache=cross_cache,
                                       need_weights=need_weights, average_weights=False)

            x, w_cross = self._sublayer(x, self.norm_cross, cross_attend)
        elif memory is not None:
            raise ValueError("memory: this decoder layer has no cross-attention (cross_attention=False)")
        return self._ff(x), w_self, w_cross


class EncoderOutput(NamedTuple):
    hidden: Tensor  # (B, S, D)
    attentions: Optional[tuple[Tensor, ...]]  # per layer (B, H, S, S), with need_weights


class DecoderOutput(NamedTuple):
    hidden: Tensor  # (B, T, D)
    self_attentions: Optional[tuple[Tensor, ...]]  # per layer (B, H, T, n)
    cross_attentions: Optional[tuple[Tensor, ...]]  # per layer (B, H, T, S)


class _Stack(nn.Module):
    def _setup_positions(self, positional: str, d_model: int, num_heads: int, max_len: Optional[int]) -> None:
        self.positional = _check.choice(positional, "positional", POSITIONAL_KINDS)
        self.add_positions: Optional[nn.Module] = None
        self.rotary: Optional[RotaryEmbedding] = None
        self.alibi: Optional[ALiBi] = None
        if positional == "sinusoidal":
            self.add_positions = SinusoidalPositions(d_model)
        elif positional == "learned":
            if max_len is None:
                raise ValueError("max_len is required with positional='learned'")
            self.add_positions = LearnedPositions(max_len, d_model)
        elif positional == "rope":
            self.rotary = RotaryEmbedding(d_model // num_heads)
        elif positional == "alibi":
            self.alibi = ALiBi(num_heads)

    def _embed(self, x: Tensor, offset: int) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != self.d_model:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected embeddings (B, L, {self.d_model}), got {got}")
        if self.add_positions is not None:
            sp = getattr(self, "sequence_parallel", None)
            if sp is None:
                x = self.add_positions(x, offset=offset)
            else:  # this rank's spans of the sequence, each at its global position
                parts, at = [], 0
                for a, z in sp.spans(x.shape[1], x.device):
                    parts.append(self.add_positions(x[:, at:at + z - a], offset=offset + a))
                    at += z - a
                x = torch.cat(parts, dim=1)
        return self.dropout(x)

    def set_sequence_parallel(self, sequence_parallel) -> "_Stack":
        """Run every attention of this stack sequence-parallel (an
        :class:`attend.distributed.SequenceParallel`, or None to stop): inputs are then this
        rank's positions of each sequence (``key_mask``/``memory_mask`` too), positions are
        global. No cache or attention dropout then. Returns the stack."""
        self.sequence_parallel = sequence_parallel
        for m in self.modules():
            if isinstance(m, MultiHeadAttention):
                m.sequence_parallel = sequence_parallel
        return self

    @property
    def score_mod(self) -> Optional[Callable]:
        return self.alibi.score_mod if self.alibi is not None else None


class Encoder(_Stack):
    """A stack of :class:`EncoderLayer` over embeddings, with positions added.

    Args:
        num_layers, d_model, num_heads: sizes. ``positional``: see the module docstring.
        max_len: longest input, for ``positional="learned"``.
        Other keywords go to every :class:`EncoderLayer`.
    """

    def __init__(self, *, num_layers: int, d_model: int, num_heads: int, positional: str = "sinusoidal",
                 max_len: Optional[int] = None, dropout: float = 0.1, norm_first: bool = True, eps: float = 1e-5,
                 **layer_kw):
        super().__init__()
        _check.integer(num_layers, "num_layers", low=1)
        self.d_model = d_model
        self.layers = nn.ModuleList(EncoderLayer(d_model, num_heads, dropout=dropout, norm_first=norm_first, eps=eps,
                                                 **layer_kw) for _ in range(num_layers))
        self._setup_positions(positional, d_model, num_heads, max_len)
        self.final_norm = nn.LayerNorm(d_model, eps=eps) if norm_first else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, *, key_mask: Optional[Tensor] = None, need_weights: bool = False) -> EncoderOutput:
        x = self._embed(x, 0)  # (B, S, D)
        weights = []
        for layer in self.layers:
            x, w = layer(x, key_mask=key_mask, score_mod=self.score_mod, rotary=self.rotary, need_weights=need_weights)
            weights.append(w)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return EncoderOutput(x, tuple(weights) if need_weights else None)


class Decoder(_Stack):
    """A stack of :class:`DecoderLayer`: causal self-attention (GPT) and, with
    ``cross_attention=True``, attention over an encoder's output (translation).

    Incremental decoding: ``cache = decoder.new_cache()``, then call with the tokens not
    yet seen (the prompt, then one token at a time) and the same ``cache``; the result
    equals running the whole sequence at once.
    """

    def __init__(self, *, num_layers: int, d_model: int, num_heads: int, cross_attention: bool = True,
                 positional: str = "sinusoidal", max_len: Optional[int] = None, dropout: float = 0.1,
                 norm_first: bool = True, eps: float = 1e-5, **layer_kw):
        super().__init__()
        _check.integer(num_layers, "num_layers", low=1)
        self.d_model, self.cross_attention = d_model, cross_attention
        self.layers = nn.ModuleList(DecoderLayer(d_model, num_heads, dropout=dropout, norm_first=norm_first, eps=eps,
                                                 cross_attention=cross_attention, **layer_kw) for _ in range(num_layers))
        self._setup_positions(positional, d_model, num_heads, max_len)
        self.final_norm = nn.LayerNorm(d_model, eps=eps) if norm_first else None
        self.dropout = nn.Dropout(dropout)

    def new_cache(self, *, capacity: int = 0) -> KVCache:
        """An empty :class:`~attend.nn.KVCache` for this decoder (``capacity`` positions preallocated)."""
        return KVCache(len(self.layers), cross=self.cross_attention, capacity=capacity)

    def forward(self, x: Tensor, memory: Optional[Tensor] = None, *, memory_mask: Optional[Tensor] = None,
                cache: Optional[KVCache] = None, need_weights: bool = False) -> DecoderOutput:
        """``x`` (B, T, D): embeddings of the new tokens (all of them without a cache)."""
        if cache is not None:
            if not isinstance(cache, KVCache) or len(cache) != len(self.layers) or \
                    (cache.cross_attn is not None) != self.cross_attention:
                raise ValueError(f"cache: expected a KVCache from this decoder's new_cache(), got {cache!r}")
        offset = cache.length if cache is not None else 0
        x = self._embed(x, offset)  # (B, T, D)
        self_w, cross_w = [], []
        for i, layer in enumerate(self.layers):
            x, ws, wc = layer(x, memory, memory_mask=memory_mask,
                              cache=cache.self_attn[i] if cache is not None else None,
                              cross_cache=cache.cross_attn[i] if cache is not None and cache.cross_attn else None,
                              score_mod=self.score_mod, rotary=self.rotary, need_weights=need_weights)
            self_w.append(ws)
            cross_w.append(wc)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if not need_weights:
            return DecoderOutput(x, None, None)
        return DecoderOutput(x, tuple(self_w), tuple(cross_w) if self.cross_attention else None)


class EncoderDecoder(nn.Module):
    """Encoder + cross-attending decoder over embeddings (like ``torch.nn.Transformer``).

    ``num_layers`` sets both stacks, or give ``encoder_layers``/``decoder_layers``; other
    keywords go to both :class:`Encoder` and :class:`Decoder`.
    """

    def __init__(self, *, d_model: int, num_heads: int, num_layers: int = 6, encoder_layers: Optional[int] = None,
                 decoder_layers: Optional[int] = None, **kw):
        super().__init__()
        self.encoder = Encoder(num_layers=encoder_layers or num_layers, d_model=d_model, num_heads=num_heads, **kw)
        self.decoder = Decoder(num_layers=decoder_layers or num_layers, d_model=d_model, num_heads=num_heads,
                               cross_attention=True, **kw)

    def set_sequence_parallel(self, sequence_parallel) -> "EncoderDecoder":
        """Both stacks sequence-parallel (see :meth:`Encoder.set_sequence_parallel`)."""
        self.encoder.set_sequence_parallel(sequence_parallel)
        self.decoder.set_sequence_parallel(sequence_parallel)
        return self

    def forward(self, src: Tensor, tgt: Tensor, *, src_key_mask: Optional[Tensor] = None,
                need_weights: bool = False) -> DecoderOutput:
        """``src`` (B, S, D), ``tgt`` (B, T, D) embeddings -> decoder output (B, T, D)."""
        memory = self.encoder(src, key_mask=src_key_mask).hidden
        return self.decoder(tgt, memory, memory_mask=src_key_mask, need_weights=need_weights)
