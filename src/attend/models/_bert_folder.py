"""The files of a Hugging Face / sentence-transformers model folder besides the model's
config and weights, each checked before it is used: the tokenizer (``tokenizer.json``, or
``vocab.txt`` with ``tokenizer_config.json``), ``sentence_bert_config.json``,
``modules.json`` and the Pooling module's ``config.json``. Errors name the file and the
field. :class:`attend.models.bert.SentenceEncoder` reads a folder through these.
"""
from __future__ import annotations

import os
from typing import Optional

from .. import _io
from ._bert_checkpoint import BertConfig


def _folder(folder) -> str:
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder not found: {folder}")
    return folder


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
        with open(tj, "rb") as f:  # (read here: the library takes a path only as UTF-8, which a folder's may not be)
            data = f.read()
        try:
            tok = Tokenizer.from_str(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{tj}: not UTF-8 text ({e.reason} at byte {e.start})") from None
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
        tok = BertWordPieceTokenizer({t: i - 1 for t, i in first.items()}, lowercase=lower, **specials)  # (ids: lines)
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

