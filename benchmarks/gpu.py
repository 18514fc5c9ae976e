"""attend's fused Triton attention vs. PyTorch's fused kernels on one GPU, in one run.

    python benchmarks/gpu.py                  # on a CUDA GPU: checks, then times; writes results
    python benchmarks/gpu.py --tiny           # anywhere: the same script end to end at toy sizes
                                              # (CPU: Triton's interpreter; numbers meaningless)

What it does, in order (one call builds, checks and times everything):

1. Environment: device, driver, torch and triton versions; the GPU's measured bf16 matmul
   rate (8192^3, median) as the ceiling the ratios are read against.
2. Checks: attend ``triton`` forward and gradients vs a float64 reference at a moderate
   shape, for every feature the kernels compile in, by the tolerance rule (``--plan lease``
   and the default alike). Every case runs and is reported; a failed one is listed first in
   the results, the timings still run (a short lease is better spent measuring too), and a
   rerun that resumes checks again until every case passes.
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
    ap = argparse.ArgumentParser(allow_abbrev=False)  # (--prew would escape prewarm()'s argv filter)
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
    ap.add_argument("--sdpa", default="flash,efficient,cudnn", help="SDPA backends timed beside attend")
    ap.add_argument("--plan", choices=("full", "lease"), default="full",
                    help="lease: what fits one short GPU lease (bf16, E 64/128, L 1k/4k/16k, SDPA flash and "
                         "cuDNN, FlexAttention at 4k, every check)")
    ap.add_argument("--prewarm", type=int, default=0, metavar="N",
                    help="compile only, in N processes at once: every kernel and block shape the same options "
                         "will time, into the on-disk caches; nothing is timed or written")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)  # "i/N": one --prewarm process
    a = ap.parse_args(argv)
    if a.plan == "lease":
        a.dtypes, a.dims, a.sdpa = "bfloat16", "64,128", "flash,cudnn"
        a.lengths = a.lengths or ("" if a.tiny else "1024,4096,16384")
        a.flex_lengths = "4096"
    return a


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
    sys.path.insert(0, os.path.join(ROOT, "tests"))  # reference.py: the tests' tolerance rule
    import triton as triton_
    import triton.testing  # noqa: F401

    import attend as attend_
    import attend.backends.triton.configs  # noqa: F401
    import attend.backends.triton.launch  # noqa: F401
    triton, attend = triton_, attend_
    TRITON = attend.backends.Triton() if CUDA else attend.backends.Triton(block_m=16, block_n=16)


_ITEMS = [0]


def mine() -> bool:
    """In a prewarm worker ``i/N``: whether the next item (a check, a table row, a variant) is
    this worker's; always True otherwise."""
    if not args.worker:
        return True
    i, n = (int(x) for x in args.worker.split("/"))
    _ITEMS[0] += 1
    return (_ITEMS[0] - 1) % n == i


def _autotune_with(**overrides) -> None:
    """Triton's autotuner, with these keywords forced on every kernel attend builds from here on."""
    real = triton.autotune

    def autotune(*a, **kw):
        kw.update(overrides)
        return real(*a, **kw)
    triton.autotune = autotune


def _compile_only_autotune() -> None:
    """In a prewarm worker: the autotuner compiles and runs each block shape once instead of
    timing it, and keeps no choice on disk (the timed run makes its own)."""
    _autotune_with(do_bench=lambda fn, quantiles=None: [(fn(), 1.0)[1]] * 3, cache_results=False)


def _short_autotune() -> None:
    """``--plan lease``: the autotuner times each block shape for 5 ms of warm-up and 25 ms of
    repeats (its default: 25 and 100), so the timed run's tuning fits the lease."""
    _autotune_with(do_bench=lambda fn, quantiles=None: triton.testing.do_bench(fn, warmup=5, rep=25,
                                                                                 quantiles=quantiles))


