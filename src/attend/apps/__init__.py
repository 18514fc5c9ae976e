"""Complete systems built on attend: the translator of seed 002 (:mod:`attend.apps.translate`),
word sense from context (:mod:`attend.apps.wordsense`), ``attend demo`` and ``attend tour``."""
from .translate import EvalResult, Translation, Translator, evaluate, train_translator

__all__ = ["Translator", "Translation", "train_translator", "evaluate", "EvalResult"]
