"""Training the translator's models (:class:`~attend.models.Seq2Seq`,
:class:`~attend.models.TransformerSeq2Seq`, or any model called as ``model(src,
src_lengths, tgt_in) -> (logits, weights)``): teacher forcing, Adam, gradient clipping, a
learning-rate schedule (linear warm-up, then halving whenever the validation loss stops
improving; :class:`~attend.apps.translate.config.TrainConfig`), early stopping, progress
with tqdm, and resumable checkpoints.

Files in the run folder ``out_dir`` (written through its owner,
:class:`~attend.apps.translate.run.RunFolder`):

- ``model.safetensors``: the weights with the best validation loss so far;
- ``state.safetensors``: everything needed to resume — the model, Adam's moments, the
  torch RNG state and the :class:`~attend.apps.translate.state.TrainState` (step, epoch,
  position in the epoch's batch order, schedule, loss of every step, history) — so a
  resumed run ends bit-identical to an uninterrupted one (on the same machine);
- ``history.json``: one entry per evaluation.

A training owns its folder (an exclusive lock) while it runs. SIGINT (Ctrl-C) and SIGTERM
set a flag; the loop saves at the next step boundary and raises
:class:`TrainingInterrupted` (exit codes 130 / 143).

On resume, ``state.safetensors`` is checked field by field before anything is loaded or
changed: the header's tensors against the model and optimiser (names, shapes, dtypes),
the RNG state (uint8, the generator's size, a state torch accepts), the counters (step,
epoch, position >= 0 and consistent with the number of batches per epoch, one recorded
loss per step), the history (a list of evaluation records) and the counters it implies
(last evaluation step, learning-rate decays, evaluations without improvement — at most
the patience — and the best validation loss), Adam's moments (finite; second moments
>= 0) and the training config (the same as this trainer's).

A NaN or infinite training loss (or gradient norm) stops training with
:class:`TrainingDiverged`, naming the step, before that step changes the weights; nothing
is saved from it, so the run folder keeps its last checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ...data import Batch, LengthGroupedBatches, Vocab
from ...distributed.ranks import Ranks
from .config import SEED_LIMIT, TrainConfig, planned_steps, scaled_warmup
from .run import RunFolder
from .state import TrainState, check_state_header, check_state_tensors, state_file

__all__ = ["TrainConfig", "Trainer", "TrainState", "TrainingInterrupted", "TrainingDiverged", "sequence_loss",
           "scaled_warmup", "planned_steps", "SEED_LIMIT"]


_REPEAT_S = 2.0  # a SIGINT within this many seconds of the first stop request repeats it (see Trainer._handler)


class TrainingInterrupted(Exception):
    """Training stopped by a signal (or :meth:`Trainer.request_stop`); the state is saved."""

    def __init__(self, signum: int, out_dir: str):
        self.signum, self.out_dir = signum, out_dir
        self.exit_code = 128 + signum
        super().__init__(f"training interrupted (signal {signum}); state saved in {out_dir}")


class TrainingDiverged(RuntimeError):
    """The training loss (or the gradient) became NaN or infinite: training stops before
    that step changes the weights; the files in the run folder are those of the last save."""

    def __init__(self, message: str, step: int):
        self.step = step
        super().__init__(message)


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
    """Train ``model`` on id pairs; see the module docstring for the files it writes. Where
    the training is, is :attr:`state` (a :class:`TrainState`)."""

    def __init__(self, model: nn.Module, config: TrainConfig, train_pairs, valid_pairs, out_dir: str | os.PathLike,
                 *, progress: bool = True, metadata: Optional[dict] = None, ranks: Optional[Ranks] = None,
                 accumulate: int = 1):
        """``metadata`` (str -> str) is stored with the weights and the state; a state whose
        metadata disagrees on one of these keys is refused on resume (another run's state).

        ``ranks``: the processes of a data-parallel training (:class:`attend.distributed.Ranks`;
        default one process). Each step then takes ``world x accumulate`` consecutive batches of
        the epoch's order, ``accumulate`` per rank, under DDP; the loss is the mean over all
        their target tokens, so a step equals one process's step on the combined batch. Every
        rank evaluates; rank 0 alone writes the run folder. ``accumulate``: batches per rank
        per step (gradient accumulation)."""
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if not valid_pairs:
            raise ValueError("valid_pairs is empty: early stopping needs a validation set")
        if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata must map strings to strings")
        self.model, self.config, self.out_dir, self.progress = model, config, os.fspath(out_dir), progress
        self.run = RunFolder(self.out_dir)
        self.metadata = dict(metadata or {})
        model_cfg = getattr(model, "config", None)
        if hasattr(model_cfg, "to_dict"):
            self.metadata.setdefault("model_config", json.dumps(model_cfg.to_dict(), sort_keys=True))
        self.batches = LengthGroupedBatches(train_pairs, batch_size=config.batch_size, seed=config.seed)
        vb = LengthGroupedBatches(valid_pairs, batch_size=config.batch_size, shuffle=False)
        self.valid_batches = [vb.batch(ix) for ix in vb.order(0)]
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.state = TrainState()  # all of it goes into state.safetensors
        self._stop: Optional[int] = None
        self._stop_at = 0.0  # (time.monotonic() of the first stop request)
        self.ranks = ranks if ranks is not None else Ranks()
        if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
            raise ValueError(f"accumulate must be a positive int (batches per rank per step), got {accumulate!r}")
        self.accumulate = accumulate
        self.net = model  # what the training step calls: the model, or DDP around it
        if self.ranks.parallel:
            from torch.nn.parallel import DistributedDataParallel

            dev = next(model.parameters()).device
            self.net = DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)

    def lr_at(self, step: int) -> float:
        return self.config.lr_at(step, self.state.decays)

    # -- files ---------------------------------------------------------------------------
    def save_state(self) -> None:
        if self.ranks.main:
            self.run.save_state(*state_file(self.model, self.optimizer, self.state, self.config, self.metadata))

    def load_state(self) -> None:
        """Resume from ``state.safetensors``, after checking all of it."""
        path = self.run.state_path
        infos, meta = self.run.read_state_header()
        state = check_state_header(path, infos, meta, config=self.config, model=self.model, optimizer=self.optimizer,
                                   batches_per_epoch=len(self.batches), metadata=self.metadata)
        tensors = self.run.load_state()
        check_state_tensors(path, tensors, state, self.model)
        optim: dict = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, i, name = k.split(".", 2)
                optim.setdefault(int(i), {})[name] = v
        groups = self.optimizer.state_dict()["param_groups"]
        self.model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        self.optimizer.load_state_dict({"state": optim, "param_groups": groups})
        torch.set_rng_state(tensors["rng.torch"])
        self.state = state

    def save_model(self, valid_loss: Optional[float]) -> None:
        if not self.ranks.main:
            return
        meta = dict(self.metadata, step=str(self.state.step),
                    valid_loss="none" if valid_loss is None else repr(valid_loss))
        self.run.save_weights(self.model.state_dict(), meta)

    # -- signals -------------------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Ask the loop to save and stop at the next step boundary (what SIGINT does)."""
        if self._stop is None:
            self._stop, self._stop_at = signum, time.monotonic()

    def _handler(self, signum, frame):
        """SIGINT/SIGTERM: save and stop at the next step. A second Ctrl-C (SIGINT), pressed
        later, stops at once (the last saved files are intact). Signals that come with the
        first, or a SIGTERM after it, are the same request: under torchrun a terminal's Ctrl-C
        reaches each worker directly, and torchrun forwards it, then sends SIGTERM."""
        if self._stop is not None and signum == signal.SIGINT and time.monotonic() - self._stop_at > _REPEAT_S:
            raise KeyboardInterrupt
        self.request_stop(signum)

    # -- the loop ------------------------------------------------------------------------
    def _evaluate(self) -> bool:
        """Validate, update schedule / early stopping / best model. Returns True to stop."""
        s = self.state
        valid = evaluate_loss(self.model, self.valid_batches)
        s.last_eval_step = s.step
        if valid < s.best_valid:
            s.best_valid, s.bad_evals = valid, 0
            self.save_model(valid)
        else:
            s.bad_evals += 1
            s.decays += 1
        per_epoch = -(-len(self.batches) // (self.ranks.world * self.accumulate))  # steps an epoch takes here
        recent = s.losses[-max(1, per_epoch):]  # (the last epoch's worth: each step takes world x accumulate batches)
        s.history.append({"step": s.step, "epoch": s.epoch, "train_loss": sum(recent) / max(len(recent), 1),
                          "valid_loss": valid, "lr": self.lr_at(s.step), "seconds": round(s.seconds, 2),
                          "tokens_per_s": round(s.tokens / max(s.seconds, 1e-9), 1)})
        if self.ranks.main:
            self.run.write_history(s.history)
        return s.bad_evals >= self.config.patience > 0

    def fit(self, *, resume: bool = False, on_step: Optional[Callable[["Trainer"], None]] = None) -> list[dict]:
        """Train until the epochs, ``max_steps`` or ``max_minutes`` run out, or early stopping.
        Returns the history (one dict per evaluation)."""
        with self.run.lock() if self.ranks.main else contextlib.nullcontext():  # one training per run folder
            if resume:
                self.load_state()
            else:
                torch.manual_seed(self.config.seed)
            installed = []
            if threading.current_thread() is threading.main_thread():
                for s in (signal.SIGINT, signal.SIGTERM):
                    installed.append((s, signal.signal(s, self._handler)))
            try:
                return self._loop(self.config, on_step)
            finally:
                for s, old in installed:
                    signal.signal(s, old)

    def _loop(self, cfg: TrainConfig, on_step) -> list[dict]:
        from tqdm.auto import tqdm

        s = self.state
        self.model.train()
        # a resumed run that had stopped early or used up its time takes no extra step (nor max_steps, below)
        stop = (cfg.patience > 0 and s.bad_evals >= cfg.patience) or \
            (cfg.max_minutes > 0 and s.seconds >= cfg.max_minutes * 60)
        while s.epoch < cfg.epochs and not stop:
            order = self.batches.order(s.epoch)
            bar = tqdm(total=len(order), initial=s.position, desc=f"epoch {s.epoch + 1}/{cfg.epochs}", unit="batch",
                       disable=not (self.progress and self.ranks.main), leave=False, dynamic_ncols=True)
            while s.position < len(order):
                if self._stop is not None:
                    bar.close()
                    self._save_interrupted()
                if cfg.max_steps and s.step >= cfg.max_steps:  # a resumed run that had used up its steps
                    stop = True
                    break
                t0 = time.perf_counter()
                for g in self.optimizer.param_groups:
                    g["lr"] = self.lr_at(s.step)
                try:
                    value, n_tok, n_src, used = self._backward(order, cfg)
                except TrainingDiverged:
                    bar.close()
                    raise
                if cfg.clip_norm > 0:
                    norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm))
                    if not math.isfinite(norm):
                        bar.close()
                        raise self._diverged(f"the gradient norm is {norm}", len(order))
                self.optimizer.step()
                s.step += 1
                s.position += used
                s.batches += used
                s.losses.append(value)
                s.tokens += n_tok + n_src
                s.seconds += time.perf_counter() - t0
                bar.update(used)
                bar.set_postfix(loss=f"{value:.3f}", tok_s=f"{s.tokens / max(s.seconds, 1e-9):.0f}")
                if on_step is not None:
                    on_step(self)
                out_of_time = cfg.max_minutes > 0 and s.seconds >= cfg.max_minutes * 60
                if self.ranks.parallel:  # every rank stops at the same step: a signal or a clock on any of them
                    signalled, out_of_time = self.ranks.any([self._stop is not None, out_of_time])
                    if signalled:
                        self.request_stop(signal.SIGTERM)
                out_of_steps = cfg.max_steps > 0 and s.step >= cfg.max_steps
                if out_of_time or out_of_steps:
                    stop = True
                    break
                if cfg.eval_every and s.step % cfg.eval_every == 0 and self._evaluate():
                    stop = True
                    break
            bar.close()
            if s.position >= len(order):
                s.epoch, s.position = s.epoch + 1, 0
                if not stop and (not cfg.eval_every or s.last_eval_step != s.step):
                    stop = self._evaluate()
        if s.last_eval_step != s.step:
            self._evaluate()
        self.save_state()
        return s.history

    def _backward(self, order, cfg: TrainConfig) -> tuple[float, int, int, int]:
        """One step's gradients: ``(loss, target tokens, source tokens, batches of the order used)``."""
        s = self.state
        if self.ranks.world * self.accumulate == 1:
            batch = self.batches.batch(order[s.position])
            loss, n_tok = sequence_loss(self.net, batch, cfg.label_smoothing)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise self._diverged(f"the training loss is {value}", len(order))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            return value, n_tok, batch.n_src_tokens, 1
        per = self.ranks.world * self.accumulate
        used = min(per, len(order) - s.position)
        mine = []
        for a in range(self.accumulate):
            i = s.position + self.ranks.rank * self.accumulate + a
            # past the epoch's end: a batch weighted 0, so that DDP's all-reduce still meets every rank
            mine.append((self.batches.batch(order[i]), 1.0) if i < len(order) else
                        (self.batches.batch(order[s.position]), 0.0))
        total_tok, total_src = self.ranks.sum([sum(b.n_tgt_tokens for b, w in mine if w),
                                               sum(b.n_src_tokens for b, w in mine if w)])
        scale = self.ranks.world / max(total_tok, 1.0)  # DDP averages over ranks: this makes it the token mean
        self.optimizer.zero_grad(set_to_none=True)
        local = 0.0
        for a, (b, w) in enumerate(mine):
            last = a == len(mine) - 1
            with self.net.no_sync() if self.ranks.parallel and not last else contextlib.nullcontext():
                loss, _ = sequence_loss(self.net, b, cfg.label_smoothing, reduction="sum")
                (loss * (w * scale)).backward()
            local += w * float(loss.detach())
        value = self.ranks.sum([local])[0] / max(total_tok, 1.0)
        if not math.isfinite(value):  # (the weights are not stepped: the gradients are thrown away)
            raise self._diverged(f"the training loss is {value}", len(order))
        return value, int(total_tok), int(total_src), used

    def _diverged(self, what: str, batches: int) -> TrainingDiverged:
        """The error for a non-finite loss or gradient at the step about to be taken; the
        weights are not updated, and nothing is saved (the run folder keeps its last save)."""
        s = self.state
        step = s.step + 1
        return TrainingDiverged(
            f"training stopped at step {step} (epoch {s.epoch + 1}, batch {s.position + 1} of {batches}, "
            f"learning rate {self.lr_at(s.step):.3g}): {what}; that step was not taken and nothing was saved "
            f"after it: {self.out_dir} keeps its last checkpoint (try a lower learning rate, or check the data)", step)

    def _save_interrupted(self):
        signum, self._stop = self._stop, None
        self.save_state()
        if self.ranks.main and not os.path.exists(self.run.model_path):
            self.save_model(None)
        raise TrainingInterrupted(signum, self.out_dir)
