"""Argument checks shared by every part: integers, numbers, choices.

The bottom layer (it imports only the standard library), so any module may use it.
Each check returns the value unchanged, or raises an error whose message names the
argument, what was expected and what was received, in the project's one wording::

    {name} must be {expected}, got {value!r}

``expected`` is derived from the bounds (``"an int >= 1"``, ``"a number in [0, 1)"``,
``"a finite number > 0"``, ``"None or an int >= 0"``); a caller whose contract is not a
plain range (``"an even int >= 2"``) or whose established wording differs (``"a positive
int"``) passes ``expected=`` and keeps the same shape.

A ``bool`` is never an int or a number here (``True`` is not a count).

A value of the wrong type raises ``type_error`` (``ValueError`` unless the caller asks for
``TypeError``); a ``TypeError`` names the type received, a ``ValueError`` the value.
A value out of range always raises ``ValueError``.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Optional, Type

__all__ = ["is_int", "is_number", "integer", "number", "choice", "fail"]


def nearest(name: str, names: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to a misspelt ``name``, or ``''``."""
    import difflib

    near = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def is_int(value: Any) -> bool:
    """True for an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for an ``int`` or ``float`` that is not a ``bool`` (NaN and inf included)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fail(name: str, expected: str, value: Any, error: Type[Exception] = ValueError) -> Exception:
    """The error to raise for ``value`` given as ``name`` when ``expected`` was wanted."""
    got = type(value).__name__ if issubclass(error, TypeError) else repr(value)
    return error(f"{name} must be {expected}, got {got}")


def _bound(x: Any) -> str:
    """``0.0`` prints as ``0``, ``1e-05`` as itself: bounds read like the docs."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return str(x)


def _range(kind: str, low: Any, high: Any, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {_bound(low)}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {_bound(high)}"
    return kind


def integer(value: Any, name: str, *, low: Optional[int] = None, high: Optional[int] = None,
            optional: bool = False, expected: Optional[str] = None,
            type_error: Type[Exception] = ValueError) -> Any:
    """``value`` if it is an int (not a bool) with ``low <= value <= high`` (bounds inclusive,
    ``None`` = unbounded); ``None`` too when ``optional``.

    >>> integer(3, "heads", low=1)
    3
    >>> integer(0, "heads", low=1)
    Traceback (most recent call last):
    ValueError: heads must be an int >= 1, got 0
    """
    if value is None and optional:
        return None
    if expected is None:
        expected = ("None or " if optional else "") + _range("an int", low, high, False, False)
    if not is_int(value):
        raise fail(name, expected, value, type_error)
    if (low is not None and value < low) or (high is not None and value > high):
        raise fail(name, expected, value)
    return value


def number(value: Any, name: str, *, low: Optional[float] = None, high: Optional[float] = None,
           low_open: bool = False, high_open: bool = False, finite: bool = True, optional: bool = False,
           expected: Optional[str] = None, type_error: Type[Exception] = ValueError) -> Any:
    """``value`` if it is an int or float (not a bool) within the bounds (``low_open`` /
    ``high_open`` exclude the bound itself), finite unless ``finite=False``; ``None`` too
    when ``optional``. NaN is refused whenever there is a bound or ``finite``.

    >>> number(0.1, "dropout", low=0, high=1, high_open=True)
    0.1
    >>> number(float("inf"), "temperature", low=0, low_open=True)
    Traceback (most recent call last):
    ValueError: temperature must be a finite number > 0, got inf
    """
    if value is None and optional:
        return None
    if expected is None:
        kind = "a finite number" if finite and (low is None or high is None) else "a number"
        expected = ("None or " if optional else "") + _range(kind, low, high, low_open, high_open)
    if not is_number(value):
        raise fail(name, expected, value, type_error)
    bad = (
        (finite and not math.isfinite(value))
        or (low is not None and not (value > low if low_open else value >= low))
        or (high is not None and not (value < high if high_open else value <= high))
    )
    if bad:
        raise fail(name, expected, value)
    return value


def _same(value: Any, option: Any) -> bool:
    # a bool never stands for 1 or 0, nor a number for a string
    if isinstance(value, bool) or isinstance(option, bool):
        return value is option
    return isinstance(value, type(option)) and value == option


def choice(value: Any, name: str, options: Iterable[Any], *, expected: Optional[str] = None) -> Any:
    """``value`` if it is one of ``options`` (shown in the given order), else ``ValueError``.

    >>> choice("gru", "rnn", ("gru", "lstm"))
    'gru'
    >>> choice("rnn", "rnn", ("gru", "lstm"))
    Traceback (most recent call last):
    ValueError: rnn must be one of ['gru', 'lstm'], got 'rnn'
    """
    options = list(options)
    if any(_same(value, o) for o in options):
        return value
    raise fail(name, f"one of {options}" if expected is None else expected, value)


def existing_file(path: str, what: str) -> None:
    """Refuse ``path`` unless it is a file: ``FileNotFoundError`` (missing, or a link to nothing)
    or ``IsADirectoryError`` (a folder), each naming ``what`` and the path."""
    if os.path.isfile(path):
        return
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} is a folder, not a file: {path}")
    if os.path.lexists(path):
        raise FileNotFoundError(f"{what} is a link to nothing (broken or a loop): {path}")
    raise FileNotFoundError(f"{what} not found: {path}")
