"""``triton``: fused attention kernels (forward and backward) that keep attend's semantics.

Shape legend: as :mod:`attend.backends.base` — q (B, Hq, L, E), k (B, Hkv, S, E),
v (B, Hkv, S, Ev); lse (B, Hq, L) float32 in log2 units.

The kernels (:mod:`attend.backends._flash`) run FlashAttention-2's scheme: an online
softmax over key blocks in fp32, the log-sum-exp saved, and a backward that recomputes
the probabilities from it. On top of that they keep what attend promises:

- dot-like scores (``dot``, ``scaled_dot``, ``cosine``, ``General``): the score's
  ``as_dot`` transforms q and k in PyTorch (so its parameters get gradients), the kernel
  takes the dot product;
- masks: ``causal`` (bottom-right), ``window``, and the rules of :mod:`attend.masks`
  (``padding``, ``key_mask``, ``document``, ``prefix_lm``, ``causal``,
  ``sliding_window`` and their ``and_masks``) compiled in, with key blocks they rule
  out entirely never loaded; boolean and additive dense masks (a bias that requires
  grad gets its gradient); any other ``mask_mod`` is evaluated into a dense boolean
  mask first;
- score_mods compiled in: :func:`attend.mods.alibi`, :func:`~attend.mods.softcap`,
  :func:`~attend.mods.relative_bias` (its table learns: the gradient is summed in);
- grouped/multi-query heads, fp16/bf16/fp32, head dims up to 256 (any, padded to a power
  of two inside), any L and S, any strides; a row with no key gives exactly zero;
- **the weights**: ``return_weights=True`` runs a second kernel that turns the saved
  log-sum-exp into the exact probabilities the forward used; :func:`attend.attention_weights`
  computes only chosen heads/rows, :func:`attend.key_totals` the per-key column sums.
  The returned weights carry no gradient (the output's gradients are exact).
- **attention sinks** (``sinks=``, one logit per query head): the kernels' log-sum-exp and
  output are corrected in PyTorch and the backward runs on the corrected ones
  (:class:`_WithSinks`), so no kernel changes.

It cannot do dropout, hard attention, additive (Bahdanau) or arbitrary callable scores,
other score_mods, or float64; ``can_run`` says so and ``auto`` falls back.

The kernels are registered as PyTorch custom ops (``torch.ops.attend.flash_attention``
and ``flash_attention_backward``, with fake-tensor rules and autograd), so
``torch.compile`` keeps them whole. On a GPU they autotune their block sizes; on the
CPU they run only under Triton's interpreter (``TRITON_INTERPRET=1``, set before the
first call), which is how CPU CI tests them — ``auto`` never picks that path.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .base import AttentionCall, Backend, _logaddexp

MAX_HEAD_DIM = 256
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@functools.lru_cache(maxsize=1)
def _import_error() -> Optional[str]:
    try:
        import triton  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return f"Triton is not installed ({type(e).__name__}: {e}); pip install 'attend[triton]'"
    return None


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---- what a call asks of the kernels ----------------------------------------------------
@dataclass
class Plan:
    """The kernel-side description of a call: flags, small tensors, and the score's scale."""

    scale: float
    causal: bool = False
    window_left: int = -1  # -1: unbounded
    window_right: int = -1
    mask: Optional[Tensor] = None  # (B|1, H|1, L|1, S|1) bool
    bias: Optional[Tensor] = None  # (B|1, H|1, L|1, S|1) float
    lens: Optional[Tensor] = None  # (B,) int32: keys >= lens[b] are padding
    kvalid: Optional[Tensor] = None  # (B, S) bool
    doc: Optional[Tensor] = None  # (B|1, S) int32 document ids
    doc_lo: Optional[Tensor] = None  # (B|1, S) int32: first position of each position's document
    doc_hi: Optional[Tensor] = None  # (B|1, S) int32: one past its last
    prefix: Optional[Tensor] = None  # (B,) int32 prefix-LM lengths
    slopes: Optional[Tensor] = None  # (Hq,) float32 ALiBi slopes
    table: Optional[Tensor] = None  # (Hq|1, 2R+1) float32 relative-position table
    softcap: float = 0.0  # 0: none

    def op_args(self) -> tuple:
        return (self.mask, self.bias, self.lens, self.kvalid, self.doc, self.doc_lo, self.doc_hi, self.prefix,
                self.slopes, self.table, self.scale, self.causal, self.window_left, self.window_right, self.softcap)


def reasons(call: AttentionCall) -> list[str]:
    """Why the kernels cannot run ``call`` (empty: they can). Cheap: builds no tensor."""
    why = []
    if not getattr(call.score, "dot_like", False):
        why.append(f"score {getattr(call.score, 'name', type(call.score).__name__)!r} is not dot-like")
    if call.dropout_p > 0:
        why.append("no dropout in the fused kernels")
    if call.hard:
        why.append("no hard attention in the fused kernels")
    if call.query.dtype not in _DTYPES:
        why.append(f"dtype {call.query.dtype} (the kernels take float16, bfloat16, float32)")
    E = call.query.shape[-1]
    if E > MAX_HEAD_DIM or call.Ev > MAX_HEAD_DIM:
        why.append(f"head dims up to {MAX_HEAD_DIM}, got E={E}, Ev={call.Ev}")
    sm = call.score_mod
    if sm is not None and not (
            (_kind(sm) == "alibi" and sm.slopes.numel() == call.Hq and not sm.slopes.requires_grad)
            or _kind(sm) == "softcap"
            or (_kind(sm) == "relative_bias" and (sm.table.ndim == 1 or sm.table.shape[0] == call.Hq))):
        why.append(f"score_mod {sm!r} is not compiled into the kernels (alibi with one slope per query head, "
                   "softcap, relative_bias are)")
    return why


