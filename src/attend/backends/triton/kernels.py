"""Fused attention kernels in Triton, in the FlashAttention-2 manner (Dao 2023).

Shape legend (what the launchers receive; strides are passed, so any layout works)::

    q (B, Hq, L, E)   k (B, Hkv, S, E)   v (B, Hkv, S, Ev)   o (B, Hq, L, Ev)
    lse (B, Hq, L) float32, log2 units: log2(sum_j 2^(s_ij·log2 e)); -inf for a row with no key

Kernels, one program per (block of rows, batch·head):

- ``_fwd``: online softmax over key blocks in fp32; writes the output and the log-sum-exp.
  With ``COMPUTE_OUT=False`` it only computes the log-sum-exp (cheap weights of chosen
  rows/heads), and it can gather rows/heads through index arrays.
- ``_bwd_dkdv``: one program per key block and key/value head; walks the query blocks
  of every query head of its group, recomputing the probabilities from the saved
  log-sum-exp, so dK and dV are summed in registers, without atomics. With
  ``ATOMIC_DQ`` it also adds each block's dS·K to an fp32 dQ accumulator by atomics
  (FlashAttention-2's backward: five products per block instead of the two kernels'
  seven, but dQ's sums in an order that varies from run to run); then ``_bwd_dq`` is
  not launched.
- ``_bwd_dq``: one program per query block; also writes dS for a bias that needs a
  gradient, and adds the relative-position table's gradient (the only atomics). For
  those, with 16-bit inputs, it first computes the softmax backward's row term exactly
  (``EXACT_DELTA``) and the dK/dV kernel, launched after it, reuses it.
- ``_weights``: the exact probabilities ``2^(s·log2 e - lse)`` from the saved log-sum-exp.
- ``_key_totals``: per-key sums of the probabilities over the query rows.

The rules come as two grouped arguments that every kernel and helper passes on whole
(:func:`attend.backends.triton.plan.kernel_args` builds them from the plan): ``R``, the
runtime values (``R.MASK``, ``R.LENS``, ``R.WL``, ``R.CHUNK``, ... pointers, strides and
sizes), and ``F``, a constexpr tuple of flags (``F.IS_CAUSAL``, ``F.HAS_CHUNK``, ``F.MOD``,
...), so each combination of rules compiles its own kernel with the others left out. A new
rule adds its entries to both and its terms where they are read: ``_scores`` and the ranges.

Every score follows one definition (``_scores``), the same as attend's contract: scale ·
q·k, then the score_mod (ALiBi, soft-capping or a relative-position table), then the
additive bias, then every mask rule (AND) as -inf. Key blocks that the rule masks
(causal, sliding window, key lengths, sorted document ids, prefix-LM, chunks) rule out entirely
are never loaded (``_key_range`` / ``_query_range``); inside the blocks that remain the
rules are applied element by element, so the ranges only ever save work.

``TMA=True`` (a constexpr the autotuner sets per config) loads the inner loop's tiles
through per-head 2-D tensor descriptors made in the kernel (Hopper's tensor-memory
accelerator; zeros past the ends, so no masks), and dK/dV its own K/V block too.
``TUNE_L``, ``TUNE_S`` and ``TMA_OK`` are never read by the kernels: they are there for the
autotuner's key (lengths rounded up to a power of two; whether TMA can read the inputs).
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
BIG = tl.constexpr(1 << 30)


@triton.jit
def _tanh(x):
    # tanh from exp: portable (GPU and interpreter); saturates to +-1 for large |x|
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _dot(a, b, DOT_PREC: tl.constexpr):
    """``a @ b`` accumulated in fp32. ``DOT_PREC="upcast"`` multiplies in fp32: Triton's CPU
    interpreter gets bfloat16 products wrong (seen with triton 3.9.0), so tests use that."""
    if DOT_PREC == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=DOT_PREC)


@triton.jit
def _key_range(pos_lo, pos_hi, off_b, S, R, F: tl.constexpr):
    """Keys [lo, hi) that queries at key positions pos_lo..pos_hi may reach under the rules."""
    lo = pos_lo * 0
    hi = pos_lo * 0 + S
    if F.IS_CAUSAL:
        hi = tl.minimum(hi, pos_hi + 1)
    if F.HAS_WR:
        hi = tl.minimum(hi, pos_hi + R.WR + 1)
    if F.HAS_WL:
        lo = tl.maximum(lo, pos_lo - R.WL)
    if F.HAS_LENS:
        hi = tl.minimum(hi, tl.load(R.LENS + off_b))
    if F.DOC_SKIP:
        lo = tl.maximum(lo, tl.load(R.DOC_LO + off_b * R.sdocb + tl.maximum(pos_lo, 0)))
        hi = tl.minimum(hi, tl.load(R.DOC_HI + off_b * R.sdocb + tl.maximum(pos_hi, 0)))
    if F.HAS_PREFIX:
        hi = tl.minimum(hi, tl.maximum(tl.load(R.PREFIX + off_b), pos_hi + 1))
    if F.HAS_CHUNK:  # the chunks of the first and last positions (none below position 0)
        lo = tl.maximum(lo, (tl.maximum(pos_lo, 0) // R.CHUNK) * R.CHUNK)
        hi = tl.where(pos_hi < 0, 0, tl.minimum(hi, (tl.maximum(pos_hi, 0) // R.CHUNK + 1) * R.CHUNK))
    return tl.maximum(lo, 0), hi


@triton.jit
def _query_range(n_lo, n_hi, off_b, L, OFF, R, F: tl.constexpr):
    """Query rows [lo, hi) that may reach any key n_lo..n_hi under the rules."""
    lo = n_lo * 0
    hi = n_lo * 0 + L
    if F.IS_CAUSAL:  # j <= i + OFF
        lo = tl.maximum(lo, n_lo - OFF)
    if F.HAS_WR:  # j <= i + OFF + WR
        lo = tl.maximum(lo, n_lo - R.WR - OFF)
    if F.HAS_WL:  # j >= i + OFF - WL
        hi = tl.minimum(hi, n_hi + R.WL - OFF + 1)
    if F.HAS_LENS:
        hi = tl.where(n_lo >= tl.load(R.LENS + off_b), lo, hi)
    if F.DOC_SKIP:  # only used when OFF >= 0: query i is at key position i + OFF
        lo = tl.maximum(lo, tl.load(R.DOC_LO + off_b * R.sdocb + n_lo) - OFF)
        hi = tl.minimum(hi, tl.load(R.DOC_HI + off_b * R.sdocb + n_hi) - OFF)
    if F.HAS_PREFIX:  # j < prefix or j <= i + OFF
        lo = tl.where(n_lo < tl.load(R.PREFIX + off_b), lo, tl.maximum(lo, n_lo - OFF))
    if F.HAS_CHUNK:  # rows whose position is in the chunks of keys n_lo..n_hi
        lo = tl.maximum(lo, (n_lo // R.CHUNK) * R.CHUNK - OFF)
        hi = tl.minimum(hi, (n_hi // R.CHUNK + 1) * R.CHUNK - OFF)
    return tl.maximum(lo, 0), hi


@triton.jit
def _key_full(pos_lo, pos_hi, off_b, S, R, F: tl.constexpr, ELEMENTWISE: tl.constexpr):
    """Keys [lo, hi) that *every* query at key positions pos_lo..pos_hi may reach: blocks in
    there need no mask. Empty when an element-wise rule (dense mask, key mask, documents) is on."""
    lo = pos_lo * 0
    hi = pos_lo * 0 + S
    if F.IS_CAUSAL:
        hi = tl.minimum(hi, pos_lo + 1)
    if F.HAS_WR:
        hi = tl.minimum(hi, pos_lo + R.WR + 1)
    if F.HAS_WL:
        lo = tl.maximum(lo, pos_hi - R.WL)
    if F.HAS_LENS:
        hi = tl.minimum(hi, tl.load(R.LENS + off_b))
    if F.HAS_PREFIX:
        hi = tl.minimum(hi, tl.maximum(tl.load(R.PREFIX + off_b), pos_lo + 1))
    if F.HAS_CHUNK:  # all rows in one chunk: its keys; otherwise none
        c = tl.maximum(pos_lo, 0) // R.CHUNK
        one = (pos_lo >= 0) & (c == tl.maximum(pos_hi, 0) // R.CHUNK)
        lo = tl.maximum(lo, c * R.CHUNK)
        hi = tl.where(one, tl.minimum(hi, (c + 1) * R.CHUNK), lo)
    if ELEMENTWISE:
        hi = lo
    return tl.maximum(lo, 0), hi


@triton.jit
def _query_full(n_lo, n_hi, off_b, L, OFF, R, F: tl.constexpr, ELEMENTWISE: tl.constexpr):
    """Query rows [lo, hi) that reach *every* key n_lo..n_hi: blocks in there need no mask."""
    lo = n_lo * 0
    hi = n_lo * 0 + L
    if F.IS_CAUSAL:  # n_hi <= i + OFF
        lo = tl.maximum(lo, n_hi - OFF)
    if F.HAS_WR:
        lo = tl.maximum(lo, n_hi - R.WR - OFF)
    if F.HAS_WL:  # n_lo >= i + OFF - WL
        hi = tl.minimum(hi, n_lo + R.WL - OFF + 1)
    if F.HAS_LENS:
        hi = tl.where(n_hi >= tl.load(R.LENS + off_b), lo, hi)
    if F.HAS_PREFIX:
        lo = tl.where(n_hi < tl.load(R.PREFIX + off_b), lo, tl.maximum(lo, n_hi - OFF))
    if F.HAS_CHUNK:  # all keys in one chunk: the rows positioned in it; otherwise none
        c = n_lo // R.CHUNK
        lo = tl.maximum(lo, c * R.CHUNK - OFF)
        hi = tl.where(c == n_hi // R.CHUNK, tl.minimum(hi, (c + 1) * R.CHUNK - OFF), lo)
    if ELEMENTWISE:
        hi = lo
    return tl.maximum(lo, 0), hi


@triton.jit
def _split(lo, hi, full_lo, full_hi, BLOCK: tl.constexpr):
    """Blocks of [lo, hi) as (b, c, n_before, n_masked): [b, c) lies wholly inside [full_lo,
    full_hi) and runs unmasked; the n_masked others (n_before of them below b, the rest from
    c on) run masked, in one loop (``_masked_start``), so each kernel holds two loop bodies."""
    a = (lo // BLOCK) * BLOCK
    b = tl.maximum(((full_lo + BLOCK - 1) // BLOCK) * BLOCK, a)
    c = (full_hi // BLOCK) * BLOCK
    end = tl.maximum(((hi + BLOCK - 1) // BLOCK) * BLOCK, a)
    empty = c <= b
    b = tl.where(empty, end, b)
    c = tl.where(empty, end, c)
    n_before = (b - a) // BLOCK
    return b, c, n_before, n_before + (end - c) // BLOCK


@triton.jit
def _masked_start(i, b, c, n_before, lo, BLOCK: tl.constexpr):
    """Start of the i-th masked block: below the unmasked run first, then after it."""
    return tl.where(i < n_before, (lo // BLOCK) * BLOCK + i * BLOCK, c + (i - n_before) * BLOCK)


@triton.jit
def _tile(ptr, rows, n_rows, cols, N_COLS: tl.constexpr, BLOCK_COLS: tl.constexpr, CHECK_ROWS: tl.constexpr):
    """Load a (rows, cols) tile, zero outside; no mask at all where none is needed."""
    if CHECK_ROWS:
        return tl.load(ptr, mask=(rows[:, None] < n_rows) & (cols[None, :] < N_COLS), other=0.0)
    elif N_COLS == BLOCK_COLS:
        return tl.load(ptr)
    else:
        return tl.load(ptr, mask=cols[None, :] < N_COLS, other=0.0)


@triton.jit
def _scores(q, k, offs_m, row_ok, offs_n, off_b, off_h, S, OFF, sm_scale, R, F: tl.constexpr, DOT_PREC: tl.constexpr,
            MASKED: tl.constexpr):
    """Final scores (BLOCK_M, BLOCK_N) in fp32 and log2 units (x log2 e), -inf where masked; and
    the score after the score_mod in natural units (soft-capping's backward needs it).
    ``MASKED=False``: a block every rule allows whole (``_key_full``/``_query_full``), all keys
    < S: no rule is evaluated."""
    jj = offs_n[None, :]
    pp = (offs_m + OFF)[:, None]  # key position of each query row
    if (F.MOD == 0) and (not F.HAS_BIAS):
        s = _dot(q, tl.trans(k), DOT_PREC) * (sm_scale * LOG2E)  # one multiply: scale and units
        t = s
    else:
        s = _dot(q, tl.trans(k), DOT_PREC) * sm_scale
        if F.MOD == 1:  # ALiBi: - slope[h] * |i' - j|
            s = s - tl.load(R.SLOPES + off_h) * tl.abs(pp - jj).to(tl.float32)
        if F.MOD == 2:  # soft-capping: cap * tanh(s / cap)
            s = R.cap * _tanh(s / R.cap)
        if F.MOD == 3:  # relative-position table, clipped to [-R, R]
            rel = tl.minimum(tl.maximum(jj - pp, -R.REL_R), R.REL_R) + R.REL_R
            s = s + tl.load(R.TABLE + off_h * R.stabh + rel)
        t = s
        if F.HAS_BIAS:
            in_tile = row_ok[:, None] & (jj < S)
            b = tl.load(R.BIAS + off_b * R.sbb + off_h * R.sbh + offs_m[:, None] * R.sbm + jj * R.sbn, mask=in_tile,
                        other=0.0)
            s = s + b.to(tl.float32)
        s = s * LOG2E
    if MASKED:
        ok = row_ok[:, None] & (jj < S)
        if F.IS_CAUSAL:
            ok = ok & (jj <= pp)
        if F.HAS_WL:
            ok = ok & (jj >= pp - R.WL)
        if F.HAS_WR:
            ok = ok & (jj <= pp + R.WR)
        if F.HAS_LENS:
            ok = ok & (jj < tl.load(R.LENS + off_b))
        if F.HAS_KVALID:
            kv = tl.load(R.KVALID + off_b * R.skvb + offs_n, mask=offs_n < S, other=0)
            ok = ok & (kv[None, :] != 0)
        if F.HAS_DOC:
            dq = tl.load(R.DOC + off_b * R.sdocb + tl.maximum(offs_m + OFF, 0), mask=row_ok, other=-1)
            dk = tl.load(R.DOC + off_b * R.sdocb + offs_n, mask=offs_n < S, other=-2)
            ok = ok & (dq[:, None] == dk[None, :])
        if F.HAS_PREFIX:
            ok = ok & ((jj < tl.load(R.PREFIX + off_b)) | (jj <= pp))
        if F.HAS_CHUNK:
            ok = ok & (pp >= 0) & (tl.maximum(pp, 0) // R.CHUNK == jj // R.CHUNK)
        if F.HAS_MASK:
            mv = tl.load(R.MASK + off_b * R.smb + off_h * R.smh + offs_m[:, None] * R.smm + jj * R.smn, mask=ok,
                         other=0)
            ok = ok & (mv != 0)
        s = tl.where(ok, s, float("-inf"))
    return s, t


@triton.jit
def _row_block(ROWS, HEADS, n_rows, n_heads, GROUPS, HAS_ROWS: tl.constexpr, HAS_HEADS: tl.constexpr,
               BLOCK_M: tl.constexpr):
    """This program's batch, head (gathered through HEADS if given), key/value head, and rows
    (gathered through ROWS if given): (off_b, off_hh, off_h, off_kh, offs_r, row_ok, offs_m)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // n_heads
    off_hh = pid_bh % n_heads
    if HAS_HEADS:
        off_h = tl.load(HEADS + off_hh)
    else:
        off_h = off_hh
    offs_r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_r < n_rows
    if HAS_ROWS:
        offs_m = tl.load(ROWS + offs_r, mask=row_ok, other=0)
    else:
        offs_m = offs_r
    return off_b, off_hh, off_h, off_h // GROUPS, offs_r, row_ok, offs_m


@triton.jit
def _pos_span(offs_m, row_ok, OFF):
    """Key positions of the first and last valid query rows of the block."""
    pos = offs_m + OFF
    return tl.min(tl.where(row_ok, pos, BIG), 0), tl.max(tl.where(row_ok, pos, -BIG), 0)


@triton.jit
def _fwd_step(acc, m_i, l_i, start_n, q, k_base, v_base, k_desc, v_desc, skn, skd, svn, svd, offs_m, row_ok, off_b,
              off_h, S, OFF, sm_scale, R, F: tl.constexpr, E: tl.constexpr, EV: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_DV: tl.constexpr, DOT_PREC: tl.constexpr, COMPUTE_OUT: tl.constexpr, BLOCK_N: tl.constexpr,
              MASKED: tl.constexpr, TMA: tl.constexpr):
    """One key block of the online softmax: the running (acc, max, sum) updated. ``TMA``: K and
    V tiles come through tensor descriptors (Hopper's copy engine; zeros past S and E)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    if TMA:
        k = k_desc.load([start_n, 0])
    else:
        k = _tile(k_base + offs_n[:, None] * skn + offs_d[None, :] * skd, offs_n, S, offs_d, E, BLOCK_D, MASKED)
    s, t = _scores(q, k, offs_m, row_ok, offs_n, off_b, off_h, S, OFF, sm_scale, R, F, DOT_PREC, MASKED)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED or F.HAS_BIAS or (F.MOD != 0):  # a bias or table may hold -inf too
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key so far
    else:
        m_safe = m_new  # plain dot scores of a whole block: finite for finite inputs
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    if COMPUTE_OUT:
        offs_dv = tl.arange(0, BLOCK_DV)
        if TMA:
            v = v_desc.load([start_n, 0])
        else:
            v = _tile(v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd, offs_n, S, offs_dv, EV, BLOCK_DV,
                      MASKED)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PREC)
    return acc, m_new, l_i


@triton.jit
def _fwd(Q, K, V, O, LSE, sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod, ROWS, HEADS,
         n_rows, n_heads, L, S, OFF, GROUPS, sm_scale, R, F: tl.constexpr, TUNE_L, TUNE_S, TMA_OK, E: tl.constexpr,
         EV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_PREC: tl.constexpr,
         HAS_ROWS: tl.constexpr, HAS_HEADS: tl.constexpr, COMPUTE_OUT: tl.constexpr, BLOCK_M: tl.constexpr,
         BLOCK_N: tl.constexpr, TMA: tl.constexpr):
    off_b, off_hh, off_h, off_kh, offs_r, row_ok, offs_m = _row_block(ROWS, HEADS, n_rows, n_heads, GROUPS,
                                                                      HAS_ROWS, HAS_HEADS, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + off_b.to(tl.int64) * sqb + off_h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d[None, :] < E), other=0.0)
    pos_lo, pos_hi = _pos_span(offs_m, row_ok, OFF)
    lo, hi = _key_range(pos_lo, pos_hi, off_b, S, R, F)
    full_lo, full_hi = _key_full(pos_lo, pos_hi, off_b, S, R, F, F.HAS_KVALID or F.HAS_DOC or F.HAS_MASK)
    b, c, n_before, n_masked = _split(lo, hi, full_lo, full_hi, BLOCK_N)
    k_base = K + off_b.to(tl.int64) * skb + off_kh * skh
    v_base = V + off_b.to(tl.int64) * svb + off_kh * svh
    if TMA:  # one descriptor per program, over its own head: rows past S and columns past E read 0
        k_desc = tl.make_tensor_descriptor(k_base, shape=[S, E], strides=[skn, 1], block_shape=[BLOCK_N, BLOCK_D])
        v_desc = tl.make_tensor_descriptor(v_base, shape=[S, EV], strides=[svn, 1], block_shape=[BLOCK_N, BLOCK_DV])
    else:
        k_desc = k_base
        v_desc = v_base
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    # blocks every rule allows whole first (no mask evaluated), then the boundary blocks
    for start_n in range(b, c, BLOCK_N):
        acc, m_i, l_i = _fwd_step(acc, m_i, l_i, start_n, q, k_base, v_base, k_desc, v_desc, skn, skd, svn, svd,
                                  offs_m, row_ok, off_b, off_h, S, OFF, sm_scale, R, F, E, EV, BLOCK_D, BLOCK_DV,
                                  DOT_PREC, COMPUTE_OUT, BLOCK_N, False, TMA)
    for i in range(0, n_masked):
        start_n = _masked_start(i, b, c, n_before, lo, BLOCK_N)
        acc, m_i, l_i = _fwd_step(acc, m_i, l_i, start_n, q, k_base, v_base, k_desc, v_desc, skn, skd, svn, svd,
                                  offs_m, row_ok, off_b, off_h, S, OFF, sm_scale, R, F, E, EV, BLOCK_D, BLOCK_DV,
                                  DOT_PREC, COMPUTE_OUT, BLOCK_N, True, TMA)
    dead = l_i == 0.0
    lse = tl.where(dead, float("-inf"), m_i + tl.log2(tl.where(dead, 1.0, l_i)))
    tl.store(LSE + (off_b.to(tl.int64) * n_heads + off_hh) * n_rows + offs_r, lse, mask=row_ok)
    if COMPUTE_OUT:
        o = acc / tl.where(dead, 1.0, l_i)[:, None]
        o = tl.where(dead[:, None], 0.0, o)  # a row with no key: exactly zero
        tl.store(O + off_b.to(tl.int64) * sob + off_h * soh + offs_m[:, None] * som + offs_dv[None, :] * sod,
                 o.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < EV))


@triton.jit
def _delta(O, DO, DELTA, sob, soh, som, sod, sdob, sdoh, sdom, sdod, H, L,
           EV: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta_i = sum_d dO_id · O_id (fp32): the row term of the softmax backward."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // H
    off_h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    msk = (offs_m[:, None] < L) & (offs_dv[None, :] < EV)
    o = tl.load(O + off_b.to(tl.int64) * sob + off_h * soh + offs_m[:, None] * som + offs_dv[None, :] * sod,
                mask=msk, other=0.0)
    do = tl.load(DO + off_b.to(tl.int64) * sdob + off_h * sdoh + offs_m[:, None] * sdom + offs_dv[None, :] * sdod,
                 mask=msk, other=0.0)
    d = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * L + offs_m, d, mask=offs_m < L)


@triton.jit
def _dkdv_step(dk, dv, start_m, k, v, q_base, do_base, q_desc, do_desc, dq_desc, row_base, LSE, DELTA, DQ_ACC, sqm,
               sqd, sdom, sdod, offs_n, L, off_b, off_h, S, OFF, sm_scale, R, F: tl.constexpr, E: tl.constexpr,
               EV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_PREC: tl.constexpr,
               BLOCK_M: tl.constexpr, MASKED: tl.constexpr, TMA: tl.constexpr, ATOMIC_DQ: tl.constexpr):
    """One query block's contribution to this key block's dK, dV (and with ``ATOMIC_DQ``, this
    key block's contribution to the query block's dQ, added to DQ_ACC). Rows past L load
    zeros and an infinite log-sum-exp, so they add nothing, masked or not; key columns past S
    are never stored (their K rows load as zeros, so they add nothing to dQ either)."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < L
    if TMA:
        q = q_desc.load([start_m, 0])
        do = do_desc.load([start_m, 0])
    else:
        q = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                    mask=row_ok[:, None] & (offs_d[None, :] < E), other=0.0)
        do = tl.load(do_base + offs_m[:, None] * sdom + offs_dv[None, :] * sdod,
                     mask=row_ok[:, None] & (offs_dv[None, :] < EV), other=0.0)
    lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)  # a row with no key: p = 0
    delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
    s, t = _scores(q, k, offs_m, row_ok, offs_n, off_b, off_h, S, OFF, sm_scale, R, F, DOT_PREC, MASKED)
    p = tl.exp2(s - lse[:, None])  # (BLOCK_M, BLOCK_N)
    dv += _dot(tl.trans(p.to(do.dtype)), do, DOT_PREC)
    dp = _dot(do, tl.trans(v), DOT_PREC)
    ds = p * (dp - delta[:, None])
    if F.MOD == 2:
        ds = ds * (1.0 - (t / R.cap) * (t / R.cap))
    dk += _dot(tl.trans(ds.to(q.dtype)), q, DOT_PREC)
    if ATOMIC_DQ:  # dQ here too (FlashAttention-2's way): one product instead of the dQ kernel's three
        dq = _dot(ds.to(k.dtype), k, DOT_PREC) * sm_scale
        if TMA:  # a reduction by the copy engine: no address per element (rows past L are not written)
            dq_desc.atomic_add([start_m, 0], dq)
        else:
            tl.atomic_add(DQ_ACC + (row_base + offs_m[:, None]) * E + offs_d[None, :], dq,
                          mask=row_ok[:, None] & (offs_d[None, :] < E), sem="relaxed")
    return dk, dv


