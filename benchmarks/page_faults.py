"""Fresh pages per call: what glibc's heap trimming costs attend's compiled CPU paths.

``inductor``'s tiles allocate their scores (8 MiB a tile at (1, 8, 2048, 64)) through PyTorch's
CPU allocator, which is malloc. When a call ends, glibc gives the top of its heap back to the
kernel once more than its trim threshold is free there; the next call takes the memory again and
the kernel zeroes each 4 KiB page on first touch (a minor page fault). glibc's environment
settings ``MALLOC_MMAP_THRESHOLD_`` (blocks at least this large are mapped on their own) and
``MALLOC_TRIM_THRESHOLD_`` (free memory at the top of the heap past this is given back) stop that,
at the price of the process keeping up to that much freed memory. ``MALLOC_TOP_PAD_`` alone is
measured too: it stops the trimming but turns off glibc's dynamic mmap threshold.

Each configuration runs in its own process (the settings are read when the process starts),
forward and forward+backward, one variant at a time: attend ``auto`` and SDPA plain timed in
alternation (median of ``--reps``), and the minor page faults of attend's calls alone
(``getrusage``). attend does not change malloc's settings itself: they are the whole process's.

    python benchmarks/page_faults.py [--reps 7] [--shape 1x8x2048x64] [--out NAME]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _machine import RESULTS, check_args, parse_shape, results_path, write_results

#: the environment of each configuration. Setting any of glibc's thresholds turns off its dynamic
#: mmap threshold, which otherwise rises to the largest block freed (up to 32 MiB): with only
#: MALLOC_TOP_PAD_ set, every block over 128 KiB is mapped afresh, and a backward faults far more
CONFIGS = {
    "default": {},
    "MALLOC_MMAP_THRESHOLD_=32 MiB, MALLOC_TRIM_THRESHOLD_=64 MiB": {
        "MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)},
    "MALLOC_TOP_PAD_=64 MiB": {"MALLOC_TOP_PAD_": str(64 << 20)},
}
VARIANTS = ("plain", "softcap", "alibi_causal", "relative_bias", "window256")


def child(shape: str, reps: int, threads: int) -> None:
    """Time each variant in this process; print one JSON line."""
    import resource
    import statistics
    import time

    import torch
    import torch.nn.functional as F

    import attend

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    B, H, L, E = (int(x) for x in shape.split("x"))
    q, k, v = (torch.randn(B, H, L, E) for _ in range(3))
    kws = {"plain": {}, "softcap": dict(score_mod=attend.mods.softcap(20.0)),
           "alibi_causal": dict(score_mod=attend.mods.alibi(H), causal=True),
           "relative_bias": dict(score_mod=attend.mods.relative_bias(torch.randn(H, 257))),
           "window256": dict(window=256)}
    causal = {"alibi_causal"}

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def make(fn, grad):
        if not grad:
            return lambda: torch.no_grad()(fn)(q, k, v)

        def step():
            qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
            fn(qq, kk, vv).sum().backward()
        return step

    out = {}
    for name in VARIANTS:
        kw = kws[name]
        for grad in (False, True):
            mine = make(lambda a, b, c, kw=kw: attend.attention(a, b, c, **kw), grad)
            ref = make(lambda a, b, c, c_=name in causal: F.scaled_dot_product_attention(a, b, c, is_causal=c_), grad)
            mine(), mine(), ref()
            t_mine, t_ref, n = [], [], 0
            for _ in range(reps):
                t0 = time.perf_counter()
                ref()
                t_ref.append(time.perf_counter() - t0)
                f0, t0 = faults(), time.perf_counter()
                mine()
                t_mine.append(time.perf_counter() - t0)
                n += faults() - f0
            a, r = statistics.median(t_mine), statistics.median(t_ref)
            out[f"{name} {'fwd+bwd' if grad else 'fwd'}"] = {"attend_ms": a * 1e3, "sdpa_ms": r * 1e3,
                                                             "ratio": a / r, "faults_per_call": n / reps}
    print(json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--shape", default="1x8x2048x64", help="BxHxLxE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.path.join(RESULTS, "cpu-page-faults.md"))
    args = ap.parse_args()
    check_args(ap, args)
    parse_shape(ap, args.shape, "--shape")
    if args.child:
        child(args.shape, args.reps, args.threads)
        return
    results = {}
    for label, extra in CONFIGS.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        env.update(extra)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--reps", str(args.reps),
               "--shape", args.shape, "--threads", str(args.threads)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"the {label} run failed:\n{done.stderr[-3000:]}")
        results[label] = json.loads(done.stdout.strip().splitlines()[-1])
        print(label, results[label], flush=True)
    labels = list(CONFIGS)
    base = labels[0]
    rows = []
    for cell in results[base]:
        parts = [f"{results[c][cell]['faults_per_call']:.0f} / {results[c][cell]['ratio']:.3f}x" for c in labels]
        rows.append(f"| {cell} | " + " | ".join(parts) + " | "
                    + " | ".join(f"{results[c][cell]['attend_ms'] / results[base][cell]['attend_ms']:.3f}"
                                 for c in labels[1:]) + " |")
    body = [
        f"(B, H, L, E) = {args.shape}, float32, {args.threads} torch threads. Each configuration in its own "
        f"process; attend `auto` and SDPA plain (causal for ALiBi + causal) alternate, median of {args.reps} "
        "calls each. Each cell: minor page faults during attend's calls, per call / attend's time over SDPA's. "
        "Configurations: " + "; ".join(f"({n}) {c}" for n, c in enumerate(labels, 1)) + ".",
        "",
        "| variant | " + " | ".join(f"faults / ratio, ({n})" for n in range(1, len(labels) + 1)) + " | "
        + " | ".join(f"attend's time, ({n}) / (1)" for n in range(2, len(labels) + 1)) + " |",
        "|---|" + "---|" * (2 * len(labels) - 1),
        *rows,
    ]
    write_results(results_path(args.out), "Fresh pages per call: glibc's heap trimming", body, data=results)


if __name__ == "__main__":
    main()
