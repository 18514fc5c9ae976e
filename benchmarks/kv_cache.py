"""Key/value-cache decoding: time per new token against the prefix length.

    python benchmarks/kv_cache.py [--max-prefix 2048] [--out benchmarks/results/kv-cache.md]

Without a cache, each new token means running the decoder over the whole sequence again
(work grows with the prefix, and the attention part with its square); with
:class:`attend.nn.KVCache` a step projects one token and attends over the stored keys.
Target (issue 4): time per new token roughly constant in the prefix length up to 2k
tokens, against a full recompute that grows — measured and plotted.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from attend.nn import Decoder

from _machine import RESULTS, results_path, side_file, write_results


def _time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.inference_mode()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-prefix", type=int, default=2048)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(RESULTS, "kv-cache.md"),
                    help="results file (.md; the .json and .png beside it)")
    args = ap.parse_args()
    results_path(args.out)
    torch.manual_seed(0)
    dec = Decoder(num_layers=args.layers, d_model=args.d_model, num_heads=4, cross_attention=False,
                  positional="rope", dropout=0.0).eval()
    prefixes = [p for p in (64, 128, 256, 512, 768, 1024, 1536, 2048) if p <= args.max_prefix]
    x = torch.randn(1, args.max_prefix + 16, args.d_model)
    rows = []
    for P in prefixes:
        cache = dec.new_cache(capacity=P + 64)
        dec(x[:, :P], cache=cache)  # the prompt
        steps = iter(range(P, P + 16))

        def cached_step():
            t = next(steps)
            dec(x[:, t : t + 1], cache=cache)

        cached = _time(cached_step, 12)
        full = _time(lambda: dec(x[:, : P + 1]), 3 if P >= 1024 else 5)
        # the two must agree: the last cached output equals the full forward's last row
        check = dec.new_cache(capacity=P + 1)
        dec(x[:, :P], cache=check)
        diff = float((dec(x[:, P : P + 1], cache=check).hidden[0, -1] - dec(x[:, : P + 1]).hidden[0, -1]).abs().max())
        rows.append({"prefix": P, "cached_ms": cached * 1e3, "full_ms": full * 1e3, "max_abs_diff": diff})
        print(rows[-1], flush=True)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([r["prefix"] for r in rows], [r["full_ms"] for r in rows], "o-", label="full recompute")
    ax.plot([r["prefix"] for r in rows], [r["cached_ms"] for r in rows], "o-", label="with KVCache")
    ax.set_xlabel("prefix length (tokens)")
    ax.set_ylabel("ms per new token")
    ax.set_title(f"decoder {args.layers} layers, d {args.d_model}, CPU")
    ax.grid(alpha=0.3)
    ax.legend()
    png = side_file(args.out, ".png")
    fig.savefig(png)
    first, last = rows[0], rows[-1]
    lines = [f"`attend.nn.Decoder`: {args.layers} layers, d_model {args.d_model}, 4 heads, RoPE, no cross-attention, "
             "float32, batch 1, inference mode. Median of 12 cached steps / 3-5 full forwards per prefix length.", "",
             "| prefix | with cache (ms/token) | full recompute (ms/token) | recompute / cache | max abs diff |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['prefix']} | {r['cached_ms']:.2f} | {r['full_ms']:.2f} | {r['full_ms'] / r['cached_ms']:.1f}x | "
                     f"{r['max_abs_diff']:.1e} |")
    lines += ["", f"From prefix {first['prefix']} to {last['prefix']} ({last['prefix'] / first['prefix']:.0f}x longer): "
              f"cached step time x{last['cached_ms'] / first['cached_ms']:.2f}, full recompute "
              f"x{last['full_ms'] / first['full_ms']:.1f}.", "", f"Plot: `{os.path.basename(png)}`."]
    write_results(args.out, "Key/value-cache decoding: time per new token", lines,
                  data={"d_model": args.d_model, "layers": args.layers, "heads": 4, "rows": rows})


if __name__ == "__main__":
    main()
