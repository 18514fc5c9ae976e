"""The three forward cells of issue 16 that ``benchmarks/cpu.py``'s run 8 left just past their
bounds, each timed side by side with its base in one process: ALiBi + causal at 4x8x512x64
against FlexAttention compiled (its causal block mask built before), documents (4) at 4x8x512x64
against SDPA with no mask, and causal at 1x8x2048x64 against SDPA's ``is_causal``. For the
causal cell, also attend's non-finite check alone (one sum of each of q, k, v: what keeps a NaN
where it is used) and a demonstration of what it prevents: with a NaN in one value, the rows
before it that SDPA's kernel alone turns NaN, and those attend does. attend's outputs are
checked against the eager path in float64 first; nothing is written if one differs by more
than :data:`TOLERANCE`. Medians of ``--reps`` rounds, each in a random order.

    python benchmarks/bounds.py [--reps 21] [--threads 2] [--out NAME]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import attend
from _machine import checked_against, float64_reference, results_path, shapes_args, time_rounds, write_results
from attend import _nonfinite

TOLERANCE = 1e-4  # the largest difference from eager in float64 accepted (float32 results: ~1e-6 here)


def _inputs(B, H, L, E):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, L, E, generator=g) for _ in range(3)]


def _timed(fns: dict, reps: int) -> dict:
    """``time_rounds`` after one call of each (the first compiles, or builds what it keeps)."""
    for f in fns.values():
        f()
    return time_rounds(fns, reps)


def _checked(base, kw, what):
    got = (attend.attention(*base, **kw),)
    return checked_against(float64_reference(base, None, kw, False), got, TOLERANCE, what)


def main() -> None:
    args, _ = shapes_args(__doc__.split("\n\n")[0], reps=21, shapes=None, out="cpu-bounds.md")
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    cells, data = [], {}
    with torch.no_grad():
        # ALiBi + causal against FlexAttention compiled
        q, k, v = base = _inputs(4, 8, 512, 64)
        H = q.shape[1]
        kw = {"score_mod": attend.mods.alibi(H), "causal": True}
        worst = _checked(base, kw, "alibi+causal 4x8x512x64")
        slopes = attend.mods.alibi_slopes(H)
        block = create_block_mask(lambda b, h, i, j: j <= i, None, None, 512, 512, device="cpu")
        flex = torch.compile(flex_attention)
        mod = lambda s, b, h, i, j: s - slopes[h] * (i - j).abs()  # noqa: E731
        fns = {"attend": lambda: attend.attention(q, k, v, **kw),
               "base": lambda: flex(q, k, v, score_mod=mod, block_mask=block)}
        cells.append(("ALiBi + causal", "4x8x512x64", "FlexAttention compiled", "<= 1.0x",
                      attend.explain(q, k, v, **kw).backend, _timed(fns, args.reps), worst))

        # documents against SDPA with no mask
        kw = {"mask": attend.masks.document(torch.arange(512) // 128)}
        worst = _checked(base, kw, "documents 4x8x512x64")
        fns = {"attend": lambda: attend.attention(q, k, v, **kw), "base": lambda: F.scaled_dot_product_attention(q, k, v)}
        cells.append(("documents (4)", "4x8x512x64", "SDPA, no mask", "<= 0.5x", attend.explain(q, k, v, **kw).backend,
                      _timed(fns, args.reps), worst))

        # causal against SDPA's is_causal, and attend's non-finite check alone
        q, k, v = base = _inputs(1, 8, 2048, 64)
        kw = {"causal": True}
        worst = _checked(base, kw, "causal 1x8x2048x64")
        fns = {"attend": lambda: attend.attention(q, k, v, **kw),
               "base": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
               "check": lambda: _nonfinite._all_finite(q, k, v)}
        cells.append(("causal", "1x8x2048x64", "SDPA is_causal", "<= 1.0x", attend.explain(q, k, v, **kw).backend,
                      _timed(fns, args.reps), worst))
        bad = v.clone()
        bad[:, :, 100] = float("nan")  # one value, at position 100
        leaked = {"sdpa_kernel_alone": F.scaled_dot_product_attention(q, k, bad, is_causal=True),
                  "attend": attend.attention(q, k, bad, causal=True)}
        leaked = {n: int(torch.isnan(o[0, 0, :100]).any(-1).sum()) for n, o in leaked.items()}

    rows = []
    for what, shape, base_name, bound, backend, med, worst in cells:
        ratio = med["attend"] / med["base"]
        data[f"{what} {shape}"] = {"backend": backend, "ms": med, "ratio": ratio, "bound": bound,
                                   "max_abs_diff_vs_float64": worst}
        rows.append(f"| {what} | {shape} | {backend} | {med['attend']:.2f} | {base_name} {med['base']:.2f} | "
                    f"**{ratio:.2f}x** | {bound} | {worst:.1e} |")
    check_ms = data["causal 1x8x2048x64"]["ms"]["check"]
    data["nan_rows_before_a_nan_value_at_100"] = leaked
    body = [
        f"float32, forward (no gradients), {args.threads} torch threads; median of {args.reps} rounds, each "
        "calling attend and its base once in a random order; attend checked against its eager path in float64.",
        "",
        "| variant | shape | attend ran | attend ms | base ms | attend / base | bound | max diff vs float64 |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"attend's non-finite check alone (one sum of each of q, k, v at 1x8x2048x64): {check_ms:.2f} ms, "
        f"{check_ms / data['causal 1x8x2048x64']['ms']['base']:.1%} of SDPA's causal call. What it prevents: with "
        f"a NaN in the value at position 100 (causal), rows 0-99 of head 0 that come out NaN: SDPA's kernel "
        f"alone {leaked['sdpa_kernel_alone']} of 100, attend {leaked['attend']} of 100.",
    ]
    write_results(results_path(args.out), "Three forward cells at their bounds, side by side", body, data=data)


if __name__ == "__main__":
    main()
