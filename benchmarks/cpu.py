"""attend on the CPU against torch SDPA, FlexAttention (compiled) and a naive path, every variant.

    python benchmarks/cpu.py [--quick] [--threads N] [--shapes 1x8x2048x64,...] [--variants plain,causal,...]
                             [--max-seconds-per-cell 3] [--skip-seconds 60] [--out benchmarks/results/cpu.md]

One run times, for each shape (B, H, L=S, E) and variant, forward (no graph) and forward+backward
(``out.sum().backward()``): attend ``backend="auto"`` and each attend backend that can run the call
(``eager``, ``sdpa``, ``chunked``; ``triton`` is GPU-only), torch SDPA with the same mask given densely
where it can, FlexAttention under ``torch.compile`` (forward only: it refuses backward on the CPU; its
first call, compile included, in its own column) and a naive matmul-softmax-matmul. Median of 3 after
1 warm-up (2 where the first compiled; a cell slower than ``--max-seconds-per-cell`` is its one warm
call, marked ~); ratios are to SDPA plain at the same shape and pass (SDPA causal for the causal variants).
Each attend, SDPA and Flex row is checked once against the naive path computed in float64 (max abs
difference of the output; of dq, dk, dv for forward+backward). A section at L = S = 16384, one head,
measures peak process memory of one forward+backward in a fresh subprocess per cell.
Results are rewritten after every row, so a run that is cut off keeps what it measured.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
import types

import torch
import torch.nn.functional as F

import attend

from _machine import header, results_path, write_results

VARIANTS = ["plain", "causal", "cosine", "general", "padding", "alibi_causal", "softcap", "relative_bias",
            "window256", "document4", "prefix_lm", "chunked256", "additive"]
CAUSAL_BASE = {"causal", "alibi_causal", "prefix_lm"}  # ratio base: SDPA causal
DESCRIBE = {
    "plain": "scaled dot product, no mask",
    "causal": "`causal=True`",
    "cosine": '`score="cosine"` (temperature 1, scale 1)',
    "general": "`scores.General(E, E)` (bilinear q W k, scale 1)",
    "padding": "`masks.padding(lengths)`, keys at positions >= 3L/4 padded in every batch row",
    "alibi_causal": "`mods.alibi(H)` as `score_mod` + `causal=True`",
    "softcap": "`mods.softcap(20.0)` as `score_mod`",
    "relative_bias": "`mods.relative_bias(table)`, learned table (H, 2*128+1) as `score_mod`",
    "window256": "`window=256`, i.e. (256, 256): 256 keys either side (513 keys)",
    "document4": "`masks.document(ids)`, 4 equal documents (not causal)",
    "prefix_lm": "`masks.prefix_lm(L // 4)` (bidirectional over the first L/4 keys, causal after)",
    "chunked256": "`masks.chunked(256)` (block-diagonal chunks of 256, not causal)",
    "additive": "`scores.Additive(E, E, 64)` (Bahdanau, hidden 64)",
}
ATTEND_BACKENDS = ["eager", "sdpa", "chunked", "inductor", "flex"]  # triton needs a GPU
HIDDEN = 64
NAIVE_LIMIT = 4 << 30  # bytes of an (B, H, L, S, hidden) additive intermediate the naive/eager paths may build


# ----------------------------------------------------------------------------------------------
# variants: attend's arguments, the naive path's dense form, SDPA's dense form, Flex's form

class Variant:
    def __init__(self, name, B, H, L, E):
        self.name, self.B, self.H, self.L, self.E = name, B, H, L, E
        S = L
        torch.manual_seed(1)
        self.kw = {}
        self.module = None  # score module whose parameters get gradients
        self.table = None
        self.mask_rule = None  # attend mask rule (also Flex's mask_mod)
        self.mod_rule = None  # attend score_mod rule (also Flex's score_mod)
        self.causal = False
        self.sdpa_mask = None  # dense mask for SDPA (bool: True = allowed; float: additive bias)
        self.sdpa_reason = None
        self.flex_reason = None
        i = torch.arange(L)[:, None]
        j = torch.arange(S)[None, :]
        dense = None  # (B or 1, H or 1, L, S) bool, True = allowed
        bias = None  # function h-> (H, L, S) additive term on the scaled score
        if name == "causal":
            self.kw["causal"] = True
            self.causal = True
            dense = (j <= i)[None, None]
        elif name == "cosine":
            self.kw["score"] = "cosine"
        elif name == "general":
            self.module = attend.scores.General(E, E)
            self.kw["score"] = self.module
        elif name == "padding":
            lengths = torch.full((B,), L * 3 // 4)
            self.mask_rule = attend.masks.padding(lengths)
            dense = (j[None] < lengths[:, None, None])[:, None]  # (B, 1, 1->L, S)
            dense = dense.expand(B, 1, L, S)
            self.sdpa_mask = (torch.arange(S)[None] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, S)
        elif name == "alibi_causal":
            slopes = attend.mods.alibi_slopes(H)
            self.mod_rule = attend.mods.alibi(slopes)
            self.kw["causal"] = True
            self.causal = True
            dense = (j <= i)[None, None]
            bias = lambda: -slopes[:, None, None] * (i - j).abs()[None].float()
        elif name == "softcap":
            self.mod_rule = attend.mods.softcap(20.0)
            self.sdpa_reason = "n/a: SDPA cannot take a score modifier (tanh of the scores)"
        elif name == "relative_bias":
            R = 128
            self.table = (0.5 * torch.randn(H, 2 * R + 1)).requires_grad_(True)
            self.mod_rule = attend.mods.relative_bias(self.table)
            idx = ((j - i).clamp(-R, R) + R)
            bias = lambda: self.table[:, idx]  # (H, L, S), gathered inside the call so dtable is computed
        elif name == "window256":
            self.kw["window"] = 256
            self.mask_rule = attend.masks.Window(256, 256)
            dense = ((j - i).abs() <= 256)[None, None]
        elif name == "document4":
            ids = torch.arange(L) * 4 // L
            self.mask_rule = attend.masks.document(ids)
            dense = (ids[:, None] == ids[None, :])[None, None]
        elif name == "prefix_lm":
            self.mask_rule = attend.masks.prefix_lm(L // 4)
            dense = ((j <= i) | (j < L // 4))[None, None]
        elif name == "chunked256":
            self.mask_rule = attend.masks.chunked(256)
            dense = ((i // 256) == (j // 256))[None, None]
        elif name == "additive":
            self.module = attend.scores.Additive(E, E, HIDDEN)
            self.kw["score"] = self.module
            self.sdpa_reason = "n/a: SDPA takes dot products only (additive is not dot-like)"
            self.flex_reason = "n/a: Flex takes dot products only (additive is not dot-like)"
        elif name != "plain":
            raise ValueError(f"unknown variant {name!r}")
        if self.mask_rule is not None:
            self.kw["mask"] = self.mask_rule
        if self.mod_rule is not None:
            self.kw["score_mod"] = self.mod_rule
        self.dense = dense
        self.bias = bias
        if self.sdpa_mask is None and dense is not None and name != "causal":
            self.sdpa_mask = dense if bias is None else None
        # Flex's block mask (built once, outside the timed calls, as a model reuses it across layers)
        self.block_mask = None
        self.flex_score_mod = attend.masks.bind(self.mod_rule, L, S) if self.mod_rule is not None else None
        flex_mask = self.mask_rule
        if self.causal:
            flex_mask = attend.masks.causal() if flex_mask is None else attend.masks.and_masks(flex_mask, attend.masks.causal())
        self.flex_mask = attend.masks.bind(flex_mask, L, S) if flex_mask is not None else None

    # sizes
    def additive_bytes(self, itemsize=4):
        return self.B * self.H * self.L * self.L * HIDDEN * itemsize if self.name == "additive" else 0

    # --- the naive path: matmul, (modifier, mask), softmax, matmul, all dense
    def naive(self, q, k, v):
        E = q.shape[-1]
        if self.name == "cosine":
            s = F.normalize(q, dim=-1, eps=1e-8) @ F.normalize(k, dim=-1, eps=1e-8).transpose(-1, -2)
        elif self.name == "general":
            s = (q @ self.module.weight.to(q.dtype)) @ k.transpose(-1, -2)
        elif self.name == "additive":
            m = self.module
            wq = q @ m.query_proj.weight.to(q.dtype).t()
            wk = k @ m.key_proj.weight.to(q.dtype).t() + m.key_proj.bias.to(q.dtype)
            s = (torch.tanh(wq[..., :, None, :] + wk[..., None, :, :]) @ m.v.weight.to(q.dtype).t()).squeeze(-1)
        else:
            s = (q @ k.transpose(-1, -2)) / math.sqrt(E)
        L = q.shape[-2]
        if self.name == "softcap":
            s = 20.0 * torch.tanh(s / 20.0)
        if self.bias is not None:
            s = s + self.bias()[..., :L, :].to(s.dtype)
        if self.dense is not None:
            s = s.masked_fill(~self.dense[..., :L, :], float("-inf"))
        return torch.softmax(s, dim=-1) @ v

    # --- torch SDPA with the same mask given densely
    def sdpa(self, q, k, v):
        if self.name == "causal":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if self.name == "cosine":
            return F.scaled_dot_product_attention(F.normalize(q, dim=-1, eps=1e-8), F.normalize(k, dim=-1, eps=1e-8),
                                                  v, scale=1.0)
        if self.name == "general":
            return F.scaled_dot_product_attention(q @ self.module.weight, k, v, scale=1.0)
        if self.name == "alibi_causal":  # a fixed bias: built once, before the timed calls
            if getattr(self, "alibi_mask", None) is None:
                self.alibi_mask = self.bias().masked_fill(~self.dense[0], float("-inf"))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.alibi_mask)
        if self.bias is not None:  # relative bias: gathered from the learned table in the call
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias())
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.sdpa_mask)

    def sdpa_note(self):
        if self.name in ("plain", "causal"):
            return "is_causal=True" if self.name == "causal" else ""
        if self.name == "cosine":
            return "normalised q, k, scale 1 (in the call)"
        if self.name == "general":
            return "q W in the call, scale 1"
        if self.name == "alibi_causal":
            return "ALiBi bias + causal as a dense float (H, L, S) mask, built before the call"
        if self.name == "relative_bias":
            return "bias gathered from the table in the call (dense (H, L, S) float mask)"
        if self.name == "padding":
            return "dense bool (B, 1, 1, S) key mask"
        return "dense bool (L, S) mask, built before the call"

    # --- FlexAttention
    def flex(self, fa, q, k, v):
        scale = None
        if self.name == "cosine":
            q, k, scale = F.normalize(q, dim=-1, eps=1e-8), F.normalize(k, dim=-1, eps=1e-8), 1.0
        elif self.name == "general":
            q, scale = q @ self.module.weight, 1.0
        return fa(q, k, v, score_mod=self.flex_score_mod, block_mask=self.block_mask, scale=scale)


# ----------------------------------------------------------------------------------------------
# measuring

def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _reset_peak():
    """Reset the high-water mark (VmHWM) to the current RSS; returns the RSS (KiB), or None."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS")
    except OSError:
        return None


