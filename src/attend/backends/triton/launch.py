"""Launchers: run one kernel (or the backward's two) on a plan, with blocks fixed or autotuned.

Each launcher takes ``target=``, the :class:`Target` its launches go to: by default the
kernels on the inputs' device. ``benchmarks/gpu_compile.py`` passes one of its own, which
records the launches to compile them ahead of time for a GPU it does not have.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from . import configs
from .plan import Plan, interpreting, kernel_args, pow2


class Target:
    """Where the launchers' kernels go (the default: this process's device)."""

    def kernel(self, name: str, bucket: int, tuned: bool, fp32: bool = False):
        """The kernel to launch: ``kernel[grid](*args, **kwargs)``."""
        return configs.kernel(name, bucket, tuned, fp32)

    def prec(self, dtype: torch.dtype, device: torch.device) -> str:
        """The dots' precision for inputs of ``dtype`` on ``device``."""
        return configs.prec(dtype, device)

    def check_device(self, t: Tensor) -> None:
        if t.device.type == "cpu" and not interpreting():
            raise RuntimeError("the triton backend runs on the CPU only under TRITON_INTERPRET=1 "
                               "(set before importing triton)")


LOCAL = Target()


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


@_on_device
def flash_forward(q: Tensor, k: Tensor, v: Tensor, p: Plan, *, rows: Optional[Tensor] = None,
                  heads: Optional[Tensor] = None, compute_out: bool = True, block_m: int = 0,
                  block_n: int = 0, tma: bool = False, target: Target = LOCAL) -> tuple[Optional[Tensor], Tensor]:
    """Launch ``_fwd``: (out (B, Hq, L, Ev) or None, lse (B, h, r) fp32, log2 units). With fixed
    blocks (or in the interpreter) ``tma=True`` loads K/V through tensor descriptors; autotuning
    tries both where ``configs.tma_ok``."""
    target.check_device(q)
    B, Hq, L, E = q.shape
    Hkv, S, Ev = k.shape[1], k.shape[2], v.shape[3]
    n_rows = L if rows is None else rows.numel()
    n_heads = Hq if heads is None else heads.numel()
    dummy = q.new_empty(1, dtype=torch.int32)
    out = q.new_empty(B, Hq, L, Ev) if compute_out else None
    o = out if out is not None else q.new_empty(1, 1, 1, 1)
    lse = torch.empty(B, n_heads, n_rows, device=q.device, dtype=torch.float32)
    kw, tuned = configs.blocks(block_m, block_n, q.device)
    tma_ok = configs.tma_ok(k, v)
    configs.tma_launch(kw, tuned, tma, (tma_ok,), "K and V", q.device)
    fn = target.kernel("_fwd", configs.bucket(max(E, Ev)), tuned, q.dtype == torch.float32)
    grid = _grid(n_rows, "BLOCK_M", B * n_heads)
    fn[grid](q, k, v, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
             rows if rows is not None else dummy, heads if heads is not None else dummy, n_rows, n_heads,
             L, S, S - L, Hq // Hkv, p.scale, **kernel_args(p, dummy, L, S),
             E=E, EV=Ev, BLOCK_D=pow2(E), BLOCK_DV=pow2(Ev), DOT_PREC=target.prec(q.dtype, q.device),
             HAS_ROWS=rows is not None, HAS_HEADS=heads is not None, COMPUTE_OUT=compute_out, TMA_OK=int(tma_ok), **kw)
    return out, lse


