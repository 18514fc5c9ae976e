"""Safetensors files, read and written without un-pickling anything: the header (names,
dtypes, shapes: JSON) is read and checked before any tensor is (:func:`read_header`);
:func:`serialize` orders tensors and metadata, so the same tensors give the same bytes;
:func:`save_tensors` writes atomically. Then the checks of a header against a model:
:func:`check_state_dict` (names, shapes, dtypes) and :func:`check_sizes` (a config's sizes
against what the tensors pin down, :func:`dim_claims`, :func:`count_indexed`).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from typing import Any, Container, Iterable, Mapping, NamedTuple, Optional, Union

import torch
from torch import Tensor

from . import _check
from ._atomic import atomic_write

__all__ = ["TensorInfo", "serialize", "save_tensors", "read_header", "load_tensors", "check_state_dict",
           "dim_claims", "count_indexed", "check_sizes"]


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


class TensorInfo(NamedTuple):
    """What a safetensors header says about one tensor."""

    dtype: torch.dtype
    shape: tuple[int, ...]


def serialize(tensors: Mapping[str, Tensor], metadata: Optional[Mapping[str, str]] = None) -> list[bytes]:
    """The safetensors format, deterministically: metadata keys sorted, tensors ordered by
    element size (largest first, so every tensor stays aligned) then name. Returns chunks."""
    if sys.byteorder != "little":  # pragma: no cover
        raise RuntimeError("safetensors files are little-endian; this machine is not")
    entries = []
    for name, t in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"tensor name must be a string other than '__metadata__', got {name!r}")
        if not isinstance(t, Tensor):
            raise TypeError(f"tensor {name!r}: expected a torch.Tensor, got {type(t).__name__}")
        t = t.detach().to("cpu").contiguous()
        if t.dtype not in _DTYPE_NAMES:
            raise TypeError(f"tensor {name!r}: dtype {t.dtype} cannot be saved")
        entries.append((name, t))
    entries.sort(key=lambda e: (-e[1].element_size(), e[0]))
    header: dict[str, Any] = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"metadata must map strings to strings, got {k!r}: {type(v).__name__}")
        header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    blobs, offset = [], 0
    for name, t in entries:
        blob = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    head += b" " * (-len(head) % 8)
    return [len(head).to_bytes(8, "little"), head, *blobs]


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Optional[Mapping[str, str]] = None) -> None:
    """safetensors, written atomically; the same tensors and metadata give the same bytes."""
    atomic_write(path, serialize(tensors, metadata))


def _check_safetensors_file(path: str, what: str) -> None:
    _check.existing_file(path, what)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
    # The format starts with the header length (8 bytes, little endian); check it before
    # the library reads anything, so a pickle or a random file gets a plain refusal.
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if n <= 0 or n + 8 > size or n > 100_000_000:
        raise ValueError(f"{path}: not a safetensors file (attend reads only safetensors files; pickles are "
                         "never loaded)")


def read_header(path: str | os.PathLike, what: str = "checkpoint") -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Names, dtypes and shapes of the tensors of a safetensors file, and its metadata, from
    its header alone (the library checks that the header covers the file exactly): no
    tensor is read or allocated."""
    from safetensors import safe_open

    path = os.fspath(path)
    _check_safetensors_file(path, what)
    try:
        with _for_library(path) as name, safe_open(name, framework="pt") as f:
            meta = dict(f.metadata() or {})
            raw = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise ValueError(f"{path}: malformed safetensors file ({e})") from None
    infos = {}
    for k, (dt, shape) in raw.items():
        if dt not in _DTYPES:
            raise ValueError(f"{path}: tensor {k!r} has dtype {dt}, which attend does not read")
        infos[k] = TensorInfo(_DTYPES[dt], tuple(int(d) for d in shape))
    return infos, meta


