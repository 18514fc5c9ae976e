"""Ring attention: queries stay, keys and values travel between the ranks, piece by piece.

Each rank holds a span of the queries and a span of the keys and values (a layout of
:mod:`.layout`). In ``W`` steps every rank's keys and values reach every rank: at step ``s``
rank ``r`` computes its queries against the keys of rank ``r - s`` while it sends its own to
rank ``r + s`` (step 0: its own). Keys travel in *pieces* (``piece`` keys, ~512 KiB by
default; ``batch`` of P2P ``isend``/``irecv``), the next piece on its way while one is
computed, and each block of ``piece`` query rows x one key piece is merged into the rows'
running output by log-sum-exps. A piece every rule rules out for all of a rank's queries
(``causal``, ``window``, a rule's key span) is neither sent nor computed; a block, likewise.

Sending straight to rank ``r + s``, rather than passing spans along the ring through the
ranks between, is what keeps memory per rank at a few pieces: a rank only ever sends pieces
of its own keys, so it never holds a span it must pass on (PyTorch's context parallel offers
the same choice as its ``"alltoall"`` rotation). With 2 ranks the two are the same. Each
rank sends and receives (W - 1) spans of keys and values per call either way.

The backward runs the steps once more: each rank recomputes its blocks from the global
log-sum-exp and output it kept (``dS = P ∘ (dP − Δ)``), adds ``dq`` locally, sums each
piece's ``dk``/``dv`` shares over its query blocks and sends them home to the piece's owner,
which adds them into its own as they arrive. Nothing but the rank's own spans, output and
log-sum-exp is kept between forward and backward.
"""
from __future__ import annotations

import bisect
import dataclasses
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .. import _check
from .._rule_prep import bind, check_rule
from .._rules import And, Causal, Window
from .._ruletree import is_own, rule_tensors
from ..backends import UnsupportedCall
from ..backends._programs import merge_into
from ..backends.base import _holds_grad_tensor, compute_dtype
from ..functional import _prepare
from . import _blocks
from ._agree import agree, device_of, quarantine
from ._pieces import Schedule
from ._rules import Shifted, ShiftedScore
from .layout import _group, check_layout, spans


