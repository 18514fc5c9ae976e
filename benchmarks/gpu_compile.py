"""Compile the fused kernels for a Hopper GPU (sm_90) without one: registers, spills, shared memory.

    python benchmarks/gpu_compile.py            # every autotune config of the main variants + every variant once
    python benchmarks/gpu_compile.py --quick    # one config per kernel and variant
    python benchmarks/gpu_compile.py --sweep --kernels _bwd_dkdv --dq-mode atomic   # a grid of block shapes

Triton compiles ahead of time for a named target with the ``ptxas`` it ships, so no GPU
is needed to find out whether each kernel *builds* for the H100 (the CPU interpreter
does not run the code generator: it never saw, for one, that a module-level constant
must be a ``tl.constexpr(...)`` instance), how many registers each autotune config needs,
whether it spills to local memory, how much shared memory it asks for (an H100 block may
have at most 227 KiB) and whether the dots became Hopper ``wgmma`` instructions. It says
nothing about speed.

The launch arguments are the real ones: the launchers of ``attend.backends.triton.launch`` run
on CPU tensors with a ``Target`` that records each launch instead of running it (the
launchers' seam for this), then each recorded launch is
compiled for the target with Triton's own argument specialisation (as a launch on a GPU
would, including the 16-byte alignment hints). Uses Triton internals
(``create_function_from_signature``, ``JITFunction._pack_args``) checked on triton 3.6
and 3.9.

Results: ``benchmarks/results/gpu-compile-sm90-triton-<version>.md``.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
os.environ.pop("TRITON_INTERPRET", None)  # the kernels must be JIT functions, not interpreted ones


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one config per kernel and variant")
    ap.add_argument("--sweep", action="store_true",
                    help="instead: every (BLOCK_M, BLOCK_N, warps, stages) in a grid for the main kernels "
                         "(plain, causal)")
    ap.add_argument("--dims", default="64,128,256", help="head dims of the config part")
    ap.add_argument("--kernels", default="_fwd,_bwd_dq,_bwd_dkdv", help="kernels of the sweep")
    ap.add_argument("--dtypes", default="bf16,fp32", help="dtypes of the sweep")
    ap.add_argument("--small-grid", action="store_true", help="sweep blocks 16..64, stages 1..2 only")
    ap.add_argument("--blocks", default="", help="sweep these block sizes instead (e.g. 64,128)")
    ap.add_argument("--tags", default="", help="config tags to sweep as well: tma (tensor-descriptor loads)")
    ap.add_argument("--tagged-only", action="store_true", help="sweep only the tagged configs")
    ap.add_argument("--dq-mode", default="separate", choices=("separate", "atomic"),
                    help="the sweep's backward: dQ by its own kernel, or added by dK/dV's kernel with atomics")
    ap.add_argument("--main-only", action="store_true", help="only the autotune configs of plain and causal")
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--suffix", default="", help="added to the results file's name (e.g. --suffix=-tma-fwd)")
    return ap.parse_args(argv)


args: argparse.Namespace  # this run's options (set by main)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from _machine import command_line, write_atomic  # noqa: E402
from attend.backends.triton import configs, launch  # noqa: E402
from attend.backends.triton import kernels as triton_kernels  # noqa: E402
from attend.backends.triton.plan import Plan  # noqa: E402

SMEM_LIMIT = 227 * 1024  # bytes per block on sm_90 (opt-in maximum)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")

# ---- record the launches the real launchers make ------------------------------------------
calls: list[tuple[str, tuple, dict]] = []


class _Launch:
    def __init__(self, name: str):
        self.name = name

    def __getitem__(self, grid):
        return lambda *a, **kw: calls.append((self.name, a, kw))


class Recorder(launch.Target):
    """Launches recorded (name, args, kwargs) instead of run; CPU tensors allowed; the GPU's
    dot precision."""

    def kernel(self, name, bucket, tuned, fp32=False):
        return _Launch(name)

    def prec(self, dtype, device):
        return configs.prec(dtype, torch.device("cuda"))

    def check_device(self, t):
        pass  # CPU tensors stand in for the GPU's: only their dtypes and strides are read


RECORD = Recorder()


def variants(B: int, H: int, L: int, S: int) -> dict:
    """Plan keywords per variant (the small tensors on the CPU; only their dtypes and strides matter)."""
    i32 = torch.int32
    doc = (torch.arange(S) * 3 // S).to(i32).view(1, S)
    return {
        "plain": {},
        "causal": {"causal": True},
        "window": {"window_left": 128, "window_right": 0},
        "lens": {"lens": torch.full((B,), S - 5, dtype=i32)},
        "key_mask": {"kvalid": torch.ones(B, S, dtype=torch.bool)},
        "documents": {"causal": True, "doc": doc, "doc_lo": doc.clone(), "doc_hi": doc.clone()},
        "prefix_lm": {"prefix": torch.full((B,), 7, dtype=i32)},
        "dense mask": {"mask": torch.ones(B, 1, L, S, dtype=torch.bool)},
        "bias (grad)": {"bias": torch.zeros(1, H, L, S)},
        "alibi": {"slopes": torch.ones(H)},
        "softcap": {"softcap": 30.0},
        "relative table (grad)": {"table": torch.zeros(H, 257)},
        "chunked (64, causal)": {"causal": True, "chunk": 64},
    }


def record(kernels: set, dtype, E: int, name: str, kw: dict, bm: int, bn: int,
           dq_mode: str = "separate") -> None:
    B, H, L, S = 2, 4, 256, 256
    q, k, v = (torch.zeros(B, H, L, E, dtype=dtype) for _ in range(3))
    p = Plan(scale=E ** -0.5, **kw)
    if "_fwd" in kernels:
        launch.flash_forward(q, k, v, p, block_m=bm, block_n=bn, target=RECORD)
    if kernels & {"_bwd_dq", "_bwd_dkdv"}:
        lse = torch.zeros(B, H, L)
        launch.flash_backward(q, q, k, v, q, lse, p, bias_grad="bias" in kw, table_grad="table" in kw,
                              block_m=bm, block_n=bn, dq_mode=dq_mode, target=RECORD)
    if "_weights" in kernels:
        launch.flash_weights(q, k, torch.zeros(B, H, L), p, block_m=bm, block_n=bn, target=RECORD)
    if "_key_totals" in kernels:
        launch.flash_key_totals(q, k, torch.zeros(B, H, L), p, block_m=bm, block_n=bn, target=RECORD)


def label(vname: str, dq_mode: str) -> str:
    """The report's variant name: the mask/score variant, and how the backward makes dQ."""
    return vname + (", atomic dQ" if dq_mode == "atomic" else "")


