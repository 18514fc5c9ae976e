"""A run folder: the one owner of its layout, its writes and its lock.

A training's run folder holds::

    config.json          model and training settings, vocabularies, data provenance (the translator's)
    model.safetensors    the weights with the best validation loss so far
    state.safetensors    everything needed to resume
    history.json         one entry per evaluation
    valid.tsv, test.tsv  the held-out splits (written by ``attend translate train``)

Every file is written atomically (:func:`attend._io.atomic_write`); the same content gives
the same bytes (JSON keys and safetensors metadata are sorted).

**One owner.** A training holds an exclusive lock on its run folder for as long as it runs
(``flock`` on the folder itself, so no lock file is added): a second training into the
same folder stops at once with :class:`RunFolderBusy`, before it changes anything. The
lock is released when the training ends or its process dies (the kernel drops it), so a
killed run never leaves a stale lock. Taking the lock changes nothing in the folder (a
refused command leaves it as it was); the temp files of a killed save are removed by the
next save of the same file (:func:`attend._io.atomic_write`: only names its own writer
makes, ``.tmp-<8 characters>-<file name>``, and only those no live writer holds).
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from typing import Any, Iterator, Mapping, Optional, Sequence

from . import _io

__all__ = ["RunFolder", "RunFolderBusy", "check_history"]

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


class RunFolderBusy(RuntimeError):
    """Another training owns this run folder."""


# Locks held by this process: (st_dev, st_ino) of the folder -> [count, thread id, fd]. A
# flock belongs to an open file, so the same process asking again (the CLI, then the
# trainer it calls) must reuse its lock instead of conflicting with itself.
_HELD: dict[tuple[int, int], list] = {}
_HELD_LOCK = threading.Lock()

HISTORY_FIELDS = {"step": int, "epoch": int, "train_loss": float, "valid_loss": float, "lr": float,
                  "seconds": float, "tokens_per_s": float}


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
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (math.isfinite(v) and v < 0):
                raise doc.error(k, f"must be a number >= 0, got {_io.json_type(v)} {v!r}")
        for k in ("lr", "seconds", "tokens_per_s"):
            doc.number(k, lo=0)
        if step < last:
            raise doc.error("step", f"is {step}, before the previous entry's {last}")
        last = step
    return history


class RunFolder:
    """The files of one training run (see the module docstring)."""

    CONFIG = "config.json"
    MODEL = "model.safetensors"
    STATE = "state.safetensors"
    HISTORY = "history.json"
    VALID = "valid.tsv"
    TEST = "test.tsv"

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def config_path(self) -> str:
        return self.file(self.CONFIG)

    @property
    def model_path(self) -> str:
        return self.file(self.MODEL)

    @property
    def state_path(self) -> str:
        return self.file(self.STATE)

    @property
    def history_path(self) -> str:
        return self.file(self.HISTORY)

    # -- ownership ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator["RunFolder"]:
        """Own the folder (created if missing) for the ``with`` block: exclusive and
        non-blocking; :class:`RunFolderBusy` if another process (or another thread of
        this one) owns it. Re-entrant within one thread."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise NotADirectoryError(f"run folder is a file, not a folder: {self.path}")
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

    # -- writes ---------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> str:
        path = self.file(name)
        _io.write_json(path, obj)
        return path

    def write_config(self, doc: Mapping) -> str:
        return self.write_json(self.CONFIG, dict(doc))

    def write_history(self, history: Sequence[Mapping]) -> str:
        return self.write_json(self.HISTORY, list(history))

    def save_tensors(self, name: str, tensors, metadata: Optional[Mapping[str, str]] = None) -> str:
        path = self.file(name)
        _io.save_tensors(path, tensors, metadata)
        return path

    def write_pairs(self, name: str, pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> str:
        """Token pairs as a TSV file (tokens joined by spaces)."""
        path = self.file(name)
        _io.atomic_write(path, "".join(f"{' '.join(s)}\t{' '.join(t)}\n" for s, t in pairs).encode("utf-8"))
        return path

    # -- reads ----------------------------------------------------------------------------
    def read_config(self, what: str = "checkpoint config") -> Any:
        return _io.read_json(self.config_path, what)

    def read_history(self) -> list[dict]:
        path = self.history_path
        return check_history(_io.read_json(path, "training history"), path, "the history")
