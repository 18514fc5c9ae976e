"""``inductor``'s full chunks: the chunks whose keys every mask rule allows to every row of their
tile run a program compiled without the rules. This times, side by side in one process, the
``inductor`` backend with full chunks (the default) and with every chunk masked
(``attend.backends.inductor.FULL_CHUNKS = False``), forward and forward+backward, for the rules
that leave whole chunks (causal with soft-capping, documents, prefix-LM, chunks) and one that
leaves none (a window of 256), with SDPA with no mask as the ratio's base. Both paths are
checked against the eager path in float64 first; nothing is written if one differs by more
than :data:`TOLERANCE`. Median of ``--reps`` rounds, each in a random order.

    python benchmarks/full_chunks.py [--reps 7] [--shapes 1x8x2048x64,4x8x512x64] [--out NAME]
"""
from __future__ import annotations

import contextlib

import torch

import attend
from _machine import checked_against, float64_reference, results_path, sdpa_timed, shapes_args, time_rounds, write_results
from attend.backends import inductor

SHAPES = "1x8x2048x64,4x8x512x64,1x8x4096x64"
TOLERANCE = 1e-4  # the largest difference from eager in float64 accepted (float32 results: ~1e-6 here)


def variants(L: int) -> dict:
    return {
        "causal + softcap": dict(causal=True, score_mod=attend.mods.softcap(20.0)),
        "4 documents": dict(mask=attend.masks.document(torch.arange(L) // (L // 4))),
        "prefix-LM L/4": dict(mask=attend.masks.prefix_lm(L // 4)),
        "chunks of 256": dict(mask=attend.masks.chunked(256)),
        "window 256": dict(window=256),
    }


@contextlib.contextmanager
def _masked():
    """Every chunk run with the rules evaluated (the path before full chunks)."""
    inductor.FULL_CHUNKS = False
    try:
        yield
    finally:
        inductor.FULL_CHUNKS = True


def main() -> None:
    args, shapes = shapes_args(__doc__.split("\n\n")[0], reps=7, shapes=SHAPES, out="cpu-full-chunks.md")
    rows, data = [], {}
    for B, H, L, E in shapes:
        g = torch.Generator().manual_seed(0)
        base = [torch.randn(B, H, L, E, generator=g) for _ in range(3)]
        dout = torch.randn(B, H, L, E, generator=g)
        for name, kw in variants(L).items():
            for training in (False, True):
                q, k, v = (t.detach().requires_grad_(training) for t in base)

                def run(around, kw=kw, q=q, k=k, v=v, training=training):
                    with around(), torch.set_grad_enabled(training):
                        out = attend.attention(q, k, v, backend="inductor", **kw)
                        return (out, *torch.autograd.grad(out, (q, k, v), dout)) if training else (out,)

                ref = float64_reference(base, dout, kw, training)
                fns = {"SDPA": sdpa_timed(q, k, v, dout, causal=False, training=training),
                       "full chunks": lambda: run(contextlib.nullcontext), "every chunk masked": lambda: run(_masked)}
                worst = {}
                for tag in ("full chunks", "every chunk masked"):
                    fns[tag]()  # compiles
                    worst[tag] = checked_against(ref, fns[tag](), TOLERANCE, f"{B}x{H}x{L}x{E} {name} {tag}")
                plan = inductor.Inductor().plan(attend.functional._prepare(q, k, v, **kw)[0])
                med = time_rounds(fns, args.reps)
                shape, mode = f"{B}x{H}x{L}x{E}", "fwd+bwd" if training else "fwd"
                ratio = {t: med[t] / med["SDPA"] for t in fns if t != "SDPA"}
                gain = med["full chunks"] / med["every chunk masked"]
                data[f"{shape} {name} {mode}"] = {"ms": med, "ratio": ratio, "full_over_masked": gain,
                                                  "full_chunks": plan.full, "chunks": plan.chunks,
                                                  "max_abs_diff_vs_float64": worst}
                rows.append(f"| {shape} | {name} | {mode} | {plan.full} / {plan.chunks} | {med['SDPA']:.1f} | "
                            f"{ratio['full chunks']:.3f}x | {ratio['every chunk masked']:.3f}x | **{gain:.3f}** | "
                            f"{max(worst.values()):.1e} |")
                print(rows[-1], flush=True)
    body = [
        f"float32, {args.threads} torch threads, backend `inductor`. Ratios are to SDPA with no mask, timed in "
        f"the same rounds; median of {args.reps} rounds, each in a random order. fwd: no gradients; fwd+bwd: "
        "q, k, v learn. Full chunks: the forward's chunks whose keys every rule allows to every row of the "
        "tile (run without the rules), of all its chunks. Last ratio: the time with full chunks over the "
        "time with every chunk masked (below 1: faster). Max abs diff: the worse of the two paths against "
        "the eager path in float64, output and gradients.",
        "",
        "| shape | variant | mode | full chunks | SDPA ms | full chunks | every chunk masked | full / masked | "
        "max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    write_results(results_path(args.out), "inductor: full chunks run without the rules", body, data=data)


if __name__ == "__main__":
    main()
