"""A translator's run folder, with one owner: this module. It alone knows the layout and
does every read and write of it; a training holds its lock while it runs.

    config.json          format, model and training settings, both vocabularies, data notes
    model.safetensors    the weights with the best validation loss so far
    state.safetensors    everything needed to resume (:mod:`attend.apps.translate.state`)
    history.json         one entry per evaluation
    valid.tsv, test.tsv  the held-out splits (written by ``attend translate train``)

Every file is written atomically (:func:`attend._io.atomic_write`); the same content gives
the same bytes (JSON keys and safetensors metadata are sorted).

**Checked once, before anything is built.** :meth:`RunFolder.read_config` checks
``config.json`` field by field (types, ranges, vocabularies of the sizes the model config
says); :meth:`RunFolder.load_weights` checks the sizes the config gives against the tensors
the weights file's header declares, then every tensor's name, shape and dtype, and the
run the weights belong to (a digest of the model settings and vocabularies) — errors name
the file and the field or tensor, and nothing is allocated for a config that does not fit
its weights. A resume is checked in one place: :meth:`RunFolder.start` (there is a run to
resume, its config) and :meth:`RunFolder.check_resume` (the settings given are the run's,
the state's tensors fit its config); the state's own fields are checked as it is read
(:func:`attend.apps.translate.state.check_state_header`).

**One owner.** A training holds an exclusive lock on its run folder for as long as it runs
(``flock`` on the folder itself, so no lock file is added): a second training into the
same folder stops at once with :class:`RunFolderBusy`, before it changes anything. The
lock is released when the training ends or its process dies (the kernel drops it), so a
killed run never leaves a stale lock. Taking the lock changes nothing in the folder (a
refused command leaves it as it was; a folder the lock created is removed again if the
work fails before writing into it); the temp files of a killed save are removed by the next
save of the same file (:func:`attend._io.atomic_write`: only names its own writer makes,
``.tmp-<8 characters>-<file name>``, and only those no live writer holds).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import warnings
from typing import Any, Iterator, Mapping, NamedTuple, Optional, Sequence

from ... import _check, _io
from ...data import Vocab
from .config import TrainConfig
from .presets import ModelConfig, check_weights, model_config

__all__ = ["RunFolder", "RunFolderBusy", "RunFolderRefused", "RunConfig", "ResumeMismatch", "check_history",
           "resume_differences", "run_digest", "FORMAT"]

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

FORMAT = "attend.translator/1"
#: the fields of a run's config.json (write_config writes them all)
CONFIG_FIELDS = ("format", "attend_version", "model", "train", "data", "min_freq", "pairs_sha256", "src_vocab",
                 "tgt_vocab")
Pair = tuple[list[str], list[str]]


class RunFolderBusy(RuntimeError):
    """Another training owns this run folder."""


class RunFolderRefused(ValueError):
    """The folder is not one this training may use (nothing was changed): ``reason`` is
    ``"not_a_folder"`` (a file), ``"not_empty"`` (a new run, without ``force``),
    ``"nothing_to_resume"`` or ``"reads_its_own_file"`` (a new run would overwrite its data)."""

    def __init__(self, reason: str, path: str, message: str):
        self.reason, self.path = reason, path
        super().__init__(message)


class ResumeMismatch(ValueError):
    """A resume whose settings or data differ from the run's: ``diffs`` lists
    ``(field, run's value, given value)`` as :func:`resume_differences` names them, ``saved``
    is the run's ``config.json`` and ``data`` the data notes given. Raised before anything
    is loaded or written."""

    def __init__(self, config_path: str, saved: dict, diffs: list[tuple[str, Any, Any]], data: Optional[dict] = None):
        self.config_path, self.saved, self.diffs, self.data = config_path, saved, diffs, dict(data or {})
        listed = ", ".join(f"{f} (run: {a!r}, given: {b!r})" for f, a, b in diffs)
        super().__init__(f"{config_path}: different training settings from the run's: {listed}; "
                         "resume with the same ones")


class RunConfig(NamedTuple):
    """``config.json``, checked: the document and what it describes."""
    doc: dict
    model: ModelConfig
    train: TrainConfig
    src_vocab: Vocab
    tgt_vocab: Vocab


# Locks held by this process: (st_dev, st_ino) of the folder -> [count, thread id, fd]. A
# flock belongs to an open file, so the same process asking again (the application, then
# the trainer it calls) must reuse its lock instead of conflicting with itself.
_HELD: dict[tuple[int, int], list] = {}
_HELD_LOCK = threading.Lock()


def check_history(history: Any, path: str, where: str = "history") -> list[dict]:
    """A training history (a list of evaluation records) from a file: each entry an object
    with integer ``step``/``epoch`` (>= 0, steps not decreasing) and numeric losses, rate
    and timings; an error names the file and the entry."""
    if not isinstance(history, list):
        raise ValueError(f"{path}: {where} must be a list of evaluation records, got {_io.json_type(history)}")
    last = -1
    for i, h in enumerate(history):
        doc = _io.JsonDoc(h, path, f"{where}[{i}].")
        step = doc.int("step", lo=0)
        doc.int("epoch", lo=0)
        for k in ("train_loss", "valid_loss"):
            v = doc.raw.get(k)
            if not _check.is_number(v) or (math.isfinite(v) and v < 0):
                raise doc.error(k, f"must be a number >= 0, got {_io.json_type(v)} {v!r}")
        for k in ("lr", "seconds", "tokens_per_s"):
            doc.number(k, lo=0)
        if step < last:
            raise doc.error("step", f"is {step}, before the previous entry's {last}")
        last = step
    return history


def run_digest(model: ModelConfig, src_vocab: Vocab, tgt_vocab: Vocab) -> str:
    """What weights belong to: the model settings and both vocabularies."""
    text = json.dumps({"model": model.to_dict(), "src_vocab": src_vocab.to_list(), "tgt_vocab": tgt_vocab.to_list()},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def resume_differences(saved: dict, *, model: Optional[Mapping] = None, train_config: Optional[TrainConfig] = None,
                       min_freq: Optional[int] = None, data: Optional[dict] = None,
                       pairs_sha256: Optional[str] = None) -> list[tuple[str, Any, Any]]:
    """Settings given for a resume that differ from the run's ``config.json`` (``saved``):
    ``(field, run's value, given value)``, field names as ``model.hidden_dim``,
    ``train.epochs``, ``min_freq``, ``data.valid``, ``pairs``. ``model`` holds the model
    settings given (vocabulary sizes, which come from the data, are not settings)."""
    diffs: list[tuple[str, Any, Any]] = []
    if model is not None:
        theirs = dict(saved.get("model") or {})
        kind = model.get("kind", "rnn")
        if theirs.get("kind", "rnn") != kind:
            diffs.append(("model.kind", theirs.get("kind", "rnn"), kind))
        else:
            for k, v in sorted(model.items()):
                if k not in ("kind", "src_vocab", "tgt_vocab") and k in theirs and theirs[k] != v:
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


class RunFolder:
    """The files of one training run (see the module docstring)."""

    CONFIG = "config.json"
    MODEL = "model.safetensors"
    STATE = "state.safetensors"
    HISTORY = "history.json"
    VALID = "valid.tsv"
    TEST = "test.tsv"
    WRITES = (CONFIG, MODEL, STATE, HISTORY, VALID, TEST)  # what a training writes into its folder

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    config_path = property(lambda self: self.file(self.CONFIG))
    model_path = property(lambda self: self.file(self.MODEL))
    state_path = property(lambda self: self.file(self.STATE))
    history_path = property(lambda self: self.file(self.HISTORY))

    # -- ownership ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator["RunFolder"]:
        """Own the folder (created if missing) for the ``with`` block: exclusive and
        non-blocking; :class:`RunFolderBusy` if another process (or another thread of
        this one) owns it. Re-entrant within one thread. A folder it created is removed
        again if the block fails and leaves it empty."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunFolderRefused("not_a_folder", self.path, f"run folder is a file, not a folder: {self.path}")
        created = not os.path.isdir(self.path)
        os.makedirs(self.path, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        st = os.fstat(fd)
        key, me = (st.st_dev, st.st_ino), threading.get_ident()
        with _HELD_LOCK:
            held = _HELD.get(key)
            if held is not None:
                os.close(fd)
                if held[1] != me:
                    raise RunFolderBusy(self._busy())
                held[0] += 1
                fd = -1
            else:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        os.close(fd)
                        raise RunFolderBusy(self._busy()) from None
                    except OSError as e:  # a file system without locks (some network mounts): say so
                        warnings.warn(f"run folder {self.path} cannot be locked ({e}); make sure no other training "
                                      "writes into it", RuntimeWarning, stacklevel=3)
                _HELD[key] = [1, me, fd]
        try:
            yield self
        except BaseException:
            if created and os.path.isdir(self.path) and not os.listdir(self.path):
                os.rmdir(self.path)  # a refused or failed training leaves no trace
            raise
        finally:
            with _HELD_LOCK:
                held = _HELD[key]
                held[0] -= 1
                if held[0] == 0:
                    del _HELD[key]
                    os.close(held[2])  # closing the folder's descriptor releases the flock

    def _busy(self) -> str:
        return (f"run folder {self.path} is in use by another training (a run folder has one owner at a time); "
                "wait for it to finish or use another folder")

    def owned(self) -> bool:
        """Whether this thread holds the folder's lock."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        held = _HELD.get((st.st_dev, st.st_ino))
        return held is not None and held[1] == threading.get_ident()

    def start(self, *, resume: bool, force: bool = True, reads: Sequence[str] = ()) -> Optional[RunConfig]:
        """Under the lock, before a training reads its data: for a resume, a state to resume
        and the run's config, checked (returned); for a new run, an empty folder unless
        ``force``, and none of the files it ``reads`` among those it writes
        (:class:`RunFolderRefused` otherwise)."""
        if not self.owned():
            raise RuntimeError(f"{self!r}.start() needs the folder's lock")
        if resume:
            if os.path.lexists(self.state_path):  # (a folder or a link to nothing by that name: said so)
                _check.existing_file(self.state_path, "resume state")
            if not os.path.isfile(self.state_path):
                raise RunFolderRefused("nothing_to_resume", self.path,
                                       f"nothing to resume in {self.path} (no {self.STATE})")
            return self.read_config()
        if not force and os.listdir(self.path):
            raise RunFolderRefused("not_empty", self.path, f"{self.path} is not empty: a new training needs an empty "
                                                           "run folder (or force=True; resume=True continues its run)")
        own = {os.path.realpath(self.file(n)): n for n in self.WRITES}
        for path in reads:
            if os.path.realpath(path) in own:
                raise RunFolderRefused("reads_its_own_file", self.path,
                                       f"{path} is the run's own {own[os.path.realpath(path)]} in {self.path}: a new "
                                       "training there would overwrite the data it reads; copy it elsewhere first")
        return None

    def clear(self) -> None:
        """Remove a previous run's weights, state and history before a new run writes its config:
        a new run killed early then leaves nothing that another run's files could be taken for."""
        for name in (self.STATE, self.MODEL, self.HISTORY):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.file(name))

    def check_resume(self, saved: RunConfig, **given) -> None:
        """The settings ``given`` (as :func:`resume_differences` takes them) must be the run's
        (:class:`ResumeMismatch`), and the state's tensors must fit the run's config (its
        sizes, checked before a model is built)."""
        diffs = resume_differences(saved.doc, **given)
        if diffs:
            raise ResumeMismatch(self.config_path, saved.doc, diffs, given.get("data"))
        infos, _ = self.read_state_header()
        check_weights(saved.model, {k[len("model."):]: v for k, v in infos.items() if k.startswith("model.")},
                      config_path=self.config_path, weights_path=f"{self.state_path} (its tensors 'model.*')",
                      given=saved.doc["model"])

    # -- config.json ----------------------------------------------------------------------------
    def write_config(self, *, model: ModelConfig, train: TrainConfig, src_vocab: Vocab, tgt_vocab: Vocab,
                     data: Mapping, min_freq: int, pairs_sha256: str) -> RunConfig:
        """Write ``config.json`` for a new run; returns what it now says."""
        from ... import __version__

        doc = {"format": FORMAT, "attend_version": __version__, "model": model.to_dict(), "train": train.to_dict(),
               "data": dict(data), "min_freq": min_freq, "pairs_sha256": pairs_sha256,
               "src_vocab": src_vocab.to_list(), "tgt_vocab": tgt_vocab.to_list()}
        _io.write_json(self.config_path, doc)
        return RunConfig(doc, model, train, src_vocab, tgt_vocab)

    def read_config(self) -> RunConfig:
        """``config.json``, checked field by field; errors name the file and the field."""
        if os.path.isfile(self.path):
            raise NotADirectoryError(f"checkpoint is a file, not a run folder: {self.path}")
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"checkpoint folder not found: {self.path}")
        path = self.config_path
        doc = _io.JsonDoc(_io.read_json(path, "checkpoint config"), path)
        unknown = sorted(set(doc.raw) - set(CONFIG_FIELDS)) if isinstance(doc.raw, dict) else []
        if unknown and doc.raw.get("format") == FORMAT:
            raise ValueError(f"{path}: unknown fields "
                             + ", ".join(f"{u!r}{_check.nearest(u, CONFIG_FIELDS)}" for u in unknown))
        if doc.raw.get("format") != FORMAT:
            raise ValueError(f"{path}: not an attend translator config (expected format {FORMAT!r}, "
                             f"got {doc.raw.get('format')!r})")
        model = doc.obj("model")
        try:
            mcfg = model_config(model.raw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: malformed config (model: {e})") from None
        train = doc.obj("train")  # (its own error names the file once)
        try:
            tcfg = TrainConfig.from_dict(train.raw)
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
        return RunConfig(doc.raw, mcfg, tcfg, vocabs[0], vocabs[1])

    # -- model.safetensors ----------------------------------------------------------------------
    def save_weights(self, tensors, metadata: Optional[Mapping[str, str]] = None) -> str:
        _io.save_tensors(self.model_path, tensors, metadata)
        return self.model_path

    def load_weights(self, config: RunConfig) -> dict:
        """The best weights, checked against ``config`` (sizes, names, shapes, dtypes, the run
        they belong to) before they are loaded."""
        path = self.model_path
        infos, meta = _io.read_header(path, "model weights")
        check_weights(config.model, infos, config_path=self.config_path, weights_path=path, given=config.doc["model"])
        self._check_weights_run(meta, config)
        tensors, _ = _io.load_tensors(path, "model weights")
        _io.check_state_dict(path, infos, tensors)  # now their values too: NaN or inf is refused, naming the tensor
        return tensors

    def _check_weights_run(self, meta: Mapping[str, str], config: RunConfig) -> None:
        if "model_config" in meta:
            try:
                theirs = json.loads(meta["model_config"])
            except (ValueError, RecursionError):  # JSONDecodeError, or an integer too long to convert
                theirs = None
            mine = config.model.to_dict()
            if theirs != mine:
                diff = sorted(k for k in set(mine) | set(theirs or {})
                              if not isinstance(theirs, dict) or theirs.get(k) != mine.get(k))
                raise ValueError(f"{self.config_path}: model settings {diff} differ from those {self.model_path} "
                                 "was trained with")
        if "run" in meta and meta["run"] != run_digest(config.model, config.src_vocab, config.tgt_vocab):
            raise ValueError(f"{self.model_path} was trained with other vocabularies or model settings than "
                             f"{self.config_path} gives (the files come from different runs)")

    # -- state.safetensors ----------------------------------------------------------------------
    def save_state(self, tensors, metadata: Mapping[str, str]) -> str:
        _io.save_tensors(self.state_path, tensors, metadata)
        return self.state_path

    def read_state_header(self) -> tuple[dict, dict]:
        return _io.read_header(self.state_path, "training state")

    def load_state(self) -> dict:
        tensors, _ = _io.load_tensors(self.state_path, "training state")
        return tensors

    # -- history.json ---------------------------------------------------------------------------
    def write_history(self, history: Sequence[Mapping]) -> str:
        _io.write_json(self.history_path, list(history))
        return self.history_path

    def read_history(self) -> list[dict]:
        path = self.history_path
        return check_history(_io.read_json(path, "training history"), path, "the history")

    # -- valid.tsv, test.tsv --------------------------------------------------------------------
    def write_splits(self, splits: Mapping[str, Sequence[Pair]]) -> None:
        """Held-out token pairs (file name -> pairs) as TSV files, tokens joined by spaces."""
        for name, pairs in splits.items():
            if name not in (self.VALID, self.TEST):
                raise ValueError(f"a split is {self.VALID} or {self.TEST}, got {name!r}")
            _io.atomic_write(self.file(name),
                             "".join(f"{' '.join(s)}\t{' '.join(t)}\n" for s, t in pairs).encode("utf-8"))
