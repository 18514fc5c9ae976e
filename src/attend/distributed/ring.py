"""Ring attention: queries stay, keys and values travel around the ranks.

Each rank holds a span of the queries and a span of the keys and values (a layout of
:mod:`.layout`). In ``W`` steps every key/value span visits every rank: at each step a rank
starts sending the span it holds to the next rank and receiving the previous rank's
(``batch_isend_irecv``), computes its queries against the span it holds meanwhile, and
merges the block into its running output by log-sum-exps. A block every rule rules out
(``causal``, ``window``, a rule's key span) is not computed; the span still travels.

The backward runs the same ring once more: each rank recomputes its blocks from the global
log-sum-exp and output it kept (``dS = P ∘ (dP − Δ)``), adds ``dq`` locally, and adds its
share of ``dk``/``dv`` into buffers that travel with the spans, one step behind, and reach
their owner after the last step. Nothing but the rank's own spans, output and log-sum-exp is
kept between forward and backward.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .._rules import And, Causal, Window, bind, check_rule
from .._ruletree import is_own, rule_tensors
from ..backends.base import AttentionCall, _holds_grad_tensor, compute_dtype
from ..functional import _prepare
from . import _blocks
from ._rules import Shifted, ShiftedScore
from .layout import _group, check_layout, spans


def ring_attention(query: Tensor, key: Tensor, value: Tensor, *, group=None, layout: str = "contiguous",
                   score="scaled_dot", mask=None, causal: bool = False, window=None, score_mod=None,
                   scale: Optional[float] = None, return_weights: bool = False, backend: str = "auto"):
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

    ``backend``: how each block is computed, ``"auto"``, ``"sdpa"``, ``"inductor"`` or
    ``"eager"`` (:mod:`attend.distributed._blocks`).
    """
    rank, world = _group(group)
    check_layout(layout)
    _blocks.check_engine(backend)
    call, shape = _prepare(query, key, value, score=score, causal=causal, window=window, scale=scale)
    if not getattr(call.score, "dot_like", False):
        raise ValueError(f"score: ring attention runs dot-like scores (dot, scaled_dot, cosine, General), got "
                         f"{type(call.score).__name__}")
    if not isinstance(return_weights, bool):
        raise TypeError(f"return_weights must be a bool, got {type(return_weights).__name__}")
    if isinstance(mask, Tensor):
        raise TypeError("mask: a dense mask tensor cannot be split over ranks; give the mask as a rule "
                        "(attend.masks) or a mask_mod function of global (b, h, i, j)")
    lengths = _all_lengths(call, group, world)  # (every rank gets here, or every rank has raised above)
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
    rule = None if not terms else bind(terms[0] if len(terms) == 1 else And(tuple(terms)), Lg, Sg)
    mod = None
    if score_mod is not None:
        if not callable(score_mod):
            raise TypeError(f"score_mod must be a callable (score, b, h, i, j) -> score, got {type(score_mod).__name__}")
        check_rule(score_mod, "score_mod", "score", (B, Hq, Lg, Sg))
        mod = bind(score_mod, Lg, Sg)
    params = [p for p in getattr(call.score, "parameters", lambda: [])() if p.requires_grad]
    params += [t for t in rule_tensors(rule) + rule_tensors(mod) if not any(t is p for p in params)]
    for name, fn in (("mask", mask), ("score_mod", score_mod)):
        if fn is not None and not is_own(fn) and _holds_grad_tensor(fn):
            raise ValueError(f"{name}: a function of your own holding a tensor that requires grad cannot be trained "
                             f"through ring_attention (its gradient could not be found); use attend's rules "
                             f"(attend.masks, attend.mods) or torch.no_grad()")
    plan = _Ring(group, rank, world, call, q_spans, k_spans, Lg, Sg, rule, mod, backend, params)
    q, k, v = call.query, call.key, call.value
    if torch.is_grad_enabled() and any(t.requires_grad for t in [q, k, v] + params):
        out = _RingFunction.apply(plan, q, k, v, *params)
    else:
        with torch.no_grad():
            out, plan.lse = plan.forward(q, k, v)
    out = out.to(query.dtype).reshape(*shape.batch, *shape.heads, call.L, call.Ev)
    if not return_weights:
        return out
    with torch.no_grad():
        w = plan.weights(q, k, plan.lse).to(query.dtype)
    return out, w.reshape(*shape.batch, *shape.heads, call.L, Sg)


