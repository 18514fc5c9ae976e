"""The backend registry: how an attention call is computed.

Every backend has one signature (:class:`Backend`): ``can_run(call)`` returns the
reasons it cannot run a call, ``run(call)`` computes it. ``backend="auto"`` walks the
registry in priority order and takes the first backend whose ``can_run`` and
``auto_skip`` return nothing, so :func:`attend.explain` reports exactly what ``auto``
does. Registered here, fastest first:

======== ==========================================================================
flex     PyTorch's FlexAttention compiled for the CPU, inference only: taken by auto for
         mask rules that leave blocks out and for ALiBi with causal or past 2048 keys, where
         its fused kernel is fastest
inductor tiles of queries x the keys their rules allow, compiled by torch.compile (CPU): score
         modifiers, additive/custom scores, sinks, block-sparse masks, the weights; taken by
         auto only where SDPA cannot do as well and the call repays compiling
sdpa     PyTorch's fused ``scaled_dot_product_attention`` (dot-like scores, no weights); on the
         CPU also a relative-bias table or ALiBi, as one kernel call with the biases a strided view
triton   fused Triton kernels on a GPU: dot-like scores, compiled-in masks and score_mods,
         and the weights (the CPU runs them only under ``TRITON_INTERPRET=1``, for tests)
eager    the readable reference; materialises the (L, S) scores; everything
chunked  online softmax over tiles of queries and keys; memory O(tile); every score function
======== ==========================================================================

A backend instance can also be passed directly, e.g.
``attend.attention(q, k, v, backend=attend.backends.Chunked(block_size=64))``.
"""
from __future__ import annotations

from .base import AttentionCall, Backend, UnsupportedCall
from .chunked import Chunked
from .eager import Eager
from .flex import Flex
from .inductor import Inductor
from .triton import Triton
from .sdpa import SDPA

__all__ = [
    "AttentionCall",
    "Backend",
    "UnsupportedCall",
    "Chunked",
    "Eager",
    "Flex",
    "Inductor",
    "SDPA",
    "Triton",
    "register",
    "get",
    "names",
    "select",
]

_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend, *, replace: bool = False) -> Backend:
    """Add ``backend`` to the registry (after those already there, so at lower auto priority)."""
    if not isinstance(backend, Backend):
        raise TypeError(f"backend must be an attend.backends.Backend, got {type(backend).__name__}")
    if backend.name in _REGISTRY and not replace:
        raise ValueError(f"a backend named {backend.name!r} is already registered (pass replace=True)")
    _REGISTRY[backend.name] = backend
    return backend


def names() -> list[str]:
    """Registered backend names, in auto priority order."""
    return list(_REGISTRY)


def get(name: str) -> Backend:
    """The registered backend called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"backend must be 'auto' or one of {names()}, got {name!r}") from None


def select(call: AttentionCall, backend: "str | Backend" = "auto") -> tuple[Backend, dict[str, list[str]]]:
    """Pick the backend for ``call``; also return, for each other backend, why it was not picked.

    A named backend (or instance) that cannot run the call raises :class:`UnsupportedCall`.
    """
    if backend != "auto":
        chosen = backend if isinstance(backend, Backend) else get(backend)
        why = chosen.can_run(call)
        if why:
            raise UnsupportedCall(f"backend {chosen.name!r} cannot run this call: {'; '.join(why)}")
        return chosen, {}
    reasons: dict[str, list[str]] = {}
    chosen = None
    for b in _REGISTRY.values():
        if chosen is not None:
            reasons[b.name] = [f"{chosen.name!r} comes first in priority"]
            continue
        why = b.can_run(call)
        skip = [] if why else b.auto_skip(call)
        if why or skip:
            reasons[b.name] = why + skip
        else:
            chosen = b
    if chosen is None:
        # Only preferences (auto_skip) stood in the way: run the first backend that can.
        runnable = [b for b in _REGISTRY.values() if not b.can_run(call)]
        if not runnable:
            raise UnsupportedCall(
                "no backend can run this call: " + "; ".join(f"{n}: {', '.join(r)}" for n, r in reasons.items())
            )
        chosen = runnable[0]
        reasons.pop(chosen.name, None)
    return chosen, reasons


register(Flex())
register(Inductor())
register(SDPA())
register(Triton())
register(Eager())
register(Chunked())
