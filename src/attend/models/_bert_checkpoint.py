"""What a Hugging Face BERT checkpoint is, before any model is built: its ``config.json``
fields (:class:`BertConfig`, checked field by field) and the names of its tensors
(``bert.`` prefix or not; which ones the encoder uses; the config fields their shapes
pin down). :mod:`attend.models.bert` builds the model from these.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .. import _check, _io

__all__ = ["BertConfig", "weight_claims"]


_INT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size")


# config.json flags (true) whose model attend's BertModel, a bidirectional encoder, does not compute.
_UNSUPPORTED_FLAGS = {
    "is_decoder": "a BERT decoder attends causally (each token only to those before it); attend's BertModel is a "
                  "bidirectional encoder",
    "add_cross_attention": "the layers also attend to an encoder's output (cross-attention), which attend's BertModel "
                           "does not have",
    "is_encoder_decoder": "this is an encoder-decoder model; attend's BertModel is an encoder",
}

_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "silu": "silu"}


@dataclass(frozen=True)
class BertConfig:
    """The architecture fields of a Hugging Face BERT ``config.json`` (validated)."""

    vocab_size: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self):
        for f in _INT_FIELDS:
            _check.integer(getattr(self, f), f, low=1)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                             f"({self.num_attention_heads})")
        _check.choice(self.hidden_act, "hidden_act", sorted(_ACT))
        _check.number(self.layer_norm_eps, "layer_norm_eps", low=0, high=1, low_open=True, high_open=True)
        _check.integer(self.pad_token_id, "pad_token_id", low=0, high=self.vocab_size - 1,
                       expected=f"an int in [0, vocab_size={self.vocab_size})")

    @classmethod
    def from_hf(cls, d: dict, path: str = "config.json") -> "BertConfig":
        """From a Hugging Face config dict: BERT fields are taken (each checked: type and
        range; the error names the file and the field), the rest ignored, but a model that
        is not BERT-shaped is refused."""
        if isinstance(d, dict) and isinstance(d.get("format"), str) and d["format"].startswith("attend."):
            raise ValueError(f"{path}: field 'format' is {d['format']!r}: this is an attend run folder (a translator), "
                             "not a Hugging Face BERT model folder")
        doc = _io.JsonDoc(d, path)
        kind = doc.str("model_type", default="bert")
        positions = doc.str("position_embedding_type", default="absolute")
        if kind != "bert" or positions != "absolute":
            raise ValueError(f"{path}: model_type {kind!r} with position_embedding_type {positions!r} is not a BERT "
                             "encoder with absolute positions (RoBERTa-style models offset their positions)")
        if "vocab_size" not in d:
            raise ValueError(f"{path}: missing field 'vocab_size': not a BERT model config")
        # Flags that change what the model computes, which attend's encoder does not do: refused, never ignored.
        for field, why in _UNSUPPORTED_FLAGS.items():
            if doc.bool(field, default=False):
                raise doc.error(field, f"is true: {why}")
        pruned = doc.obj("pruned_heads", default=None)
        if pruned is not None and pruned.raw:
            raise doc.error("pruned_heads", f"is {pruned.raw!r}: this model has heads removed from some layers; "
                                            "attend's BertModel has the same heads in every layer")
        # splitting the feed-forward over the sequence in chunks gives the same numbers: accepted, and checked
        doc.int("chunk_size_feed_forward", lo=0, default=0)
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {f: doc.int(f, lo=1, default=defaults[f]) for f in _INT_FIELDS}
        values["hidden_act"] = doc.str("hidden_act", choices=sorted(_ACT), default=defaults["hidden_act"])
        values["layer_norm_eps"] = doc.number("layer_norm_eps", lo=0, lo_open=True,
                                              default=defaults["layer_norm_eps"])
        pad = d.get("pad_token_id", defaults["pad_token_id"])
        values["pad_token_id"] = 0 if pad is None else doc.int("pad_token_id", lo=0, hi=values["vocab_size"] - 1)
        try:
            return cls(**values)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None



def _hf_names(num_layers: int) -> dict[str, str]:
    """Hugging Face tensor name -> our parameter name."""
    names = {
        "embeddings.word_embeddings.weight": "embeddings.word.weight",
        "embeddings.position_embeddings.weight": "embeddings.position.weight",
        "embeddings.token_type_embeddings.weight": "embeddings.token_type.weight",
        "embeddings.LayerNorm.weight": "embeddings.norm.weight",
        "embeddings.LayerNorm.bias": "embeddings.norm.bias",
    }
    parts = {
        "attention.self.query": "self_attn.q_proj", "attention.self.key": "self_attn.k_proj",
        "attention.self.value": "self_attn.v_proj", "attention.output.dense": "self_attn.out_proj",
        "attention.output.LayerNorm": "norm1", "intermediate.dense": "ff.linear1", "output.dense": "ff.linear2",
        "output.LayerNorm": "norm_ff",
    }
    for i in range(num_layers):
        for theirs, ours in parts.items():
            for p in ("weight", "bias"):
                names[f"encoder.layer.{i}.{theirs}.{p}"] = f"encoder.layers.{i}.{ours}.{p}"
    return names


# Tensors a BERT checkpoint may carry that the encoder does not use.
_IGNORED_PREFIXES = ("cls.", "pooler.")
_IGNORED = ("embeddings.position_ids",)


def _hf_keys(names) -> dict[str, str]:
    """A checkpoint's tensor name -> its name without a ``bert.`` prefix, for the tensors
    the encoder uses."""
    names = list(names)
    strip = bool(names) and all(k.startswith("bert.") or k.startswith("cls.") for k in names)
    out = {}
    for k in names:
        short = k[5:] if strip and k.startswith("bert.") else k
        if short not in _IGNORED and not short.startswith(_IGNORED_PREFIXES):
            out[k] = short
    return out


def weight_claims(shapes) -> dict[str, tuple[Any, str]]:
    """The :class:`BertConfig` fields a checkpoint's tensors pin down (names and shapes of
    the header alone, without a ``bert.`` prefix), each with the tensor that says so."""
    out = _io.dim_claims(shapes, [
        ("vocab_size", "embeddings.word_embeddings.weight", 0), ("hidden_size", "embeddings.word_embeddings.weight", 1),
        ("max_position_embeddings", "embeddings.position_embeddings.weight", 0),
        ("type_vocab_size", "embeddings.token_type_embeddings.weight", 0),
        ("intermediate_size", "encoder.layer.0.intermediate.dense.weight", 0)])
    n = _io.count_indexed(shapes, r"encoder\.layer\.(\d+)\..+")
    out["num_hidden_layers"] = (n, f"it has {n} layer(s) 'encoder.layer.<i>'")
    return out