def plan(call: AttentionCall) -> Plan:
    """Translate a validated call (one :func:`reasons` accepts) into kernel terms."""
    why = reasons(call)
    if why:
        raise ValueError(f"backend 'triton' cannot run this call: {'; '.join(why)}")
    p = Plan(scale=0.0)
    B, Hq, L, S = call.B, call.Hq, call.L, call.S
    dev = call.query.device
    p.causal = call.causal
    if call.window is not None:
        _window(p, *call.window)
    p.mask = call.mask
    p.bias = call.bias
    dense = []  # mask rules the kernels do not know: evaluated into a dense mask
    for rule in _and_terms(call.mask_mod):
        if not _compile_rule(p, rule, B, S, dev):
            dense.append(rule)
    if dense:
        b, h, i, j = call.indices(0, L, 0, S)
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
    if _kind(sm) == "alibi":
        p.slopes = sm.slopes.to(dev, torch.float32).contiguous()
    elif _kind(sm) == "softcap":
        p.softcap = float(sm.cap)
    elif _kind(sm) == "relative_bias":
        t = sm.table.to(dev)
        p.table = (t if t.ndim == 2 else t.unsqueeze(0)).float().contiguous()
    return p


def _kind(rule) -> str:
    """A rule's ``kind`` (attend's rules name themselves; plain functions are "custom")."""
    kind = getattr(rule, "kind", "custom")
    return kind if isinstance(kind, str) else "custom"


def _window(p: Plan, left, right) -> None:
    if left is not None:
        p.window_left = left if p.window_left < 0 else min(p.window_left, left)
    if right is not None:
        p.window_right = right if p.window_right < 0 else min(p.window_right, right)


def _and_terms(rule):
    """The terms of a rule that is an AND of rules (``and_masks`` nests flatten)."""
    if rule is None:
        return
    if _kind(rule) == "and":
        for r in rule.mods:
            yield from _and_terms(r)
    else:
        yield rule


def _dense_rules(call: AttentionCall) -> bool:
    """Whether :func:`plan` would evaluate some mask rule of ``call`` into a dense mask
    (the rules :func:`_compile_rule` folds into the kernels, one document/prefix rule each)."""
    once = set()
    for rule in _and_terms(call.mask_mod):
        kind = _kind(rule)
        if kind in ("causal", "window", "padding", "key_mask"):
            continue
        if kind in ("document", "prefix_lm") and kind not in once:
            once.add(kind)
            continue
        return True
    return False


def _compile_rule(p: Plan, rule, B: int, S: int, dev) -> bool:
    """Fold one mask rule into the plan's flags; False if the kernels do not know it."""
    if _kind(rule) == "causal":
        p.causal = True
        return True
    if _kind(rule) == "window":
        _window(p, rule.left, rule.right)
        return True
    if _kind(rule) == "padding" and rule.lengths.shape == (B,):
        n = rule.lengths.to(dev).clamp(max=S).to(torch.int32)
        p.lens = n if p.lens is None else torch.minimum(p.lens, n)
        return True
    if _kind(rule) == "key_mask" and rule.valid.shape == (B, S):
        v = rule.valid.to(dev)
        p.kvalid = v if p.kvalid is None else p.kvalid & v
        return True
    if _kind(rule) == "document" and p.doc is None and rule.ids.shape[-1] == S \
            and (rule.ids.ndim == 1 or rule.ids.shape[0] == B):
        ids = rule.ids.to(dev)
        ids = (ids if ids.ndim == 2 else ids.unsqueeze(0)).to(torch.int32).contiguous()  # (B|1, S)
        p.doc = ids
        if bool((ids[:, 1:] >= ids[:, :-1]).all()):  # sorted (packed): each document is one run
            p.doc_lo = torch.searchsorted(ids, ids, right=False).to(torch.int32)
            p.doc_hi = torch.searchsorted(ids, ids, right=True).to(torch.int32)
        return True
    if _kind(rule) == "prefix_lm" and p.prefix is None:
        n = rule.prefix_len
        n = n.to(dev) if isinstance(n, Tensor) else torch.full((B,), int(n), device=dev)
        if n.shape != (B,):
            return False
        p.prefix = n.clamp(max=S).to(torch.int32)
        return True
    return False


# ---- launching the kernels ----------------------------------------------------------------
def _pow2(n: int) -> int:
    return max(16, 1 << (max(n, 1) - 1).bit_length())


def _strides(t: Optional[Tensor]) -> tuple:
    """Strides with 0 on size-1 (broadcast) dims; zeros when there is no tensor."""
    if t is None:
        return (0, 0, 0, 0)
    return tuple(0 if t.shape[d] == 1 else t.stride(d) for d in range(4))


def _mask_args(p: Plan, dummy: Tensor, L: int, S: int) -> dict:
    """The mask/score arguments every kernel shares (names as in _flash)."""
    m = p.mask.view(torch.uint8) if p.mask is not None else None
    smb, smh, smm, smn = _strides(m)
    sbb, sbh, sbm, sbn = _strides(p.bias)
    kv = p.kvalid.view(torch.uint8) if p.kvalid is not None else None
    return dict(
        MASK=m if m is not None else dummy, smb=smb, smh=smh, smm=smm, smn=smn,
        BIAS=p.bias if p.bias is not None else dummy, sbb=sbb, sbh=sbh, sbm=sbm, sbn=sbn,
        LENS=p.lens if p.lens is not None else dummy,
        KVALID=kv if kv is not None else dummy, skvb=kv.stride(0) if kv is not None else 0,
        DOC=p.doc if p.doc is not None else dummy,
        sdocb=(0 if p.doc.shape[0] == 1 else p.doc.stride(0)) if p.doc is not None else 0,
        DOC_LO=p.doc_lo if p.doc_lo is not None else dummy, DOC_HI=p.doc_hi if p.doc_hi is not None else dummy,
        PREFIX=p.prefix if p.prefix is not None else dummy,
        SLOPES=p.slopes if p.slopes is not None else dummy,
        TABLE=p.table if p.table is not None else dummy,
        stabh=(0 if p.table.shape[0] == 1 else p.table.stride(0)) if p.table is not None else 0,
        cap=p.softcap if p.softcap > 0 else 1.0,
        WL=max(p.window_left, 0), WR=max(p.window_right, 0),
        REL_R=(p.table.shape[-1] - 1) // 2 if p.table is not None else 0,
        # the autotuner's key sees lengths rounded up to a power of two: a new length reuses
        # the blocks tuned for its bucket instead of benchmarking every config again
        TUNE_L=_pow2(L), TUNE_S=_pow2(S),
        IS_CAUSAL=p.causal, HAS_WL=p.window_left >= 0, HAS_WR=p.window_right >= 0, HAS_LENS=p.lens is not None,
        HAS_KVALID=p.kvalid is not None, HAS_DOC=p.doc is not None,
        DOC_SKIP=p.doc_lo is not None and L <= S, HAS_PREFIX=p.prefix is not None,
        HAS_MASK=p.mask is not None, HAS_BIAS=p.bias is not None,
        MOD=1 if p.slopes is not None else 2 if p.softcap > 0 else 3 if p.table is not None else 0,
    )


