"""Safe files: atomic writes, safetensors and JSON reading with clear errors, and typed
access to the fields of files a user hands us.

Nothing here un-pickles anything: tensors come only from safetensors files, whose
header is JSON and whose payload is raw numbers. A safetensors file's header (names,
dtypes, shapes) is read and checked before any tensor is: :func:`read_header`.

Writes are atomic (temp file ``.tmp-XXXXXXXX-<name>`` in the same folder, fsync,
``os.replace``). A writer holds an exclusive ``flock`` on its temp file until the rename,
so a temp file nobody holds is the leftover of a killed save: the next save of the same
file removes it (:func:`remove_stale_temps`). Safetensors files are written by
:func:`serialize`, which orders tensors and metadata, so the same tensors give the same bytes.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import stat
import sys
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Union

import torch
from torch import Tensor

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks, no stale-temp detection
    fcntl = None  # type: ignore[assignment]

__all__ = ["config_from_dict", "atomic_write", "write_json", "read_json", "save_tensors", "load_tensors",
           "check_state_dict", "read_header", "TensorInfo", "serialize", "remove_stale_temps", "JsonDoc",
           "check_sizes", "json_type"]

_TMP = re.compile(r"\.tmp-[a-z0-9_]{8}-(.+)")  # what _new_temp names, and nothing else


# -- atomic writes ------------------------------------------------------------------------

def _lock_fd(fd: int, blocking: bool = True) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except OSError:
        return False


def remove_stale_temps(folder: str | os.PathLike, name: Optional[str] = None) -> list[str]:
    """Remove the temp files of killed saves in ``folder`` (of the file ``name`` only, if
    given): ``.tmp-*`` files that no live writer holds. Returns the paths removed."""
    folder = os.fspath(folder)
    removed: list[str] = []
    if fcntl is None:
        return removed
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        m = _TMP.fullmatch(entry)
        if m is None or (name is not None and m.group(1) != name):
            continue
        p = os.path.join(folder, entry)
        try:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not _lock_fd(fd, blocking=False):
                continue  # not a plain file, or a live writer holds it
            try:
                now = os.lstat(p)
            except FileNotFoundError:
                continue
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(p)
                removed.append(p)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


_TMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def _new_temp(folder: str, name: str) -> tuple[int, str]:
    """A temp file for ``name`` in ``folder`` (``.tmp-<8 characters>-<name>``, the only names
    :func:`remove_stale_temps` takes), created exclusively, private, and locked by us (so no
    cleaner takes it)."""
    while True:
        tmp = os.path.join(folder, ".tmp-" + "".join(secrets.choice(_TMP_CHARS) for _ in range(8)) + "-" + name)
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except FileExistsError:
            continue
        _lock_fd(fd)
        try:  # a cleaner may have removed it between its creation and the lock: then take another
            a, b = os.lstat(tmp), os.fstat(fd)
            if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
                return fd, tmp
        except FileNotFoundError:
            pass
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: Union[bytes, Iterable[bytes]]) -> None:
    """Write ``data`` (bytes, or chunks of bytes) to ``path`` so that a crash leaves either
    the old file or the new one, never a partial file: temp file in the same folder, fsync,
    ``os.replace``. Leftover temp files of earlier killed saves of ``path`` are removed."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder, not a file")
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    if not os.path.isdir(folder):  # say so with the path given, not the temp file's
        raise FileNotFoundError(f"cannot write {path}: the folder {os.path.dirname(path) or folder} does not exist")
    remove_stale_temps(folder, name)
    fd, tmp = _new_temp(folder, name)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
        with os.fdopen(os.dup(fd), "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # still holding the temp file's lock
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    # Make the rename itself durable; some file systems cannot fsync a folder.
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """JSON with sorted keys (the same object gives the same bytes), written atomically."""
    atomic_write(path, (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
                 .encode("utf-8"))


def read_json(path: str | os.PathLike, what: str = "file", *, max_bytes: int = 64 << 20) -> Any:
    """A JSON file, refused (naming the file) if missing, too large, not UTF-8 or not JSON."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(f"{path}: {size} bytes, more than a {what} can be ({max_bytes} bytes)")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deep, an integer too long, ...
        raise ValueError(f"{path}: not a valid JSON {what} ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


# -- safetensors -----------------------------------------------------------------------------

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
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
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
        with safe_open(path, framework="pt") as f:
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
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys()) if names is None else [k for k in names if k in set(f.keys())]
            tensors = {k: f.get_tensor(k) for k in keys}
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise ValueError(f"{path}: malformed safetensors file ({e})") from None
    return tensors, meta


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
                claims: Mapping[str, tuple[Any, str]], *, prefix: str = "") -> None:
    """Compare a config's sizes with what a weights file's header pins down (``claims``:
    field -> (value, how the header says so)), before anything is built: an error names
    the config file, the field and the tensor."""
    for field, (value, how) in claims.items():
        if field in config and config[field] != value:
            raise ValueError(f"{config_path}: {prefix}{field} is {config[field]!r}, but {weights_path} holds "
                             f"{prefix}{field} = {value!r} ({how})")


# -- JSON documents ---------------------------------------------------------------------------

def json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


_MISSING = object()


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


class JsonDoc:
    """A JSON object from a file a user handed us, read field by field: each accessor checks
    the type and range, and its error names the file and the field (``where`` is the path
    of this object inside the file, e.g. ``"model."``)."""

    def __init__(self, obj: Any, path: str, where: str = ""):
        self.path, self.where = os.fspath(path), where
        if not isinstance(obj, dict):
            what = f"field {where[:-1]!r}" if where else "the file"
            raise ValueError(f"{self.path}: {what} must be a JSON object, got {json_type(obj)}")
        self.raw: dict = obj

    def name(self, field: str) -> str:
        return f"{self.where}{field}"

    def error(self, field: str, message: str) -> ValueError:
        return ValueError(f"{self.path}: field {self.name(field)!r} {message}")

    def __contains__(self, field: str) -> bool:
        return field in self.raw

    def _get(self, field: str, default: Any) -> Any:
        if field in self.raw:
            return self.raw[field]
        if default is _MISSING:
            raise ValueError(f"{self.path}: missing field {self.name(field)!r}")
        return default

    def int(self, field: str, *, lo: Optional[int] = None, hi: Optional[int] = None, default: Any = _MISSING) -> Any:
        v = self._get(field, default)
        if v is default and field not in self.raw:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(field, f"must be an integer, got {json_type(v)} {_short(v)}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"in [{lo}, {hi}]")
            raise self.error(field, f"must be an integer {rng}, got {v}")
        return v

    def number(self, field: str, *, lo: Optional[float] = None, hi: Optional[float] = None,
               lo_open: bool = False, default: Any = _MISSING) -> Any:
        v = self._get(field, default)
        if v is default and field not in self.raw:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(field, f"must be a number, got {json_type(v)} {_short(v)}")
        if not math.isfinite(v):
            raise self.error(field, f"must be a finite number, got {v}")
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise self.error(field, f"must be {'>' if lo_open else '>='} {lo}, got {v}")
        if hi is not None and v > hi:
            raise self.error(field, f"must be <= {hi}, got {v}")
        return v

    def bool(self, field: str, default: Any = _MISSING) -> Any:
        v = self._get(field, default)
        if field in self.raw and not isinstance(v, bool):
            raise self.error(field, f"must be true or false, got {json_type(v)} {_short(v)}")
        return v

    def str(self, field: str, *, choices: Optional[Iterable[str]] = None, default: Any = _MISSING) -> Any:
        v = self._get(field, default)
        if field not in self.raw:
            return v
        if not isinstance(v, str):
            raise self.error(field, f"must be a string, got {json_type(v)} {_short(v)}")
        if choices is not None and v not in choices:
            raise self.error(field, f"must be one of {sorted(choices)}, got {v!r}")
        return v

    def obj(self, field: str, default: Any = _MISSING) -> Any:
        v = self._get(field, default)
        if field not in self.raw:
            return v
        return JsonDoc(v, self.path, f"{self.name(field)}.")

    def list(self, field: str, *, of: Optional[type] = None, default: Any = _MISSING) -> Any:
        v = self._get(field, default)
        if field not in self.raw:
            return v
        if not isinstance(v, list):
            raise self.error(field, f"must be a list, got {json_type(v)}")
        if of is not None:
            for i, x in enumerate(v):
                if not isinstance(x, of) or (of is int and isinstance(x, bool)):
                    raise ValueError(f"{self.path}: field {self.name(field)}[{i}] must be "
                                     f"{json_type(of())}, got {json_type(x)} {_short(x)}")
        return v


def config_from_dict(cls, d: Any, what: str):
    """Build the frozen config dataclass ``cls`` from a JSON object; unknown fields are an
    error naming them (the dataclass's own ``__post_init__`` checks the values)."""
    import dataclasses

    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{what} has unknown fields {unknown}")
    required = sorted(f.name for f in dataclasses.fields(cls)
                      if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in d)
    if required:
        raise ValueError(f"{what} is missing fields {required}")
    return cls(**d)
