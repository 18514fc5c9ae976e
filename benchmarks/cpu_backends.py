"""CPU comparison of attend's backends: time (side by side, as ratios) and peak memory.

    python benchmarks/cpu_backends.py [--quick] [--out benchmarks/results/cpu-backends.md]

Time: median of repeated runs of the same call on each backend in one process; ratios to
``eager`` are what to read (absolute CPU times on a shared machine are noisy). Memory: each
(backend, case) runs in a fresh subprocess, makes one tiny call first (the first call's
one-time set-up is not the backend's memory), and reports its peak resident set size
above the baseline after that, as a user measures it. "Live" runs the same case with
``MALLOC_MMAP_THRESHOLD_=4096``: every allocation of a page or more is then its own mapping,
returned to the system when freed, so the peak follows the bytes actually in use.

Mask rules: a packed-documents rule (``masks.document`` and ``causal``) on ``sdpa``, which
needs it as a dense (L, S) mask, against ``chunked``, which evaluates it per tile.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

import attend

from _machine import write_results


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


def _rule(spec: dict, L: int):
    if not spec.get("documents"):
        return None
    return attend.masks.and_masks(attend.masks.document(torch.arange(L) * spec["documents"] // L), attend.masks.causal())


def _peak_child(spec: dict) -> None:
    """Run in a subprocess: build inputs, then one forward+backward; print the peak RSS growth (MiB)."""
    torch.set_num_threads(1)
    q, k, v = _inputs(spec["B"], spec["H"], spec["L"], spec["S"], spec["E"], True)
    score = _score(spec["kind"], spec["E"])
    tiny = [t[..., :8, :].detach().requires_grad_(True) for t in (q, k, v)]  # the first call's set-up, not measured
    attend.attention(*tiny, score=score, causal=spec["causal"], mask=_rule(spec, 8), backend=spec["backend"]).sum().backward()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark (VmHWM) to the current RSS
    base = _status_kib("VmRSS")
    out = attend.attention(q, k, v, score=score, causal=spec["causal"], mask=_rule(spec, spec["L"]),
                           backend=spec["backend"])
    out.sum().backward()
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - base) / 1024}))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory(spec: dict, *, live: bool = False) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if live:
        env["MALLOC_MMAP_THRESHOLD_"] = "4096"
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                       env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    ap.add_argument("--out", default=None, help="also write the results to this file (e.g. "
                    "benchmarks/results/cpu-backends.md)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _peak_child(json.loads(args.child))
        return

    reps = 2 if args.quick else 5
    sizes = [128] if args.quick else [256, 512, 2048]
    lines = [
        "Times use the threads above; the memory cases run with one thread.",
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
        "| score | B×H×L×S×E | eager | chunked | chunked, live | sdpa |",
        "|---|---|---|---|---|---|",
    ]
    mem_cases = [("scaled_dot", 8, 128 if args.quick else 4096), ("scaled_dot", 1, 256 if args.quick else 16384),
                 ("additive", 1, 64 if args.quick else 1024)]
    for kind, H, L in mem_cases:
        spec = dict(B=1, H=H, L=L, S=L, E=64, kind=kind, causal=False)
        m = {}
        for b in ("eager", "chunked", "sdpa"):
            if (b == "sdpa" and kind == "additive") or (b == "eager" and L > 8192):
                m[b] = "n/a"
                continue
            m[b] = f"{peak_memory(dict(spec, backend=b)):.0f}"
        m["live"] = f"{peak_memory(dict(spec, backend='chunked'), live=True):.0f}"
        lines.append(f"| {kind} | 1×{H}×{L}×{L}×64 | {m['eager']} | {m['chunked']} | {m['live']} | {m['sdpa']} |")
        print(lines[-1], flush=True)
    lines += [
        "",
        "## Mask rules: dense on sdpa vs per tile on chunked (packed documents: `and_masks(document(4 docs), causal())`)",
        "",
        "`auto` takes sdpa while the dense mask (a boolean (L, S) plane and SDPA's float copy: 5 bytes per entry) is "
        "at most 256 MiB (as eager's limit on materialised scores), chunked above (L = S > ~7300).",
        "",
        "| B×H×L×S×E | pass | sdpa ms | chunked ms | chunked / sdpa |",
        "|---|---|---|---|---|",
    ]
    for L in ([128] if args.quick else [1024, 2048, 4096]):
        for grad in (False, True):
            q, k, v = _inputs(1, 8, L, L, 64, grad)
            rule = _rule({"documents": 4}, L)
            t = {}
            for b in ("sdpa", "chunked"):
                def once():
                    with torch.set_grad_enabled(grad):
                        out = attend.attention(q, k, v, mask=rule, backend=b)
                    if grad:
                        out.sum().backward()
                once()
                ts = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    once()
                    ts.append(time.perf_counter() - t0)
                t[b] = statistics.median(ts)
            lines.append(f"| 1×8×{L}×{L}×64 | {'fwd+bwd' if grad else 'fwd'} | {t['sdpa'] * 1e3:.1f} | "
                         f"{t['chunked'] * 1e3:.1f} | {t['chunked'] / t['sdpa']:.2f} |")
            print(lines[-1], flush=True)
    lines += ["", "Peak memory of one forward+backward with the rule (MiB, as above):", "",
              "| B×H×L×S×E | sdpa (dense mask) | chunked | chunked, live |", "|---|---|---|---|"]
    for L in ([256] if args.quick else [4096, 16384]):
        spec = dict(B=1, H=1, L=L, S=L, E=64, kind="scaled_dot", causal=False, documents=4)
        row = [f"{peak_memory(dict(spec, backend=b), live=lv):.0f}" for b, lv in
               (("sdpa", False), ("chunked", False), ("chunked", True))]
        lines.append(f"| 1×1×{L}×{L}×64 | " + " | ".join(row) + " |")
        print(lines[-1], flush=True)
    if args.out:
        write_results(args.out, "attend CPU backends: time ratios and peak memory", lines)
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
