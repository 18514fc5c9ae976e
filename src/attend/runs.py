"""``import attend.runs``: the same module as :mod:`attend.apps.translate.run` (its old name)."""
import sys

from .apps.translate import run as _run

sys.modules[__name__] = _run