def _prec(dtype: torch.dtype, device: torch.device) -> str:
    # fp32 inputs keep full fp32 products (tf32 would miss the tolerance rule); 16-bit
    # inputs use the tensor cores' native products with fp32 accumulation. The CPU
    # interpreter multiplies bfloat16 wrongly, so there 16-bit tiles are upcast first.
    if dtype == torch.float32:
        return "ieee"
    return "upcast" if device.type == "cpu" and dtype == torch.bfloat16 else "tf32"


# Block shapes tried by the autotuner on a GPU, per kernel and padded head dim: (BLOCK_M,
# BLOCK_N, warps, stages). Chosen from `python benchmarks/gpu_compile.py --sweep` (sm_90,
# causal, bf16; results in benchmarks/results/gpu-compile-sm90-*-sweep-*.md): only shapes
# whose every dot compiles to Hopper wgmma (mixed where none does) and that neither spill
# registers nor exceed shared memory. The GPU then picks among them by timing.
# _fwd / _weights: BLOCK_M query rows held, BLOCK_N keys per step.
# A fifth entry "tma": the inner loop's tiles through tensor descriptors (tried only where
# ``_tma_ok``); swept with ``--tags tma``, they need fewer registers, which lets larger tiles
# go without spilling.
_FWD_CONFIGS = {
    64: [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 128, 8, 2),
         (128, 128, 8, 2, "tma"), (128, 64, 8, 3, "tma"), (128, 64, 4, 3, "tma")],
    128: [(128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 1), (128, 32, 8, 3), (64, 64, 4, 2),
          (128, 128, 8, 2, "tma"), (128, 128, 8, 3, "tma"), (128, 64, 8, 3, "tma"), (128, 64, 8, 2, "tma")],
    256: [(128, 32, 8, 2), (64, 32, 8, 2), (128, 64, 8, 1), (64, 64, 8, 1), (128, 16, 8, 3),
          (128, 64, 8, 2, "tma"), (64, 64, 8, 2, "tma"), (128, 32, 8, 3, "tma"), (128, 128, 8, 1, "tma")],
}
# _bwd_dq: BLOCK_M query rows held, BLOCK_N keys per step.
_DQ_CONFIGS = {
    64: [(128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 2), (64, 32, 4, 3),
         (128, 64, 8, 2, "tma"), (128, 64, 8, 3, "tma"), (128, 128, 8, 2, "tma")],
    128: [(128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 8, 2), (128, 32, 8, 3), (64, 32, 4, 3),
          (128, 64, 8, 2, "tma"), (128, 64, 8, 3, "tma"), (64, 128, 8, 2, "tma")],
    256: [(64, 32, 8, 2), (64, 32, 8, 3), (64, 16, 8, 2), (32, 64, 8, 2),
          (64, 32, 8, 2, "tma"), (128, 32, 8, 2, "tma"), (64, 64, 8, 2, "tma")],
}
# _bwd_dkdv / _key_totals: BLOCK_N keys held (with their fp32 dK, dV), BLOCK_M query rows per
# step; the register-bound kernel: at E = 128 only three pointer-load shapes are all-wgmma and
# spill-free; with TMA, pipelined ones fit too; no BLOCK_N = 128 fits there either way.
_DKDV_CONFIGS = {
    64: [(64, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 1), (64, 64, 4, 1), (64, 64, 8, 3),
         (128, 64, 8, 2, "tma"), (128, 64, 8, 3, "tma"), (128, 128, 8, 1, "tma")],
    128: [(64, 64, 8, 1), (128, 64, 8, 1), (64, 64, 4, 1), (32, 64, 8, 2), (64, 32, 8, 2),
          (128, 64, 8, 2, "tma"), (64, 64, 8, 2, "tma"), (64, 64, 8, 3, "tma")],
    256: [(32, 64, 8, 1), (32, 32, 8, 1), (64, 16, 8, 3), (16, 64, 8, 1),
          (64, 16, 8, 2, "tma"), (64, 16, 8, 3, "tma")],
}
# float32 inputs (no tensor cores: fp32 FMA products, tiles twice the bytes): smaller blocks,
# spill-free in the fp32 sweeps (small grid: blocks 16..64, 1-2 stages; causal) at each head
# dim and in the compile report (plain too); the E = 64 list spills kilobytes at E = 256.
# fp32 is for accuracy on the GPU, not speed.
_FP32_CONFIGS = {
    64: {"_fwd": [(64, 32, 8, 2), (32, 64, 8, 2), (64, 16, 8, 2), (16, 64, 8, 2)],
         "_bwd_dq": [(32, 64, 8, 2), (32, 32, 8, 2), (64, 16, 8, 2), (16, 64, 8, 2)],
         "_bwd_dkdv": [(32, 32, 8, 1), (16, 64, 8, 1), (64, 16, 8, 1), (32, 16, 8, 1)]},
    128: {"_fwd": [(32, 64, 8, 2), (16, 64, 8, 2), (32, 64, 8, 1), (32, 16, 8, 2)],
          "_bwd_dq": [(32, 64, 8, 2), (64, 16, 8, 2), (16, 64, 8, 2), (32, 64, 8, 1)],
          "_bwd_dkdv": [(16, 64, 8, 1), (32, 16, 8, 1), (16, 32, 8, 1), (16, 16, 8, 1)]},
    256: {"_fwd": [(32, 32, 8, 2), (16, 64, 8, 2), (32, 16, 8, 2), (16, 32, 8, 2)],
          "_bwd_dq": [(32, 32, 8, 2), (64, 16, 8, 2), (16, 64, 8, 2), (32, 16, 8, 2)],
          "_bwd_dkdv": [(32, 16, 8, 1), (16, 32, 8, 1), (16, 16, 8, 1)]},
}
# What the autotuner's choice depends on (names a kernel lacks are skipped; Triton adds the dtypes).
_TUNE_KEY = ["TUNE_L", "TUNE_S", "E", "EV", "IS_CAUSAL", "HAS_WL", "HAS_WR", "HAS_LENS", "HAS_KVALID", "HAS_DOC",
             "DOC_SKIP", "HAS_PREFIX", "HAS_MASK", "HAS_BIAS", "MOD", "HAS_ROWS", "HAS_HEADS", "COMPUTE_OUT",
             "BIAS_GRAD", "TABLE_GRAD", "EXACT_DELTA", "ATOMIC_DQ", "TMA_OK"]


