"""One rank of the sequence-parallel checks (launched by tests/test_distributed.py, W processes, gloo).

Every rank builds the same global inputs from one seed, computes single-process attention
(eager, float64) and its gradients, then its own share through ``ring_attention`` /
``ulysses_attention``, and writes the largest differences per case as JSON lines to
``--out``. The test asserts on them. ``--die-at`` makes this rank exit abruptly at a case, to
check that the others fail with an error instead of hanging.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import traceback
import zlib

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import attend  # noqa: E402
import attend.distributed as D  # noqa: E402

B, H, E = 2, 4, 8


def cases():
    """(name, global L, S, kv heads, attention kwargs builder, what is learned)."""
    ids = lambda n: torch.tensor([0] * (n // 3) + [1] * (n - n // 3 - n // 4) + [2] * (n // 4))  # noqa: E731
    return [
        ("plain", 37, 37, H, lambda L, S: {}),
        ("causal", 37, 37, H, lambda L, S: {"causal": True}),
        ("causal_gqa_sdpa_blocks", 37, 37, 2, lambda L, S: {"causal": True, "backend": "sdpa"}),
        ("causal_cross_L_gt_S", 41, 29, H, lambda L, S: {"causal": True}),  # rows 0..11 see no key: exactly 0
        ("window_gqa", 37, 37, 2, lambda L, S: {"window": (5, 2)}),
        ("document", 37, 37, H, lambda L, S: {"mask": attend.masks.document(ids(S)), "causal": True}),
        ("padding", 37, 37, H, lambda L, S: {"mask": attend.masks.padding(torch.tensor([30, 0]))}),  # seq 1: no key
        ("prefix_lm", 37, 37, H, lambda L, S: {"mask": attend.masks.prefix_lm(9)}),
        ("chunked", 37, 37, 2, lambda L, S: {"mask": attend.masks.chunked(6)}),
        ("alibi_causal", 37, 37, H, lambda L, S: {"score_mod": attend.mods.alibi(H), "causal": True}),
        ("softcap_cosine", 37, 41, H, lambda L, S: {"score_mod": attend.mods.softcap(2.0), "score": "cosine"}),
        ("relative_bias_learned", 37, 37, H, "relbias"),
        ("general_score_learned", 37, 37, H, "general"),
        ("dot_score", 37, 37, H, lambda L, S: {"score": "dot", "causal": True}),
        # a scale of 0 (uniform weights): the fused CPU kernel's causal diagonal block made NaN at scale <= 0
        ("causal_scale_zero", 37, 37, H, lambda L, S: {"causal": True, "scale": 0.0}),
        ("own_mask_mod", 37, 37, H, lambda L, S: {"mask": lambda b, h, i, j: (i + j) % 3 != 1}),
        # the blocks through attend's compiled CPU tiles (learned table and score weights included)
        ("relative_bias_inductor", 37, 37, H, "relbias+inductor"),
        ("general_inductor", 37, 37, 2, "general+inductor"),
    ]


def layouts(name: str, Hkv: int, method: str, world: int) -> tuple:
    """The layouts case ``name`` runs on with ``method`` (none: it does not run).

    - All-to-all needs the kv heads to divide among the ranks.
    - The compiled-tile cases (``*_inductor``) skip the ring in pieces: pieces of a few keys are
      tested with every other case, and with the tiles each piece's new shape compiles its
      programs again (with an empty compile cache these two cases took 157 s with the pieces,
      89 s without, measured 2026-11-30).
    - They run the ring on the contiguous layout only, and not the all-to-all. The contiguous
      ring has blocks at an offset from the diagonal, whole and masked, which is what the tiles
      see differently there; the zigzag layout has more block shapes to compile for the same.
      The all-to-all hands each rank one whole single-process call on its heads, which the
      backend's own tests cover; its exchange and the summed parameter gradients are tested by
      every other case. With an empty compile cache, the four runs (both layouts of the ring, the
      all-to-all) took 71 s of the launch, zigzag alone 62 s, contiguous alone 41 s (measured
      2026-11-30; both ranks compile at once).
    - The ring with Triton's kernels (under the interpreter on the CPU, the slowest cases here)
      runs bfloat16 on the zigzag layout only; float32 runs both.
    """
    if method == "ulysses" and Hkv % world:
        return ()
    if name.endswith("_inductor"):
        return ("contiguous",) if method == "ring" else ()
    if method == "ring_triton_bf16":
        return ("zigzag",)
    return ("contiguous", "zigzag")


def run_triton_case(name, L, S, Hkv, build, layout, dtype=torch.float32):
    """The ring with its blocks through attend's Triton kernels (float32; under the interpreter
    on the CPU): output and dq, dk, dv by the tolerance rule against float64, with single-process
    eager float32 as the baseline. Returns {what: 0.0 (within) or 1.0}, with the message."""
    from reference import check

    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    Bt = 1  # the interpreter's time grows with the kernels' grid; batches are tested in test_triton.py
    full = [torch.randn(Bt, H, L, E, generator=g, dtype=torch.float64), torch.randn(Bt, Hkv, S, E, generator=g,
            dtype=torch.float64), torch.randn(Bt, Hkv, S, E, generator=g, dtype=torch.float64)]
    dout = torch.randn(Bt, H, L, E, generator=g, dtype=torch.float64)
    kw = build(L, S)
    results = {}
    for dt in (torch.float64, dtype):
        ins = [t.to(dt).requires_grad_() for t in full]
        o = attend.attention(*ins, **dict(kw, backend="eager"))
        results[dt] = [o.detach()] + list(torch.autograd.grad(o, ins, dout.to(dt)))
    mine = [D.shard(t.to(dtype), layout=layout).detach().requires_grad_() for t in full]
    out = D.ring_attention(*mine, layout=layout, **dict(kw, backend="triton", piece=12))
    out.backward(D.shard(dout.to(dtype), layout=layout))
    errs = {"dtypes": 0.0 if out.dtype == dtype and all(t.grad.dtype == dtype for t in mine) else 1.0}
    for n, (what, got) in enumerate(zip(["out", "dq", "dk", "dv"], [out.detach()] + [t.grad for t in mine])):
        want, base = (D.shard(results[d][n], layout=layout) for d in (torch.float64, dtype))
        try:
            check(got, base, want, dtype=dtype, m=2 if what == "out" else 3, what=what)
            errs[what] = 0.0
        except AssertionError as e:
            errs[what] = 1.0
            errs[what + "_message"] = str(e)
    return errs


def run_case(name, L, S, Hkv, build, method, layout, rank, world):
    if method.startswith("ring_triton"):
        return run_triton_case(name, L, S, Hkv, build, layout, torch.bfloat16 if method.endswith("bf16") else
                               torch.float32)
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))  # the same on every rank
    q = torch.randn(B, H, L, E, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, S, E, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, S, E, generator=g, dtype=torch.float64)
    dout = torch.randn(B, H, L, E, generator=g, dtype=torch.float64)
    params = []
    engine = None
    if isinstance(build, str) and build.endswith("+inductor"):
        build, engine = build.split("+")
    if build == "relbias":
        table = torch.randn(H, 11, generator=g, dtype=torch.float64, requires_grad=True)
        kw = {"score_mod": attend.mods.relative_bias(table), "causal": True}
        params = [table]
    elif build == "general":
        score = attend.scores.General(E, E).double()
        with torch.no_grad():
            score.weight.copy_(torch.randn(score.weight.shape, generator=g, dtype=torch.float64))
        kw = {"score": score, "window": (4, 4)}
        params = list(score.parameters())
    else:
        kw = build(L, S)
    if engine is not None:
        kw = dict(kw, backend=engine)
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = attend.attention(*ref_in, **dict(kw, backend="eager"))
    ref_grads = torch.autograd.grad(ref, ref_in + params, dout)
    for p in params:
        p.grad = None
    mine = [D.shard(t, layout=layout).detach().requires_grad_() for t in (q, k, v)]
    if method.startswith("ring_p"):  # the ring in pieces of a few keys: many pieces and blocks per span
        kw = dict(kw, piece=int(method[len("ring_p"):]))
    fn = D.ring_attention if method.startswith("ring") else D.ulysses_attention
    out = fn(*mine, layout=layout, **kw)
    out.backward(D.shard(dout, layout=layout))
    D.all_reduce_grads(params)
    errs = {"out": (out - D.shard(ref, layout=layout)).abs().max().item()}
    for n, got, want in zip("qkv", mine, ref_grads[:3]):
        errs["d" + n] = (got.grad - D.shard(want, layout=layout)).abs().max().item()
    for i, (p, want) in enumerate(zip(params, ref_grads[3:])):
        errs[f"dparam{i}"] = (p.grad - want).abs().max().item()
    if name == "causal_cross_L_gt_S":  # rows with no key: exactly zero, on whichever rank holds them
        full = D.unshard(out.detach(), L, layout=layout)
        errs["dead_rows_exactly_zero"] = 0.0 if bool((full[:, :, : L - S] == 0).all()) else 1.0
    if name == "padding":
        errs["dead_rows_exactly_zero"] = 0.0 if bool((out[1] == 0).all()) else 1.0
    return errs


def extra_checks(rank, world):
    """Weights from the merged log-sum-exp; a forward without gradients; refusals."""
    out = {}
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, H, 23, E, generator=g, dtype=torch.float64) for _ in range(3))
    kw = {"causal": True, "score_mod": attend.mods.alibi(H)}
    _, ref_w = attend.attention(q, k, v, backend="eager", return_weights=True, **kw)
    for method in ("ring", "ulysses"):
        fn = D.ring_attention if method == "ring" else D.ulysses_attention
        with torch.no_grad():
            o, w = fn(*(D.shard(t, layout="zigzag") for t in (q, k, v)), layout="zigzag", return_weights=True, **kw)
        out[f"weights_{method}"] = (w - D.shard(ref_w, layout="zigzag")).abs().max().item()
    q30, k12 = torch.randn(1, H, 30, E, generator=g), torch.randn(1, H, 12, E, generator=g)
    messages = {}
    for label, call in [
        ("heads", lambda: D.ulysses_attention(torch.zeros(1, 3, 4, E), torch.zeros(1, 3, 4, E), torch.zeros(1, 3, 4, E))),
        ("kv_heads", lambda: D.ulysses_attention(torch.zeros(1, 4, 4, E), torch.zeros(1, 1, 4, E), torch.zeros(1, 1, 4, E))),
        ("dense", lambda: D.ring_attention(q, k, v, mask=torch.ones(23, 23, dtype=torch.bool))),
        ("layout", lambda: D.ring_attention(q, k, v, layout="spiral")),
        ("zigzag_lengths", lambda: D.ring_attention(q[:, :, : 4 + 3 * rank], k, v, layout="zigzag")),
        ("piece_differs", lambda: D.ring_attention(q, k, v, piece=3 + rank)),
        ("piece_zero", lambda: D.ring_attention(q, k, v, piece=0)),
        # rank 0's queries see no key (causal, L - S = 18): only rank 1 has blocks sdpa cannot run
        ("sdpa_one_rank", lambda: D.ring_attention(*(D.shard(t) for t in (q30, k12, k12)), causal=True,
                                                   backend="sdpa", piece=4)),
        # ranks that disagree: every rank raises the same error, naming what differs (no abort, no hang)
        ("batch_differs", lambda: D.ring_attention(*(t[:, :, :8].expand(1 + rank, -1, -1, -1) for t in (q, k, v)),
                                                   piece=4)),
        ("heads_differ", lambda: D.ulysses_attention(q[:, : 2 + 2 * rank, :8], k[:, :2, :8], v[:, :2, :8])),
        ("dtype_differs", lambda: D.ring_attention(*(t[:, :, :8].to(torch.float32 if rank else t.dtype)
                                                     for t in (q, k, v)), piece=4)),
        ("causal_differs", lambda: D.ring_attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], causal=rank == 0)),
        ("one_rank_refuses", lambda: D.ring_attention(q, k, v, layout="spiral" if rank else "contiguous")),
    ]:
        try:
            call()
            messages[label] = "no error"
        except Exception as e:  # noqa: BLE001 - the message is what is checked
            messages[label] = f"{type(e).__name__}: {e}"
    out["messages"] = messages
    out["bf16_table_ring"], out["bf16_table_single"] = _bf16_table_errors(world)
    ev = torch.randn(1, H, 23, 5, generator=g, dtype=torch.float64)  # values narrower than the keys
    for causal in (False, True):
        o = D.ring_attention(*(D.shard(t) for t in (q, k, ev)), causal=causal)
        out[f"value_width_5_causal_{causal}"] = (o - D.shard(attend.attention(q, k, ev, causal=causal))).abs().max().item()
    empty = D.ring_attention(*(t[:0] for t in (D.shard(q), D.shard(k), D.shard(v))))
    out["empty_batch_shape"] = list(empty.shape)
    out.update(_nonfinite_errors(rank, world))
    return out


def _nonfinite_errors(rank, world):
    """Non-finite inputs on one rank: each method's rows and gradients against attention in one
    process (the same rows NaN, the others equal, gradients equal and finite)."""
    g = torch.Generator().manual_seed(11)
    L = 12
    q, k, v = (torch.randn(2, 2, L, E, generator=g, dtype=torch.float64) for _ in range(3))
    cases = {  # name -> (which tensor, where, value, arguments)
        "masked_nan_value": ("v", (0, 0, 11, 1), float("nan"), dict(mask=attend.masks.padding(torch.tensor([9, 12])))),
        "causal_nan_value": ("v", (0, 1, 5, 0), float("nan"), dict(causal=True)),
        "causal_nan_query": ("q", (1, 0, 6, 2), float("nan"), dict(causal=True)),
        "inf_key_window": ("k", (1, 1, 3, 0), float("-inf"), dict(window=(2, 2))),
        "nan_query_dead_row": ("q", (0, 0, 1, 0), float("nan"), dict(causal=True, keys=6)),
    }
    out = {}
    for name, (which, at, value, kw) in cases.items():
        S = kw.pop("keys", L)
        t = {"q": q.clone(), "k": k[:, :, :S].clone(), "v": v[:, :, :S].clone()}
        t[which][at] = value
        ref_in = [t[n].clone().requires_grad_() for n in "qkv"]
        ref = attend.attention(*ref_in, backend="eager", **kw)
        ref_g = torch.autograd.grad(ref.nan_to_num(0.0).sum(), ref_in)
        for method in ("ring", "ulysses"):
            fn = D.ring_attention if method == "ring" else D.ulysses_attention
            for layout in ("contiguous", "zigzag") if S == L else ("contiguous",):
                mine = [D.shard(t[n], layout=layout).requires_grad_() for n in "qkv"]
                o = fn(*mine, layout=layout, **kw)
                grads = torch.autograd.grad(o.nan_to_num(0.0).sum(), mine)
                want = D.shard(ref, layout=layout)
                err = 0.0 if torch.equal(o.isnan(), want.isnan()) else float("inf")
                err = max(err, (o.nan_to_num(0.0) - want.nan_to_num(0.0)).abs().max().item())
                for got, full in zip(grads, ref_g):
                    part = D.shard(full, layout=layout)
                    err = max(err, float("inf") if not bool(got.isfinite().all()) else (got - part).abs().max().item())
                out[f"nonfinite/{method}/{layout}/{name}"] = err
    return out


def _bf16_table_errors(world):
    """A bfloat16 learned relative-bias table's gradient through the ring (blocks of 4 rows: many
    shares) and through single-process attention, each's largest difference from float64: the
    ring sums the shares in float32 as attention does (rounded per block, 3.3x further off)."""
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, H, 8 * world, E, generator=g) for _ in range(3))
    table0, dout = torch.randn(H, 7, generator=g), torch.randn(1, H, 8 * world, E, generator=g, dtype=torch.float64)

    def grad(run, dtype, shard=False):
        t = table0.to(dtype).requires_grad_()
        ins = [x.to(dtype) for x in (q, k, v)]
        if shard:
            ins = [D.shard(x) for x in ins]
        out = run(*ins, score_mod=attend.mods.relative_bias(t), causal=True)
        up = D.shard(dout) if shard else dout
        (got,) = torch.autograd.grad(out, t, up.to(out.dtype))
        return got

    want = grad(lambda *a, **kw: attend.attention(*a, backend="eager", **kw), torch.float64)
    single = grad(lambda *a, **kw: attend.attention(*a, backend="eager", **kw), torch.bfloat16)
    got = grad(lambda *a, **kw: D.ring_attention(*a, piece=4, **kw), torch.bfloat16, shard=True).float()
    dist.all_reduce(got)  # each rank holds its blocks' share
    return [(x.double() - want).abs().max().item() for x in (got, single)]


def inflight_checks(rank, world):
    """The largest number of bytes the ring holds in message buffers at once (receives, copies
    made to send, gradient shares), in units of one piece of k, forward+backward, for layouts
    and masks where a rank runs out of its own work early or reads few blocks per piece.
    Views of this rank's own k and v sent as they are cost nothing and are not counted."""
    import weakref

    live, peak = [0], [0]
    real_isend, real_irecv = dist.isend, dist.irecv
    own = set()

    def track(t):
        if t.untyped_storage().data_ptr() in own:
            return
        live[0] += t.nbytes
        peak[0] = max(peak[0], live[0])
        weakref.finalize(t, lambda n=t.nbytes: live.__setitem__(0, live[0] - n))

    def isend(t, *a, **k):
        track(t)
        return real_isend(t, *a, **k)

    def irecv(t, *a, **k):
        track(t)
        return real_irecv(t, *a, **k)

    S, piece, Bx, Hx = 512, 8, 2, 2
    ids = torch.tensor([0] * 200 + [1] * 312)  # a document across the ranks' boundary
    out = {}
    dist.isend, dist.irecv = isend, irecv
    try:
        for name, layout, kw in [("contiguous_causal", "contiguous", {"causal": True}),
                                 ("zigzag_causal", "zigzag", {"causal": True}),
                                 ("documents", "contiguous", {"causal": True, "mask": attend.masks.document(ids)})]:
            g = torch.Generator().manual_seed(3)
            q, k, v, do = (D.shard(torch.randn(Bx, Hx, S, E, generator=g), layout=layout) for _ in range(4))
            q, k, v = (t.requires_grad_() for t in (q, k, v))
            own.clear()
            own.update(t.untyped_storage().data_ptr() for t in (k, v))
            live[0] = peak[0] = 0
            D.ring_attention(q, k, v, layout=layout, piece=piece, **kw).backward(do)
            out[f"inflight_units_{name}"] = peak[0] / (Bx * Hx * piece * E * 4)
    finally:
        dist.isend, dist.irecv = real_isend, real_irecv
    return out


