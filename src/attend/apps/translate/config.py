"""The translator's training settings: :class:`TrainConfig` (a frozen dataclass, checked on
creation) and its learning-rate schedule, the steps a run plans and the warm-up that fits
them (:func:`planned_steps`, :func:`scaled_warmup`)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ... import _check, _io

__all__ = ["TrainConfig", "planned_steps", "scaled_warmup", "SEED_LIMIT"]

SEED_LIMIT = 2 ** 63  # seeds are in [0, 2**63): what every generator attend seeds accepts


def planned_steps(n_pairs: int, config: "TrainConfig") -> int:
    """Steps a run is planned to take: epochs x batches per epoch, or ``max_steps`` if fewer."""
    total = config.epochs * -(-n_pairs // config.batch_size)
    return min(total, config.max_steps) if config.max_steps else total


def scaled_warmup(default: int, planned: int, fraction: float = 0.1) -> int:
    """Linear warm-up steps for a run of ``planned`` steps: ``default``, but at most
    ``fraction`` (10 %) of the run, and at least 1, so a short run reaches its learning rate."""
    _check.integer(planned, "planned", low=1)
    return max(1, min(default, int(planned * fraction)))


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 100
    clip_norm: float = 1.0
    epochs: int = 10
    lr_decay: float = 0.5  # multiply the LR by this when the validation loss does not improve
    patience: int = 3  # stop after this many evaluations without improvement
    eval_every: int = 0  # also evaluate every this many steps (each epoch's end evaluates anyway); 0 = only there
    max_steps: int = 0  # 0 = no limit
    max_minutes: float = 0.0  # training time budget; 0 = no limit
    label_smoothing: float = 0.0
    seed: int = 0
    # "plateau": only the halvings above; "cosine": also a cosine fall from the peak after the
    # warm-up to 0 at max_steps (which it needs), for runs budgeted in steps
    schedule: str = "plateau"

    def __post_init__(self):
        for name in ("batch_size", "epochs"):
            _check.integer(getattr(self, name), name, low=1)
        for name in ("warmup_steps", "patience", "eval_every", "max_steps", "seed"):
            _check.integer(getattr(self, name), name, low=0)
        if self.seed >= SEED_LIMIT:
            raise ValueError(f"seed must be an int in [0, 2**63), got {self.seed!r}")
        _check.number(self.lr, "lr", low=0, low_open=True)
        for name in ("clip_norm", "max_minutes"):
            _check.number(getattr(self, name), name, low=0)
        _check.number(self.lr_decay, "lr_decay", low=0, high=1, low_open=True, expected="in (0, 1]")
        _check.number(self.label_smoothing, "label_smoothing", low=0, high=1, high_open=True, expected="in [0, 1)")
        if self.schedule not in ("plateau", "cosine"):
            raise ValueError(f"schedule must be 'plateau' or 'cosine', got {self.schedule!r}")
        if self.schedule == "cosine" and self.max_steps <= self.warmup_steps:
            raise ValueError(f"schedule='cosine' falls to 0 at max_steps, which must be above warmup_steps "
                             f"({self.warmup_steps}), got max_steps={self.max_steps}")

    def lr_at(self, step: int, decays: int = 0) -> float:
        """The learning rate of ``step`` (0-based) after ``decays`` plateau halvings: linear
        warm-up, then (``schedule="cosine"``) a cosine fall to 0 at ``max_steps``."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        fall = 1.0
        if self.schedule == "cosine":  # after the warm-up, from 1 down to 0 at max_steps
            done = min(1.0, max(0, step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
            fall = 0.5 * (1.0 + math.cos(math.pi * done))
        return self.lr * warm * fall * self.lr_decay ** decays

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return _io.config_from_dict(cls, d, "train config")
