"""The translator as a whole: vocabularies + a model of one of the kinds in
:mod:`~attend.apps.translate.presets` + training + decoding, kept in one run folder
(:class:`~attend.apps.translate.run.RunFolder`, which checks every file it reads).

Decoding never produces ``<pad>`` or ``<bos>``; source words missing from the vocabulary
are shown as ``<unk>`` (what the model reads) and listed in :attr:`Translation.unknown`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor

from ... import _check as check
from ...data import Vocab, make_batch, tokenize
from ...data.text import UNK
from ...models import Seq2Seq, Seq2SeqConfig, TransformerConfig, TransformerSeq2Seq
from .config import TrainConfig
from .presets import ModelConfig, build_model, model_template, with_vocab
from .run import RunConfig, RunFolder, run_digest
from .search import MAX_BEAM, beam_search, greedy
from .training import Trainer

__all__ = ["Translator", "Translation", "train_translator", "fit_translator", "pairs_sha256"]

Pair = tuple[list[str], list[str]]


@dataclass
class Translation:
    source: list[str]  # source tokens as the model read them (a word not in the vocabulary is "<unk>")
    tokens: list[str]  # output tokens
    weights: Optional[Tensor]  # (len(tokens), len(source)); None for the no-attention model
    score: float  # log-probability
    unknown: list[str] = field(default_factory=list)  # source words not in the vocabulary, in order

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
        """Read a run folder: its config and weights are checked before the model is built
        (:class:`~attend.apps.translate.run.RunFolder`)."""
        run = RunFolder(folder)
        config = run.read_config()
        weights = run.load_weights(config)
        return cls._with_weights(build_model(config.model), weights, config)

    @classmethod
    def _with_weights(cls, model, weights: dict, config: RunConfig) -> "Translator":
        """``model`` (built for ``config``) with ``weights`` (checked against it)."""
        model.load_state_dict(weights)
        return cls(model, config.src_vocab, config.tgt_vocab)

    def encode_sources(self, sources: Sequence[Sequence[str] | str]) -> list[list[str]]:
        toks = [tokenize(s) if isinstance(s, str) else list(s) for s in sources]
        for i, t in enumerate(toks):
            if not t:
                raise ValueError(f"source sentence {i} is empty after tokenisation")
            if not all(isinstance(w, str) for w in t):
                raise TypeError(f"source sentence {i}: expected a string or a list of token strings, got tokens of "
                                f"type {sorted({type(w).__name__ for w in t if not isinstance(w, str)})}")
        return toks

    @torch.no_grad()
    def translate(self, sources: Sequence[Sequence[str] | str], *, beam: int = 1, max_len: Optional[int] = None,
                  length_penalty: float = 1.0, batch_size: int = 128) -> list[Translation]:
        """Translate strings (tokenised here) or token lists, in length-sorted batches."""
        if isinstance(sources, str):
            raise TypeError("sources must be a list of sentences, not one string")
        check.integer(batch_size, "batch_size", low=1)
        check.integer(beam, "beam", low=1, high=MAX_BEAM)  # (checked here too: beam 1 takes the greedy path)
        check.number(length_penalty, "length_penalty", low=0)
        toks = self.encode_sources(sources)
        order = sorted(range(len(toks)), key=lambda i: len(toks[i]))
        out: list[Optional[Translation]] = [None] * len(toks)
        self.model.eval()
        hidden = (Vocab.pad_id, Vocab.bos_id, Vocab.eos_id)
        for p in range(0, len(order), batch_size):
            idx = order[p : p + batch_size]
            b = make_batch([(self.src_vocab.encode(toks[i]), []) for i in idx])
            if beam == 1:
                hyps = greedy(self.model, b.src, b.src_lengths, max_len=max_len)
            else:
                hyps = beam_search(self.model, b.src, b.src_lengths, beam=beam, max_len=max_len,
                                   length_penalty=length_penalty)
            for i, h in zip(idx, hyps):
                keep = [j for j, t in enumerate(h.tokens) if t not in hidden]  # the search never picks them
                weights = None if h.weights is None else h.weights[keep]
                shown = [t if t in self.src_vocab else UNK for t in toks[i]]
                unknown = [t for t in toks[i] if t not in self.src_vocab]
                out[i] = Translation(shown, self.tgt_vocab.decode([h.tokens[j] for j in keep], strip=False),
                                     weights, h.score, unknown)
        return out  # type: ignore[return-value]


def pairs_sha256(train: Sequence[Pair], valid: Sequence[Pair]) -> str:
    """What a resume compares the data by: a digest of the training and validation pairs."""
    h = hashlib.sha256()
    for part in (train, valid):
        for s, t in part:
            h.update((" ".join(s) + "\t" + " ".join(t) + "\n").encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def _template(model: Optional[Mapping[str, Any]] | ModelConfig) -> ModelConfig:
    return model if isinstance(model, (Seq2SeqConfig, TransformerConfig)) else model_template(model)


def train_translator(train: Sequence[Pair], valid: Sequence[Pair], out_dir: str | os.PathLike, *,
                     model: Optional[Mapping[str, Any]] | ModelConfig = None,
                     train_config: Optional[TrainConfig] = None, min_freq: int = 1, data: Optional[dict] = None,
                     resume: bool = False, progress: bool = True, on_step=None,
                     held_out: Optional[dict[str, Sequence[Pair]]] = None) -> tuple[Translator, list[dict]]:
    """Build vocabularies from ``train`` (token pairs; words seen fewer than ``min_freq``
    times become ``<unk>``), train a model with ``model`` options (``Seq2SeqConfig`` fields
    other than the vocabulary sizes for the RNN model; with ``"kind": "transformer"``,
    ``TransformerConfig`` fields; or a config from
    :func:`~attend.apps.translate.presets.model_template`), and return the translator with
    the best validation loss and the history.

    The training owns ``out_dir`` while it runs (:class:`~attend.apps.translate.run.RunFolderBusy`
    if another training does). With ``resume=True`` the folder's config is reused and
    training continues from ``state.safetensors``; the given settings (model options,
    training config, ``min_freq``, data notes, the pairs themselves) must match the saved
    ones, and the state is checked completely before anything is loaded or written.

    ``held_out`` (file name -> token pairs, e.g. ``{"test.tsv": split.test}``) is written
    into a new run folder as TSV, once everything else is checked (not on resume: the run
    keeps its own).
    """
    template = _template(model)
    train_config = train_config or TrainConfig()
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    run = RunFolder(out_dir)
    with run.lock():
        saved = run.start(resume=resume)
        return fit_translator(run, saved, train, valid, template=template,
                              given=None if model is None else dict(model) if isinstance(model, Mapping)
                              else template.to_dict(),
                              train_config=train_config, min_freq=min_freq, data=data, progress=progress,
                              on_step=on_step, held_out=held_out)


def fit_translator(run: RunFolder, saved: Optional[RunConfig], train: Sequence[Pair], valid: Sequence[Pair], *,
                   template: ModelConfig, given: Optional[Mapping[str, Any]], train_config: TrainConfig,
                   min_freq: int = 1, data: Optional[dict] = None, progress: bool = True, on_step=None,
                   held_out: Optional[dict[str, Sequence[Pair]]] = None, ranks=None) -> tuple[Translator, list[dict]]:
    """:func:`train_translator`'s work in a run folder this thread owns, whose
    :meth:`~attend.apps.translate.run.RunFolder.start` gave ``saved`` (the run's config on a
    resume, None for a new run). ``given``: the model settings given, which a resume compares.
    ``ranks``: a data-parallel training's processes (:class:`attend.distributed.Ranks`):
    every rank builds the same vocabularies and model; rank 0 alone writes the folder."""
    from ...distributed.ranks import Ranks

    ranks = ranks if ranks is not None else Ranks()
    digest_pairs = pairs_sha256(train, valid)
    if saved is not None:
        run.check_resume(saved, model=given, train_config=train_config, min_freq=min_freq, data=data,
                         pairs_sha256=digest_pairs)
        mcfg, src_vocab, tgt_vocab = saved.model, saved.src_vocab, saved.tgt_vocab
    else:
        if not train:
            raise ValueError("no training pairs")
        src_vocab = Vocab.build((s for s, _ in train), min_freq=min_freq)
        tgt_vocab = Vocab.build((t for _, t in train), min_freq=min_freq)
        for side, v in (("source", src_vocab), ("target", tgt_vocab)):
            if len(v) <= 4:
                raise ValueError(f"min_freq={min_freq} leaves no {side} word in the vocabulary "
                                 f"(no word occurs {min_freq} times in the training pairs)")
        mcfg = with_vocab(template, len(src_vocab), len(tgt_vocab))
    torch.manual_seed(train_config.seed)
    net = build_model(mcfg)

    def ids(pairs):
        return [(src_vocab.encode(s), tgt_vocab.encode(t)) for s, t in pairs]

    trainer = Trainer(net, train_config, ids(train), ids(valid), run.path, progress=progress,
                      metadata={"run": run_digest(mcfg, src_vocab, tgt_vocab)}, ranks=ranks)
    resume = saved is not None
    if not resume:
        if ranks.main:
            run.clear()  # (a forced new run over an old one: none of the old run's weights or state stays)
            run.write_splits(held_out or {})
            saved = run.write_config(model=mcfg, train=train_config, src_vocab=src_vocab, tgt_vocab=tgt_vocab,
                                     data=data or {}, min_freq=min_freq, pairs_sha256=digest_pairs)
        ranks.barrier()  # rank 0's config is written: the others read it back (checked as any config)
        if not ranks.main:
            saved = run.read_config()
    history = trainer.fit(resume=resume, on_step=on_step)
    ranks.barrier()  # rank 0 has written the best weights
    return Translator._with_weights(net, run.load_weights(saved), saved), history
