"""What a call asks of the kernels: capability reasons, and the call translated into a :class:`Plan`.

The plan is the **one schema** of the fused path. Its dataclass fields are, in order, the
custom ops' arguments after q, k, v (:mod:`.ops` derives the op schema, the fake, the
autograd context and the gradient slots from them: a field marked ``grad`` gets a gradient
slot); :func:`kernel_args` turns a plan into the kernels' two grouped arguments — ``R``,
the runtime values (pointers, strides, sizes), and ``F``, the compile-time flags (a
constexpr tuple: each combination compiles its own kernel) — which every kernel and helper
in :mod:`.kernels` passes on whole.

Adding a compiled mask rule touches three places: its class (:mod:`attend._rules`), its
translation here (a plan field, a ``_FOLD`` entry, its entries in ``R``/``F``), and its
evaluation in :mod:`.kernels` (``_scores``, and the key/query ranges for block skipping).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ..._rules import Alibi, Causal, Chunked, Document, KeyMask, Padding, PrefixLM, RelativeBias, Softcap, Window
from ..._rule_prep import and_terms
from ..base import AttentionCall

MAX_HEAD_DIM = 256
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


_UNKNOWN = object()
_import_error = _UNKNOWN


def import_error() -> Optional[str]:
    """Why Triton cannot be used (``None``: it can); tried once per process. Kept in a module
    variable, not ``functools.lru_cache``: under ``torch.compile`` dynamo reads a variable
    as a constant, while it warns on a cache wrapper and traces through it."""
    global _import_error
    if _import_error is _UNKNOWN:
        try:
            import triton  # noqa: F401
        except Exception as e:  # ImportError, or a broken install
            _import_error = f"Triton is not installed ({type(e).__name__}: {e}); pip install 'attend[triton]'"
        else:
            _import_error = None
    return _import_error


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _tensor(grad: bool = False):
    """A plan field holding an optional tensor (``grad``: the op returns its gradient)."""
    return field(default=None, metadata={"grad": grad})


@dataclass
class Plan:
    """The kernel-side description of a call: small tensors, flags and the score's scale."""

    mask: Optional[Tensor] = _tensor()  # (B|1, H|1, L|1, S|1) bool
    bias: Optional[Tensor] = _tensor(grad=True)  # (B|1, H|1, L|1, S|1) float
    lens: Optional[Tensor] = _tensor()  # (B,) int32: keys >= lens[b] are padding
    kvalid: Optional[Tensor] = _tensor()  # (B, S) bool
    doc: Optional[Tensor] = _tensor()  # (B|1, S) int32 document ids
    doc_lo: Optional[Tensor] = _tensor()  # (B|1, S) int32: first position of each position's document
    doc_hi: Optional[Tensor] = _tensor()  # (B|1, S) int32: one past its last
    prefix: Optional[Tensor] = _tensor()  # (B,) int32 prefix-LM lengths
    slopes: Optional[Tensor] = _tensor()  # (Hq,) float32 ALiBi slopes
    table: Optional[Tensor] = _tensor(grad=True)  # (Hq|1, 2R+1) float32 relative-position table
    scale: float = 0.0
    causal: bool = False
    window_left: int = -1  # -1: unbounded
    window_right: int = -1
    softcap: float = 0.0  # 0: none
    chunk: int = 0  # chunked attention's chunk size (0: none)


class Rules(NamedTuple):
    """The kernels' runtime rule arguments (``R``): pointers (a dummy when absent), strides, sizes."""

    MASK: Tensor
    smb: int
    smh: int
    smm: int
    smn: int
    BIAS: Tensor
    sbb: int
    sbh: int
    sbm: int
    sbn: int
    LENS: Tensor
    KVALID: Tensor
    skvb: int
    DOC: Tensor
    sdocb: int
    DOC_LO: Tensor
    DOC_HI: Tensor
    PREFIX: Tensor
    SLOPES: Tensor
    TABLE: Tensor
    stabh: int
    cap: float
    WL: int
    WR: int
    REL_R: int
    CHUNK: int


class Flags(NamedTuple):
    """The kernels' compile-time rule flags (``F``, a constexpr): which rules are on."""

    IS_CAUSAL: bool
    HAS_WL: bool
    HAS_WR: bool
    HAS_LENS: bool
    HAS_KVALID: bool
    HAS_DOC: bool
    DOC_SKIP: bool  # sorted document ids: skip the blocks of other documents
    HAS_PREFIX: bool
    HAS_MASK: bool
    HAS_BIAS: bool
    MOD: int  # score_mod: 0 none, 1 ALiBi, 2 soft-capping, 3 relative-position table
    HAS_CHUNK: bool


