"""The translator's training, under its old name: :mod:`attend.apps.translate.training`."""
from .apps.translate.training import *  # noqa: F401,F403
from .apps.translate.training import __all__  # noqa: F401
