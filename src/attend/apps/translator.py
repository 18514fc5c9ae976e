"""The translator's names under their old module (now :mod:`attend.apps.translate`)."""
from .translate import (FORMAT, LENGTH_BUCKETS, EvalResult, ResumeMismatch, Translation, Translator,  # noqa: F401
                        evaluate, resume_differences, train_translator)

__all__ = ["Translator", "Translation", "train_translator", "evaluate", "EvalResult", "LENGTH_BUCKETS", "FORMAT",
           "resume_differences", "ResumeMismatch"]