# ---- compile one recorded launch for the target -------------------------------------------
TARGET: GPUTarget  # the GPU compiled for (set by main, from --arch)
BACKEND = None


def compile_one(name: str, a: tuple, kw: dict, warps: int, stages: int, tag: str = "") -> dict:
    fn = getattr(triton_kernels, name)
    kw = dict(kw, **configs.extras(name, [tag]), num_warps=warps, num_stages=stages)
    binder = create_function_from_signature(fn.signature, fn.params, BACKEND)
    bound, spec, opts = binder(*a, **kw)
    options, signature, constexprs, attrs = fn._pack_args(BACKEND, kw, bound, spec, opts)
    t0 = time.monotonic()
    try:
        ck = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET, options=options.__dict__)
    except Exception as e:  # noqa: BLE001  (reported, and the run fails at the end)
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}"}
    seconds = time.monotonic() - t0
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(ck.asm["cubin"])
        f.flush()
        usage = subprocess.run([os.path.join(BIN, "cuobjdump"), "-res-usage", f.name],
                               capture_output=True, text=True, check=True).stdout
    block = usage[usage.index(f"Function {name}:"):]
    regs = int(re.search(r"REG:(\d+)", block).group(1))
    stack = int(re.search(r"STACK:(\d+)", block).group(1)) + int(re.search(r"LOCAL:(\d+)", block).group(1))
    ptx = ck.asm["ptx"]
    return {"regs": regs, "local": stack, "shared": ck.metadata.shared, "seconds": seconds,
            "wgmma": ptx.count("wgmma.mma_async"), "mma": ptx.count("mma.sync"),
            "tma": ptx.count("cp.async.bulk.tensor"), "tma_reduce": ptx.count("cp.reduce.async.bulk.tensor"),
            "ws": "ttg.warp_specialize" in ck.asm.get("ttgir", "")}