def _bucket(d: int) -> int:
    return 64 if d <= 64 else 128 if d <= 128 else 256


def _configs(name: str, bucket: int, fp32: bool) -> list[tuple]:
    """(BLOCK_M, BLOCK_N, warps, stages[, tag]) the autotuner tries for this kernel."""
    like = {"_weights": "_fwd", "_key_totals": "_bwd_dkdv"}.get(name, name)
    if fp32:
        return _FP32_CONFIGS[bucket][like]
    configs = {"_fwd": _FWD_CONFIGS, "_bwd_dq": _DQ_CONFIGS, "_bwd_dkdv": _DKDV_CONFIGS}[like][bucket]
    return configs if name in _TMA_KERNELS else [c for c in configs if len(c) == 4]  # no TMA path: untagged


@functools.lru_cache(maxsize=None)
def _kernel(name: str, bucket: int, tuned: bool, fp32: bool = False):
    """The raw jitted kernel (interpreter, or blocks fixed by the caller) or an autotuned one."""
    import triton

    from . import _flash

    fn = getattr(_flash, name)
    if not tuned:
        return fn
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, **_extras(name, tag)}, num_warps=w, num_stages=s)
               for m, n, w, s, *tag in _configs(name, bucket, fp32)]
    reset = {"_bwd_dq": ["DTABLE"], "_bwd_dkdv": ["DQ_ACC"]}.get(name)  # what a timing run adds to
    key = [k for k in _TUNE_KEY if k in fn.arg_names]
    prune = {"early_config_prune": _prune_tma} if "TMA_OK" in fn.arg_names else None
    # the choices are kept on disk, in Triton's cache (TRITON_CACHE_DIR, keyed by GPU target,
    # kernel source, tuning key and configs): a new process does not time them again
    return triton.autotune(configs=configs, key=key, reset_to_zero=reset, prune_configs_by=prune,
                           cache_results=not interpreting())(fn)


# Kernels with a ``TMA`` constexpr: the tiles of the inner loop (K/V in the forward and dQ,
# Q/dO in dK/dV, which also loads its K/V block that way) through tensor descriptors.
_TMA_KERNELS = ("_fwd", "_bwd_dq", "_bwd_dkdv")


def _extras(name: str, tag: list) -> dict:
    """Constexprs a config's optional tag sets ("tma": ``TMA=True``)."""
    return {"TMA": bool(tag) and tag[0] == "tma"} if name in _TMA_KERNELS else {}


def _prune_tma(configs, nargs, **kwargs):
    """Drop the tensor-descriptor configs for inputs TMA cannot read (see ``_tma_ok``)."""
    if kwargs.get("TMA_OK", nargs.get("TMA_OK")):
        return configs
    return [c for c in configs if not c.kwargs.get("TMA")]


def _tma_ok(*ts: Tensor) -> bool:
    """Whether Hopper's tensor-memory accelerator can read these (B, H, N, D) tensors through a
    per-head 2-D descriptor: a CUDA device of compute capability 9 or newer, the last dimension
    contiguous, rows not broadcast, the base and every other stride a multiple of 16 bytes."""
    if ts[0].device.type == "cuda" and torch.cuda.get_device_capability(ts[0].device)[0] < 9:
        return False  # (the launchers' tensors share one device)
    for t in ts:
        size = t.element_size()
        if t.stride(-1) != 1 or t.stride(-2) < 1 or t.data_ptr() % 16:
            return False
        if any((st * size) % 16 for st in t.stride()[:-1]):
            return False
    return True


def _tma_launch(kw: dict, tuned: bool, tma: bool, oks: tuple, what: str, device: torch.device) -> None:
    """The launchers' TMA step (``oks``: ``_tma_ok`` per kernel launched): fixed blocks take the
    caller's ``tma``, refused unless every kernel can; autotuning leaves it to the configs
    (pruned by ``TMA_OK``). Where a descriptor may be made, the scratch allocator comes first."""
    if not tuned:
        if tma and not all(oks):
            raise ValueError(f"tma=True needs {what} with a contiguous last dimension and 16-byte aligned strides")
        kw.update(TMA=tma)
    if device.type == "cuda" and any(oks) and (tma or tuned):
        _set_allocator()


def _set_allocator() -> None:
    """Tensor descriptors made inside a kernel need a little global scratch memory, which
    Triton asks an allocator for; install one on torch's caching allocator, unless the user
    set their own. Per thread (Triton keeps it in a context variable: autograd's backward
    thread starts without one), so called before each launch that may use them."""
    import triton

    try:
        from triton.runtime import _allocation
        theirs = _allocation._allocator.get() is not _allocation._NULL_ALLOCATOR
    except (ImportError, AttributeError):  # a Triton without these internals: set ours anyway
        theirs = False
    if not theirs:
        triton.set_allocator(_scratch)


def _scratch(size: int, alignment: int, stream: Optional[int]) -> Tensor:
    return torch.empty(size, device="cuda", dtype=torch.int8)


def _blocks(block_m: int, block_n: int, dev: torch.device) -> tuple[dict, bool]:
    """(launch keywords, autotuned?): fixed blocks when given or interpreting, else autotune."""
    if block_m > 0 and block_n > 0:
        return dict(BLOCK_M=block_m, BLOCK_N=block_n), False
    if dev.type != "cuda":  # interpreter: small blocks keep it quick
        return dict(BLOCK_M=16, BLOCK_N=16), False
    return {}, True


