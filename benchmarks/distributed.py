"""Sequence-parallel attention on 1 vs 2 processes (gloo, 1 thread each): time and peak memory.

For each L (default 8192, 16384, 32768; 1 head, E 64, float32, causal) and each method:

- ``single``: one process, ``attend.attention(q, k, v, causal=True)`` (auto: SDPA's kernel);
- ``ring``: 2 processes, :func:`attend.distributed.ring_attention`, zigzag layout;
- ``ulysses`` is not timed here: with one head there are no heads to split (it needs
  heads divisible by the group size).

One forward+backward (``out.backward(dout)``) is timed (median of ``--reps`` after one
warm-up; for 2 processes the slower rank's time, all ranks starting together after a
barrier; in processes with glibc's own allocator), and, in other processes run the same way,
the peak resident memory of each process during that call is read from
``/proc/self/status`` (VmHWM reset just before the call; the figure is that mark above what
the process held just before, plus the bytes of the call's inputs q, k, v, dout: what the
call needs, not the process's one-time set-up, which the warm-up call has paid; these processes
run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors leave the resident set, and
their times are reported too). Each
configuration runs in fresh processes. The ratios the
issue asks for are printed: ring time / (single time / 2) at each L, and ring peak per rank
/ single peak.

    python benchmarks/distributed.py                 # writes benchmarks/results/distributed.md
    python benchmarks/distributed.py --tiny          # L = 1024, 2048: a check that it runs (a temporary file)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))


from cpu import _reset_peak, _status_kib  # noqa: E402 (benchmarks/cpu.py: the same /proc reading)


def child(args):
    import torch
    import torch.distributed as dist

    import attend
    import attend.distributed as D

    torch.set_num_threads(1)
    L, E, world, rank = args.L, 64, args.world, args.rank
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=600))
    g = torch.Generator().manual_seed(0)
    full = [torch.randn(1, 1, L, E, generator=g) for _ in range(4)]  # q, k, v, dout (the same on every rank)
    if world > 1:
        q, k, v, dout = (D.shard(t, layout="zigzag") for t in full)
    else:
        q, k, v, dout = full
    del full, g
    inputs_kib = sum(t.numel() * t.element_size() for t in (q, k, v, dout)) / 1024  # held before the call

    def step():
        a, b, c = (t.detach().requires_grad_() for t in (q, k, v))
        if world > 1:
            out = D.ring_attention(a, b, c, causal=True, layout="zigzag", piece=args.piece)
        else:
            out = attend.attention(a, b, c, causal=True)
        out.backward(dout)
        return out

    step()  # warm-up (thread pools, first allocations)
    times, peaks = [], []
    for _ in range(args.reps):
        if world > 1:
            dist.barrier()
        base = _reset_peak()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        peaks.append(_status_kib("VmHWM") - base + inputs_kib)
    times.sort()
    res = {"rank": rank, "s": times[len(times) // 2], "peak_mib": max(peaks) / 1024,
           "live_mib": 8 * q.numel() * 4 / 2**20}  # q, k, v, dout, out, dq, dk, dv of this rank
    print("RESULT " + json.dumps(res), flush=True)
    if world > 1:
        dist.destroy_process_group()


def run(L, world, reps, timeout, piece=None, mmap=True):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # every allocation of 64 KiB or more its own mapping, returned to the system when freed: without it
    # glibc raises its mmap threshold as big blocks are freed and keeps later ones in its heap, where a
    # call reuses what the warm-up freed and the high-water mark misses it
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    extra = ["--piece", str(piece)] if piece else []
    procs = [subprocess.Popen([sys.executable, __file__, "--child", "--L", str(L), "--world", str(world),
                               "--rank", str(r), "--port", str(port), "--reps", str(reps), *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for r in range(world)]
    got = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"L={L} world={world}: a process failed:\n{err[-3000:]}")
        got += [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
    return got


def translator(world: int, pairs: int, timeout: float) -> dict:
    """``attend translate train`` on ``world`` processes (torchrun, gloo, 1 thread each), one
    epoch of ``pairs`` synthetic pairs: the training's tokens per second (history.json)."""
    import tempfile

    out = tempfile.mkdtemp(prefix="attend-ddp-bench-")
    args = ["translate", "train", "--synthetic", str(pairs), "--model", "transformer", "--epochs", "1",
            "--batch-size", "32", "--no-progress", "--threads", "1", "--out", out, "--force"]
    cmd = [sys.executable, "-m", "attend.cli", *args] if world == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
         "-m", "attend.cli", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.join(HERE, "..", "src"))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"translator on {world} processes failed:\n{p.stderr[-3000:]}")
    with open(os.path.join(out, "history.json")) as f:
        last = json.load(f)[-1]
    return {"world": world, "steps": last["step"], "seconds": last["seconds"], "tokens_per_s": last["tokens_per_s"],
            "valid_loss": last["valid_loss"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--lengths", default="8192,16384,32768")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", default=None, help="default: benchmarks/results/distributed.md (--tiny: a temporary file)")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--L", type=int)
    ap.add_argument("--world", type=int)
    ap.add_argument("--rank", type=int)
    ap.add_argument("--port", type=int)
    ap.add_argument("--pairs", type=int, default=4000, help="synthetic pairs of the translator section (0: none)")
    ap.add_argument("--piece", type=int, default=None, help="ring_attention's piece (default: the library's)")
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.out is None:
        import tempfile

        args.out = os.path.join(tempfile.gettempdir() if args.tiny else os.path.join(HERE, "results"),
                                "distributed-tiny.md" if args.tiny else "distributed.md")
    lengths = [1024, 2048] if args.tiny else [int(x) for x in args.lengths.split(",")]
    rows = []
    t_start = time.time()
    for L in lengths:
        # time from processes with glibc's own allocator (what a user runs); memory from processes
        # with its mmap threshold fixed (see run()), whose times are reported beside, as a check
        single, single_m = run(L, 1, args.reps, args.timeout, mmap=False)[0], run(L, 1, args.reps, args.timeout)[0]
        ring = run(L, 2, args.reps, args.timeout, piece=args.piece, mmap=False)
        ring_m = run(L, 2, args.reps, args.timeout, piece=args.piece)
        slow, slow_m = max(r["s"] for r in ring), max(r["s"] for r in ring_m)
        peak = max(r["peak_mib"] for r in ring_m)
        rows.append(dict(L=L, single_s=single["s"], single_peak=single_m["peak_mib"], single_live=single["live_mib"],
                         ring_s=slow, ring_peak=peak, ring_live=ring[0]["live_mib"],
                         time_ratio=slow / (single["s"] / 2), mem_ratio=peak / single_m["peak_mib"],
                         single_s_mmap=single_m["s"], ring_s_mmap=slow_m,
                         time_ratio_mmap=slow_m / (single_m["s"] / 2)))
        print(json.dumps(rows[-1]), flush=True)
    trans = []
    if args.pairs:
        for world in (1, 2):
            trans.append(translator(world, 400 if args.tiny else args.pairs, args.timeout))
            print(json.dumps(trans[-1]), flush=True)
    import torch

    lines = [
        "# Sequence-parallel attention: 1 vs 2 processes (gloo)",
        "",
        f"- Machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores visible, "
        f"torch {torch.__version__}, Python {platform.python_version()}",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Command: `python benchmarks/distributed.py{' --tiny' if args.tiny else ''}"
        f"{f' --piece {args.piece}' if args.piece else ''}` "
        f"({(time.time() - t_start) / 60:.1f} min)",
        "",
        "One forward+backward of causal attention, 1 head, E = 64, float32, 1 thread per process. `single`: "
        "`attend.attention(q, k, v, causal=True)` in one process (auto: SDPA's fused kernel). `ring`: "
        "`attend.distributed.ring_attention` on 2 processes, zigzag layout, blocks through SDPA's CPU kernel "
        "with the merged log-sum-exp"
        f"{f', pieces of {args.piece} keys' if args.piece else ' (its default pieces)'}. Time: median of "
        f"{args.reps} after a warm-up, the slower rank, in processes with glibc's own allocator. Peak: the "
        "process's resident-memory high-water mark during the call (VmHWM from /proc, reset just before it) above "
        "what it held just before, plus the bytes of the call's inputs q, k, v, dout (the largest rank), in other "
        "processes whose glibc mmap threshold is fixed at 64 KiB so that freed tensors leave the resident set "
        "(every allocation is then fresh pages, which slows calls that allocate much: their times are in the last "
        "columns); live: this process's q, k, v, dout, out, dq, dk, dv. "
        "Targets (issue 17): ring time <= 1.3x half the single-process time at 16k; ring peak per "
        "rank <= 0.6x the single-process peak at 32k.",
        "",
        "| L | single time | ring time (2 ranks) | ring / (single / 2) | single peak (live) MiB | ring peak per rank "
        "(live) MiB | ring peak / single peak | times with the mmap threshold: single, ring, ring / (single / 2) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['L']} | {r['single_s']:.2f} s | {r['ring_s']:.2f} s | {r['time_ratio']:.2f}x | "
                     f"{r['single_peak']:.0f} ({r['single_live']:.0f}) | {r['ring_peak']:.0f} ({r['ring_live']:.0f}) | "
                     f"{r['mem_ratio']:.2f}x | {r['single_s_mmap']:.2f} s, {r['ring_s_mmap']:.2f} s, "
                     f"{r['time_ratio_mmap']:.2f}x |")
    if trans:
        lines += [
            "",
            "## Translator training, 1 vs 2 processes",
            "",
            f"`attend translate train --synthetic {400 if args.tiny else args.pairs} --model transformer --epochs 1 "
            "--batch-size 32 --threads 1`, alone and under `torchrun --standalone --nproc-per-node=2` (DDP, gloo; "
            "each step one batch of 32 per process). Tokens per second: source and target tokens of all processes "
            "over rank 0's training time (the loop's steps, evaluation excluded), from `history.json`.",
            "",
            "| processes | steps | training time | tokens/s | speed-up | validation loss after the epoch |",
            "|---|---|---|---|---|---|",
        ]
        for t in trans:
            lines.append(f"| {t['world']} | {t['steps']} | {t['seconds']:.1f} s | {t['tokens_per_s']:.0f} | "
                         f"{t['tokens_per_s'] / trans[0]['tokens_per_s']:.2f}x | {t['valid_loss']:.3f} |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"attention": rows, "translator": trans}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
