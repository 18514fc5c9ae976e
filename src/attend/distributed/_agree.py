"""What the ranks of one sequence-parallel call must agree on, checked in one gather before
anything else is sent (:func:`agree`), and non-finite inputs kept in the rows that use them
across ranks (:func:`quarantine`), as :func:`attend.attention` keeps them in one process.

A call whose ranks disagree (a batch, a head count, a dtype, ``causal`` ...) cannot be computed:
left to the messages, the pieces would not fit (an abort inside the transport, or one rank left
waiting) or, worse, fit and give an answer. So each rank sends what it holds and was asked in
one small gather, and every rank raises the same error, naming the argument, when they differ,
or when one rank refused its own arguments.
"""
from __future__ import annotations

import dataclasses
import re
import types
import zlib
from typing import Any, Mapping, NamedTuple, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .._nonfinite import _all_finite
from ..backends.base import AttentionCall

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# (index in the gathered row, what differs when it does)
_SHAPES = ((3, "batch of query, key and value"), (4, "query heads"), (5, "key/value heads"),
           (6, "head size of query and key"), (7, "head size of value"), (8, "dtype"))
_FIXED = 10  # L, S, piece, B, Hq, Hkv, E, Ev, dtype, finite; then the options; last, "refused"


class Agreed(NamedTuple):
    lengths: list[tuple[int, int]]  # every rank's (L, S)
    finite: bool  # every rank's query, key and value hold only finite numbers


def agree(call: Optional[AttentionCall], group, world: int, device, *, piece: int = 0,
          options: Mapping[str, Any] = {}, failed: Optional[Exception] = None) -> Agreed:
    """Gather every rank's lengths, sizes, dtype, ``options`` (compared by their ``repr``) and
    whether its inputs are finite; raise, on every rank, when one refused its arguments
    (``failed``: this rank's error, raised here after the gather) or when they differ."""
    if failed is None:
        q = call.query
        dtype = _DTYPES.index(q.dtype) if q.dtype in _DTYPES else len(_DTYPES)
        finite = q.device.type != "cpu" or _all_finite(call.query, call.key, call.value)  # (as in one process: on a
        row = [call.L, call.S, piece, call.B, call.Hq, call.Hkv, q.shape[-1], call.Ev, dtype, int(finite)]  # GPU the
        # check would stall the stream on every call, so there it is skipped)
        row += [zlib.crc32(_describe(v).encode()) for v in options.values()] + [0]
    else:
        row = [0] * (_FIXED + len(options)) + [1]
    mine = torch.tensor(row, dtype=torch.int64, device=device)  # (NCCL: on the GPU)
    got = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(got, mine, group=group)
    rows = [t.tolist() for t in got]
    if failed is not None:
        raise failed
    refused = [r for r in range(world) if rows[r][-1]]
    if refused:
        raise ValueError(f"rank(s) {refused} of the group refused their arguments (their own error says why); "
                         "every rank must call with the same, valid arguments")
    where = f"(ranks 0..{world - 1})"
    for i, what in _SHAPES:
        seen = [r[i] for r in rows]
        if len(set(seen)) > 1:
            shown = [str(_DTYPES[x]) if i == 8 and x < len(_DTYPES) else x for x in seen]
            raise ValueError(f"ranks disagree on the {what}: {shown} {where}; each rank holds a span of the same "
                             "sequences, so only the lengths may differ")
    for n, name in enumerate(options):
        seen = {r[_FIXED + n] for r in rows}
        if len(seen) > 1:
            odd = [r for r in range(world) if rows[r][_FIXED + n] != rows[0][_FIXED + n]]
            raise ValueError(f"{name} differs between the ranks: rank(s) {odd} gave another than rank 0 (this "
                             f"rank gave {options[name]!r}); every rank must make the same call")
    pieces = [r[2] for r in rows]
    if len(set(pieces)) > 1:
        raise ValueError(f"piece must be the same on every rank, got {pieces} {where}")
    return Agreed([(r[0], r[1]) for r in rows], all(r[9] for r in rows))


