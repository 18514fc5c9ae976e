"""Complete systems built on attend: the RNN translator of seed 002."""
from .translator import EvalResult, Translation, Translator, evaluate, train_translator

__all__ = ["Translator", "Translation", "train_translator", "evaluate", "EvalResult"]
