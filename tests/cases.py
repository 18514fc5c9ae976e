"""Cases shared by the tests: score functions (attend's argument and the reference's scores), the
backend grid (``BACKENDS``, ``triton`` included where it can run) with what each backend runs,
inputs and masks, and ``check_case``, the tolerance rule with gradients on one backend."""
from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch

import attend
import reference as R


def make_score(name: str, E: int):
    """Return ``(score argument for attend, reference scores fn (q, k) -> scaled scores)``."""
    if name == "dot":
        return "dot", R.dot
    if name == "scaled_dot":
        return "scaled_dot", R.scaled_dot(E)
    if name == "cosine":
        return "cosine", R.cosine
    if name == "Cosine(0.25)":
        return attend.scores.Cosine(0.25), lambda q, k: R.cosine(q, k, 0.25)
    if name == "General":
        g = attend.scores.General(E, E)
        return g, lambda q, k: R.general(q, k, g.weight.detach().double())
    if name == "Additive":
        a = attend.scores.Additive(E, E, 12)
        w = [t.detach().double() for t in (a.query_proj.weight, a.key_proj.weight, a.key_proj.bias, a.v.weight)]
        return a, lambda q, k: R.additive(q, k, *w)
    if name == "callable":
        fn = lambda q, k: -((q.unsqueeze(-2) - k.unsqueeze(-3)) ** 2).sum(-1)  # noqa: E731  negative squared distance
        return fn, fn
    raise KeyError(name)


SCORES = ["dot", "scaled_dot", "cosine", "Cosine(0.25)", "General", "Additive", "callable"]
DOT_LIKE = {"dot", "scaled_dot", "cosine", "Cosine(0.25)", "General"}

CUDA = torch.cuda.is_available()


def _triton_runs() -> bool:
    """Triton is installed and has somewhere to run: a GPU, or its CPU interpreter
    (TRITON_INTERPRET=1, which conftest.py sets on machines without CUDA)."""
    from attend.backends.triton.plan import import_error

    return import_error() is None and (CUDA or attend.backends.triton.interpreting())


# The one backend grid. "triton" runs its real kernels: on a GPU autotuned, on the CPU in
# Triton's interpreter with fixed 16x16 blocks (block edges crossed at the test sizes).
BACKENDS = ["eager", "sdpa", "chunked", "chunked16"] + (["triton"] if _triton_runs() else [])
# "The same eager code in the test dtype" (RELIABILITY.md): no float32 upcast inside.
BASELINE = attend.backends.Eager(upcast=False)


def backend_arg(name):
    """attend's ``backend=`` argument for a grid name (a Backend instance passes through)."""
    if name == "chunked16":  # 16-key blocks and 8-query tiles: block and tile edges are crossed at the test sizes
        return attend.backends.Chunked(block_size=16, query_block_size=8)
    if name == "triton":
        return attend.backends.Triton(**_triton_blocks()) if CUDA else attend.backends.Triton(block_m=16, block_n=16)
    return name


def _triton_blocks() -> dict:
    """On a GPU the grid's ``triton`` is autotuned, unless ``ATTEND_TEST_TRITON_BLOCKS=MxN`` fixes
    its blocks (one compile per variant instead of one per block shape tried: how
    ``benchmarks/gpu_lease.sh`` runs the grid inside a short GPU lease)."""
    text = os.environ.get("ATTEND_TEST_TRITON_BLOCKS", "")
    if not text:
        return {}
    try:
        m, n = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"ATTEND_TEST_TRITON_BLOCKS must be like 64x32, got {text!r}") from None
    return {"block_m": m, "block_n": n}


def skip_unquarantined(backend) -> None:
    """Skip a test of non-finite inputs where attend's quarantine does not run: ``triton`` on a
    GPU, where the check would stall the stream on every call (README, Semantics: there a masked
    NaN/inf can show in rows that share its key block, as in FlashAttention's kernels)."""
    if device(backend) == "cuda":
        pytest.skip("no quarantine on GPU tensors (README, Semantics: NaN and inf)")


def _name(backend) -> str:
    return backend if isinstance(backend, str) else backend.name


def device(backend) -> str:
    """Where a backend's inputs live: triton's on the GPU when there is one, all others on the CPU."""
    return "cuda" if CUDA and _name(backend) == "triton" else "cpu"


def interpreted(backend) -> bool:
    """Whether a backend runs in Triton's CPU interpreter, one program at a time (slow: keep its cases small)."""
    return _name(backend) == "triton" and not CUDA


def wide(backend) -> torch.dtype:
    """The widest dtype a backend runs: float64, but float32 for triton (its kernels take no float64).
    Tests written in float64 run triton in float32 and say how they compare it."""
    return torch.float32 if _name(backend) == "triton" else torch.float64


TRITON_MODS = ("Alibi", "Softcap", "RelativeBias")  # the score_mods compiled into the kernels


