"""Safe files: atomic writes, safetensors and JSON reading with clear errors.

Nothing here un-pickles anything: tensors come only from safetensors files, whose
header is JSON and whose payload is raw numbers.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

__all__ = ["config_from_dict", "atomic_write", "write_json", "read_json", "save_tensors", "load_tensors", "check_state_dict"]


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new
    one, never a partial file: temp file in the same folder, fsync, ``os.replace``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable; some file systems cannot fsync a folder.
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON {what} ({e})") from None


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Optional[Mapping[str, str]] = None) -> None:
    """safetensors, written atomically."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=dict(metadata or {}))
    atomic_write(path, data)


def load_tensors(path: str | os.PathLike, what: str = "checkpoint") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file; anything else (a pickle, a truncated file) is refused with
    an error naming the file."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
    # The format starts with the header length (8 bytes, little endian); check it before
    # the library reads anything, so a pickle or a random file gets a plain refusal.
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if n <= 0 or n + 8 > size or n > 100_000_000:
        raise ValueError(f"{path}: not a safetensors file (only safetensors {what}s are read; "
                         "pickles are never loaded)")
    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise ValueError(f"{path}: malformed safetensors file ({e})") from None
    return tensors, meta


def check_state_dict(path: str, expected: Mapping[str, Tensor], got: Mapping[str, Tensor], *,
                     exact_dtype: bool = True) -> None:
    """Same keys, shapes and dtypes, or an error naming the file and the tensor.

    ``exact_dtype=False`` accepts any floating dtype for a floating tensor (it is cast on load)."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing:
        raise ValueError(f"{path}: missing tensor(s) {missing[:5]}{' …' if len(missing) > 5 else ''}")
    if extra:
        raise ValueError(f"{path}: unexpected tensor(s) {extra[:5]}{' …' if len(extra) > 5 else ''}")
    for k, v in expected.items():
        g = got[k]
        if tuple(g.shape) != tuple(v.shape):
            raise ValueError(f"{path}: tensor {k!r} has shape {tuple(g.shape)}, expected {tuple(v.shape)}")
        if g.dtype != v.dtype and (exact_dtype or not (g.is_floating_point() and v.is_floating_point())):
            raise ValueError(f"{path}: tensor {k!r} has dtype {g.dtype}, expected {v.dtype}")
        if g.is_floating_point() and not bool(torch.isfinite(g).all()):
            raise ValueError(f"{path}: tensor {k!r} has NaN or infinite values")


def config_from_dict(cls, d: Any, what: str):
    """Build the frozen config dataclass ``cls`` from a JSON object; unknown fields are an
    error naming them (the dataclass's own ``__post_init__`` checks the values)."""
    import dataclasses

    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{what} has unknown fields {unknown}")
    return cls(**d)
