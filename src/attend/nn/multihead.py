"""Multi-head attention (seeds 001, 004): ``MultiHead(Q, K, V) = Concat(head_1..head_h) Wᴼ``,
``head_i = Attention(Q W_iᴽ, K W_iᴷ, V W_iⱽ)``.

Shape legend::

    B batch   L query length   S key length   D embed_dim   H heads   Hkv key/value heads
    d = D // H (head dim)

    query (B, L, D)   key (B, S, kdim)   value (B, S, vdim)   -> output (B, L, D)
    (``batch_first=False``: (L, B, D); a 2-D (L, D) query is one unbatched sequence)
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from .. import _check
from .. import masks as _masks
from ..functional import attention
from ..scores import Additive, General, resolve
from .cache import LayerKV

__all__ = ["MultiHeadAttention"]

_SCORE_NAMES = ("dot", "scaled_dot", "cosine", "general", "additive")


class MultiHeadAttention(nn.Module):
    """Multi-head (and grouped/multi-query) attention on :func:`attend.attention`.

    Self-attention when ``key`` is None, cross-attention otherwise. Masks use attend's
    polarity everywhere: **True = may attend**; ``key_mask`` (B, S) is True for real
    tokens (the opposite of ``torch.nn.MultiheadAttention``'s ``key_padding_mask``).

    Args:
        embed_dim: model width ``D``; ``num_heads`` must divide it.
        num_heads: query heads ``H``.
        kv_heads: key/value heads (default ``H``; ``1`` = multi-query; must divide ``H``).
        kdim, vdim: key and value input widths (default ``D``).
        bias: biases in the four projections.
        dropout: dropout on the weights, in training mode only.
        score: ``"scaled_dot"``, ``"dot"``, ``"cosine"``, ``"general"``, ``"additive"``
            (per-head parameters built for the head dim) or a Score module.
        batch_first: inputs are (B, L, D) if True, (L, B, D) otherwise.
        sinks: learn an attention sink per query head (one logit added to every row's
            softmax denominator, as in GPT-OSS; initialised to 0), :func:`attend.attention`'s
            ``sinks``.
        backend: the :func:`attend.attention` backend, ``"auto"`` (default), a name
            (``"triton"``, ``"sdpa"``, ...) or a :class:`attend.backends.Backend`.
        sequence_parallel: an :class:`attend.distributed.SequenceParallel`: inputs are this
            rank's positions of each sequence, attention runs over the whole sequence across
            the group (``key_mask`` and ``rotary`` at global positions; no cache or dropout).
            Also settable later as the attribute of that name.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        kv_heads: Optional[int] = None,
        kdim: Optional[int] = None,
        vdim: Optional[int] = None,
        bias: bool = True,
        dropout: float = 0.0,
        score: Union[str, Callable] = "scaled_dot",
        batch_first: bool = True,
        sinks: bool = False,
        backend="auto",
        sequence_parallel=None,
    ):
        super().__init__()
        # "a positive int": the wording users (and tests) know from this class
        for arg, val in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            _check.integer(val, arg, low=1, expected="a positive int")
        kv_heads = num_heads if kv_heads is None else kv_heads
        kdim = embed_dim if kdim is None else kdim
        vdim = embed_dim if vdim is None else vdim
        for arg, val in (("kv_heads", kv_heads), ("kdim", kdim), ("vdim", vdim)):
            _check.integer(val, arg, low=1, expected="a positive int")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if num_heads % kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of kv_heads ({kv_heads})")
        _check.number(dropout, "dropout", low=0, high=1, high_open=True, expected="a float in [0, 1)")
        self.embed_dim, self.num_heads, self.kv_heads = embed_dim, num_heads, kv_heads
        self.kdim, self.vdim, self.dropout, self.batch_first = kdim, vdim, float(dropout), batch_first
        self.head_dim = d = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim, kv_heads * d, bias=bias)
        self.v_proj = nn.Linear(vdim, kv_heads * d, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        if isinstance(score, str) and score == "general":
            score = General(d, d)
        elif isinstance(score, str) and score == "additive":
            score = Additive(d, d, d)
        elif isinstance(score, str) and score not in _SCORE_NAMES:
            raise ValueError(f"score must be one of {list(_SCORE_NAMES)} or a Score module, got {score!r}")
        resolve(score)  # raises for anything that is not a score
        self.score = score  # a Module here is registered, so its parameters train with the layer
        if not isinstance(sinks, bool):
            raise TypeError(f"sinks must be a bool, got {type(sinks).__name__}")
        self.sinks = nn.Parameter(torch.zeros(num_heads)) if sinks else None  # (H,) sink logits
        self.backend = backend
        self.sequence_parallel = sequence_parallel

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor] = None,
        value: Optional[Tensor] = None,
        *,
        mask: Union[Tensor, Callable, None] = None,
        key_mask: Optional[Tensor] = None,
        causal: bool = False,
        need_weights: bool = False,
        average_weights: bool = True,
        score_mod: Optional[Callable] = None,
        rotary: Optional[nn.Module] = None,
        cache: Optional[LayerKV] = None,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Returns ``(output, weights or None)``.

        Args:
            query: (B, L, D). ``key``/``value``: (B, S, kdim)/(B, S, vdim); ``key`` None
                means self-attention, ``value`` None means ``value = key``.
            mask: boolean (True = may attend) or additive float, shaped (L, S),
                (B, L, S) or (B, H, L, S); or a mask rule from :mod:`attend.masks`.
            key_mask: (B, S) boolean, True = real token, False = padding.
            causal: bottom-right causal mask (decoder self-attention).
            need_weights: also return the attention weights: (B, L, S) averaged over
                heads if ``average_weights``, else (B, H, L, S).
            score_mod: a score modifier (e.g. ALiBi), see :mod:`attend.mods`.
            rotary: a :class:`~attend.nn.RotaryEmbedding` applied to queries and keys
                (self-attention; with a cache, the new tokens start at ``cache.length``).
            cache: a :class:`~attend.nn.LayerKV`. Self-attention (``static=False``): the
                new keys/values are appended and the query attends over all stored ones,
                so ``S`` is the cached length plus ``L``. Cross-attention (``static=True``):
                ``key``/``value`` are projected on the first call only.
        """
        key = query if key is None else key
        value = key if value is None else value
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        shapes = {name: tuple(t.shape) for name, t in (("query", query), ("key", key), ("value", value))}
        unbatched = query.ndim == 2
        b = 0 if self.batch_first else 1  # the batch dimension, as the tensors are given
        for name in ("key", "value"):
            batched = not unbatched and query.ndim == 3
            if len(shapes[name]) != query.ndim or (batched and shapes[name][b] != query.shape[b]):
                raise ValueError(f"{name}: shape {shapes[name]} does not fit the query's {shapes['query']} "
                                 f"({'unbatched' if unbatched else f'batch in dimension {b}'})")
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))  # (B, n, D)
        if query.ndim != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"query: expected (B, L, {self.embed_dim}), got shape {shapes['query']}")
        if key.ndim != 3 or key.shape[-1] != self.kdim:
            raise ValueError(f"key: expected (B, S, {self.kdim}), got shape {shapes['key']}")
        if value.ndim != 3 or value.shape[-1] != self.vdim or value.shape[:2] != key.shape[:2]:
            raise ValueError(f"value: expected (B, S={key.shape[1]}, {self.vdim}), got shape {shapes['value']}")
        if cache is not None and not isinstance(cache, LayerKV):
            raise TypeError(f"cache must be an attend.nn.LayerKV, got {type(cache).__name__}")
        sp = self.sequence_parallel
        if sp is not None:
            return self._forward_parallel(sp, query, key, value, unbatched, mask=mask, key_mask=key_mask,
                                          causal=causal, need_weights=need_weights, average_weights=average_weights,
                                          score_mod=score_mod, rotary=rotary, cache=cache)
        B, L, _ = query.shape
        d, H, Hkv = self.head_dim, self.num_heads, self.kv_heads
        q = self.q_proj(query).view(B, L, H, d).transpose(1, 2)  # (B, H, L, d)
        if cache is not None and cache.static and cache.filled:
            k, v = cache.keys, cache.values  # (B, Hkv, S, d): the memory, projected once
        else:
            S = key.shape[1]
            k = self.k_proj(key).view(B, S, Hkv, d).transpose(1, 2)  # (B, Hkv, S, d)
            v = self.v_proj(value).view(B, S, Hkv, d).transpose(1, 2)  # (B, Hkv, S, d)
            if rotary is not None:
                offset = cache.length if cache is not None else 0
                q, k = rotary(q, offset=offset), rotary(k, offset=offset)
            if cache is not None:
                k, v = cache.set(k, v) if cache.static else cache.append(k, v)  # (B, Hkv, n + S, d)
        S = k.shape[2]
        mask = self._combine_masks(mask, key_mask, B, S)
        out = attention(
            q, k, v,
            score=self.score,
            mask=mask,
            causal=causal,
            score_mod=score_mod,
            dropout_p=self.dropout if self.training else 0.0,
            sinks=self.sinks,
            return_weights=need_weights,
            backend=self.backend,
        )
        weights = None
        if need_weights:
            out, weights = out  # weights (B, H, L, S)
            if average_weights:
                weights = weights.mean(dim=1)  # (B, L, S)
        out = self.out_proj(out.transpose(1, 2).reshape(B, L, H * d))  # (B, L, D)
        if unbatched:
            out = out.squeeze(0)
            weights = weights.squeeze(0) if weights is not None else None
        elif not self.batch_first:
            out = out.transpose(0, 1)  # (L, B, D)
        return out, weights

    def _forward_parallel(self, sp, query, key, value, unbatched, *, mask, key_mask, causal, need_weights,
                          average_weights, score_mod, rotary, cache):
        """Sequence-parallel attention: this rank's positions in, this rank's rows out."""
        if cache is not None:
            raise ValueError("cache: a key/value cache is not kept under sequence_parallel (decode on one rank)")
        if self.training and self.dropout > 0:
            raise ValueError("dropout: attention dropout is not applied under sequence_parallel; build the module "
                             "with dropout=0 (or call .eval())")
        if isinstance(mask, Tensor):
            raise TypeError("mask: a dense mask cannot be split over ranks; give it as a rule of attend.masks")
        if self.sinks is not None and sp.method == "ring":
            raise ValueError("sinks: ring attention has no sinks; use SequenceParallel(method='ulysses')")
        B, L, _ = query.shape
        S = key.shape[1]
        d, H, Hkv = self.head_dim, self.num_heads, self.kv_heads
        q = self.q_proj(query).view(B, L, H, d).transpose(1, 2)
        k = self.k_proj(key).view(B, S, Hkv, d).transpose(1, 2)
        v = self.v_proj(value).view(B, S, Hkv, d).transpose(1, 2)
        if rotary is not None:  # each span of positions rotated at its global offset
            q_spans = sp.spans(L, q.device)
            q = _by_span(q, q_spans, rotary)
            k = _by_span(k, q_spans if key is query else sp.spans(S, k.device), rotary)
        if key_mask is not None:
            if not isinstance(key_mask, Tensor) or key_mask.dtype != torch.bool or tuple(key_mask.shape) != (B, S):
                raise ValueError(f"key_mask: expected a boolean (B, S) = {(B, S)} tensor of this rank's key positions")
            rule = _masks.key_mask(sp.gather_keys(key_mask))
            mask = rule if mask is None else _masks.and_masks(mask, rule)
        kw = {"sinks": self.sinks} if self.sinks is not None else {}
        out = sp.attention(q, k, v, score=self.score, mask=mask, causal=causal, score_mod=score_mod,
                           return_weights=need_weights, **kw)
        weights = None
        if need_weights:
            out, weights = out
            if average_weights:
                weights = weights.mean(dim=1)
        out = self.out_proj(out.transpose(1, 2).reshape(B, L, H * d))
        if unbatched:
            out = out.squeeze(0)
            weights = weights.squeeze(0) if weights is not None else None
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    @staticmethod
    def _combine_masks(mask, key_mask: Optional[Tensor], B: int, S: int):
        """One mask for attend.attention: (B, H|1, L, S) tensor or a rule, with key_mask ANDed in."""
        if isinstance(mask, Tensor) and mask.ndim == 3:
            mask = mask.unsqueeze(1)  # (B, L, S) -> (B, 1, L, S)
        if key_mask is None:
            return mask
        if not isinstance(key_mask, Tensor) or key_mask.dtype != torch.bool or tuple(key_mask.shape) != (B, S):
            got = f"{key_mask.dtype} {tuple(key_mask.shape)}" if isinstance(key_mask, Tensor) else type(key_mask).__name__
            raise ValueError(f"key_mask must be a boolean tensor of shape (B, S) = {(B, S)}, True = real token; got {got}")
        keys = key_mask.view(B, 1, 1, S)  # (B, 1, 1, S)
        if mask is None:
            return keys
        if isinstance(mask, Tensor):
            if mask.dtype == torch.bool:
                return mask & keys
            return mask.masked_fill(~keys, float("-inf"))
        return _masks.and_masks(mask, _masks.key_mask(key_mask))

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> "MultiHeadAttention":
        """A copy of a ``torch.nn.MultiheadAttention`` giving the same outputs and weights.

        Masks then follow attend's polarity: pass ``key_mask = ~key_padding_mask`` and,
        for a boolean ``attn_mask``, ``mask = ~attn_mask``.
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha must be a torch.nn.MultiheadAttention, got {type(mha).__name__}")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("mha: add_bias_kv and add_zero_attn have no attend equivalent")
        has_bias = mha.in_proj_bias is not None
        new = cls(mha.embed_dim, mha.num_heads, kdim=mha.kdim, vdim=mha.vdim, bias=has_bias,
                  dropout=mha.dropout, batch_first=mha.batch_first)
        # same dtype before copying, so float64 weights are not rounded through float32
        new = new.to(device=mha.out_proj.weight.device, dtype=mha.out_proj.weight.dtype)
        D = mha.embed_dim
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                wq, wk, wv = mha.in_proj_weight.split(D)
            else:
                wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            new.q_proj.weight.copy_(wq)
            new.k_proj.weight.copy_(wk)
            new.v_proj.weight.copy_(wv)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if has_bias:
                bq, bk, bv = mha.in_proj_bias.split(D)
                new.q_proj.bias.copy_(bq)
                new.k_proj.bias.copy_(bk)
                new.v_proj.bias.copy_(bv)
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kv_heads={self.kv_heads}, "
                f"head_dim={self.head_dim}, dropout={self.dropout}, batch_first={self.batch_first}"
                + (", sinks=True" if self.sinks is not None else ""))


def _by_span(x: Tensor, spans, rotary) -> Tensor:
    """Rotate each span of positions (dim 2) of ``x`` at its global offset."""
    parts, at = [], 0
    for a, z in spans:
        parts.append(rotary(x[:, :, at:at + z - a], offset=a))
        at += z - a
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
