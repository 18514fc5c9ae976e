"""Every block shape the autotuner may pick, one at a time, against float64, in one call.

    python benchmarks/gpu_configs.py --workers 14     # on a CUDA GPU; writes $OUT/configs.json
    python benchmarks/gpu_configs.py --tiny           # anywhere: the plumbing, in Triton's interpreter

Why: the autotuner picks a block shape per kernel by timing, so a shape that computes wrong
would pass unseen until the day it is the fastest. The first GPU run found one such shape
((32, 64, 8, 2) for dK/dV at E = 128, dropped since; ``configs.py``); until this script no
other shape had been checked alone.

How: step ``i`` cuts every kernel's list (``configs.configs``: the bf16/fp16 lists, or the
fp32 ones) to its ``i``-th shape (a shorter list wraps round), so one step checks one shape
of each kernel. For each head-dim bucket (64, 128, 256), dtype (bfloat16, float32) and step,
the cases below run forward and backward through the launchers, dQ by its own kernel and
(16-bit) by atomics, and each result is compared with attend's ``eager`` in float64 by the
tests' tolerance rule (``tests/reference.py``; baseline: ``eager`` in the same dtype on the
GPU). The attention weights (``_weights``) and per-key totals (``_key_totals``) run through
``attend`` itself. A control step first runs the dropped shape on the case that exposed it:
the check must fail there, or it could not have caught it.

Steps run in ``--workers`` processes at once (compiling is the cost); each appends its rows
to ``$OUT/configs-<i>.jsonl`` as it goes, and the parent gathers them into ``configs.json``
and prints every failure with the shapes of its step.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, d) for d in ("benchmarks", "src", "tests")]  # a checkout, no install

import torch  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
OUT = os.environ.get("OUT", ".")
KERNELS = ("_fwd", "_bwd_dq", "_bwd_dkdv", "_weights", "_key_totals")
CONTROL = (128, "bfloat16", (32, 64, 8, 2))  # the dK/dV shape the first GPU run caught (see configs.py)


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--tiny", action="store_true", help="toy sizes; on a CPU, Triton's interpreter")
    ap.add_argument("--workers", type=int, default=1, help="processes at once (each compiles its steps)")
    ap.add_argument("--buckets", default="64,128,256")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--gather", action="store_true",
                    help="only gather the workers' rows already in $OUT (after a run cut off by a time limit)")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)  # "i/N"
    return ap.parse_args(argv)


def items(args) -> list[tuple]:
    """(bucket, dtype, step) for every step of every list, the control first."""
    from attend.backends.triton import configs

    out = [("control",)]
    for dtype in args.dtypes.split(","):
        for b in (int(x) for x in args.buckets.split(",")):
            n = max(len(configs.configs(k, b, dtype == "float32")) for k in KERNELS)
            out += [(b, dtype, i) for i in range(1 if args.tiny else n)]
    # and each bucket with its whole lists, as a user gets it: a shape that fails to build
    # (ptxas, shared memory) must be passed over by the autotuner, not fail the call
    out += [(b, "bfloat16", "autotuned") for b in (int(x) for x in args.buckets.split(","))]
    return out


def force(step, dkdv: "tuple | None" = None) -> None:
    """Every kernel's list cut to its ``step``-th shape (``dkdv``: that dK/dV shape instead);
    ``step="autotuned"``: the whole lists."""
    from attend.backends.triton import configs, launch

    if not hasattr(configs, "_all_configs"):
        configs._all_configs = configs.configs
    full = configs._all_configs
    if step == "autotuned":
        configs.configs = full
        configs.kernel.cache_clear()
        launch.DQ_CHOICE.clear()
        return

    def one(name, bucket, fp32):
        listed = full(name, bucket, fp32)
        if dkdv is not None and name == "_bwd_dkdv":
            return [dkdv]
        return [listed[step % len(listed)]]
    configs.configs = one
    configs.kernel.cache_clear()
    launch.DQ_CHOICE.clear()


def cases(E: int, tiny: bool) -> dict:
    """name -> (attend keywords, (B, Hq, Hkv, L, S, E, Ev)): masks with partial blocks, grouped
    heads with L != S, padded head dims, a score_mod; lengths not a multiple of any block."""
    import attend

    m = attend.masks
    B, H, L = (2, 2, 40) if tiny else (2, 4, 1000)
    e_odd = max(8, E - 16) if not tiny else E  # pads up to the bucket
    return {
        "chunked 64, causal": ({"mask": m.chunked(16 if tiny else 64), "causal": True}, (B, H, H, L, L, E, E)),
        "GQA 4:1, causal, L < S": ({"causal": True}, (B, H, max(1, H // 4), L * 2 // 3, L, E, E)),
        f"E = {e_odd}, Ev = {E // 2 + 8}, window, L > S": ({"window": (100, 0), "causal": True},
                                                         (B, H, H, L, L * 2 // 3, e_odd, E // 2 + 8)),
        "softcap 5, document": ({"score_mod": attend.mods.softcap(5.0),
                                 "mask": m.document(torch.arange(L) * 3 // L)}, (B, H, H, L, L, E, E)),
    }


def run_item(item, tiny: bool, sink) -> None:
    import attend
    import gpu  # benchmarks/gpu.py: float64_run and the tolerance-rule row (set up by worker())

    from attend.backends.triton import configs, launch, plan as tplan
    from attend.functional import _prepare

    if item == ("control",):
        bucket, dtype_name, step = CONTROL[0], CONTROL[1], 0
        force(0, dkdv=CONTROL[2])
        only = {"chunked 64, causal"}
    else:
        bucket, dtype_name, step = item
        force(step)
        only = None
    dtype = getattr(torch, dtype_name)
    fp32 = dtype == torch.float32
    shapes = ({k: "all" for k in KERNELS} if step == "autotuned" else
              {k: str(configs.configs(k, bucket, fp32)[0]) for k in KERNELS})
    base = attend.backends.Eager(upcast=False)
    gen = torch.Generator(device=DEV).manual_seed(bucket * 100 + (step if isinstance(step, int) else 99))
    for name, (kw, (b, hq, hkv, l_, s_, e, ev)) in cases(bucket, tiny).items():
        if only is not None and name not in only:
            continue
        q = torch.randn(b, hq, l_, e, device=DEV, dtype=dtype, generator=gen)
        k = torch.randn(b, hkv, s_, e, device=DEV, dtype=dtype, generator=gen)
        v = torch.randn(b, hkv, s_, ev, device=DEV, dtype=dtype, generator=gen)
        call, _ = _prepare(q, k, v, **kw)
        p = tplan.plan(call)
        p.scale = call.scale
        t0 = time.monotonic()
        try:
            out, lse = launch.flash_forward(q, k, v, p)
            dout = torch.randn(out.shape, device=DEV, dtype=dtype, generator=gen)
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            bo = attend.attention(*leaves, backend=base, **kw)
            bgrads = torch.autograd.grad(bo, leaves, dout)
            ref, _, ref_grads = gpu.float64_run(kw, (q, k, v), dout)
            modes = ("separate",) if fp32 or not CUDA else ("separate", "atomic")
            for mode in modes:
                grads = launch.flash_backward(dout, q, k, v, out, lse, p, dq_mode=mode)[:3]
                keys = ("out", "dq", "dk", "dv")
                row = gpu._row(name, dtype, dict(zip(keys, (out, *grads))), dict(zip(keys, (ref, *ref_grads))),
                               dict(zip(keys, (bo, *bgrads))))
                row.update(bucket=bucket, step=step, dq_mode=mode, control=item == ("control",), shapes=shapes,
                           seconds=round(time.monotonic() - t0, 1))
                row["ok"] = row["rule"] <= 1.0
                sink(row)
        except Exception as e:  # noqa: BLE001 - a shape that fails to compile or launch is a finding too
            sink({"case": name, "dtype": dtype_name, "bucket": bucket, "step": step, "shapes": shapes,
                  "control": item == ("control",), "ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"})
    if only is None:
        weights_case(bucket, dtype, step, shapes, base, sink, tiny)


def weights_case(bucket, dtype, step, shapes, base, sink, tiny) -> None:
    """``_weights`` and ``_key_totals`` through attend (their lists are the forward's and dK/dV's)."""
    import attend
    import gpu

    B, H, L = (1, 2, 40) if tiny else (2, 4, 600)
    gen = torch.Generator(device=DEV).manual_seed(7 + (step if isinstance(step, int) else 99))
    q, k, v = (torch.randn(B, H, L, bucket, device=DEV, dtype=dtype, generator=gen) for _ in range(3))
    kw = {"causal": True, "score_mod": attend.mods.alibi(H)}
    try:
        out, w = attend.attention(q, k, v, backend=gpu.TRITON, return_weights=True, **kw)
        tot = attend.key_totals(q, k, backend=gpu.TRITON, **kw)
        bo, bw = attend.attention(q, k, v, backend=base, return_weights=True, **kw)
        ref, rw, _ = gpu.float64_run({**kw, "return_weights": True}, (q, k, v), torch.zeros_like(out), weights=True)
        results, refs, bases = {"out": out, "weights": w}, {"out": ref, "weights": rw}, {"out": bo, "weights": bw}
        results["totals"], refs["totals"] = tot, rw.sum(dim=-2)
        bases["totals"] = attend.key_totals(q, k, backend=base, **kw)
        row = gpu._row("weights and key totals, alibi, causal", dtype, results, refs, bases)
        row.update(bucket=bucket, step=step, control=False, shapes=shapes, ok=row["rule"] <= 1.0)
    except Exception as e:  # noqa: BLE001
        row = {"case": "weights and key totals", "dtype": str(dtype), "bucket": bucket, "step": step,
               "shapes": shapes, "control": False, "ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    sink(row)


def worker(args) -> None:
    i, n = (int(x) for x in args.worker.split("/"))
    if not CUDA:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import gpu  # benchmarks/gpu.py

    gpu.setup(["--tiny"] if args.tiny else [])  # (TRITON_INTERPRET first, on a CPU)
    path = os.path.join(OUT, f"configs-{i}.jsonl")

    def sink(row):
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(("ok     " if row["ok"] else "FAILED ") + json.dumps(row), flush=True)
    for j, item in enumerate(items(args)):
        if j % n == i:
            run_item(item, args.tiny, sink)


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker:
        worker(args)
        return 0
    t0 = time.monotonic()
    os.makedirs(OUT, exist_ok=True)
    if args.gather:
        return gather(args, t0, [])
    for f in os.listdir(OUT):
        if f.startswith("configs-") and f.endswith(".jsonl"):
            os.unlink(os.path.join(OUT, f))
    given = list(argv if argv is not None else sys.argv[1:])
    rest = [a for a, prev in zip(given, [""] + given) if a != "--workers" and prev != "--workers"
            and not a.startswith("--workers=")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *rest, "--worker", f"{i}/{args.workers}"],
                              env=env) for i in range(args.workers)]
    return gather(args, t0, [p.wait() for p in procs])


def gather(args, t0: float, codes: list) -> int:
    """``configs.json`` from the workers' rows in $OUT, and a summary: every failure printed."""
    rows = []
    for name in sorted(os.listdir(OUT)):
        if name.startswith("configs-") and name.endswith(".jsonl"):
            with open(os.path.join(OUT, name)) as f:
                rows += [json.loads(line) for line in f if line.strip()]
    env_info = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if CUDA else "cpu (interpreter)",
                "seconds": round(time.monotonic() - t0), "worker exits": codes}
    try:
        import triton
        env_info["triton"] = triton.__version__
    except ImportError:
        pass
    kept = os.path.join(OUT, "configs.json")
    if args.gather and os.path.exists(kept):  # gathered again elsewhere: the run's own machine and versions
        with open(kept) as f:
            env_info = json.load(f).get("environment", env_info)
    with open(os.path.join(OUT, "configs.json"), "w") as f:
        json.dump({"environment": env_info, "rows": rows}, f, indent=1)
    planned = items(args)
    done = {("control",) if r.get("control") else (r["bucket"], str(r["dtype"]).replace("torch.", ""), r["step"])
            for r in rows}
    missing = [it for it in planned if it not in done]
    env_info["steps"] = f"{len(planned) - len(missing)} of {len(planned)} steps ran"
    env_info["steps not run"] = [list(it) for it in missing]
    with open(os.path.join(OUT, "configs.json"), "w") as f:
        json.dump({"environment": env_info, "rows": rows}, f, indent=1)
    print(env_info["steps"] + (f"; not run: {missing}" if missing else ""))
    control = [r for r in rows if r.get("control")]
    checked = [r for r in rows if not r.get("control")]
    bad = [r for r in checked if not r["ok"]]
    print(f"{len(checked)} checks, {len(bad)} failed; control (must fail): "
          f"{['FAILED as it must' if not r['ok'] else 'passed: the check missed it' for r in control]}; "
          f"{env_info['seconds']} s")
    for r in bad:
        print("FAILED", json.dumps(r))
    with open(os.path.join(OUT, "configs.md"), "w") as f:
        f.write(report(env_info, rows))
    return 0