def _grid(n: int, which: str, other: int):
    return lambda meta: ((n + meta[which] - 1) // meta[which], other)


def _on_device(launcher):
    """Run a launcher with its first tensor's GPU as the current device: Triton launches on the
    current device, which need not be the one holding the inputs."""
    @functools.wraps(launcher)
    def wrapped(t: Tensor, *args, **kwargs):
        if t.device.type != "cuda":
            return launcher(t, *args, **kwargs)
        with torch.cuda.device(t.device):
            return launcher(t, *args, **kwargs)
    return wrapped


def _check_device(t: Tensor) -> None:
    if t.device.type == "cpu" and not interpreting():
        raise RuntimeError("the triton backend runs on the CPU only under TRITON_INTERPRET=1 (set before importing triton)")


@_on_device
def flash_forward(q: Tensor, k: Tensor, v: Tensor, p: Plan, *, rows: Optional[Tensor] = None,
                  heads: Optional[Tensor] = None, compute_out: bool = True, block_m: int = 0,
                  block_n: int = 0, tma: bool = False) -> tuple[Optional[Tensor], Tensor]:
    """Launch ``_fwd``: (out (B, Hq, L, Ev) or None, lse (B, h, r) fp32, log2 units). With fixed
    blocks (or in the interpreter) ``tma=True`` loads K/V through tensor descriptors; autotuning
    tries both where ``_tma_ok``."""
    _check_device(q)
    B, Hq, L, E = q.shape
    Hkv, S, Ev = k.shape[1], k.shape[2], v.shape[3]
    n_rows = L if rows is None else rows.numel()
    n_heads = Hq if heads is None else heads.numel()
    dummy = q.new_empty(1, dtype=torch.int32)
    out = q.new_empty(B, Hq, L, Ev) if compute_out else None
    o = out if out is not None else q.new_empty(1, 1, 1, 1)
    lse = torch.empty(B, n_heads, n_rows, device=q.device, dtype=torch.float32)
    kw, tuned = _blocks(block_m, block_n, q.device)
    tma_ok = _tma_ok(k, v)
    _tma_launch(kw, tuned, tma, (tma_ok,), "K and V", q.device)
    fn = _kernel("_fwd", _bucket(max(E, Ev)), tuned, q.dtype == torch.float32)
    grid = _grid(n_rows, "BLOCK_M", B * n_heads)
    fn[grid](q, k, v, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
             rows if rows is not None else dummy, heads if heads is not None else dummy, n_rows, n_heads,
             L, S, S - L, Hq // Hkv, p.scale, **_mask_args(p, dummy, L, S),
             E=E, EV=Ev, BLOCK_D=_pow2(E), BLOCK_DV=_pow2(Ev), DOT_PREC=_prec(q.dtype, q.device),
             HAS_ROWS=rows is not None, HAS_HEADS=heads is not None, COMPUTE_OUT=compute_out, TMA_OK=int(tma_ok), **kw)
    return out, lse


@_on_device
def flash_backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, p: Plan, *,
                   bias_grad: bool = False, table_grad: bool = False, block_m: int = 0, block_n: int = 0,
                   tma: bool = False, dq_mode: str = "auto"):
    """Launch the backward: (dq, dk, dv, dbias (B, Hq, L, S) fp32 or None, dtable or None).
    ``tma`` as in ``flash_forward`` (K/V tiles in dQ; Q/dO tiles and the K/V block in dK/dV).
    ``dq_mode``: "separate" (the ``_bwd_dq`` kernel: deterministic), "atomic" (dK/dV's kernel
    adds dQ by atomics: fewer products, run-to-run differences in dQ's last bits) or "auto":
    separate with fixed blocks, in the interpreter, for fp32 inputs (there the atomic variant
    spills registers at every head dim: GPU-NOTES), for bias/table gradients and under
    ``torch.use_deterministic_algorithms``; otherwise both timed once per tuning key on the
    GPU and the faster kept (``_DQ_CHOICE``)."""
    if dq_mode not in ("auto", "atomic", "separate"):
        raise ValueError(f"dq_mode must be 'auto', 'atomic' or 'separate', got {dq_mode!r}")
    atomic_ok = not (bias_grad or table_grad or torch.are_deterministic_algorithms_enabled())
    if dq_mode == "atomic" and not atomic_ok:
        raise ValueError("dq_mode='atomic' cannot give a bias or table gradient, nor run under "
                         "torch.use_deterministic_algorithms(True)")
    _check_device(q)
    B, Hq, L, E = q.shape
    Hkv, S, Ev = k.shape[1], k.shape[2], v.shape[3]
    dummy = q.new_empty(1, dtype=torch.int32)
    kw, tuned = _blocks(block_m, block_n, q.device)
    if dq_mode == "auto" and not (tuned and atomic_ok and q.dtype != torch.float32):
        dq_mode = "separate"
    dq_tma, dkdv_tma = _tma_ok(k, v), _tma_ok(q, do, k, v)
    atomic_tma = dkdv_tma and E % 4 == 0  # and the fp32 dQ accumulator's rows 16-byte aligned
    if dq_mode == "atomic":
        _tma_launch(kw, tuned, tma, (atomic_tma,), "Q, K, V and dO (and E a multiple of 4)", q.device)
    else:  # separate, or both timed
        _tma_launch(kw, tuned, tma, (dq_tma, dkdv_tma), "Q, K, V and dO", q.device)
    bucket = _bucket(max(E, Ev))
    delta = torch.empty(B, Hq, L, device=q.device, dtype=torch.float32)
    exact_delta = (bias_grad or table_grad) and q.dtype != torch.float32
    if not exact_delta:
        bm = 64 if Ev <= 128 else 32
        _kernel("_delta", bucket, False)[((L + bm - 1) // bm, B * Hq)](
            out, do, delta, *out.stride(), *do.stride(), Hq, L, EV=Ev, BLOCK_DV=_pow2(Ev), BLOCK_M=bm)
    shared = _mask_args(p, dummy, L, S)
    common = dict(L=L, S=S, OFF=S - L, GROUPS=Hq // Hkv, sm_scale=p.scale, E=E, EV=Ev, BLOCK_D=_pow2(E),
                  BLOCK_DV=_pow2(Ev), DOT_PREC=_prec(q.dtype, q.device), **shared)
    fp32 = q.dtype == torch.float32

    def launch(atomic: bool):
        dk, dv = k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous
        dbias = torch.zeros(B, Hq, L, S, device=q.device, dtype=torch.float32) if bias_grad else None
        dtable = torch.zeros_like(p.table) if table_grad else None
        dq_acc = torch.zeros(B, Hq, L, E, device=q.device, dtype=torch.float32) if atomic else dummy
        if not atomic:
            dq = q.new_empty(q.shape)
            _kernel("_bwd_dq", bucket, tuned, fp32)[_grid(L, "BLOCK_M", B * Hq)](
                q, k, v, do, lse, delta, dq, dbias if dbias is not None else dummy,
                dtable if dtable is not None else dummy, *q.stride(), *k.stride(), *v.stride(), *do.stride(),
                *dq.stride(), Hq=Hq, BIAS_GRAD=bias_grad, TABLE_GRAD=table_grad, EXACT_DELTA=exact_delta,
                TMA_OK=int(dq_tma), **common, **kw)
        _kernel("_bwd_dkdv", bucket, tuned, fp32)[_grid(S, "BLOCK_N", B * Hkv)](
            q, k, v, do, lse, delta, dk, dv, dq_acc, *q.stride(), *k.stride(), *v.stride(), *do.stride(),
            *dk.stride(), *dv.stride(), Hq=Hq, Hkv=Hkv, ATOMIC_DQ=atomic,
            TMA_OK=int(atomic_tma if atomic else dkdv_tma), **common, **kw)
        if atomic:
            dq = dq_acc.to(q.dtype)
        return dq, dk, dv, dbias, dtable

    times = None
    if dq_mode == "auto":
        key = (q.device, q.dtype, dq_tma, dkdv_tma, atomic_tma) + tuple(common[n] for n in _TUNE_KEY if n in common)
        if key not in _DQ_CHOICE:
            _time_dq(key, launch)
        dq_mode, times = _DQ_CHOICE.get(key, ("separate", None))
    _LAST_DQ.update(mode=dq_mode, ms=times)
    return launch(dq_mode == "atomic")


# How the autotuned backward makes dQ, per tuning key, in this process (the kernels' own block
# choices are kept on disk): ("separate" or "atomic", {mode: ms}), whichever ran the whole
# backward faster.
_DQ_CHOICE: dict = {}
_LAST_DQ = {"mode": None, "ms": None}  # the last call's (benchmarks/gpu.py reports it)


def _time_dq(key: tuple, launch) -> None:
    """Time the whole backward both ways (each kernel autotuned on its first call) and keep the
    faster; while a CUDA graph is being captured nothing can be timed (separate, nothing kept)."""
    if key[0].type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    from triton.testing import do_bench

    times = {mode: do_bench(lambda: launch(mode == "atomic")) for mode in ("separate", "atomic")}
    _DQ_CHOICE[key] = (min(times, key=times.get), times)


@_on_device
def flash_weights(q: Tensor, k: Tensor, lse: Tensor, p: Plan, *, rows: Optional[Tensor] = None,
                  heads: Optional[Tensor] = None, dtype: Optional[torch.dtype] = None, block_m: int = 0,
                  block_n: int = 0) -> Tensor:
    """Launch ``_weights``: (B, h, r, S) probabilities from the saved log-sum-exp."""
    _check_device(q)
    B, Hq, L, E = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    n_rows = L if rows is None else rows.numel()
    n_heads = Hq if heads is None else heads.numel()
    dummy = q.new_empty(1, dtype=torch.int32)
    w = torch.empty(B, n_heads, n_rows, S, device=q.device, dtype=dtype or q.dtype)
    kw, tuned = _blocks(block_m, block_n, q.device)
    _kernel("_weights", _bucket(E), tuned, q.dtype == torch.float32)[_grid(n_rows, "BLOCK_M", B * n_heads)](
        q, k, lse, w, *q.stride(), *k.stride(), *w.stride(),
        rows if rows is not None else dummy, heads if heads is not None else dummy, n_rows, n_heads,
        L, S, S - L, Hq // Hkv, p.scale, **_mask_args(p, dummy, L, S), E=E, BLOCK_D=_pow2(E),
        DOT_PREC=_prec(q.dtype, q.device), HAS_ROWS=rows is not None, HAS_HEADS=heads is not None, **kw)
    return w


@_on_device
def flash_key_totals(q: Tensor, k: Tensor, lse: Tensor, p: Plan, *, block_m: int = 0, block_n: int = 0) -> Tensor:
    """Launch ``_key_totals``: (B, Hq, S) fp32, the sum over query rows of each key's weight."""
    _check_device(q)
    B, Hq, L, E = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    dummy = q.new_empty(1, dtype=torch.int32)
    t = torch.empty(B, Hq, S, device=q.device, dtype=torch.float32)
    kw, tuned = _blocks(block_m, block_n, q.device)
    _kernel("_key_totals", _bucket(E), tuned, q.dtype == torch.float32)[_grid(S, "BLOCK_N", B * Hq)](
        q, k, lse, t, *q.stride(), *k.stride(), Hq, L, S, S - L, Hq // Hkv, p.scale,
        **_mask_args(p, dummy, L, S), E=E, BLOCK_D=_pow2(E), DOT_PREC=_prec(q.dtype, q.device), **kw)
    return t


# ---- custom ops: torch.compile sees one opaque call with a fake-tensor rule and autograd ----
_AUX = "Tensor? mask, Tensor? bias, Tensor? lens, Tensor? kvalid, Tensor? doc, Tensor? doc_lo, Tensor? doc_hi, " \
       "Tensor? prefix, Tensor? slopes, Tensor? table"


def _plan_from(mask, bias, lens, kvalid, doc, doc_lo, doc_hi, prefix, slopes, table, scale, causal, wl, wr, cap):
    return Plan(scale=scale, causal=causal, window_left=wl, window_right=wr, mask=mask, bias=bias, lens=lens,
                kvalid=kvalid, doc=doc, doc_lo=doc_lo, doc_hi=doc_hi, prefix=prefix, slopes=slopes, table=table,
                softcap=cap)


@torch.library.custom_op("attend::flash_attention", mutates_args=())
def flash_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], bias: Optional[Tensor],
                    lens: Optional[Tensor], kvalid: Optional[Tensor], doc: Optional[Tensor],
                    doc_lo: Optional[Tensor], doc_hi: Optional[Tensor], prefix: Optional[Tensor],
                    slopes: Optional[Tensor], table: Optional[Tensor], scale: float, causal: bool,
                    window_left: int, window_right: int, softcap: float, block_m: int,
                    block_n: int) -> tuple[Tensor, Tensor]:
    """Fused attention forward: (out (B, Hq, L, Ev), lse (B, Hq, L) fp32, log2 units)."""
    p = _plan_from(mask, bias, lens, kvalid, doc, doc_lo, doc_hi, prefix, slopes, table, scale, causal,
                   window_left, window_right, softcap)
    out, lse = flash_forward(q, k, v, p, block_m=block_m, block_n=block_n)
    return out, lse


