"""CPU comparison of attend's backends: time (side by side, as ratios) and peak memory.

    python benchmarks/cpu_backends.py [--quick] [--out benchmarks/results/cpu-backends.md]

Time: median of repeated runs of the same call on each backend in one process; ratios to
``eager`` are what to read (absolute CPU times on a shared machine are noisy). Memory: each
(backend, case) runs in a fresh subprocess and reports its peak resident set size above
the baseline after the inputs were built, so the O(L·S) score matrix of ``eager`` shows
against ``chunked``'s O(L·block).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

import attend


def _inputs(B, H, L, S, E, grad):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, n, E, generator=g).requires_grad_(grad) for n in (L, S, S)]


def _score(kind: str, E: int):
    if kind == "additive":
        torch.manual_seed(0)
        return attend.scores.Additive(E, E, 64)
    return kind


def time_case(backend: str, kind: str, B, H, L, S, E, *, causal: bool, grad: bool, reps: int) -> float:
    q, k, v = _inputs(B, H, L, S, E, grad)
    score = _score(kind, E)

    def once():
        with torch.set_grad_enabled(grad):  # "fwd" is inference: no graph, one pass on chunked
            out = attend.attention(q, k, v, score=score, causal=causal, backend=backend)
        if grad:
            out.sum().backward()

    once()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_child(spec: dict) -> None:
    """Run in a subprocess: build inputs, then one forward+backward; print the peak RSS growth (MiB)."""
    q, k, v = _inputs(spec["B"], spec["H"], spec["L"], spec["S"], spec["E"], True)
    score = _score(spec["kind"], spec["E"])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark (VmHWM) to the current RSS
    base = _status_kib("VmRSS")
    out = attend.attention(q, k, v, score=score, causal=spec["causal"], backend=spec["backend"])
    out.sum().backward()
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - base) / 1024}))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory(spec: dict) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                       env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    ap.add_argument("--out", default=None, help="also write the markdown table to this file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _peak_child(json.loads(args.child))
        return

    reps = 2 if args.quick else 5
    sizes = [128] if args.quick else [256, 512, 2048]
    lines = [
        "# attend CPU backends: time ratios and peak memory",
        "",
        f"- date: {datetime.date.today()}",
        f"- machine: {platform.machine()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}",
        f"- torch {torch.__version__}, python {platform.python_version()}",
        f"- command: `python benchmarks/cpu_backends.py{' --quick' if args.quick else ''}`",
        "",
        "## Time (median of %d runs; ratio = eager time / backend time, > 1 is faster than eager)" % reps,
        "",
        "| score | causal | pass | B×H×L×S×E | eager ms | sdpa | chunked |",
        "|---|---|---|---|---|---|---|",
    ]
    B, H, E = 1, 8, 64
    for L in sizes:
        for kind in ("scaled_dot", "additive"):
            if kind == "additive" and L > 256:
                continue  # (L, S, hidden) work grows fast; one size shows the ratio
            for causal in (False, True):
                for grad in (False, True):
                    t = {}
                    for b in ("eager", "sdpa", "chunked"):
                        if b == "sdpa" and kind == "additive":
                            continue
                        t[b] = time_case(b, kind, B, H, L, L, E, causal=causal, grad=grad, reps=reps)
                    sd = f"{t['eager'] / t['sdpa']:.2f}×" if "sdpa" in t else "n/a"
                    lines.append(
                        f"| {kind} | {causal} | {'fwd+bwd' if grad else 'fwd'} | {B}×{H}×{L}×{L}×{E} | "
                        f"{t['eager'] * 1e3:.1f} | {sd} | {t['eager'] / t['chunked']:.2f}× |"
                    )
                    print(lines[-1], flush=True)
    lines += [
        "",
        "## Peak memory of one forward+backward (MiB of peak RSS above the RSS once inputs exist; fresh process each, high-water mark reset via /proc/self/clear_refs)",
        "",
        "| score | B×H×L×S×E | eager | chunked (block 256) | sdpa |",
        "|---|---|---|---|---|",
    ]
    mem_cases = [("scaled_dot", 128 if args.quick else 4096), ("additive", 64 if args.quick else 1024)]
    for kind, L in mem_cases:
        spec = dict(B=1, H=8 if kind == "scaled_dot" else 1, L=L, S=L, E=64, kind=kind, causal=False)
        m = {}
        for b in ("eager", "chunked", "sdpa"):
            if b == "sdpa" and kind == "additive":
                m[b] = "n/a"
                continue
            m[b] = f"{peak_memory(dict(spec, backend=b)):.0f}"
        lines.append(f"| {kind} | 1×{spec['H']}×{L}×{L}×64 | {m['eager']} | {m['chunked']} | {m['sdpa']} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