def prewarm(argv) -> None:
    """``--prewarm N``: the same options in N worker processes at once, each compiling its share
    of the items; Triton's and inductor's on-disk caches then hold every kernel, so the timed run
    that follows only loads them (compiling is what a short lease cannot afford one at a time)."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--prewarm":
            skip = True
        elif not a.startswith("--prewarm="):
            rest.append(a)
    n = args.prewarm
    t0 = time.monotonic()
    # the workers write to this process's output as they go (no pipes to fill and block on;
    # a time limit that stops this process leaves what they printed)
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *rest, "--worker", f"{i}/{n}"])
             for i in range(n)]
    for i, p in enumerate(procs):
        print(f"worker {i}/{n}: exit {p.wait()}", flush=True)
    print(f"prewarm: {n} workers, {time.monotonic() - t0:.0f} s", flush=True)


def bench(fn) -> float:
    """Median milliseconds (a prewarm worker runs ``fn`` once and times nothing)."""
    if args.worker:
        fn()
        return math.nan
    if CUDA:
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def environment() -> dict:
    env = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
           "triton": triton.__version__, "device": "cpu (Triton interpreter)" if not CUDA else torch.cuda.get_device_name()}
    if CUDA and not args.worker:
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
def _rule(x, ref, base, m: float, dtype) -> float:
    """The tests' tolerance rule (``tests/reference.py``, after RELIABILITY.md in the project's
    shared docs) as a ratio, <= 1 passing: max|x - ref| over m * max|base - ref| + floor, and
    against the absolute cap; inf for NaN."""
    import reference as rules  # tests/reference.py (setup() puts tests/ on the path)

    return rules.rule_ratio(x, base, ref, dtype=dtype, m=m)


def float64_run(kw: dict, tensors, dout, weights: bool = False):
    """attend's ``eager`` backend on float64 CPU copies of ``tensors`` (q, k, v and any leaves
    after them that ``kw`` refers to): (output, weights or None, gradients of every tensor)."""
    import attend as package  # (also for gpu_probe.py, which imports this without setup())

    cpu = [t.detach().cpu().double().requires_grad_() for t in tensors]
    kwd = {key: (val.cpu() if isinstance(val, torch.Tensor) else val) for key, val in kw.items()}
    if len(cpu) > 3:  # a learned relative-bias table: the float64 copy goes in its place
        kwd["score_mod"] = package.mods.relative_bias(cpu[3])
    got = package.attention(*cpu[:3], backend="eager", **kwd)
    out, w = got if weights else (got, None)
    grads = torch.autograd.grad(out, cpu, dout.cpu().double())
    return out.detach(), (w.detach() if w is not None else None), grads


def _rel(x, ref) -> float:
    return ((x.detach().cpu().double() - ref).norm() / ref.norm()).item()


def check_cases(B: int, H: int, L: int, E: int) -> dict:
    """name -> (keywords, (B, Hq, Hkv, L, S, E, Ev), what else to compare): every feature the
    kernels compile in, at one moderate shape."""
    docs = torch.arange(L) * 3 // L  # three packed documents
    chunk = 16 if args.tiny else 64
    shape = (B, H, H, L, L, E, E)
    m = attend.masks
    table = torch.randn(H, 2 * (8 if args.tiny else 64) + 1, device=DEV, requires_grad=True)
    return {
        "plain": ({}, shape, ()),
        "causal": ({"causal": True}, shape, ()),
        "window 64": ({"window": (64, 0)}, shape, ()),
        "document+causal": ({"mask": m.and_masks(m.document(docs), m.causal())}, shape, ()),
        f"chunked {chunk}, causal": ({"mask": m.chunked(chunk), "causal": True}, shape, ()),
        "prefix-LM": ({"mask": m.prefix_lm(torch.tensor([L // 3] * B))}, shape, ()),
        "key padding, one sequence empty": ({"mask": m.padding(torch.tensor([L - L // 5] + [0] * (B - 1)))},
                                            shape, ("dead rows",)),
        "dense boolean mask": ({"mask": torch.rand(L, L, device=DEV) > 0.3}, shape, ()),
        "alibi, causal": ({"score_mod": attend.mods.alibi(attend.mods.alibi_slopes(H)), "causal": True}, shape, ()),
        "softcap 5": ({"score_mod": attend.mods.softcap(5.0)}, shape, ()),
        "relative bias, learned table": ({"score_mod": attend.mods.relative_bias(table)}, shape, ("table",)),
        "GQA 4:1, causal, L < S": ({"causal": True}, (B, H, max(1, H // 4), L * 2 // 3, L, E, E), ()),
        "E = 80, Ev = 48, causal, L > S": ({"causal": True}, (B, H, H, L, L * 2 // 3, 80, 48), ()),
        "weights, alibi, causal": ({"score_mod": attend.mods.alibi(H), "causal": True, "return_weights": True},
                                   shape, ("weights",)),
    }


def _row(name: str, dtype, results, refs, bases) -> dict:
    """A check's row: relative L2 error of each result and the worst tolerance-rule ratio
    (m = 2 for outputs and weights, 3 for gradients). ``results``/``refs``/``bases``: dicts
    by result name (out, dq, dk, dv, dtable, weights)."""
    row = {"case": name, "dtype": str(dtype).replace("torch.", "")}
    row["rule"] = 0.0
    for key, x in results.items():
        row[key] = _rel(x, refs[key])
        row["rule"] = max(row["rule"], _rule(x, refs[key], bases[key], 3 if key.startswith("d") else 2, dtype))
    return row


def _report(row: dict, rows: list) -> None:
    row["ok"] = row["rule"] <= 1.0 and row.get("dead rows exactly 0") is not False
    rows.append(row)
    print(f"  check {'ok' if row['ok'] else 'FAILED'}: {row}", flush=True)


def checks(dtype, names=None) -> list[dict]:
    """attend ``triton`` (autotuned, as a user gets it) against float64, by the tolerance rule
    (baseline: attend's eager in ``dtype`` on the same device). Every case is run and reported."""
    B, H, L, E = (2, 2, 40, 32) if args.tiny else (2, 4, 1000, 128)  # B = 2: one sequence empty
    rows = []
    base_backend = attend.backends.Eager(upcast=False)
    for name, (kw, (b, hq, hkv, l, s_, e, ev), extra) in check_cases(B, H, L, E).items():
        if names is not None and name not in names:
            continue
        if not mine():
            continue
        q = torch.randn(b, hq, l, e, device=DEV, dtype=dtype, requires_grad=True)
        k = torch.randn(b, hkv, s_, e, device=DEV, dtype=dtype, requires_grad=True)
        v = torch.randn(b, hkv, s_, ev, device=DEV, dtype=dtype, requires_grad=True)
        table = kw["score_mod"].table if "table" in extra else None
        leaves = (q, k, v) + ((table,) if table is not None else ())
        weights = kw.get("return_weights", False)
        names_g = ["dq", "dk", "dv"] + (["dtable"] if table is not None else [])

        def run(backend):
            got = attend.attention(q, k, v, backend=backend, **kw)
            o, w = got if weights else (got, None)
            return o, w
        out, w = run(TRITON)
        dout = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves, dout)
        bo, bw = run(base_backend)
        bgrads = torch.autograd.grad(bo, leaves, dout)
        ref, rw, ref_grads = float64_run(kw, leaves, dout, weights)
        results, refs, bases = {"out": out}, {"out": ref}, {"out": bo}
        for n, g, r, bg in zip(names_g, grads, ref_grads, bgrads):
            results[n], refs[n], bases[n] = g, r, bg
        if w is not None:
            results["weights"], refs["weights"], bases["weights"] = w, rw, bw
        row = _row(name, dtype, results, refs, bases)
        if "dead rows" in extra:  # rows with no key: exactly zero, and so are their gradients
            row["dead rows exactly 0"] = bool((out[1:] == 0).all() and (grads[0][1:] == 0).all()
                                              and (grads[1][1:] == 0).all() and (grads[2][1:] == 0).all())
        _report(row, rows)
    return rows


