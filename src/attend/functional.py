"""``attend.attention``: the one entry point for the math of attention.

Shape legend::

    query  (*batch, Hq, L, E)     key (*batch, Hkv, S, Ek)     value (*batch, Hkv, S, Ev)
    output (*batch, Hq, L, Ev)    weights (*batch, Hq, L, S)

``*batch`` is any number of leading dimensions (broadcast between query, key, value and
mask). A 2-D ``(L, E)`` tensor is one sequence with one head. Query head ``h`` reads
key/value head ``h // (Hq // Hkv)`` (grouped-query attention; ``Hkv = 1`` is multi-query).

    Attention(Q, K, V) = softmax(score(Q, K) · scale + score_mod + mask) V

All validation happens here, before any backend runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from . import backends as _backends
from . import _check
from . import scores as _scores
from ._nonfinite import quarantine as _quarantine
from ._rule_prep import bind, check_rule
from ._rules import Rule
from .backends.base import AttentionCall, Backend, compute_dtype, floating_scores
from .masks import normalize_window

__all__ = ["attention", "attention_weights", "key_totals", "explain", "Explanation"]


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    score: Union[str, Callable] = "scaled_dot",
    mask: Union[Tensor, Callable, None] = None,
    causal: bool = False,
    window: Union[int, tuple, None] = None,
    score_mod: Optional[Callable] = None,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
    hard: Union[bool, str] = False,
    sinks: Optional[Tensor] = None,
    return_weights: bool = False,
    backend: Union[str, Backend] = "auto",
):
    r"""Soft (or hard) attention of ``query`` over ``key``/``value``.

    .. math:: o_i = \sum_j \mathrm{softmax}_j(s_{ij})\, v_j, \qquad
              s_{ij} = \mathrm{scale}\cdot\mathrm{score}(q_i, k_j) + \mathrm{mod} + \mathrm{bias}

    Args:
        query, key, value: see the shape legend; one floating dtype, one device.
        score: ``"scaled_dot"`` (default, ``/√E``), ``"dot"``, ``"cosine"``, a
            :class:`attend.scores.Score` module (``Cosine``, ``General``, ``Additive``)
            or any callable ``(q, k) -> (..., L, S)``.
        mask: a boolean tensor (**True = may attend**), a floating tensor (added to the
            scores; a 0/1 float mask is a bias, not a boolean mask), or a rule
            ``mask_mod(b, h, i, j) -> bool`` (:mod:`attend.masks`). Broadcastable to
            ``(*batch, Hq, L, S)``. Integer masks are rejected.
        causal: query ``i`` may attend key ``j`` iff ``j <= i + S - L`` (bottom-right:
            the last query lines up with the last key). For ``L = 2, S = 4``::

                1 1 1 0
                1 1 1 1

        window: ``w`` or ``(left, right)``: key ``j`` is allowed iff
            ``i' - left <= j <= i' + right`` with ``i' = i + S - L``; ``None`` on a side
            leaves it open. ``mask``, ``causal`` and ``window`` combine by AND.
        score_mod: ``score_mod(score, b, h, i, j) -> score`` after the score function,
            before masks (:mod:`attend.mods`: ALiBi, soft-capping, relative bias).
        scale: multiplies the score; default ``1/√E`` for ``scaled_dot``, else 1.
            An explicit ``scale`` (0 and negatives included) replaces the default.
        dropout_p: dropout on the weights, always applied when > 0 (modules pass 0
            in eval mode). Weights returned are those before dropout.
        hard: ``True`` returns, for each query, the value of its highest-scoring key
            (no gradient to the scores); ``"straight_through"`` gives that value with the
            gradient of soft attention.
        sinks: attention sinks, one learned logit per query head ``(Hq,)`` added to
            every row's softmax denominator (GPT-OSS; Xiao et al. 2024, StreamingLLM):
            ``p_ij = exp(s_ij) / (exp(sink_h) + sum_j' exp(s_ij'))``. A row may then give
            less than all of its attention to the keys; the weights returned exclude the
            sink (rows sum to less than 1). A tensor that requires grad gets its gradient.
        return_weights: also return the weights ``(*batch, Hq, L, S)``.
        backend: ``"auto"``, a registered name (``attend.backends.names()``) or a
            :class:`attend.backends.Backend`. A named backend that cannot run the
            call raises :class:`attend.backends.UnsupportedCall` saying why.

    A query row with no key it may attend gives an output of exactly zero, weights of
    zero and finite gradients, on every backend.

    Returns:
        ``output`` (*batch, Hq, L, Ev), or ``(output, weights)`` if ``return_weights``.
    """
    call, shape = _prepare(query, key, value, score=score, mask=mask, causal=causal, window=window,
                           score_mod=score_mod, scale=scale, dropout_p=dropout_p, hard=hard, sinks=sinks,
                           return_weights=return_weights, backend=backend)
    if call.B == 0 or call.L == 0 or call.S == 0:
        out, weights = _degenerate(call)
    else:
        call, poisoned = _quarantine(call)  # first: select and run then see one call object (inductor plans once)
        chosen, _ = _backends.select(call, backend)
        out, weights = chosen.run(call)
        if poisoned is not None:  # rows that may attend a non-finite key or value: NaN, as the data says
            out = out.masked_fill(poisoned.unsqueeze(-1), math.nan)
            if weights is not None:
                weights = weights.masked_fill(poisoned.unsqueeze(-1), math.nan)
    out = out.reshape(*shape.batch, *shape.heads, call.L, call.Ev)
    if not return_weights:
        return out
    return out, weights.reshape(*shape.batch, *shape.heads, call.L, call.S)


def attention_weights(query: Tensor, key: Tensor, *, heads=None, rows=None, **kwargs) -> Tensor:
    """The attention weights alone, for chosen query heads and rows only if asked.

    Takes the arguments of :func:`attention` except ``value`` and ``return_weights``
    (``score``, ``mask``, ``causal``, ``window``, ``score_mod``, ``scale``, ``backend``).
    ``heads`` and ``rows`` are sequences (or 1-D integer tensors) of query-head and
    query-row indices; the result is ``(*batch, len(heads), len(rows), S)`` (all heads /
    rows when None) and carries no gradient. On the ``triton`` backend only the chosen
    heads and rows are computed (a log-sum-exp pass, then their weights); other
    backends compute all weights and select.
    """
    call, shape = _weights_call("attention_weights", query, key, kwargs)
    if not shape.heads and heads is not None:
        raise ValueError("heads: 2-D inputs (L, E) have no heads dimension; pass heads=None")
    h = _indices("heads", heads, call.Hq)
    r = _indices("rows", rows, call.L)
    nh = call.Hq if h is None else h.numel()
    nr = call.L if r is None else r.numel()
    poisoned = None
    if call.B == 0 or call.L == 0 or call.S == 0:
        w = call.query.new_zeros(call.B, nh, nr, call.S)
    else:
        call, poisoned = _quarantine(call)  # non-finite inputs: NaN in the rows that may use them, as attention's
        chosen, _ = _backends.select(call, kwargs.get("backend", "auto"))  # (refuses as for any selection)
        w = chosen.weights(call, h, r) if nh and nr else call.query.new_zeros(call.B, nh, nr, call.S)
    if poisoned is not None:
        poisoned = poisoned if h is None else poisoned[:, h]
        w = w.masked_fill((poisoned if r is None else poisoned[:, :, r]).unsqueeze(-1), math.nan)
    return w.reshape(*shape.batch, *((nh,) if shape.heads else ()), nr, call.S)


def key_totals(query: Tensor, key: Tensor, **kwargs) -> Tensor:
    """How much attention each key receives: the weights summed over query rows.

    Takes the arguments of :func:`attention` except ``value`` and ``return_weights``;
    returns ``(*batch, Hq, S)`` in float32 (per query head; sum over dim -2 for a total
    over heads). This is the column sum KV-cache eviction schemes (H2O, Scissorhands)
    rank keys by. On ``triton`` it is computed without materialising the weights.
    """
    call, shape = _weights_call("key_totals", query, key, kwargs)
    if call.B == 0 or call.L == 0 or call.S == 0:
        t = call.query.new_zeros(call.B, call.Hq, call.S, dtype=torch.float32)
    else:
        call, poisoned = _quarantine(call)  # a row that may use a non-finite input is NaN: so is its heads' every total
        chosen, _ = _backends.select(call, kwargs.get("backend", "auto"))
        t = chosen.key_totals(call)
        if poisoned is not None:
            t = t.masked_fill(poisoned.any(dim=-1, keepdim=True), math.nan)
    return t.reshape(*shape.batch, *shape.heads, call.S)


def _weights_call(fn: str, query: Tensor, key: Tensor, kwargs: dict):
    """Validate a weights-only call (no value, no dropout or hard attention): ``(call, shape)``.

    The key stands in for the value: the weights never read it.
    """
    refused = ("value", "return_weights", "hard", "dropout_p")
    for arg in refused:
        if arg in kwargs:
            raise TypeError(f"{fn}() takes no {arg!r} argument")
    _known_kwargs(fn, kwargs, refused)
    return _prepare(query, key, key, return_weights=True, **kwargs)


def _probe_score_mod(fn: Callable, dtype: torch.dtype) -> None:
    """A score_mod of one's own, tried on one score: a result that is not floating (a bool
    from a comparison, meant as a mask) is refused here, the same on every backend (compiled
    ones would otherwise cast it to scores of 0 and 1, or fail to compile). A function that
    cannot take a single score is left to the call itself."""
    if torch.compiler.is_compiling():  # (traced, its result's dtype reaches the backend's own check)
        return
    zero = torch.zeros((), dtype=torch.long)
    try:
        with torch.no_grad():
            got = fn(torch.zeros((), dtype=dtype), zero, zero, zero, zero)
    except Exception:  # noqa: BLE001 - its own error comes from the call, with every index
        return
    if isinstance(got, Tensor):
        floating_scores(got)


def _known_kwargs(fn: str, kwargs: dict, refused: tuple = ()) -> None:
    """Refuse, naming ``fn`` (not the private function it hands them to), a keyword argument
    :func:`attention` does not take, with the nearest one ``fn`` does (not one of ``refused``)."""
    known = [k for k in _prepare.__kwdefaults__ if k not in refused]  # (keyword-only arguments, all with defaults)
    for name in kwargs:
        if name not in known:
            raise TypeError(f"{fn}() got an unexpected keyword argument {name!r}{_check.nearest(name, known)}")


def _indices(arg: str, idx, n: int) -> Optional[Tensor]:
    """Validate a list/1-D tensor of indices into ``range(n)``; None stays None."""
    if idx is None:
        return None
    t = torch.as_tensor(idx)
    if t.shape == (0,) and not isinstance(idx, Tensor):  # an empty sequence: torch makes it float
        t = t.to(torch.int64)
    if t.ndim != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"{arg} must be a sequence or 1-D integer tensor of indices, got {idx!r}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
        raise ValueError(f"{arg} must be indices in [0, {n}), got {t.tolist()}")
    return t.to(torch.int64)


@dataclass
class Explanation:
    """What ``backend="auto"`` picks for a call, and why each other backend was not picked."""

    backend: str
    reasons: dict[str, list[str]] = field(default_factory=dict)
    detail: str = ""  # how the picked backend will run the call (e.g. inductor: tiles, compile state)

    def __str__(self) -> str:
        lines = [f"auto picks: {self.backend}" + (f" ({self.detail})" if self.detail else "")]
        for name, why in self.reasons.items():
            lines.append(f"  {name}: not picked: {'; '.join(why)}")
        return "\n".join(lines)


def explain(query: Tensor, key: Tensor, value: Tensor, **kwargs) -> Explanation:
    """Which backend ``attend.attention(query, key, value, **kwargs)`` runs on, and why not the others.

    Takes exactly the arguments of :func:`attention` and validates them the same way.
    """
    backend = kwargs.get("backend", "auto")
    _known_kwargs("explain", kwargs)
    call, _ = _prepare(query, key, value, **kwargs)
    if call.B == 0 or call.L == 0 or call.S == 0:
        return Explanation("none (empty input: the output is built directly, no backend runs)")
    call, _ = _quarantine(call)  # the call ``attention`` hands the backends (its inputs checked finite)
    chosen, reasons = _backends.select(call, backend)
    return Explanation(chosen.name, reasons, chosen.describe(call))


# ---------------------------------------------------------------------------------------
# validation and canonical form


@dataclass
class _Shape:
    batch: tuple[int, ...]  # broadcast leading dims of the public call
    heads: tuple[int, ...]  # (Hq,) or () for 2-D inputs


def _prepare(query, key, value, *, score="scaled_dot", mask=None, causal=False, window=None, score_mod=None,
             scale=None, dropout_p=0.0, hard=False, sinks=None, return_weights=False, backend="auto"):
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (..., length, features), got shape {tuple(t.shape)}")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            f"query, key and value must share one dtype (no silent casts), got query {query.dtype}, "
            f"key {key.dtype}, value {value.dtype}"
        )
    if not (query.device == key.device == value.device):
        raise ValueError(
            f"query, key and value must be on one device, got query on {query.device}, key on {key.device}, "
            f"value on {value.device}"
        )
    two_d = query.ndim == 2
    if (key.ndim == 2) != two_d or (value.ndim == 2) != two_d:
        raise ValueError(
            "query, key and value must all be 2-D (L, E) or all have a heads dimension (..., H, L, E), "
            f"got shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    q, k, v = (t.unsqueeze(0) for t in (query, key, value)) if two_d else (query, key, value)
    Hq, L, E = q.shape[-3:]
    Hkv, S, Ek = k.shape[-3:]
    if v.shape[-3] != Hkv:
        raise ValueError(f"value: expected {Hkv} heads (the key's), got {v.shape[-3]} (shape {tuple(value.shape)})")
    if v.shape[-2] != S:
        raise ValueError(f"value: expected length S={S} (the key's), got {v.shape[-2]} (shape {tuple(value.shape)})")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"key: query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    try:
        batch = torch.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
    except RuntimeError:
        raise ValueError(
            f"batch dimensions must broadcast: query {tuple(q.shape[:-3])}, key {tuple(k.shape[:-3])}, "
            f"value {tuple(v.shape[:-3])}"
        ) from None

    sc = _scores.resolve(score)
    msg = sc.check_dims(E, Ek)
    if msg:
        raise ValueError(msg)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if not isinstance(return_weights, bool):
        raise TypeError(f"return_weights must be a bool, got {type(return_weights).__name__}")
    win = normalize_window(window)
    if scale is not None:
        if not _check.is_number(scale):
            raise _check.fail("scale", "a float or None", scale, TypeError)
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale!r}")
        top = torch.finfo(compute_dtype(query.dtype)).max
        if abs(scale) > top:
            raise ValueError(f"scale must be representable in the scores' dtype {compute_dtype(query.dtype)} "
                             f"(|scale| <= {top:.3g}), got {scale!r}: it would overflow to inf")
    if not _check.is_number(dropout_p):
        raise _check.fail("dropout_p", "a float in [0, 1)", dropout_p, TypeError)
    if not (0.0 <= dropout_p < 1.0):  # NaN fails this too
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    if not (hard is True or hard is False or (isinstance(hard, str) and hard == "straight_through")):
        raise ValueError(f"hard must be False, True or 'straight_through', got {hard!r}")
    if score_mod is not None:
        if not callable(score_mod):
            raise TypeError(f"score_mod must be a callable (score, b, h, i, j) -> score, got {type(score_mod).__name__}")
        check_rule(score_mod, "score_mod", "score", (math.prod(batch), Hq, L, S))
        if not isinstance(score_mod, Rule):
            _probe_score_mod(score_mod, q.dtype)
    if isinstance(backend, str):
        if backend != "auto":
            _backends.get(backend)  # raises with the valid names
    elif not isinstance(backend, Backend):
        raise TypeError(f"backend must be a name or an attend.backends.Backend, got {type(backend).__name__}")

    full = (*batch, Hq, L, S)
    bool_mask = bias = mask_mod = None
    if isinstance(mask, Tensor):
        if mask.dtype == torch.bool:
            bool_mask = _canonical_mask(mask, batch, full, query.device, two_d)
        elif mask.dtype.is_floating_point:
            bias = _canonical_mask(mask, batch, full, query.device, two_d)
        else:
            raise TypeError(
                f"mask must be a boolean (True = may attend) or floating (additive) tensor, got dtype {mask.dtype}"
                + ("; integer masks are ambiguous, convert with mask.bool()" if not mask.is_complex() else "")
            )
    elif mask is not None:
        if not callable(mask):
            raise TypeError(f"mask must be a tensor, a mask_mod callable or None, got {type(mask).__name__}")
        check_rule(mask, "mask", "mask", (math.prod(batch), Hq, L, S))
        mask_mod = bind(mask, L, S, compute_dtype(q.dtype))

    call = AttentionCall(
        query=_flatten(q, batch),
        key=_flatten(k, batch),
        value=_flatten(v, batch),
        score=sc,
        scale=float(scale) if scale is not None else sc.default_scale(E),
        mask=bool_mask,
        bias=bias,
        mask_mod=mask_mod,
        causal=causal,
        window=win,
        score_mod=bind(score_mod, L, S, compute_dtype(q.dtype)),
        dropout_p=float(dropout_p),
        hard=hard,
        sinks=_check_sinks(sinks, Hq, query.device, hard),
        return_weights=return_weights,
    )
    return call, _Shape(batch=tuple(batch), heads=() if two_d else (Hq,))


def _check_sinks(sinks, Hq: int, device, hard) -> Optional[Tensor]:
    """``sinks``: None or a floating (Hq,) tensor on the inputs' device."""
    if sinks is None:
        return None
    if not isinstance(sinks, Tensor):
        raise TypeError(f"sinks must be a tensor of one logit per query head ({Hq},) or None, got {type(sinks).__name__}")
    if not sinks.dtype.is_floating_point:
        raise TypeError(f"sinks must be a floating-point tensor, got dtype {sinks.dtype}")
    if tuple(sinks.shape) != (Hq,):
        raise ValueError(f"sinks must have one logit per query head, shape ({Hq},), got {tuple(sinks.shape)}")
    if sinks.device != device:
        raise ValueError(f"sinks must be on the query's device {device}, got {sinks.device}")
    if hard:
        raise ValueError("sinks apply to soft attention; hard attention picks one key and has no softmax to add them to")
    # A sink of +inf takes all of its rows' attention (output 0). As the largest finite logit
    # it does so on every backend, where inf - inf would otherwise give NaN in some of them.
    return sinks.clamp(max=torch.finfo(sinks.dtype).max)