def _strides(t: Optional[Tensor]) -> tuple:
    """Strides with 0 on size-1 (broadcast) dims; zeros when there is no tensor."""
    if t is None:
        return (0, 0, 0, 0)
    return tuple(0 if t.shape[d] == 1 else t.stride(d) for d in range(4))


def pow2(n: int) -> int:
    return max(16, 1 << (max(n, 1) - 1).bit_length())


def kernel_args(p: Plan, dummy: Tensor, L: int, S: int) -> dict:
    """The arguments every kernel takes from the plan: ``R``, ``F`` and the tuning lengths."""
    m = p.mask.view(torch.uint8) if p.mask is not None else None
    kv = p.kvalid.view(torch.uint8) if p.kvalid is not None else None

    def ptr(t):
        return t if t is not None else dummy

    R = Rules(ptr(m), *_strides(m), ptr(p.bias), *_strides(p.bias), ptr(p.lens),
              ptr(kv), kv.stride(0) if kv is not None else 0,
              ptr(p.doc), (0 if p.doc.shape[0] == 1 else p.doc.stride(0)) if p.doc is not None else 0,
              ptr(p.doc_lo), ptr(p.doc_hi), ptr(p.prefix), ptr(p.slopes),
              ptr(p.table), (0 if p.table.shape[0] == 1 else p.table.stride(0)) if p.table is not None else 0,
              p.softcap if p.softcap > 0 else 1.0, max(p.window_left, 0), max(p.window_right, 0),
              (p.table.shape[-1] - 1) // 2 if p.table is not None else 0, max(p.chunk, 1))
    F = Flags(p.causal, p.window_left >= 0, p.window_right >= 0, p.lens is not None, p.kvalid is not None,
              p.doc is not None, p.doc_lo is not None and L <= S, p.prefix is not None, p.mask is not None,
              p.bias is not None, 1 if p.slopes is not None else 2 if p.softcap > 0 else 3 if p.table is not None else 0,
              p.chunk > 0)
    # the autotuner's key sees lengths rounded up to a power of two: a new length reuses the
    # blocks tuned for its bucket instead of benchmarking every config again
    return dict(R=R, F=F, TUNE_L=pow2(L), TUNE_S=pow2(S))


# ---- capability ------------------------------------------------------------------------------
def _score_mod_ok(sm, Hq: int) -> bool:
    if type(sm) is Alibi:  # (exactly, here and below: a subclass may score differently)
        return sm.slopes.numel() == Hq and not sm.slopes.requires_grad
    if type(sm) is RelativeBias:
        return sm.table.ndim == 1 or sm.table.shape[0] == Hq
    return type(sm) is Softcap


def reasons(call: AttentionCall) -> list[str]:
    """Why the kernels cannot run ``call`` (empty: they can). Cheap: builds no tensor."""
    why = []
    if not getattr(call.score, "dot_like", False):
        why.append(f"score {getattr(call.score, 'name', type(call.score).__name__)!r} is not dot-like")
    if call.dropout_p > 0:
        why.append("no dropout in the fused kernels")
    if call.hard:
        why.append("no hard attention in the fused kernels")
    if call.query.dtype not in DTYPES:
        why.append(f"dtype {call.query.dtype} (the kernels take float16, bfloat16, float32)")
    E = call.query.shape[-1]
    if E > MAX_HEAD_DIM or call.Ev > MAX_HEAD_DIM:
        why.append(f"head dims up to {MAX_HEAD_DIM}, got E={E}, Ev={call.Ev}")
    sm = call.score_mod
    if sm is not None and not _score_mod_ok(sm, call.Hq):
        why.append(f"score_mod {sm!r} is not compiled into the kernels (alibi with one slope per query head, "
                   "softcap, relative_bias are)")
    return why


# ---- translation -----------------------------------------------------------------------------
def _window(p: Plan, left, right) -> bool:
    if left is not None:
        p.window_left = left if p.window_left < 0 else min(p.window_left, left)
    if right is not None:
        p.window_right = right if p.window_right < 0 else min(p.window_right, right)
    return True


def _causal(p: Plan, rule: Causal, B: int, S: int, dev) -> bool:
    p.causal = True
    return True


def _padding(p: Plan, rule: Padding, B: int, S: int, dev) -> bool:
    if rule.lengths.shape != (B,):
        return False
    if dev is None:
        return True
    n = rule.lengths.to(dev).clamp(max=S).to(torch.int32)
    p.lens = n if p.lens is None else torch.minimum(p.lens, n)
    return True


def _key_mask(p: Plan, rule: KeyMask, B: int, S: int, dev) -> bool:
    if rule.valid.shape != (B, S):
        return False
    if dev is None:
        return True
    v = rule.valid.to(dev)
    p.kvalid = v if p.kvalid is None else p.kvalid & v
    return True


def _document(p: Plan, rule: Document, B: int, S: int, dev) -> bool:
    if p.doc is not None or rule.ids.shape[-1] != S or (rule.ids.ndim == 2 and rule.ids.shape[0] != B):
        return False  # one document rule is compiled; a second is evaluated densely
    if dev is None:
        p.doc = rule.ids  # (only that there is one)
        return True
    ids = rule.ids.to(dev)
    ids = ids if ids.ndim == 2 else ids.unsqueeze(0)  # (B|1, S)
    if not ids.numel():
        p.doc = ids.to(torch.int32)
        return True
    lo, hi, ordered = torch.stack([ids.min(), ids.max(), (ids[:, 1:] >= ids[:, :-1]).all().to(ids.dtype)]).tolist()
    if lo < -2**31 or hi >= 2**31:
        # the kernels read int32: renumber (order and equality kept, so sorted stays sorted)
        ids = torch.unique(ids, return_inverse=True)[1]
    p.doc = ids.to(torch.int32).contiguous()
    if ordered:  # sorted (packed): each document is one run
        p.doc_lo = torch.searchsorted(p.doc, p.doc, right=False).to(torch.int32)
        p.doc_hi = torch.searchsorted(p.doc, p.doc, right=True).to(torch.int32)
    return True


def _prefix_lm(p: Plan, rule: PrefixLM, B: int, S: int, dev) -> bool:
    n = rule.prefix_len
    if p.prefix is not None or (isinstance(n, Tensor) and n.shape != (B,)):
        return False
    if dev is None:
        p.prefix = n  # (only that there is one)
        return True
    n = n.to(dev) if isinstance(n, Tensor) else torch.full((B,), int(n), device=dev)
    p.prefix = n.clamp(max=S).to(torch.int32)
    return True


def _chunked(p: Plan, rule: Chunked, B: int, S: int, dev) -> bool:
    if p.chunk not in (0, rule.size):
        return False  # chunks of a second size: evaluated densely
    p.chunk = rule.size
    return True


# how each compiled mask rule folds into the plan (False: evaluate it into a dense mask);
# ``dev=None``: only whether it would (no tensor made)
_FOLD = {
    Causal: _causal,
    Window: lambda p, rule, B, S, dev: _window(p, rule.left, rule.right),
    Padding: _padding,
    KeyMask: _key_mask,
    Document: _document,
    PrefixLM: _prefix_lm,
    Chunked: _chunked,
}


def fold(call: AttentionCall, build: bool = True) -> tuple[Plan, list]:
    """The plan of ``call``'s flags and compiled rules, and the mask rules left over (to be
    evaluated into a dense mask). ``build=False`` only sorts the rules (no tensor is made or
    read, so nothing waits for the GPU); its plan is not for the kernels."""
    p = Plan(causal=call.causal, mask=call.mask, bias=call.bias)
    if call.window is not None:
        _window(p, *call.window)
    dense = []
    for rule in and_terms(call.mask_mod):
        fn = _FOLD.get(type(rule))
        if fn is None or not fn(p, rule, call.B, call.S, call.query.device if build else None):
            dense.append(rule)
    return p, dense


def plan(call: AttentionCall) -> Plan:
    """Translate a validated call (one :func:`reasons` accepts) into kernel terms."""
    why = reasons(call)
    if why:
        raise ValueError(f"backend 'triton' cannot run this call: {'; '.join(why)}")
    p, dense = fold(call)
    dev = call.query.device
    if dense:
        b, h, i, j = call.indices(0, call.L, 0, call.S)
        m = None
        for rule in dense:
            r = rule(b, h, i, j)
            if not isinstance(r, Tensor) or r.dtype != torch.bool:
                got = r.dtype if isinstance(r, Tensor) else type(r).__name__
                raise TypeError(f"mask_mod must return a boolean tensor (True = may attend), got {got}")
            m = r if m is None else m & r
        m = m.reshape((1,) * (4 - m.ndim) + tuple(m.shape))
        p.mask = m if p.mask is None else p.mask & m
    sm = call.score_mod
    if type(sm) is Alibi:
        p.slopes = sm.slopes.to(dev, torch.float32).contiguous()
    elif type(sm) is Softcap:
        p.softcap = float(sm.cap)
    elif type(sm) is RelativeBias:
        t = sm.table.to(dev)
        p.table = (t if t.ndim == 2 else t.unsqueeze(0)).float().contiguous()
    return p
