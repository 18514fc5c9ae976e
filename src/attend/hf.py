"""``import attend.hf``: the same module as :mod:`attend.integrations.hf` (its old name)."""
import sys

from .integrations import hf as _hf

sys.modules[__name__] = _hf
