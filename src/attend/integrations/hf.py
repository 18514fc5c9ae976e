"""Hugging Face ``transformers`` interop: attend as an attention implementation.

    import attend.integrations.hf          # registers "attend" (also: attend.integrations.hf.register())
    model = AutoModel.from_pretrained(path, attn_implementation="attend")

Every attention of the model then runs through :func:`attend.attention` (backend
``"auto"``, or the one given to :func:`register`), with the model's own scaling, masks,
dropout, soft-capping (Gemma 2), position bias (T5) and attention sinks (GPT-OSS; the
weights returned follow each family's eager convention: with the sinks' share for GPT-OSS,
without it for Granite's sliding-window models; another family with sinks is refused when
it asks for weights).
Unlike ``"sdpa"``, it returns the attention weights when the model is called with
``output_attentions=True``.

The calling convention followed is the one ``transformers``' own SDPA integration
defines (its ``sdpa_attention_forward``):

- masks come from ``transformers``' SDPA mask builder: boolean, **True = may attend**
  (attend's polarity), or ``None`` when nothing needs masking; a float mask is added to
  the scores; a mask longer than the keys (static caches) is cut to them;
- ``is_causal`` (the keyword, else the module's attribute, else True) counts only when
  there is no mask and more than one query, and then means **top-left** alignment:
  query ``i`` sees keys ``0..i``. With a static cache (more key slots than queries, the
  slots past the queries still empty) the empty slots are therefore never attended:
  attend's ``causal=True`` is bottom-right, so the keys are cut to the queries' length
  first (the weights returned are padded back with zeros);
- ``position_bias`` (T5) is an additive bias, combined with the mask (its gradient
  reaches the bias); ``s_aux`` (GPT-OSS) are attention sinks; ``softcap`` soft-caps the
  scores; ``sliding_window`` is encoded in the mask the builder gives, and applied by
  attend when there is no mask.

Any other keyword that asks for something (a value that is not None) and is not known
to be information only (``position_ids``, ``use_cache``, ``output_hidden_states``, ...)
is refused with a ``TypeError`` naming it: attend never ignores an argument it does not
implement.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _check, mods
from ..functional import attention

__all__ = ["register", "attention_forward", "NAME"]

NAME = "attend"
_backend = "auto"

# Keywords transformers passes that describe the call but ask nothing of the attention
# itself (positions are already applied to q/k; caching and outputs are the model's job).
_INFORMATION_ONLY = frozenset({
    "position_ids", "cache_position", "use_cache", "output_hidden_states", "output_router_logits",
    "return_dict", "num_items_in_batch", "encoder_hidden_states", "encoder_attention_mask", "past_key_values",
    "past_key_value", "layer_idx", "token_type_ids",
})
_HANDLED = frozenset({"is_causal", "softcap", "sliding_window", "s_aux", "position_bias", "output_attentions",
                      "deterministic"})

# The weights a family's eager attention returns when it has sinks (``s_aux``): most put the
# sink in the softmax and drop its column (rows sum to less than 1, as attend's weights do);
# Granite's sliding-window models scale the output by sigmoid(lse - sink) instead and return
# the softmax without the sink (rows sum to 1). The outputs are the same either way.
_SINK_IN_WEIGHTS = frozenset({"gpt_oss", "deepseek_v4", "flint", "hy_v4", "mimo_v2_flash", "openai_privacy_filter"})
_SINK_OUT_OF_WEIGHTS = frozenset({"granite_swa", "granitemoe_swa"})


def attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                      attention_mask: Optional[Tensor], scaling: Optional[float] = None, dropout: float = 0.0,
                      **kwargs) -> tuple[Tensor, Optional[Tensor]]:
    """The ``transformers`` attention-interface function: query (B, H, L, d), key/value
    (B, Hkv, S, d) -> output (B, L, H, d) and the weights (B, H, L, S) or None."""
    for name, val in kwargs.items():
        if val is not None and name not in _HANDLED and name not in _INFORMATION_ONLY:
            raise TypeError(f"attn_implementation='attend' does not implement the keyword {name!r} "
                            f"(got {type(val).__name__}); refusing rather than ignoring it")
    if kwargs.get("deterministic") and query.device.type != "cpu" and not torch.are_deterministic_algorithms_enabled():
        # (ModernBERT passes its flash-attention flag; False asks nothing.) On the CPU every attend
        # backend is deterministic; on a GPU the fused backward's atomic mode is not.
        raise TypeError("attn_implementation='attend' was asked for deterministic=True on a GPU: enable "
                        "torch.use_deterministic_algorithms(True), which attend's kernels follow")
    L, S = query.shape[2], key.shape[2]
    mask = attention_mask
    if mask is not None:
        mask = mask[..., :S]  # static caches may hand a mask longer than the keys
    is_causal = kwargs.get("is_causal")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    causal = bool(is_causal) and mask is None and L > 1
    bias = kwargs.get("position_bias")
    if bias is not None:
        bias = bias[..., :S]
    S_used = S
    rule = None
    if causal and S > L:  # top-left causal: the slots after the last query are never seen
        S_used = L
        key, value = key[:, :, :L], value[:, :, :L]
        bias = bias[..., :L] if bias is not None else None
    elif causal and S < L:  # top-left with fewer keys than queries: query i sees keys 0..i
        causal, rule = False, _top_left
    if bias is not None:
        if mask is None:
            mask = bias
        elif mask.dtype == torch.bool:
            mask = bias.masked_fill(~mask, float("-inf"))
        else:
            mask = bias + mask
    window = None
    sliding = kwargs.get("sliding_window")
    if sliding is not None and attention_mask is None:
        # transformers' sliding windows keep keys with i - j < sliding_window (its own masks encode it)
        _check.integer(sliding, "sliding_window", low=1, expected="a positive int")
        if rule is None:
            window = (sliding - 1, None)
        else:
            rule = _top_left_window(sliding)
    if rule is not None:
        mask = rule if mask is None else _with_bias(rule, mask)
    softcap = kwargs.get("softcap")
    want_weights = bool(kwargs.get("output_attentions", False)) or _collecting_attentions()
    sinks_out = want_weights and kwargs.get("s_aux") is not None and _sinks_out_of_weights(module, dropout)
    out = attention(query, key, value, mask=mask, causal=causal, window=window, scale=scaling,
                    score_mod=mods.softcap(softcap) if softcap else None, sinks=kwargs.get("s_aux"),
                    dropout_p=dropout if module.training else 0.0,
                    return_weights=want_weights, backend=_backend)
    weights = None
    if want_weights:
        out, weights = out
        if S_used < S:  # the key slots cut above get weight exactly 0
            weights = torch.nn.functional.pad(weights, (0, S - S_used))
        if sinks_out:  # the softmax without the sink: each row over its own total (a dead row stays 0)
            total = weights.sum(-1, keepdim=True)
            weights = torch.where(total > 0, weights / total.masked_fill(total == 0, 1), 0.0)
    return out.transpose(1, 2).contiguous(), weights  # (B, L, H, d)


def _sinks_out_of_weights(module: torch.nn.Module, dropout: float) -> bool:
    """Whether the model's eager attention returns its weights without the sinks' share
    (True) or with it (False, attend's own); a family whose convention attend does not
    know is refused, as is dropout where the two differ (the share before it is lost)."""
    family = getattr(getattr(module, "config", None), "model_type", None)
    if family in _SINK_IN_WEIGHTS:
        return False
    if family not in _SINK_OUT_OF_WEIGHTS:
        known = ", ".join(sorted(_SINK_IN_WEIGHTS | _SINK_OUT_OF_WEIGHTS))
        got = f"model type {family!r}" if family is not None else "an attention module with no config.model_type"
        raise TypeError(f"attn_implementation='attend' returns attention weights with sinks (s_aux) only for "
                        f"model types whose eager weights it knows ({known}); got {got}: call it without "
                        "output_attentions")
    if module.training and dropout:
        raise TypeError(f"attn_implementation='attend' cannot return {family}'s attention weights (the softmax "
                        "without its sinks) under dropout: call it in eval mode or without output_attentions")
    return True


def _top_left(b, h, i, j):
    """Top-left causal on raw indices (transformers' is_causal when there are fewer keys than queries)."""
    return j <= i


def _top_left_window(size: int):
    def rule(b, h, i, j):
        return (j <= i) & (j > i - size)
    return rule


def _with_bias(rule, bias: Tensor) -> Tensor:
    """A float mask: ``bias`` where ``rule`` allows, -inf elsewhere (rule on raw indices)."""
    L, S = bias.shape[-2], bias.shape[-1]
    i = torch.arange(L, device=bias.device).view(-1, 1)
    j = torch.arange(S, device=bias.device).view(1, -1)
    return bias.masked_fill(~rule(None, None, i, j), float("-inf"))


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
        raise ImportError("attend.integrations.hf needs transformers >= 4.54: pip install 'attend[hf]'") from None
    from .. import backends

    if backend != "auto":
        backends.get(backend)  # raises for an unknown name
    _backend = backend
    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


register()
