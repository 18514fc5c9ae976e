"""Attention for RNN decoders (seed 002): score every encoder state against the decoder
state, softmax the scores, and return the weighted sum of the states (the context).

Shape legend::

    B batch   L decoder steps (optional)   S source length
    query (B, Dq) or (B, L, Dq)   keys (B, S, Dk)   values (B, S, Dv) (default: keys)
    -> context (B, Dv) or (B, L, Dv), weights (B, S) or (B, L, S)

    mask: (B, S) or (B, L, S) boolean, True = a real source position (may attend).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..functional import attention
from ..scores import Additive, General

__all__ = ["AdditiveAttention", "LuongAttention"]


class _RecurrentAttention(nn.Module):
    """Shared forward: one head, queries (B, [L,] Dq) against keys (B, S, Dk)."""

    score: object  # set by subclasses
    query_dim: int
    key_dim: int

    def forward(self, query: Tensor, keys: Tensor, values: Optional[Tensor] = None, *,
                mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Returns ``(context, weights)``; see the module's shape legend."""
        for name, t in (("query", query), ("keys", keys)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        values = keys if values is None else values
        if query.ndim not in (2, 3) or query.shape[-1] != self.query_dim:
            raise ValueError(f"query: expected (B, {self.query_dim}) or (B, L, {self.query_dim}), got shape {tuple(query.shape)}")
        if keys.ndim != 3 or keys.shape[-1] != self.key_dim:
            raise ValueError(f"keys: expected (B, S, {self.key_dim}), got shape {tuple(keys.shape)}")
        if not isinstance(values, Tensor) or values.ndim != 3 or values.shape[:2] != keys.shape[:2]:
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"values: expected (B, S, Dv) with (B, S) = {tuple(keys.shape[:2])}, got {got}")
        one_step = query.ndim == 2
        q = query.unsqueeze(1) if one_step else query  # (B, L, Dq)
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.ndim not in (2, 3):
                got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"mask: expected (B, S) or (B, L, S), True = real source position; got {got}")
            if mask.dtype != torch.bool:  # (a 0/1 float mask would be added to the scores: padding not removed)
                raise ValueError(f"mask: expected a boolean tensor, True = real source position; got {mask.dtype} "
                                 "(an additive float mask goes to attend.attention)")
            mask = mask.unsqueeze(1) if mask.ndim == 2 else mask  # (B, L|1, S)
            mask = mask.unsqueeze(1)  # (B, 1, L|1, S): one head
        context, weights = attention(
            q.unsqueeze(1), keys.unsqueeze(1), values.unsqueeze(1),  # (B, 1, n, D): one head
            score=self.score, mask=mask, return_weights=True,
        )
        context, weights = context.squeeze(1), weights.squeeze(1)  # (B, L, Dv), (B, L, S)
        if one_step:
            context, weights = context.squeeze(1), weights.squeeze(1)  # (B, Dv), (B, S)
        return context, weights


class AdditiveAttention(_RecurrentAttention):
    r"""Bahdanau attention: :math:`e_{j} = v^\top \tanh(W_q s + W_k h_j + b)`, softmax, context.

    ``query`` is the decoder state, ``keys`` the encoder states (Bahdanau et al. 2015).
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int):
        super().__init__()
        self.score = Additive(query_dim, key_dim, hidden_dim)
        self.query_dim, self.key_dim = query_dim, key_dim


class LuongAttention(_RecurrentAttention):
    r"""Luong attention (Luong et al. 2015), with its three scores:

    - ``"dot"``: :math:`h_t^\top \bar h_s` (needs ``query_dim == key_dim``; unscaled, as in the paper);
    - ``"general"``: :math:`h_t^\top W \bar h_s`;
    - ``"concat"``: :math:`v^\top \tanh(W [h_t; \bar h_s])`, i.e. the additive score with
      ``hidden_dim`` units (default ``key_dim``).
    """

    def __init__(self, query_dim: int, key_dim: int, mode: str = "dot", *, hidden_dim: Optional[int] = None):
        super().__init__()
        if mode == "dot":
            if query_dim != key_dim:
                raise ValueError(f"mode 'dot' needs query_dim == key_dim, got {query_dim} and {key_dim}")
            self.score = "dot"
        elif mode == "general":
            self.score = General(query_dim, key_dim)
        elif mode == "concat":
            self.score = Additive(query_dim, key_dim, key_dim if hidden_dim is None else hidden_dim)
        else:
            raise ValueError(f"mode must be one of ['dot', 'general', 'concat'], got {mode!r}")
        self.mode, self.query_dim, self.key_dim = mode, query_dim, key_dim

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, query_dim={self.query_dim}, key_dim={self.key_dim}"
