"""Where soft-capping's forward on ``inductor`` spends its time, against SDPA with no mask, in
one process: the whole call, the time inside its compiled tile programs (the two library
matrix products and the fused elementwise kernel), what is left outside them (planning,
merging chunks, slicing), and two library matrix products alone at several tile sizes, with a
reused output and with a fresh one per tile (as a compiled program has). Then the floor of
this design, without attend's bookkeeping: the elementwise work alone, compiled, on one tile of
scores (B·H x 256 rows x 1024 keys, attend's tile here) and repeated for every tile of the call,
as attend's program does it (capping, row maximum, exponent, sum) and with a fixed shift for the
row maximum (every capped score is below the cap: one pass, two exponents and a division per
score); and a bare loop of one compiled program per tile x chunk (products and fixed-shift
elementwise, chunks' sums added). attend's result and the bare loop's are checked against the
eager path in float64 first; nothing is written if one differs by more than :data:`TOLERANCE`.
Medians of ``--reps`` rounds, each in a random order.

    python benchmarks/softcap_parts.py [--reps 15] [--shapes 1x8x2048x64] [--out NAME]
"""
from __future__ import annotations

import time

import torch

import attend
from _machine import checked_against, float64_reference, results_path, sdpa_timed, shapes_args, time_rounds, write_results
from attend.backends import _programs

TOLERANCE = 1e-4  # the largest difference from eager in float64 accepted (float32 results: ~4e-7 here)
CAP = 20.0
ROWS, KEYS = 256, 1024  # attend's tile at (1, 8, 2048, 64): the floor rows use it
TILES = [(32, 1024), (64, 1024), (128, 512), (256, 256), (256, 1024)]  # (rows, keys) over all heads


def _in_programs() -> list:
    """Wrap the compiled tile programs so their time accumulates into the returned one-item list."""
    spent = [0.0]
    made = _programs.compiled

    def compiled(name, key, source=None):
        fn = made(name, key, source)

        def timed(*args):
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                spent[0] += time.perf_counter() - t0

        return timed

    _programs.compiled = compiled
    return spent


def _products(q, k, v, rows: int, keys: int, fresh: bool):
    """The call's two matrix products (scores, then scores x values) over tiles of ``rows`` x
    ``keys`` of every head, as a callable."""
    B, H, L, E = q.shape
    q3, k3, v3 = (t.reshape(B * H, L, E) for t in (q, k, v))
    s = torch.empty(B * H, rows, keys)
    o = torch.empty(B * H, rows, E)

    def call():
        for i0 in range(0, L - rows + 1, rows):
            for j0 in range(0, L - keys + 1, keys):
                a, b, w = q3[:, i0:i0 + rows], k3[:, j0:j0 + keys], v3[:, j0:j0 + keys]
                if fresh:
                    torch.bmm(torch.bmm(a, b.transpose(1, 2)), w)
                else:
                    torch.bmm(a, b.transpose(1, 2), out=s)
                    torch.bmm(s, w, out=o)

    return call


def _capping_softmax(s):
    """attend's program between its two products: cap·tanh through exp, then max, exponent, sum."""
    c = CAP * (1.0 - 2.0 / (torch.exp(2.0 * (s / CAP).clamp(-20.0, 20.0)) + 1.0))
    p = torch.exp(c - c.amax(-1, keepdim=True))
    return p, p.sum(-1)


def _fixed_shift(s, shift):
    """The same with the cap as a fixed shift for the row maximum: exp(cap·tanh(s/cap) - cap) =
    exp(-2·cap / (exp(2s/cap) + 1)); ``shift`` (zeros, one per row) makes inductor store the terms
    and sum them in one loop."""
    p = torch.exp((-2.0 * CAP) / (torch.exp((s * (2.0 / CAP)).clamp(-40.0, 40.0)) + 1.0) - shift)
    return p, p.sum(-1)


def _shifted_block(a, b, v, shift, scale: float):
    """One tile x chunk with the fixed shift: (unnormalised output, row sums)."""
    p, total = _fixed_shift(torch.matmul(a, b.transpose(-1, -2)) * scale, shift)
    return torch.matmul(p, v), total