def load_tensors(path: str | os.PathLike, what: str = "checkpoint", *,
                 names: Optional[Iterable[str]] = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file (all tensors, or only ``names``); anything else (a pickle, a
    truncated file) is refused with an error naming the file."""
    from safetensors import safe_open

    path = os.fspath(path)
    _check_safetensors_file(path, what)
    try:
        with _for_library(path) as name, safe_open(name, framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys()) if names is None else [k for k in names if k in set(f.keys())]
            tensors = {k: f.get_tensor(k) for k in keys}
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise ValueError(f"{path}: malformed safetensors file ({e})") from None
    return tensors, meta


@contextlib.contextmanager
def _for_library(path: str):
    """``path`` as the safetensors library can take it: it takes paths as UTF-8 only, so a path
    holding a byte that is not (kept by Python as a surrogate) is passed as the file opened
    here, ``/proc/self/fd/N`` (or ``/dev/fd/N``)."""
    try:
        path.encode("utf-8")
        plain = True
    except UnicodeEncodeError:
        plain = False
    if plain:
        yield path
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        yield next((f"{d}/{fd}" for d in ("/proc/self/fd", "/dev/fd") if os.path.isdir(d)), path)
    finally:
        os.close(fd)


def _info(t: Union[Tensor, TensorInfo]) -> TensorInfo:
    return t if isinstance(t, TensorInfo) else TensorInfo(t.dtype, tuple(t.shape))


def check_state_dict(path: str, expected: Mapping[str, Union[Tensor, TensorInfo]],
                     got: Mapping[str, Union[Tensor, TensorInfo]], *, exact_dtype: bool = True) -> None:
    """Same keys, shapes and dtypes, or an error naming the file and the tensor. Either side
    may be tensors or :class:`TensorInfo` (a header: nothing loaded; a model built on the
    ``meta`` device: nothing allocated); loaded tensors are also checked for NaN/inf.

    ``exact_dtype=False`` accepts any floating dtype for a floating tensor (it is cast on load)."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing:
        raise ValueError(f"{path}: missing tensor(s) {missing[:5]}{' …' if len(missing) > 5 else ''}")
    if extra:
        raise ValueError(f"{path}: unexpected tensor(s) {extra[:5]}{' …' if len(extra) > 5 else ''}")
    for k, v in expected.items():
        g, e = _info(got[k]), _info(v)
        if g.shape != e.shape:
            raise ValueError(f"{path}: tensor {k!r} has shape {g.shape}, expected {e.shape}")
        if g.dtype != e.dtype and (exact_dtype or not (g.dtype.is_floating_point and e.dtype.is_floating_point)):
            raise ValueError(f"{path}: tensor {k!r} has dtype {g.dtype}, expected {e.dtype}")
        t = got[k]
        if isinstance(t, Tensor) and t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{path}: tensor {k!r} has NaN or infinite values")


def dim_claims(shapes: Mapping[str, tuple[int, ...]], table: Iterable[tuple[str, str, int]]) -> dict[str, tuple[Any, str]]:
    """Config fields pinned down by tensor shapes: for each ``(field, tensor, axis)`` of
    ``table`` whose tensor the header holds, ``field -> (its size on that axis, how we know)``."""
    out: dict[str, tuple[Any, str]] = {}
    for field, name, axis in table:
        s = shapes.get(name)
        if s is not None and len(s) > axis:
            out[field] = (s[axis], f"tensor {name!r} has shape {tuple(s)}")
    return out


def count_indexed(shapes: Mapping[str, Any], pattern: str) -> int:
    """One more than the largest index ``pattern``'s group captures among the tensor names
    (how many layers a checkpoint holds); 0 when none matches."""
    found = {int(m.group(1)) for k in shapes if (m := re.fullmatch(pattern, k))}
    return max(found) + 1 if found else 0


def check_sizes(config_path: str, weights_path: str, config: Mapping[str, Any],
                claims: Mapping[str, tuple[Any, str]], *, prefix: str = "",
                given: Optional[Container[str]] = None) -> None:
    """Compare a config's sizes with what a weights file's header pins down (``claims``:
    field -> (value, how the header says so)), before anything is built: an error names
    the config file, the field and the tensor. ``given``: the fields the file itself holds
    (None: all), so that a default taken for a missing one is said to be one."""
    for field, (value, how) in claims.items():
        if field in config and config[field] != value:
            head = f"is {config[field]!r}, but" if given is None or field in given else \
                f"is not in the file, and its default {config[field]!r} does not fit:"
            raise ValueError(f"{config_path}: {prefix}{field} {head} {weights_path} holds {prefix}{field} = {value!r} "
                             f"({how})")
