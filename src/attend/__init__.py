"""attend: the attention mechanism, every variant behind one API.

>>> import torch, attend
>>> q, k, v = torch.randn(2, 8, 5, 64), torch.randn(2, 8, 7, 64), torch.randn(2, 8, 7, 64)
>>> out, w = attend.attention(q, k, v, causal=True, return_weights=True)
>>> out.shape, w.shape
(torch.Size([2, 8, 5, 64]), torch.Size([2, 8, 5, 7]))
"""
from . import backends, masks, mods, scores
from .backends import UnsupportedCall
from .functional import Explanation, attention, attention_weights, explain, key_totals

__version__ = "0.1.0"

__all__ = [
    "attention",
    "attention_weights",
    "key_totals",
    "explain",
    "Explanation",
    "UnsupportedCall",
    "backends",
    "masks",
    "mods",
    "scores",
    "nn",
    "__version__",
]


def __getattr__(name):
    # attend.nn is imported on first use, so `import attend` stays light.
    if name == "nn":
        import importlib

        return importlib.import_module(".nn", __name__)
    raise AttributeError(f"module 'attend' has no attribute {name!r}")
