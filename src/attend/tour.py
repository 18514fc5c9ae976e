"""``import attend.tour``: the same module as :mod:`attend.apps.tour` (its old name)."""
import sys

from .apps import tour as _tour

sys.modules[__name__] = _tour