@_on_device
def flash_backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, p: Plan, *,
                   bias_grad: bool = False, table_grad: bool = False, block_m: int = 0, block_n: int = 0,
                   tma: bool = False, dq_mode: str = "auto", target: Target = LOCAL):
    """Launch the backward: (dq, dk, dv, dbias (B, Hq, L, S) fp32 or None, dtable or None).
    ``tma`` as in ``flash_forward`` (K/V tiles in dQ; Q/dO tiles and the K/V block in dK/dV).
    ``dq_mode``: "separate" (the ``_bwd_dq`` kernel: deterministic), "atomic" (dK/dV's kernel
    adds dQ by atomics: fewer products, run-to-run differences in dQ's last bits) or "auto":
    separate with fixed blocks, in the interpreter, for fp32 inputs (there the atomic variant
    spills registers at every head dim: GPU-NOTES), for bias/table gradients and under
    ``torch.use_deterministic_algorithms``; otherwise both timed once per tuning key on the
    GPU and the faster kept (``DQ_CHOICE``)."""
    if dq_mode not in ("auto", "atomic", "separate"):
        raise ValueError(f"dq_mode must be 'auto', 'atomic' or 'separate', got {dq_mode!r}")
    atomic_ok = not (bias_grad or table_grad or torch.are_deterministic_algorithms_enabled())
    if dq_mode == "atomic" and not atomic_ok:
        raise ValueError("dq_mode='atomic' cannot give a bias or table gradient, nor run under "
                         "torch.use_deterministic_algorithms(True)")
    target.check_device(q)
    B, Hq, L, E = q.shape
    Hkv, S, Ev = k.shape[1], k.shape[2], v.shape[3]
    dummy = q.new_empty(1, dtype=torch.int32)
    kw, tuned = configs.blocks(block_m, block_n, q.device)
    if dq_mode == "auto" and not (tuned and atomic_ok and q.dtype != torch.float32):
        dq_mode = "separate"
    dq_tma, dkdv_tma = configs.tma_ok(k, v), configs.tma_ok(q, do, k, v)
    atomic_tma = dkdv_tma and E % 4 == 0  # and the fp32 dQ accumulator's rows 16-byte aligned
    if dq_mode == "atomic":
        configs.tma_launch(kw, tuned, tma, (atomic_tma,), "Q, K, V and dO (and E a multiple of 4)", q.device)
    else:  # separate, or both timed
        configs.tma_launch(kw, tuned, tma, (dq_tma, dkdv_tma), "Q, K, V and dO", q.device)
    bucket = configs.bucket(max(E, Ev))
    delta = torch.empty(B, Hq, L, device=q.device, dtype=torch.float32)
    exact_delta = (bias_grad or table_grad) and q.dtype != torch.float32
    if not exact_delta:
        bm = 64 if Ev <= 128 else 32
        target.kernel("_delta", bucket, False)[((L + bm - 1) // bm, B * Hq)](
            out, do, delta, *out.stride(), *do.stride(), Hq, L, EV=Ev, BLOCK_DV=pow2(Ev), BLOCK_M=bm)
    shared = kernel_args(p, dummy, L, S)
    common = dict(L=L, S=S, OFF=S - L, GROUPS=Hq // Hkv, sm_scale=p.scale, E=E, EV=Ev, BLOCK_D=pow2(E),
                  BLOCK_DV=pow2(Ev), DOT_PREC=target.prec(q.dtype, q.device), **shared)
    fp32 = q.dtype == torch.float32

    def launch(atomic: bool):
        dk, dv = k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous
        dbias = torch.zeros(B, Hq, L, S, device=q.device, dtype=torch.float32) if bias_grad else None
        dtable = torch.zeros_like(p.table) if table_grad else None
        dq_acc = torch.zeros(B, Hq, L, E, device=q.device, dtype=torch.float32) if atomic else dummy
        if not atomic:
            dq = q.new_empty(q.shape)
            target.kernel("_bwd_dq", bucket, tuned, fp32)[_grid(L, "BLOCK_M", B * Hq)](
                q, k, v, do, lse, delta, dq, dbias if dbias is not None else dummy,
                dtable if dtable is not None else dummy, *q.stride(), *k.stride(), *v.stride(), *do.stride(),
                *dq.stride(), Hq=Hq, BIAS_GRAD=bias_grad, TABLE_GRAD=table_grad, EXACT_DELTA=exact_delta,
                TMA_OK=int(dq_tma), **common, **kw)
        target.kernel("_bwd_dkdv", bucket, tuned, fp32)[_grid(S, "BLOCK_N", B * Hkv)](
            q, k, v, do, lse, delta, dk, dv, dq_acc, *q.stride(), *k.stride(), *v.stride(), *do.stride(),
            *dk.stride(), *dv.stride(), Hq=Hq, Hkv=Hkv, ATOMIC_DQ=atomic,
            TMA_OK=int(atomic_tma if atomic else dkdv_tma), **common, **kw)
        if atomic:
            dq = dq_acc.to(q.dtype)
        return dq, dk, dv, dbias, dtable

    if dq_mode == "auto":
        key = (q.device, q.dtype, dq_tma, dkdv_tma, atomic_tma) + tuple(
            common[n] for n in configs.TUNE_KEY if n in common)
        if key not in DQ_CHOICE:
            _time_dq(key, launch)
        DQ_USED[0] = key
        dq_mode = DQ_CHOICE.get(key, ("separate", None))[0]
    return launch(dq_mode == "atomic")


# How the autotuned backward makes dQ, per tuning key, in this process (the kernels' own block
# choices are kept on disk): ("separate" or "atomic", {mode: ms}), whichever ran the whole
# backward faster.
DQ_CHOICE: dict = {}
DQ_USED: list = [None]  # the key of the last backward that chose (benchmarks/gpu.py reports its choice)


def _time_dq(key: tuple, launch) -> None:
    """Time the whole backward both ways (each kernel autotuned on its first call) and keep the
    faster; while a CUDA graph is being captured nothing can be timed (separate, nothing kept)."""
    if key[0].type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    from triton.testing import do_bench

    times = {mode: do_bench(lambda: launch(mode == "atomic")) for mode in ("separate", "atomic")}
    DQ_CHOICE[key] = (min(times, key=times.get), times)


@_on_device
def flash_weights(q: Tensor, k: Tensor, lse: Tensor, p: Plan, *, rows: Optional[Tensor] = None,
                  heads: Optional[Tensor] = None, dtype: Optional[torch.dtype] = None, block_m: int = 0,
                  block_n: int = 0, target: Target = LOCAL) -> Tensor:
    """Launch ``_weights``: (B, h, r, S) probabilities from the saved log-sum-exp."""
    target.check_device(q)
    B, Hq, L, E = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    n_rows = L if rows is None else rows.numel()
    n_heads = Hq if heads is None else heads.numel()
    dummy = q.new_empty(1, dtype=torch.int32)
    w = torch.empty(B, n_heads, n_rows, S, device=q.device, dtype=dtype or q.dtype)
    kw, tuned = configs.blocks(block_m, block_n, q.device)
    fn = target.kernel("_weights", configs.bucket(E), tuned, q.dtype == torch.float32)
    fn[_grid(n_rows, "BLOCK_M", B * n_heads)](
        q, k, lse, w, *q.stride(), *k.stride(), *w.stride(),
        rows if rows is not None else dummy, heads if heads is not None else dummy, n_rows, n_heads,
        L, S, S - L, Hq // Hkv, p.scale, **kernel_args(p, dummy, L, S), E=E, BLOCK_D=pow2(E),
        DOT_PREC=target.prec(q.dtype, q.device), HAS_ROWS=rows is not None, HAS_HEADS=heads is not None, **kw)
    return w


@_on_device
def flash_key_totals(q: Tensor, k: Tensor, lse: Tensor, p: Plan, *, block_m: int = 0, block_n: int = 0,
                     target: Target = LOCAL) -> Tensor:
    """Launch ``_key_totals``: (B, Hq, S) fp32, the sum over query rows of each key's weight."""
    target.check_device(q)
    B, Hq, L, E = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    dummy = q.new_empty(1, dtype=torch.int32)
    t = torch.empty(B, Hq, S, device=q.device, dtype=torch.float32)
    kw, tuned = configs.blocks(block_m, block_n, q.device)
    fn = target.kernel("_key_totals", configs.bucket(E), tuned, q.dtype == torch.float32)
    fn[_grid(S, "BLOCK_N", B * Hq)](
        q, k, lse, t, *q.stride(), *k.stride(), Hq, L, S, S - L, Hq // Hkv, p.scale,
        **kernel_args(p, dummy, L, S), E=E, BLOCK_D=pow2(E), DOT_PREC=target.prec(q.dtype, q.device), **kw)
    return t


