"""The processes of a data-parallel training, as the training loop needs them.

:class:`Ranks` is this process's place in the default process group (one process alone when
none is initialised) and the few collective steps a training takes besides DDP's gradient
all-reduce: sums of counts, agreement on stopping, a barrier, and rank 0 telling the others
whether its checks passed (so a refused run folder stops every rank at once, not after a
timeout). :func:`init_from_env` starts the group the way ``torchrun`` describes it.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> "Ranks":
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
            else torch.device("cpu")

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks (float64)."""
        if not self.parallel:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flags: Sequence[bool]) -> list[bool]:
        """Element-wise: whether any rank's flag is set."""
        return [v > 0 for v in self.sum([float(bool(f)) for f in flags])]

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()

    def agree(self, ok: bool, what: str) -> None:
        """Rank 0 tells the others whether ``what`` succeeded there; they raise if not (rank 0
        raises its own error)."""
        if not self.parallel:
            return
        t = torch.tensor([1 if ok else 0], dtype=torch.int64, device=self._device())
        dist.broadcast(t, src=0)
        if not self.main and not bool(t.item()):
            raise RuntimeError(f"rank 0 failed to {what} (its error says why); rank {self.rank} stops too")


def init_from_env(timeout_s: float = 300.0) -> Optional[Ranks]:
    """Start the default process group from ``torchrun``'s environment (``WORLD_SIZE`` > 1,
    ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL when this process has a GPU
    (``LOCAL_RANK`` picks it), gloo otherwise. Returns None when not launched that way."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return Ranks.current() if dist.is_available() and dist.is_initialized() else None
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world} but {name} is not set: launch with torchrun "
                               f"(e.g. torchrun --nproc-per-node {world} -m attend.cli ...)")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Ranks.current()