def _flatten(t: Tensor, batch: torch.Size) -> Tensor:
    """(*b, H, n, D) -> (B, H, n, D), broadcasting the leading dims to ``batch``."""
    t = t.expand(*batch, *t.shape[-3:])
    return t.reshape(-1, *t.shape[-3:]) if len(batch) != 1 else t


def _canonical_mask(mask: Tensor, batch, full, device, two_d: bool) -> Tensor:
    """Check a dense mask broadcasts to ``full`` (*batch, Hq, L, S); return it as (B|1, H|1, L|1, S|1)."""
    if mask.device != device:
        raise ValueError(f"mask must be on the query's device {device}, got {mask.device}")
    public = full[1:] if two_d else full  # what the user sees: (L, S) for 2-D inputs
    if two_d:
        mask = mask.unsqueeze(0) if mask.ndim >= 1 else mask
    try:
        if torch.broadcast_shapes(mask.shape, full) != torch.Size(full):
            raise RuntimeError
    except RuntimeError:
        got = tuple(mask.shape[1:]) if two_d else tuple(mask.shape)
        raise ValueError(f"mask must broadcast to {tuple(public)} (*batch, Hq, L, S), got shape {got}") from None
    m = mask.reshape((1,) * (len(full) - mask.ndim) + tuple(mask.shape))  # same rank as full
    nb = len(full) - 3
    lead, tail = m.shape[:nb], m.shape[nb:]  # tail: (H|1, L|1, S|1)
    if all(d == 1 for d in lead):
        return m.reshape(1, *tail)
    return m.expand(*batch, *tail).reshape(-1, *tail)


def _degenerate(call: AttentionCall) -> tuple[Tensor, Tensor]:
    """Empty batch, no queries or no keys: the output is built directly (no kernel runs).

    With ``S = 0`` every query row is fully masked: output and weights are zeros. Adding
    empty sums keeps the result attached to the inputs, so backward gives zero gradients.
    """
    q, k, v = call.query, call.key, call.value
    out = q.new_zeros((call.B, call.Hq, call.L, call.Ev))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        out = out + q[..., :0].sum() + k[..., :0].sum() + v[..., :0].sum()  # exact zeros, keep the graph
    weights = q.new_zeros((call.B, call.Hq, call.L, call.S))
    return out, weights