def _describe(value: Any) -> str:
    """What an argument is, the same in every process: a function by its name (a ``repr``
    holds its address), a tensor by its shape and dtype, anything else by its ``repr``."""
    if isinstance(value, Tensor):
        return f"tensor{tuple(value.shape)}{value.dtype}"
    if isinstance(value, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))  # (an object's address differs in every process,
    return re.sub(r",?\s*device='[^']*'", "", text)  # and a tensor's device from rank to rank under NCCL)


def device_of(query, group):
    """Where this rank's gather runs: the query's device, else (a query that is not a tensor,
    refused after the gather) the one the group's backend needs."""
    if isinstance(query, Tensor):
        return query.device
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_TILE = 1024  # keys per step when finding the rows non-finite inputs reach


def quarantine(call: AttentionCall, group, world: int, rank: int, q_spans, k_spans, rule,
               Sg: int) -> tuple[AttentionCall, Tensor]:
    """Non-finite inputs of a call whose ranks do not all hold finite ones (every rank calls
    it): each rank zeroes its own, the ranks exchange which keys were bad, and each returns its
    rows (B, Hq, L) to be set to NaN afterwards: those that may attend a bad key or value under
    ``rule`` (global positions), and those whose query is bad and that may attend any key.
    :func:`attend._nonfinite.quarantine` in one process, with the keys of every rank."""
    q, k, v = call.query, call.key, call.value
    bad_kv = ~(torch.isfinite(k).all(dim=-1) & torch.isfinite(v).all(dim=-1))  # (B, Hkv, S_r)
    bad_q = ~torch.isfinite(q).all(dim=-1)  # (B, Hq, L_r)
    k, v = k.masked_fill(bad_kv.unsqueeze(-1), 0.0), v.masked_fill(bad_kv.unsqueeze(-1), 0.0)
    q = q.masked_fill(bad_q.unsqueeze(-1), 0.0)
    most = max(sum(z - a for a, z in s) for s in k_spans)
    mine = torch.zeros(call.B, call.Hkv, most, dtype=torch.uint8, device=q.device)
    mine[..., :call.S] = bad_kv
    got = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(got, mine, group=group)
    bad = torch.zeros(call.B, call.Hkv, Sg, dtype=torch.bool, device=q.device)
    for r in range(world):
        at = 0
        for a, z in k_spans[r]:
            bad[..., a:z] = got[r][..., at:at + z - a].bool()
            at += z - a
    bad = call.expand_kv(bad.unsqueeze(-1)).squeeze(-1)  # (B, Hq, Sg): per query head
    rows = torch.cat([torch.arange(a, z, device=q.device) for a, z in q_spans[rank]] +
                     [torch.zeros(0, dtype=torch.long, device=q.device)])  # this rank's rows, global positions
    hit = torch.zeros(call.B, call.Hq, call.L, dtype=torch.bool, device=q.device)
    for j in bad.any(dim=1).any(dim=0).nonzero().flatten().split(_TILE):
        seen = bad[:, :, j].unsqueeze(2)  # (B, Hq, 1, keys)
        allowed = _allowed(rule, call, rows, j)
        hit |= (seen if allowed is None else seen & allowed).any(dim=-1)
    poisoned = bad_q.any(dim=1).any(dim=0).nonzero().flatten()  # local rows with a bad query somewhere
    if poisoned.numel():
        live = torch.zeros(call.B, call.Hq, poisoned.numel(), dtype=torch.bool, device=q.device)
        for j in torch.arange(Sg, device=q.device).split(_TILE):
            allowed = _allowed(rule, call, rows[poisoned], j)
            live |= True if allowed is None else allowed.any(dim=-1)
        hit[:, :, poisoned] |= bad_q[:, :, poisoned] & live
    return dataclasses.replace(call, query=q, key=k, value=v), hit


def _allowed(rule, call: AttentionCall, i: Tensor, j: Tensor) -> Optional[Tensor]:
    """``rule`` at global rows ``i`` x keys ``j``, (B, Hq, len(i), len(j)); None: every key."""
    if rule is None:
        return None
    dev = i.device
    b = torch.arange(call.B, device=dev).view(-1, 1, 1, 1)
    h = torch.arange(call.Hq, device=dev).view(1, -1, 1, 1)
    got = torch.as_tensor(rule(b, h, i.view(1, 1, -1, 1), j.view(1, 1, 1, -1)), dtype=torch.bool, device=dev)
    return got.expand(call.B, call.Hq, i.numel(), j.numel())
