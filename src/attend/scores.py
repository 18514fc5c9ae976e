"""Score functions: how a query meets a key.

Shape legend: queries ``q`` (..., L, Eq), keys ``k`` (..., S, Ek) -> scores (..., L, S).

===============  =======================================  ===============  ==========
name / class     score(q, k)                              default scale    dot-like
===============  =======================================  ===============  ==========
``"dot"``        q · k                                    1                yes
``"scaled_dot"`` q · k   (Vaswani et al. 2017)            1/√E             yes
``"cosine"``     cos(q, k) / temperature                  1                yes
:class:`Cosine`  cos(q, k) / temperature                  1                yes
:class:`General` qᵀ W k   (bilinear; Luong et al. 2015)   1                yes
:class:`Additive` vᵀ tanh(W_q q + W_k k)  (Bahdanau 2015) 1                no
any callable     ``fn(q, k) -> (..., L, S)``              1                no
===============  =======================================  ===============  ==========

:func:`attend.attention` multiplies the score by ``scale`` (its default is the table's).
A *dot-like* score is a dot product of transformed queries and keys; ``as_dot(q, k)``
returns ``(q', k', factor)`` with ``score(q, k) == factor * q' · k'``, which lets fused
backends (SDPA, Triton) run it.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _check

__all__ = ["Score", "Dot", "ScaledDot", "Cosine", "General", "Additive", "NAMES", "resolve"]


class Score(nn.Module):
    """Base class of score functions. Subclasses define ``forward(q, k) -> (..., L, S)``."""

    name = "score"
    dot_like = False  # True when as_dot() reduces the score to a dot product

    def default_scale(self, E: int) -> float:
        return 1.0

    def as_dot(self, q: Tensor, k: Tensor) -> Optional[tuple[Tensor, Tensor, float]]:
        """``(q', k', factor)`` with ``score(q, k) == factor * q' @ k'ᵀ``, or None if not dot-like."""
        return None

    def check_dims(self, Eq: int, Ek: int) -> Optional[str]:
        """A message if this score cannot take queries of ``Eq`` and keys of ``Ek`` features."""
        return None


class Dot(Score):
    r"""Dot product ``q · k`` (seed 000). :math:`s_{ij} = q_i^\top k_j`."""

    name = "dot"
    dot_like = True

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        return torch.matmul(q, k.transpose(-1, -2))  # (..., L, S)

    def as_dot(self, q, k):
        return q, k, 1.0

    def check_dims(self, Eq, Ek):
        if Eq != Ek:
            return f"key: expected last dimension E={Eq} (the query's), got {Ek}"
        return None


class ScaledDot(Dot):
    r"""Scaled dot product (seeds 003, 004): :math:`s_{ij} = q_i^\top k_j / \sqrt{E}`.

    The ``1/√E`` lives in the default ``scale`` so that an explicit ``scale`` replaces it,
    as in PyTorch's SDPA.
    """

    name = "scaled_dot"

    def default_scale(self, E: int) -> float:
        return 1.0 / math.sqrt(E) if E > 0 else 1.0


class Cosine(Dot):
    r"""Cosine similarity over a temperature: :math:`s_{ij} = \cos(q_i, k_j) / \tau`.

    Scores lie in ``[-1/τ, 1/τ]``; a small temperature sharpens the softmax. Zero vectors
    get a score of 0 (normalised with ``eps``).
    """

    name = "cosine"

    def __init__(self, temperature: float = 1.0, *, eps: float = 1e-8):
        super().__init__()
        _check.number(temperature, "temperature", low=0, low_open=True)
        self.temperature = float(temperature)
        self.eps = eps

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        qn, kn, factor = self.as_dot(q, k)
        return torch.matmul(qn, kn.transpose(-1, -2)) * factor  # (..., L, S)

    def as_dot(self, q, k):
        return F.normalize(q, dim=-1, eps=self.eps), F.normalize(k, dim=-1, eps=self.eps), 1.0 / self.temperature

    def finite_from_finite(self) -> bool:
        """Whether :meth:`as_dot` gives finite vectors from finite ones (each is divided by at
        least ``eps``), so a backend need not look for NaN in them again."""
        return self.eps > 0

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class General(Score):
    r"""Bilinear ("general", Luong et al. 2015): :math:`s_{ij} = q_i^\top W k_j`, ``W`` (Eq, Ek)."""

    name = "general"
    dot_like = True

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__()
        _check_dim("query_dim", query_dim)
        _check_dim("key_dim", key_dim)
        self.query_dim, self.key_dim = query_dim, key_dim
        self.weight = nn.Parameter(torch.empty(query_dim, key_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        qw, k, _ = self.as_dot(q, k)
        return torch.matmul(qw, k.transpose(-1, -2))  # (..., L, S)

    def as_dot(self, q, k):
        return torch.matmul(q, self.weight.to(q.dtype)), k, 1.0  # q W: (..., L, Ek)

    def check_dims(self, Eq, Ek):
        return _dims_message(self, Eq, Ek)

    def extra_repr(self) -> str:
        return f"query_dim={self.query_dim}, key_dim={self.key_dim}"


class Additive(Score):
    r"""Additive ("concat"; Bahdanau et al. 2015): :math:`s_{ij} = v^\top \tanh(W_q q_i + W_k k_j + b)`.

    A small feed-forward network scores each (query, key) pair (seed 000's "neural
    network" score). Not dot-like: it needs a ``(L, S, hidden)`` intermediate, which the
    ``chunked`` backend bounds to ``(L, block, hidden)``.
    """

    name = "additive"

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int):
        super().__init__()
        for arg, val in (("query_dim", query_dim), ("key_dim", key_dim), ("hidden_dim", hidden_dim)):
            _check_dim(arg, val)
        self.query_dim, self.key_dim, self.hidden_dim = query_dim, key_dim, hidden_dim
        self.query_proj = nn.Linear(query_dim, hidden_dim, bias=False)  # W_q
        self.key_proj = nn.Linear(key_dim, hidden_dim, bias=True)  # W_k, b
        self.v = nn.Linear(hidden_dim, 1, bias=False)  # v

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        wq = F.linear(q, self.query_proj.weight.to(q.dtype))  # (..., L, hidden)
        wk = F.linear(k, self.key_proj.weight.to(k.dtype), self.key_proj.bias.to(k.dtype))  # (..., S, hidden)
        h = torch.tanh(wq.unsqueeze(-2) + wk.unsqueeze(-3))  # (..., L, S, hidden)
        return F.linear(h, self.v.weight.to(h.dtype)).squeeze(-1)  # (..., L, S)

    def as_additive(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(W_q q, W_k k + b, v)``: the score is ``v · tanh(a_i + b_j)``, so a blocked backend
        can project once per call and fuse the tanh and the sum over ``hidden`` per block."""
        wq = F.linear(q, self.query_proj.weight.to(q.dtype))  # (..., L, hidden)
        wk = F.linear(k, self.key_proj.weight.to(k.dtype), self.key_proj.bias.to(k.dtype))  # (..., S, hidden)
        return wq, wk, self.v.weight.view(-1).to(q.dtype)

    def check_dims(self, Eq, Ek):
        return _dims_message(self, Eq, Ek)

    def extra_repr(self) -> str:
        return f"query_dim={self.query_dim}, key_dim={self.key_dim}, hidden_dim={self.hidden_dim}"


class _Custom:
    """Wraps a user callable ``fn(q, k) -> (..., L, S)``: not dot-like, default scale 1."""

    as_dot = None
    dot_like = False

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, q: Tensor, k: Tensor) -> Tensor:
        return self.fn(q, k)

    def default_scale(self, E: int) -> float:
        return 1.0

    def check_dims(self, Eq: int, Ek: int) -> Optional[str]:
        return None

    def parameters(self):
        params = getattr(self.fn, "parameters", None)
        return params() if params is not None else iter(())