def ring_attention(query: Tensor, key: Tensor, value: Tensor, *, group=None, layout: str = "contiguous",
                   score="scaled_dot", mask=None, causal: bool = False, window=None, score_mod=None,
                   scale: Optional[float] = None, return_weights: bool = False, backend: str = "auto",
                   piece: Optional[int] = None):
    """Attention over a sequence split across the ranks of ``group``; every rank calls it with
    its own spans.

    ``query`` (..., Hq, L_r, E), ``key`` (..., Hkv, S_r, E), ``value`` (..., Hkv, S_r, Ev): this
    rank's positions of the global sequences, in ``layout`` (:func:`attend.distributed.shard`
    makes them; with ``"contiguous"`` ranks may hold any lengths, in rank order). Everything
    else is :func:`attend.attention`'s, on *global* positions: ``causal`` and ``window`` and the
    rules of :mod:`attend.masks` (a ``mask_mod`` of your own gets global indices), score
    modifiers, every dot-like score, grouped kv heads; a dense mask tensor cannot be split
    and is refused. Returns this rank's output rows (..., Hq, L_r, Ev), and with
    ``return_weights=True`` also their weights over all global keys (..., Hq, L_r, S), in
    global key order (no gradient through them).

    Gradients reach ``query``, ``key``, ``value`` exactly as single-process attention's for
    these positions. A parameter the call shares over ranks (a ``General`` score's weight, a
    learned relative-bias table) gets on each rank the gradient of *that rank's* rows: sum
    them over the group (:func:`attend.distributed.all_reduce_grads`) for the whole gradient.

    ``backend``: how each block is computed, ``"auto"``, ``"sdpa"`` (CPU), ``"triton"``
    (attend's fused kernels: a GPU), ``"inductor"`` or ``"eager"`` (:mod:`attend.distributed._blocks`). ``piece``: keys per piece sent, and query
    rows per block (the same on every rank); default: what keeps one piece of keys and values
    near 512 KiB, at least 256 keys (1024 keys at one head, E = 64, float32). Smaller pieces
    hold less memory per rank and make more, smaller calls.
    """
    rank, world = _group(group)
    call, failed = None, None
    try:  # (this rank's own checks: what they refuse, every rank refuses, after the gather below)
        check_layout(layout)
        _blocks.check_engine(backend)
        if piece is not None:
            _check.integer(piece, "piece", low=1, expected="a positive int (keys per piece)")
        call, shape = _prepare(query, key, value, score=score, causal=causal, window=window, scale=scale)
        if not getattr(call.score, "dot_like", False):
            raise ValueError(f"score: ring attention runs dot-like scores (dot, scaled_dot, cosine, General), got "
                             f"{type(call.score).__name__}")
        if not isinstance(return_weights, bool):
            raise TypeError(f"return_weights must be a bool, got {type(return_weights).__name__}")
        if isinstance(mask, Tensor):
            raise TypeError("mask: a dense mask tensor cannot be split over ranks; give the mask as a rule "
                            "(attend.masks) or a mask_mod function of global (b, h, i, j)")
        if piece is None:
            per_key = call.B * call.Hkv * (call.query.shape[-1] + call.Ev) * compute_dtype(call.query.dtype).itemsize
            piece = max(256, _PIECE_BYTES // max(per_key, 1))
    except Exception as e:  # noqa: BLE001 - raised on this rank after the gather, the others told
        failed = e
    options = dict(layout=layout, causal=causal, window=window, score=score, scale=scale, mask=mask,
                   score_mod=score_mod, return_weights=return_weights, backend=backend)
    agreed = agree(call, group, world, device_of(query, group), piece=piece or 0, options=options, failed=failed)
    lengths = agreed.lengths
    Lg, Sg = sum(l for l, _ in lengths), sum(s for _, s in lengths)
    q_spans = _rank_spans(lengths, 0, Lg, world, layout, "query")
    k_spans = _rank_spans(lengths, 1, Sg, world, layout, "key")
    B, Hq = call.B, call.Hq
    terms = []
    if call.causal:
        terms.append(Causal())
    if call.window is not None:
        terms.append(Window(*call.window))
    if mask is not None:
        if not callable(mask):
            raise TypeError(f"mask must be a mask_mod callable or a rule of attend.masks, got {type(mask).__name__}")
        check_rule(mask, "mask", "mask", (B, Hq, Lg, Sg))
        terms.append(mask)
    cdt = compute_dtype(query.dtype)  # (learned tensors summed in it, as attention's)
    rule = None if not terms else bind(terms[0] if len(terms) == 1 else And(tuple(terms)), Lg, Sg, cdt)
    mod = None
    if score_mod is not None:
        if not callable(score_mod):
            raise TypeError(f"score_mod must be a callable (score, b, h, i, j) -> score, got {type(score_mod).__name__}")
        check_rule(score_mod, "score_mod", "score", (B, Hq, Lg, Sg))
        mod = bind(score_mod, Lg, Sg, cdt)
    params = [p for p in getattr(call.score, "parameters", lambda: [])() if p.requires_grad]
    params += [t for t in rule_tensors(rule) + rule_tensors(mod) if not any(t is p for p in params)]
    for name, fn in (("mask", mask), ("score_mod", score_mod)):
        if fn is not None and not is_own(fn) and _holds_grad_tensor(fn):
            raise ValueError(f"{name}: a function of your own holding a tensor that requires grad cannot be trained "
                             f"through ring_attention (its gradient could not be found); use attend's rules "
                             f"(attend.masks, attend.mods) or torch.no_grad()")
    hit = None  # rows that may use a non-finite input (of any rank): NaN, as attention's
    if not agreed.finite:
        call, hit = quarantine(call, group, world, rank, q_spans, k_spans, rule, Sg)
    plan = _Ring(group, rank, world, call, q_spans, k_spans, Lg, Sg, rule, mod, backend, params, piece)
    q, k, v = call.query, call.key, call.value
    plan.check_engines(q, k, v)
    if torch.is_grad_enabled() and any(t.requires_grad for t in [q, k, v] + params):
        out = _RingFunction.apply(plan, q, k, v, *params)
    else:
        with torch.no_grad():
            out, plan.lse = plan.forward(q, k, v)
    if hit is not None:
        out = out.masked_fill(hit.unsqueeze(-1), float("nan"))
    out = out.to(query.dtype).reshape(*shape.batch, *shape.heads, call.L, call.Ev)
    if not return_weights:
        return out
    with torch.no_grad():
        w = plan.weights(q, k, plan.lse).to(query.dtype)
        if hit is not None:
            w = w.masked_fill(hit.unsqueeze(-1), float("nan"))
    return out, w.reshape(*shape.batch, *shape.heads, call.L, Sg)


_PIECE_BYTES = 1 << 19  # one piece of keys and values, by default


def _rank_spans(lengths, which: int, n: int, world: int, layout: str, arg: str) -> list[list[tuple[int, int]]]:
    """Every rank's global spans of the queries (which=0) or keys (1), checked against the lengths held."""
    if layout == "contiguous":
        out, at = [], 0
        for r in range(world):
            out.append([(at, at + lengths[r][which])])
            at += lengths[r][which]
        return out
    out = [spans(n, r, world, layout) for r in range(world)]
    for r in range(world):
        want = sum(z - a for a, z in out[r])
        if lengths[r][which] != want:
            raise ValueError(f"{arg}: rank {r} holds {lengths[r][which]} positions; the zigzag layout of {n} over "
                             f"{world} ranks gives it {want} (split with attend.distributed.shard)")
    return out


def _peer(group, r: int) -> int:
    return dist.get_global_rank(group, r) if group is not None else r


class _Ring:
    """One call's ring: pieces, rules and the steps of forward, backward and weights."""

    def __init__(self, group, rank, world, call, q_spans, k_spans, Lg, Sg, rule, mod, engine, params, piece):
        self.group, self.rank, self.world, self.call = group, rank, world, call
        self.q_spans, self.k_spans, self.Lg, self.Sg = q_spans, k_spans, Lg, Sg
        self.rule, self.mod, self.engine, self.params = rule, mod, engine, params
        self.cdt = compute_dtype(call.query.dtype)
        self.piece = piece
        self._rows, self._orders = {}, {}
        self.rows = self.rows_of(rank)  # this rank's query blocks

    # ---- pieces and blocks -------------------------------------------------------------------
    def _cut(self, spans_):
        """(local start, global start, length) of a rank's positions, cut at global multiples of
        ``piece`` (queries and keys on one grid: a causal block is then whole, on the diagonal or
        empty, which SDPA's kernel computes)."""
        out, at, g = [], 0, self.piece
        for a, z in spans_:
            x = a
            while x < z:
                e = min(z, (x // g + 1) * g)
                out.append((at + x - a, x, e - x))
                x = e
            at += z - a
        return out

    def _shifted(self, gq, nq, gk, nk):
        return Shifted(self.rule, gq, gk, nk - nq, self.Sg - self.Lg, self.Sg) if self.rule is not None else None

    def _allowed(self, gq, nq, gk, nk) -> bool:
        """Whether the rules allow any key of global keys gk:gk+nk to global queries gq:gq+nq
        (the block call's own key_span, without building it)."""
        rule = self._shifted(gq, nq, gk, nk)
        if rule is None:
            return True
        lo, hi = rule.keys(nk - nq, nk - 1, nk)  # first and last query at local keys (offset nk - nq)
        lo = min(max(lo, 0), nk)
        return min(hi, nk) > lo

    def rows_of(self, x):
        """Rank ``x``'s query blocks: (local start, global start, rows)."""
        got = self._rows.get(x)
        if got is None:
            got = self._rows[x] = self._cut(self.q_spans[x])
        return got

    def order(self, x):
        """The key pieces rank ``x`` computes, in its order: [(owner, (local start, global start,
        keys), blocks)], its own first, then at step ``s`` those of rank ``x - s``; a piece every
        rule rules out for all of ``x``'s queries is left out (neither sent nor computed)."""
        got = self._orders.get(x)
        if got is None:
            rows, got = self.rows_of(x), []
            blocks = self._counter(rows)
            for s in range(self.world):
                owner = (x - s) % self.world
                for p in self._cut(self.k_spans[owner]):
                    w = blocks(p[1], p[2])
                    if w:
                        got.append((owner, p, w))
            self._orders[x] = got
        return got

    def _counter(self, rows):
        """``(gk, nk) -> how many of rows' blocks the rules allow against keys gk:gk+nk``: in
        closed form for no rule (all) and plain causal (rows whose last query reaches gk, by
        bisection), else one rule check per block (Python work in pieces x blocks)."""
        if self.rule is None:
            return lambda gk, nk: len(rows)
        if type(self.rule) is Causal:  # query i sees key j <= i + offset
            last = sorted(gq + nq - 1 + self.rule.offset for _, gq, nq in rows)
            return lambda gk, nk: len(last) - bisect.bisect_left(last, gk)
        return lambda gk, nk: sum(self._allowed(gq, nq, gk, nk) for _, gq, nq in rows)

    def peer(self, x):
        return _peer(self.group, x)

    def blocks(self, q, kp, vp, gk):
        """(local query start, query length, block call) of this rank's query blocks against the
        key piece ``kp``, ``vp`` at global key ``gk``; blocks the rules rule out left out."""
        nk = kp.shape[2]
        for lq, gq, nq in self.rows:
            if not self._allowed(gq, nq, gk, nk):
                continue
            score_mod = ShiftedScore(self.mod, gq, gk) if self.mod is not None else None
            yield lq, nq, dataclasses.replace(
                self.call, query=q[:, :, lq:lq + nq], key=kp, value=vp, mask_mod=self._shifted(gq, nq, gk, nk),
                score_mod=score_mod, causal=False, window=None)

    def _engine(self, block):
        return _blocks.pick(self.engine, block)

    def check_engines(self, q, k, v):
        """Before any message: every block of this rank runs on the engine asked for, or every
        rank raises (a block refused on one rank alone would leave the others waiting for it)."""
        if self.engine in ("auto", "eager"):  # (these take every block)
            return
        why = ""
        with torch.no_grad():
            try:
                for _, (_, gk, nk), _ in self.order(self.rank):
                    kp, vp = (t.new_zeros(()).expand(*t.shape[:2], nk, t.shape[3]) for t in (k, v))  # no memory
                    for _, _, block in self.blocks(q, kp, vp, gk):
                        _blocks.pick(self.engine, block)
            except UnsupportedCall as e:
                why = str(e)
        if self.world > 1:
            flag = torch.tensor([1 if why else 0], device=q.device)  # (NCCL: on the GPU)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
            if not why and int(flag.item()):
                why = (f"backend {self.engine!r} cannot run the blocks of another rank of the group (its error "
                       f"names why); use backend='auto'")
        if why:
            raise UnsupportedCall(why)

    # ---- forward, weights, backward ------------------------------------------------------------
    def _run(self, q, local, shares, compute):
        """Every piece of this rank's order, its blocks through ``compute(rows, global key start,
        block, acc)`` (``acc``: with ``shares``, the piece's (dk, dv) accumulators, handed to the
        schedule once its blocks are done; else None); messages as :mod:`._pieces` schedules
        them. ``compute`` accumulates; nothing is returned."""
        sched = Schedule(self, local, shares)
        for j in range(len(sched)):
            gk, tensors = sched.piece(j)
            kp, vp = tensors[0], tensors[-1]
            acc = [t.new_zeros(t.shape, dtype=self.cdt) for t in (kp, vp)] if shares is not None else None
            block = None
            for lq, nq, block in self.blocks(q, kp, vp, gk):
                sched.before_block()
                compute(slice(lq, lq + nq), gk, block, acc)
                sched.block_done()
            del kp, vp, tensors, block  # (the block holds the piece too)
            sched.done(j, acc)
        sched.finish()

    def forward(self, q, k, v):
        c = self.call
        out = q.new_zeros(c.B, c.Hq, c.L, c.Ev, dtype=self.cdt)
        lse = q.new_full((c.B, c.Hq, c.L), float("-inf"), dtype=self.cdt)

        def compute(rows, gk, block, _):
            o, l = _blocks.forward(self._engine(block), block)
            merge_into(out[:, :, rows], lse[:, :, rows], o, l)

        self._run(q, [k, v], None, compute)
        return out, lse

    def weights(self, q, k, lse):
        c = self.call
        w = q.new_zeros(c.B, c.Hq, c.L, self.Sg, dtype=self.cdt)

        def compute(rows, gk, block, _):
            w[:, :, rows, gk:gk + block.S] = _blocks.weights(block, lse[:, :, rows])

        self._run(q, [k], None, compute)
        return w

    def backward(self, q, k, v, out, lse, dout):
        """The pieces again: each block recomputed from the global log-sum-exp and output kept
        (``dS = P ∘ (dP − Δ)``); dq added locally, each piece's (dk, dv) shares summed over this
        rank's query blocks and sent to the piece's owner, which adds them into its own."""
        dq = q.new_zeros(q.shape, dtype=self.cdt)
        dk, dv = (t.new_zeros(t.shape, dtype=self.cdt) for t in (k, v))
        dparams = [torch.zeros_like(p, dtype=self.cdt if p.is_floating_point() else p.dtype) for p in self.params]

        def compute(rows, gk, block, acc):
            a, b, c, ps = _blocks.backward(self._engine(block), block, out[:, :, rows], lse[:, :, rows],
                                           dout[:, :, rows], self.params)
            dq[:, :, rows] += a
            acc[0] += b
            acc[1] += c
            for total, g in zip(dparams, ps):
                total += g

        self._run(q, [k, v], (dk, dv), compute)
        return dq, dk, dv, dparams


class _RingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan: _Ring, q, k, v, *params):
        out, lse = plan.forward(q, k, v)
        plan.lse = lse
        ctx.plan = plan
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv, dparams = ctx.plan.backward(q, k, v, out, lse, dout)
        return (None, dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
                *[g.to(p.dtype) for g, p in zip(dparams, ctx.plan.params)])