@flash_attention.register_fake
def _(q, k, v, mask, bias, lens, kvalid, doc, doc_lo, doc_hi, prefix, slopes, table, scale, causal,
      window_left, window_right, softcap, block_m, block_n):
    B, Hq, L, _ = q.shape
    return q.new_empty(B, Hq, L, v.shape[-1]), q.new_empty(B, Hq, L, dtype=torch.float32)


@torch.library.custom_op("attend::flash_attention_backward", mutates_args=())
def flash_attention_backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                             mask: Optional[Tensor], bias: Optional[Tensor], lens: Optional[Tensor],
                             kvalid: Optional[Tensor], doc: Optional[Tensor], doc_lo: Optional[Tensor],
                             doc_hi: Optional[Tensor], prefix: Optional[Tensor], slopes: Optional[Tensor],
                             table: Optional[Tensor], scale: float, causal: bool, window_left: int,
                             window_right: int, softcap: float, block_m: int, block_n: int, bias_grad: bool,
                             table_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused backward: (dq, dk, dv, dbias (B, Hq, L, S) fp32 or empty, dtable fp32 or empty)."""
    p = _plan_from(mask, bias, lens, kvalid, doc, doc_lo, doc_hi, prefix, slopes, table, scale, causal,
                   window_left, window_right, softcap)
    dq, dk, dv, dbias, dtable = flash_backward(do, q, k, v, out, lse, p, bias_grad=bias_grad, table_grad=table_grad,
                                               block_m=block_m, block_n=block_n)
    empty = q.new_empty(0, dtype=torch.float32)
    return dq, dk, dv, dbias if dbias is not None else empty, dtable if dtable is not None else empty.clone()


@flash_attention_backward.register_fake
def _(do, q, k, v, out, lse, mask, bias, lens, kvalid, doc, doc_lo, doc_hi, prefix, slopes, table, scale, causal,
      window_left, window_right, softcap, block_m, block_n, bias_grad, table_grad):
    B, Hq, L, _ = q.shape
    S = k.shape[2]
    dbias = q.new_empty(B, Hq, L, S, dtype=torch.float32) if bias_grad else q.new_empty(0, dtype=torch.float32)
    dtable = table.new_empty(table.shape, dtype=torch.float32) if table_grad else q.new_empty(0, dtype=torch.float32)
    # contiguous, as the real op allocates them (strides must match for compiled graphs)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dbias, dtable


def _setup_context(ctx, inputs, output):
    q, k, v, mask, bias, lens, kvalid, doc, doc_lo, doc_hi, prefix, slopes, table = inputs[:13]
    ctx.params = inputs[13:]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, mask, bias, lens, kvalid, doc, doc_lo, doc_hi, prefix, slopes, table)


def _aux_grads(bias: Optional[Tensor], dbias: Tensor, table: Optional[Tensor], dtable: Tensor,
               bias_grad: bool, table_grad: bool) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The bias's gradient summed over its broadcast dims, the table's cast back (or None)."""
    gbias = None
    if bias_grad:
        dims = [d for d in range(4) if bias.shape[d] == 1]
        gbias = (dbias.sum(dim=dims, keepdim=True) if dims else dbias).to(bias.dtype)
    gtable = dtable.to(table.dtype) if table_grad else None
    return gbias, gtable


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, mask, bias, lens, kvalid, doc, doc_lo, doc_hi, prefix, slopes, table = ctx.saved_tensors
    need = ctx.needs_input_grad
    bias_grad = bias is not None and need[4]
    table_grad = table is not None and need[12]
    dq, dk, dv, dbias, dtable = flash_attention_backward(
        dout, q, k, v, out, lse, mask, bias, lens, kvalid, doc, doc_lo, doc_hi, prefix, slopes, table,
        *ctx.params, bias_grad, table_grad)
    gbias, gtable = _aux_grads(bias, dbias, table, dtable, bias_grad, table_grad)
    return (dq, dk, dv, None, gbias) + (None,) * 7 + (gtable,) + (None,) * 7


