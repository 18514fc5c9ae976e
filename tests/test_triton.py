"""The ``triton`` backend's own tests: what its kernels compile in and how they run.

What every backend promises (the tolerance rule over scores x masks x dtypes, fully masked
rows, NaN and overflow handling, shift invariance, reruns, ...) is tested on ``triton`` by the
shared backend grid (``cases.BACKENDS``: test_backends, test_numerics, test_masks,
test_variants, test_properties, test_sinks). Here: head dims, strides, the compiled mask rules
and score_mods, whole/boundary/skipped blocks, tensor descriptors (TMA), the autotuner, the
atomic dQ, the weights kernels, refusals, torch.library/torch.compile, and full sizes on a GPU.

Without CUDA these run the real kernels through Triton's interpreter (``TRITON_INTERPRET=1``,
set in conftest.py before Triton is imported) at small shapes with 16x16 blocks, so block
edges, skipped blocks and every compiled-in variant are crossed. With CUDA the same checks
run on the GPU with autotuned blocks, plus the full-size tests at the end.
"""
from __future__ import annotations

import pytest
import torch

import attend
import reference as R
from cases import BASELINE, backend_arg, check_case, device, inputs

triton = pytest.importorskip("triton", reason="Triton is not installed (pip install 'attend[triton]')")

CUDA = torch.cuda.is_available()
DEV = device("triton")
if not CUDA and not attend.backends.triton.interpreting():
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)

TRITON = backend_arg("triton")  # autotuned on a GPU, 16x16 blocks in the interpreter
SMALL = attend.backends.Triton(block_m=16, block_n=16)  # fixed 16x16 blocks, also on a GPU


def dev(*ts):
    return [t.to(DEV) for t in ts]


@pytest.mark.parametrize("E,Ev", [(80, 80), (96, 40), (111, 96), (256, 256), (8, 8)])
def test_head_dims(E, Ev):
    """Head dims up to 256, powers of two or not (padded inside), value dim != key dim, with gradients."""
    q, k, v = inputs(1, 2, 1, 17, 33, E, Ev, torch.float16)
    check_case(TRITON, q, k, v, kw={"causal": True}, ref_scores=R.scaled_dot(E), allowed=R.causal_mask(17, 33),
               dtype=torch.float16, what=f"E={E} Ev={Ev}")


def test_noncontiguous_inputs_give_the_same_bits():
    q, k, v = inputs(2, 2, 2, 21, 34, 16, 16, torch.float32)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, (B, L, H, E) memory
    kt = k.transpose(1, 2).contiguous().transpose(1, 2)
    vt = torch.randn(2, 2, 16, 34).transpose(-1, -2)
    vt.copy_(v)
    assert not qt.is_contiguous() and not vt.is_contiguous()
    a = attend.attention(*dev(q, k, v), causal=True, backend=TRITON)
    b = attend.attention(*dev(qt, kt, vt), causal=True, backend=TRITON)
    assert torch.equal(a, b)
    check_case(TRITON, qt, kt, vt, kw={"causal": True}, ref_scores=R.scaled_dot(16), allowed=R.causal_mask(21, 34),
               dtype=torch.float32, what="non-contiguous")


# ---- mask rules compiled into the kernel -----------------------------------------------------
RULES = {
    "padding": (lambda: attend.masks.padding([20, 7]), lambda b, i, j, L, S: j < [20, 7][b]),
    "key_mask": (lambda: attend.masks.key_mask(torch.arange(40).remainder(3).ne(0).expand(2, 40).clone()),
                 lambda b, i, j, L, S: j % 3 != 0),
    "document": (lambda: attend.masks.document([0] * 13 + [1] * 20 + [2] * 7),
                 lambda b, i, j, L, S: _doc(max(i + S - L, 0)) == _doc(j)),
    "varlen+causal": (lambda: attend.masks.and_masks(attend.masks.varlen([0, 13, 33, 40]), attend.masks.causal()),
                      lambda b, i, j, L, S: _doc(max(i + S - L, 0)) == _doc(j) and j <= i + S - L),
    "unsorted document": (lambda: attend.masks.document(torch.arange(40).remainder(3)),
                          lambda b, i, j, L, S: max(i + S - L, 0) % 3 == j % 3),
    "prefix_lm": (lambda: attend.masks.prefix_lm(torch.tensor([10, 25])),
                  lambda b, i, j, L, S: j < [10, 25][b] or j <= i + S - L),
    "window+padding": (lambda: attend.masks.and_masks(attend.masks.sliding_window((6, 0)),
                                                      attend.masks.padding([35, 40])),
                       lambda b, i, j, L, S: i + S - L - 6 <= j <= i + S - L and j < [35, 40][b]),
    "custom lambda": (lambda: (lambda b, h, i, j: (i + j) % 4 != 1),
                      lambda b, i, j, L, S: (i + j) % 4 != 1),
}


def _doc(t):
    return 0 if t < 13 else 1 if t < 33 else 2


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("L", [40, 29])
def test_mask_rules(rule, L):
    make, pred = RULES[rule]
    S = 40
    allowed = R.loop_mask(2, L, S, lambda b, i, j: pred(b, i, j, L, S))
    q, k, v = inputs(2, 2, 2, L, S, 16, 16, torch.float16)
    out, _ = check_case(TRITON, q, k, v, kw={"mask": make()}, ref_scores=R.scaled_dot(16), allowed=allowed,
                        dtype=torch.float16, what=f"{rule} L={L}")
    dead = ~allowed.any(-1)  # (B, 1, L)
    assert torch.equal(out[dead.expand(-1, 2, -1)], torch.zeros_like(out[dead.expand(-1, 2, -1)]))


