"""What evaluating the causal rule costs ``inductor`` in a tile the rule allows whole.

``inductor``'s tiles evaluate their mask rule on every (query, key) pair, including tiles
where every pair is allowed. Skipping the rule there would need a second compiled program
per variant, and a tile cut at the diagonal would need one more compiled call, about
150 µs each (``_TILE_COST`` in ``attend/backends/inductor.py``). This script measures what
such a split could save at most. It times the forward program on one tile of 128 rows x
2048 keys x 8 heads (E 64, float32), where the causal rule holds for every pair, compiled
once with the rule and once without it. Median of 31 calls, the two alternating.

    python benchmarks/inductor_full_tiles.py [--out NAME]
"""
from __future__ import annotations

import argparse
import math
import os
import time

import torch

import attend
from _machine import RESULTS, results_path, write_results
from attend.backends import _programs as P

H, ROWS, KEYS, E = 8, 128, 2048, 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(RESULTS, "inductor-full-tiles.md"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    a, b, v = torch.randn(1, H, ROWS, E), torch.randn(1, H, KEYS, E), torch.randn(1, H, KEYS, E)
    i = torch.arange(KEYS, KEYS + ROWS).view(1, 1, -1, 1)  # rows after every key: the rule allows each pair
    j = torch.arange(KEYS).view(1, 1, 1, -1)
    hb, bb = torch.arange(H).view(1, -1, 1, 1), torch.zeros(1, 1, 1, 1, dtype=torch.long)
    floor = math.log(torch.finfo(torch.float32).tiny)
    mods = {"none": None, "ALiBi": attend.mods.alibi(attend.mods.alibi_slopes(H)), "soft-capping": attend.mods.softcap(20.0)}
    rows, data = [], {}
    with torch.no_grad():
        for name, mod in mods.items():
            progs = {}
            for causal in (True, False):
                spec = P.Spec("dot", E ** -0.5, causal, None, 0, floor)
                prog = P.compiled("forward", ("full-tile benchmark", name, causal))
                progs[causal] = (lambda prog=prog, spec=spec, mod=mod: prog(spec, a, b, v, None, i, j, hb, bb, None, mod,
                                                                  None, None, None))
            diff = (progs[True]()[0] - progs[False]()[0]).abs().max().item()
            times = {True: [], False: []}
            for _ in range(31):
                for causal, run in progs.items():
                    t = time.perf_counter()
                    run()
                    times[causal].append(time.perf_counter() - t)
            med = {c: sorted(x)[15] * 1e3 for c, x in times.items()}
            ratio = med[True] / med[False]
            data[name] = {"with_rule_ms": med[True], "without_rule_ms": med[False], "ratio": ratio, "max_abs_difference": diff}
            rows.append(f"| {name} | {med[True]:.2f} ms | {med[False]:.2f} ms | {ratio:.3f}x | {diff:.1e} |")
            print(rows[-1], flush=True)
    body = [
        f"One tile of {ROWS} rows x {KEYS} keys x {H} heads (E {E}, float32): rows placed after every key of a causal "
        f"call, where the rule allows every pair. The forward program, compiled with the causal rule and "
        f"without it; median of 31 calls each, alternating. The saving a rule-free program could give such "
        f"tiles is at most the difference. A split at the diagonal would also cost one more compiled call "
        f"(~150 µs) per tile.",
        "",
        "| score_mod | rule evaluated | no rule | ratio | outputs differ by (max abs) |",
        "|---|---|---|---|---|",
        *rows,
    ]
    write_results(results_path(args.out), "inductor: the causal rule's cost in a tile it allows whole", body,
                  data=data)


if __name__ == "__main__":
    main()