def path_checks(dtype) -> list[dict]:
    """The kernels' own paths with fixed 64x64 blocks, whatever the autotuner would pick:
    K/V tiles by pointers and through tensor descriptors (TMA, Hopper only), dQ by its own
    kernel and by atomics, forward and backward launched directly, vs float64 by the
    tolerance rule (baseline: attend's eager in ``dtype``). In the interpreter (``--tiny``)
    with 16x16 blocks."""
    configs, launch = attend.backends.triton.configs, attend.backends.triton.launch
    B, H, L, E = (1, 2, 40, 32) if args.tiny else (2, 4, 1000, 128)
    block = 16 if args.tiny else 64
    base_backend = attend.backends.Eager(upcast=False)
    rows = []
    for tma in (False, True):
        for dq_mode in ("separate", "atomic"):
            name = f"causal, {'TMA' if tma else 'pointer'} loads, dQ {dq_mode}"
            if not mine():
                continue
            q, k, v = (torch.randn(B, H, L, E, device=DEV, dtype=dtype) for _ in range(3))
            if tma and not configs.tma_ok(q, k, v):
                print(f"  {name}: skipped, TMA does not run here", flush=True)
                continue
            if tma and dq_mode == "atomic" and not CUDA:
                print(f"  {name}: skipped, the interpreter has no tensor-descriptor reduction", flush=True)
                continue
            p = attend.backends.triton.plan.Plan(scale=E ** -0.5, causal=True)
            out, lse = launch.flash_forward(q, k, v, p, block_m=block, block_n=block, tma=tma)
            dout = torch.randn_like(out)
            grads = launch.flash_backward(dout, q, k, v, out, lse, p, block_m=block, block_n=block, tma=tma,
                                          dq_mode=dq_mode)[:3]
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            bo = attend.attention(*leaves, causal=True, backend=base_backend)
            bgrads = torch.autograd.grad(bo, leaves, dout)
            ref, _, ref_grads = float64_run({"causal": True}, (q, k, v), dout)
            names_ = ("out", "dq", "dk", "dv")
            row = _row(name, dtype, dict(zip(names_, (out, *grads))), dict(zip(names_, (ref, *ref_grads))),
                       dict(zip(names_, (bo, *bgrads))))
            _report(row, rows)
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