def _inputs(B, H, L, E, grad, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, L, E, generator=g, dtype=dtype).requires_grad_(grad) for _ in range(3)]


def measure(fn, grad, leaves, *, reps, budget, side=None):
    """Warm-up (timed, peak memory measured) then ``reps`` timed calls. Returns a dict.

    ``side``: ``(fn, leaves)`` of the ratio's reference (SDPA plain or causal at this shape),
    timed once before each of the ``reps`` calls: the ratio then compares calls made side by side,
    and a machine that slows down or speeds up during the run (other tenants, clocks) moves both."""
    def run(f, ls):
        for t in ls:
            t.grad = None
        with torch.set_grad_enabled(grad):
            out = f()
        if grad:
            out.sum().backward()
        return out

    def once():
        return run(fn, leaves)

    base = _reset_peak()
    t0 = time.perf_counter()
    out = once()
    first = time.perf_counter() - t0
    peak = None if base is None else max(0, _status_kib("VmHWM") - base) / 1024
    warm = first
    if first > budget and compiled_since(t0):  # the first call compiled (inductor): warm up once more
        t1 = time.perf_counter()
        out = once()
        warm = time.perf_counter() - t1
    if warm > budget:  # one call reported: the warm one where the first compiled (that one stays in first_ms)
        return {"ms": warm * 1e3, "runs": 1, "first_ms": first * 1e3, "warm_ms": warm * 1e3, "peak_mib": peak,
                "out": out.detach()}
    ts, bs = [], []
    for _ in range(reps):
        if side is not None:
            t0 = time.perf_counter()
            run(*side)
            bs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = once()
        ts.append(time.perf_counter() - t0)
    return {"ms": statistics.median(ts) * 1e3, "runs": reps, "first_ms": first * 1e3, "warm_ms": warm * 1e3, "peak_mib": peak,
            "out": out.detach(), "base_ms": statistics.median(bs) * 1e3 if bs else None}