torch.library.register_autograd("attend::flash_attention", _backward, setup_context=_setup_context)


# ---- attention sinks: one more term in each row's softmax denominator ------------------------
_LOG2E = 1.4426950408889634


def _sink_lse(lse: Tensor, sinks: Tensor, heads: Optional[Tensor] = None) -> Tensor:
    """log2(2^lse + 2^sink_h) for lse (B, h, r) in log2 units; rows with no key get the sink."""
    s2 = sinks.float() * _LOG2E
    if heads is not None:
        s2 = s2.index_select(0, heads.to(s2.device, torch.int64))
    return _logaddexp(lse, s2.view(1, -1, 1), torch.logaddexp2)


class _WithSinks(torch.autograd.Function):
    """The fused kernels with attention sinks, without a kernel change.

    With a sink the probabilities are ``p' = exp(s - lse')``, ``lse' = log(e^lse + e^sink)``,
    and the output ``o' = o · e^(lse - lse')``. The backward's formulas hold unchanged for
    ``p'`` (the sink is a constant in ``d p'_j / d s_k``), so the kernel's backward, given
    ``o'`` and ``lse'``, gives the exact dQ, dK, dV (and bias/table gradients); the sink's own
    gradient is ``-sum_rows p'_sink · (dO · o')``.
    """

    @staticmethod
    def forward(ctx, q, k, v, sinks, bias, table, p, block_m, block_n):
        out, lse = torch.ops.attend.flash_attention(q, k, v, *p.op_args(), block_m, block_n)
        lse_s = _sink_lse(lse, sinks)  # (B, Hq, L), log2 units
        out = (out.float() * torch.exp2(lse - lse_s).unsqueeze(-1)).to(out.dtype)  # (B, Hq, L, Ev)
        ctx.save_for_backward(q, k, v, out, lse_s, sinks, *p.op_args()[:10])
        ctx.params = (*p.op_args()[10:], block_m, block_n)
        ctx.mark_non_differentiable(lse_s)
        return out, lse_s

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse_s, sinks, mask, bias, lens, kvalid, doc, doc_lo, doc_hi, prefix, slopes, table = ctx.saved_tensors
        need = ctx.needs_input_grad
        bias_grad = bias is not None and need[4]
        table_grad = table is not None and need[5]
        dout = dout.contiguous()
        dq, dk, dv, dbias, dtable = torch.ops.attend.flash_attention_backward(
            dout, q, k, v, out, lse_s, mask, bias, lens, kvalid, doc, doc_lo, doc_hi, prefix, slopes, table,
            *ctx.params, bias_grad, table_grad)
        gbias, gtable = _aux_grads(bias, dbias, table, dtable, bias_grad, table_grad)
        gsinks = None
        if need[3]:
            delta = (dout.float() * out.float()).sum(-1)  # (B, Hq, L): dO · o'
            p_sink = torch.exp2(sinks.float().view(1, -1, 1) * _LOG2E - lse_s)  # (B, Hq, L)
            gsinks = (-(p_sink * delta).sum(dim=(0, 2))).to(sinks.dtype)
        return dq, dk, dv, gsinks, gbias, gtable, None, None, None