# Blocks that every rule allows whole run without evaluating any mask (the full/boundary
# split, ``_key_full``/``_query_full``); these shapes put whole, boundary and skipped 16-blocks
# side by side, with L and S on and off the block edges, in forward, dQ and dK/dV.
SPLIT = {
    "causal 64x64": (64, 64, lambda: {"causal": True}, lambda b, i, j, L, S: j <= i + S - L),
    "causal 50x77": (50, 77, lambda: {"causal": True}, lambda b, i, j, L, S: j <= i + S - L),
    "causal 77x50": (77, 50, lambda: {"causal": True}, lambda b, i, j, L, S: j <= i + S - L),
    "window (20, 5) 80x80": (80, 80, lambda: {"window": (20, 5)},
                             lambda b, i, j, L, S: i - 20 <= j <= i + 5),
    "padding 48x64": (48, 64, lambda: {"mask": attend.masks.padding([33, 64])},
                      lambda b, i, j, L, S: j < [33, 64][b]),
    "prefix_lm 64x64": (64, 64, lambda: {"mask": attend.masks.prefix_lm(torch.tensor([21, 40]))},
                        lambda b, i, j, L, S: j < [21, 40][b] or j <= i),
    "window+padding 70x70": (70, 70, lambda: {"mask": attend.masks.and_masks(attend.masks.sliding_window((30, 0)),
                                                                            attend.masks.padding([50, 70]))},
                             lambda b, i, j, L, S: i - 30 <= j <= i and j < [50, 70][b]),
}


@pytest.mark.parametrize("case", list(SPLIT))
def test_whole_and_boundary_blocks(case):
    L, S, make, pred = SPLIT[case]
    allowed = R.loop_mask(2, L, S, lambda b, i, j: pred(b, i, j, L, S))
    q, k, v = inputs(2, 2, 1, L, S, 16, 16, torch.float32)  # GQA with few heads: the interpreter is slow
    check_case(TRITON, q, k, v, kw=make(), ref_scores=R.scaled_dot(16), allowed=allowed, dtype=torch.float32, what=case)


def test_whole_blocks_with_a_score_mod():
    """ALiBi on a causal 64x48 (L > S): the whole blocks apply the score_mod without a mask."""
    L, S, H = 64, 48, 2
    slopes = attend.mods.alibi_slopes(H)
    rel = _rel(L, S).abs().double()
    allowed = R.loop_mask(1, L, S, lambda b, i, j: j <= i + S - L)
    q, k, v = inputs(1, H, H, L, S, 16, 16, torch.float32)
    check_case(TRITON, q, k, v, kw={"causal": True, "score_mod": attend.mods.alibi(slopes)},
               ref_scores=R.scaled_dot(16), allowed=allowed, mod=lambda s: s - slopes.double().view(1, H, 1, 1) * rel,
               dtype=torch.float32, what="alibi causal L > S")


# ---- Hopper's tensor-memory accelerator and the autotuner ----------------------------------
HOPPER = CUDA and torch.cuda.get_device_capability()[0] >= 9
from attend.backends.triton import configs, launch, plan as tplan  # noqa: E402


def _force_tma(monkeypatch):
    """Every launch (fixed 16x16 blocks) loads its inner loop's tiles through tensor descriptors."""
    forward, backward = launch.flash_forward, launch.flash_backward
    monkeypatch.setattr(launch, "flash_forward", lambda *a, **kw: forward(*a, **kw, tma=True))
    monkeypatch.setattr(launch, "flash_backward", lambda *a, **kw: backward(*a, **kw, tma=True))


TMA_CASES = {  # few heads (GQA/MQA kept): the interpreter is slow
    "causal L<S GQA": (2, 2, 1, 21, 37, 16, 16, {"causal": True}, lambda b, i, j, L, S: j <= i + S - L),
    "causal L>S Ev!=E": (1, 2, 1, 37, 5, 16, 8, {"causal": True}, lambda b, i, j, L, S: j <= i + S - L),
    "window MQA E=40": (2, 2, 1, 33, 40, 40, 24, {"window": (6, 2)},
                        lambda b, i, j, L, S: i + S - L - 6 <= j <= i + S - L + 2),
    "padding E=8": (2, 2, 2, 48, 64, 8, 8, {"mask": attend.masks.padding([33, 64])},
                    lambda b, i, j, L, S: j < [33, 64][b]),
    "documents": (1, 2, 2, 40, 40, 16, 16, {"mask": attend.masks.document([0] * 13 + [1] * 20 + [2] * 7)},
                  lambda b, i, j, L, S: _doc(i) == _doc(j)),
}


