"""Training loop for the translator: teacher forcing, Adam, gradient clipping, a
learning-rate schedule (linear warm-up, then halving whenever the validation loss stops
improving), early stopping, progress with tqdm, and resumable checkpoints.

Files in the run folder ``out_dir``:

- ``model.safetensors``: the weights with the best validation loss so far;
- ``state.safetensors``: everything needed to resume (model, Adam moments, step, epoch,
  position in the epoch's batch order, schedule, history, the torch RNG state), so a
  resumed run ends bit-identical to an uninterrupted one (on the same machine);
- ``history.json``: one entry per evaluation.

Every file is written atomically, through :class:`attend.runs.RunFolder`, and a training
owns its folder (an exclusive lock) while it runs. SIGINT (Ctrl-C) and SIGTERM set a flag;
the loop saves at the next step boundary and raises :class:`TrainingInterrupted` (exit
codes 130 / 143).

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

:func:`scaled_warmup` gives a warm-up that fits the run: ``min(default, 10 % of the
planned steps)``, at least 1.
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
from .data import Batch, LengthGroupedBatches, Vocab
from .runs import RunFolder, check_history

__all__ = ["TrainConfig", "Trainer", "TrainingInterrupted", "TrainingDiverged", "sequence_loss", "scaled_warmup",
           "planned_steps", "SEED_LIMIT"]

SEED_LIMIT = 2 ** 63  # seeds are in [0, 2**63): what every generator attend seeds accepts


def _one_line(e: BaseException) -> str:
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def planned_steps(n_pairs: int, config: "TrainConfig") -> int:
    """Steps a run is planned to take: epochs x batches per epoch, or ``max_steps`` if fewer."""
    total = config.epochs * -(-n_pairs // config.batch_size)
    return min(total, config.max_steps) if config.max_steps else total


def scaled_warmup(default: int, planned: int, fraction: float = 0.1) -> int:
    """Linear warm-up steps for a run of ``planned`` steps: ``default``, but at most
    ``fraction`` (10 %) of the run, and at least 1, so a short run reaches its learning rate."""
    if isinstance(planned, bool) or not isinstance(planned, int) or planned < 1:
        raise ValueError(f"planned must be an int >= 1, got {planned!r}")
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
    eval_every: int = 0  # steps between evaluations; 0 = at the end of each epoch
    max_steps: int = 0  # 0 = no limit
    max_minutes: float = 0.0  # training time budget; 0 = no limit
    label_smoothing: float = 0.0
    seed: int = 0
    # "plateau": only the halvings above; "cosine": also a cosine fall from the peak after the
    # warm-up to 0 at max_steps (which it needs), for runs budgeted in steps
    schedule: str = "plateau"

    def __post_init__(self):
        for name in ("batch_size", "epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("warmup_steps", "patience", "eval_every", "max_steps", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if self.seed >= SEED_LIMIT:
            raise ValueError(f"seed must be an int in [0, 2**63), got {self.seed!r}")
        for name, lo, hi in (("lr", 0.0, math.inf), ("clip_norm", 0.0, math.inf), ("max_minutes", 0.0, math.inf)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v < hi) or (name == "lr" and v == 0):
                raise ValueError(f"{name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {v!r}")
        if isinstance(self.lr_decay, bool) or not isinstance(self.lr_decay, (int, float)) or not (0 < self.lr_decay <= 1):
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        if isinstance(self.label_smoothing, bool) or not isinstance(self.label_smoothing, (int, float)) \
                or not (0 <= self.label_smoothing < 1):
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.schedule not in ("plateau", "cosine"):
            raise ValueError(f"schedule must be 'plateau' or 'cosine', got {self.schedule!r}")
        if self.schedule == "cosine" and self.max_steps <= self.warmup_steps:
            raise ValueError(f"schedule='cosine' falls to 0 at max_steps, which must be above warmup_steps "
                             f"({self.warmup_steps}), got max_steps={self.max_steps}")

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
    """Train ``model`` on id pairs; see the module docstring for the files it writes."""

    def __init__(self, model: nn.Module, config: TrainConfig, train_pairs, valid_pairs, out_dir: str | os.PathLike,
                 *, progress: bool = True, metadata: Optional[dict] = None):
        """``metadata`` (str -> str) is stored with the weights and the state; a state whose
        metadata disagrees on one of these keys is refused on resume (another run's state)."""
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
        c = self.config
        warm = min(1.0, (step + 1) / c.warmup_steps) if c.warmup_steps else 1.0
        fall = 1.0
        if c.schedule == "cosine":  # after the warm-up, from 1 down to 0 at max_steps
            done = min(1.0, max(0, step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps))
            fall = 0.5 * (1.0 + math.cos(math.pi * done))
        return c.lr * warm * fall * c.lr_decay ** self.decays

    # -- state ---------------------------------------------------------------------------
    @property
    def state_path(self) -> str:
        return self.run.state_path

    @property
    def model_path(self) -> str:
        return self.run.model_path

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
        meta = dict(self.metadata, trainer=json.dumps(self._scalars(), sort_keys=True),
                    param_groups=json.dumps(opt["param_groups"], sort_keys=True))
        self.run.save_tensors(RunFolder.STATE, tensors, meta)

    def _check_state(self, path: str) -> tuple[dict, dict]:
        """Validate ``state.safetensors`` completely (see the module docstring); returns the
        scalars and the loaded tensors. Nothing of the trainer is changed."""
        infos, meta = _io.read_header(path, "training state")
        for k, v in self.metadata.items():
            if k in meta and meta[k] != v:
                raise ValueError(f"{path}: belongs to another run ({k!r} in its metadata differs from this run's); "
                                 "it cannot be resumed here")
        params = list(self.model.parameters())
        expected: dict[str, _io.TensorInfo] = {f"model.{k}": _io.TensorInfo(v.dtype, tuple(v.shape))
                                                for k, v in self.model.state_dict().items()}
        got = {k: v for k, v in infos.items() if k.startswith("model.")}
        _io.check_state_dict(path, expected, got)
        optim: dict[int, set] = {}
        for k, info in infos.items():
            if k.startswith("model."):
                continue
            if k == "rng.torch":
                n = torch.get_rng_state().numel()
                if info.dtype != torch.uint8 or info.shape != (n,):
                    raise ValueError(f"{path}: tensor 'rng.torch' must be a uint8 tensor of shape ({n},) "
                                     f"(torch's RNG state), got {info.dtype} {info.shape}")
                continue
            if k == "history.loss":
                if info.dtype != torch.float64 or len(info.shape) != 1:
                    raise ValueError(f"{path}: tensor 'history.loss' must be a 1-D float64 tensor, "
                                     f"got {info.dtype} {info.shape}")
                continue
            parts = k.split(".")
            if len(parts) != 3 or parts[0] != "optim" or not parts[1].isdigit() or int(parts[1]) >= len(params) \
                    or parts[2] not in ("step", "exp_avg", "exp_avg_sq"):
                raise ValueError(f"{path}: unexpected tensor {k!r} (the model has {len(params)} parameters; "
                                 "optimiser tensors are optim.<i>.step / exp_avg / exp_avg_sq)")
            i, name = int(parts[1]), parts[2]
            optim.setdefault(i, set()).add(name)
            p = params[i]
            want = (torch.float32, ()) if name == "step" else (p.dtype, tuple(p.shape))
            if (info.dtype, info.shape) != want:
                raise ValueError(f"{path}: tensor {k!r} is {info.dtype} {info.shape}, expected {want[0]} {want[1]} "
                                 f"(parameter {i} of the model)")
        for i, names in optim.items():
            if names != {"step", "exp_avg", "exp_avg_sq"}:
                missing = sorted({"step", "exp_avg", "exp_avg_sq"} - names)
                raise ValueError(f"{path}: optimiser state of parameter {i} is incomplete (missing {missing})")
        for k in ("rng.torch", "history.loss"):
            if k not in infos:
                raise ValueError(f"{path}: missing tensor {k!r}")

        def meta_json(key: str):
            if key not in meta:
                raise ValueError(f"{path}: metadata {key!r} is missing")
            try:
                return json.loads(meta[key])
            except (ValueError, RecursionError) as e:  # JSONDecodeError, or an integer too long to convert
                raise ValueError(f"{path}: metadata {key!r} is not valid JSON ({_one_line(e)})") from None

        doc = _io.JsonDoc(meta_json("trainer"), path, "trainer.")
        saved_cfg = doc.obj("config").raw
        mine = self.config.to_dict()
        if saved_cfg != mine:
            diff = [f"{k} (state: {saved_cfg.get(k)!r}, given: {mine.get(k)!r})"
                    for k in sorted(set(saved_cfg) | set(mine)) if saved_cfg.get(k) != mine.get(k)]
            raise ValueError(f"{path}: was written with a different training config: {', '.join(diff)}; "
                             "resume with the same settings")
        nb = len(self.batches)
        sc = {"step": doc.int("step", lo=0), "epoch": doc.int("epoch", lo=0, hi=self.config.epochs),
              "position": doc.int("position", lo=0, hi=max(nb - 1, 0)), "decays": doc.int("decays", lo=0),
              "bad_evals": doc.int("bad_evals", lo=0), "seconds": float(doc.number("seconds", lo=0)),
              "tokens": doc.int("tokens", lo=0)}
        sc["last_eval_step"] = doc.int("last_eval_step", lo=-1, hi=sc["step"])
        best = doc.raw.get("best_valid", "missing")
        if best is not None:
            best = doc.number("best_valid", lo=0)
        sc["best_valid"] = best
        sc["history"] = check_history(doc.raw.get("history"), path, "trainer.history")
        if sc["history"] and sc["history"][-1]["step"] > sc["step"]:
            raise doc.error("history", f"has an evaluation at step {sc['history'][-1]['step']}, after step {sc['step']}")
        self._check_evaluations(doc, sc)
        if sc["epoch"] == self.config.epochs and sc["position"] != 0:
            raise doc.error("position", f"is {sc['position']} after the last epoch")
        if sc["step"] != sc["epoch"] * nb + sc["position"]:
            raise ValueError(f"{path}: step {sc['step']} does not match epoch {sc['epoch']} and position "
                             f"{sc['position']} with {nb} batches per epoch: the state belongs to other training data")
        if infos["history.loss"].shape != (sc["step"],):
            raise ValueError(f"{path}: tensor 'history.loss' has {infos['history.loss'].shape[0]} losses for "
                             f"{sc['step']} steps")
        groups = meta_json("param_groups")
        fresh = self.optimizer.state_dict()["param_groups"]
        if not isinstance(groups, list) or len(groups) != len(fresh) or not all(isinstance(g, dict) for g in groups):
            raise ValueError(f"{path}: metadata 'param_groups' must be a list of {len(fresh)} object(s)")
        for g, f in zip(groups, fresh):
            for k, v in f.items():
                if k in ("lr", "initial_lr"):
                    continue
                want = list(v) if isinstance(v, tuple) else v
                if g.get(k, want) != want:
                    raise ValueError(f"{path}: optimiser setting {k!r} is {g.get(k)!r}, this trainer uses {want!r}")
        tensors, _ = _io.load_tensors(path, "training state")
        _io.check_state_dict(path, {k: v for k, v in expected.items()},
                             {k: v for k, v in tensors.items() if k.startswith("model.")})
        try:  # torch's own check of the generator state, on a generator of our own (the global one is untouched)
            torch.Generator().set_state(tensors["rng.torch"])
        except (RuntimeError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: tensor 'rng.torch' is not a valid state of torch's random number generator "
                             f"({_one_line(e)})") from None
        for k, v in tensors.items():
            if k.startswith("optim.") and not bool(torch.isfinite(v).all()):
                raise ValueError(f"{path}: tensor {k!r} has NaN or infinite values")
            if k.endswith(".exp_avg_sq") and bool((v < 0).any()):
                raise ValueError(f"{path}: tensor {k!r} has negative values ({float(v.min()):.6g}); Adam's second "
                                 "moments are averages of squares, never negative")
            if k.endswith(".step") and not (0 <= float(v) <= sc["step"] and float(v) == int(v)):
                raise ValueError(f"{path}: tensor {k!r} is {float(v)}, not a step count in [0, {sc['step']}]")
        return sc, tensors

    def _check_evaluations(self, doc: "_io.JsonDoc", sc: dict) -> None:
        """The counters an evaluation updates (``last_eval_step``, ``decays``, ``bad_evals``,
        ``best_valid``) must be those the recorded evaluations give: each evaluation is one
        history entry; one that does not improve on the best adds a learning-rate decay and
        a bad evaluation, one that does resets the bad evaluations."""
        history, patience = sc["history"], self.config.patience
        last = history[-1]["step"] if history else -1
        if sc["last_eval_step"] != last:
            recorded = f"the last evaluation in trainer.history is at step {last}" if history \
                else "trainer.history records no evaluation"
            raise doc.error("last_eval_step", f"is {sc['last_eval_step']}, but {recorded}")
        if patience and sc["bad_evals"] > patience:
            raise doc.error("bad_evals", f"is {sc['bad_evals']}, more than the patience ({patience}): training stops "
                                         f"after {patience} evaluations without improvement")
        best, bad, decays = math.inf, 0, 0
        for h in history:
            if h["valid_loss"] < best:
                best, bad = h["valid_loss"], 0
            else:
                bad, decays = bad + 1, decays + 1
        if sc["decays"] != decays:
            raise doc.error("decays", f"is {sc['decays']}, but trainer.history records {decays} evaluation(s) without "
                                      "improvement (each decays the learning rate once)")
        if sc["bad_evals"] != bad:
            raise doc.error("bad_evals", f"is {sc['bad_evals']}, but trainer.history records {bad} evaluation(s) "
                                         "without improvement since the best one")
        if (sc["best_valid"] is None) != (best == math.inf) or (sc["best_valid"] is not None and sc["best_valid"] != best):
            raise doc.error("best_valid", f"is {sc['best_valid']!r}, but the best validation loss in trainer.history "
                                          f"is {None if best == math.inf else best!r}")

    def load_state(self) -> None:
        """Resume from ``state.safetensors``, after checking all of it."""
        path = self.state_path
        sc, tensors = self._check_state(path)
        model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v
        groups = self.optimizer.state_dict()["param_groups"]
        self.model.load_state_dict(model_sd)
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        torch.set_rng_state(tensors["rng.torch"])
        self.losses = tensors["history.loss"].tolist()
        for k in ("step", "epoch", "position", "decays", "bad_evals", "last_eval_step", "seconds", "tokens", "history"):
            setattr(self, k, sc[k])
        self.best_valid = math.inf if sc["best_valid"] is None else float(sc["best_valid"])

    def save_model(self, valid_loss: Optional[float]) -> None:
        meta = dict(self.metadata, step=str(self.step), valid_loss="none" if valid_loss is None else repr(valid_loss))
        self.run.save_tensors(RunFolder.MODEL, self.model.state_dict(), meta)

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
        self.run.write_history(self.history)
        return self.bad_evals >= self.config.patience > 0

    def fit(self, *, resume: bool = False, on_step: Optional[Callable[["Trainer"], None]] = None) -> list[dict]:
        """Train until the epochs, ``max_steps`` or ``max_minutes`` run out, or early stopping.
        Returns the history (one dict per evaluation)."""
        with self.run.lock():  # one training per run folder
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
        # a resumed run that had stopped early or used up its time takes no extra step (nor max_steps, below)
        stop = (cfg.patience > 0 and self.bad_evals >= cfg.patience) or \
            (cfg.max_minutes > 0 and self.seconds >= cfg.max_minutes * 60)
        while self.epoch < cfg.epochs and not stop:
            order = self.batches.order(self.epoch)
            bar = tqdm(total=len(order), initial=self.position, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                       disable=not self.progress, leave=False, dynamic_ncols=True)
            while self.position < len(order):
                if self._stop is not None:
                    bar.close()
                    self._save_interrupted()
                if cfg.max_steps and self.step >= cfg.max_steps:  # a resumed run that had used up its steps
                    stop = True
                    break
                t0 = time.perf_counter()
                batch = self.batches.batch(order[self.position])
                for g in self.optimizer.param_groups:
                    g["lr"] = self.lr_at(self.step)
                loss, n_tok = sequence_loss(self.model, batch, cfg.label_smoothing)
                value = float(loss.detach())
                if not math.isfinite(value):
                    bar.close()
                    raise self._diverged(f"the training loss is {value}", len(order))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_norm > 0:
                    norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm))
                    if not math.isfinite(norm):
                        bar.close()
                        raise self._diverged(f"the gradient norm is {norm}", len(order))
                self.optimizer.step()
                self.step += 1
                self.position += 1
                self.losses.append(value)
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

    def _diverged(self, what: str, batches: int) -> TrainingDiverged:
        """The error for a non-finite loss or gradient at the step about to be taken; the
        weights are not updated, and nothing is saved (the run folder keeps its last save)."""
        step = self.step + 1
        return TrainingDiverged(
            f"training stopped at step {step} (epoch {self.epoch + 1}, batch {self.position + 1} of {batches}, "
            f"learning rate {self.lr_at(self.step):.3g}): {what}; that step was not taken and nothing was saved "
            f"after it: {self.out_dir} keeps its last checkpoint (try a lower learning rate, or check the data)", step)

    def _save_interrupted(self):
        signum, self._stop = self._stop, None
        self.save_state()
        if not os.path.exists(self.model_path):
            self.save_model(None)
        raise TrainingInterrupted(signum, self.out_dir)
