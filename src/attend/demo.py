"""``import attend.demo``: the same module as :mod:`attend.apps.demo` (its old name)."""
import sys

from .apps import demo as _demo

sys.modules[__name__] = _demo
