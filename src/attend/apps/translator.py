"""The translator as a whole: vocabularies + :class:`~attend.models.Seq2Seq` + training +
decoding + evaluation, saved in one run folder (:class:`attend.runs.RunFolder`):

    config.json          format, model config, training config, both vocabularies, data notes
    model.safetensors    best weights (by validation loss)
    state.safetensors    training state, for ``--resume``
    history.json         validation loss per evaluation

Loading checks the files before building anything: ``config.json`` field by field (types,
ranges, vocabularies of the sizes the model config says), then the sizes the config gives
against the tensors the weights file's header declares, then every tensor's name, shape and
dtype — errors name the file and the field or tensor, and nothing is allocated for a config
that does not fit its weights. The weights carry a digest of the model settings and
vocabularies they were trained with, so weights from another run are refused.

Decoding never produces ``<pad>`` or ``<bos>``; source words missing from the vocabulary
are shown as ``<unk>`` (what the model reads) and listed in :attr:`Translation.unknown`.

BLEU and chrF come from sacrebleu, computed on the tokenised, lower-cased text that the
model reads and writes (``tokenize="none"``), as Bahdanau et al. scored tokenised output.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from .. import _io
from ..data import Vocab, make_batch, tokenize
from ..data.text import UNK
from ..models import Seq2Seq, Seq2SeqConfig, TransformerConfig, TransformerSeq2Seq, beam_search, build_model, greedy
from ..models import check_weights as _check_weights
from ..models import model_config as _model_config
from ..runs import RunFolder
from ..train import TrainConfig, Trainer

__all__ = ["Translator", "Translation", "train_translator", "evaluate", "EvalResult", "LENGTH_BUCKETS", "FORMAT",
           "read_run_config", "resume_differences", "ResumeMismatch"]

FORMAT = "attend.translator/1"
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


def read_run_config(folder: str | os.PathLike):
    """``config.json`` of a translator run folder, checked field by field. Returns
    ``(doc, model_config, src_vocab, tgt_vocab)``; errors name the file and the field."""
    run = RunFolder(folder)
    path = run.config_path
    doc = _io.JsonDoc(run.read_config(), path)
    if doc.raw.get("format") != FORMAT:
        raise ValueError(f"{path}: not an attend translator config (expected format {FORMAT!r}, "
                         f"got {doc.raw.get('format')!r})")
    model = doc.obj("model")
    try:
        mcfg = _model_config(model.raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: malformed config (model: {e})") from None
    try:
        TrainConfig.from_dict(doc.obj("train").raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: malformed config (train: {e})") from None
    vocabs = []
    for name, size in (("src_vocab", mcfg.src_vocab), ("tgt_vocab", mcfg.tgt_vocab)):
        tokens = doc.list(name, of=str)
        if len(tokens) != size:
            raise doc.error(name, f"has {len(tokens)} tokens, but model.{name} is {size}")
        try:
            vocabs.append(Vocab(tokens))
        except ValueError as e:
            raise doc.error(name, f"is not a vocabulary: {e}") from None
    doc.int("min_freq", lo=1, default=1)
    doc.obj("data", default=None)
    doc.str("pairs_sha256", default=None)
    return doc.raw, mcfg, vocabs[0], vocabs[1]


def _run_digest(mcfg, src_vocab: Vocab, tgt_vocab: Vocab) -> str:
    """What weights belong to: the model settings and both vocabularies."""
    text = json.dumps({"model": mcfg.to_dict(), "src_vocab": src_vocab.to_list(), "tgt_vocab": tgt_vocab.to_list()},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_run_metadata(weights_path: str, config_path: str, meta: dict, mcfg, digest: str) -> None:
    if "model_config" in meta:
        try:
            theirs = json.loads(meta["model_config"])
        except (ValueError, RecursionError):  # JSONDecodeError, or an integer too long to convert
            raise ValueError(f"{weights_path}: metadata 'model_config' is not valid JSON") from None
        mine = mcfg.to_dict()
        if theirs != mine:
            diff = sorted(k for k in set(mine) | set(theirs or {}) if not isinstance(theirs, dict) or theirs.get(k) != mine.get(k))
            raise ValueError(f"{config_path}: model settings {diff} differ from those {weights_path} was trained with")
    if "run" in meta and meta["run"] != digest:
        raise ValueError(f"{weights_path} was trained with other vocabularies or model settings than {config_path} "
                         "gives (the files come from different runs)")


class Translator:
    """A trained model with its vocabularies. ``Translator.load(folder)`` reads a run folder."""

    def __init__(self, model: Seq2Seq | TransformerSeq2Seq, src_vocab: Vocab, tgt_vocab: Vocab):
        if model.config.src_vocab != len(src_vocab) or model.config.tgt_vocab != len(tgt_vocab):
            raise ValueError(f"vocabulary sizes ({len(src_vocab)}, {len(tgt_vocab)}) do not match the model config "
                             f"({model.config.src_vocab}, {model.config.tgt_vocab})")
        self.model, self.src_vocab, self.tgt_vocab = model.eval(), src_vocab, tgt_vocab

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Translator":
        """Read a run folder, checking ``config.json`` and the weights' header before building
        the model (see the module docstring)."""
        folder = os.fspath(folder)
        if os.path.isfile(folder):
            raise NotADirectoryError(f"checkpoint is a file, not a run folder: {folder}")
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"checkpoint folder not found: {folder}")
        run = RunFolder(folder)
        _, mcfg, src_vocab, tgt_vocab = read_run_config(folder)
        path = run.model_path
        infos, meta = _io.read_header(path, "model weights")
        _check_weights(mcfg, infos, config_path=run.config_path, weights_path=path)
        _check_run_metadata(path, run.config_path, meta, mcfg, _run_digest(mcfg, src_vocab, tgt_vocab))
        tensors, _ = _io.load_tensors(path, "model weights")
        model = build_model(mcfg)
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


def _config_doc(model_cfg: Seq2SeqConfig | TransformerConfig, train_cfg: TrainConfig, src_vocab: Vocab, tgt_vocab: Vocab,
                data: dict, min_freq: int, pairs_sha256: str) -> dict:
    from .. import __version__

    return {"format": FORMAT, "attend_version": __version__, "model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
            "data": data, "min_freq": min_freq, "pairs_sha256": pairs_sha256,
            "src_vocab": src_vocab.to_list(), "tgt_vocab": tgt_vocab.to_list()}


def _pairs_sha256(train: Sequence[Pair], valid: Sequence[Pair]) -> str:
    h = hashlib.sha256()
    for part in (train, valid):
        for s, t in part:
            h.update((" ".join(s) + "\t" + " ".join(t) + "\n").encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def resume_differences(saved: dict, *, model: Optional[dict] = None, train_config: Optional[TrainConfig] = None,
                       min_freq: Optional[int] = None, data: Optional[dict] = None,
                       pairs_sha256: Optional[str] = None) -> list[tuple[str, Any, Any]]:
    """Settings given for a resume that differ from the run's ``config.json`` (``saved``):
    ``(field, run's value, given value)``, field names as ``model.hidden_dim``,
    ``train.epochs``, ``min_freq``, ``data.valid``, ``pairs``."""
    diffs: list[tuple[str, Any, Any]] = []
    if model is not None:
        theirs = dict(saved.get("model") or {})
        kind = model.get("kind", "rnn")
        if theirs.get("kind", "rnn") != kind:
            diffs.append(("model.kind", theirs.get("kind", "rnn"), kind))
        else:
            for k, v in sorted(model.items()):
                if k != "kind" and k in theirs and theirs[k] != v:
                    diffs.append((f"model.{k}", theirs[k], v))
    if train_config is not None:
        theirs, mine = dict(saved.get("train") or {}), train_config.to_dict()
        diffs += [(f"train.{k}", theirs.get(k), mine.get(k)) for k in sorted(set(theirs) | set(mine))
                  if theirs.get(k) != mine.get(k)]
    if min_freq is not None and saved.get("min_freq", min_freq) != min_freq:
        diffs.append(("min_freq", saved.get("min_freq"), min_freq))
    if data is not None:
        theirs = dict(saved.get("data") or {})
        diffs += [(f"data.{k}", theirs.get(k), data.get(k)) for k in sorted(set(theirs) | set(data))
                  if k != "file" and theirs.get(k) != data.get(k)]
    if pairs_sha256 is not None and saved.get("pairs_sha256", pairs_sha256) != pairs_sha256:
        diffs.append(("pairs", "the run's training and validation pairs", "other pairs"))
    return diffs


class ResumeMismatch(ValueError):
    """A resume whose settings or data differ from the run's: ``diffs`` lists
    ``(field, run's value, given value)`` as :func:`resume_differences` names them, ``saved``
    is the run's ``config.json``. Raised before anything is loaded or written."""

    def __init__(self, config_path: str, saved: dict, diffs: list[tuple[str, Any, Any]]):
        self.config_path, self.saved, self.diffs = config_path, saved, diffs
        listed = ", ".join(f"{f} (run: {a!r}, given: {b!r})" for f, a, b in diffs)
        super().__init__(f"{config_path}: different training settings from the run's: {listed}; "
                         "resume with the same ones")


def train_translator(train: Sequence[Pair], valid: Sequence[Pair], out_dir: str | os.PathLike, *,
                     model: Optional[dict] = None, train_config: Optional[TrainConfig] = None,
                     min_freq: int = 1, data: Optional[dict] = None, resume: bool = False,
                     progress: bool = True, on_step=None,
                     held_out: Optional[dict[str, Sequence[Pair]]] = None) -> tuple[Translator, list[dict]]:
    """Build vocabularies from ``train`` (token pairs; words seen fewer than ``min_freq``
    times become ``<unk>``), train a model with ``model`` options (``Seq2SeqConfig`` fields
    other than the vocabulary sizes for the RNN model; with ``"kind": "transformer"``,
    ``TransformerConfig`` fields), and return the translator with the best validation loss
    and the history.

    The training owns ``out_dir`` while it runs (:class:`attend.runs.RunFolderBusy` if
    another training does). With ``resume=True`` the folder's config is reused and training
    continues from ``state.safetensors``; the given settings (model options, training
    config, ``min_freq``, data notes, the pairs themselves) must match the saved ones, and
    the state is checked completely before anything is loaded or written.

    ``held_out`` (file name -> token pairs, e.g. ``{"test.tsv": split.test}``) is written
    into a new run folder as TSV, once everything else is checked (not on resume: the run
    keeps its own).
    """
    out_dir = os.fspath(out_dir)
    train_config = train_config or TrainConfig()
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    run = RunFolder(out_dir)
    digest_pairs = _pairs_sha256(train, valid)
    with run.lock():
        if resume:
            saved, mcfg, src_vocab, tgt_vocab = read_run_config(out_dir)
            diffs = resume_differences(saved, model=model, train_config=train_config, min_freq=min_freq, data=data,
                                       pairs_sha256=digest_pairs)
            if diffs:
                raise ResumeMismatch(run.config_path, saved, diffs)
            infos, _ = _io.read_header(run.state_path, "training state")
            _check_weights(mcfg, {k[len("model."):]: v for k, v in infos.items() if k.startswith("model.")},
                           config_path=run.config_path, weights_path=run.state_path)
            doc = None
        else:
            if not train:
                raise ValueError("no training pairs")
            src_vocab = Vocab.build((s for s, _ in train), min_freq=min_freq)
            tgt_vocab = Vocab.build((t for _, t in train), min_freq=min_freq)
            for side, v in (("source", src_vocab), ("target", tgt_vocab)):
                if len(v) <= 4:
                    raise ValueError(f"min_freq={min_freq} leaves no {side} word in the vocabulary "
                                     f"(no word occurs {min_freq} times in the training pairs)")
            mcfg = _model_config(dict(model or {}, src_vocab=len(src_vocab), tgt_vocab=len(tgt_vocab)))
            doc = _config_doc(mcfg, train_config, src_vocab, tgt_vocab, data or {}, min_freq, digest_pairs)
        torch.manual_seed(train_config.seed)
        net = build_model(mcfg)

        def ids(pairs):
            return [(src_vocab.encode(s), tgt_vocab.encode(t)) for s, t in pairs]

        trainer = Trainer(net, train_config, ids(train), ids(valid), out_dir, progress=progress,
                          metadata={"run": _run_digest(mcfg, src_vocab, tgt_vocab)})
        if doc is not None:
            for name, pairs in (held_out or {}).items():
                run.write_pairs(name, pairs)
            run.write_config(doc)
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