# ---- the backend ----------------------------------------------------------------------------
class Triton(Backend):
    """Fused Triton kernels (see the module doc). ``block_m``/``block_n`` fix the block
    shape (powers of two >= 16); by default a GPU autotunes and the interpreter uses 16."""

    name = "triton"

    def __init__(self, *, block_m: int = 0, block_n: int = 0, dense_rule_limit: int = 1 << 28):
        for arg, b in (("block_m", block_m), ("block_n", block_n)):
            if isinstance(b, bool) or not isinstance(b, int) or (b != 0 and (b < 16 or b & (b - 1))):
                raise ValueError(f"{arg} must be 0 (automatic) or a power of two >= 16, got {b!r}")
        self.block_m, self.block_n = block_m, block_n
        self.dense_rule_limit = dense_rule_limit  # bytes of a dense boolean (L, S) mask auto accepts

    def can_run(self, call: AttentionCall) -> list[str]:
        err = _import_error()
        if err:
            return [err]
        dev = call.query.device
        why = []
        if dev.type == "cpu" and not interpreting():
            why.append("inputs are on the CPU: Triton runs on a GPU (on the CPU only under TRITON_INTERPRET=1)")
        elif dev.type not in ("cpu", "cuda"):
            why.append(f"inputs are on {dev.type}: Triton runs on CUDA GPUs")
        return why + reasons(call)

    def auto_skip(self, call: AttentionCall) -> list[str]:
        if call.query.device.type == "cpu":
            return ["on the CPU it runs through Triton's interpreter (for tests), far slower than the other backends"]
        if _dense_rules(call) and call.mask_planes() * call.L * call.S > self.dense_rule_limit:
            need = call.mask_planes() * call.L * call.S
            return [f"would evaluate a mask rule it does not compile into a dense mask ({need / 2**20:.0f} MiB; "
                    f"auto limit {self.dense_rule_limit / 2**20:.0f} MiB), where a backend that evaluates it per "
                    "block can run"]
        return []

    def run(self, call: AttentionCall) -> tuple[Tensor, Optional[Tensor]]:
        p = plan(call)
        q, k, factor = call.score.as_dot(call.query, call.key)  # (B, Hq, L, E), (B, Hkv, S, E)
        p.scale = call.scale * factor
        if call.sinks is not None:
            out, lse = _WithSinks.apply(q, k, call.value, call.sinks, p.bias, p.table, p, self.block_m, self.block_n)
        else:
            out, lse = torch.ops.attend.flash_attention(q, k, call.value, *p.op_args(), self.block_m, self.block_n)
        weights = None
        if call.return_weights:
            weights = flash_weights(q.detach(), k.detach(), lse, p, block_m=self.block_m, block_n=self.block_n)
        return out, weights

    def weights(self, call: AttentionCall, heads: Optional[Tensor], rows: Optional[Tensor]) -> Tensor:
        p = plan(call)
        with torch.no_grad():
            q, k, factor = call.score.as_dot(call.query, call.key)
            p.scale = call.scale * factor
            dev = q.device
            rows = rows.to(dev, torch.int32) if rows is not None else None
            heads = heads.to(dev, torch.int32) if heads is not None else None
            _, lse = flash_forward(q, k, call.value, p, rows=rows, heads=heads, compute_out=False,
                                   block_m=self.block_m, block_n=self.block_n)
            if call.sinks is not None:
                lse = _sink_lse(lse, call.sinks, heads)
            return flash_weights(q, k, lse, p, rows=rows, heads=heads, block_m=self.block_m, block_n=self.block_n)

    def key_totals(self, call: AttentionCall) -> Tensor:
        p = plan(call)
        with torch.no_grad():
            q, k, factor = call.score.as_dot(call.query, call.key)
            p.scale = call.scale * factor
            _, lse = flash_forward(q, k, call.value, p, compute_out=False, block_m=self.block_m, block_n=self.block_n)
            if call.sinks is not None:
                lse = _sink_lse(lse, call.sinks)
            return flash_key_totals(q, k, lse, p, block_m=self.block_m, block_n=self.block_n)
