"""Batched greedy and beam-search decoding for :class:`~attend.models.seq2seq.Seq2Seq` and
:class:`~attend.models.transformer.TransformerSeq2Seq`,
returning the attention weights behind every output word.

Beam search keeps ``beam`` hypotheses per sentence, scores them by the sum of token
log-probabilities, and ranks finished ones by ``score / length ** length_penalty``
(``length_penalty=0``: raw sum; ``1``: mean log-probability per token, counting <eos>).
With ``beam=1`` it is greedy decoding.

Neither search ever picks ``<pad>`` or ``<bos>`` (an undertrained model may rate them
highest): their log-probabilities are set to -inf before the choice, after the softmax, so
a hypothesis's score stays the model's own log-probability of its words.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ... import _check as check
from ...data.text import Vocab
from ...models.seq2seq import Seq2Seq, check_source, reorder_state
from ...models.transformer import TransformerSeq2Seq

__all__ = ["Hypothesis", "greedy", "beam_search", "default_max_len", "MAX_BEAM"]

#: the widest beam :func:`beam_search` takes (beams of 4-10 are usual; studies of wide beams stop near 1000)
MAX_BEAM = 1024


@dataclass
class Hypothesis:
    tokens: list[int]  # output ids, without <eos>
    score: float  # sum of log-probabilities (including <eos> when it was produced)
    weights: Optional[Tensor]  # (len(tokens), S_i): attention of each output word over the source; None without attention


NEVER_DECODED = (Vocab.pad_id, Vocab.bos_id)


def _forbid(logp: Tensor) -> Tensor:
    """``logp`` (…, V) with the tokens that are never decoded at -inf."""
    logp = logp.clone()
    logp[..., list(NEVER_DECODED)] = float("-inf")
    return logp


def default_max_len(src_lengths: Tensor) -> Tensor:
    """Each sentence's longest output by default: 2 x its source length + 10 (its own: never
    its batch's, so a translation does not depend on the sentences it is batched with)."""
    return src_lengths.long().cpu() * 2 + 10


def _limits(model: Seq2Seq, src: Tensor, src_lengths: Tensor, max_len: Optional[int]) -> Tensor:
    """Each sentence's longest output (B,), checked; within the positions a model with learned
    ones has (its config's ``max_len``: the default is cut there, a larger ``max_len`` refused)."""
    if not isinstance(model, (Seq2Seq, TransformerSeq2Seq)):
        raise TypeError(f"model must be a Seq2Seq or TransformerSeq2Seq, got {type(model).__name__}")
    check_source(src, src_lengths, model.config.src_vocab)
    cap = model.config.max_len if getattr(model.config, "positional", None) == "learned" else None
    if max_len is None:
        limits = default_max_len(src_lengths)
        return limits if cap is None else limits.clamp(max=cap)
    check.integer(max_len, "max_len", low=1)
    if cap is not None and max_len > cap:
        raise ValueError(f"max_len: {max_len} output words, but the model's learned positions stop at {cap} (its "
                         "config's max_len)")
    return torch.full((src.shape[0],), max_len, dtype=torch.long)