NAMES = {"dot": Dot, "scaled_dot": ScaledDot, "cosine": Cosine}
_SINGLETONS = {name: cls() for name, cls in NAMES.items()}


def resolve(score) -> "Score | _Custom":
    """Turn the ``score=`` argument of :func:`attend.attention` into a score object."""
    if isinstance(score, str):
        if score in _SINGLETONS:
            return _SINGLETONS[score]
        hint = ""
        if score in ("general", "additive", "concat", "bilinear"):
            hint = f" ({score!r} has weights: pass a module, e.g. attend.scores.{'General' if score in ('general', 'bilinear') else 'Additive'}(...))"
        raise ValueError(f"score must be one of {sorted(NAMES)}, a Score module or a callable, got {score!r}{hint}")
    if isinstance(score, Score):
        return score
    if callable(score):
        return _Custom(score)
    raise TypeError(f"score must be a name {sorted(NAMES)}, a Score module or a callable (q, k) -> scores, got {type(score).__name__}")


def _check_dim(arg: str, val) -> None:
    _check.integer(val, arg, low=1, expected="a positive int")


def _dims_message(score, Eq: int, Ek: int) -> Optional[str]:
    if Eq != score.query_dim:
        return f"query: expected last dimension {score.query_dim} (the score's query_dim), got {Eq}"
    if Ek != score.key_dim:
        return f"key: expected last dimension {score.key_dim} (the score's key_dim), got {Ek}"
    return None