@pytest.mark.skipif(CUDA and not HOPPER, reason="tensor descriptors need compute capability 9 (or the interpreter)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(TMA_CASES))
def test_tma_loads(case, dtype, monkeypatch):
    """Tiles through per-head tensor descriptors (zeros past the ends from the copy engine, no
    masks: K/V in the forward and dQ, Q/dO and the K/V block in dK/dV) give the reference's output and
    gradients, and in the interpreter the same bits as the pointer loads."""
    B, Hq, Hkv, L, S, E, Ev, kw, pred = TMA_CASES[case]
    q, k, v = inputs(B, Hq, Hkv, L, S, E, Ev, dtype)
    dout = torch.randn(B, Hq, L, Ev).to(dtype)
    qq, kk, vv = (t.detach().to(DEV).requires_grad_() for t in (q, k, v))
    out = attend.attention(qq, kk, vv, backend=SMALL, **kw)
    plain = [out] + list(torch.autograd.grad(out, (qq, kk, vv), dout.to(DEV)))
    _force_tma(monkeypatch)
    allowed = R.loop_mask(B, L, S, lambda b, i, j: pred(b, i, j, L, S))
    out, grads = check_case(SMALL, q, k, v, kw=kw, ref_scores=R.scaled_dot(E), allowed=allowed, dtype=dtype,
                            what=f"TMA {case}", dout=dout)
    if not CUDA:
        assert all(torch.equal(a, b.cpu()) for a, b in zip([out, *grads], plain))
    w = attend.attention(*dev(q, k, v), backend=SMALL, return_weights=True, **kw)[1].cpu()
    wb = attend.attention(q, k, v, backend=BASELINE, return_weights=True, **kw)[1]
    wr = R.reference(q.double(), k.double(), v.double(), R.scaled_dot(E), allowed=allowed)[1]
    R.check(w, wb, wr, dtype=dtype, m=2, what=f"TMA weights {case}")


def test_tma_is_only_for_inputs_it_can_read():
    q, k, v = inputs(1, 2, 2, 20, 37, 111, 96, torch.float32)  # rows of 444 bytes: not 16-byte aligned
    assert not configs.tma_ok(k, v)
    q2, k2, v2 = inputs(1, 2, 2, 20, 37, 16, 16, torch.float32)
    assert configs.tma_ok(k2, v2)
    assert not configs.tma_ok(k2, v2.transpose(-1, -2).contiguous().transpose(-1, -2))  # last dim strided
    shifted = torch.empty(k2.numel() + 1)[1:].view(k2.shape)  # base 4 bytes past an aligned one
    assert not configs.tma_ok(shifted, v2)
    if CUDA and not HOPPER:
        assert not configs.tma_ok(k2.cuda(), v2.cuda())
    p = tplan.Plan(scale=0.1)
    with pytest.raises(ValueError, match="tma=True needs K and V"):
        launch.flash_forward(*dev(q, k, v), p, block_m=16, block_n=16, tma=True)


def test_autotune_lists_are_well_formed():
    for name in ("_fwd", "_bwd_dq", "_bwd_dkdv", "_weights", "_key_totals"):
        for bucket in (64, 128, 256):
            for fp32 in (False, True):
                listed = configs.configs(name, bucket, fp32)
                assert listed and len(set(listed)) == len(listed), (name, bucket, fp32)
                for m, n, warps, stages, *tag in listed:
                    assert m in (16, 32, 64, 128) and n in (16, 32, 64, 128) and warps in (4, 8) and 1 <= stages <= 4
                    assert tag in ([], ["tma"]) and (not tag or name in configs.TMA_KERNELS), (name, tag)
    assert any(len(c) == 5 for c in configs.configs("_fwd", 128, False))
    assert all(len(c) == 4 for c in configs.configs("_weights", 128, False))  # no TMA path there


@pytest.mark.skipif(CUDA, reason="drives Triton's autotuner with a stub timer, in the interpreter")
def test_autotuner_keys_on_length_buckets_and_tries_tma_only_where_it_can(monkeypatch):
    """The real autotuner, with a timer that makes the TMA config fastest: lengths in one
    power-of-two bucket reuse the choice (no new timing), a new bucket times again, and
    inputs TMA cannot read are tuned apart without the TMA config."""
    monkeypatch.setitem(configs.FWD_CONFIGS, 64, [(16, 16, 4, 1), (16, 16, 4, 1, "tma"), (32, 16, 4, 1)])
    monkeypatch.setattr(configs, "blocks", lambda bm, bn, dev: ({}, True))  # autotune, as on a GPU
    configs.kernel.cache_clear()
    try:
        tuner = configs.kernel("_fwd", 64, True, False)
        timed = []
        real_bench = tuner._bench
        tuner._do_bench = lambda call, quantiles: (call(), [1.0] * 3)[1]  # runs each config once

        def bench(*args, config, **meta):  # the real _bench (compiles, runs), then a made-up time
            real_bench(*args, config=config, **meta)
            timed.append(config)
            return [1.0 if config.kwargs["TMA"] else 2.0] * 3

        tuner._bench = bench
        for L, n_timed in ((20, 3), (30, 3), (33, 6)):
            q, k, v = inputs(1, 2, 2, L, L, 64, 64, torch.float16)
            out = attend.attention(q, k, v, causal=True, backend=attend.backends.Triton())
            assert len(timed) == n_timed, f"L={L}"
            assert tuner.best_config.kwargs["TMA"]
            qd, kd, vd = (t.double() for t in (q, k, v))
            ref = R.reference(qd, kd, vd, R.scaled_dot(64), allowed=R.causal_mask(L, L))[0]
            base = attend.attention(q, k, v, causal=True, backend=BASELINE)
            R.check(out, base, ref, dtype=torch.float16, m=2, what=f"autotuned L={L}")
        vt = v.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, strided last dim: no TMA
        timed.clear()
        tuned_keys = len(tuner.cache)
        out = attend.attention(q, k, vt, causal=True, backend=attend.backends.Triton())
        assert len(timed) == 2 and len(tuner.cache) == tuned_keys + 1
        assert not tuner.best_config.kwargs["TMA"]
        R.check(out, base, ref, dtype=torch.float16, m=2, what="autotuned, no TMA")
    finally:
        configs.kernel.cache_clear()


# ---- dQ by atomics (FlashAttention-2's backward), an alternative the GPU times -----------------
ATOMIC_CASES = dict(TMA_CASES, **{
    "softcap causal": (2, 2, 2, 29, 37, 16, 16, {"causal": True, "score_mod": attend.mods.softcap(2.0)},
                       lambda b, i, j, L, S: j <= i + S - L),
    "E=111 bool": (1, 2, 2, 20, 37, 111, 96, {"mask": "bool"}, None),
})


@pytest.mark.skipif(CUDA and not HOPPER, reason="tensor descriptors need compute capability 9 (or the interpreter)")
@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(ATOMIC_CASES))
def test_atomic_dq(case, dtype, tma, monkeypatch):
    """dK/dV's kernel adding each block's dS·K into an fp32 dQ by atomics (``_bwd_dq`` not
    launched; with TMA, as a reduction through a tensor descriptor) gives the reference's
    gradients: masks, GQA/MQA, rows with no key (causal L > S), soft-capping, head dims that are
    not powers of two."""
    B, Hq, Hkv, L, S, E, Ev, kw, pred = ATOMIC_CASES[case]
    if tma and E % 4:
        pytest.skip("TMA needs 16-byte rows of the fp32 dQ accumulator (tested in test_dq_mode_is_checked)")
    q, k, v = inputs(B, Hq, Hkv, L, S, E, Ev, dtype)
    mod = None
    if kw.get("mask") == "bool":
        m = torch.rand(B, 1, L, S, generator=torch.Generator().manual_seed(3)) > 0.3
        m[..., 4, :] = False  # a row that sees no key
        kw, allowed = {"mask": m.to(DEV)}, m
    else:
        allowed = R.loop_mask(B, L, S, lambda b, i, j: pred(b, i, j, L, S))
    if "score_mod" in kw:
        q = q * 3  # scores large enough for soft-capping to bite
        mod = lambda s: 2.0 * torch.tanh(s / 2.0)  # noqa: E731
    backward = launch.flash_backward
    monkeypatch.setattr(launch, "flash_backward", lambda *a, **k_: backward(*a, **k_, dq_mode="atomic", tma=tma))
    launched = _record_launches(monkeypatch)
    check_case(SMALL, q, k, v, kw=kw, ref_scores=R.scaled_dot(E), allowed=allowed, mod=mod, dtype=dtype,
               what=f"atomic dQ {case}")
    assert _dq_mode(launched) == "atomic"