def _floor_calls(q, k, v):
    """(elementwise of attend's program over every tile, the same with a fixed shift, the bare
    loop of products and fixed-shift elementwise), as callables; the bare loop returns its output."""
    B, H, L, E = q.shape
    scale, tiles = E ** -0.5, (L // ROWS) * (L // KEYS)
    s = torch.matmul(q[:, :, :ROWS], k[:, :, :KEYS].transpose(-1, -2)) * scale
    shift = q.new_zeros(B, H, ROWS, 1)
    plain, shifted, block = (torch.compile(f) for f in (_capping_softmax, _fixed_shift, _shifted_block))

    def elementwise():
        for _ in range(tiles):
            plain(s)

    def elementwise_shifted():
        for _ in range(tiles):
            shifted(s, shift)

    def bare():
        out = torch.empty_like(q)
        for i0 in range(0, L, ROWS):
            acc = total = None
            for j0 in range(0, L, KEYS):
                o, t = block(q[:, :, i0:i0 + ROWS], k[:, :, j0:j0 + KEYS], v[:, :, j0:j0 + KEYS], shift, scale)
                acc, total = (o, t) if acc is None else (acc.add_(o), total.add_(t))
            torch.div(acc, total.unsqueeze(-1), out=out[:, :, i0:i0 + ROWS])
        return out

    return elementwise, elementwise_shifted, bare


def main() -> None:
    args, shapes = shapes_args(__doc__.split("\n\n")[0], reps=15, shapes="1x8x2048x64", out="cpu-softcap-parts.md")
    spent = _in_programs()
    rows, data = [], {}
    for B, H, L, E in shapes:
        g = torch.Generator().manual_seed(0)
        base = [torch.randn(B, H, L, E, generator=g) for _ in range(3)]
        q, k, v = base
        kw = dict(score_mod=attend.mods.softcap(CAP))
        shape, scores = f"{B}x{H}x{L}x{E}", B * H * L * L

        def attend_call():
            with torch.no_grad():
                return (attend.attention(q, k, v, backend="inductor", **kw),)

        attend_call()  # compiles
        worst = checked_against(float64_reference(base, None, kw, False), attend_call(), TOLERANCE,
                                f"{shape} soft-capping")
        inside: list = []

        def attend_timed():
            spent[0] = 0.0
            attend_call()
            inside.append(spent[0])

        fns = {"SDPA": sdpa_timed(q, k, v, None, causal=False, training=False), "attend": attend_timed}
        if L % ROWS == 0 and L % KEYS == 0:
            elementwise, shifted, bare = _floor_calls(q, k, v)
            with torch.no_grad():
                elementwise(), shifted()  # compile
                worst = max(worst, checked_against(float64_reference(base, None, kw, False), (bare(),), TOLERANCE,
                                                   f"{shape} bare loop with a fixed shift"))
            fns.update({f"floor: elementwise of attend's program, {ROWS}x{KEYS} tiles": elementwise,
                        f"floor: elementwise with a fixed shift, {ROWS}x{KEYS} tiles": shifted,
                        f"floor: bare loop, products + fixed-shift elementwise, {ROWS}x{KEYS}": bare})
        for r, c in TILES:
            if r <= L and c <= L:
                fns[f"products {r}x{c}"] = _products(q, k, v, r, c, fresh=False)
                fns[f"products {r}x{c} fresh"] = _products(q, k, v, r, c, fresh=True)
        with torch.no_grad():
            med = time_rounds(fns, args.reps)
        inside.sort()
        med["attend: in its programs"] = inside[len(inside) // 2] * 1e3
        med["attend: outside its programs"] = med["attend"] - med["attend: in its programs"]
        data[shape] = {"ms": med, "ns_per_score": {t: m * 1e6 / scores for t, m in med.items()},
                       "max_abs_diff_vs_float64": worst}
        for t, m in med.items():
            rows.append(f"| {shape} | {t} | {m:.2f} | {m * 1e6 / scores:.3f} | {m / med['SDPA']:.3f}x |")
    body = [
        f"float32, {args.threads} torch threads, soft-capping {CAP} (forward, no gradients) on `inductor`, "
        f"SDPA with no mask as the base; median of {args.reps} rounds, each in a random order. "
        "\"in its programs\": the time inside the compiled tile programs during the attend call (median over "
        "the calls); \"outside\": the rest of that call. \"products RxC\": two library matrix products "
        "(q·kᵀ, then scores·v) over tiles of R query rows x C keys of every head, covering the whole call, "
        "with one reused output per product; \"fresh\": a new output per tile. \"floor\": the elementwise "
        f"work alone on one tile of scores ({ROWS} rows x {KEYS} keys of every head, attend's tile here) repeated "
        "for every tile of the call, as attend's program does it (capping, row maximum, exponent, sum) and with a "
        "fixed shift for the row maximum (the cap: one pass); and a bare Python loop of one compiled program per "
        "tile x chunk (both products and the fixed-shift elementwise), without attend's planning and checks. "
        "ns per score: over B·H·L·S.",
        "",
        "| shape | what | ms | ns per score | over SDPA |",
        "|---|---|---|---|---|",
        *rows,
    ]
    write_results(results_path(args.out), "Soft-capping's forward on inductor, part by part", body, data=data)


if __name__ == "__main__":
    main()
