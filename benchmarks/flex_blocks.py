"""``flex``'s block size: blocks of 128 against 64, per variant, and the one ``Flex()`` chooses.

FlexAttention's CPU kernel computes whole blocks: where a rule's band edge cuts through a block
(a sliding window), the pairs outside the band are computed and masked. Smaller blocks waste
less of that but cost more per pair where a rule's spans fall on block edges (documents, chunks,
causal). This script times, side by side in one process, FlexAttention's kernel through attend
with ``Flex(block_size=128)``, ``Flex(block_size=64)`` and ``Flex()`` (block size chosen per
call, see ``attend.backends.flex.BLOCK_SIZES``), and SDPA plain (causal for causal variants),
forward, on the variants ``auto`` gives to ``flex``. Each call is checked against the eager path
in float64. Median of ``--reps`` rounds; each round runs the four in a random order.

    python benchmarks/flex_blocks.py [--reps 9] [--shapes 1x8x2048x64,4x8x512x64,1x8x4096x64] [--out NAME]
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

import attend
from _machine import results_path, shapes_args, time_rounds, write_results
from attend.backends.flex import Flex

SHAPES = "1x8x2048x64,4x8x512x64,1x8x4096x64"
#: the largest difference from the eager path in float64 accepted (float32 results: ~1e-6 here)
TOLERANCE = 1e-4


def variants(B: int, H: int, L: int) -> dict:
    """name -> (attention kwargs, SDPA causal?)"""
    ids = torch.arange(L).div(L // 4, rounding_mode="floor").expand(B, L).contiguous()
    return {
        "window 256": (dict(window=256), False),
        "causal window (256, 0)": (dict(window=(256, 0)), True),
        "4 documents": (dict(mask=attend.masks.document(ids)), False),
        "prefix-LM L/4": (dict(mask=attend.masks.prefix_lm(L // 4)), True),
        "chunks of 256": (dict(mask=attend.masks.chunked(256)), False),
        "ALiBi + causal": (dict(score_mod=attend.mods.alibi(H), causal=True), True),
        "ALiBi, no mask": (dict(score_mod=attend.mods.alibi(H)), False),
    }


def main() -> None:
    args, shapes = shapes_args(__doc__.split("\n\n")[0], reps=9, shapes=SHAPES, out="cpu-flex-blocks.md")
    backends = {"128": Flex(block_size=128), "64": Flex(block_size=64), "chosen": Flex()}
    rows, data = [], {}
    for B, H, L, E in shapes:
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, H, L, E) for _ in range(3))
        for name, (kw, causal) in variants(B, H, L).items():
            ref = attend.attention(q.double(), k.double(), v.double(), backend="eager", **kw)
            fns = {"SDPA": lambda c=causal: F.scaled_dot_product_attention(q, k, v, is_causal=c)}
            for tag, be in backends.items():
                fns[tag] = lambda be=be, kw=kw: attend.attention(q, k, v, backend=be, **kw)
            with torch.no_grad():
                worst = 0.0
                for tag in backends:
                    fns[tag]()  # compiles
                    worst = max(worst, (fns[tag]().double() - ref).abs().max().item())
                if not worst <= TOLERANCE:  # (NaN too) nothing is written for a wrong result
                    sys.exit(f"{B}x{H}x{L}x{E} {name}: flex differs from eager float64 by {worst:.1e} "
                             f"(more than {TOLERANCE:.0e}); no results written")
                fns["SDPA"]()
                med = time_rounds(fns, args.reps)
            chosen = _chosen(q, k, v, kw)
            ratio = {t: med[t] / med["SDPA"] for t in backends}
            shape = f"{B}x{H}x{L}x{E}"
            data[f"{shape} {name}"] = {"ms": med, "ratio": ratio, "chosen_block": chosen, "max_abs_diff_vs_float64": worst}
            rows.append(f"| {shape} | {name} | {med['SDPA']:.1f} | {ratio['128']:.3f}x | {ratio['64']:.3f}x | "
                        f"{ratio['chosen']:.3f}x ({chosen}) | {ratio['64'] / ratio['128']:.3f} | {worst:.1e} |")
            print(rows[-1], flush=True)
    body = [
        "FlexAttention's compiled CPU kernel through attend's `flex` backend, forward, float32, "
        f"{args.threads} torch threads. Ratios are to SDPA plain (causal where the variant is causal) "
        f"timed in the same rounds; median of {args.reps} rounds, each in a random order. "
        "`chosen`: `Flex()`, which takes blocks of 64 where they compute at least 5% fewer (query, key) "
        "pairs than blocks of 128, or where ALiBi's reach applies (the block it chose in brackets). Max abs diff: worst of the three "
        "against the eager path in float64.",
        "",
        "| shape | variant | SDPA ms | blocks of 128 | blocks of 64 | chosen | 64 / 128 | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    write_results(results_path(args.out), "flex: blocks of 128 against 64", body, data=data)


def _chosen(q, k, v, kw) -> int:
    """The block size ``Flex()`` takes for this call (read from explain's line)."""
    line = str(attend.explain(q, k, v, backend=Flex(), **kw))
    return int(line.split("blocks of ")[1].split()[0].rstrip(":"))


if __name__ == "__main__":
    main()