def _record_launches(monkeypatch) -> list:
    """The names of the kernels launched from now on (looked up through the launchers' Target)."""
    launched, kernel = [], launch.Target.kernel

    def spy(self, name, *a, **k_):
        launched.append(name)
        return kernel(self, name, *a, **k_)

    monkeypatch.setattr(launch.Target, "kernel", spy)
    return launched


def _dq_mode(launched: list) -> str:
    """How the last backward made dQ: "separate" (its own kernel, launched just before dK/dV's)
    or "atomic" (added by dK/dV's kernel)."""
    last = len(launched) - 1 - launched[::-1].index("_bwd_dkdv")
    return "separate" if last > 0 and launched[last - 1] == "_bwd_dq" else "atomic"


def test_dq_mode_is_checked(monkeypatch):
    q, k, v = inputs(1, 2, 2, 8, 8, 16, 16, torch.float32)
    q, k, v = dev(q, k, v)
    p = tplan.Plan(scale=0.25)
    out, lse = launch.flash_forward(q, k, v, p, block_m=16, block_n=16)
    with pytest.raises(ValueError, match="dq_mode must be 'auto', 'atomic' or 'separate', got 'fast'"):
        launch.flash_backward(out, q, k, v, out, lse, p, dq_mode="fast")
    with pytest.raises(ValueError, match="dq_mode='atomic' cannot give a bias or table gradient"):
        launch.flash_backward(out, q, k, v, out, lse, p, bias_grad=True, dq_mode="atomic")
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(ValueError, match=r"nor run under torch.use_deterministic_algorithms\(True\)"):
            launch.flash_backward(out, q, k, v, out, lse, p, dq_mode="atomic")
    finally:
        torch.use_deterministic_algorithms(False)
    q2, k2, v2 = dev(*inputs(1, 2, 2, 8, 8, 16, 16, torch.float32))
    q2, k2 = q2[..., :10], k2[..., :10]  # E = 10 in rows 64 bytes apart: TMA reads them, a dQ of 40-byte rows not
    out2, lse2 = launch.flash_forward(q2, k2, v2, p, block_m=16, block_n=16)
    launch.flash_backward(out2, q2, k2, v2, out2, lse2, p, block_m=16, block_n=16, tma=True)  # separate: fine
    with pytest.raises(ValueError, match=r"tma=True needs Q, K, V and dO \(and E a multiple of 4\)"):
        launch.flash_backward(out2, q2, k2, v2, out2, lse2, p, block_m=16, block_n=16, tma=True, dq_mode="atomic")
    launched = _record_launches(monkeypatch)
    launch.flash_backward(out, q, k, v, out, lse, p, block_m=16, block_n=16)
    assert _dq_mode(launched) == "separate"  # fixed blocks: deterministic, nothing timed