def compiled_since(t0):
    """Whether torch.compile (attend's inductor backend, or Flex) compiled a graph since the last
    ask: dynamo counts every graph it compiles, recompiles for new shapes included."""
    from torch._dynamo.utils import counters
    n = counters["stats"]["unique_graphs"]
    new, _COMPILED_SEEN[0] = n > _COMPILED_SEEN[0], n
    return new


_COMPILED_SEEN = [0]


def maxdiff(a, b):
    return float((a.double() - b.double()).abs().max())


# ----------------------------------------------------------------------------------------------
# the memory section: one forward+backward in a fresh subprocess

def _live_bytes(spec, variant=None):
    n = spec["B"] * spec["H"] * spec["L"] * spec["E"] * 4
    live = 7 * n  # q, k, v, out, dq, dk, dv
    if variant == "additive":  # W_q q and W_k k, saved for the backward, and their gradients
        live += 4 * spec["B"] * spec["H"] * spec["L"] * HIDDEN * 4
    return live


def _memory_child(spec):
    torch.set_num_threads(spec["threads"])
    B, H, L, E = spec["B"], spec["H"], spec["L"], spec["E"]
    var = Variant(spec["variant"], B, H, L, E)
    q, k, v = _inputs(B, H, L, E, True)
    method = spec["method"]
    if method == "naive":
        fn = lambda a, b, c: var.naive(a, b, c)
    elif method == "SDPA":
        fn = lambda a, b, c: var.sdpa(a, b, c)
    else:
        fn = lambda a, b, c: attend.attention(a, b, c, backend=method, **var.kw)
    # a smaller call first: one-time set-up (thread pools, first allocations, compiling inductor's
    # tile programs for this shape of tile) is not the call's memory
    # (inductor, and auto, which may pick it: the call itself, once, so the measured call does not
    # compile: a new sequence length compiles the tile programs again, and the compiler's own
    # memory (~200 MiB) showed in the peak)
    for n in ((L,) if method in ("inductor", "auto") else (256,)):
        tv = Variant(spec["variant"], 1, H, n, E)
        tq = [t[:1, :, :n].detach().requires_grad_(True) for t in (q, k, v)]
        if method == "naive":
            tv.naive(*tq).sum().backward()
        elif method == "SDPA":
            tv.sdpa(*tq).sum().backward()
        else:
            attend.attention(*tq, backend=method, **tv.kw).sum().backward()
    base = _reset_peak()
    rss0 = _status_kib("VmRSS")
    t0 = time.perf_counter()
    out = fn(q, k, v)
    out.sum().backward()
    sec = time.perf_counter() - t0
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - base) / 1024, "rss0_mib": rss0 / 1024, "s": sec}))


