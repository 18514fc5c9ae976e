"""Hugging Face ``transformers`` interop: attend as an attention implementation.

    import attend.hf                       # registers "attend" (also: attend.hf.register())
    model = AutoModel.from_pretrained(path, attn_implementation="attend")

Every attention of the model then runs through :func:`attend.attention` (backend
``"auto"``, or the one given to :func:`register`), with the model's own scaling, masks,
dropout and soft-capping. Unlike ``"sdpa"``, it returns the attention weights when the
model is called with ``output_attentions=True``.

Masks: the model's masks are built by ``transformers``' SDPA mask builder, which gives
boolean masks with **True = may attend** (attend's polarity) or ``None`` when nothing
is masked; causal models without padding pass ``is_causal`` instead, which attend's
bottom-right ``causal=True`` reproduces (also with a key/value cache).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import mods
from .functional import attention

__all__ = ["register", "attention_forward", "NAME"]

NAME = "attend"
_backend = "auto"


def attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                      attention_mask: Optional[Tensor], scaling: Optional[float] = None, dropout: float = 0.0,
                      **kwargs) -> tuple[Tensor, Optional[Tensor]]:
    """The ``transformers`` attention-interface function: query (B, H, L, d), key/value
    (B, Hkv, S, d) -> output (B, L, H, d) and the weights (B, H, L, S) or None."""
    L, S = query.shape[2], key.shape[2]
    mask = attention_mask
    if mask is not None:
        mask = mask[..., :S]  # static caches may hand a mask longer than the keys
    is_causal = kwargs.get("is_causal")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", False)
    causal = bool(is_causal) and mask is None and L > 1
    softcap = kwargs.get("softcap")
    want_weights = bool(kwargs.get("output_attentions", False)) or _collecting_attentions()
    out = attention(query, key, value, mask=mask, causal=causal, scale=scaling,
                    score_mod=mods.softcap(softcap) if softcap else None,
                    dropout_p=dropout if module.training else 0.0,
                    return_weights=want_weights, backend=_backend)
    weights = None
    if want_weights:
        out, weights = out
    return out.transpose(1, 2).contiguous(), weights  # (B, L, H, d)


def _collecting_attentions() -> bool:
    """Whether the model call asked for attention weights. Some models (GPT-2) do not pass
    ``output_attentions`` down; transformers 5 then records them through an output
    collector, which is read here (a private API: without it, weights come only when
    ``output_attentions`` reaches the attention call)."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:
        return False
    collected = _active_collector.get()
    return collected is not None and ("attentions" in collected or "cross_attentions" in collected)


def register(backend: str = "auto") -> None:
    """Register ``attn_implementation="attend"`` with ``transformers`` (idempotent).

    ``backend`` is passed to every :func:`attend.attention` call (``"auto"``, ``"eager"``,
    ``"sdpa"``, ``"chunked"``, ...)."""
    global _backend
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        raise ImportError("attend.hf needs transformers >= 4.54: pip install 'attend[hf]'") from None
    from . import backends

    if backend != "auto":
        backends.get(backend)  # raises for an unknown name
    _backend = backend
    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


register()