def sweep_tags(name: str) -> list[str]:
    """The config tags to compile for this kernel ("" = untagged)."""
    tags = [t for t in args.tags.split(",") if t] if name in configs.TMA_KERNELS else []
    return tags if args.tagged_only else [""] + tags


def sweep() -> list[dict]:
    """All block shapes in a grid, for choosing autotune lists that build, fit and do not spill."""
    rows = []
    wanted = set(args.kernels.split(","))
    for dtype, dname in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        if dname not in args.dtypes.split(","):
            continue
        for E in [int(d) for d in args.dims.split(",")]:
            for vname in ("causal",):
                for kernels in ({"_fwd"} & wanted, {"_bwd_dq", "_bwd_dkdv"} & wanted):
                    if not kernels:
                        continue
                    blocks, stage_list = ((16, 32, 64), (1, 2)) if args.small_grid else ((16, 32, 64, 128), (1, 2, 3))
                    if args.blocks:
                        blocks = tuple(int(b) for b in args.blocks.split(","))
                    for bm in blocks:
                        for bn in blocks:
                            calls.clear()
                            record(kernels, dtype, E, vname, variants(2, 4, 256, 256)[vname], bm, bn,
                                   args.dq_mode)
                            for warps in (4, 8):
                                for stages in stage_list:
                                    for name, a, kw in calls:
                                        if name not in kernels:
                                            continue
                                        for tag in sweep_tags(name):
                                            r = compile_one(name, a, kw, warps, stages, tag)
                                            config = (bm, bn, warps, stages) + ((tag,) if tag else ())
                                            rows.append({"kernel": name, "variant": label(vname, args.dq_mode),
                                                         "dtype": dname, "E": E,
                                                         "config": config, **r})
                                            print(rows[-1], flush=True)
    return rows


def main(argv=None):
    global args, TARGET, BACKEND
    args = parse(argv)
    TARGET = GPUTarget("cuda", args.arch, 32)
    BACKEND = make_backend(TARGET)
    if args.sweep:
        rows = sweep()
        write(rows, [r for r in rows if "error" not in r and not r["local"] and r["shared"] <= SMEM_LIMIT])
        return
    rows = []
    failed = 0
    dims = [int(d) for d in args.dims.split(",")]

    def build(kernel, dtype, dname, E, vname, kw, config, dq_mode="separate"):
        nonlocal failed
        bm, bn, warps, stages, *tag = config
        calls.clear()
        record({kernel}, dtype, E, vname, kw, bm, bn, dq_mode)
        for name, a, kwargs in calls:
            if name == kernel:
                r = compile_one(name, a, kwargs, warps, stages, tag[0] if tag else "")
                rows.append({"kernel": name, "variant": label(vname, dq_mode), "dtype": dname, "E": E,
                             "config": config, **r})
                failed += "error" in r
                print(rows[-1], flush=True)

    kernels = ("_fwd", "_bwd_dq", "_bwd_dkdv")
    # 1. every autotune config of the main variants (what the autotuner would compile), 16-bit
    #    and fp32 lists
    for dtype, dname in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        for E in dims:
            for vname in ("plain", "causal"):
                for kernel in kernels:
                    listed = configs.configs(kernel, configs.bucket(E), dname == "fp32")
                    for config in listed[:1] if args.quick else listed:
                        for dq_mode in ("separate", "atomic") if kernel == "_bwd_dkdv" else ("separate",):
                            build(kernel, dtype, dname, E, vname, variants(2, 4, 256, 256)[vname], config, dq_mode)
    # 2. every variant and dtype once (first config of its list): does it build?
    for dtype, dname in [] if args.main_only else ((torch.bfloat16, "bf16"), (torch.float16, "fp16"),
                                                    (torch.float32, "fp32")):
        for vname, kw in variants(2, 4, 256, 256).items():
            if dname == "bf16" and vname in ("plain", "causal"):
                continue
            E = 128 if dname != "fp32" else 64
            for kernel in kernels + ("_weights", "_key_totals"):
                listed = configs.configs(kernel, configs.bucket(E), dname == "fp32")
                build(kernel, dtype, dname, E, vname, kw, listed[0])
                if kernel == "_bwd_dkdv" and not kw.keys() & {"bias", "table"}:  # (gradients of those: separate)
                    build(kernel, dtype, dname, E, vname, kw, listed[0], "atomic")
                tma = [c for c in listed if c[4:] == ("tma",)]
                if tma:  # and the kernel's tensor-descriptor path, in its first TMA config
                    build(kernel, dtype, dname, E, vname, kw, tma[0])
    write(rows)
    if failed:
        raise SystemExit(f"{failed} compilations failed")


