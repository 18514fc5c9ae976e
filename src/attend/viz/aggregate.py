"""Attention across heads and layers: mean, max, attention rollout and attention flow.

One head of one layer says where each token took its information from *in that layer*. But
after the first layer every position already holds a mix of tokens, so a weight in layer 5
points at a mixture. These functions combine the weights of all heads and layers:

- :func:`heads_mean` / :func:`heads_max`: per layer, over the heads; :func:`mean` /
  :func:`maximum`: over every head of every layer (n, n);
- :func:`rollout` (Abnar and Zuidema, 2020, "Quantifying Attention Flow in Transformers"):
  each layer's head-averaged weights, with the residual connection added as the identity
  (``0.5 A + 0.5 I``, rows renormalised), multiplied through the layers. Row *i* of the
  result estimates how much output *i* draws from input token *j*; each row sums to 1;
- :func:`flow` (the same paper): the layers as a graph whose edge capacities are those
  weights; the value of the maximum flow from input *j* to output *i*, each output's row
  divided by its sum so that it reads like attention (as the authors' published code does;
  ``normalize=False`` for the raw flow values). It costs one
  max-flow per pair of tokens (networkx, which PyTorch already installs), so it is limited
  to short texts (``max_tokens``, default 20: about 5 s for 6 layers on one CPU core).

``attentions`` everywhere: a tensor (layers, heads, n, n) or a sequence of per-layer tensors
(heads, n, n) or (1, heads, n, n) — what :class:`attend.models.bert.BertModel` and Hugging Face
models return — with row *i* of each the weights of query *i* over the keys. Computation is
in float64; results are float64 tensors.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

__all__ = ["heads_mean", "heads_max", "mean", "maximum", "rollout", "flow", "AGGREGATIONS"]

Attentions = Union[Tensor, Sequence[Tensor]]


def _layers(attentions: Attentions, what: str = "attentions") -> Tensor:
    """(L, H, n, n) float64, checked: finite weights in [0, 1]."""
    if isinstance(attentions, Tensor):
        t = attentions
    elif isinstance(attentions, (list, tuple)) and attentions and all(isinstance(a, Tensor) for a in attentions):
        layers = [a.squeeze(0) if a.ndim == 4 and a.shape[0] == 1 else a for a in attentions]
        for i, a in enumerate(layers):
            if a.ndim != 3:
                raise ValueError(f"{what}[{i}]: expected a layer's (heads, n, n) weights, got shape "
                                 f"{tuple(attentions[i].shape)}")
            if a.shape != layers[0].shape:
                raise ValueError(f"{what}[{i}]: expected (heads, n, n) like layer 0 {tuple(layers[0].shape)}, "
                                 f"got {tuple(attentions[i].shape)}")
        t = torch.stack(layers)
    else:
        raise TypeError(f"{what}: expected a tensor (layers, heads, n, n) or a list of per-layer tensors, "
                        f"got {type(attentions).__name__}")
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[-1] != t.shape[-2] or 0 in t.shape:
        raise ValueError(f"{what}: expected shape (layers, heads, n, n) with n > 0, got {tuple(t.shape)}")
    if t.is_complex() or not t.is_floating_point():
        raise TypeError(f"{what}: expected real floating-point weights, got {t.dtype}")
    t = t.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what}: weights contain NaN or infinity; aggregation needs finite weights")
    if bool((t < -1e-6).any()) or bool((t > 1 + 1e-6).any()):
        raise ValueError(f"{what}: weights must be in [0, 1] (attention probabilities)")
    return t


def heads_mean(attentions: Attentions) -> Tensor:
    """(L, n, n): each layer's weights averaged over its heads."""
    return _layers(attentions).mean(1)


def heads_max(attentions: Attentions) -> Tensor:
    """(L, n, n): each layer's largest weight over its heads."""
    return _layers(attentions).amax(1)


def mean(attentions: Attentions) -> Tensor:
    """(n, n): the weights averaged over every head of every layer."""
    return _layers(attentions).mean((0, 1))


def maximum(attentions: Attentions) -> Tensor:
    """(n, n): the largest weight over every head of every layer."""
    return _layers(attentions).amax((0, 1))


def _with_residual(att: Tensor, residual: bool) -> Tensor:
    """(L, n, n) head-averaged weights, with the identity mixed in for the residual path."""
    a = att.mean(1)
    if residual:
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-300)
    return a


def rollout(attentions: Attentions, *, residual: bool = True, per_layer: bool = False) -> Tensor:
    """Attention rollout: (n, n), or (L, n, n) with ``per_layer=True`` (the rollout up to and
    including each layer). ``residual=False`` leaves out the identity (the paper keeps it)."""
    a = _with_residual(_layers(attentions), residual)
    out = [a[0]]
    for layer in a[1:]:
        out.append(layer @ out[-1])
    return torch.stack(out) if per_layer else out[-1]


def flow(attentions: Attentions, *, residual: bool = True, normalize: bool = True, max_tokens: int = 20) -> Tensor:
    """Attention flow: (n, n), entry (i, j) the maximum flow from input token j to output
    position i through the layers, edge capacities the head-averaged weights (with the
    residual identity, as in :func:`rollout`); with ``normalize`` (default) each row is
    divided by its sum, so rows sum to 1. Refused above ``max_tokens`` tokens: it runs n²
    max-flow problems on a graph of L·n² edges."""
    import networkx as nx

    att = _layers(attentions)
    n = att.shape[-1]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    if n > max_tokens:
        raise ValueError(f"attention flow over {n} tokens would solve {n * n} max-flow problems; it is limited to "
                         f"max_tokens={max_tokens} (raise it, or use rollout, which is one matrix product per layer)")
    a = _with_residual(att, residual)
    L = a.shape[0]
    g = nx.DiGraph()
    for l in range(L):
        for i in range(n):
            for j in range(n):
                c = float(a[l, i, j])
                if c > 0:
                    g.add_edge((l, j), (l + 1, i), capacity=c)  # layer l's token j feeds layer l+1's token i
    out = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if (0, j) in g and (L, i) in g:
                out[i, j] = nx.maximum_flow_value(g, (0, j), (L, i))
    if normalize:
        out = out / out.sum(-1, keepdim=True).clamp_min(1e-300)
    return out


AGGREGATIONS = {"mean": mean, "max": maximum, "rollout": rollout, "flow": flow}