MMAP_THRESHOLD = 0  # --malloc-mmap-threshold: glibc's MALLOC_MMAP_THRESHOLD_ for the memory subprocesses (0: default)


def memory_cell(spec, timeout):
    env = dict(os.environ)
    if MMAP_THRESHOLD:  # every allocation above it is its own mapping, returned to the system when freed
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    try:
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                           capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"skip": f"n/a: over the budget of {timeout:.0f} s (killed)"}
    if r.returncode != 0:
        err = (r.stderr.strip().splitlines() or ["?"])[-1][:160]
        return {"skip": f"n/a: failed ({err})"}
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------

def fmt_ms(cell):
    if "skip" in cell:
        return cell["skip"]
    s = f"{cell['ms']:.1f}"
    return s if cell["runs"] > 1 else f"~{s} (1 run: over the per-cell budget)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small shape, a few variants, no 16384 memory section")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch.set_num_threads (default: the CPUs this process may use)")
    ap.add_argument("--shapes", default=None, help="comma-separated BxHxLxE (default 1x8x2048x64,4x8x512x64,1x8x4096x64)")
    ap.add_argument("--variants", default=None, help="comma-separated, from: " + ",".join(VARIANTS))
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions after one warm-up (median)")
    ap.add_argument("--max-seconds-per-cell", type=float, default=3.0,
                    help="a cell whose first (warm-up) call takes longer is reported from that one call")
    ap.add_argument("--skip-seconds", type=float, default=60.0,
                    help="forward+backward is skipped when its forward's warm call took over a third of this")
    ap.add_argument("--memory-L", type=int, default=16384, help="L = S of the memory section (0: none)")
    ap.add_argument("--memory-timeout", type=float, default=60.0, help="seconds per memory subprocess")
    ap.add_argument("--memory-first", action="store_true", help="run the memory section before the time tables")
    ap.add_argument("--memory-only", action="store_true", help="only the memory section (no time tables)")
    ap.add_argument("--malloc-mmap-threshold", type=int, default=0,
                    help="run the memory subprocesses with glibc's MALLOC_MMAP_THRESHOLD_ set to this many bytes "
                         "(freed tensors then leave the resident set, so the peak is what was allocated at once, "
                         "not what the allocator kept); default 0: glibc's own (dynamic) threshold")
    ap.add_argument("--out", default=os.path.join("benchmarks", "results", "cpu.md"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _memory_child(json.loads(args.child))
        return
    torch.set_num_threads(args.threads)
    global MMAP_THRESHOLD
    MMAP_THRESHOLD = args.malloc_mmap_threshold

    if args.quick:
        shapes = [(1, 4, 256, 64)]
        variants = ["plain", "causal", "softcap", "document4", "additive"]
        mem_L = 0
    else:
        shapes = [(1, 8, 2048, 64), (4, 8, 512, 64), (1, 8, 4096, 64)]
        variants = VARIANTS
        mem_L = args.memory_L
    if args.shapes:
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    if args.variants:
        variants = args.variants.split(",")
        bad = [v for v in variants if v not in VARIANTS]
        if bad:
            ap.error(f"unknown variants {bad}; known: {VARIANTS}")
    out_path = results_path(args.out)
    head = header()
    t_start = time.time()
    fa = fresh_flex("probe")
    flex_bwd_reason = None

    rows = []  # time table rows (dicts)
    mem_rows = []
    base = {}  # (shape, pass, "plain"/"causal") -> ms of SDPA

    def render(done=False):
        lines = intro(args, shapes, variants, mem_L)
        lines += summary(rows, shapes, variants)
        lines += ["", "## All rows", "",
                  "ratio = time / SDPA plain at the same shape and pass (SDPA causal for causal, ALiBi + causal and "
                  "prefix-LM). peak MiB: growth of the process's peak RSS above its RSS during the warm-up call "
                  "(high-water mark reset via /proc/self/clear_refs; in the timing process, so memory malloc kept "
                  "from earlier cells is not counted again: indicative only; see the memory section). max abs diff: "
                  "against the naive path in float64, output for fwd, max over dq, dk, dv for fwd+bwd.", "",
                  "| B×H×L×E | variant | pass | method | median ms | ratio | peak MiB | max abs diff | "
                  "first call s (Flex: compile) | note |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['shape']} | {r['variant']} | {r['pass']} | {r['method']} | {r['time']} | "
                         f"{r['ratio']} | {r['peak']} | {r['diff']} | {r['first']} | {r['note']} |")
        if mem_L:
            lines += memory_intro(mem_L)
            for r in mem_rows:
                lines.append(f"| {r['variant']} | {r['method']} | {r['peak']} | {r['live']} | {r['ratio']} | "
                             f"{r['s']} | {r['note']} |")
        el = time.time() - t_start
        lines += ["", (f"Run finished in {el / 60:.1f} min." if done else
                       f"(Run in progress or cut off: {el / 60:.1f} min so far; rows above are complete.)")]
        with contextlib.redirect_stdout(io.StringIO()):
            write_results(out_path, "attend on the CPU: every variant against SDPA, FlexAttention and a naive path",
                          lines, head=head, data={"threads": args.threads, "rows": rows, "memory": mem_rows,
                                                  "elapsed_s": el, "finished": done})

    def add_row(r):
        rows.append(r)
        print(" | ".join(str(r[c]) for c in ("shape", "variant", "pass", "method", "time", "ratio", "peak", "diff",
                                              "first", "note")), flush=True)
        render()

    def run_memory():
        B, H, L, E = 1, 1, mem_L, 64
        for vname in variants:
            live = _live_bytes({"B": B, "H": H, "L": L, "E": E}, vname) / 2**20
            var = Variant(vname, B, H, 256, E)
            q, k, v = _inputs(1, H, 256, E, False)
            ex = attend.explain(q, k, v, **var.kw)
            big = Variant(vname, B, H, L, E)
            auto_b = attend.explain(*_inputs(1, H, L, E, True), **big.kw).backend  # (what fwd+bwd runs on)
            del big
            methods = [("auto", f"= {auto_b}")]
            for b in ATTEND_BACKENDS:
                if b == auto_b:
                    continue
                try:
                    tq = [t.detach().requires_grad_(True) for t in (q, k, v)]  # (the memory cell is fwd+bwd)
                    attend.attention(*tq, backend=b, **var.kw)
                except attend.UnsupportedCall as e:
                    mem_rows.append(dict(variant=vname, method=b, peak="n/a", live=f"{live:.0f}", ratio="",
                                         s="", note="n/a: " + str(e).split(": ", 1)[-1][:120]))
                    continue
                if b == "eager":
                    mem_rows.append(dict(variant=vname, method=b, peak="skipped", live=f"{live:.0f}", ratio="",
                                         s="", note="skipped: eager materialises the (L, S) scores (1 GiB each "
                                         "at 16384); budget"))
                    continue
                methods.append((b, ""))
            methods.append(("SDPA", "n/a" if var.sdpa_reason else ""))
            if vname == "plain":
                methods.append(("naive", ""))
            for m, note in methods:
                if m == "SDPA" and var.sdpa_reason:
                    mem_rows.append(dict(variant=vname, method=m, peak="n/a", live=f"{live:.0f}", ratio="", s="",
                                         note=var.sdpa_reason))
                    continue
                spec = dict(variant=vname, method=m, B=B, H=H, L=L, E=E, threads=args.threads)
                c = memory_cell(spec, args.memory_timeout)
                if "skip" in c:
                    mem_rows.append(dict(variant=vname, method=m, peak="n/a", live=f"{live:.0f}", ratio="", s="",
                                         note=c["skip"]))
                else:
                    inputs = 3 * B * H * L * E * 4 / 2**20
                    extra = ""
                    if m == "SDPA" and var.sdpa_mask is not None:
                        extra = "; its dense mask (a live input, built before the baseline) is not in the peak"
                    mem_rows.append(dict(variant=vname, method=m, peak=f"{c['peak_mib']:.0f}", live=f"{live:.0f}",
                                         ratio=f"{(c['peak_mib'] + inputs) / live:.1f}×", s=f"{c['s']:.1f}",
                                         note=(note + extra).strip("; ")))
                print("memory", mem_rows[-1], flush=True)
                render()

    if mem_L and (args.memory_first or args.memory_only):
        run_memory()
    if args.memory_only:
        shapes = []

    for (B, H, L, E) in shapes:
        shape = f"{B}×{H}×{L}×{E}"
        budget = args.max_seconds_per_cell
        # the ratio bases: SDPA plain and causal at this shape
        for grad in (False, True):
            q, k, v = _inputs(B, H, L, E, grad)
            for c in (False, True):
                m = measure(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=c), grad, [q, k, v],
                            reps=args.reps, budget=1e9)
                base[(shape, grad, c)] = m["ms"]
        for vname in variants:
            var = Variant(vname, B, H, L, E)
            passes = {}
            for grad in (False, True):
                pname = "fwd+bwd" if grad else "fwd"
                bms = base[(shape, grad, vname in CAUSAL_BASE)]
                q, k, v = _inputs(B, H, L, E, grad)
                leaves = [q, k, v]
                bq, bk, bv = _inputs(B, H, L, E, grad)  # the side-by-side reference's own inputs
                side = (lambda c=vname in CAUSAL_BASE: F.scaled_dot_product_attention(bq, bk, bv, is_causal=c),
                        [bq, bk, bv])
                # the float64 naive reference, once per variant/shape/pass
                ref, ref_rows = None, L
                lim = 1 << 30
                per_row = var.additive_bytes(8) / L
                if per_row and per_row * L > lim:
                    ref_rows = max(16, int(lim // per_row) // 16 * 16)
                try:
                    qd, kd, vd = [t.detach().double()[..., :ref_rows if i == 0 else L, :].requires_grad_(grad and ref_rows == L)
                                  for i, t in enumerate((q, k, v))]
                    with torch.set_grad_enabled(grad and ref_rows == L):
                        o = var.naive(qd, kd, vd)
                        if grad and ref_rows == L:
                            o.sum().backward()
                            ref = (o.detach(), qd.grad, kd.grad, vd.grad)
                        else:
                            ref = (o.detach(),)
                    del o, qd, kd, vd
                except RuntimeError as e:  # out of memory
                    ref = None
                    print("reference failed:", e, flush=True)

                def check(out, meth):
                    if ref is None:
                        return "n/a: no reference"
                    if grad and len(ref) == 4:
                        return f"{max(maxdiff(a.grad, b) for a, b in zip(leaves, ref[1:])):.1e}"
                    d = maxdiff(out[..., :ref_rows, :], ref[0])
                    s = f"{d:.1e}"
                    if ref_rows < L:
                        s += f" (out, first {ref_rows} queries)"
                    elif grad:
                        s += " (out)"
                    return s

                def row(method, cell, diff="", first="", note=""):
                    if "skip" in cell:
                        add_row({"shape": shape, "variant": vname, "pass": pname, "method": method,
                                 "time": cell["skip"], "ratio": "", "peak": "", "diff": "", "first": "",
                                 "note": note, "ms": None})
                        return
                    ratio = cell["ms"] / (cell.get("base_ms") or bms)  # side by side; one-call cells: the shape's
                    r = f"{ratio:.2f}×" if cell["runs"] > 1 else f"~{ratio:.2f}×"
                    peak = "" if cell.get("peak_mib") is None else f"{cell['peak_mib']:.0f}"
                    add_row({"shape": shape, "variant": vname, "pass": pname, "method": method, "time": fmt_ms(cell),
                             "ratio": r, "peak": peak, "diff": diff, "first": first, "note": note,
                             "ms": cell["ms"], "ratio_value": ratio, "runs": cell["runs"]})

                # attend: auto, then each backend that can run it
                with torch.set_grad_enabled(grad):  # as the timed call runs (a learned table: inference differs)
                    auto_b = attend.explain(q, k, v, **var.kw).backend
                fwd_first = passes.get("fwd_first", {})
                for method in ["auto"] + ATTEND_BACKENDS:
                    b = auto_b if method == "auto" else method
                    if method == auto_b:
                        add_row({"shape": shape, "variant": vname, "pass": pname, "method": method,
                                 "time": "= auto", "ratio": "", "peak": "", "diff": "", "first": "",
                                 "note": "auto picked this backend: see the auto row", "ms": None})
                        continue
                    if b in ("eager",) and var.additive_bytes() > NAIVE_LIMIT / (2 if grad else 1):
                        row(method, {"skip": f"n/a: would materialise (B, H, L, S, {HIDDEN}) = "
                                             f"{var.additive_bytes() / 2**30:.1f} GiB"})
                        continue
                    if grad and fwd_first.get(method, 0) > args.skip_seconds / 3:
                        row(method, {"skip": f"skipped: its forward alone took {fwd_first[method]:.0f} s "
                                             f"(over --skip-seconds {args.skip_seconds:.0f} / 3)"})
                        continue
                    try:
                        cell = measure(lambda: attend.attention(q, k, v, backend=b, **var.kw), grad, leaves,
                                       reps=args.reps, budget=budget, side=side)
                    except attend.UnsupportedCall as e:
                        row(method, {"skip": "n/a: " + str(e).split(": ", 1)[-1][:150]})
                        continue
                    except Exception as e:  # noqa: BLE001 - one cell never ends the run
                        row(method, {"skip": f"n/a: failed ({type(e).__name__}: {str(e)[:120]})"})
                        continue
                    if not grad:  # (its warm call: a compile is paid once, not per pass)
                        fwd_first[method] = cell["warm_ms"] / 1e3
                    row(method, cell, diff=check(cell["out"], method), first=f"{cell['first_ms'] / 1e3:.2f}",
                        note=f"= {auto_b}" if method == "auto" else "")
                passes["fwd_first"] = fwd_first

                # torch SDPA
                if var.sdpa_reason:
                    row("SDPA", {"skip": var.sdpa_reason})
                else:
                    try:
                        cell = measure(lambda: var.sdpa(q, k, v), grad, leaves, reps=args.reps, budget=budget, side=side)
                        row("SDPA", cell, diff=check(cell["out"], "SDPA"), first=f"{cell['first_ms'] / 1e3:.2f}",
                            note=var.sdpa_note())
                    except Exception as e:  # noqa: BLE001
                        row("SDPA", {"skip": f"n/a: failed ({type(e).__name__}: {str(e)[:120]})"})

                # FlexAttention, compiled, forward only
                if var.flex_reason:
                    row("Flex (compiled)", {"skip": var.flex_reason})
                elif grad:
                    if flex_bwd_reason is None:
                        flex_bwd_reason = flex_backward_reason(fa)
                    row("Flex (compiled)", {"skip": flex_bwd_reason})
                else:
                    try:
                        from torch.nn.attention.flex_attention import create_block_mask
                        t0 = time.perf_counter()
                        var.block_mask = (create_block_mask(var.flex_mask, B, H, L, L, device="cpu")
                                          if var.flex_mask is not None else None)
                        bm_s = time.perf_counter() - t0
                        t0 = time.perf_counter()
                        # its own compiled function per variant and shape: one compiled function for all
                        # of them hit dynamo's recompile limit and silently fell back to Flex's eager path
                        # (dense scores), which the first run of this benchmark reported as Flex's time
                        fa = fresh_flex(f"{vname}_{B}x{H}x{L}x{E}")
                        with torch.no_grad():
                            var.flex(fa, q, k, v)  # the first call compiles (or finds its compiled graph)
                        compile_s = time.perf_counter() - t0
                        cell = measure(lambda: var.flex(fa, q, k, v), False, leaves, reps=args.reps, budget=budget, side=side)
                        cell["first_ms"] = compile_s * 1e3
                        note = ("block mask built once before the call" +
                                (f" ({bm_s:.2f} s)" if var.block_mask is not None else "")
                                if var.block_mask is not None else "")
                        row("Flex (compiled)", cell, diff=check(cell["out"], "Flex"),
                            first=f"{cell['first_ms'] / 1e3:.2f}", note=note)
                    except Exception as e:  # noqa: BLE001
                        row("Flex (compiled)", {"skip": f"n/a: failed ({type(e).__name__}: {str(e)[:120]})"})

                # the naive path
                nb = var.additive_bytes()
                if nb and nb * (3 if grad else 1) > NAIVE_LIMIT:
                    row("naive", {"skip": f"n/a: would materialise (B, H, L, S, {HIDDEN}) = {nb / 2**30:.1f} GiB"
                                          + (" several times" if grad else "")})
                elif grad and fwd_first.get("naive", 0) > args.skip_seconds / 3:
                    row("naive", {"skip": f"skipped: its forward alone took {fwd_first['naive']:.0f} s"})
                else:
                    try:
                        cell = measure(lambda: var.naive(q, k, v), grad, leaves, reps=args.reps, budget=budget, side=side)
                        if not grad:
                            fwd_first["naive"] = cell["first_ms"] / 1e3
                        row("naive", cell, diff=check(cell["out"], "naive"), first=f"{cell['first_ms'] / 1e3:.2f}",
                            note="float32")
                    except Exception as e:  # noqa: BLE001
                        row("naive", {"skip": f"n/a: failed ({type(e).__name__}: {str(e)[:120]})"})
                del ref
            del var
        if mem_L and not (args.memory_first or args.memory_only) and (B, H, L, E) == shapes[min(1, len(shapes) - 1)]:
            run_memory()  # after the second shape: the 4096 shape, the longest, last
    render(done=True)
    print(f"done in {(time.time() - t_start) / 60:.1f} min; wrote {out_path}", flush=True)


def fresh_flex(tag):
    """``torch.compile`` of FlexAttention through a function with its own code object (dynamo's
    compiled-graph cache and recompile limit are per code object)."""
    flex = flex_attention_fn()

    def call(q, k, v, score_mod=None, block_mask=None, scale=None):
        return flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)

    code = call.__code__.replace(co_name=f"flex_{''.join(c if c.isalnum() else '_' for c in tag)}")
    return torch.compile(types.FunctionType(code, call.__globals__, code.co_name, call.__defaults__, call.__closure__))


def flex_attention_fn():
    from torch.nn.attention.flex_attention import flex_attention
    return flex_attention


def flex_backward_reason(fa):
    """Try one FlexAttention backward on the CPU at a tiny size; the message it refuses with."""
    q, k, v = _inputs(1, 1, 128, 64, True)
    try:
        fa(q, k, v).sum().backward()
    except Exception as e:  # noqa: BLE001
        return f"n/a: {str(e).strip().splitlines()[0][:140]}"
    return "n/a: not measured (forward only)"


def intro(args, shapes, variants, mem_L):
    sh = ", ".join(f"({B}, {H}, {L}, {E})" for B, H, L, E in shapes)
    lines = [
        f"Threads: `torch.set_num_threads({args.threads})` (`--threads`; default = the CPUs this process may use). "
        f"float32; shapes (B, H, L = S, E): {sh}.",
        "",
        "What is compared, and how: for each shape and variant, one call of attention forward (inference, no graph) "
        "and forward+backward (`out.sum().backward()`, gradients of q, k, v and of the score's parameters), on "
        "attend `backend=\"auto\"` and each attend backend that can run the call (`eager`, `sdpa`, `chunked`, "
        "`inductor`, `flex` (attend's block masks built from its rules, then FlexAttention's compiled kernel; "
        "inference only); `triton` is GPU-only), torch `scaled_dot_product_attention` (SDPA) with the same mask given densely where "
        "it can (masks built before the timed call, as a model reuses them), FlexAttention under `torch.compile` "
        "(forward only: it refuses backward on the CPU; block masks from `create_block_mask` built before the "
        "call; its first call, compile included, in the \"first call\" column, then timed as the others; a "
        "variant whose graph torch.compile already holds from an earlier variant or shape compiles little) and "
        "a naive "
        "matmul-softmax-matmul in PyTorch. Time: median of "
        f"{args.reps} calls after 1 warm-up (2 where the first compiled); a cell whose warm-up took over "
        f"{args.max_seconds_per_cell:g} s (`--max-seconds-per-cell`) is reported from that one call (marked ~; where "
        "the first call compiled, from the second, the first staying in the \"first call\" column), and a forward+backward whose "
        f"forward's warm call took over {args.skip_seconds / 3:g} s is skipped (`--skip-seconds`). The \"first call\" "
        "column holds the first call, compile included (before 2026-11-30 it held the second call where the "
        "first compiled and the second fitted the budget). "
        "Ratio = time / SDPA plain at the same shape and pass (SDPA `is_causal=True` for causal, ALiBi + causal "
        "and prefix-LM); for variants SDPA cannot express (soft-capping, additive) SDPA plain is the reference. "
        "The reference is timed side by side with each cell: once before each of its timed calls, on inputs of "
        "its own, and the ratio is the two medians' (a cell reported from one call uses the reference timed at "
        "the start of its shape). "
        "Every attend, SDPA and Flex row is checked against the naive path in float64 (max abs difference).",
        "",
        "Variants:",
        "",
    ]
    lines += [f"- **{v}**: {DESCRIBE[v]}" for v in variants]
    return lines


def summary(rows, shapes, variants):
    lines = []
    for B, H, L, E in shapes:
        shape = f"{B}×{H}×{L}×{E}"
        got = [r for r in rows if r["shape"] == shape]
        if not got:
            continue
        lines += ["", f"## Summary at (B, H, L, E) = ({B}, {H}, {L}, {E}): ratios to SDPA plain (causal)", "",
                  "| variant | auto picks | auto fwd | auto fwd+bwd | best attend backend fwd / fwd+bwd | "
                  "SDPA (dense) fwd / fwd+bwd | Flex fwd | auto fwd / Flex fwd | naive fwd / fwd+bwd |",
                  "|---|---|---|---|---|---|---|---|---|"]

        def get(v, p, m):
            for r in got:
                if r["variant"] == v and r["pass"] == p and r["method"] == m:
                    return r
            return None

        def rat(r):
            return "—" if r is None else (r["ratio"] or r["time"].split(":")[0][:20])

        for v in variants:
            a = get(v, "fwd", "auto")
            if a is None:
                continue
            best = {}
            for p in ("fwd", "fwd+bwd"):
                cands = [r for r in got if r["variant"] == v and r["pass"] == p and r["method"] in ATTEND_BACKENDS
                         and r.get("ratio_value") is not None]
                auto_r = get(v, p, "auto")
                if auto_r is not None and auto_r.get("ratio_value") is not None:
                    cands.append(dict(auto_r, method=auto_r["note"].lstrip("= ")))
                best[p] = min(cands, key=lambda r: r["ratio_value"]) if cands else None
            fl = get(v, "fwd", "Flex (compiled)")
            af = ""
            if fl is not None and fl.get("ratio_value") and a.get("ratio_value"):
                af = f"{a['ratio_value'] / fl['ratio_value']:.2f}×"
            bs = " / ".join("—" if best[p] is None else f"{best[p]['method']} {best[p]['ratio']}"
                            for p in ("fwd", "fwd+bwd"))
            lines.append(f"| {v} | {a['note'].lstrip('= ')} | {rat(a)} | {rat(get(v, 'fwd+bwd', 'auto'))} | {bs} | "
                         f"{rat(get(v, 'fwd', 'SDPA'))} / {rat(get(v, 'fwd+bwd', 'SDPA'))} | {rat(fl)} | {af} | "
                         f"{rat(get(v, 'fwd', 'naive'))} / {rat(get(v, 'fwd+bwd', 'naive'))} |")
    return lines


def memory_intro(L):
    alloc = (f"Allocator: glibc with `MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}` in the memory subprocesses (every "
             "allocation above it is its own mapping and leaves the resident set when freed: the peak is what was "
             "allocated at once, not what the allocator kept)." if MMAP_THRESHOLD else
             "Allocator: glibc's defaults (its dynamic mmap threshold keeps freed buffers of up to 32 MiB in the heap, "
             "so the peak includes what the allocator kept; `--malloc-mmap-threshold` measures without that).")
    return ["", f"## Peak memory of one forward+backward at B = 1, H = 1, L = S = {L}, E = 64",
            "", alloc, "",
            "Each cell runs in a fresh subprocess (same threads): inputs built, one tiny call of the same method "
            "(for `inductor` and `auto`, one call at the measured size, so that compiling is not in the peak) "
            "(one-time set-up is not the call's memory), then the high-water mark is reset to the current RSS "
            "(`/proc/self/clear_refs`; `ru_maxrss` cannot be reset, so its delta would hide a call whose peak is "
            "below the set-up's) and one forward+backward runs. peak MiB = VmHWM - VmRSS before the call. "
            "live MiB = q, k, v, out, dq, dk, dv (7 × L·E·4 bytes; for additive also W_q q and W_k k, which its "
            "backward needs, and their gradients: 4 × L·64·4 bytes more). ratio = (inputs + peak) / live: the process's "
            "peak over the tensors a forward+backward must hold (≤ 2× is the issue's goal). eager is skipped "
            "(dense (L, S) scores); Flex is forward-only; naive only for plain (the same dense path for all).",
            "",
            "| variant | method | peak MiB above baseline | live MiB | ratio | s | note |",
            "|---|---|---|---|---|---|---|"]


if __name__ == "__main__":
    main()
