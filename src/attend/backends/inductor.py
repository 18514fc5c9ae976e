"""``inductor``: attention over blocks whose elementwise work PyTorch's compiler fuses (CPU).

The call is cut into tiles of query rows; each tile reads only the span of keys its rules
can allow (``causal``, ``window`` and a rule's :meth:`attend._rules.Rule.keys`: a
window of 256 reads ~2·256 keys per row, a document its own keys), in chunks sized so one
tile's scores stay in the cache. A chunk whose keys every rule allows to every row of its tile
(:meth:`attend._rules.Rule.full`: below the causal diagonal, inside one document) runs a
program compiled without the rules, so no mask is evaluated there; where it costs no extra
chunk, the chunks are cut at the edge of those keys. Each tile x chunk runs a program of
:mod:`attend.backends._programs`, compiled once per process by ``torch.compile``: the two
library matrix products with everything between them (score function, scale, score_mod,
bias, masks, exponent, row sums) fused into one loop. Chunks of one tile are merged by
their log-sum-exps.

Training: the forward keeps only the output and each row's log-sum-exp. The backward
recomputes each tile's probabilities once, in a compiled program whose gradient is
``dS = P ∘ (dP - Δ)`` (``Δ = rowsum(dO ∘ O)``) taken through the score function and
score_mod on that tile alone, and adds each tile's ``dQ``, ``dK``, ``dV`` (and the
gradients of a score's parameters or a learned bias table) in place.

The weights (``return_weights``, :func:`attend.attention_weights`) come from the saved
log-sum-exp, tile by tile. Not here: dropout, hard attention, a dense ``bias`` that requires
grad, gradients through returned weights, devices other than the CPU (the ``triton``
backend fuses the same on a GPU), and a machine without a C++ compiler.

``auto`` takes this backend only where it is the faster path (a score modifier, an
additive or custom score, attention sinks, weights, or mask rules that rule out enough of the
keys: see ``_inductor_calls.sdpa_share``) and the call is large enough to repay compiling: the first call of a
program pays tracing and code generation (a few seconds; ``explain()`` says so), later
processes find the generated code in inductor's cache on disk.
"""
from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Optional

import torch
from torch import Tensor

from .. import _check
from . import _distance_bias, _padding, _programs as P, _relbias_regions
from ._chunks import cut as _cut, full_cut as _full_cut, full_key as _full_key, varied as _varied
from ._heap import tile_guard
from ._inductor_calls import grad_tensors as _grad_tensors, keys_apart as _keys_apart, program_key as _key
from ._inductor_calls import score_kind as _kind, sdpa_share as _sdpa_share, user_functions as _user_functions
from ._inductor_calls import tile_dout as _tile_dout
from ._programs import no_compiler as _no_compiler
from ._relbias import add_tile_grad as _add_tile_grad, bias_tile as _bias_tile, learned_table as _learned_table
from .base import DENSE_RULE_LIMIT, AttentionCall, Backend, _block, compute_dtype, with_sinks