HEADER = ["| kernel | variant | dtype | E | config | regs | spills (B) | shared (KiB) | wgmma / mma | compile s "
          "| note |", "|---|---|---|---|---|---|---|---|---|---|---|"]


def table_row(r: dict) -> str:
    if "error" in r:
        return (f"| {r['kernel']} | {r['variant']} | {r['dtype']} | {r['E']} | {r['config']} | | | | | | "
                f"**fails**: {r['error']} |")
    note = []
    if r["local"]:
        note.append("spills")
    if r["shared"] > SMEM_LIMIT:
        note.append("over the shared-memory limit: cannot launch")
    if r.get("tma"):
        note.append(f"{r['tma']} TMA loads")
    if r.get("tma_reduce"):
        note.append(f"{r['tma_reduce']} TMA reductions")
    if r.get("ws"):
        note.append("warp-specialised")
    return (f"| {r['kernel']} | {r['variant']} | {r['dtype']} | {r['E']} | {r['config']} | {r['regs']} | "
            f"{r['local']} | {r['shared'] / 1024:.0f} | {r['wgmma']} / {r['mma']} | {r['seconds']:.1f} | "
            f"{', '.join(note)} |")


def write(rows: list[dict], keep: Optional[list[dict]] = None) -> None:
    """The report; for a sweep, the configs that qualify first, then every compilation."""
    lines = [f"# The fused kernels compiled for sm_{args.arch} (no GPU: registers, spills, shared memory)", "",
             f"Command: `{command_line()}`; triton "
             f"{triton.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
             f"{time.strftime('%Y-%m-%d')}, on a machine without a GPU (Triton's bundled ptxas).", "",
             "What it shows: whether each kernel builds for the target; registers per thread (255 is the "
             "hardware maximum; above ~128 at 8 warps fewer blocks fit per SM); spills = the stack and "
             "local bytes per thread ptxas needed for registers that did not fit (should be 0); shared memory "
             f"asked for (limit {SMEM_LIMIT // 1024} KiB per block on sm_90); "
             "the count of Hopper `wgmma` instructions in the PTX (0 = the dots use the older `mma`). "
             "**It says nothing about speed.** Configs are (BLOCK_M, BLOCK_N, warps, stages[, tag]); "
             "tag `tma`: tiles loaded through tensor descriptors.", ""]
    if keep is not None:
        lines += [f"Sweep: {len(rows)} compilations; first the {len(keep)} that build, fit the shared memory "
                  "and do not spill, then every compilation.", "", "## The configs that qualify", ""]
    lines += HEADER + [table_row(r) for r in (keep if keep is not None else rows)]
    if keep is not None:
        lines += ["", "## Every compilation", ""] + HEADER + [table_row(r) for r in rows]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"gpu-compile-sm{args.arch}-triton-{triton.__version__}"
                        f"{'-sweep' if args.sweep else ''}{args.suffix}.md")
    write_atomic(path, "\n".join(lines) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
