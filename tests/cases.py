"""Score-function cases shared by the numerics tests: attend's argument and the reference's scores."""
from __future__ import annotations

import math

import torch

import attend
import reference as R


def make_score(name: str, E: int):
    """Return ``(score argument for attend, reference scores fn (q, k) -> scaled scores)``."""
    if name == "dot":
        return "dot", R.dot
    if name == "scaled_dot":
        return "scaled_dot", lambda q, k: R.dot(q, k) / math.sqrt(E)
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

BACKENDS = ["eager", "sdpa", "chunked", "chunked16"]


def backend_arg(name: str):
    # 16-key blocks and 8-query tiles: block and tile edges are crossed at the test sizes
    return attend.backends.Chunked(block_size=16, query_block_size=8) if name == "chunked16" else name


def runnable(backend: str, score: str, **kw) -> bool:
    if backend == "sdpa":
        return score in DOT_LIKE and not kw.get("return_weights") and kw.get("score_mod") is None and not kw.get("hard")
    if backend.startswith("chunked"):
        return not kw.get("hard")
    return True


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
