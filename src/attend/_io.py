"""Safe files: atomic writes, safetensors and JSON reading with clear errors, and typed
access to the fields of files a user hands us. The one place callers import them from
(``from attend import _io``); the work is done in :mod:`attend._atomic` (atomic writes),
:mod:`attend._safetensors` (tensor files and their checks) and :mod:`attend._jsondoc`
(JSON files and documents).

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

from ._atomic import atomic_write, remove_stale_temps
from ._jsondoc import JsonDoc, config_from_dict, json_type, read_json, write_json
from ._safetensors import (TensorInfo, check_sizes, check_state_dict, count_indexed, dim_claims, load_tensors,
                           read_header, save_tensors, serialize)

__all__ = ["config_from_dict", "atomic_write", "write_json", "read_json", "save_tensors", "load_tensors",
           "check_state_dict", "read_header", "TensorInfo", "serialize", "remove_stale_temps", "JsonDoc",
           "check_sizes", "json_type", "dim_claims", "count_indexed"]