@triton.jit
def _bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC, sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
              sdob, sdoh, sdom, sdod, sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd, Hq, Hkv, L, S, OFF, GROUPS,
              sm_scale, R, F: tl.constexpr, TUNE_L, TUNE_S, TMA_OK, E: tl.constexpr, EV: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_PREC: tl.constexpr, ATOMIC_DQ: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // Hkv
    off_kh = pid_bh % Hkv
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if TMA:  # K/V through descriptors too: at sm_90 that needs fewer registers (GPU-NOTES, version 3)
        k_desc = tl.make_tensor_descriptor(K + off_b.to(tl.int64) * skb + off_kh * skh, shape=[S, E],
                                           strides=[skn, 1], block_shape=[BLOCK_N, BLOCK_D])
        v_desc = tl.make_tensor_descriptor(V + off_b.to(tl.int64) * svb + off_kh * svh, shape=[S, EV],
                                           strides=[svn, 1], block_shape=[BLOCK_N, BLOCK_DV])
        k = k_desc.load([pid_n * BLOCK_N, 0])
        v = v_desc.load([pid_n * BLOCK_N, 0])
    else:
        k = tl.load(K + off_b.to(tl.int64) * skb + off_kh * skh + offs_n[:, None] * skn + offs_d[None, :] * skd,
                    mask=(offs_n[:, None] < S) & (offs_d[None, :] < E), other=0.0)
        v = tl.load(V + off_b.to(tl.int64) * svb + off_kh * svh + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                    mask=(offs_n[:, None] < S) & (offs_dv[None, :] < EV), other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    n_lo = pid_n * BLOCK_N
    n_hi = tl.minimum(n_lo + BLOCK_N, S) - 1
    lo, hi = _query_range(n_lo, n_hi, off_b, L, OFF, R, F)
    full_lo, full_hi = _query_full(n_lo, n_hi, off_b, L, OFF, R, F, F.HAS_KVALID or F.HAS_DOC or F.HAS_MASK)
    b, c, n_before, n_masked = _split(lo, hi, full_lo, full_hi, BLOCK_M)
    for g in range(0, GROUPS):
        off_h = off_kh * GROUPS + g
        q_base = Q + off_b.to(tl.int64) * sqb + off_h * sqh
        do_base = DO + off_b.to(tl.int64) * sdob + off_h * sdoh
        if TMA:  # Q and dO tiles of this head through descriptors: zeros past L, E and EV
            q_desc = tl.make_tensor_descriptor(q_base, shape=[L, E], strides=[sqm, 1], block_shape=[BLOCK_M, BLOCK_D])
            do_desc = tl.make_tensor_descriptor(do_base, shape=[L, EV], strides=[sdom, 1],
                                                block_shape=[BLOCK_M, BLOCK_DV])
        else:
            q_desc = q_base
            do_desc = do_base
        row_base = (off_b.to(tl.int64) * Hq + off_h) * L
        if TMA and ATOMIC_DQ:  # this head's rows of the fp32 dQ accumulator (B, Hq, L, E)
            dq_desc = tl.make_tensor_descriptor(DQ_ACC + row_base * E, shape=[L, E], strides=[E, 1],
                                                block_shape=[BLOCK_M, BLOCK_D])
        else:
            dq_desc = DQ_ACC
        for start_m in range(b, c, BLOCK_M):  # query blocks that see every key of this block: no mask
            dk, dv = _dkdv_step(dk, dv, start_m, k, v, q_base, do_base, q_desc, do_desc, dq_desc, row_base, LSE, DELTA,
                                DQ_ACC, sqm, sqd, sdom, sdod, offs_n, L, off_b, off_h, S, OFF, sm_scale, R, F, E, EV,
                                BLOCK_D, BLOCK_DV, DOT_PREC, BLOCK_M, False, TMA, ATOMIC_DQ)
        for i in range(0, n_masked):
            start_m = _masked_start(i, b, c, n_before, lo, BLOCK_M)
            dk, dv = _dkdv_step(dk, dv, start_m, k, v, q_base, do_base, q_desc, do_desc, dq_desc, row_base, LSE, DELTA,
                                DQ_ACC, sqm, sqd, sdom, sdod, offs_n, L, off_b, off_h, S, OFF, sm_scale, R, F, E, EV,
                                BLOCK_D, BLOCK_DV, DOT_PREC, BLOCK_M, True, TMA, ATOMIC_DQ)
    dk = dk * sm_scale
    tl.store(DK + off_b.to(tl.int64) * sdkb + off_kh * sdkh + offs_n[:, None] * sdkn + offs_d[None, :] * sdkd,
             dk.to(DK.dtype.element_ty), mask=(offs_n[:, None] < S) & (offs_d[None, :] < E))
    tl.store(DV + off_b.to(tl.int64) * sdvb + off_kh * sdvh + offs_n[:, None] * sdvn + offs_dv[None, :] * sdvd,
             dv.to(DV.dtype.element_ty), mask=(offs_n[:, None] < S) & (offs_dv[None, :] < EV))


@triton.jit
def _dq_step(dq, start_n, q, do, lse, delta, k_base, v_base, k_desc, v_desc, skn, skd, svn, svd, offs_m, row_ok, off_b,
             off_h, pid_bh, L, S, OFF, sm_scale, R, F: tl.constexpr, DBIAS, DTABLE, E: tl.constexpr, EV: tl.constexpr,
             BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_PREC: tl.constexpr, BIAS_GRAD: tl.constexpr,
             TABLE_GRAD: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, TMA: tl.constexpr):
    """One key block's contribution to this query block's dQ (and dS for a bias or table)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if TMA:
        k = k_desc.load([start_n, 0])
        v = v_desc.load([start_n, 0])
    else:
        k = _tile(k_base + offs_n[:, None] * skn + offs_d[None, :] * skd, offs_n, S, offs_d, E, BLOCK_D, MASKED)
        v = _tile(v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd, offs_n, S, offs_dv, EV, BLOCK_DV, MASKED)
    s, t = _scores(q, k, offs_m, row_ok, offs_n, off_b, off_h, S, OFF, sm_scale, R, F, DOT_PREC, MASKED)
    p = tl.exp2(s - lse[:, None])
    dp = _dot(do, tl.trans(v), DOT_PREC)
    ds = p * (dp - delta[:, None])  # gradient of the final score
    in_tile = row_ok[:, None] & (offs_n[None, :] < S)
    if BIAS_GRAD:
        tl.store(DBIAS + (pid_bh.to(tl.int64) * L + offs_m[:, None]) * S + offs_n[None, :], ds, mask=in_tile)
    if TABLE_GRAD:
        rel = tl.minimum(tl.maximum(offs_n[None, :] - (offs_m + OFF)[:, None], -R.REL_R), R.REL_R) + R.REL_R
        tl.atomic_add(DTABLE + off_h * R.stabh + rel, ds, mask=in_tile & (p > 0))
    if F.MOD == 2:
        ds = ds * (1.0 - (t / R.cap) * (t / R.cap))
    dq += _dot(ds.to(k.dtype), k, DOT_PREC)
    return dq


@triton.jit
def _bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, DBIAS, DTABLE, sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
            sdob, sdoh, sdom, sdod, sdqb, sdqh, sdqm, sdqd, Hq, L, S, OFF, GROUPS, sm_scale, R, F: tl.constexpr,
            TUNE_L, TUNE_S, TMA_OK, E: tl.constexpr, EV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
            DOT_PREC: tl.constexpr, BIAS_GRAD: tl.constexpr, TABLE_GRAD: tl.constexpr, EXACT_DELTA: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // Hq
    off_h = pid_bh % Hq
    off_kh = off_h // GROUPS
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < L
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + off_b.to(tl.int64) * sqb + off_h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d[None, :] < E), other=0.0)
    do = tl.load(DO + off_b.to(tl.int64) * sdob + off_h * sdoh + offs_m[:, None] * sdom + offs_dv[None, :] * sdod,
                 mask=row_ok[:, None] & (offs_dv[None, :] < EV), other=0.0)
    row_base = pid_bh.to(tl.int64) * L
    lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    pos_lo, pos_hi = _pos_span(offs_m, row_ok, OFF)
    lo, hi = _key_range(pos_lo, pos_hi, off_b, S, R, F)
    k_base = K + off_b.to(tl.int64) * skb + off_kh * skh
    v_base = V + off_b.to(tl.int64) * svb + off_kh * svh
    if EXACT_DELTA:
        # delta_i = sum_j p_ij dp_ij from the probabilities themselves, not from the output
        # rounded to 16 bits: the bias/table gradients sum dS over many entries, where the
        # rounding error of sum_j dS_ij (zero in exact arithmetic) would pile up.
        delta = tl.zeros([BLOCK_M], tl.float32)
        for start_n in range((lo // BLOCK_N) * BLOCK_N, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :] * skd,
                        mask=(offs_n[:, None] < S) & (offs_d[None, :] < E), other=0.0)
            v = tl.load(v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                        mask=(offs_n[:, None] < S) & (offs_dv[None, :] < EV), other=0.0)
            s, t = _scores(q, k, offs_m, row_ok, offs_n, off_b, off_h, S, OFF, sm_scale, R, F, DOT_PREC, True)
            p = tl.exp2(s - lse[:, None])
            delta += tl.sum(p * _dot(do, tl.trans(v), DOT_PREC), 1)
        tl.store(DELTA + row_base + offs_m, delta, mask=row_ok)  # the dK/dV kernel, launched next, reads it
    else:
        delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
    full_lo, full_hi = _key_full(pos_lo, pos_hi, off_b, S, R, F, F.HAS_KVALID or F.HAS_DOC or F.HAS_MASK)
    b, c, n_before, n_masked = _split(lo, hi, full_lo, full_hi, BLOCK_N)
    if TMA:
        k_desc = tl.make_tensor_descriptor(k_base, shape=[S, E], strides=[skn, 1], block_shape=[BLOCK_N, BLOCK_D])
        v_desc = tl.make_tensor_descriptor(v_base, shape=[S, EV], strides=[svn, 1], block_shape=[BLOCK_N, BLOCK_DV])
    else:
        k_desc = k_base
        v_desc = v_base
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(b, c, BLOCK_N):  # key blocks every row of this block sees whole: no mask
        dq = _dq_step(dq, start_n, q, do, lse, delta, k_base, v_base, k_desc, v_desc, skn, skd, svn, svd, offs_m,
                      row_ok, off_b, off_h, pid_bh, L, S, OFF, sm_scale, R, F, DBIAS, DTABLE, E, EV, BLOCK_D, BLOCK_DV,
                      DOT_PREC, BIAS_GRAD, TABLE_GRAD, BLOCK_N, False, TMA)
    for i in range(0, n_masked):
        start_n = _masked_start(i, b, c, n_before, lo, BLOCK_N)
        dq = _dq_step(dq, start_n, q, do, lse, delta, k_base, v_base, k_desc, v_desc, skn, skd, svn, svd, offs_m,
                      row_ok, off_b, off_h, pid_bh, L, S, OFF, sm_scale, R, F, DBIAS, DTABLE, E, EV, BLOCK_D, BLOCK_DV,
                      DOT_PREC, BIAS_GRAD, TABLE_GRAD, BLOCK_N, True, TMA)
    dq = dq * sm_scale
    tl.store(DQ + off_b.to(tl.int64) * sdqb + off_h * sdqh + offs_m[:, None] * sdqm + offs_d[None, :] * sdqd,
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < E))


@triton.jit
def _weights(Q, K, LSE, W, sqb, sqh, sqm, sqd, skb, skh, skn, skd, swb, swh, swm, swn, ROWS, HEADS, n_rows, n_heads, L,
             S, OFF, GROUPS, sm_scale, R, F: tl.constexpr, TUNE_L, TUNE_S, E: tl.constexpr, BLOCK_D: tl.constexpr,
             DOT_PREC: tl.constexpr, HAS_ROWS: tl.constexpr, HAS_HEADS: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr):
    """W[b, hh, r, j] = 2^(s·log2 e - lse): the probabilities the forward used (zeros where masked)."""
    off_b, off_hh, off_h, off_kh, offs_r, row_ok, offs_m = _row_block(ROWS, HEADS, n_rows, n_heads, GROUPS,
                                                                      HAS_ROWS, HAS_HEADS, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(Q + off_b.to(tl.int64) * sqb + off_h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d[None, :] < E), other=0.0)
    lse = tl.load(LSE + (off_b.to(tl.int64) * n_heads + off_hh) * n_rows + offs_r, mask=row_ok, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    pos_lo, pos_hi = _pos_span(offs_m, row_ok, OFF)
    lo, hi = _key_range(pos_lo, pos_hi, off_b, S, R, F)
    k_base = K + off_b.to(tl.int64) * skb + off_kh * skh
    w_base = W + off_b.to(tl.int64) * swb + off_hh.to(tl.int64) * swh + offs_r[:, None].to(tl.int64) * swm
    for start_n in range(0, S, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_tile = row_ok[:, None] & (offs_n[None, :] < S)
        if (start_n + BLOCK_N > lo) & (start_n < hi):
            k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :] * skd,
                        mask=(offs_n[:, None] < S) & (offs_d[None, :] < E), other=0.0)
            s, t = _scores(q, k, offs_m, row_ok, offs_n, off_b, off_h, S, OFF, sm_scale, R, F, DOT_PREC, True)
            p = tl.exp2(s - lse[:, None])
        else:  # a block the rules rule out: zeros, no key loaded
            p = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        tl.store(w_base + offs_n[None, :] * swn, p.to(W.dtype.element_ty), mask=in_tile)


@triton.jit
def _key_totals(Q, K, LSE, T, sqb, sqh, sqm, sqd, skb, skh, skn, skd, Hq, L, S, OFF, GROUPS, sm_scale, R,
                F: tl.constexpr, TUNE_L, TUNE_S, E: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """T[b, h, j] = sum_i p_ij (fp32): how much attention key j receives from all queries of head h."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // Hq
    off_h = pid_bh % Hq
    off_kh = off_h // GROUPS
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = tl.load(K + off_b.to(tl.int64) * skb + off_kh * skh + offs_n[:, None] * skn + offs_d[None, :] * skd,
                mask=(offs_n[:, None] < S) & (offs_d[None, :] < E), other=0.0)
    n_lo = pid_n * BLOCK_N
    n_hi = tl.minimum(n_lo + BLOCK_N, S) - 1
    lo, hi = _query_range(n_lo, n_hi, off_b, L, OFF, R, F)
    q_base = Q + off_b.to(tl.int64) * sqb + off_h * sqh
    row_base = pid_bh.to(tl.int64) * L
    total = tl.zeros([BLOCK_N], tl.float32)
    for start_m in range((lo // BLOCK_M) * BLOCK_M, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < L
        q = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                    mask=row_ok[:, None] & (offs_d[None, :] < E), other=0.0)
        lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=float("inf"))
        lse = tl.where(lse == float("-inf"), float("inf"), lse)
        s, t = _scores(q, k, offs_m, row_ok, offs_n, off_b, off_h, S, OFF, sm_scale, R, F, DOT_PREC, True)
        total += tl.sum(tl.exp2(s - lse[:, None]), 0)
    tl.store(T + pid_bh.to(tl.int64) * S + offs_n, total, mask=offs_n < S)
