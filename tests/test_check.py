"""attend._check: the shared argument checks (messages name the argument, bools are not ints)."""
import math
import re

import pytest

from attend import _check


def test_integer_returns_the_value():
    assert _check.integer(3, "heads") == 3
    assert _check.integer(0, "n", low=0) == 0
    assert _check.integer(5, "k", low=1, high=5) == 5
    assert _check.integer(None, "limit", low=0, optional=True) is None


@pytest.mark.parametrize("value", [True, False, 1.0, "1", None, [1]])
def test_integer_refuses_non_ints_and_bools(value):
    with pytest.raises(ValueError, match=rf"^heads must be an int >= 1, got {re.escape(repr(value))}$"):
        _check.integer(value, "heads", low=1)


@pytest.mark.parametrize("kwargs, value, message", [
    (dict(low=1), 0, "layers must be an int >= 1, got 0"),
    (dict(low=0), -1, "layers must be an int >= 0, got -1"),
    (dict(high=3), 4, "layers must be an int <= 3, got 4"),
    (dict(low=1, high=3), 4, r"layers must be an int in \[1, 3\], got 4"),
    (dict(low=1, high=3), 0, r"layers must be an int in \[1, 3\], got 0"),
    (dict(low=0, optional=True), -2, "layers must be None or an int >= 0, got -2"),
    (dict(low=1, expected="a positive int"), 0, "layers must be a positive int, got 0"),
])
def test_integer_ranges(kwargs, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        _check.integer(value, "layers", **kwargs)


def test_integer_type_error_names_the_type():
    with pytest.raises(TypeError, match=r"^window must be an int >= 0, got float$"):
        _check.integer(1.5, "window", low=0, type_error=TypeError)
    with pytest.raises(TypeError, match=r"^window must be an int >= 0, got bool$"):
        _check.integer(True, "window", low=0, type_error=TypeError)
    # out of range is a ValueError whatever type_error is
    with pytest.raises(ValueError, match=r"^window must be an int >= 0, got -1$"):
        _check.integer(-1, "window", low=0, type_error=TypeError)


def test_number_returns_the_value():
    assert _check.number(0.5, "p", low=0, high=1) == 0.5
    assert _check.number(3, "p") == 3 and isinstance(_check.number(3, "p"), int)
    assert _check.number(math.inf, "p", finite=False) == math.inf
    assert _check.number(None, "p", optional=True) is None


@pytest.mark.parametrize("kwargs, value, message", [
    (dict(low=0, high=1, high_open=True), 1.0, r"dropout must be a number in \[0, 1\), got 1.0"),
    (dict(low=0, high=1, high_open=True), -0.1, r"dropout must be a number in \[0, 1\), got -0.1"),
    (dict(low=0, high=1, high_open=True), math.nan, r"dropout must be a number in \[0, 1\), got nan"),
    (dict(low=0, high=1, low_open=True, high_open=True), 0, r"dropout must be a number in \(0, 1\), got 0"),
    (dict(low=0, high=1, low_open=True), 1.5, r"dropout must be a number in \(0, 1\], got 1.5"),
    (dict(low=0, low_open=True), 0.0, "dropout must be a finite number > 0, got 0.0"),
    (dict(low=0, low_open=True), math.inf, "dropout must be a finite number > 0, got inf"),
    (dict(low=0), -1, "dropout must be a finite number >= 0, got -1"),
    (dict(high=2.5, high_open=True), 2.5, "dropout must be a finite number < 2.5, got 2.5"),
    (dict(), math.nan, "dropout must be a finite number, got nan"),
    (dict(low=0, finite=False), -1, "dropout must be a number >= 0, got -1"),
    (dict(low=0, finite=False), math.nan, "dropout must be a number >= 0, got nan"),
    (dict(low=0, high=1), True, r"dropout must be a number in \[0, 1\], got True"),
    (dict(low=0, high=1), "0.5", r"dropout must be a number in \[0, 1\], got '0.5'"),
    (dict(low=0, high=1, optional=True), 2, r"dropout must be None or a number in \[0, 1\], got 2"),
    (dict(low=0, high=1, expected="a float in [0, 1)"), 2, r"dropout must be a float in \[0, 1\), got 2"),
])
def test_number_ranges(kwargs, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        _check.number(value, "dropout", **kwargs)


def test_number_type_error():
    with pytest.raises(TypeError, match=r"^scale must be a finite number, got str$"):
        _check.number("1", "scale", type_error=TypeError)


def test_choice():
    assert _check.choice("gru", "rnn", ("gru", "lstm")) == "gru"
    assert _check.choice(2, "n", [1, 2]) == 2
    with pytest.raises(ValueError, match=r"^rnn must be one of \['gru', 'lstm'\], got 'rnn'$"):
        _check.choice("rnn", "rnn", ("gru", "lstm"))
    # options are shown in the order given; a dict shows its keys
    with pytest.raises(ValueError, match=r"^act must be one of \['relu', 'gelu'\], got 'tanh'$"):
        _check.choice("tanh", "act", {"relu": 1, "gelu": 2})
    # unhashable values, bools standing for 1, numbers standing for strings: refused
    for value in ([1], True, 1.0):
        with pytest.raises(ValueError, match=r"^n must be one of \[1, 2\], got "):
            _check.choice(value, "n", (1, 2))
    with pytest.raises(ValueError, match=r"^kind must be one of \['1'\], got 1$"):
        _check.choice(1, "kind", ("1",))
    with pytest.raises(ValueError, match=r"^kind must be 'transformer', got 'rnn'$"):
        _check.choice("rnn", "kind", ("transformer",), expected="'transformer'")


def test_predicates():
    assert _check.is_int(0) and not _check.is_int(True) and not _check.is_int(1.0)
    assert _check.is_number(0) and _check.is_number(math.nan) and not _check.is_number(False)
    assert not _check.is_number("1")


def test_fail_builds_the_one_wording():
    e = _check.fail("x", "a tensor", 3)
    assert isinstance(e, ValueError) and str(e) == "x must be a tensor, got 3"
    e = _check.fail("x", "a tensor", 3, TypeError)
    assert isinstance(e, TypeError) and str(e) == "x must be a tensor, got int"
