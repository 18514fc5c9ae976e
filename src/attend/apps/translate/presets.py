"""The translator's model kinds: the factory (config from its JSON form, model from its
config, a weights file checked against a config) and the presets per kind — the model's
default settings and the learning rate and warm-up it trains with by default.

    kind          model                                         lr     warm-up
    rnn           Seq2Seq: seed 002's RNN encoder-decoder        2e-3   100 steps
    transformer   TransformerSeq2Seq: pre-norm encoder-decoder   1e-3   400 steps

(the warm-up is at most 10 % of a run's planned steps: :func:`attend.apps.translate.scaled_warmup`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Container, Mapping, Optional, Union

import torch

from ... import _check, _io
from ...models import seq2seq as _seq2seq
from ...models import transformer as _transformer
from ...models.seq2seq import Seq2Seq, Seq2SeqConfig
from ...models.transformer import TransformerConfig, TransformerSeq2Seq

__all__ = ["MODEL_KINDS", "ModelConfig", "Preset", "PRESETS", "model_options", "model_template", "with_vocab",
           "model_config", "build_model", "check_weights"]

MODEL_KINDS = ("rnn", "transformer")
ModelConfig = Union[Seq2SeqConfig, TransformerConfig]
_UNSIZED = 5  # the smallest vocabulary a model takes (4 special tokens and a word): a template's sizes


@dataclass(frozen=True)
class Preset:
    """The defaults of one model kind: model settings, peak learning rate and warm-up steps."""
    kind: str
    lr: float
    warmup_steps: int
    model: Mapping[str, Any] = field(default_factory=dict)


PRESETS = {
    "rnn": Preset("rnn", lr=2e-3, warmup_steps=100,
                  model=dict(attention="general", rnn="gru", hidden_dim=256, embed_dim=128, layers=1, dropout=0.1,
                             bidirectional=True)),
    "transformer": Preset("transformer", lr=1e-3, warmup_steps=400,
                          model=dict(kind="transformer", d_model=256, heads=4, encoder_layers=3, decoder_layers=3,
                                     ff_dim=0, dropout=0.1, positional="sinusoidal")),
}


def model_options(kind: str, given: Optional[Mapping[str, Any]] = None) -> dict:
    """The model settings of ``kind``: its preset, with the settings ``given`` (None = not given)."""
    if kind not in PRESETS:
        raise ValueError(f"model kind must be one of {list(MODEL_KINDS)}, got {kind!r}")
    return {**PRESETS[kind].model, **{k: v for k, v in (given or {}).items() if v is not None}}


def model_template(options: Optional[Mapping[str, Any]] = None) -> ModelConfig:
    """The model config for ``options`` (fields of :class:`Seq2SeqConfig`, or with ``"kind":
    "transformer"`` of :class:`TransformerConfig`, without the vocabulary sizes), checked once
    here (``ValueError`` naming the field); the vocabulary sizes are filled in by
    :func:`with_vocab` once the vocabularies are built."""
    return model_config(dict(options or {}, src_vocab=_UNSIZED, tgt_vocab=_UNSIZED))


def with_vocab(template: ModelConfig, src_vocab: int, tgt_vocab: int) -> ModelConfig:
    """``template`` with the sizes of the vocabularies built for it."""
    return dataclasses.replace(template, src_vocab=src_vocab, tgt_vocab=tgt_vocab)


def model_config(d: Mapping[str, Any]) -> ModelConfig:
    """A translator model config from its JSON form: ``"kind": "transformer"`` or an RNN
    :class:`Seq2SeqConfig` (whose dict has no ``kind``)."""
    if isinstance(d, Mapping) and d.get("kind", "rnn") == "transformer":
        return TransformerConfig.from_dict(dict(d))
    if isinstance(d, Mapping) and d.get("kind", "rnn") == "rnn":
        return Seq2SeqConfig.from_dict({k: v for k, v in d.items() if k != "kind"})
    raise ValueError(f"model config: kind must be one of {list(MODEL_KINDS)}, "
                     f"got {d.get('kind') if isinstance(d, Mapping) else d!r}")


#: the most parameters a translator may have (8 GiB of float32 weights, 32 GiB with Adam's state)
MAX_PARAMETERS = 1 << 31


def build_model(config: ModelConfig) -> Seq2Seq | TransformerSeq2Seq:
    """The model for a config: :class:`Seq2Seq` or :class:`TransformerSeq2Seq`, counted first on
    the ``meta`` device (nothing allocated): more than :data:`MAX_PARAMETERS` is refused, naming
    the sizes."""
    kind = TransformerSeq2Seq if isinstance(config, TransformerConfig) else Seq2Seq
    with torch.device("meta"):
        skeleton = kind(config)
    n = sum(p.numel() for p in skeleton.parameters())
    if n > MAX_PARAMETERS:
        sizes = ", ".join(f"{k} {v}" for k, v in config.to_dict().items() if _check.is_int(v))
        raise ValueError(f"the model would have {n:,} parameters, more than {MAX_PARAMETERS:,} ({sizes})")
    return skeleton if torch.get_default_device().type == "meta" else kind(config)  # (built once for a skeleton)


def check_weights(config: ModelConfig, infos: Mapping[str, "_io.TensorInfo"], *, config_path: str,
                  weights_path: str, given: Optional[Container[str]] = None) -> None:
    """Check a weights file's header (``infos``: name -> dtype and shape, from
    :func:`attend._io.read_header`) against a model config before the model is built: first
    the sizes the tensors pin down (an error names the config file and the field, and says
    when the file lacks it: ``given``, the fields the file holds), then every name, shape and
    dtype against the model built on the ``meta`` device (no memory)."""
    shapes = {k: v.shape for k, v in infos.items()}
    d = config.to_dict()
    module = _transformer if isinstance(config, TransformerConfig) else _seq2seq
    _io.check_sizes(config_path, weights_path, d, module.weight_claims(d, shapes), prefix="model.",
                    given=given)
    with torch.device("meta"):
        skeleton = build_model(config)
    _io.check_state_dict(weights_path, skeleton.state_dict(), infos)
