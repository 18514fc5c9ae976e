"""Atomic writes: a crash leaves either the old file or the new one, never a partial file.

The data goes to a temp file ``.tmp-XXXXXXXX-<name>`` in the same folder, is fsynced, then
``os.replace``d over the target. A writer holds an exclusive ``flock`` on its temp file
until the rename, so a temp file nobody holds is the leftover of a killed save: the next
save of the same file removes it (:func:`remove_stale_temps`).
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from typing import Iterable, Optional, Union

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks, no stale-temp detection
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_write", "remove_stale_temps"]

_TMP = re.compile(r"\.tmp-[a-z0-9_]{8}-(.+)")  # what _new_temp names, and nothing else


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