def time_impl(fn, q, k, v, causal) -> tuple[float, float, float, float]:
    """(forward ms, backward ms, forward+backward ms, forward ms without grad); NaN where the
    implementation refuses. The first three take inputs that require grad (a training step's
    forward records its graph); the last runs under ``torch.no_grad`` (inference), which the
    first GPU run showed can differ (gpu-nvidia-h200-probe.md)."""
    try:
        out = fn(q, k, v, causal)
        dout = torch.randn_like(out)
        f = bench(lambda: fn(q, k, v, causal))
        with torch.no_grad():
            f0 = bench(lambda: fn(q, k, v, causal))
        out = fn(q, k, v, causal)
        bwd = bench(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))

        def both():
            o = fn(q, k, v, causal)
            torch.autograd.grad(o, (q, k, v), dout)
        fb = bench(both)
        return f, bwd, fb, f0
    except Exception as e:  # noqa: BLE001  (an SDPA backend that does not run this shape)
        print(f"    skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
        return math.nan, math.nan, math.nan, math.nan


def chosen_configs(E: int, dtype) -> dict:
    """The block shapes the autotuner picked at the shape just timed (its last call per kernel):
    "BLOCK_M x BLOCK_N, warps, stages" and "tma" where it picked the tensor-descriptor loads;
    how the backward made dQ ("separate" kernel or "atomic" in dK/dV's) and the two backward
    times (ms) that decided it."""
    if not CUDA:
        return {}
    configs, launch = attend.backends.triton.configs, attend.backends.triton.launch
    mode, ms = launch.DQ_CHOICE.get(launch.DQ_USED[0], (None, None))  # the last auto backward's
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
    if args.worker:  # the kernels do not depend on L: compile at one length, FlexAttention's if timed there
        lengths = [next((n for n in lengths if n in flex_lengths), lengths[0])]
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
                    if not mine():
                        continue
                    t0 = time.monotonic()
                    q, k, v = (torch.randn(B, H, L, E, device=DEV, dtype=dtype, requires_grad=True) for _ in range(3))
                    fwd_flops = 4 * B * H * L * L * E * (0.5 if causal else 1.0)
                    for name, fn in impls.items():
                        if name.startswith("flex") and L not in flex_lengths:
                            row[name] = None  # not compiled at this length (--flex-lengths)
                            continue
                        f, bwd, fb, f0 = time_impl(fn, q, k, v, causal)
                        row[name] = {"fwd_ms": f, "bwd_ms": bwd, "fwd_bwd_ms": fb, "fwd_nograd_ms": f0,
                                     "fwd_tflops": fwd_flops / f / 1e9, "bwd_tflops": 2.5 * fwd_flops / bwd / 1e9,
                                     "fwd_bwd_tflops": 3.5 * fwd_flops / fb / 1e9,
                                     "fwd_nograd_tflops": fwd_flops / f0 / 1e9}
                        if name == "attend triton":
                            row["configs"] = chosen_configs(E, dtype)
                    row["seconds"] = round(time.monotonic() - t0, 1)
                    budget.took(row["seconds"])
                    if args.worker:
                        print(f"  compiled {row_key(row)} ({row['seconds']} s)", flush=True)
                        continue
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
        if not mine():
            continue
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
    if "weights" not in out and mine():
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


def targets(table: list[dict], var: Optional[dict], checked: list) -> list[str]:
    """The issue's "must reach" lines, each read off the rows measured so far."""
    out = []
    if checked:
        bad = [r["case"] + " " + r["dtype"] for r in checked if not r.get("ok", True)]
        out.append(f"every float64 check passes on the GPU: {'met' if not bad else 'NOT met'} "
                   f"({len(checked) - len(bad)} of {len(checked)}" + (f"; failed: {', '.join(bad)})" if bad else ")"))

    def ratios(key):
        return [(r, r["attend triton"][key] / r["sdpa flash"][key]) for r in table
                if r.get("sdpa flash") and key in r["sdpa flash"] and not math.isnan(r["sdpa flash"][key])]
    for key, how in (("fwd_tflops", "inputs requiring grad"), ("fwd_nograd_tflops", "under no_grad")):
        fwd = [(r, x) for r, x in ratios(key) if r["L"] >= 1024]
        if fwd:
            worst = min(fwd, key=lambda t: t[1])
            out.append(f"forward ({how}) >= 1.0x SDPA flash at every L >= 1k: "
                       f"{'met' if worst[1] >= 1.0 else 'NOT met'} (worst {worst[1]:.2f}x at {row_key(worst[0])}; "
                       f"{len(fwd)} rows)")
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
             f"Command: `python benchmarks/gpu.py{' --tiny' if args.tiny else ''}"
             f"{' --plan lease' if args.plan == 'lease' else ''}` (resumed across calls where a "
             f"time limit cut it; each row is one process's side-by-side measurement)", ""]
    if args.plan == "lease":
        lines += ["Plan `lease` (one short GPU lease, run by `benchmarks/gpu_lease.sh` after a parallel compile "
                  "of every kernel): bf16, head dims 64 and 128, L = 1k, 4k, 16k; SDPA's flash and cuDNN backends; "
                  "FlexAttention at 4k only; Triton's autotuner timed each block shape for 5 ms of warm-up and "
                  "25 ms of repeats (its default: 25 and 100).", ""]
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
    lines += [f"- {t}" for t in targets(table, var, checked)] or ["- nothing measured yet"]
    lines += ["", "## Checks against float64", "",
              "Relative L2 error of each result; *rule*: the tests' tolerance rule (tests/reference.py) as a "
              "ratio, max|x - ref| / (m·max|eager in the dtype - ref| + floor), m = 2 for outputs and weights, 3 for "
              "gradients, and the absolute cap, the worst of the row (passes at <= 1).",
              "", "| case | dtype | out | dq | dk | dv | also | rule | passed |", "|---|---|---|---|---|---|---|---|---|"]
    for r in checked:
        also = ", ".join(f"{key} {r[key]:.1e}" for key in ("dtable", "weights") if key in r)
        if "dead rows exactly 0" in r:
            also += (", " if also else "") + f"empty rows exactly 0: {'yes' if r['dead rows exactly 0'] else 'NO'}"
        rule = f"{r['rule']:.2f}" if "rule" in r else "-"
        lines.append(f"| {r['case']} | {r['dtype']} | {r['out']:.1e} | {r['dq']:.1e} | {r['dk']:.1e} | {r['dv']:.1e} "
                     f"| {also or '-'} | {rule} | {'yes' if r.get('ok', True) else '**NO**'} |")
    phases = [("Forward (inputs require grad)", "fwd_tflops"), ("Backward", "bwd_tflops"),
              ("Forward + backward", "fwd_bwd_tflops")]
    if any("fwd_nograd_tflops" in (r.get("attend triton") or {}) for r in table):  # not in the first run's rows
        phases.insert(1, ("Forward under torch.no_grad", "fwd_nograd_tflops"))
    for phase, key in phases:
        lines += ["", f"## {phase}, TFLOP/s", "",
                  "| dtype | E | L | causal | " + " | ".join(names) + " | attend / sdpa flash |",
                  "|---|---|---|---|" + "---|" * (len(names) + 1)]
        for r in table:
            vals = [(r.get(n) or {}).get(key) for n in names]
            fl = (r.get("sdpa flash") or {}).get(key, math.nan)
            mine_ = r["attend triton"].get(key, math.nan)
            ratio = mine_ / fl if fl and not math.isnan(fl) else math.nan
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
    argv = sys.argv[1:] if argv is None else list(argv)
    setup(argv)
    parts = set(args.parts.split(","))
    unknown = parts - {"checks", "main", "variants"}
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; choose from checks, main, variants")
    if args.prewarm and not args.worker:
        return prewarm(argv)
    if args.worker:
        _compile_only_autotune()
    elif args.plan == "lease" and CUDA:
        _short_autotune()
    device = "cpu (Triton interpreter)" if not CUDA else torch.cuda.get_device_name()
    dev = "tiny-" + ("cpu" if not CUDA else "gpu") if args.tiny else device.lower().replace(" ", "-")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"gpu-{dev}.md")
    jpath = path[:-3] + ".json"
    state = None
    if os.path.exists(jpath) and not args.fresh and not args.worker:
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
        for name in args.sdpa.split(","):
            if name.strip():
                impls[f"sdpa {name.strip()}"] = sdpa_fn(name.strip())
        impls["flex (compiled)"] = flex_fn()
    names = list(impls)
    complete = [False]

    def save():
        if args.worker:
            return
        tmp = jpath + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, jpath)
        with open(path + ".tmp", "w") as f:
            f.write(report(state, names, complete[0]))
        os.replace(path + ".tmp", path)

    if "checks" in parts and not (state["checks"] and all(r.get("ok", True) for r in state["checks"])):
        checked = []
        for dtype in (torch.bfloat16, torch.float16):
            # every feature in bf16; in fp16 the plain and causal kernels (the grid of tests covers the rest)
            checked += checks(dtype, None if dtype == torch.bfloat16 else ("plain", "causal", "GQA 4:1, causal, L < S"))
            checked += path_checks(dtype)
        state["checks"] = checked
        failed = [r for r in checked if not r["ok"]]
        print(f"checks: {len(checked) - len(failed)} of {len(checked)} passed"
              + "".join(f"\n  FAILED: {r}" for r in failed), flush=True)
        save()
    done = True
    if "main" in parts:
        done = main_table(impls, state, save) and done
    if "variants" in parts and done:
        done = variants(state, save) and done
    if args.worker:
        print(f"worker {args.worker}: done, {time.monotonic() - START:.0f} s", flush=True)
        return
    complete[0] = done and bool(state["checks"]) and all(r.get("ok", True) for r in state["checks"]) \
        and "variants" in state
    save()
    print(report(state, names, complete[0]))
    print("wrote", path, "(complete)" if complete[0] else "(partial: rerun the same command to continue)")


if __name__ == "__main__":
    main()
