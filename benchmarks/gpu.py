"""attend's fused Triton attention vs. PyTorch's fused kernels on one GPU, in one run.

    python benchmarks/gpu.py                  # on a CUDA GPU: checks, then times; writes results
    python benchmarks/gpu.py --tiny           # anywhere: the same script end to end at toy sizes
                                              # (CPU: Triton's interpreter; numbers meaningless)

What it does, in order (one call builds, checks and times everything):

1. Environment: device, driver, torch and triton versions; the GPU's measured bf16 matmul
   rate (8192^3, median) as the ceiling the ratios are read against.
2. Checks: attend ``triton`` forward and gradients vs a float64 reference at a moderate
   shape, for plain, causal, window, document, ALiBi, softcap (relative error printed;
   a failed check stops the run before any timing).
3. Main table: forward, backward and both, in TFLOP/s, bf16 and fp16, head dim 64 and
   128, L = S in {512, 1k, 2k, 4k, 8k, 16k} with batch x L = 16k and hidden 2048
   (heads = 2048 / E), causal and not; side by side: attend ``triton``, SDPA's flash,
   efficient and cuDNN backends (each that runs), FlexAttention (torch.compile), with
   ratio columns against SDPA flash.
4. Variants at one shape (bf16, E=128, L=S=4096, batch 4, 16 heads): sliding window,
   packed documents, ALiBi, soft-capping, relative-position bias, key padding, vs plain
   (forward and forward+backward); all weights of the layer (``return_weights=True``)
   vs the forward alone; weights of 2 heads x 64 rows; per-key totals.

FLOPs (as FlashAttention's papers count them): forward = 4·B·H·L·S·E, halved for causal
(only the unmasked half is work); backward = 2.5 x forward (five matmuls instead of two).
Times are medians of ``triton.testing.do_bench``.

Results: ``benchmarks/results/gpu-<device>.md`` and ``.json``, rewritten after every row,
so a run cut off by a time limit keeps what it measured. A rerun with the same ``--out``
resumes: rows already in the JSON are kept and skipped (``--fresh`` starts over).
``--budget SECONDS`` stops before starting a row that would not fit, so the whole
benchmark can be taken in several calls of a limited length::

    python benchmarks/gpu.py --budget 480          # again until it prints "complete"
    python benchmarks/gpu.py --parts main --dtypes bfloat16 --dims 128 --lengths 8192

FlexAttention recompiles for every shape (tens of seconds each); by default it is timed
at ``--flex-lengths`` only (1k, 4k, 16k) and shows n/a elsewhere.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

START = time.monotonic()

import torch  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="toy sizes; on a CPU runs the kernels in Triton's interpreter")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--quick", action="store_true", help="fewer shapes (first look on a GPU)")
    ap.add_argument("--parts", default="checks,main,variants", help="comma list of checks, main, variants")
    ap.add_argument("--dtypes", default="bfloat16,float16", help="main table dtypes")
    ap.add_argument("--dims", default="64,128", help="main table head dims")
    ap.add_argument("--lengths", default="", help="main table L=S values (default 512..16384; --quick 1k,4k,16k)")
    ap.add_argument("--flex-lengths", default="1024,4096,16384",
                    help="lengths at which FlexAttention is compiled and timed")
    ap.add_argument("--budget", type=float, default=0.0, help="seconds; do not start a row that would not fit")
    ap.add_argument("--fresh", action="store_true", help="ignore results already in --out")
    return ap.parse_args(argv)


# set by setup(), from the options (Triton's interpreter must be chosen before Triton is imported)
args: argparse.Namespace
triton = attend = None
CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
TRITON = None


def setup(argv=None) -> None:
    global args, triton, attend, TRITON
    args = parse(argv)
    if args.tiny and not CUDA:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported
    # compiled kernels and autotune choices in the checkout (git-ignored), so that a resumed run on
    # the same machine reuses them even where the home folder is not kept between calls
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(ROOT, ".triton-cache"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(ROOT, ".inductor-cache"))
    sys.path.insert(0, os.path.join(ROOT, "src"))  # the GPU machine runs from a checkout, no install
    import triton as triton_
    import triton.testing  # noqa: F401

    import attend as attend_
    import attend.backends.triton.configs  # noqa: F401
    import attend.backends.triton.launch  # noqa: F401
    triton, attend = triton_, attend_
    TRITON = attend.backends.Triton() if CUDA else attend.backends.Triton(block_m=16, block_n=16)


def bench(fn) -> float:
    """Median milliseconds."""
    if CUDA:
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def environment() -> dict:
    env = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
           "triton": triton.__version__, "device": "cpu (Triton interpreter)" if not CUDA else torch.cuda.get_device_name()}
    if CUDA:
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception as e:  # noqa: BLE001
            env["driver"] = f"unknown ({e})"
        env["cuda"] = torch.version.cuda
        n = 8192
        a, b = (torch.randn(n, n, device=DEV, dtype=torch.bfloat16) for _ in range(2))
        ms = bench(lambda: a @ b)
        env["matmul_bf16_tflops"] = round(2 * n**3 / ms / 1e9, 1)
    return env


# ---- checks ------------------------------------------------------------------------------
def reference(q, k, v, **kw):
    """The package's reference: attend's ``eager`` backend on float64 CPU tensors, same keywords."""
    return attend.attention(q, k, v, backend="eager", **kw)


def checks(dtype) -> list[dict]:
    B, H, L, E = (1, 2, 40, 32) if args.tiny else (2, 4, 1000, 128)
    docs = torch.arange(L) * 3 // L  # three packed documents
    chunk = 16 if args.tiny else 64
    cases = {
        "plain": {},
        "causal": {"causal": True},
        "window 64": {"window": (64, 0)},
        "document+causal": {"mask": attend.masks.and_masks(attend.masks.document(docs), attend.masks.causal())},
        f"chunked {chunk}, causal": {"mask": attend.masks.chunked(chunk), "causal": True},
        "alibi": {"score_mod": attend.mods.alibi(attend.mods.alibi_slopes(H)), "causal": True},
        "softcap 5": {"score_mod": attend.mods.softcap(5.0)},
    }
    rows = []
    for name, kw in cases.items():
        q, k, v = (torch.randn(B, H, L, E, device=DEV, dtype=dtype, requires_grad=True) for _ in range(3))
        out = attend.attention(q, k, v, backend=TRITON, **kw)
        dout = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        qd, kd, vd = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
        ref = reference(qd, kd, vd, **kw)
        ref_grads = torch.autograd.grad(ref, (qd, kd, vd), dout.cpu().double())
        rel = lambda x, r: ((x.cpu().double() - r).norm() / r.norm()).item()  # noqa: E731
        row = {"case": name, "dtype": str(dtype).replace("torch.", ""), "out": rel(out, ref)}
        row.update({f"d{n}": rel(g, r) for n, g, r in zip("qkv", grads, ref_grads)})
        rows.append(row)
        bad = [key for key in ("out", "dq", "dk", "dv") if not row[key] < 2e-2]  # bf16 operands: 1e-3..1e-2
        if bad:
            raise SystemExit(f"check failed: {row}")
    return rows


def tma_checks(dtype) -> list[dict]:
    """The tensor-descriptor (TMA) paths with fixed 64x64 blocks, whatever the autotuner would
    pick: forward and backward launched directly, vs float64. Only where TMA runs (Hopper);
    in the interpreter (``--tiny``) with 16x16 blocks."""
    configs, launch = attend.backends.triton.configs, attend.backends.triton.launch
    B, H, L, E = (1, 2, 40, 32) if args.tiny else (2, 4, 1000, 128)
    block = 16 if args.tiny else 64
    rows = []
    for name, causal in (("plain (TMA)", False), ("causal (TMA)", True)):
        q, k, v = (torch.randn(B, H, L, E, device=DEV, dtype=dtype) for _ in range(3))
        if not configs.tma_ok(q, k, v):
            print(f"  {name}: skipped, TMA does not run here", flush=True)
            return rows
        p = attend.backends.triton.plan.Plan(scale=E ** -0.5, causal=causal)
        out, lse = launch.flash_forward(q, k, v, p, block_m=block, block_n=block, tma=True)
        dout = torch.randn_like(out)
        grads = launch.flash_backward(dout, q, k, v, out, lse, p, block_m=block, block_n=block, tma=True)[:3]
        qd, kd, vd = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
        ref = reference(qd, kd, vd, causal=causal)
        ref_grads = torch.autograd.grad(ref, (qd, kd, vd), dout.cpu().double())
        rel = lambda x, r: ((x.cpu().double() - r).norm() / r.norm()).item()  # noqa: E731
        row = {"case": name, "dtype": str(dtype).replace("torch.", ""), "out": rel(out, ref)}
        row.update({f"d{n}": rel(g, r) for n, g, r in zip("qkv", grads, ref_grads)})
        rows.append(row)
        if not all(row[key] < 2e-2 for key in ("out", "dq", "dk", "dv")):
            raise SystemExit(f"check failed: {row}")
    return rows


# ---- timing ---------------------------------------------------------------------------------
def sdpa_fn(backend_name):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    which = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION}[backend_name]

    def run(q, k, v, causal):
        with sdpa_kernel([which]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return run


def flex_fn():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)
    masks = {}

    def run(q, k, v, causal):
        bm = None
        if causal:
            key = (q.shape[2], k.shape[2])
            if key not in masks:
                masks[key] = create_block_mask(lambda b, h, i, j: j <= i, None, None, key[0], key[1], device=DEV)
            bm = masks[key]
        return compiled(q, k, v, block_mask=bm)
    return run


def attend_fn(q, k, v, causal):
    return attend.attention(q, k, v, causal=causal, backend=TRITON)


def time_impl(fn, q, k, v, causal) -> tuple[float, float, float]:
    """(forward ms, backward ms, forward+backward ms); NaN where the implementation refuses."""
    try:
        out = fn(q, k, v, causal)
        dout = torch.randn_like(out)
        f = bench(lambda: fn(q, k, v, causal))
        out = fn(q, k, v, causal)
        bwd = bench(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))

        def both():
            o = fn(q, k, v, causal)
            torch.autograd.grad(o, (q, k, v), dout)
        fb = bench(both)
        return f, bwd, fb
    except Exception as e:  # noqa: BLE001  (an SDPA backend that does not run this shape)
        print(f"    skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
        return math.nan, math.nan, math.nan


def chosen_configs(E: int, dtype) -> dict:
    """The block shapes the autotuner picked at the shape just timed (its last call per kernel):
    "BLOCK_M x BLOCK_N, warps, stages" and "tma" where it picked the tensor-descriptor loads;
    how the backward made dQ ("separate" kernel or "atomic" in dK/dV's) and the two backward
    times (ms) that decided it."""
    if not CUDA:
        return {}
    configs, launch = attend.backends.triton.configs, attend.backends.triton.launch
    mode, ms = list(launch.DQ_CHOICE.values())[-1] if launch.DQ_CHOICE else (None, None)  # the newest key's
    got = {"dq_mode": mode, "dq_ms": ms}
    for name in ("_fwd", "_bwd_dkdv") if mode == "atomic" else ("_fwd", "_bwd_dq", "_bwd_dkdv"):
        tuner = configs.kernel(name, configs.bucket(E), True, dtype == torch.float32)
        c = getattr(tuner, "best_config", None)
        if c is not None:
            got[name] = (f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}, {c.num_warps}w, {c.num_stages}s"
                         + (", tma" if c.kwargs.get("TMA") else ""))
    return got


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


class Budget:
    """Whether the next step still fits in ``--budget``: a step is guessed to take as long as
    the longest one measured so far (``first`` seconds before any, compilation included)."""

    def __init__(self, first: float = 90.0):
        self.first = first
        self.longest = 0.0

    def fits(self) -> bool:
        guess = self.longest or self.first
        return not args.budget or time.monotonic() - START + guess <= args.budget

    def took(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)


def row_key(r: dict) -> str:
    return f"{r['dtype']}|{r['E']}|{r['L']}|{r['causal']}"


def main_table(impls, state: dict, save) -> bool:
    """Time every row not yet in ``state['table']``; True when all rows are done."""
    if args.lengths:
        lengths = _ints(args.lengths)
    else:
        lengths = [64, 128] if args.tiny else ([1024, 4096, 16384] if args.quick else [512, 1024, 2048, 4096, 8192, 16384])
    flex_lengths = set(lengths if args.tiny else _ints(args.flex_lengths))
    tokens, hidden = (256, 128) if args.tiny else (16384, 2048)
    done = {row_key(r) for r in state["table"]}
    budget = Budget()
    for dname in args.dtypes.split(","):
        dtype = getattr(torch, dname.strip())
        for E in _ints(args.dims):
            H = hidden // E
            for L in lengths:
                B = max(1, tokens // L)
                for causal in (False, True):
                    row = {"dtype": str(dtype).replace("torch.", ""), "E": E, "L": L, "B": B, "H": H, "causal": causal}
                    if row_key(row) in done:
                        continue
                    if not budget.fits():
                        print(f"  budget: stopping before {row_key(row)}; rerun to continue", flush=True)
                        return False
                    t0 = time.monotonic()
                    q, k, v = (torch.randn(B, H, L, E, device=DEV, dtype=dtype, requires_grad=True) for _ in range(3))
                    fwd_flops = 4 * B * H * L * L * E * (0.5 if causal else 1.0)
                    for name, fn in impls.items():
                        if name.startswith("flex") and L not in flex_lengths:
                            row[name] = None  # not compiled at this length (--flex-lengths)
                            continue
                        f, bwd, fb = time_impl(fn, q, k, v, causal)
                        row[name] = {"fwd_ms": f, "bwd_ms": bwd, "fwd_bwd_ms": fb,
                                     "fwd_tflops": fwd_flops / f / 1e9, "bwd_tflops": 2.5 * fwd_flops / bwd / 1e9,
                                     "fwd_bwd_tflops": 3.5 * fwd_flops / fb / 1e9}
                        if name == "attend triton":
                            row["configs"] = chosen_configs(E, dtype)
                    row["seconds"] = round(time.monotonic() - t0, 1)
                    budget.took(row["seconds"])
                    state["table"].append(row)
                    save()
                    a, fl = row["attend triton"], row.get("sdpa flash") or {}
                    print(f"  {row['dtype']} E={E} L={L} causal={causal}: attend fwd {a['fwd_tflops']:.1f} "
                          f"bwd {a['bwd_tflops']:.1f} TFLOP/s; sdpa flash fwd {fl.get('fwd_tflops', math.nan):.1f} "
                          f"bwd {fl.get('bwd_tflops', math.nan):.1f} ({row['seconds']} s)", flush=True)
                    if row.get("configs"):
                        print(f"    autotuned: {row['configs']}", flush=True)
                    del q, k, v
    return True


def variants(state: dict, save) -> bool:
    """Masks and score_mods vs plain, and the weights, at one shape; True when all are done."""
    B, H, L, E = (1, 2, 64, 32) if args.tiny else (4, 16, 4096, 128)
    dtype = torch.bfloat16
    q, k, v = (torch.randn(B, H, L, E, device=DEV, dtype=dtype, requires_grad=True) for _ in range(3))
    docs = (torch.arange(L, device=DEV) * 4 // L)  # four packed documents
    table = torch.randn(H, 2 * 128 + 1, device=DEV)
    cases = {
        "plain": {},
        "causal": {"causal": True},
        f"sliding window {L // 8} (causal)": {"window": (L // 8, 0)},
        "documents (4, causal)": {"mask": attend.masks.and_masks(attend.masks.document(docs), attend.masks.causal())},
        "key padding (3/4 of keys)": {"mask": attend.masks.padding(torch.full((B,), 3 * L // 4))},
        "alibi": {"score_mod": attend.mods.alibi(H)},
        "softcap 30": {"score_mod": attend.mods.softcap(30.0)},
        "relative bias (+-128)": {"score_mod": attend.mods.relative_bias(table)},
    }
    var = state.setdefault("variants", {"shape": {"B": B, "H": H, "L": L, "E": E, "dtype": "bfloat16"}, "cases": {}})
    out = var["cases"]
    budget = Budget(30.0)
    for name, kw in cases.items():
        if name in out:
            continue
        if not budget.fits():
            print(f"  budget: stopping before variant {name!r}; rerun to continue", flush=True)
            return False
        t0 = time.monotonic()
        fn = lambda: attend.attention(q, k, v, backend=TRITON, **kw)  # noqa: E731
        o = fn()
        dout = torch.randn_like(o)
        f = bench(fn)

        def both():
            torch.autograd.grad(fn(), (q, k, v), dout)
        fb = bench(both)
        out[name] = {"fwd_ms": f, "fwd_bwd_ms": fb}
        budget.took(time.monotonic() - t0)
        save()
        print(f"  {name}: fwd {f:.3f} ms, fwd+bwd {fb:.3f} ms", flush=True)
    if "weights" not in out:
        if not budget.fits():
            print("  budget: stopping before the weights; rerun to continue", flush=True)
            return False
        with torch.no_grad():
            f = bench(lambda: attend.attention(q, k, v, backend=TRITON))
            w = bench(lambda: attend.attention(q, k, v, backend=TRITON, return_weights=True))
            rows = torch.arange(0, L, L // 64, device=DEV)[:64]
            sel = bench(lambda: attend.attention_weights(q, k, heads=[0, 5 % H], rows=rows, backend=TRITON))
            tot = bench(lambda: attend.key_totals(q, k, backend=TRITON))
        out["weights"] = {"forward_ms": f, "forward_and_all_weights_ms": w, "all_weights_over_forward": w / f,
                          "weights_2_heads_64_rows_ms": sel, "key_totals_ms": tot,
                          "weights_bytes": B * H * L * L * 2}
        save()
        print(f"  weights: forward {f:.3f} ms, forward + all weights {w:.3f} ms ({w / f:.2f}x); "
              f"2 heads x 64 rows {sel:.3f} ms; key totals {tot:.3f} ms", flush=True)
    return True


def fmt(x, nd=1):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def targets(table: list[dict], var: Optional[dict]) -> list[str]:
    """The issue's "must reach" lines, each read off the rows measured so far."""
    out = []

    def ratios(key):
        return [(r, r["attend triton"][key] / r["sdpa flash"][key]) for r in table
                if r.get("sdpa flash") and not math.isnan(r["sdpa flash"][key])]
    fwd = [(r, x) for r, x in ratios("fwd_tflops") if r["L"] >= 1024]
    if fwd:
        worst = min(fwd, key=lambda t: t[1])
        out.append(f"forward >= 1.0x SDPA flash at every L >= 1k: {'met' if worst[1] >= 1.0 else 'NOT met'} "
                   f"(worst {worst[1]:.2f}x at {row_key(worst[0])}; {len(fwd)} rows)")
    big = [r for r in table if r["E"] == 128 and r["L"] == 8192 and not r["causal"]]
    for r in big:
        t = r["attend triton"]["fwd_tflops"]
        out.append(f"forward E=128 L=8k non-causal {r['dtype']} >= 450 TFLOP/s: {'met' if t >= 450 else 'NOT met'} "
                   f"({t:.0f})")
    bwd = ratios("bwd_tflops")
    if bwd:
        worst = min(bwd, key=lambda t: t[1])
        out.append(f"backward >= 0.9x SDPA flash: {'met' if worst[1] >= 0.9 else 'NOT met'} "
                   f"(worst {worst[1]:.2f}x at {row_key(worst[0])}; {len(bwd)} rows)")
    cases = (var or {}).get("cases", {})
    if "plain" in cases:
        mods = [n for n in cases if n not in ("plain", "weights")]
        slow = [(n, cases[n]["fwd_ms"] / cases["plain"]["fwd_ms"]) for n in mods]
        worst = max(slow, key=lambda t: t[1]) if slow else None
        if worst:
            out.append(f"masks/score_mods <= 1.15x plain (forward): {'met' if worst[1] <= 1.15 else 'NOT met'} "
                       f"(slowest {worst[0]} {worst[1]:.2f}x)")
    if "weights" in cases:
        x = cases["weights"]["all_weights_over_forward"]
        out.append(f"all weights <= 2x the forward: {'met' if x <= 2.0 else 'NOT met'} ({x:.2f}x)")
    return out


def report(state: dict, names: list[str], complete: bool) -> str:
    env, checked, table, var = state["environment"], state.get("checks", []), state["table"], state.get("variants")
    lines = ["# Fused attention on the GPU: attend `triton` vs PyTorch's fused kernels", "",
             f"Device: {env['device']}; driver {env.get('driver', '-')}; CUDA {env.get('cuda', '-')}; "
             f"torch {env['torch']}; triton {env['triton']}; Python {env['python']}. Date: {env['date']}.", "",
             f"Command: `python benchmarks/gpu.py{' --tiny' if args.tiny else ''}` (resumed across calls where a "
             f"time limit cut it; each row is one process's side-by-side measurement)", ""]
    if args.tiny:
        lines += ["**Toy sizes (`--tiny`): a check that the script runs end to end, not a measurement.**", ""]
    if not complete:
        lines += ["**Partial: not every row has been measured yet.**", ""]
    if "matmul_bf16_tflops" in env:
        lines += [f"Measured bf16 matmul (8192^3): **{env['matmul_bf16_tflops']} TFLOP/s** (the ceiling).", ""]
    lines += ["FLOPs: forward 4·B·H·L·S·E (x0.5 causal), backward 2.5x forward; medians of "
              "`triton.testing.do_bench`. Batch x L = 16k tokens, hidden 2048 (H = 2048/E). n/a: the "
              "implementation refused the shape, or FlexAttention was not compiled at that length.", "",
              "## Targets (the issue's \"must reach\")", ""]
    lines += [f"- {t}" for t in targets(table, var)] or ["- nothing measured yet"]
    lines += ["", "## Checks against float64 (relative L2 error)", "",
              "| case | dtype | out | dq | dk | dv |", "|---|---|---|---|---|---|"]
    for r in checked:
        lines.append(f"| {r['case']} | {r['dtype']} | {r['out']:.1e} | {r['dq']:.1e} | {r['dk']:.1e} | {r['dv']:.1e} |")
    for phase, key in (("Forward", "fwd_tflops"), ("Backward", "bwd_tflops"), ("Forward + backward", "fwd_bwd_tflops")):
        lines += ["", f"## {phase}, TFLOP/s", "",
                  "| dtype | E | L | causal | " + " | ".join(names) + " | attend / sdpa flash |",
                  "|---|---|---|---|" + "---|" * (len(names) + 1)]
        for r in table:
            vals = [(r.get(n) or {}).get(key) for n in names]
            fl = (r.get("sdpa flash") or {}).get(key, math.nan)
            ratio = r["attend triton"][key] / fl if fl and not math.isnan(fl) else math.nan
            lines.append(f"| {r['dtype']} | {r['E']} | {r['L']} | {'yes' if r['causal'] else 'no'} | "
                         + " | ".join(fmt(x) for x in vals) + f" | {fmt(ratio, 2)} |")
    if any(r.get("configs") for r in table):
        lines += ["", "## Block shapes the autotuner chose (attend `triton`)", "",
                  "dQ: its own kernel's blocks, or \"atomic\" (added by dK/dV's kernel); backward ms of "
                  "both ways where the choice was timed.", "",
                  "| dtype | E | L | causal | forward | dQ | dK/dV | backward ms: separate / atomic |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in table:
            c = r.get("configs") or {}
            ms = c.get("dq_ms") or {}
            dq = "atomic" if c.get("dq_mode") == "atomic" else c.get("_bwd_dq", "-")
            lines.append(f"| {r['dtype']} | {r['E']} | {r['L']} | {'yes' if r['causal'] else 'no'} | "
                         f"{c.get('_fwd', '-')} | {dq} | {c.get('_bwd_dkdv', '-')} | "
                         f"{fmt(ms.get('separate'), 3)} / {fmt(ms.get('atomic'), 3)} |")
    if var and var.get("cases"):
        s = var["shape"]
        cases = var["cases"]
        plain = cases.get("plain")
        lines += ["", f"## Masks and score_mods (attend `triton`, {s['dtype']}, B={s['B']}, H={s['H']}, "
                  f"L=S={s['L']}, E={s['E']})", "", "| variant | forward ms | vs plain | fwd+bwd ms | vs plain |",
                  "|---|---|---|---|---|"]
        for name, c in cases.items():
            if name == "weights":
                continue
            lines.append(f"| {name} | {c['fwd_ms']:.3f} | {fmt(c['fwd_ms'] / plain['fwd_ms'], 2) if plain else 'n/a'} "
                         f"| {c['fwd_bwd_ms']:.3f} | "
                         f"{fmt(c['fwd_bwd_ms'] / plain['fwd_bwd_ms'], 2) if plain else 'n/a'} |")
        w = cases.get("weights")
        if w:
            lines += ["", "## Weights from the fused path", "",
                      f"- forward alone {w['forward_ms']:.3f} ms; forward + all weights "
                      f"({w['weights_bytes'] / 2**20:.0f} MiB of bf16) {w['forward_and_all_weights_ms']:.3f} ms: "
                      f"**{w['all_weights_over_forward']:.2f}x**",
                      f"- weights of 2 heads x 64 rows: {w['weights_2_heads_64_rows_ms']:.3f} ms; per-key totals: "
                      f"{w['key_totals_ms']:.3f} ms"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    setup(argv)
    parts = set(args.parts.split(","))
    unknown = parts - {"checks", "main", "variants"}
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; choose from checks, main, variants")
    device = "cpu (Triton interpreter)" if not CUDA else torch.cuda.get_device_name()
    dev = "tiny-" + ("cpu" if not CUDA else "gpu") if args.tiny else device.lower().replace(" ", "-")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"gpu-{dev}.md")
    jpath = path[:-3] + ".json"
    state = None
    if os.path.exists(jpath) and not args.fresh:
        with open(jpath) as f:
            state = json.load(f)  # plain JSON written by this script
        if state.get("environment", {}).get("device") != device:
            raise SystemExit(f"{jpath} holds another device's results; use --fresh or another --out")
        print(f"resuming from {jpath}: {len(state['table'])} rows", flush=True)
    if state is None:
        state = {"environment": environment(), "checks": [], "table": []}
    print("environment:", state["environment"], flush=True)
    impls = {"attend triton": attend_fn}
    if CUDA:
        for name in ("flash", "efficient", "cudnn"):
            impls[f"sdpa {name}"] = sdpa_fn(name)
        impls["flex (compiled)"] = flex_fn()
    names = list(impls)
    complete = [False]

    def save():
        tmp = jpath + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, jpath)
        with open(path + ".tmp", "w") as f:
            f.write(report(state, names, complete[0]))
        os.replace(path + ".tmp", path)

    if "checks" in parts and not state["checks"]:
        checked = []
        for dtype in (torch.bfloat16, torch.float16):
            checked += checks(dtype) + tma_checks(dtype)  # stops the run on a failed check, before any timing
        state["checks"] = checked
        for r in checked:
            print("  check", r, flush=True)
        save()
    done = True
    if "main" in parts:
        done = main_table(impls, state, save) and done
    if "variants" in parts and done:
        done = variants(state, save) and done
    complete[0] = done and bool(state["checks"]) and "variants" in state
    save()
    print(report(state, names, complete[0]))
    print("wrote", path, "(complete)" if complete[0] else "(partial: rerun the same command to continue)")


if __name__ == "__main__":
    main()
