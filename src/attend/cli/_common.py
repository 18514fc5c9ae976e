"""What every ``attend`` command shares: the usage error (exit 2), the parser that says a
usage error in one line, argument types, and checks of the files a command is given."""
from __future__ import annotations

import argparse
import os

__all__ = ["UsageError", "Parser", "positive_int", "nonneg_int", "seed", "thread_count", "text_arg", "one_line",
           "draw", "need_file", "need_checkpoint", "new_output", "new_figure", "unknown_note"]


class UsageError(Exception):
    """A problem with what the user asked for: exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"attend: error: {message}\n")


def _int_at_least(low: int):
    """An argparse type: an integer >= ``low``, with a one-line message otherwise."""
    what = "a positive integer" if low == 1 else f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = low - 1
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


positive_int, nonneg_int = _int_at_least(1), _int_at_least(0)


def seed(text: str) -> int:
    """An argparse type: a seed, 0 <= seed < 2**63 (what every generator attend seeds accepts)."""
    try:
        v = int(text)
    except ValueError:
        v = -1
    if not 0 <= v < 2 ** 63:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**63 - 1, got {text!r}")
    return v


def thread_count(text: str) -> int:
    """An argparse type: torch threads, from 1 to the number of CPUs this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = positive_int(text)
    if n > cpus:
        raise argparse.ArgumentTypeError(f"expected at most {cpus} (the CPUs this process may use), got {text!r}")
    return n


def text_arg(text: str, what: str) -> str:
    """A sentence from the command line: valid UTF-8 (a stray byte arrives as a surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"character U+{ord(bad):04X}"
        raise UsageError(f"{what} is not valid UTF-8 text ({byte} at position {e.start})") from None
    return text


def one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines) if lines else type(e).__name__


def draw(call, path: str, what: str) -> str:
    """Run a plotting call; any failure of the plotting library becomes one line naming the file."""
    try:
        return call()
    except ImportError:
        raise
    except Exception as e:
        raise RuntimeError(f"could not draw {what} {path}: {one_line(e)}") from e


def need_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise UsageError(f"{what} not found: {path}")
    if not os.path.isfile(path):
        raise UsageError(f"{what} is not a file: {path}")


def need_checkpoint(path: str) -> None:
    if os.path.isfile(path):
        raise UsageError(f"--checkpoint is a file, not a run folder: {path} (give the folder `attend translate train` "
                         "wrote)")
    if not os.path.isdir(path):
        raise UsageError(f"checkpoint folder not found: {path}")
    config = os.path.join(path, "config.json")
    if os.path.lexists(config) and not os.path.isfile(config):  # (a folder, or a link to nothing, by that name)
        what = "a folder" if os.path.isdir(config) else "a link to nothing"
        raise UsageError(f"not a checkpoint folder: its config.json is {what}, not a file: {config}")
    if not os.path.isfile(config):
        try:
            inside = sorted(d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, "config.json")))
        except OSError:  # (unreadable: the refusal stands without the hint)
            inside = []
        more = f" and {len(inside) - 3} more" if len(inside) > 3 else ""
        hint = f"; it holds {', '.join(os.path.join(path, d) for d in inside[:3])}{more}" if inside else ""
        raise UsageError(f"not a checkpoint folder (no config.json): {path}{hint}")


def new_output(path: str, force: bool, flag: str = "output") -> None:
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    if os.path.exists(path) and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"folder for {path} does not exist: {parent}")


def new_figure(path: str, force: bool, flag: str) -> None:
    """An output figure: a new file (or --force) whose extension names a format we write."""
    from ..viz.plots import figure_format

    new_output(path, force, flag)
    try:
        figure_format(path, flag)
    except ValueError as e:
        raise UsageError(str(e)) from None


def unknown_note(words: list[str], sentences: int = 1) -> str:
    n = len(words)
    shown = ", ".join(w if w.isprintable() else w.encode("unicode_escape").decode("ascii")  # (no escape codes
                      for w in dict.fromkeys(words))  # from a file reach the terminal)
    where = "" if sentences <= 1 else f" in {sentences} sentences"
    return (f"attend: {n} word{'s' if n != 1 else ''}{where} not in the vocabulary (read as <unk>): "
            f"{shown if len(shown) <= 200 else shown[:197] + '...'}")
