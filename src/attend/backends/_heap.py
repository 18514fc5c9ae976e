"""Give freed memory back to the system while a long tiled call runs.

glibc's allocator raises its mmap threshold each time a large block is freed (up to 32 MiB),
so a tiled computation's later temporaries come from the heap, which fragments and is not
given back: measured at L = S = 16384, ``chunked`` grew the process by 3 GiB while at most 72
MiB was ever live, and ``inductor``'s additive backward by 74 MiB over 16. A
:class:`HeapGuard` calls ``malloc_trim`` whenever the process has grown past what the call
can need.
"""
from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["HeapGuard", "tile_guard"]


class HeapGuard:
    """Return memory the C allocator keeps after ``free`` to the system (glibc's
    ``malloc_trim``) whenever the process's resident size has grown more than ``allowance``
    bytes since the guard was made. Checking costs one read of ``/proc/self/statm``; where
    that or ``malloc_trim`` does not exist (not Linux/glibc), it does nothing."""

    def __init__(self, allowance: int):
        self.allowance = allowance
        self.limit = _rss() + allowance if _TRIM is not None and _rss() >= 0 else None

    def __call__(self) -> None:
        if self.limit is not None and _rss() > self.limit:
            _TRIM(0)
            after = _rss()  # what trimming could not give back is in use (a compile, say): do not trim
            if after > self.limit:  # at every tile for it; allow the same growth again from here
                self.limit = after + self.allowance


def _rss() -> int:
    """Resident bytes of this process (-1 where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return -1


def _find_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; musl has no malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _find_trim()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def tile_guard(active: bool, outputs: int):
    """A guard for a tiled call that holds ``outputs`` bytes of results plus one tile of
    temporaries (8 MiB, ``inductor``'s default ``tile_bytes``); a no-op when not ``active``
    (a call whose tiles are small: reading /proc per tile would cost more than it saves)."""
    return HeapGuard(outputs + (8 << 20)) if active else _nothing


def _nothing() -> None:
    """The guard of a call that needs none."""
