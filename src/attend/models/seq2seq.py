"""The translator of seed 002: an RNN encoder-decoder with attention.

The encoder reads the source and passes *all* its hidden states on. At every output step
the decoder scores each of them against its own state, softmaxes the scores, takes the
weighted average (the context vector), concatenates it with its state and feeds a
feed-forward layer that predicts the next word:

    s_t  = RNN(embed(y_{t-1}), s_{t-1})                 Luong et al. 2015 ("dot", "general", "concat")
    a_t  = softmax_j score(s_t, h_j)      c_t = sum_j a_tj h_j
    p(y_t | y_<t, x) = softmax(W_o tanh(W_c [s_t; c_t]))

Bahdanau et al. 2015 ("additive") attend *before* the step, with the previous state, and
feed the context into the RNN: ``c_t`` from ``s_{t-1}``, then ``s_t = RNN([embed(y_{t-1}); c_t], s_{t-1})``.
``attention="none"`` is the baseline of the seed's "traditional" encoder-decoder: the
decoder sees only the final encoder state (as its initial state and in place of ``c_t``).

All attention goes through :class:`attend.nn.LuongAttention` / :class:`attend.nn.AdditiveAttention`.

Shape legend::

    B batch   S source length   T target steps   H hidden size   E embedding size   V vocabulary
    src (B, S) ids, src_lengths (B,)  ->  memory (B, S, H), src_mask (B, S) True = real token
    tgt_in (B, T) ids  ->  logits (B, T, V), weights (B, T, S)
    RNN state: (layers, B, H) for GRU, a pair of those for LSTM
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .. import _check
from .._io import config_from_dict, count_indexed, dim_claims
from ..nn import AdditiveAttention, LuongAttention

__all__ = ["Seq2SeqConfig", "Seq2Seq", "Encoded", "ATTENTION_KINDS", "weight_claims"]

ATTENTION_KINDS = ("dot", "general", "concat", "additive", "none")
#: the widest embedding or hidden size and the most layers a translator config may ask for (far past
#: what one machine trains; a typo's 10^9 is refused before anything is allocated or built)
MAX_WIDTH, MAX_LAYERS = 1 << 16, 64
State = Union[Tensor, tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Seq2SeqConfig:
    """Sizes and choices of a :class:`Seq2Seq` model (validated on creation).

    With ``bidirectional=True`` each encoder direction has ``hidden_dim // 2`` units, so
    the encoder states (forward and backward concatenated) are ``hidden_dim`` wide like
    the decoder's (``hidden_dim`` must be even).
    """

    src_vocab: int
    tgt_vocab: int
    embed_dim: int = 128
    hidden_dim: int = 256
    rnn: str = "gru"
    layers: int = 1
    bidirectional: bool = True
    attention: str = "general"
    dropout: float = 0.1

    def __post_init__(self):
        for name, low, high in (("src_vocab", 5, None), ("tgt_vocab", 5, None), ("embed_dim", 1, MAX_WIDTH),
                                ("hidden_dim", 2, MAX_WIDTH), ("layers", 1, MAX_LAYERS)):
            _check.integer(getattr(self, name), name, low=low, high=high)
        _check.choice(self.rnn, "rnn", ("gru", "lstm"))
        if not isinstance(self.bidirectional, bool):
            raise ValueError(f"bidirectional must be a bool, got {self.bidirectional!r}")
        if self.bidirectional and self.hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even with bidirectional=True, got {self.hidden_dim}")
        _check.choice(self.attention, "attention", ATTENTION_KINDS)
        _check.number(self.dropout, "dropout", low=0, high=1, high_open=True)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Seq2SeqConfig":
        return config_from_dict(cls, d, "model config")


def weight_claims(config: dict, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[Any, str]]:
    """The config fields a :class:`Seq2Seq` weights file pins down (from tensor names and
    shapes alone), each with the tensor that says so: checked before a model is built."""
    out = dim_claims(shapes, [("src_vocab", "src_embed.weight", 0), ("embed_dim", "src_embed.weight", 1),
                              ("tgt_vocab", "out.weight", 0), ("hidden_dim", "combine.weight", 0)])
    n = count_indexed(shapes, r"decoder\.weight_hh_l(\d+)")
    out["layers"] = (n, f"it has {n} decoder layer(s) 'decoder.weight_hh_l<i>'")
    if "encoder.weight_hh_l0" in shapes:
        rev = "encoder.weight_hh_l0_reverse" in shapes
        out["bidirectional"] = (rev, f"tensor 'encoder.weight_hh_l0_reverse' is {'present' if rev else 'absent'}")
    s, H = shapes.get("decoder.weight_hh_l0"), out.get("hidden_dim", (0,))[0]
    if s and H and s[0] in (3 * H, 4 * H):
        out["rnn"] = ("gru" if s[0] == 3 * H else "lstm", f"tensor 'decoder.weight_hh_l0' has shape {tuple(s)}")
    if "attention.score.weight" in shapes:
        out["attention"] = ("general", "it has tensor 'attention.score.weight'")
    elif "attention.score.v.weight" in shapes:
        ih, E = shapes.get("decoder.weight_ih_l0"), out.get("embed_dim", (0,))[0]
        if ih and len(ih) == 2 and E and H:
            kind = "additive" if ih[1] == E + H else "concat"
            out["attention"] = (kind, f"it has tensor 'attention.score.v.weight' and 'decoder.weight_ih_l0' has "
                                      f"shape {tuple(ih)}")
    elif config.get("attention") in ("general", "concat", "additive"):
        out["attention"] = ("dot or none", "it has no attention tensors")
    return out


class Encoded(NamedTuple):
    memory: Tensor  # (B, S, H) encoder states, zero at padding
    mask: Tensor  # (B, S) True = real source token
    state: State  # initial decoder state, from the final encoder states
    final: Tensor  # (B, H) top layer's final encoder state (what the no-attention decoder sees)


def check_source(src: Tensor, src_lengths: Tensor, vocab: Optional[int] = None) -> None:
    """The encoders' input contract: (B, S) int64 ids (in [0, ``vocab``) where given) and
    (B,) integer lengths in [1, S]."""
    if not isinstance(src, Tensor) or src.ndim != 2 or src.dtype != torch.long:
        raise ValueError(f"src: expected a (B, S) tensor of token ids (int64), got "
                         f"{tuple(src.shape) if isinstance(src, Tensor) else type(src).__name__}")
    if not isinstance(src_lengths, Tensor) or src_lengths.shape != src.shape[:1]:
        raise ValueError(f"src_lengths: expected shape ({src.shape[0]},), got "
                         f"{tuple(src_lengths.shape) if isinstance(src_lengths, Tensor) else type(src_lengths).__name__}")
    if src_lengths.is_floating_point() or src_lengths.is_complex() or src_lengths.dtype == torch.bool:
        raise ValueError(f"src_lengths: expected integer lengths, got dtype {src_lengths.dtype}")
    if src.numel() and (int(src_lengths.min()) < 1 or int(src_lengths.max()) > src.shape[1]):
        raise ValueError(f"src_lengths must be in [1, {src.shape[1]}], got {src_lengths.tolist()}")
    if vocab is not None and src.numel() and not (0 <= int(src.min()) and int(src.max()) < vocab):
        raise ValueError(f"src: ids must be in [0, {vocab}) (the source vocabulary), got ids from {int(src.min())} "
                         f"to {int(src.max())}")


def _rnn(kind: str, *args, **kwargs) -> nn.Module:
    return (nn.GRU if kind == "gru" else nn.LSTM)(*args, batch_first=True, **kwargs)


class Seq2Seq(nn.Module):
    """Encoder-decoder translator; see the module docstring for the equations."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        if not isinstance(config, Seq2SeqConfig):
            raise TypeError(f"config must be a Seq2SeqConfig, got {type(config).__name__}")
        self.config = c = config
        H, E = c.hidden_dim, c.embed_dim
        enc_h = H // 2 if c.bidirectional else H
        drop = c.dropout if c.layers > 1 else 0.0
        self.src_embed = nn.Embedding(c.src_vocab, E, padding_idx=0)
        self.encoder = _rnn(c.rnn, E, enc_h, num_layers=c.layers, bidirectional=c.bidirectional, dropout=drop)
        self.tgt_embed = nn.Embedding(c.tgt_vocab, E, padding_idx=0)
        feeds_context = c.attention == "additive"
        self.decoder = _rnn(c.rnn, E + (H if feeds_context else 0), H, num_layers=c.layers, dropout=drop)
        if c.attention in ("dot", "general", "concat"):
            self.attention = LuongAttention(H, H, c.attention)
        elif c.attention == "additive":
            self.attention = AdditiveAttention(H, H, H)
        else:
            self.attention = None
        self.combine = nn.Linear(2 * H, H)  # W_c [s_t; c_t]
        self.out = nn.Linear(H, c.tgt_vocab)  # W_o
        self.dropout = nn.Dropout(c.dropout)

    # -- encoder -----------------------------------------------------------------------
    def encode(self, src: Tensor, src_lengths: Tensor) -> Encoded:
        c = self.config
        check_source(src, src_lengths, self.config.src_vocab)
        B, S = src.shape
        x = self.dropout(self.src_embed(src))  # (B, S, E)
        packed = pack_padded_sequence(x, src_lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=S)  # (B, S, H)
        mask = torch.arange(S, device=src.device) < src_lengths[:, None]  # (B, S)

        def join(h: Tensor) -> Tensor:  # (layers * dirs, B, H/dirs) -> (layers, B, H)
            if not c.bidirectional:
                return h
            h = h.view(c.layers, 2, B, -1)
            return torch.cat([h[:, 0], h[:, 1]], dim=-1)

        state = tuple(join(s) for s in state) if c.rnn == "lstm" else join(state)
        final = state[0][-1] if c.rnn == "lstm" else state[-1]  # (B, H)
        return Encoded(memory, mask, state, final)

    # -- decoder -----------------------------------------------------------------------
    def decode(self, tgt_in: Tensor, state: State, enc: Encoded) -> tuple[Tensor, State, Optional[Tensor]]:
        """Run the decoder over ``tgt_in`` (B, T) from ``state``; teacher forcing when T > 1,
        one step of generation when T == 1. Returns logits (B, T, V), the new state and the
        attention weights (B, T, S) (None for ``attention="none"``)."""
        c = self.config
        y = self.dropout(self.tgt_embed(tgt_in))  # (B, T, E)
        if c.attention == "additive":
            outs, ctxs, ws = [], [], []
            for t in range(y.shape[1]):  # Bahdanau: attend with s_{t-1}, then step
                prev = state[0][-1] if c.rnn == "lstm" else state[-1]  # (B, H)
                ctx, w = self.attention(prev, enc.memory, mask=enc.mask)  # (B, H), (B, S)
                o, state = self.decoder(torch.cat([y[:, t], ctx], -1).unsqueeze(1), state)  # o (B, 1, H)
                outs.append(o)
                ctxs.append(ctx.unsqueeze(1))
                ws.append(w.unsqueeze(1))
            s, ctx, weights = torch.cat(outs, 1), torch.cat(ctxs, 1), torch.cat(ws, 1)  # (B, T, H|H|S)
        else:
            s, state = self.decoder(y, state)  # (B, T, H): all steps at once (no input feeding)
            if self.attention is None:
                ctx, weights = enc.final.unsqueeze(1).expand_as(s), None  # (B, T, H)
            else:
                ctx, weights = self.attention(s, enc.memory, mask=enc.mask)  # (B, T, H), (B, T, S)
        h = torch.tanh(self.combine(torch.cat([s, ctx], dim=-1)))  # (B, T, H)
        return self.out(self.dropout(h)), state, weights

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """Teacher-forced logits (B, T, V) and attention weights (B, T, S)."""
        enc = self.encode(src, src_lengths)
        logits, _, weights = self.decode(tgt_in, enc.state, enc)
        return logits, weights

    def extra_repr(self) -> str:
        return f"attention={self.config.attention!r}, rnn={self.config.rnn!r}"


def reorder_state(state: State, index: Tensor) -> State:
    """Select batch rows of a decoder state (for beam search): an RNN state, or any state
    with an ``index_select(index)`` method (a transformer's :class:`~attend.nn.KVCache`)."""
    if not isinstance(state, (Tensor, tuple)) and hasattr(state, "index_select"):
        return state.index_select(index)
    if isinstance(state, tuple):
        return tuple(s.index_select(1, index) for s in state)
    return state.index_select(1, index)
