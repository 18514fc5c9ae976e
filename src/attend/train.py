"""Training loop for the translator: teacher forcing, Adam, gradient clipping, a
learning-rate schedule (linear warm-up, then halving whenever the validation loss stops
improving), early stopping, progress with tqdm, and resumable checkpoints.

Files in the run folder ``out_dir``:

- ``model.safetensors``: the weights with the best validation loss so far;
- ``state.safetensors``: everything needed to resume (model, Adam moments, step, epoch,
  position in the epoch's batch order, schedule, history, the torch RNG state), so a
  resumed run ends bit-identical to an uninterrupted one (on the same machine);
- ``history.json``: one entry per evaluation.

Every file is written atomically. SIGINT (Ctrl-C) and SIGTERM set a flag; the loop saves
at the next step boundary and raises :class:`TrainingInterrupted` (exit codes 130 / 143).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from . import _io
from .data import Batch, LengthGroupedBatches, Vocab, make_batch

__all__ = ["TrainConfig", "Trainer", "TrainingInterrupted", "sequence_loss"]


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 100
    clip_norm: float = 1.0
    epochs: int = 10
    lr_decay: float = 0.5  # multiply the LR by this when the validation loss does not improve
    patience: int = 3  # stop after this many evaluations without improvement
    eval_every: int = 0  # steps between evaluations; 0 = at the end of each epoch
    max_steps: int = 0  # 0 = no limit
    max_minutes: float = 0.0  # training time budget; 0 = no limit
    label_smoothing: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name in ("batch_size", "epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("warmup_steps", "patience", "eval_every", "max_steps", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        for name, lo, hi in (("lr", 0.0, math.inf), ("clip_norm", 0.0, math.inf), ("max_minutes", 0.0, math.inf)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v < hi) or (name == "lr" and v == 0):
                raise ValueError(f"{name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {v!r}")
        if isinstance(self.lr_decay, bool) or not isinstance(self.lr_decay, (int, float)) or not (0 < self.lr_decay <= 1):
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        if isinstance(self.label_smoothing, bool) or not isinstance(self.label_smoothing, (int, float)) \
                or not (0 <= self.label_smoothing < 1):
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return _io.config_from_dict(cls, d, "train config")


class TrainingInterrupted(Exception):
    """Training stopped by a signal (or :meth:`Trainer.request_stop`); the state is saved."""

    def __init__(self, signum: int, out_dir: str):
        self.signum, self.out_dir = signum, out_dir
        self.exit_code = 128 + signum
        super().__init__(f"training interrupted (signal {signum}); state saved in {out_dir}")


def sequence_loss(model: nn.Module, batch: Batch, label_smoothing: float = 0.0,
                  reduction: str = "mean") -> tuple[Tensor, int]:
    """Cross-entropy per target token (padding ignored; mean or sum) and the token count."""
    logits, _ = model(batch.src, batch.src_lengths, batch.tgt_in)  # (B, T, V)
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=Vocab.pad_id,
                                       label_smoothing=label_smoothing, reduction=reduction)
    return loss, batch.n_tgt_tokens


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: Sequence[Batch]) -> float:
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for b in batches:
        loss, tokens = sequence_loss(model, b, reduction="sum")
        total, n = total + float(loss), n + tokens
    model.train(was)
    return total / max(n, 1)


class Trainer:
    """Train ``model`` on id pairs; see the module docstring for the files it writes."""

    def __init__(self, model: nn.Module, config: TrainConfig, train_pairs, valid_pairs, out_dir: str | os.PathLike,
                 *, progress: bool = True):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if not valid_pairs:
            raise ValueError("valid_pairs is empty: early stopping needs a validation set")
        self.model, self.config, self.out_dir, self.progress = model, config, os.fspath(out_dir), progress
        self.batches = LengthGroupedBatches(train_pairs, batch_size=config.batch_size, seed=config.seed)
        vb = LengthGroupedBatches(valid_pairs, batch_size=config.batch_size, shuffle=False)
        self.valid_batches = [vb.batch(ix) for ix in vb.order(0)]
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        # trainer state (all of it goes into state.safetensors)
        self.step = self.epoch = self.position = 0
        self.decays = self.bad_evals = 0
        self.best_valid = math.inf
        self.last_eval_step = -1
        self.seconds = 0.0
        self.tokens = 0
        self.losses: list[float] = []  # training loss of every step
        self.history: list[dict] = []
        self._stop: Optional[int] = None

    # -- schedule ------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.config.warmup_steps) if self.config.warmup_steps else 1.0
        return self.config.lr * warm * self.config.lr_decay ** self.decays

    # -- state ---------------------------------------------------------------------------
    @property
    def state_path(self) -> str:
        return os.path.join(self.out_dir, "state.safetensors")

    @property
    def model_path(self) -> str:
        return os.path.join(self.out_dir, "model.safetensors")

    def _scalars(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "position": self.position, "decays": self.decays,
                "bad_evals": self.bad_evals, "best_valid": self.best_valid if math.isfinite(self.best_valid) else None,
                "last_eval_step": self.last_eval_step, "seconds": self.seconds, "tokens": self.tokens,
                "history": self.history, "config": self.config.to_dict()}

    def save_state(self) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt = self.optimizer.state_dict()
        for i, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"optim.{i}.{k}"] = v if isinstance(v, Tensor) else torch.tensor(v)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["history.loss"] = torch.tensor(self.losses, dtype=torch.float64)
        meta = {"trainer": json.dumps(self._scalars()), "param_groups": json.dumps(opt["param_groups"])}
        _io.save_tensors(self.state_path, tensors, meta)

    def load_state(self) -> None:
        path = self.state_path
        tensors, meta = _io.load_tensors(path, "training state")
        try:
            scalars = json.loads(meta["trainer"])
            groups = json.loads(meta["param_groups"])
        except (KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: training state metadata is missing or malformed ({e})") from None
        if scalars.get("config") != self.config.to_dict():
            raise ValueError(f"{path}: was written with a different training config; resume with the same settings")
        model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        _io.check_state_dict(path, self.model.state_dict(), model_sd)
        self.model.load_state_dict(model_sd)
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v
        try:
            self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: optimizer state does not fit this model ({e})") from None
        if "rng.torch" not in tensors or "history.loss" not in tensors:
            raise ValueError(f"{path}: missing tensor 'rng.torch' or 'history.loss'")
        torch.set_rng_state(tensors["rng.torch"])
        self.losses = tensors["history.loss"].tolist()
        for k in ("step", "epoch", "position", "decays", "bad_evals", "last_eval_step", "seconds", "tokens", "history"):
            setattr(self, k, scalars[k])
        self.best_valid = math.inf if scalars["best_valid"] is None else scalars["best_valid"]

    def save_model(self, valid_loss: Optional[float]) -> None:
        _io.save_tensors(self.model_path, self.model.state_dict(),
                         {"step": str(self.step), "valid_loss": "none" if valid_loss is None else repr(valid_loss)})

    # -- signals -------------------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Ask the loop to save and stop at the next step boundary (what SIGINT does)."""
        self._stop = signum

    def _handler(self, signum, frame):
        if self._stop is not None:  # second Ctrl-C: stop now (the last saved files are intact)
            raise KeyboardInterrupt
        self._stop = signum

    # -- the loop ------------------------------------------------------------------------
    def _evaluate(self) -> bool:
        """Validate, update schedule / early stopping / best model. Returns True to stop."""
        valid = evaluate_loss(self.model, self.valid_batches)
        self.last_eval_step = self.step
        improved = valid < self.best_valid
        if improved:
            self.best_valid, self.bad_evals = valid, 0
            self.save_model(valid)
        else:
            self.bad_evals += 1
            self.decays += 1
        recent = self.losses[-max(1, len(self.batches)):]
        self.history.append({"step": self.step, "epoch": self.epoch, "train_loss": sum(recent) / max(len(recent), 1),
                             "valid_loss": valid, "lr": self.lr_at(self.step), "seconds": round(self.seconds, 2),
                             "tokens_per_s": round(self.tokens / max(self.seconds, 1e-9), 1)})
        _io.write_json(os.path.join(self.out_dir, "history.json"), self.history)
        return self.bad_evals >= self.config.patience > 0

    def fit(self, *, resume: bool = False, on_step: Optional[Callable[["Trainer"], None]] = None) -> list[dict]:
        """Train until the epochs, ``max_steps`` or ``max_minutes`` run out, or early stopping.
        Returns the history (one dict per evaluation)."""
        os.makedirs(self.out_dir, exist_ok=True)
        if resume:
            self.load_state()
        else:
            torch.manual_seed(self.config.seed)
        cfg = self.config
        installed = []
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                installed.append((s, signal.signal(s, self._handler)))
        try:
            return self._loop(cfg, on_step)
        finally:
            for s, old in installed:
                signal.signal(s, old)

    def _loop(self, cfg: TrainConfig, on_step) -> list[dict]:
        from tqdm.auto import tqdm

        self.model.train()
        stop = False
        while self.epoch < cfg.epochs and not stop:
            order = self.batches.order(self.epoch)
            bar = tqdm(total=len(order), initial=self.position, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                       disable=not self.progress, leave=False, dynamic_ncols=True)
            while self.position < len(order):
                if self._stop is not None:
                    bar.close()
                    self._save_interrupted()
                t0 = time.perf_counter()
                batch = self.batches.batch(order[self.position])
                for g in self.optimizer.param_groups:
                    g["lr"] = self.lr_at(self.step)
                loss, n_tok = sequence_loss(self.model, batch, cfg.label_smoothing)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_norm > 0:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
                self.optimizer.step()
                self.step += 1
                self.position += 1
                self.losses.append(float(loss.detach()))
                self.tokens += n_tok + batch.n_src_tokens
                self.seconds += time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix(loss=f"{self.losses[-1]:.3f}", tok_s=f"{self.tokens / max(self.seconds, 1e-9):.0f}")
                if on_step is not None:
                    on_step(self)
                out_of_time = cfg.max_minutes > 0 and self.seconds >= cfg.max_minutes * 60
                out_of_steps = cfg.max_steps > 0 and self.step >= cfg.max_steps
                if out_of_time or out_of_steps:
                    stop = True
                    break
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self._evaluate():
                    stop = True
                    break
            bar.close()
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
                if not stop and (not cfg.eval_every or self.last_eval_step != self.step):
                    stop = self._evaluate()
        if self.last_eval_step != self.step:
            self._evaluate()
        self.save_state()
        return self.history

    def _save_interrupted(self):
        signum, self._stop = self._stop, None
        self.save_state()
        if not os.path.exists(self.model_path):
            self.save_model(None)
        raise TrainingInterrupted(signum, self.out_dir)
