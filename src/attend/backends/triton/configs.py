"""Autotuning: the block shapes tried per kernel and head dim, the tuning key, TMA pruning.

On a GPU each kernel is wrapped in Triton's autotuner with the configs below; its choices
are kept on disk (Triton's cache), so a new process does not time them again. In the
interpreter (and wherever the caller fixes the blocks) the raw kernel runs.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from .plan import interpreting


def prec(dtype: torch.dtype, device: torch.device) -> str:
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
# ``tma_ok``); swept with ``--tags tma``, they need fewer registers, which lets larger tiles
# go without spilling.
FWD_CONFIGS = {
    64: [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 128, 8, 2),
         (128, 128, 8, 2, "tma"), (128, 64, 8, 3, "tma"), (128, 64, 4, 3, "tma")],
    128: [(128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 1), (128, 32, 8, 3), (64, 64, 4, 2),
          (128, 128, 8, 2, "tma"), (128, 128, 8, 3, "tma"), (128, 64, 8, 3, "tma"), (128, 64, 8, 2, "tma")],
    256: [(128, 32, 8, 2), (64, 32, 8, 2), (128, 64, 8, 1), (64, 64, 8, 1), (128, 16, 8, 3),
          (128, 64, 8, 2, "tma"), (64, 64, 8, 2, "tma"), (128, 32, 8, 3, "tma"), (128, 128, 8, 1, "tma")],
}
# _bwd_dq: BLOCK_M query rows held, BLOCK_N keys per step.
DQ_CONFIGS = {
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
# (32, 64, 8, 2) was in the E = 128 list until the first GPU run (H200, triton 3.6.0,
# 2026-11-29): with dQ by its own kernel and `masks.chunked(64)` + causal it gave dK 13x the
# error of every other shape (relative 3.3e-2 against 2.6e-3; `benchmarks/gpu_probe.py`), while
# the interpreter computes it right: dropped. No other shape has been checked one by one on a GPU;
# the autotuner's choices passed the checks in benchmarks/results/gpu-nvidia-h200.md.
# Since 2026-11-30 every shape is checked alone (`benchmarks/gpu_configs.py`, results in
# benchmarks/results/gpu-nvidia-h200-configs.md): all that build pass the tolerance rule;
# (128, 64, 8, 2, "tma") left the E = 128 list there, needing 247808 bytes of shared memory
# against the H200's 232448 (the autotuner passed over it, after compiling it each time).
DKDV_CONFIGS = {
    64: [(64, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 1), (64, 64, 4, 1), (64, 64, 8, 3),
         (128, 64, 8, 2, "tma"), (128, 64, 8, 3, "tma"), (128, 128, 8, 1, "tma")],
    128: [(64, 64, 8, 1), (128, 64, 8, 1), (64, 64, 4, 1), (64, 32, 8, 2),
          (64, 64, 8, 2, "tma"), (64, 64, 8, 3, "tma")],
    256: [(32, 64, 8, 1), (32, 32, 8, 1), (64, 16, 8, 3), (16, 64, 8, 1),
          (64, 16, 8, 2, "tma"), (64, 16, 8, 3, "tma")],
}
# float32 inputs (no tensor cores: fp32 FMA products, tiles twice the bytes): smaller blocks,
# spill-free in the fp32 sweeps (small grid: blocks 16..64, 1-2 stages; causal) at each head
# dim and in the compile report (plain too); the E = 64 list spills kilobytes at E = 256.
# fp32 is for accuracy on the GPU, not speed.
FP32_CONFIGS = {
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
# ``F`` is the rules' flags (one tuple).
TUNE_KEY = ["TUNE_L", "TUNE_S", "E", "EV", "F", "HAS_ROWS", "HAS_HEADS", "COMPUTE_OUT", "BIAS_GRAD", "TABLE_GRAD",
            "EXACT_DELTA", "ATOMIC_DQ", "TMA_OK"]


def bucket(d: int) -> int:
    return 64 if d <= 64 else 128 if d <= 128 else 256


def configs(name: str, bucket: int, fp32: bool) -> list[tuple]:
    """(BLOCK_M, BLOCK_N, warps, stages[, tag]) the autotuner tries for this kernel."""
    like = {"_weights": "_fwd", "_key_totals": "_bwd_dkdv"}.get(name, name)
    if fp32:
        return FP32_CONFIGS[bucket][like]
    listed = {"_fwd": FWD_CONFIGS, "_bwd_dq": DQ_CONFIGS, "_bwd_dkdv": DKDV_CONFIGS}[like][bucket]
    return listed if name in TMA_KERNELS else [c for c in listed if len(c) == 4]  # no TMA path: untagged


@functools.lru_cache(maxsize=None)
def kernel(name: str, bucket: int, tuned: bool, fp32: bool = False):
    """The raw jitted kernel (interpreter, or blocks fixed by the caller) or an autotuned one."""
    import triton

    from . import kernels

    fn = getattr(kernels, name)
    if not tuned:
        return fn
    tried = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, **extras(name, tag)}, num_warps=w, num_stages=s)
             for m, n, w, s, *tag in configs(name, bucket, fp32)]
    reset = {"_bwd_dq": ["DTABLE"], "_bwd_dkdv": ["DQ_ACC"]}.get(name)  # what a timing run adds to
    key = [k for k in TUNE_KEY if k in fn.arg_names]
    prune = {"early_config_prune": _prune_tma} if "TMA_OK" in fn.arg_names else None
    # the choices are kept on disk, in Triton's cache (TRITON_CACHE_DIR, keyed by GPU target,
    # kernel source, tuning key and configs): a new process does not time them again
    return triton.autotune(configs=tried, key=key, reset_to_zero=reset, prune_configs_by=prune,
                           cache_results=not interpreting())(fn)


# Kernels with a ``TMA`` constexpr: the tiles of the inner loop (K/V in the forward and dQ,
# Q/dO in dK/dV, which also loads its K/V block that way) through tensor descriptors.
TMA_KERNELS = ("_fwd", "_bwd_dq", "_bwd_dkdv")


def extras(name: str, tag: list) -> dict:
    """Constexprs a config's optional tag sets ("tma": ``TMA=True``)."""
    return {"TMA": bool(tag) and tag[0] == "tma"} if name in TMA_KERNELS else {}


def _prune_tma(configs, nargs, **kwargs):
    """Drop the tensor-descriptor configs for inputs TMA cannot read (see ``tma_ok``)."""
    if kwargs.get("TMA_OK", nargs.get("TMA_OK")):
        return configs
    return [c for c in configs if not c.kwargs.get("TMA")]


def tma_ok(*ts: Tensor) -> bool:
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


def tma_launch(kw: dict, tuned: bool, tma: bool, oks: tuple, what: str, device: torch.device) -> None:
    """The launchers' TMA step (``oks``: ``tma_ok`` per kernel launched): fixed blocks take the
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


def blocks(block_m: int, block_n: int, dev: torch.device) -> tuple[dict, bool]:
    """(launch keywords, autotuned?): fixed blocks when given or interpreting, else autotune."""
    if block_m > 0 and block_n > 0:
        return dict(BLOCK_M=block_m, BLOCK_N=block_n), False
    if dev.type != "cuda":  # interpreter: small blocks keep it quick
        return dict(BLOCK_M=16, BLOCK_N=16), False
    return {}, True