def _all_lengths(call: AttentionCall, group, world: int) -> list[tuple[int, int]]:
    mine = torch.tensor([call.L, call.S], dtype=torch.int64, device=call.query.device)  # (NCCL: a GPU tensor)
    got = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(got, mine, group=group)
    return [(int(t[0]), int(t[1])) for t in got]


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
    """One call's ring: spans, rules and the steps of forward, backward and weights."""

    def __init__(self, group, rank, world, call, q_spans, k_spans, Lg, Sg, rule, mod, engine, params):
        self.group, self.rank, self.world, self.call = group, rank, world, call
        self.q_spans, self.k_spans, self.Lg, self.Sg = q_spans, k_spans, Lg, Sg
        self.rule, self.mod, self.engine, self.params = rule, mod, engine, params
        self.cdt = compute_dtype(call.query.dtype)

    # ---- blocks ----------------------------------------------------------------------------
    def _pieces(self, spans_):
        at, out = 0, []
        for a, z in spans_:
            out.append((at, a, z - a))  # (local start, global start, length)
            at += z - a
        return out

    def blocks(self, q, k, v, owner):
        """(local query start, query length, local key start, key length, block call) of this
        rank's queries against ``owner``'s keys, the blocks rules rule out left out."""
        c = self.call
        for lq, gq, nq in self._pieces(self.q_spans[self.rank]):
            for lk, gk, nk in self._pieces(self.k_spans[owner]):
                if nq == 0 or nk == 0:
                    continue
                mask_mod = (Shifted(self.rule, gq, gk, nk - nq, self.Sg - self.Lg, self.Sg)
                            if self.rule is not None else None)
                score_mod = ShiftedScore(self.mod, gq, gk) if self.mod is not None else None
                block = dataclasses.replace(
                    c, query=q[:, :, lq:lq + nq], key=k[:, :, lk:lk + nk], value=v[:, :, lk:lk + nk],
                    mask_mod=mask_mod, score_mod=score_mod, causal=False, window=None)
                lo, hi = block.key_span(0, nq)
                if hi <= lo:
                    continue
                yield lq, nq, lk, nk, block

    def _engine(self, block):
        return _blocks.pick(self.engine, block)

    # ---- communication ---------------------------------------------------------------------
    def _exchange(self, send: list, recv: list):
        """Start sending ``send`` to the next rank and receiving ``recv`` from the previous one."""
        if self.world == 1 or not send:
            return []
        nxt, prv = _peer(self.group, (self.rank + 1) % self.world), _peer(self.group, (self.rank - 1) % self.world)
        ops = [dist.P2POp(dist.isend, t.contiguous(), nxt, group=self.group) for t in send]
        ops += [dist.P2POp(dist.irecv, t, prv, group=self.group) for t in recv]
        return dist.batch_isend_irecv(ops)

    def _kv_buffers(self, k, v, owner):
        n = sum(z - a for a, z in self.k_spans[owner])
        return (k.new_empty(*k.shape[:2], n, k.shape[3]), v.new_empty(*v.shape[:2], n, v.shape[3]))

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, q, k, v):
        c = self.call
        out = q.new_zeros(c.B, c.Hq, c.L, c.Ev, dtype=self.cdt)
        lse = q.new_full((c.B, c.Hq, c.L), float("-inf"), dtype=self.cdt)
        owner, cur_k, cur_v = self.rank, k.contiguous(), v.contiguous()
        for step in range(self.world):
            last = step == self.world - 1
            nxt = (owner - 1) % self.world
            bufs = self._kv_buffers(cur_k, cur_v, nxt) if not last else ()
            reqs = self._exchange([cur_k, cur_v], list(bufs)) if not last else []
            for lq, nq, lk, nk, block in self.blocks(q, cur_k, cur_v, owner):
                o, l = _blocks.forward(self._engine(block), block)
                o2, l2 = _blocks.merge(out[:, :, lq:lq + nq], lse[:, :, lq:lq + nq], o, l)
                out[:, :, lq:lq + nq], lse[:, :, lq:lq + nq] = o2, l2
            for r in reqs:
                r.wait()
            if not last:
                owner, (cur_k, cur_v) = nxt, bufs
        return out, lse

    def weights(self, q, k, lse):
        c = self.call
        w = q.new_zeros(c.B, c.Hq, c.L, self.Sg, dtype=self.cdt)
        owner, cur_k = self.rank, k.contiguous()
        for step in range(self.world):
            last = step == self.world - 1
            nxt = (owner - 1) % self.world
            buf = self._kv_buffers(cur_k, cur_k, nxt)[0] if not last else None
            reqs = self._exchange([cur_k], [buf]) if not last else []
            starts = {lk: gk for lk, gk, _ in self._pieces(self.k_spans[owner])}
            for lq, nq, lk, nk, block in self.blocks(q, cur_k, cur_k, owner):
                g = starts[lk]
                w[:, :, lq:lq + nq, g:g + nk] = _blocks.weights(block, lse[:, :, lq:lq + nq])
            for r in reqs:
                r.wait()
            if not last:
                owner, cur_k = nxt, buf
        return w

    # ---- backward ---------------------------------------------------------------------------
    def backward(self, q, k, v, out, lse, dout):
        """The ring again. The (dk, dv) shares of a span travel one rank behind it: a rank
        receives what the ranks before it added for the span it now holds (sent as they
        finished the step before, so it is there or nearly), adds its own in place and sends
        the sum on; after the last step the sums are complete and one more hop takes each home.
        Per rank: the span held, the span arriving, and one span's sums (those that left at the
        step before are waited for before the blocks are computed)."""
        dq = q.new_zeros(q.shape, dtype=self.cdt)
        dparams = [torch.zeros_like(p, dtype=self.cdt if p.is_floating_point() else p.dtype) for p in self.params]
        owner, cur_k, cur_v = self.rank, k.contiguous(), v.contiguous()
        leaving = []  # the send of the sums that left at the step before (its buffers kept until it is done)
        for step in range(self.world):
            last = step == self.world - 1
            nxt = (owner - 1) % self.world
            if step == 0:
                acc = (cur_k.new_zeros(cur_k.shape, dtype=self.cdt), cur_v.new_zeros(cur_v.shape, dtype=self.cdt))
            else:  # posted before this step's key/value exchange, in the order the previous rank sent them
                acc = tuple(t.new_empty(t.shape, dtype=self.cdt) for t in (cur_k, cur_v))
                arriving = self._p2p([], list(acc))
            for r in leaving:  # every rank has posted its receive (above) before it waits here: the sums
                r.wait()  # that left at the step before are gone before this step's blocks are computed
            leaving = []
            bufs = self._kv_buffers(cur_k, cur_v, nxt) if not last else ()
            reqs = self._exchange([cur_k, cur_v], list(bufs)) if not last else []
            if step > 0:
                for r in arriving:
                    r.wait()
            for lq, nq, lk, nk, block in self.blocks(q, cur_k, cur_v, owner):
                rows = slice(lq, lq + nq)
                a, b, c, ps = _blocks.backward(self._engine(block), block, out[:, :, rows], lse[:, :, rows],
                                               dout[:, :, rows], self.params)
                dq[:, :, rows] += a
                acc[0][:, :, lk:lk + nk] += b
                acc[1][:, :, lk:lk + nk] += c
                for total, g in zip(dparams, ps):
                    total += g
            for r in reqs:
                r.wait()
            if self.world == 1:
                return dq, acc[0], acc[1], dparams
            leaving = self._p2p(list(acc), [])
            if not last:
                owner, (cur_k, cur_v) = nxt, bufs
            del acc
        home = tuple(t.new_empty(t.shape, dtype=self.cdt) for t in (k, v))  # the complete sums of this rank's span
        for r in self._p2p([], list(home)) + leaving:
            r.wait()
        return dq, home[0], home[1], dparams

    def _p2p(self, send: list, recv: list):
        """Sends to the next rank and receives from the previous one, each on its own (the sums'
        stream), posted in list order."""
        nxt, prv = _peer(self.group, (self.rank + 1) % self.world), _peer(self.group, (self.rank - 1) % self.world)
        works = [dist.isend(t.contiguous(), nxt, group=self.group) for t in send]
        works += [dist.irecv(t, prv, group=self.group) for t in recv]
        return works


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