class Inductor(Backend):
    """Blocked attention with compiled tiles.

    ``tile_bytes``: one tile's scores (B x H x rows x keys) stay within this;
    ``key_chunk``: keys per chunk at most (1024: soft-capping's forward took 0.95-0.97x the
    time of 2048-key chunks at (1, 8, 2048/4096, 64), three interleaved comparisons; the scores a
    chunk's second product reads stay nearer the core), ``back_key_chunk`` in the backward, whose
    tiles hold P, dP and dS (1024 took 0.9x the time of 2048 there); ``max_rows``: rows per tile
    at most;
    ``min_work``: ``auto`` takes this backend only for calls of at least this many
    multiply-adds (rows x kept keys x features, over batch and heads): smaller ones would not
    repay compiling, and at that size a compiled call's overhead outweighs what it saves.
    """

    name = "inductor"

    def __init__(self, *, tile_bytes: int = 8 << 20, key_chunk: int = 1024, back_key_chunk: int = 1024,
                 max_rows: int = 256, min_work: int = 1 << 28):
        for arg, val in (("tile_bytes", tile_bytes), ("key_chunk", key_chunk), ("back_key_chunk", back_key_chunk),
                         ("max_rows", max_rows), ("min_work", min_work)):
            _check.integer(val, arg, low=1, expected="a positive int")
        self.tile_bytes, self.key_chunk, self.back_key_chunk = tile_bytes, key_chunk, back_key_chunk
        self.max_rows, self.min_work = max_rows, min_work
        self._last = None  # (call, plan) of the latest call planned

    # ---- what it runs ----------------------------------------------------------------------
    def can_run(self, call: AttentionCall) -> list[str]:
        why = []
        if call.query.device.type != "cpu":
            why.append("runs on the CPU (on a GPU, the triton backend fuses the same work)")
        if call.hard:
            why.append("hard attention needs the argmax over all keys; use eager")
        if call.dropout_p > 0:
            why.append("no dropout inside compiled tiles (use chunked or eager)")
        if call.bias is not None and call.bias.requires_grad:
            why.append("a dense bias that requires grad (a learned bias: use mods.relative_bias, or chunked)")
        if torch.is_grad_enabled() and _user_functions(call):
            why.append("a score function, score_mod or mask_mod of your own while autograd is on: the tensors "
                       "it holds cannot all be found for their gradients (use chunked or eager, or torch.no_grad())")
        if call.return_weights and call.needs_grad:
            why.append("returns the weights without a gradient path through them (use chunked or eager)")
        missing = _no_compiler()
        if missing:
            why.append(missing)
        return why

    def auto_skip(self, call: AttentionCall) -> list[str]:
        if call.score_mod is not None and _distance_bias.preferred(call, over="inductor"):
            return [_distance_bias.sdpa_reason(call)]
        if call.score_mod is not None and _relbias_regions.preferred(call):
            return [_relbias_regions.SDPA_REASON]
        sdpa_does_it = ["SDPA's fused kernel computes this call (no score modifier, custom score or blocks to skip)"]
        plain = call.score_mod is None and _kind(call)[0] == "dot" and call.sinks is None and not call.return_weights
        if plain and _padding.lengths(call) is not None:  # (before the dense mask's size: the cut needs none)
            return [_padding.AUTO_REASON]
        modified = not plain or call.dense_rule_bytes() > DENSE_RULE_LIMIT  # (sdpa: no dense mask that big)
        if not modified and (_only_causal(call) or (call.mask_mod is None and call.window is None and not call.causal)):
            return sdpa_does_it  # decided without planning the tiles (a plan costs ~0.5 ms of Python)
        plan = self.plan(call)
        if not modified and plan.kept > _sdpa_share(call, plan.full == plan.chunks) * call.L * call.S:
            return sdpa_does_it
        if plan.work < self.min_work:  # (also once compiled: at this size per-tile overhead dominates)
            return [f"a call this small ({_si(plan.work)} multiply-adds < min_work {_si(self.min_work)}) would not "
                    f"repay compiling its tile program (a few seconds, once per process)"]
        return []

    def describe(self, call: AttentionCall) -> str:
        """One line for :func:`attend.explain`: tiles, kept keys and whether the program is compiled."""
        plan = self.plan(call)
        keys = ([plan.key] if plan.full < plan.chunks else []) + ([_full_key(plan.key)] if plan.full else [])
        state = ("its program is compiled in this process" if all(P.is_compiled(k) for k in keys) else
                 "the first call compiles its program: a few seconds, less when inductor's disk cache has it")
        n = len(plan.tiles)
        regions = ("; the forward from SDPA's kernel beyond the relative-bias table's reach, the tiles in the backward"
                   if _regions_forward(call, plan.kind) else "")
        full = f", {plan.full} of {plan.chunks} chunks without the mask (every key allowed)" if plan.full else ""
        return (f"{n} tile{'s' if n != 1 else ''} of {plan.rows} rows, {100 * plan.kept / max(call.L * call.S, 1):.0f}% "
                f"of the (query, key) pairs computed{full}; {state}{regions}")

    # ---- planning --------------------------------------------------------------------------
    def plan(self, call: AttentionCall) -> "_Plan":
        """The call's plan, made once per call object (auto, explain and the run ask for it)."""
        last = self._last
        if last is not None and last[0]() is call:
            return last[1]
        plan = self._plan(call)
        self._last = (weakref.ref(call), plan)  # weak: the call's tensors are not kept alive
        return plan

    def _plan(self, call: AttentionCall) -> "_Plan":
        """Tiles of a fixed number of rows (the last one overlaps its neighbour rather than being
        shorter, so every tile has one shape), each with its chunks of kept keys. The row count
        is the one, of those whose scores fit ``tile_bytes``, with the least work plus per-tile
        overhead (small tiles waste less of a window's or a document's span)."""
        kind, extra = _kind(call)
        item = torch.finfo(compute_dtype(call.query.dtype)).bits // 8
        heads = call.B * call.Hq
        rows, tiles, kept = self._choose(call, heads, item, self.key_chunk)
        pair, chunk = item, self.back_key_chunk
        if kind == "additive":  # its backward holds tanh'(a_i + b_j) for every (row, key, hidden) of a tile
            pair = item * extra  # (1 GiB at (1, 8, 2048, 64) with 2048-key chunks, measured): count it there
            chunk = max(16, min(self.key_chunk, self.tile_bytes // max(1, heads * min(16, self.max_rows) * pair)))
        back = tiles if chunk >= self.key_chunk and pair == item else self._choose(call, heads, pair, chunk)[1]
        if FULL_CHUNKS and tiles:  # cut again at the edges of the keys every row may see (same rows, same count)
            same = back is tiles  # (then the backward keeps the forward's chunks, as without full chunks)
            tiles = _full_cut(call, tiles, min(self.key_chunk, self.tile_bytes // (heads * rows * item)))
            fits = self.tile_bytes // (heads * (back[0][1] - back[0][0]) * pair)
            back = tiles if same else _full_cut(call, back, min(chunk, fits))
        feat = call.query.shape[-1] + call.Ev if kind != "additive" else extra + call.Ev
        count = [sum(len(c) for *_, c in tiles), sum(f for *_, c in tiles for *_, f in c)]
        return _Plan(kind, tiles, rows, kept, heads * kept * feat, _key(call, kind), _varied(tiles), back,
                     _varied(back), *count)

    def _choose(self, call: AttentionCall, heads: int, item: int, chunk: int):
        """(rows, tiles, kept pairs) of the row count with the least cost whose tiles fit."""
        best = None
        for rows in sorted({min(r, self.max_rows) for r in _ROW_CHOICES}):
            rows = min(rows, call.L)
            tiles, kept, widest = self._tiles(call, rows, chunk)
            if rows > min(16, self.max_rows) and heads * rows * min(widest, chunk) * item > self.tile_bytes:
                continue
            cost = heads * kept + _TILE_COST * sum(max(1, len(c)) for _, _, _, c in tiles)
            if best is None or cost < best[0]:
                best = (cost, rows, tiles, kept)
        return best[1:]

    def _tiles(self, call: AttentionCall, rows: int, chunk: int):
        tiles, kept, widest, done, L, span, every = [], 0, 0, 0, call.L, None, call.spans_every_key
        while done < L:
            i0 = min(done, L - rows)  # the last tile overlaps: rows i0:done were done before
            i1 = i0 + rows
            if span is None or not every:  # (every key for every tile: one span and one cut for all)
                span = lo, hi = call.key_span(i0, i1)
                chunks = _cut(lo, hi, 0, 0, chunk)
            tiles.append((i0, i1, done - i0, chunks))
            kept += (i1 - done) * (hi - lo)
            widest = max([widest] + [j1 - j0 for j0, j1, _ in chunks])
            done = i1
        return tiles, kept, widest

    # ---- running -----------------------------------------------------------------------------
    def run(self, call: AttentionCall) -> tuple[Tensor, Optional[Tensor]]:
        plan = self.plan(call)
        dtype = call.query.dtype
        cdt = compute_dtype(dtype)
        a, b, v, w, spec, score = _operands(call, plan, cdt)
        job = _Job(call, plan, spec, score)
        extras = _grad_tensors(call) if call.needs_grad else []
        if call.needs_grad:
            out, lse = _Attention.apply(job, a, b, v, w, *extras)
        else:
            with torch.no_grad():
                out, lse = job.forward(a, b, v, w)
        if call.sinks is not None:  # each head's sink joins every row's denominator
            total = with_sinks(lse, call.sinks)
            out = out * torch.exp(lse - torch.where(total == -math.inf, 0.0, total)).unsqueeze(-1)
            lse = total
        weights = None
        if call.return_weights:
            with torch.no_grad():
                weights = job.weights(a, b, w, lse.detach()).to(dtype)
        return out.to(dtype), weights


    def key_totals(self, call: AttentionCall) -> Tensor:
        """Each key's weights summed over the query rows, tile by tile from the log-sum-exp: no
        (L, S) tensor (memory O(tile + B·H·S))."""
        plan = self.plan(call)
        a, b, v, w, spec, score = _operands(call, plan, compute_dtype(call.query.dtype))
        job = _Job(call, plan, spec, score)
        with torch.no_grad():
            _, lse = job.forward(a, b, v, w)
            if call.sinks is not None:
                lse = with_sinks(lse, call.sinks)
            return job.totals(a, b, w, lse)


_ROW_CHOICES = (16, 32, 64, 128, 256)
#: take a relative-bias table's forward (output and log-sum-exp) from SDPA's kernel where its bands
#: are a small share of the pairs (the backward recomputes the tiles as for any score_mod)
REGIONS_FORWARD = True
#: run the chunks every rule allows whole without the rules (``benchmarks/full_chunks.py`` turns it off to compare)
FULL_CHUNKS = True
_TILE_COST = 120_000  # one compiled call's overhead, in (query, key, head) scores (~150 µs here)


@dataclasses.dataclass
class _Plan:
    kind: str
    tiles: list  # [(i0, i1, overlap, [(j0, j1), ...])]: rows i0:i0+overlap belong to the tile before
    rows: int
    kept: int  # (query, key) pairs computed
    work: int  # multiply-adds of the matrix products (or of the additive score)
    key: tuple  # the program key
    varied: bool  # chunks of more than one width: the key dimension is compiled as dynamic
    back_tiles: list  # the backward's tiles (smaller for the additive score, whose backward holds more)
    back_varied: bool
    chunks: int = 0  # of the forward's tiles
    full: int = 0  # of those, chunks every rule allows whole (run without the rules)


class _Job:
    """One call's tiles, run through the compiled programs."""

    def __init__(self, call: AttentionCall, plan: _Plan, spec: P.Spec, score):
        self.call, self.plan, self.spec, self.score = call, plan, spec, score
        self.spec_full = spec._replace(causal=False, window=None)
        self._progs: dict = {}  # (name, full, key) -> (program, spec)
        dev = call.query.device
        self.hb = torch.arange(call.Hq, device=dev).view(1, -1, 1, 1)
        self.bb = torch.arange(call.B, device=dev).view(-1, 1, 1, 1)
        self.varied = plan.varied  # of the tiles being run (the backward's may differ)
        self.regions = _regions_forward(call, plan.kind)

    def _keys(self, t: Tensor, j0: int, j1: int, dim: int = 2) -> Tensor:
        """Keys j0:j1 of ``t``; where chunk widths vary, that dimension is compiled as dynamic."""
        t = t[:, :, j0:j1] if dim == 2 else t
        if self.varied and t.shape[dim] > 1:
            torch._dynamo.maybe_mark_dynamic(t, dim)
        return t

    def _prog(self, name: str, full: bool, key: Optional[tuple] = None):
        """The compiled program ``name`` for a chunk, and its spec (``full``: without the rules);
        looked up once per call, not once per chunk."""
        got = self._progs.get((name, full, key))
        if got is None:
            k = key or self.plan.key
            got = (P.compiled(name, _full_key(k)), self.spec_full) if full else (P.compiled(name, k), self.spec)
            self._progs[(name, full, key)] = got
        return got

    def _ctx(self, i0, i1, j0, j1, full=False):
        c = self.call
        i = torch.arange(i0, i1, device=c.query.device).view(1, 1, -1, 1)
        j = self._keys(torch.arange(j0, j1, device=c.query.device).view(1, 1, 1, -1), j0, j1, 3)
        bias = _block(c.bias, i0, i1, j0, j1) if c.bias is not None else None
        mask = _block(c.mask, i0, i1, j0, j1) if c.mask is not None else None
        bias, mask = (self._keys(t, j0, j1, 3) if t is not None and t.shape[3] > 1 else t for t in (bias, mask))
        return (i, j, self.hb, self.bb, self.score, c.score_mod, None if full else c.mask_mod, bias, mask)

    def forward(self, a, b, v, w):
        if self.regions:
            return _relbias_regions.attention(a, b, v, self.spec.scale, self.call.score_mod, self.call.causal)
        B, H, L = a.shape[:3]
        out = a.new_zeros(B, H, L, v.shape[-1])
        lse = a.new_full((B, H, L), -math.inf)
        guard = tile_guard(self.plan.kind == "additive", out.nbytes)  # its tiles hold (rows, keys, hidden)
        for i0, i1, skip, chunks in self.plan.tiles:
            o = l = None
            for j0, j1, full in chunks:
                guard()
                fwd, spec = self._prog("forward", full)
                o2, l2 = fwd(spec, a[:, :, i0:i1], self._keys(b, j0, j1), self._keys(v, j0, j1), w,
                             *self._ctx(i0, i1, j0, j1, full))
                o, l = (o2, l2) if o is None else P.merge(o, l, o2, l2)
            if o is not None:
                out[:, :, i0 + skip:i1], lse[:, :, i0 + skip:i1] = o[:, :, skip:], l[:, :, skip:]
        return out, lse

    def weights(self, a, b, w, lse):
        B, H, L = a.shape[:3]
        out = a.new_zeros(B, H, L, self.call.S)
        for i0, i1, _, chunks in self.plan.tiles:
            for j0, j1, full in chunks:
                prog, spec = self._prog("probs", full)
                out[:, :, i0:i1, j0:j1] = prog(spec, a[:, :, i0:i1], self._keys(b, j0, j1), w,
                                               *self._ctx(i0, i1, j0, j1, full), lse[:, :, i0:i1])
        return out

    def totals(self, a, b, w, lse):
        B, H = a.shape[:2]
        out = a.new_zeros(B, H, self.call.S, dtype=torch.float32)
        for i0, i1, skip, chunks in self.plan.tiles:
            for j0, j1, full in chunks:
                prog, spec = self._prog("probs", full)
                p = prog(spec, a[:, :, i0:i1], self._keys(b, j0, j1), w, *self._ctx(i0, i1, j0, j1, full),
                         lse[:, :, i0:i1])
                out[:, :, j0:j1] += p[:, :, skip:].float().sum(2)  # rows before skip: the tile before's
        return out

    def backward(self, a, b, v, w, out, lse, dout, dlse, extras):
        key = self.plan.key
        table = _learned_table(self.call, extras)
        if table is not None:  # see _diagonal_sums: the bias tile goes in as a tensor, its gradient comes out
            key = key[:4] + (None,) + key[5:6] + (True,) + key[7:]
            t_at = next(n for n, x in enumerate(extras) if x is table.table)
            dtable = torch.zeros_like(table.table, dtype=a.dtype)
            extras = [x for n, x in enumerate(extras) if n != t_at]
        # saved outputs come back attached to this node: detached, the tables' gradients do not walk back here
        out, lse, dout = out.detach(), lse.detach(), dout.detach().to(out.dtype)
        dlse = dlse.detach() if dlse is not None else None
        da, db, dv = torch.zeros_like(a), torch.zeros_like(b), torch.zeros_like(v)
        dw = torch.zeros_like(w) if w is not None else None
        dx = [None] * len(extras)
        self.varied = self.plan.back_varied
        guard = tile_guard(self.plan.kind == "additive", da.nbytes + db.nbytes + dv.nbytes)
        for i0, i1, skip, chunks in self.plan.back_tiles:
            do = _tile_dout(dout, i0, i1, skip)  # (dO and Δ tile by tile: whole, either is one more output-sized)
            dl = (do * out[:, :, i0:i1]).sum(-1)  # Δ = rowsum(dO ∘ O)
            if dlse is not None:  # a gradient on the lse (sinks) adds dlse·P to dS: fold it into Δ
                dl = dl - dlse[:, :, i0:i1]
            if skip:  # rows the tile before has done: a zero dO and Δ give them a zero dS
                do[:, :, :skip], dl[:, :, :skip] = 0, 0
            for j0, j1, full in chunks:
                guard()
                sur, spec = self._prog("surrogate", full, key)
                with torch.enable_grad():
                    leaves = [a[:, :, i0:i1].detach().requires_grad_(),
                              self._keys(b.detach(), j0, j1).requires_grad_(),
                              self._keys(v.detach(), j0, j1).requires_grad_()]
                    wl = w.detach().requires_grad_() if w is not None else None
                    ctx = self._ctx(i0, i1, j0, j1, full)
                    if table is not None:  # the table's values for this tile, as a bias (one per head if all clipped)
                        tile, edge = _bias_tile(table, i0, i1, j0, j1, a.dtype)
                        tile = self._keys(tile, j0, j1, 3).requires_grad_()
                        ctx = ctx[:5] + (None, ctx[6], tile, ctx[8])
                    loss = sur(spec, *leaves, wl, *ctx, lse[:, :, i0:i1], do, dl)
                    wrt = leaves + ([wl] if wl is not None else []) + list(extras) + ([tile] if table is not None else [])
                    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
                if table is not None:
                    _add_tile_grad(dtable, grads[-1], table, edge, i0, j0)
                    grads = grads[:-1]
                for acc, g, sl in ((da, grads[0], (i0, i1)), (db, grads[1], (j0, j1)), (dv, grads[2], (j0, j1))):
                    if g is not None:  # None: a score that does not read it
                        acc[:, :, sl[0]:sl[1]] += g
                rest = grads[3:]
                if wl is not None:
                    if rest[0] is not None:
                        dw += rest[0]
                    rest = rest[1:]
                for n, g in enumerate(rest):
                    if g is not None:
                        dx[n] = g if dx[n] is None else dx[n] + g
        if table is not None:
            dx.insert(t_at, dtable.to(table.table.dtype))
        return da, db, dv, dw, dx


class _Attention(torch.autograd.Function):
    """Forward keeps the output and the log-sum-exp; backward recomputes each tile once."""

    @staticmethod
    def forward(ctx, job: _Job, a, b, v, w, *extras):
        out, lse = job.forward(a, b, v, w)
        ctx.job, ctx.extras = job, extras
        ctx.save_for_backward(a, b, v, w, out, lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        P.no_double_backward("attend's inductor backend")
        a, b, v, w, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        da, db, dv, dw, dx = ctx.job.backward(a, b, v, w, out, lse, dout, dlse, ctx.extras)
        return (None, da, db, dv, dw, *dx)


# ---- helpers -----------------------------------------------------------------------------------
def _si(n: int) -> str:
    return next((f"{n / size:.3g} {u}" for u, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)) if n >= size), str(n))


def _regions_forward(call: AttentionCall, kind: str) -> bool:
    """A relative-bias table whose far keys SDPA's kernel can run (:mod:`._relbias_regions`): the
    forward's output and log-sum-exp come from there, faster than the tiles (fwd+bwd 1.84x
    against 1.94x SDPA's at (1, 8, 4096, 64), 1.86x against 1.90x at 2048); the backward stays here."""
    return (REGIONS_FORWARD and kind == "dot" and not _relbias_regions.reasons(call, forward_only=True)
            and _relbias_regions.band_share(call) <= _relbias_regions.BAND_SHARE)


def _only_causal(call: AttentionCall) -> bool:
    """Plain causal self-attention, which SDPA's ``is_causal`` kernel computes at half the work."""
    return call.causal and call.L == call.S and call.window is None and call.mask_mod is None and call.mask is None


def _operands(call: AttentionCall, plan: _Plan, cdt: torch.dtype):
    """(a, b, v, w, spec, score): what the tile programs multiply, in the compute dtype."""
    q, k, v, kind = call.query, call.key, call.value, plan.kind
    score, w, scale = None, None, call.scale
    if kind == "dot":
        a, b, factor = call.score.as_dot(q, k)
        scale = scale * factor
    elif kind == "additive":
        a, b, w = call.score.as_additive(q, k)
        w = w.to(cdt)
    else:
        a, b, score = q, k, call.score
    a = a.to(cdt).contiguous()
    b, v = (call.expand_kv(t).to(cdt).contiguous() for t in (b, v))
    if plan.varied or plan.back_varied:
        b, v = (_keys_apart(t, plan.tiles + plan.back_tiles) for t in (b, v))
    window = tuple(call.window) if call.window is not None else None
    spec = P.Spec(kind, float(scale), bool(call.causal), window, call.offset, math.log(torch.finfo(cdt).tiny))
    return a, b, v, w, spec, score