@pytest.mark.skipif(CUDA, reason="drives the choice with a stub timer, in the interpreter")
def test_auto_times_both_dq_modes_once_per_bucket_and_keeps_the_faster(monkeypatch):
    """As on a GPU (autotuned launches), "auto" times the backward both ways on the first call
    of a tuning key and reuses the choice for lengths of the same bucket; bias gradients,
    torch's deterministic mode and fp32 inputs never take the atomic path and time nothing."""
    one = {b: [(16, 16, 4, 1)] for b in (64, 128, 256)}  # one config per kernel, "timed" by a stub
    for lists in ("FWD_CONFIGS", "DQ_CONFIGS", "DKDV_CONFIGS"):
        monkeypatch.setattr(configs, lists, one)
    monkeypatch.setattr(configs, "blocks", lambda bm, bn, dev: ({}, True))
    monkeypatch.setattr(launch, "DQ_CHOICE", {})
    launched = _record_launches(monkeypatch)
    timed = []

    def do_bench(fn, **_):  # runs the backward for real, says the atomic one (second) is faster
        fn()
        timed.append(len(timed) % 2)
        return 2.0 if timed[-1] == 0 else 1.0

    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    configs.kernel.cache_clear()
    try:
        for name in ("_fwd", "_bwd_dq", "_bwd_dkdv"):
            for fp32 in (False, True):
                configs.kernel(name, 64, True, fp32)._do_bench = lambda call, quantiles: (call(), [1.0] * 3)[1]
        for L, n_timed, kw in ((20, 2, {}), (30, 2, {}), (33, 4, {}), (33, 4, {"mask": "bias"})):
            q, k, v = inputs(1, 2, 2, L, L, 16, 16, torch.float16)
            bias = torch.randn(1, 2, L, L, requires_grad=True) if kw else None
            extra = {"mask": bias} if kw else {}
            check_case(attend.backends.Triton(), q, k, v, kw={"causal": True, **extra}, ref_scores=R.scaled_dot(16),
                       allowed=R.causal_mask(L, L), bias=bias.detach().double() if kw else None,
                       dtype=torch.float16, what=f"auto dQ L={L}")
            assert len(timed) == n_timed, L
            assert _dq_mode(launched) == ("separate" if kw else "atomic"), L  # a bias gradient: separate
        assert [mode for mode, _ in launch.DQ_CHOICE.values()] == ["atomic", "atomic"]
        assert launch.DQ_CHOICE[next(iter(launch.DQ_CHOICE))][1] == {"separate": 2.0, "atomic": 1.0}
        for dtype, deterministic in ((torch.float16, True), (torch.float32, False)):  # neither is timed
            torch.use_deterministic_algorithms(deterministic)
            try:
                q, k, v = (t.requires_grad_() for t in inputs(1, 2, 2, 70, 70, 16, 16, dtype))
                attend.attention(q, k, v, causal=True, backend=attend.backends.Triton()).sum().backward()
                assert _dq_mode(launched) == "separate" and len(timed) == 4, dtype
            finally:
                torch.use_deterministic_algorithms(False)
    finally:
        configs.kernel.cache_clear()


