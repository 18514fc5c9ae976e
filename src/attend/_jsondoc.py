"""JSON files a user hands us, and the ones we write: :func:`read_json` refuses (naming
the file) what is missing, too large, not UTF-8 or not JSON; :func:`write_json` writes
sorted keys atomically; :class:`JsonDoc` reads an object field by field, each accessor
checking type and range with an error that names the file and the field;
:func:`config_from_dict` builds a frozen config dataclass, refusing unknown fields.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Optional

from . import _check
from ._atomic import atomic_write

__all__ = ["read_json", "write_json", "json_type", "JsonDoc", "config_from_dict"]


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """JSON with sorted keys (the same object gives the same bytes), written atomically."""
    atomic_write(path, (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
                 .encode("utf-8"))


def read_json(path: str | os.PathLike, what: str = "file", *, max_bytes: int = 64 << 20) -> Any:
    """A JSON file, refused (naming the file) if missing, too large, not UTF-8 or not JSON."""
    path = os.fspath(path)
    _check.existing_file(path, what)
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(f"{path}: {size} bytes, more than a {what} can be ({max_bytes} bytes)")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deep, an integer too long, ...
        raise ValueError(f"{path}: not a valid JSON {what} ({_one_line(e)})") from None


def _unique_keys(pairs: list) -> dict:
    """A JSON object, refused where a key repeats (json keeps the last one, silently)."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the key {k!r} appears twice in one object")
        out[k] = v
    return out


def _one_line(e: BaseException) -> str:
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


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
        if not _check.is_int(v):
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
        if not _check.is_number(v):
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
                if not (_check.is_int(x) if of is int else isinstance(x, of)):
                    raise ValueError(f"{self.path}: field {self.name(field)}[{i}] must be "
                                     f"{json_type(of())}, got {json_type(x)} {_short(x)}")
        return v


def config_from_dict(cls, d: Any, what: str):
    """Build the frozen config dataclass ``cls`` from a JSON object; unknown fields are an
    error naming them (the dataclass's own ``__post_init__`` checks the values)."""
    import dataclasses

    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(d).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"{what} has unknown fields " + ", ".join(f"{u!r}{_check.nearest(u, names)}" for u in unknown))
    required = sorted(f.name for f in dataclasses.fields(cls)
                      if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in d)
    if required:
        raise ValueError(f"{what} is missing fields {required}")
    return cls(**d)