@torch.no_grad()
def greedy(model: Seq2Seq, src: Tensor, src_lengths: Tensor, *, max_len: Optional[int] = None) -> list[Hypothesis]:
    """Pick the most probable word at every step, for the whole batch at once."""
    limits = _limits(model, src, src_lengths, max_len)  # (B,): each sentence's longest output
    B = src.shape[0]
    if B == 0:
        return []
    enc = model.encode(src, src_lengths)
    dev = src.device  # (the bookkeeping beside the model's outputs: one device)
    prev = torch.full((B, 1), Vocab.bos_id, dtype=torch.long, device=dev)
    state = enc.state
    limits = limits.to(dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    tokens, scores, weights = [], torch.zeros(B, dtype=torch.float64, device=dev), []
    lengths = limits.clone()
    for t in range(int(limits.max())):
        done |= limits <= t  # (a sentence at its longest takes no more words)
        if bool(done.all()):
            break
        logits, state, w = model.decode(prev, state, enc)  # (B, 1, V), (B, 1, S)
        logp = logits[:, 0].log_softmax(-1).double()
        best = _forbid(logp).argmax(-1)  # (B,)
        scores += torch.where(done, 0.0, logp.gather(1, best[:, None])[:, 0])
        tokens.append(best)
        if w is not None:
            weights.append(w[:, 0])
        ended = (best == Vocab.eos_id) & ~done
        lengths[ended] = t
        done |= ended
        if bool(done.all()):
            break
        prev = best[:, None]
    ids = torch.stack(tokens, 1)  # (B, steps)
    W = torch.stack(weights, 1) if weights else None  # (B, steps, S)
    out = []
    for b in range(B):
        n, s = int(lengths[b]), int(src_lengths[b])
        out.append(Hypothesis(ids[b, :n].tolist(), float(scores[b]), None if W is None else W[b, :n, :s].clone()))
    return out


@torch.no_grad()
def beam_search(model: Seq2Seq, src: Tensor, src_lengths: Tensor, *, beam: int = 4,
                max_len: Optional[int] = None, length_penalty: float = 1.0) -> list[Hypothesis]:
    """Beam search over the whole batch at once (B * beam rows)."""
    check.integer(beam, "beam", low=1, high=MAX_BEAM, expected=f"an int in [1, {MAX_BEAM}] (each beam holds a copy "
                  "of the encoder's states)")  # (refused before allocating: 10^5 beams took 10.8 GB)
    check.number(length_penalty, "length_penalty", low=0)
    limits = _limits(model, src, src_lengths, max_len)  # (B,): each sentence's longest output
    B, K, dev = src.shape[0], beam, src.device
    if B == 0:
        return []
    enc = model.encode(src, src_lengths)
    rows = torch.arange(B, device=dev).repeat_interleave(K)  # (B*K,): the sentence of each beam row
    enc = type(enc)(enc.memory[rows], enc.mask[rows], reorder_state(enc.state, rows), enc.final[rows])
    state = enc.state
    scores = torch.full((B, K), float("-inf"), dtype=torch.float64, device=dev)
    scores[:, 0] = 0.0  # all beams start identical: keep one
    finished = torch.zeros(B, K, dtype=torch.bool, device=dev)
    length = torch.zeros(B, K, dtype=torch.long, device=dev)  # tokens so far, <eos> counted
    hist = torch.empty(B, K, 0, dtype=torch.long, device=dev)
    whist: Optional[Tensor] = None  # (B, K, steps, S)
    prev = torch.full((B * K, 1), Vocab.bos_id, dtype=torch.long, device=dev)
    at_most = limits.to(dev)[:, None]  # (B, 1)
    for t in range(int(limits.max())):
        finished = finished | (at_most <= t)  # (a sentence at its longest takes no more words)
        if bool(finished.all()):
            break
        logits, state, w = model.decode(prev, state, enc)  # (B*K, 1, V)
        logp = _forbid(logits[:, 0].log_softmax(-1).double().view(B, K, -1))  # (B, K, V)
        V = logp.shape[-1]
        # A finished beam continues only with <pad> at no cost, so it keeps its place.
        frozen = torch.full_like(logp, float("-inf"))
        frozen[..., Vocab.pad_id] = 0.0
        logp = torch.where(finished[..., None], frozen, logp)
        cand = (scores[..., None] + logp).view(B, K * V)  # (B, K*V)
        top, idx = cand.topk(K, dim=-1)  # (B, K)
        src_beam, tok = idx // V, idx % V  # (B, K)
        scores = top
        finished = finished.gather(1, src_beam)
        length = length.gather(1, src_beam) + (~finished).long()
        finished = finished | (tok == Vocab.eos_id)
        hist = torch.cat([hist.gather(1, src_beam[..., None].expand(-1, -1, hist.shape[-1])), tok[..., None]], -1)
        flat = (src_beam + torch.arange(B, device=dev)[:, None] * K).view(-1)  # (B*K,) rows to keep
        state = reorder_state(state, flat)
        if w is not None:
            w = w[:, 0].view(B, K, 1, -1)  # (B, K, 1, S)
            whist = w if whist is None else torch.cat(
                [whist.gather(1, src_beam[..., None, None].expand(-1, -1, *whist.shape[2:])), w.gather(1, src_beam[..., None, None].expand(-1, -1, 1, w.shape[-1]))], 2)
        prev = tok.view(B * K, 1)
        if bool(finished.all()):
            break
    norm = scores / length.clamp(min=1).double() ** length_penalty  # (B, K)
    norm = torch.where(torch.isfinite(scores), norm, torch.full_like(norm, float("-inf")))
    best = norm.argmax(-1)  # (B,): first index on ties, so beam 1 == greedy
    out = []
    for b in range(B):
        k = int(best[b])
        seq = hist[b, k].tolist()
        n = seq.index(Vocab.eos_id) if Vocab.eos_id in seq else int(length[b, k])  # (after it: <pad>s)
        s = int(src_lengths[b])
        out.append(Hypothesis(seq[:n], float(scores[b, k]), None if whist is None else whist[b, k, :n, :s].clone()))
    return out
