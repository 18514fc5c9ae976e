"""The translator as a whole: vocabularies + :class:`~attend.models.Seq2Seq` + training +
decoding + evaluation, saved in one run folder:

    config.json          format, model config, training config, both vocabularies, data notes
    model.safetensors    best weights (by validation loss)
    state.safetensors    training state, for ``--resume``
    history.json         validation loss per evaluation

BLEU and chrF come from sacrebleu, computed on the tokenised, lower-cased text that the
model reads and writes (``tokenize="none"``), as Bahdanau et al. scored tokenised output.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor

from .. import _io
from ..data import Vocab, make_batch, tokenize
from ..models import Seq2Seq, Seq2SeqConfig, TransformerConfig, TransformerSeq2Seq, beam_search, build_model, greedy
from ..models import model_config as _model_config
from ..train import TrainConfig, Trainer

__all__ = ["Translator", "Translation", "train_translator", "evaluate", "EvalResult", "LENGTH_BUCKETS", "FORMAT"]

FORMAT = "attend.translator/1"
Pair = tuple[list[str], list[str]]


@dataclass
class Translation:
    source: list[str]  # source tokens
    tokens: list[str]  # output tokens
    weights: Optional[Tensor]  # (len(tokens), len(source)); None for the no-attention model
    score: float  # log-probability

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


class Translator:
    """A trained model with its vocabularies. ``Translator.load(folder)`` reads a run folder."""

    def __init__(self, model: Seq2Seq | TransformerSeq2Seq, src_vocab: Vocab, tgt_vocab: Vocab):
        if model.config.src_vocab != len(src_vocab) or model.config.tgt_vocab != len(tgt_vocab):
            raise ValueError(f"vocabulary sizes ({len(src_vocab)}, {len(tgt_vocab)}) do not match the model config "
                             f"({model.config.src_vocab}, {model.config.tgt_vocab})")
        self.model, self.src_vocab, self.tgt_vocab = model.eval(), src_vocab, tgt_vocab

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Translator":
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"checkpoint folder not found: {folder}")
        cfg_path = os.path.join(folder, "config.json")
        cfg = _io.read_json(cfg_path, "checkpoint config")
        if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
            raise ValueError(f"{cfg_path}: not an attend translator config (expected format {FORMAT!r})")
        try:
            mcfg = _model_config(cfg["model"])
            src_vocab, tgt_vocab = Vocab(cfg["src_vocab"]), Vocab(cfg["tgt_vocab"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{cfg_path}: malformed config ({e})") from None
        model = build_model(mcfg)
        path = os.path.join(folder, "model.safetensors")
        tensors, _ = _io.load_tensors(path, "model weights")
        _io.check_state_dict(path, model.state_dict(), tensors)
        model.load_state_dict(tensors)
        return cls(model, src_vocab, tgt_vocab)

    def encode_sources(self, sources: Sequence[Sequence[str] | str]) -> list[list[str]]:
        toks = [tokenize(s) if isinstance(s, str) else list(s) for s in sources]
        for i, t in enumerate(toks):
            if not t:
                raise ValueError(f"source sentence {i} is empty after tokenisation")
        return toks

    @torch.no_grad()
    def translate(self, sources: Sequence[Sequence[str] | str], *, beam: int = 1, max_len: Optional[int] = None,
                  length_penalty: float = 1.0, batch_size: int = 128) -> list[Translation]:
        """Translate strings (tokenised here) or token lists, in length-sorted batches."""
        if isinstance(sources, str):
            raise TypeError("sources must be a list of sentences, not one string")
        toks = self.encode_sources(sources)
        order = sorted(range(len(toks)), key=lambda i: len(toks[i]))
        out: list[Optional[Translation]] = [None] * len(toks)
        self.model.eval()
        for p in range(0, len(order), batch_size):
            idx = order[p : p + batch_size]
            b = make_batch([(self.src_vocab.encode(toks[i]), []) for i in idx])
            if beam == 1:
                hyps = greedy(self.model, b.src, b.src_lengths, max_len=max_len)
            else:
                hyps = beam_search(self.model, b.src, b.src_lengths, beam=beam, max_len=max_len,
                                   length_penalty=length_penalty)
            for i, h in zip(idx, hyps):
                out[i] = Translation(toks[i], self.tgt_vocab.decode(h.tokens, strip=False), h.weights, h.score)
        return out  # type: ignore[return-value]


def _config_doc(model_cfg: Seq2SeqConfig | TransformerConfig, train_cfg: TrainConfig, src_vocab: Vocab, tgt_vocab: Vocab, data: dict) -> dict:
    from .. import __version__

    return {"format": FORMAT, "attend_version": __version__, "model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
            "data": data, "src_vocab": src_vocab.to_list(), "tgt_vocab": tgt_vocab.to_list()}


def train_translator(train: Sequence[Pair], valid: Sequence[Pair], out_dir: str | os.PathLike, *,
                     model: Optional[dict] = None, train_config: Optional[TrainConfig] = None,
                     min_freq: int = 1, data: Optional[dict] = None, resume: bool = False,
                     progress: bool = True, on_step=None) -> tuple[Translator, list[dict]]:
    """Build vocabularies from ``train`` (token pairs), train a model with ``model``
    options (``Seq2SeqConfig`` fields other than the vocabulary sizes for the RNN model;
    with ``"kind": "transformer"``, ``TransformerConfig`` fields), and
    return the translator with the best validation loss and the history.

    With ``resume=True`` the folder's config is reused and training continues from
    ``state.safetensors``; the given settings must match the saved ones.
    """
    out_dir = os.fspath(out_dir)
    train_config = train_config or TrainConfig()
    cfg_path = os.path.join(out_dir, "config.json")
    if resume:
        saved = _io.read_json(cfg_path, "checkpoint config")
        src_vocab, tgt_vocab = Vocab(saved["src_vocab"]), Vocab(saved["tgt_vocab"])
        mcfg = _model_config(saved["model"])
        if saved["train"] != train_config.to_dict():
            raise ValueError(f"{cfg_path}: was written with different training settings; resume with the same ones")
    else:
        if not train:
            raise ValueError("no training pairs")
        src_vocab = Vocab.build((s for s, _ in train), min_freq=min_freq)
        tgt_vocab = Vocab.build((t for _, t in train), min_freq=min_freq)
        mcfg = _model_config(dict(model or {}, src_vocab=len(src_vocab), tgt_vocab=len(tgt_vocab)))
        os.makedirs(out_dir, exist_ok=True)
        _io.write_json(cfg_path, _config_doc(mcfg, train_config, src_vocab, tgt_vocab, data or {}))
    torch.manual_seed(train_config.seed)
    net = build_model(mcfg)

    def ids(pairs):
        return [(src_vocab.encode(s), tgt_vocab.encode(t)) for s, t in pairs]

    trainer = Trainer(net, train_config, ids(train), ids(valid), out_dir, progress=progress)
    history = trainer.fit(resume=resume, on_step=on_step)
    return Translator.load(out_dir), history


LENGTH_BUCKETS = ((1, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 10_000))


@dataclass
class EvalResult:
    bleu: float
    chrf: float
    n: int
    by_length: list[dict] = field(default_factory=list)  # {"lo", "hi", "n", "bleu"} per source-length bucket
    translations: list[Translation] = field(default_factory=list)

    def summary(self) -> dict:
        return {"bleu": round(self.bleu, 2), "chrf": round(self.chrf, 2), "n": self.n, "by_length": self.by_length}


def _bleu(hyps: list[str], refs: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", force=True).score)


def evaluate(translator: Translator, pairs: Sequence[Pair], *, beam: int = 1,
             buckets: Sequence[tuple[int, int]] = LENGTH_BUCKETS) -> EvalResult:
    """Corpus BLEU and chrF (sacrebleu) of ``translator`` on token pairs, and BLEU per
    source-length bucket (a bucket with no sentences is left out)."""
    try:
        import sacrebleu
    except ImportError:
        raise ImportError("evaluation needs sacrebleu: pip install 'attend[translate]'") from None
    if not pairs:
        raise ValueError("no pairs to evaluate")
    outs = translator.translate([s for s, _ in pairs], beam=beam)
    hyps = [o.text for o in outs]
    refs = [" ".join(t) for _, t in pairs]
    bleu = _bleu(hyps, refs)
    chrf = float(sacrebleu.corpus_chrf(hyps, [refs]).score)
    rows = []
    for lo, hi in buckets:
        sel = [i for i, (s, _) in enumerate(pairs) if lo <= len(s) <= hi]
        if sel:
            rows.append({"lo": lo, "hi": hi, "n": len(sel), "bleu": round(_bleu([hyps[i] for i in sel], [refs[i] for i in sel]), 2)})
    return EvalResult(bleu, chrf, len(pairs), rows, outs)
