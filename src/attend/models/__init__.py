"""Complete models built on attend's attention modules."""
from __future__ import annotations

from typing import Mapping, Union

import torch

from .. import _io
from . import seq2seq as _seq2seq
from . import transformer as _transformer
from .search import Hypothesis, beam_search, greedy
from .seq2seq import ATTENTION_KINDS, Encoded, Seq2Seq, Seq2SeqConfig
from .transformer import TransformerConfig, TransformerSeq2Seq

__all__ = ["Seq2Seq", "Seq2SeqConfig", "TransformerSeq2Seq", "TransformerConfig", "Encoded", "ATTENTION_KINDS",
           "Hypothesis", "greedy", "beam_search", "MODEL_KINDS", "model_config", "build_model", "check_weights"]

MODEL_KINDS = ("rnn", "transformer")
ModelConfig = Union[Seq2SeqConfig, TransformerConfig]


def model_config(d: dict) -> ModelConfig:
    """A translator model config from its JSON form: ``"kind": "transformer"`` or an RNN
    :class:`Seq2SeqConfig` (whose dict has no ``kind``)."""
    if isinstance(d, dict) and d.get("kind", "rnn") == "transformer":
        return TransformerConfig.from_dict(d)
    if isinstance(d, dict) and d.get("kind", "rnn") == "rnn":
        return Seq2SeqConfig.from_dict({k: v for k, v in d.items() if k != "kind"})
    raise ValueError(f"model config: kind must be one of {list(MODEL_KINDS)}, got {d.get('kind') if isinstance(d, dict) else d!r}")


def build_model(config: ModelConfig):
    """The model for a config: :class:`Seq2Seq` or :class:`TransformerSeq2Seq`."""
    return TransformerSeq2Seq(config) if isinstance(config, TransformerConfig) else Seq2Seq(config)


def check_weights(config: ModelConfig, infos: Mapping[str, "_io.TensorInfo"], *, config_path: str,
                  weights_path: str) -> None:
    """Check a weights file's header (``infos``: name -> dtype and shape, from
    :func:`attend._io.read_header`) against a model config before the model is built: first
    the sizes the tensors pin down (an error names the config file and the field), then
    every name, shape and dtype against the model built on the ``meta`` device (no memory)."""
    shapes = {k: v.shape for k, v in infos.items()}
    d = config.to_dict()
    module = _transformer if isinstance(config, TransformerConfig) else _seq2seq
    _io.check_sizes(config_path, weights_path, d, module.weight_claims(d, shapes), prefix="model.")
    with torch.device("meta"):
        skeleton = build_model(config)
    _io.check_state_dict(weights_path, skeleton.state_dict(), infos)