def runnable(backend, score: str, **kw) -> bool:
    """Whether a backend runs a call (an independent statement of what each one refuses).
    ``kw``: any of ``return_weights``, ``score_mod``, ``hard``, ``dropout_p``, ``sinks``, ``dtype``."""
    backend = _name(backend)
    if backend == "sdpa":
        return (score in DOT_LIKE and not kw.get("return_weights") and kw.get("score_mod") is None
                and not kw.get("hard") and not kw.get("sinks"))
    if backend.startswith("chunked"):
        return not kw.get("hard")
    if backend == "triton":
        mod = kw.get("score_mod")
        return (score in DOT_LIKE and not kw.get("hard") and not kw.get("dropout_p")
                and kw.get("dtype", torch.float32) != torch.float64
                and (mod is None or type(mod).__name__ in TRITON_MODS))
    return True


def _to(x, dev: str):
    if isinstance(x, torch.Tensor):
        return x.to(dev)
    if isinstance(x, torch.nn.Module) and dev != "cpu":
        return copy.deepcopy(x).to(dev)  # a score module: a copy, so the caller's stays on the CPU
    return x


def _back(x):
    if isinstance(x, tuple):
        return tuple(_back(t) for t in x)
    return x.cpu() if isinstance(x, torch.Tensor) else x


def attention(backend, *args, **kw):
    """``attend.attention`` on a grid backend: tensors (inputs, masks, sinks) moved to the
    backend's device, the results back on the CPU. Both moves are differentiable, so gradients
    reach the caller's CPU tensors. On the CPU nothing is copied."""
    dev = device(backend)
    args = [_to(a, dev) for a in args]
    kw = {k: _to(x, dev) for k, x in kw.items()}
    return _back(attend.attention(*args, backend=backend_arg(backend), **kw))


def check_case(backend, q, k, v, *, kw, ref_scores, allowed=None, bias=None, mod=None, dtype, what, grads=True,
               dout=None):
    """Forward and dq/dk/dv of ``backend`` against the float64 reference, by the tolerance rule
    (output m=2, gradients m=3) with the eager baseline run on the same device. ``dout``: the
    output's gradient (random if not given). Returns the output and the gradients, on the CPU."""
    dev = device(backend)
    q, k, v = (t.detach().to(dev).requires_grad_(grads) for t in (q, k, v))
    kw = {key: _to(x, dev) for key, x in kw.items()}
    qd, kd, vd = (t.detach().cpu().double().requires_grad_(grads) for t in (q, k, v))
    ref, _ = R.reference(qd, kd, vd, ref_scores, allowed=allowed, bias=bias, mod=mod)
    dout = torch.randn_like(ref) if dout is None else dout.cpu().double()

    def run(b):
        out = attend.attention(q, k, v, backend=b, **kw)
        g = torch.autograd.grad(out, (q, k, v), dout.to(dev, dtype)) if grads else ()
        return out.cpu(), [t.cpu() for t in g]

    out, g = run(backend_arg(backend))
    base, gb = run(BASELINE)
    R.check(out, base, ref, dtype=dtype, m=2, what=f"output {what}")
    if grads:
        gr = torch.autograd.grad(ref, (qd, kd, vd), dout)
        for name, a, b_, r in zip("qkv", g, gb, gr):
            R.check(a, b_, r, dtype=dtype, m=3, what=f"d{name} {what}")
    return out, g


def inputs(B, Hq, Hkv, L, S, E, Ev, dtype, *, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, L, E, generator=g).to(dtype)
    k = torch.randn(B, Hkv, S, E, generator=g).to(dtype)
    v = torch.randn(B, Hkv, S, Ev, generator=g).to(dtype)
    if grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v


def mask_kwargs(kind: str, B, Hq, L, S, seed=1, device="cpu"):
    """attend kwargs (tensors on ``device``) and the reference's (allowed, bias) for one mask kind."""
    g = torch.Generator().manual_seed(seed)
    if kind == "none":
        return {}, None, None
    if kind == "causal":
        return {"causal": True}, R.causal_mask(L, S), None
    if kind == "window":
        return {"window": (3, 1), "causal": False}, R.window_mask(L, S, 3, 1), None
    if kind == "bool":
        m = torch.rand(B, 1, L, S, generator=g) > 0.4
        m[:, :, 0] = False  # one fully masked row
        return {"mask": m.to(device)}, m, None
    if kind == "bias":
        b = torch.randn(B, Hq, L, S, generator=g)
        b[0, 0, 1] = float("-inf")  # fully masked by the bias alone
        return {"mask": b.to(device)}, None, b
    raise KeyError(kind)


def cli_status(argv) -> tuple:
    """``attend``'s ``main(argv)`` in this process (a new process costs ~2 s of importing torch):
    ``(exit status, the warnings it raised as the lines a process would print on stderr)``."""
    from attend import cli

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as e:  # argparse's own errors
            code = e.code
    return code, "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