def report(env: dict, rows: list) -> str:
    """The results as Markdown: what failed, then one line per step."""
    def shape(r, k):
        return r["shapes"].get(k, "").replace("'", "")
    lines = [f"- Device: {env.get('device')}, torch {env.get('torch')}, triton {env.get('triton', '?')}",
             f"- {env.get('steps')}; {len([r for r in rows if not r.get('control')])} checks",
             "", "## Failed", "",
             "| case | dtype | E bucket | step | dQ | fwd | dQ kernel | dK/dV | rule ratio | error |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["ok"]:
            what = "control (must fail)" if r.get("control") else r["case"]
            rule = f"{r['rule']:.2f}" if r.get("rule") is not None else ""
            err = (r.get("error") or "").splitlines()[0][:90] if r.get("error") else ""
            lines.append(f"| {what} | {r['dtype']} | {r['bucket']} | {r['step']} | {r.get('dq_mode') or ''} | "
                         f"{shape(r, '_fwd')} | {shape(r, '_bwd_dq')} | {shape(r, '_bwd_dkdv')} | {rule} | {err} |")
    lines += ["", "## Every step", "",
              "| dtype | E bucket | step | fwd | dQ kernel | dK/dV | weights | key totals | checks passed | "
              "worst rule ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    steps: dict = {}
    for r in rows:
        if not r.get("control"):
            steps.setdefault((str(r["dtype"]).replace("torch.", ""), r["bucket"], str(r["step"])), []).append(r)
    for (dt, b, st), rs in sorted(steps.items(), key=lambda x: (x[0][0], x[0][1], x[0][2].zfill(3))):
        ok = sum(r["ok"] for r in rs)
        worst = max((r["rule"] for r in rs if r.get("rule") is not None), default=float("nan"))
        r0 = rs[0]
        lines.append(f"| {dt} | {b} | {st} | {shape(r0, '_fwd')} | {shape(r0, '_bwd_dq')} | {shape(r0, '_bwd_dkdv')} | "
                     f"{shape(r0, '_weights')} | {shape(r0, '_key_totals')} | {ok} / {len(rs)} | {worst:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