def model_checks(rank, world):
    """Transformer stacks with their sequence split over the ranks: outputs, every parameter's
    gradient (summed over ranks) and three SGD steps equal the single-process model's (SGD:
    Adam divides by the gradient's size, so where a gradient is 0 in exact arithmetic (the key
    projection's bias) it turns rounding noise of 1e-16 into steps of the learning rate)."""
    import copy

    from attend.distributed import SequenceParallel
    from attend.nn import Decoder, Encoder

    out = {}
    g = torch.Generator().manual_seed(11)
    B, L, Dm = 2, 29, 16
    x = torch.randn(B, L, Dm, generator=g, dtype=torch.float64)
    w = torch.randn(B, L, Dm, generator=g, dtype=torch.float64)
    key_mask = torch.ones(B, L, dtype=torch.bool)
    key_mask[1, 20:] = False
    torch.manual_seed(0)
    stacks = {
        "encoder_ring_sinusoidal": (Encoder(num_layers=2, d_model=Dm, num_heads=4, dropout=0.0).double(),
                                    SequenceParallel(method="ring"), {"key_mask": key_mask}),
        "decoder_ulysses_rope": (Decoder(num_layers=2, d_model=Dm, num_heads=4, cross_attention=False, dropout=0.0,
                                         positional="rope").double(), SequenceParallel(method="ulysses"), {}),
        "encoder_ring_contiguous_learned": (Encoder(num_layers=1, d_model=Dm, num_heads=2, dropout=0.0,
                                                    positional="learned", max_len=64).double(),
                                            SequenceParallel(method="ring", layout="contiguous"),
                                            {"key_mask": key_mask}),
    }
    for name, (single, sp, kw) in stacks.items():
        par = copy.deepcopy(single).set_sequence_parallel(sp)
        opt_s = torch.optim.SGD(single.parameters(), lr=0.1, momentum=0.9)
        opt_p = torch.optim.SGD(par.parameters(), lr=0.1, momentum=0.9)
        errs = {}
        for step in range(3):
            ref = single(x, **kw).hidden
            (ref * w).sum().backward()
            local = {k: sp.shard(v, dim=1) for k, v in kw.items()}
            got = par(sp.shard(x, dim=1), **local).hidden
            (got * sp.shard(w, dim=1)).sum().backward()
            D.all_reduce_grads(list(par.parameters()))
            if step == 0:
                errs["out"] = (got - sp.shard(ref.detach(), dim=1)).abs().max().item()
                errs["grads"] = max((a.grad - b.grad).abs().max().item()
                                    for a, b in zip(single.parameters(), par.parameters()))
            opt_s.step()
            opt_p.step()
            opt_s.zero_grad()
            opt_p.zero_grad()
        errs["params_after_3_steps"] = max((a - b).abs().max().item()
                                           for a, b in zip(single.parameters(), par.parameters()))
        out[name] = errs
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--die-at", default=None, help="exit abruptly (rank 1) when this case starts")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--methods", default="ring,ring_p5,ulysses", help="ring, ring_pN (pieces of N keys), ulysses")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--no-extra", action="store_true", help="skip the weights, refusals and model checks")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
                            world_size=args.world, timeout=datetime.timedelta(seconds=args.timeout))
    with open(args.out, "w") as f:
        for name, L, S, Hkv, build in cases():
            if args.cases and name not in args.cases.split(","):
                continue
            for method in args.methods.split(","):
                for layout in layouts(name, Hkv, method, args.world):
                    case = f"{method}/{layout}/{name}"
                    if args.die_at == name and args.rank == 1:
                        os._exit(3)
                    try:
                        errs = run_case(name, L, S, Hkv, build, method, layout, args.rank, args.world)
                        f.write(json.dumps({"case": case, "errors": errs}) + "\n")
                    except Exception:  # noqa: BLE001 - reported to the test
                        f.write(json.dumps({"case": case, "exception": traceback.format_exc()}) + "\n")
                        raise
                    f.flush()
        if not args.no_extra:
            f.write(json.dumps({"case": "extra", "errors": extra_checks(args.rank, args.world)}) + "\n")
            f.write(json.dumps({"case": "models", "errors": model_checks(args.rank, args.world)}) + "\n")
            f.write(json.dumps({"case": "inflight", "errors": inflight_checks(args.rank, args.world)}) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
