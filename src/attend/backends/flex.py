"""``flex``: PyTorch's FlexAttention compiled for the CPU, for the inference calls it runs fastest.

On the CPU, ``torch.compile(flex_attention)`` generates one fused blocked kernel (inductor's
C++ FlexAttention template): scores, score_mod, mask and an online softmax stay in the
cache, blocks the block mask rules out are skipped and blocks it marks full are computed
without evaluating the mask. Measured here (``benchmarks/results/cpu.md``) it is faster than
attend's ``inductor`` tiles where the score_mod is cheap or absent (ALiBi) and a mask rule
leaves blocks out (window, document, chunked, padding, prefix-LM), and slower where the
score_mod costs a table gather or a tanh (relative bias, soft-capping), so ``auto`` takes it
for the former only. PyTorch gives it no backward on the CPU and no log-sum-exp there, so it
runs inference only: training, sinks and the weights go to ``inductor`` (a relative-bias table's
training to ``sdpa``, where its bands are a small share). Key padding alone goes to ``sdpa``,
which cuts each sequence's keys to its length (:mod:`._padding`) and so skips the same work
without compiling: 0.76-0.84x SDPA plain at 2048 and 4096 keys on a machine where this kernel
ran padding at 1.11-1.16x (``benchmarks/results/cpu-run5.md``).

Blocks are 128 rows by 128 keys, or 64 by 64 where that computes at least 5% fewer (query, key)
pairs (a sliding window's band edges cut through blocks, and blocks of 64 waste less of them) or
where ALiBi's reach applies (``BLOCK_SIZES``; ``explain`` says which was taken and why).

The block mask is built here from the call's rules rather than by ``create_block_mask``,
which evaluates the rule at every (query, key) pair (14 ms at 2048 x 2048 on this machine):
each row of blocks evaluates only the keys in its span (:meth:`AttentionCall.key_span`),
and the result is kept for the next call with the same rules and sizes. Tensors inside
attend's rules (document ids, lengths) are recognised by identity and version, so a tensor
changed in place builds the mask anew; a rule function of one's own builds it every call.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import weakref
from typing import Callable, Optional

import torch
from torch import Tensor

from .. import _check
from .._rules import Alibi, And, Causal, RelativeBias, Rule, Window
from . import _alibi_reach, _distance_bias, _padding, _programs as P, _relbias_regions
from .base import AttentionCall, Backend
from ._programs import no_compiler as _no_compiler
from .inductor import _only_causal, _si

try:  # FlexAttention is in PyTorch since 2.5
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
except ImportError:  # pragma: no cover - older PyTorch
    BlockMask = flex_attention = None

#: score_mods for which ``auto`` takes this backend: measured faster than inductor's tiles
#: (benchmarks/results/cpu.md); a score_mod of another kind runs here only when named
FAST_SCORE_MODS = (Alibi,)
#: a learned relative-bias table too, up to this many (query, key) pairs per sequence and head:
#: at (1, 8, 2048, 64) and (4, 8, 512, 64) FlexAttention's kernel ran it at 1.33-1.38x SDPA
#: plain against inductor's 1.50-1.60x, at (1, 8, 4096, 64) at 1.93-2.2x against 1.48-1.64x
#: (benchmarks/results/cpu.md, cpu-back-chunk.md); with causal, at 4096, 1.18x SDPA causal against
#: inductor's 1.54x (measured alone, 7 calls each), so a causal table stays here at any length
RELATIVE_BIAS_PAIRS = 2048 * 2048
#: ALiBi's reach is used only where it leaves out at least this share of the blocks
MIN_SAVING = 0.1
#: the block sizes chosen between when ``block_size`` is None: the coarse one, and the fine one
#: where it computes at least ``FINE_SAVING`` fewer (query, key) pairs, or where ALiBi's reach
#: applies. A window's band edges cut through blocks: with 256 keys either side, blocks of 64
#: compute 576 keys per row against 640. Measured (benchmarks/results/cpu-flex-blocks.md, time with
#: blocks of 64 / time with 128): window 0.85-0.95, causal window 0.86, ALiBi + causal 0.94-0.99
#: (an earlier run: 0.91, 0.60, 1.06), ALiBi alone 0.96-1.03, prefix-LM at 512 0.95; where the
#: rules' spans fall on block edges (documents, chunks of 256,
#: prefix-LM at 2048 and 4096) 0.97-1.06, and there the saving is under 5%, so 128 is kept. Two
#: columns of that file that ran the same blocks differ by up to 12%: single ratios are that noisy
BLOCK_SIZES = (128, 64)
FINE_SAVING = 0.05


def _program(q, k, v, score_mod, block_mask, scale, gqa):
    """What is compiled (one code object per program key, see :mod:`._programs`)."""
    return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa)


class Flex(Backend):
    """FlexAttention's compiled CPU kernel, inference only.

    ``block_size``: rows and keys per block of the block mask, or None to choose per call between
    128 and 64 (see ``BLOCK_SIZES``; :func:`attend.explain` says which); ``min_work``: ``auto`` takes
    this backend only for calls of at least this many multiply-adds (kept query-key pairs x
    features, over batch and heads), which repay compiling (a few seconds per variant, once
    per process).
    """

    name = "flex"

    def __init__(self, *, block_size: Optional[int] = None, min_work: int = 1 << 28, cached_masks: int = 16):
        if block_size is not None:
            _check.integer(block_size, "block_size", low=1, expected="a positive int or None")
        for arg, val in (("min_work", min_work), ("cached_masks", cached_masks)):
            _check.integer(val, arg, low=1, expected="a positive int")
        self.block_size, self.min_work, self.cached_masks = block_size, min_work, cached_masks
        self._masks: collections.OrderedDict = collections.OrderedDict()
        self._spans: collections.OrderedDict = collections.OrderedDict()  # see _pairs
        self._sized = None  # (call, (block size, why)) of the latest call sized
        self._lock = threading.Lock()

    # ---- what it runs ----------------------------------------------------------------------
    def can_run(self, call: AttentionCall) -> list[str]:
        why = []
        if flex_attention is None:
            why.append("this PyTorch has no FlexAttention (torch >= 2.5)")
        if call.query.device.type != "cpu":
            why.append("runs on the CPU (on a GPU, the triton backend fuses the same work)")
        if call.needs_grad:
            why.append("inference only: PyTorch's FlexAttention has no backward on the CPU (for training: inductor)")
        if not getattr(call.score, "dot_like", False):
            why.append("dot-like scores only (additive and custom scores: inductor)")
        if call.hard:
            why.append("hard attention needs the argmax over all keys; use eager")
        if call.dropout_p > 0:
            why.append("no dropout (use chunked or eager)")
        if call.sinks is not None:
            why.append("no sinks: FlexAttention gives no log-sum-exp on the CPU (use inductor)")
        if call.return_weights:
            why.append("no weights: FlexAttention gives no log-sum-exp on the CPU (use inductor)")
        if call.mask is not None or call.bias is not None:
            why.append("no dense mask or bias tensor (sdpa takes them; a mask given as a rule of attend.masks runs here)")
        if call.query.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            why.append(f"float32, bfloat16 or float16 only (FlexAttention's CPU kernel), got {call.query.dtype}")
        missing = _no_compiler()
        if missing:
            why.append(missing)
        return why

    def auto_skip(self, call: AttentionCall) -> list[str]:
        mod = call.score_mod
        if _distance_bias.preferred(call, over="flex"):
            return [_distance_bias.sdpa_reason(call)]
        if type(mod) is RelativeBias and _relbias_regions.preferred(call):
            return [_relbias_regions.SDPA_REASON]
        table = type(mod) is RelativeBias and (call.L * call.S <= RELATIVE_BIAS_PAIRS or call.causal)
        if mod is not None and type(mod) not in FAST_SCORE_MODS and not table:
            return [f"its CPU kernel is slower than inductor's tiles on score_mod {_name(mod)}"
                    f"{' past 2048 x 2048 without causal' if type(mod) is RelativeBias else ''} "
                    f"(benchmarks/results/cpu.md)"]
        if mod is None and _padding.lengths(call) is not None:
            return [_padding.AUTO_REASON]
        rules = call.mask_mod is not None or call.window is not None or (call.causal and not _only_causal(call))
        if mod is None and not rules and not call.causal:
            return ["SDPA's fused kernel computes this call faster, without compiling (no score_mod or mask rule)"]
        if mod is None and not rules:
            return ["SDPA's fused kernel computes this call without compiling (no score_mod, and no mask rule beyond "
                    "plain causal; FlexAttention's kernel is faster on plain causal, 0.6-0.98x, but a compile repays "
                    "itself only over many calls)"]
        work = self._work(call)
        if work < self.min_work:
            return [f"a call this small ({_si(work)} multiply-adds < min_work {_si(self.min_work)}) would not "
                    f"repay compiling FlexAttention's kernel (a few seconds, once per process)"]
        return []

    def describe(self, call: AttentionCall) -> str:
        state = ("its kernel is compiled in this process" if P.is_compiled(_key(call, self.size(call)), "flex") else
                 "the first call compiles FlexAttention's kernel: a few seconds, less when inductor's disk cache has it")
        reach, far = None, ""
        if _alibi_reach.applies(call):  # (explain hands over the call attention would run: checked finite)
            with torch.no_grad():
                reach = self._reach(call, *call.score.as_dot(call.query, call.key))
            far = (" (ALiBi: blocks whose keys are all farther from their rows than a reach per head are left out; "
                   f"|q|·|k| bounds their weight below 2^-{_alibi_reach.BITS} of the row's; "
                   + (f"reach for these inputs: {', '.join(f'{w:.0f}' for w in reach)})" if reach is not None
                      else f"not used for these inputs: it would leave out less than {MIN_SAVING:.0%} of the "
                           "blocks, or they hold a non-finite number)"))
        blocks = self.block_mask(call, reach)
        if blocks is None:
            return f"no mask rule: every block computed; {state}"
        _, partial, full, _ = blocks
        size = self.size(call)
        n = -(-call.L // size) * -(-call.S // size)
        mean = " (means over heads: the reach differs by head)" if reach is not None else ""
        why = self._choice(call)[1]
        return (f"blocks of {size}{why}: {partial} masked and {full} full (computed without the mask) of "
                f"{n} per sequence and head{mean}{far}; {state}")

    def _work(self, call: AttentionCall) -> int:
        """Multiply-adds over the key spans of each row of blocks (an upper bound on the kernel's)."""
        kept = self._pairs(call, self.size(call))[0]
        return call.B * call.Hq * kept * (call.query.shape[-1] + call.Ev)

    def size(self, call: AttentionCall) -> int:
        """Rows and keys per block for this call: ``block_size``, or when it is None the finer of
        ``BLOCK_SIZES`` where it computes at least ``FINE_SAVING`` fewer pairs, or where ALiBi's
        reach applies. Decided once per call object (auto, explain and the run ask for it)."""
        return self._choice(call)[0]

    def _choice(self, call: AttentionCall) -> tuple[int, str]:
        """(block size, why, for explain: empty unless blocks of 64 were chosen), decided once per call."""
        if self.block_size is not None:
            return self.block_size, ""
        last = self._sized
        if last is not None and last[0]() is call:
            return last[1]
        coarse, fine = BLOCK_SIZES
        choice = coarse, ""
        if _alibi_reach.applies(call):  # a reach per head ends inside blocks too
            choice = fine, " (ALiBi's reach per head ends inside blocks: finer blocks leave out more)"
        elif call.has_rule_mask:
            saved = 1 - self._pairs(call, fine)[1] / max(1, self._pairs(call, coarse)[1])
            if saved >= FINE_SAVING:
                choice = fine, f" (they compute {saved:.0%} fewer pairs than blocks of {coarse})"
        self._sized = (weakref.ref(call), choice)  # weak: the call's tensors are not kept alive
        return choice

    def _pairs(self, call: AttentionCall, n: int) -> tuple[int, int]:
        """(query, key) pairs per sequence and head over each row of blocks of ``n``'s key span:
        (exactly, in whole blocks). Kept for later calls with the same rules and lengths (a loop
        over the rows of blocks in Python: 0.1-0.3 ms at 4096)."""
        fn = _mask_fn(call)
        fp = _fingerprint(fn)

        def count() -> tuple:
            exact = blocks = 0
            for i0 in range(0, call.L, n):
                i1 = min(call.L, i0 + n)
                lo, hi = call.key_span(i0, i1)
                if hi > lo:  # the kernel computes the rows there are, and whole blocks of keys
                    exact += (i1 - i0) * (hi - lo)
                    blocks += (i1 - i0) * (min(call.S, -(-hi // n) * n) - lo // n * n)
            return fn, exact, blocks  # (the rule kept with its counts: see _cached)

        key = None if fp is None else (fp, call.L, call.S, n)
        return self._cached(key, count, self._spans, 4 * self.cached_masks)[1:]

    # ---- the block mask ---------------------------------------------------------------------
    def block_mask(self, call: AttentionCall, reach: Optional[tuple] = None) -> Optional[tuple]:
        """``(BlockMask, masked blocks, full blocks, blocks computed per query head)`` for the
        call's rules, or None when it has none; kept for later calls with the same rules and
        sizes. With ``reach`` (ALiBi's per-head distances of :mod:`._alibi_reach`), blocks
        farther than the reach are left out too."""
        fn = _mask_fn(call)
        if fn is None:
            return None
        fp = _fingerprint(fn)
        size = self.size(call)
        key = None if fp is None else (fp, call.B, call.Hq, call.L, call.S, size)
        grids = self._cached(key, lambda: self._grids(call, fn, size))
        if reach is None:
            return grids[0]
        w = _alibi_reach.rounded(reach, size, call.L + call.S)
        sub = None if key is None else key + (w,)
        return self._cached(sub, lambda: (_made(self._near(call, grids[1:], w, size), fn, call, size),))[0]

    def _reach(self, call: AttentionCall, a: Tensor, b: Tensor, factor: float) -> Optional[tuple]:
        """ALiBi's reach for scores ``a @ b^T`` (:mod:`._alibi_reach`), or None where it would leave
        out less than ``MIN_SAVING`` of the blocks (measured at (4, 8, 512, 64): a reach that
        left out 1 block in 80 cost 0.5 ms of 9, the norms and a per-head block mask)."""
        if not call.finite or not _alibi_reach.applies(call):
            return None
        base = sum(self.block_mask(call)[3])
        if sum(self.block_mask(call, _alibi_reach.floor(call))[3]) > (1 - MIN_SAVING) * base:
            return None  # not even scores of 0 would leave enough out: the norms need not be read
        reach = _alibi_reach.reach(call, a, b, factor)
        if reach is None or sum(self.block_mask(call, reach)[3]) > (1 - MIN_SAVING) * base:
            return None
        return reach

    def _cached(self, key, make: Callable, store: Optional[collections.OrderedDict] = None,
                limit: Optional[int] = None) -> tuple:
        """``make()``, kept under ``key`` (None: not kept) in ``store`` (the block masks unless
        given), the least recently used dropped past ``limit`` (``cached_masks`` unless given).
        What is kept must hold the rule, whose tensors its fingerprint names by id: alive, their
        ids cannot be taken by new tensors."""
        store = self._masks if store is None else store
        with self._lock:
            hit = store.get(key) if key is not None else None
            if hit is not None:
                store.move_to_end(key)
                return hit
        made = make()
        if key is not None:
            with self._lock:
                store[key] = made
                while len(store) > (self.cached_masks if limit is None else limit):
                    store.popitem(last=False)
        return made

    def _near(self, call: AttentionCall, grids: tuple, w: tuple, size: int) -> tuple:
        near = _alibi_reach.band(call, w, size)
        some, full = grids
        return some & near, full & near

    def _grids(self, call: AttentionCall, fn: Callable, n: int) -> tuple:
        """(made, some, full): the block mask made with blocks of ``n``, and the (B|1, H|1, nq, nk)
        grids of blocks with some key allowed and with every key allowed."""
        nq, nk = -(-call.L // n), -(-call.S // n)
        if not call.has_rule_mask:  # fn allows everything: every block full but a last one past S
            some = torch.ones(1, 1, nq, nk, dtype=torch.bool)
            full = some.clone()
            if call.S % n:
                full[..., -1] = False
            return _made((some, full), fn, call, n), some, full
        any_rows, all_rows = [], []
        for r in range(nq):
            i0, i1 = r * n, min(call.L, (r + 1) * n)
            lo, hi = call.key_span(i0, i1)
            some = torch.zeros(1, 1, nk, dtype=torch.bool)
            every = torch.zeros(1, 1, nk, dtype=torch.bool)
            if hi > lo:
                k0, k1 = lo // n, -(-hi // n)
                j1 = min(call.S, k1 * n)
                ok = call.allowed(i0, i1, k0 * n, j1)  # (B|1, H|1, rows, keys)
                pad = k1 * n - j1
                if pad:  # keys past S: never full (Flex masks them itself), nothing to attend
                    ok = torch.nn.functional.pad(ok, (0, pad), value=False)
                ok = ok.unflatten(-1, (k1 - k0, n))  # (B|1, H|1, rows, blocks, n)
                some = some.expand(*ok.shape[:2], nk).clone()
                every = every.expand(*ok.shape[:2], nk).clone()
                some[..., k0:k1] = ok.any(-1).any(-2)
                every[..., k0:k1] = ok.all(-1).all(-2)
                if pad:  # the last block holds keys past S: Flex must mask it
                    every[..., k1 - 1] = False
            any_rows.append(some)
            all_rows.append(every)
        shape = torch.broadcast_shapes(*(t.shape for t in any_rows))
        some = torch.stack([t.expand(shape) for t in any_rows], dim=2)  # (B|1, H|1, nq, nk)
        full = torch.stack([t.expand(shape) for t in all_rows], dim=2)
        return _made((some, full), fn, call, n), some, full

    # ---- running -----------------------------------------------------------------------------
    def run(self, call: AttentionCall) -> tuple[Tensor, Optional[Tensor]]:
        a, b, factor = call.score.as_dot(call.query, call.key)
        v, mod, heads = call.value, call.score_mod, None
        reach = self._reach(call, a, b, factor)
        blocks = self.block_mask(call, reach)
        if reach is not None:  # steep heads keep few blocks: spread the heads evenly over the threads
            heads = _alibi_reach.balanced(call, torch.tensor(blocks[3]), torch.get_num_threads())
        if heads is not None:
            kv = heads[:: call.groups] // call.groups
            a, b, v, mod = a[:, heads], b[:, kv], v[:, kv], _alibi_reach.permuted(mod, heads)
            blocks = self.block_mask(call, tuple(reach[h] for h in heads.tolist()))
        prog = P.compiled("flex", _key(call, self.size(call)), _program)
        with torch.no_grad():
            # (detached: inputs that require grad, under no_grad or inference_mode, make FlexAttention refuse)
            out = prog(a.detach().contiguous(), b.detach().contiguous(), v.detach().contiguous(), mod,
                       blocks[0] if blocks is not None else None, float(call.scale * factor), call.Hq != call.Hkv)
        if heads is not None:
            out = out[:, torch.argsort(heads)]
        return out, None


# ---- helpers -----------------------------------------------------------------------------------
def _mask_fn(call: AttentionCall) -> Optional[Callable]:
    """The call's mask rules as one mask_mod (the ``causal`` and ``window`` flags as rules)."""
    terms = []
    if call.causal:
        terms.append(Causal().bind(call.L, call.S))
    if call.window is not None:
        terms.append(Window(*call.window).bind(call.L, call.S))
    if call.mask_mod is not None:
        terms.append(call.mask_mod)
    if not terms and _alibi_reach.applies(call):
        terms.append(Window(None, None).bind(call.L, call.S))  # allows every key; ALiBi's reach leaves blocks out
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else And(tuple(terms)).bind(call.L, call.S)


def _fingerprint(fn) -> Optional[tuple]:
    """What a mask rule is made of: its class (the object, not its name: a class of one's own
    named like attend's, or defined again in a notebook, got the other's cached mask), with its
    tensors by (identity, version); None for a rule function of one's own (its closure cannot be
    compared)."""
    if not isinstance(fn, Rule):
        return None
    parts = [type(fn)]
    for f in dataclasses.fields(fn):
        x = getattr(fn, f.name)
        if isinstance(x, Tensor):
            if x.is_inference():  # no version to tell a change in place by: build the mask anew
                return None
            parts.append(("tensor", id(x), x._version, tuple(x.shape), str(x.dtype)))
        elif isinstance(x, tuple):
            inner = tuple(_fingerprint(m) for m in x)
            if any(p is None for p in inner):
                return None
            parts.append(inner)
        elif x is None or isinstance(x, (int, float, str, bool)):
            parts.append(x)
        else:
            return None
    return tuple(parts)


def _made(grids: tuple, fn: Callable, call: AttentionCall, n: int) -> tuple:
    """``(BlockMask, masked blocks, full blocks per sequence and head, blocks computed per query
    head over the sequences)`` from the grids."""
    some, full = grids
    partial = some & ~full
    mask = BlockMask.from_kv_blocks(*_indices(partial), *_indices(full), BLOCK_SIZE=n, mask_mod=fn,
                                    seq_lengths=(call.L, call.S))
    per = some.shape[0] * some.shape[1]
    heads = some.sum((2, 3)).expand(call.B, call.Hq).sum(0)  # a grid shared by sequences or heads counts for each
    return mask, int(partial.sum()) // per, int(full.sum()) // per, tuple(float(x) for x in heads.tolist())


def _indices(grid: Tensor) -> tuple[Tensor, Tensor]:
    """(counts (..., nq), indices (..., nq, nk)) of the True blocks of each row, in order."""
    counts = grid.sum(-1, dtype=torch.int32)
    order = torch.argsort((~grid).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts.contiguous(), order.contiguous()


def _key(call: AttentionCall, size: int) -> tuple:
    fn = _mask_fn(call)

    def what(f):
        if f is None:
            return None
        if isinstance(f, Rule):
            if hasattr(f, "mods"):
                return tuple(what(m) for m in f.mods)
            # a float field (soft-capping's cap) in the key: a program per value, compiled with it fixed
            # (compiled again for a new cap, dynamo made the float dynamic and FlexAttention's CPU
            # lowering failed with "unbacked_bindings", torch 2.13)
            floats = tuple(getattr(f, x.name) for x in dataclasses.fields(f) if type(getattr(f, x.name)) is float)
            return (type(f).__name__,) + floats if floats else type(f).__name__
        return getattr(getattr(f, "fn", f), "__code__", None) or type(f)

    # one program per head count: FlexAttention's CPU template, recompiled with the head count
    # dynamic after a call with another, made C++ that does not compile (torch 2.13: an
    # undeclared ``cur_qSplitSize1``); within one head count, lengths and batch may vary
    # and one per block size, which the compiled kernel fixes (BlockMask holds it as a constant)
    return (str(call.query.dtype), call.Hq, call.Hkv, what(call.score_mod), what(fn), size)


def _name(fn) -> str:
    return repr(fn) if isinstance(fn, Rule) else getattr(fn, "__name__", type(fn).__name__)
