"""A small encoder-decoder transformer translator (seed 001: self-attention in the
encoder, masked self-attention and cross-attention in the decoder), with the interface of
:class:`~attend.models.seq2seq.Seq2Seq`, so the same trainer, greedy/beam search,
evaluation and heat maps work for both.

    embeddings * sqrt(D) + positions -> Encoder -> memory
    embeddings * sqrt(D) + positions -> Decoder(causal self-attention, cross-attention over memory)
    -> linear to the target vocabulary (weights tied to the target embeddings)

Decoding keeps a :class:`~attend.nn.KVCache` as its "state": each step feeds one token.
The weights returned for heat maps are the last decoder layer's cross-attention, averaged
over heads.

Shape legend::

    B batch   S source length   T target steps   D d_model   V target vocabulary
    src (B, S), src_lengths (B,) -> memory (B, S, D), mask (B, S)
    tgt_in (B, T) -> logits (B, T, V), weights (B, T, S)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _check
from .._io import config_from_dict, count_indexed, dim_claims
from ..nn import Decoder, Encoder, KVCache
from ..nn.positional import POSITIONAL_KINDS
from .seq2seq import MAX_LAYERS, MAX_WIDTH, Encoded, check_source

__all__ = ["TransformerConfig", "TransformerSeq2Seq", "weight_claims"]


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes of a :class:`TransformerSeq2Seq` (validated). ``ff_dim`` 0 means ``4 * d_model``."""

    src_vocab: int
    tgt_vocab: int
    d_model: int = 256
    heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    ff_dim: int = 0
    dropout: float = 0.1
    norm_first: bool = True
    positional: str = "sinusoidal"
    max_len: int = 512
    kind: str = "transformer"

    def __post_init__(self):
        for name, low, high in (("src_vocab", 5, None), ("tgt_vocab", 5, None), ("d_model", 1, MAX_WIDTH),
                                ("heads", 1, None), ("encoder_layers", 1, MAX_LAYERS), ("decoder_layers", 1, MAX_LAYERS),
                                ("max_len", 1, MAX_WIDTH * 16), ("ff_dim", 0, MAX_WIDTH * 4)):
            _check.integer(getattr(self, name), name, low=low, high=high)
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        _check.choice(self.positional, "positional", [p for p in POSITIONAL_KINDS if p != "none"])
        _check.number(self.dropout, "dropout", low=0, high=1, high_open=True)
        if not isinstance(self.norm_first, bool):
            raise ValueError(f"norm_first must be a bool, got {self.norm_first!r}")
        _check.choice(self.kind, "kind", ("transformer",), expected="'transformer'")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        return config_from_dict(cls, d, "model config")


def weight_claims(config: dict, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[Any, str]]:
    """The config fields a :class:`TransformerSeq2Seq` weights file pins down (from tensor
    names and shapes alone), each with the tensor that says so."""
    out = dim_claims(shapes, [("src_vocab", "src_embed.weight", 0), ("d_model", "src_embed.weight", 1),
                              ("tgt_vocab", "tgt_embed.weight", 0)])
    for side in ("encoder", "decoder"):
        n = count_indexed(shapes, side + r"\.layers\.(\d+)\..+")
        out[f"{side}_layers"] = (n, f"it has {n} {side} layer(s) '{side}.layers.<i>'")
    ff = shapes.get("encoder.layers.0.ff.linear1.weight")
    if ff and "d_model" in out:
        d, mine = out["d_model"][0], config.get("ff_dim")
        effective = (mine or 4 * d) if isinstance(mine, int) else None
        if effective != ff[0]:
            out["ff_dim"] = (ff[0], f"tensor 'encoder.layers.0.ff.linear1.weight' has shape {tuple(ff)}")
    pos = shapes.get("encoder.add_positions.weight")
    if pos:
        out["positional"] = ("learned", "it has tensor 'encoder.add_positions.weight'")
        out["max_len"] = (pos[0], f"tensor 'encoder.add_positions.weight' has shape {tuple(pos)}")
    elif config.get("positional") == "learned":
        out["positional"] = ("sinusoidal, rope or alibi", "it has no learned position table")
    return out


class TransformerSeq2Seq(nn.Module):
    """Encoder-decoder transformer for translation; see the module docstring."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        self.config = c = config
        D = c.d_model
        kw = dict(d_model=D, num_heads=c.heads, positional=c.positional, max_len=c.max_len, dropout=c.dropout,
                  norm_first=c.norm_first, ff_dim=c.ff_dim or 4 * D)
        self.src_embed = nn.Embedding(c.src_vocab, D, padding_idx=0)
        self.tgt_embed = nn.Embedding(c.tgt_vocab, D, padding_idx=0)
        for emb in (self.src_embed, self.tgt_embed):
            nn.init.normal_(emb.weight, std=D ** -0.5)
            with torch.no_grad():
                emb.weight[0].zero_()
        self.encoder = Encoder(num_layers=c.encoder_layers, **kw)
        self.decoder = Decoder(num_layers=c.decoder_layers, cross_attention=True, **kw)
        self.scale = math.sqrt(D)

    def encode(self, src: Tensor, src_lengths: Tensor) -> Encoded:
        check_source(src, src_lengths, self.config.src_vocab)
        S = src.shape[1]
        mask = torch.arange(S, device=src.device) < src_lengths[:, None]  # (B, S)
        memory = self.encoder(self.src_embed(src) * self.scale, key_mask=mask).hidden  # (B, S, D)
        memory = memory.masked_fill(~mask[..., None], 0.0)
        return Encoded(memory, mask, self.decoder.new_cache(), memory[:, 0])

    def decode(self, tgt_in: Tensor, state: Optional[KVCache], enc: Encoded,
               need_weights: bool = True) -> tuple[Tensor, Optional[KVCache], Optional[Tensor]]:
        """Logits (B, T, V) for ``tgt_in`` (B, T); with a cache ``state`` only the new tokens
        are fed (one per step when generating). Weights: last layer's cross-attention (B, T, S).
        The state returned is a new one (a :meth:`~attend.nn.KVCache.view`): ``state`` itself
        is left as it was, so decoding from it again gives the same result, as with the RNN."""
        state = state.view() if state is not None else None
        y = self.tgt_embed(tgt_in) * self.scale  # (B, T, D)
        out = self.decoder(y, enc.memory, memory_mask=enc.mask, cache=state, need_weights=need_weights)
        weights = out.cross_attentions[-1].mean(dim=1) if need_weights else None  # (B, T, S)
        # output layer tied to the target embeddings (Press & Wolf 2017): one matrix, saved once
        return F.linear(out.hidden, self.tgt_embed.weight), state, weights

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor,
                need_weights: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        """Teacher-forced logits (B, T, V) (and cross-attention weights if asked)."""
        enc = self.encode(src, src_lengths)
        logits, _, weights = self.decode(tgt_in, None, enc, need_weights=need_weights)
        return logits, weights

    def extra_repr(self) -> str:
        c = self.config
        return f"d_model={c.d_model}, heads={c.heads}, layers={c.encoder_layers}+{c.decoder_layers}"
