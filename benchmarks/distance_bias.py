"""A bias of the distance (relative-bias table, ALiBi) as one call of SDPA's CPU kernel with a
strided view of the biases, against the other paths attend has for it.

Times, side by side in one process, forward (no gradients) and forward+backward (q, k, v
learn; the table or slopes are fixed): attend's ``sdpa`` backend, which runs these on
:mod:`attend.backends._distance_bias`; ``flex`` (FlexAttention's compiled kernel, with ALiBi's
proven reach, inference only); ``inductor``'s compiled tiles (training); for a relative-bias
table also the regions path (``sdpa`` with the strided path declined); ``auto``;
and SDPA with no bias (causal where the variant is). Every path is checked against the eager
path in float64 before it is timed; nothing is written if one differs by more than
:data:`TOLERANCE`. Median of ``--reps`` rounds, each round in a random order.

    python benchmarks/distance_bias.py [--reps 7] [--shapes 1x8x2048x64,4x8x512x64,1x8x4096x64] [--out NAME]
"""
from __future__ import annotations

import contextlib

import torch

import attend
from _machine import checked_against, float64_reference, results_path, sdpa_timed, shapes_args, time_rounds, write_results
from attend.backends import _distance_bias

SHAPES = "1x8x2048x64,4x8x512x64,2x8x1024x64,1x8x4096x64"
#: the largest difference from the eager path in float64 accepted (float32 results: ~1e-6 here)
TOLERANCE = 1e-4
R = 128


def variants(H: int) -> dict:
    """name -> (attention kwargs, causal)"""
    table = 0.5 * torch.randn(H, 2 * R + 1, generator=torch.Generator().manual_seed(1))
    return {
        "relative bias R=128": (dict(score_mod=attend.mods.relative_bias(table)), False),
        "relative bias R=128 + causal": (dict(score_mod=attend.mods.relative_bias(table), causal=True), True),
        "ALiBi": (dict(score_mod=attend.mods.alibi(H)), False),
        "ALiBi + causal": (dict(score_mod=attend.mods.alibi(H), causal=True), True),
    }


@contextlib.contextmanager
def _strided_declined():
    """The regions path: ``sdpa`` with the strided path declined (as on a kernel that misreads it)."""
    real = _distance_bias.reads_strides
    _distance_bias.reads_strides = lambda: False
    try:
        yield
    finally:
        _distance_bias.reads_strides = real


def contestants(kw: dict, training: bool, relbias: bool) -> dict:
    """tag -> backend (or a callable run around the call)"""
    out = {"strided (sdpa)": "sdpa", ("inductor" if training else "flex"): "inductor" if training else "flex"}
    if relbias:
        out["regions (sdpa)"] = ("sdpa", _strided_declined)
    out["auto"] = "auto"
    return out


def main() -> None:
    args, shapes = shapes_args(__doc__.split("\n\n")[0], reps=7, shapes=SHAPES, out="cpu-distance-bias.md")
    rows, data = [], {}
    for B, H, L, E in shapes:
        g = torch.Generator().manual_seed(0)
        base = [torch.randn(B, H, L, E, generator=g) for _ in range(3)]
        for name, (kw, causal) in variants(H).items():
            for training in (False, True):
                q, k, v = (t.detach().requires_grad_(training) for t in base)
                dout = torch.randn(B, H, L, E, generator=g)

                def run(backend, around=None, kw=kw, q=q, k=k, v=v, dout=dout, training=training):
                    with (around() if around else contextlib.nullcontext()), torch.set_grad_enabled(training):
                        out = attend.attention(q, k, v, backend=backend, **kw)
                        if not training:
                            return (out,)
                        return (out, *torch.autograd.grad(out, (q, k, v), dout))

                ref = float64_reference(base, dout, kw, training)
                fns = {"SDPA": sdpa_timed(q, k, v, dout, causal=causal, training=training)}
                worst = {}
                for tag, be in contestants(kw, training, "relative" in name).items():
                    be, around = be if isinstance(be, tuple) else (be, None)
                    fns[tag] = lambda be=be, around=around: run(be, around)
                    fns[tag]()  # compiles
                    worst[tag] = checked_against(ref, fns[tag](), TOLERANCE, f"{B}x{H}x{L}x{E} {name} {tag}")
                chosen = attend.explain(q, k, v, **kw)
                fns["SDPA"]()
                med = time_rounds(fns, args.reps)
                ratio = {t: med[t] / med["SDPA"] for t in fns if t != "SDPA"}
                shape = f"{B}x{H}x{L}x{E}"
                mode = "fwd+bwd" if training else "fwd"
                data[f"{shape} {name} {mode}"] = {"ms": med, "ratio": ratio, "auto_backend": chosen.backend,
                                                  "max_abs_diff_vs_float64": worst}
                others = ", ".join(f"{t} {r:.3f}x" for t, r in ratio.items() if t not in ("strided (sdpa)", "auto"))
                rows.append(f"| {shape} | {name} | {mode} | {med['SDPA']:.1f} | **{ratio['strided (sdpa)']:.3f}x** | "
                            f"{others} | {ratio['auto']:.3f}x ({chosen.backend}) | {max(worst.values()):.1e} |")
                print(rows[-1], flush=True)
    body = [
        "float32, "
        f"{args.threads} torch threads. Ratios are to SDPA with no bias (causal where the variant is), timed "
        f"in the same rounds; median of {args.reps} rounds, each in a random order. fwd: no gradients; "
        "fwd+bwd: q, k, v learn, the table or slopes are fixed. `strided`: attend's `sdpa` backend, one "
        "kernel call with the biases a strided view (causal: blocks of 256 rows). `flex`: FlexAttention's "
        "compiled kernel through attend (ALiBi: blocks past its proven reach left out). `inductor`: attend's "
        "compiled tiles. `regions`: `sdpa` with the strided path declined (plain kernel calls beyond the "
        "table's reach, the band with a dense mask). `auto`: what attend takes (its backend in brackets). "
        "Max abs diff: the worst of all paths against the eager path in float64, output and gradients.",
        "",
        "| shape | variant | mode | SDPA ms | strided | others | auto | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    write_results(results_path(args.out), "A bias of the distance on SDPA's kernel, strided", body, data=data)


if __name__ == "__main__":
    main()