@pytest.mark.parametrize("kw,ruled_out", [
    ({"causal": True}, lambda i, j: j > i),
    ({"window": (8, 0)}, lambda i, j: j > i or j < i - 8),
    ({"mask": "document"}, lambda i, j: _doc(i) != _doc(j)),
    ({"mask": "padding"}, lambda i, j: j >= 20),
])
def test_blocks_a_rule_rules_out_are_never_read(kw, ruled_out):
    """NaN values in key blocks the rule masks entirely do not reach the output, the
    weights or the gradients: those blocks are skipped, not loaded and masked."""
    if kw.get("mask") == "document":
        kw = {"mask": attend.masks.document([0] * 16 + [1] * 32 + [2] * 16)}
        doc = {0: 0, 1: 1, 2: 1, 3: 2}
        ruled_out = lambda i, j: doc[i // 16] != doc[j // 16]  # noqa: E731  (block-aligned documents)
    elif kw.get("mask") == "padding":
        kw = {"mask": attend.masks.padding([20])}
    L = S = 64
    q, k, v = inputs(1, 1, 1, L, S, 16, 16, torch.float32)
    blocks = 16
    poisoned_v = v.clone()
    for jb in range(S // blocks):
        # a key block that every query of some query block rules out: poison it for the whole run if every
        # query block that could read it would rule it out entirely
        cols = range(jb * blocks, (jb + 1) * blocks)
        if all(all(ruled_out(i, j) for j in cols) for i in range(L)):
            poisoned_v[..., jb * blocks:(jb + 1) * blocks, :] = float("nan")
    # a block read by some query block but ruled out for another must not be poisoned; the test poisons
    # only blocks no query may see, plus per-query-block checks below through the weights
    qd, kd, vd = (t.to(DEV).requires_grad_() for t in (q, k, poisoned_v))
    out, w = attend.attention(qd, kd, vd, backend=SMALL, return_weights=True, **kw)
    assert not out.isnan().any() and not w.isnan().any()
    out.sum().backward()
    assert not qd.grad.isnan().any() and not kd.grad.isnan().any()
    # and per query block: NaN keys in a block ruled out for that block's queries never reach them
    for ib in range(L // blocks):
        rows = range(ib * blocks, (ib + 1) * blocks)
        vv = v.clone()
        for jb in range(S // blocks):
            cols = range(jb * blocks, (jb + 1) * blocks)
            if all(ruled_out(i, j) for i in rows for j in cols):
                vv[..., jb * blocks:(jb + 1) * blocks, :] = float("nan")
        o = attend.attention(*dev(q, k, vv), backend=SMALL, **kw)
        assert not o[..., ib * blocks:(ib + 1) * blocks, :].isnan().any(), f"query block {ib} read a skipped block"


# ---- score_mods compiled in -----------------------------------------------------------------
def _rel(L, S):
    return torch.tensor([[j - (i + S - L) for j in range(S)] for i in range(L)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mod", ["alibi", "softcap", "relative_bias", "relative_bias per head"])
def test_score_mods(mod, dtype):
    B, H, L, S, E = 2, 2, 29, 37, 16
    q, k, v = inputs(B, H, H, L, S, E, E, dtype)
    q = q * 3  # scores large enough for soft-capping to bite
    rel = _rel(L, S)
    table = None
    if mod == "alibi":
        slopes = attend.mods.alibi_slopes(H)
        arg = attend.mods.alibi(slopes)
        fn = lambda s: s - slopes.double().view(1, H, 1, 1) * rel.abs().double()  # noqa: E731
    elif mod == "softcap":
        arg = attend.mods.softcap(2.0)
        fn = lambda s: 2.0 * torch.tanh(s / 2.0)  # noqa: E731
    else:
        R_ = 5
        shape = (2 * R_ + 1,) if mod == "relative_bias" else (H, 2 * R_ + 1)
        table = torch.randn(shape, device=DEV, requires_grad=True)
        arg = attend.mods.relative_bias(table)
        idx = rel.clamp(-R_, R_) + R_
        tab = table.detach().cpu().double().requires_grad_()

        def fn(s):
            b = tab[idx] if tab.ndim == 1 else tab[torch.arange(H).view(H, 1, 1), idx]
            return s + b
    allowed = R.causal_mask(L, S)
    check_case(TRITON, q, k, v, kw={"score_mod": arg, "causal": True}, ref_scores=R.scaled_dot(E), allowed=allowed,
               mod=fn, dtype=dtype, what=f"{mod} {dtype}")
    if table is not None:  # the table learns: its gradient matches the reference's
        qd, kd, vd = (t.to(DEV) for t in (q, k, v))
        out = attend.attention(qd, kd, vd, score_mod=arg, causal=True, backend=TRITON)
        dout = torch.randn_like(out)
        (g,) = torch.autograd.grad(out, table, dout)
        ref, _ = R.reference(q, k, v, R.scaled_dot(E), allowed=allowed, mod=fn)
        (gr,) = torch.autograd.grad(ref, tab, dout.cpu().double())
        base_out = attend.attention(qd, kd, vd, score_mod=arg, causal=True, backend=BASELINE)
        (gb,) = torch.autograd.grad(base_out, table, dout)
        R.check(g.cpu(), gb.cpu(), gr, dtype=dtype, m=3, what=f"d table {mod} {dtype}")


def test_bias_that_requires_grad_gets_its_gradient():
    B, H, L, S = 2, 2, 19, 23
    q, k, v = dev(*inputs(B, H, H, L, S, 16, 16, torch.float32))
    bias = torch.randn(1, H, L, S, device=DEV, requires_grad=True)  # broadcast over the batch
    out = attend.attention(q, k, v, mask=bias, causal=True, backend=TRITON)
    dout = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, bias, dout)
    bd = bias.detach().cpu().double().requires_grad_()
    ref, _ = R.reference(q.cpu(), k.cpu(), v.cpu(), R.scaled_dot(16), allowed=R.causal_mask(L, S), bias=bd)
    (gr,) = torch.autograd.grad(ref, bd, dout.cpu().double())
    assert g.shape == bias.shape
    torch.testing.assert_close(g.cpu().double(), gr, rtol=1e-4, atol=1e-5)


# ---- weights from the fused path ----------------------------------------------------------
def test_return_weights_are_the_reference_weights():
    B, Hq, Hkv, L, S = 2, 4, 2, 27, 45
    q, k, v = inputs(B, Hq, Hkv, L, S, 24, 24, torch.float32)
    for kw, allowed in [({}, None), ({"causal": True}, R.causal_mask(L, S)),
                        ({"window": (4, 4), "score_mod": attend.mods.alibi(Hq)}, None)]:
        out, w = attend.attention(*dev(q, k, v), backend=TRITON, return_weights=True, **kw)
        ref_out, ref_w = attend.attention(q.double(), k.double(), v.double(), backend="eager", return_weights=True,
                                          **kw)
        assert w.dtype == q.dtype and w.shape == (B, Hq, L, S)
        torch.testing.assert_close(w.cpu().double(), ref_w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.cpu().double(), ref_out, rtol=1e-5, atol=1e-5)
        if allowed is not None:
            assert not w.cpu()[..., ~allowed].any()  # masked: exactly zero


def test_weights_of_chosen_heads_and_rows_and_key_totals():
    B, Hq, Hkv, L, S = 2, 4, 1, 33, 40
    q, k, v = inputs(B, Hq, Hkv, L, S, 16, 16, torch.float32)
    kw = {"causal": True, "mask": attend.masks.padding([40, 30])}
    _, full = attend.attention(q.double(), k.double(), v.double(), backend="eager", return_weights=True, **kw)
    heads, rows = [3, 0], [32, 0, 17, 5]
    w = attend.attention_weights(*dev(q, k), heads=heads, rows=rows, backend=TRITON, **kw)
    assert w.shape == (B, 2, 4, S)
    torch.testing.assert_close(w.cpu().double(), full[:, heads][:, :, rows], rtol=1e-5, atol=1e-6)
    # every backend answers the same question the same way
    w_eager = attend.attention_weights(q, k, heads=heads, rows=rows, backend="eager", **kw)
    torch.testing.assert_close(w_eager.double(), full[:, heads][:, :, rows], rtol=1e-5, atol=1e-6)
    t = attend.key_totals(*dev(q, k), backend=TRITON, **kw)
    assert t.shape == (B, Hq, S) and t.dtype == torch.float32
    torch.testing.assert_close(t.cpu().double(), full.sum(2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attend.key_totals(q, k, backend="eager", **kw).double(), full.sum(2),
                               rtol=1e-5, atol=1e-5)


def test_weights_api_errors_name_the_argument():
    q, k = inputs(1, 2, 2, 4, 4, 16, 16, torch.float32)[:2]
    with pytest.raises(ValueError, match=r"rows must be indices in \[0, 4\)"):
        attend.attention_weights(q, k, rows=[4])
    with pytest.raises(ValueError, match=r"heads must be a sequence or 1-D integer tensor"):
        attend.attention_weights(q, k, heads=[[0]])
    with pytest.raises(TypeError, match="takes no 'value' argument"):
        attend.attention_weights(q, k, value=k)
    with pytest.raises(TypeError, match="key_totals\\(\\) takes no 'dropout_p' argument"):
        attend.key_totals(q, k, dropout_p=0.1)
    with pytest.raises(TypeError, match=r"^attention_weights\(\) got an unexpected keyword argument 'casual' "
                                        r"\(did you mean 'causal'\?\)$"):
        attend.attention_weights(q, k, casual=True)
    with pytest.raises(TypeError, match=r"^key_totals\(\) got an unexpected keyword argument 'colour'$"):
        attend.key_totals(q, k, colour=1)
    # no suggestion of an argument the function refuses (before: "did you mean 'return_weights'?")
    with pytest.raises(TypeError, match=r"^key_totals\(\) got an unexpected keyword argument 'retrun_weights'$"):
        attend.key_totals(q, k, retrun_weights=True)
    with pytest.raises(TypeError, match=r"^explain\(\) got an unexpected keyword argument 'scoremod' "
                                        r"\(did you mean 'score_mod'\?\)$"):
        attend.explain(q, k, k, scoremod=None)
    with pytest.raises(ValueError, match=r"heads: 2-D inputs \(L, E\) have no heads dimension"):
        attend.attention_weights(q[0, 0], k[0, 0], heads=[0])
    w = attend.attention_weights(q[0, 0], k[0, 0], rows=[1])  # 2-D: (rows, S)
    assert w.shape == (1, 4)


# ---- what it cannot run, it says -----------------------------------------------------------
@pytest.mark.parametrize("kw,reason", [
    ({"score": "additive"}, "not dot-like"),
    ({"dropout_p": 0.1}, "no dropout"),
    ({"hard": True}, "no hard attention"),
    ({"score_mod": lambda s, b, h, i, j: s * 2}, "not compiled into the kernels"),
])
def test_can_run_says_why_and_auto_falls_back(kw, reason):
    q, k, v = dev(*inputs(1, 2, 2, 4, 6, 8, 8, torch.float32))
    if kw.get("score") == "additive":
        kw = {"score": attend.scores.Additive(8, 8, 4).to(DEV)}
    with pytest.raises(attend.UnsupportedCall, match=reason):
        attend.attention(q, k, v, backend="triton", **kw)
    assert "triton" in attend.explain(q, k, v, **kw).reasons
    attend.attention(q, k, v, **kw)  # auto runs it elsewhere


def test_float64_and_huge_head_dims_are_refused_with_a_reason():
    q, k, v = dev(*inputs(1, 1, 1, 4, 4, 8, 8, torch.float64))
    with pytest.raises(attend.UnsupportedCall, match="float16, bfloat16, float32"):
        attend.attention(q, k, v, backend="triton")
    q, k, v = dev(*inputs(1, 1, 1, 4, 4, 257, 8, torch.float32))
    with pytest.raises(attend.UnsupportedCall, match="head dims up to 256"):
        attend.attention(q, k, v, backend="triton")


def test_block_arguments_are_checked():
    with pytest.raises(ValueError, match="block_m must be 0 .* power of two >= 16"):
        attend.backends.Triton(block_m=24)


@pytest.mark.skipif(CUDA, reason="CPU-only behaviour")
def test_auto_never_picks_the_interpreter():
    q, k, v = inputs(1, 2, 2, 4, 6, 8, 8, torch.float32)
    ex = attend.explain(q, k, v, return_weights=True)
    assert ex.backend != "triton"


# ---- torch.library / torch.compile ----------------------------------------------------------
def test_opcheck_passes():
    q, k, v = dev(*inputs(1, 2, 1, 20, 24, 16, 16, torch.float32))
    for t in (q, k, v):
        t.requires_grad_()
    bias = torch.randn(1, 2, 20, 24, device=DEV, requires_grad=True)
    p = tplan.Plan(scale=0.25, causal=True, bias=bias)
    args = (q, k, v, *attend.backends.triton.ops.plan_values(p), 16, 16)
    torch.library.opcheck(torch.ops.attend.triton_attention.default, args)


@pytest.mark.slow
def test_torch_compile_runs_a_module_using_attend():
    """Inductor compiles the module around the custom op (fullgraph: no graph break)."""
    mha = attend.nn.MultiHeadAttention(embed_dim=32, num_heads=2, backend="triton").to(DEV)
    x = torch.randn(2, 20, 32, device=DEV)
    want, _ = mha(x, causal=True)
    compiled = torch.compile(mha, fullgraph=True)
    got, _ = compiled(x, causal=True)
    torch.testing.assert_close(got, want)
    got.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mha.parameters())


# ---- full sizes: GPU only ---------------------------------------------------------------------
@pytest.mark.skipif(not CUDA, reason="needs CUDA: full-size shapes are too slow for the interpreter")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("E", [64, 80, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_full_size_on_gpu(dtype, E, causal):
    B, H, L = 2, 8, 2048
    q, k, v = inputs(B, H, H, L, L, E, E, dtype)
    check_case(TRITON, q, k, v, kw={"causal": causal}, ref_scores=R.scaled_dot(E),
               allowed=torch.ones(L, L, dtype=torch.bool).tril() if causal else None, dtype=dtype,
               what=f"full size E={E} causal={causal}")


# the NaN queries are the point: under the interpreter, numpy's NaN-aware max says so for their rows
@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")
def test_chunked_rule_is_compiled_and_skips_other_chunks_blocks():
    """``masks.chunked`` becomes the plan's chunk size (no dense mask), and the kernels never
    load a key block outside a tile's chunks: launched directly (no NaN quarantine in front),
    a NaN value in chunk 2 reaches no row of another chunk — forward, or dK/dV of their keys."""
    from attend.functional import _prepare

    L = 64
    q, k, v = dev(*inputs(1, 2, 2, L, L, 16, 16, torch.float32))
    call, _ = _prepare(q, k, v, mask=attend.masks.chunked(16), causal=True)
    p = tplan.plan(call)
    assert p.chunk == 16 and p.mask is None and p.causal
    p.scale = 0.25
    v_bad = v.clone()
    v_bad[:, :, 32:48] = float("nan")  # the values of chunk 2
    out, lse = launch.flash_forward(q, k, v_bad, p, block_m=16, block_n=16)
    rows = torch.arange(L, device=out.device) // 16 != 2
    assert torch.isfinite(out[:, :, rows]).all() and torch.isnan(out[:, :, ~rows]).all()
    q_bad = q.clone()
    q_bad[:, :, 32:48] = float("nan")  # the queries of chunk 2
    out, lse = launch.flash_forward(q_bad, k, v, p, block_m=16, block_n=16)
    dq, dk, dv, _, _ = launch.flash_backward(torch.ones_like(out), q_bad, k, v, out, lse, p, block_m=16, block_n=16)
    assert torch.isfinite(dk[:, :, rows]).all() and torch.isfinite(dv[:, :, rows]).all()
    assert torch.isfinite(dq[:, :, rows]).all()


def test_sorting_rules_without_building_agrees_with_the_plan():
    """``auto_skip`` asks which rules would be evaluated densely without making a tensor
    (``fold(build=False)``): the same answer as the real plan, for compiled and dense rules."""
    from attend.functional import _prepare

    q, k, v = inputs(2, 2, 2, 12, 12, 16, 16, torch.float32)
    m = attend.masks
    for rule in (m.causal(), m.padding([5, 12]), m.and_masks(m.document([0] * 6 + [1] * 6), m.causal()),
                 m.and_masks(m.document([0] * 12), m.document([1] * 6 + [2] * 6)), m.prefix_lm(3),
                 m.prefix_lm(torch.tensor([1, 2])), m.and_masks(m.chunked(4), m.chunked(3)),
                 m.or_masks(m.causal(), m.chunked(4)), lambda b, h, i, j: i >= j):
        call, _ = _prepare(q, k, v, mask=rule)
        dense = tplan.fold(call)[1]
        assert tplan.fold(call, build=False)[1] == dense, rule
