"""A training's state, :class:`TrainState`: one dataclass for everything the loop changes
(counters, schedule, early stopping, timings, the loss of every step and the history of
evaluations), and its form in ``state.safetensors`` together with the model, Adam's moments
and the torch RNG state:

    tensors   model.<name>                     the model's state_dict
              optim.<i>.step/exp_avg/exp_avg_sq  Adam's state of parameter i
              rng.torch                        torch's generator state (uint8)
              history.loss                     TrainState.losses (float64, one per step)
    metadata  trainer                          JSON: TrainState's other fields and the TrainConfig
              param_groups                     JSON: the optimiser's settings
              (and the trainer's own metadata: what run the state belongs to)

:func:`state_file` gives that form; :func:`check_state_header` and
:func:`check_state_tensors` read it back, checking field by field before anything is loaded
or changed (see :mod:`attend.apps.translate.training`). The run folder
(:class:`~attend.apps.translate.run.RunFolder`) reads and writes the file.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor, nn

from ... import _check, _io
from .config import TrainConfig
from .run import check_history

__all__ = ["TrainState", "state_file", "check_state_header", "check_state_tensors"]

_ADAM = {"step", "exp_avg", "exp_avg_sq"}


def _one_line(e: BaseException) -> str:
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


@dataclass
class TrainState:
    """Where a training is; all of it is saved, and a resumed run continues from it."""
    step: int = 0  # optimiser steps taken
    epoch: int = 0
    position: int = 0  # batches of the current epoch done
    decays: int = 0  # learning-rate halvings (evaluations without improvement)
    bad_evals: int = 0  # evaluations without improvement since the best
    best_valid: float = math.inf  # best validation loss so far
    last_eval_step: int = -1
    seconds: float = 0.0  # training time (the loop's steps only)
    tokens: int = 0  # source and target tokens trained on
    batches: int = 0  # batches of the epochs' orders taken (a data-parallel step takes one per process)
    losses: list[float] = field(default_factory=list)  # training loss of every step
    history: list[dict] = field(default_factory=list)  # one record per evaluation

    def scalars(self) -> dict:
        """Every field but ``losses`` (saved as a tensor), as JSON values."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "losses"}
        d["best_valid"] = self.best_valid if math.isfinite(self.best_valid) else None
        return d


def state_file(model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState, config: TrainConfig,
               metadata: Mapping[str, str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and metadata of ``state.safetensors`` (see the module docstring)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for i, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"optim.{i}.{k}"] = v if isinstance(v, Tensor) else torch.tensor(v)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["history.loss"] = torch.tensor(state.losses, dtype=torch.float64)
    meta = dict(metadata, trainer=json.dumps(dict(state.scalars(), config=config.to_dict()), sort_keys=True),
                param_groups=json.dumps(opt["param_groups"], sort_keys=True))
    return tensors, meta


def _expected_model(model: nn.Module) -> dict[str, "_io.TensorInfo"]:
    return {f"model.{k}": _io.TensorInfo(v.dtype, tuple(v.shape)) for k, v in model.state_dict().items()}


def check_state_header(path: str, infos: Mapping[str, "_io.TensorInfo"], meta: Mapping[str, str], *,
                       config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                       batches_per_epoch: int, metadata: Mapping[str, str]) -> TrainState:
    """The state a file's header (``infos``, ``meta``) describes, checked against the trainer
    that would resume it: the run it belongs to (``metadata``), the model's and the
    optimiser's tensors, the RNG state's shape, the counters, the history and the counters
    it implies, the training config and the optimiser's settings. ``losses`` is left empty:
    it is a tensor, read by :func:`check_state_tensors`."""
    for k, v in metadata.items():
        if k in meta and meta[k] != v:
            raise ValueError(f"{path}: belongs to another run ({k!r} in its metadata differs from this run's); "
                             "it cannot be resumed here")
    params = list(model.parameters())
    _io.check_state_dict(path, _expected_model(model), {k: v for k, v in infos.items() if k.startswith("model.")})
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
                or parts[2] not in _ADAM:
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
        if names != _ADAM:
            raise ValueError(f"{path}: optimiser state of parameter {i} is incomplete (missing {sorted(_ADAM - names)})")
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
    if isinstance(doc.raw, dict):  # (a field the trainer does not write: another program's, or an edit)
        known = [f.name for f in dataclasses.fields(TrainState) if f.name != "losses"] + ["config"]
        unknown = sorted(set(doc.raw) - set(known))
        if unknown:
            raise ValueError(f"{path}: metadata 'trainer' has unknown fields "
                             + ", ".join(f"{u!r}{_check.nearest(u, known)}" for u in unknown))
    saved_cfg, mine = doc.obj("config").raw, config.to_dict()
    if saved_cfg != mine:
        diff = [f"{k} (state: {saved_cfg.get(k)!r}, given: {mine.get(k)!r})"
                for k in sorted(set(saved_cfg) | set(mine)) if saved_cfg.get(k) != mine.get(k)]
        raise ValueError(f"{path}: was written with a different training config: {', '.join(diff)}; "
                         "resume with the same settings")
    nb = batches_per_epoch
    step = doc.int("step", lo=0)
    absent = [i for i in range(len(params)) if i not in optim]
    if step > 0 and absent:  # (every parameter of the translators is trained at each step)
        raise ValueError(f"{path}: no optimiser state for parameter(s) {absent[:5]}{' …' if len(absent) > 5 else ''} "
                         f"of {len(params)}, after {step} step(s): Adam's moments of every parameter are saved")
    state = TrainState(step=step, epoch=doc.int("epoch", lo=0, hi=config.epochs),
                       position=doc.int("position", lo=0, hi=max(nb - 1, 0)), decays=doc.int("decays", lo=0),
                       bad_evals=doc.int("bad_evals", lo=0), seconds=float(doc.number("seconds", lo=0)),
                       tokens=doc.int("tokens", lo=0), last_eval_step=doc.int("last_eval_step", lo=-1, hi=step))
    best = doc.raw.get("best_valid", "missing")
    state.best_valid = math.inf if best is None else float(doc.number("best_valid", lo=0))
    state.history = check_history(doc.raw.get("history"), path, "trainer.history")
    if state.history and state.history[-1]["step"] > state.step:
        raise doc.error("history", f"has an evaluation at step {state.history[-1]['step']}, after step {state.step}")
    _check_evaluations(doc, state, config.patience)
    if state.epoch == config.epochs and state.position != 0:
        raise doc.error("position", f"is {state.position} after the last epoch")
    # (states written before data-parallel training have no "batches": one batch per step)
    state.batches = doc.int("batches", lo=0) if "batches" in doc.raw else step
    if state.batches < step:  # (named on the step: a step count past the batches is what is off)
        raise doc.error("step", f"is {step}, more than the {state.batches} batches taken (trainer.batches): "
                                "each step takes at least one batch")
    if state.batches != state.epoch * nb + state.position:
        raise ValueError(f"{path}: {state.batches} batches taken do not match epoch {state.epoch} and position "
                         f"{state.position} with {nb} batches per epoch: the state belongs to other training data")
    if infos["history.loss"].shape != (state.step,):
        raise ValueError(f"{path}: tensor 'history.loss' has {infos['history.loss'].shape[0]} losses for "
                         f"{state.step} steps")
    groups = meta_json("param_groups")
    fresh = optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(fresh) or not all(isinstance(g, dict) for g in groups):
        raise ValueError(f"{path}: metadata 'param_groups' must be a list of {len(fresh)} object(s)")
    for g, f in zip(groups, fresh):
        for k, v in f.items():
            if k in ("lr", "initial_lr"):
                continue
            want = list(v) if isinstance(v, tuple) else v
            if g.get(k, want) != want:
                raise ValueError(f"{path}: optimiser setting {k!r} is {g.get(k)!r}, this trainer uses {want!r}")
    return state


def _check_evaluations(doc: "_io.JsonDoc", state: TrainState, patience: int) -> None:
    """The counters an evaluation updates (``last_eval_step``, ``decays``, ``bad_evals``,
    ``best_valid``) must be those the recorded evaluations give: each evaluation is one
    history entry; one that does not improve on the best adds a learning-rate decay and a
    bad evaluation, one that does resets the bad evaluations."""
    history = state.history
    last = history[-1]["step"] if history else -1
    if state.last_eval_step != last:
        recorded = f"the last evaluation in trainer.history is at step {last}" if history \
            else "trainer.history records no evaluation"
        raise doc.error("last_eval_step", f"is {state.last_eval_step}, but {recorded}")
    if patience and state.bad_evals > patience:
        raise doc.error("bad_evals", f"is {state.bad_evals}, more than the patience ({patience}): training stops "
                                     f"after {patience} evaluations without improvement")
    best, bad, decays = math.inf, 0, 0
    for h in history:
        if h["valid_loss"] < best:
            best, bad = h["valid_loss"], 0
        else:
            bad, decays = bad + 1, decays + 1
    if state.decays != decays:
        raise doc.error("decays", f"is {state.decays}, but trainer.history records {decays} evaluation(s) without "
                                  "improvement (each decays the learning rate once)")
    if state.bad_evals != bad:
        raise doc.error("bad_evals", f"is {state.bad_evals}, but trainer.history records {bad} evaluation(s) "
                                     "without improvement since the best one")
    if state.best_valid != best:
        shown = lambda v: None if v == math.inf else v  # noqa: E731 - as the file says it
        raise doc.error("best_valid", f"is {shown(state.best_valid)!r}, but the best validation loss in "
                                      f"trainer.history is {shown(best)!r}")


def check_state_tensors(path: str, tensors: Mapping[str, Tensor], state: TrainState, model: nn.Module) -> None:
    """The loaded tensors of a state whose header passed :func:`check_state_header`: the
    model's again (as loaded), the RNG state (torch's own check, on a private generator),
    Adam's moments (finite, second moments >= 0, step counts within the state's steps).
    Sets ``state.losses``."""
    _io.check_state_dict(path, _expected_model(model), {k: v for k, v in tensors.items() if k.startswith("model.")})
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
        if k.endswith(".step") and not (0 <= float(v) <= state.step and float(v) == int(v)):
            raise ValueError(f"{path}: tensor {k!r} is {float(v)}, not a step count in [0, {state.step}]")
    losses = tensors["history.loss"]
    if not bool(torch.isfinite(losses).all()) or bool((losses < 0).any()):
        raise ValueError(f"{path}: tensor 'history.loss' holds a loss that is not a finite number >= 0 (a training "
                         "loss is a cross-entropy, and a non-finite one stops training before it is recorded)")
    state.losses = losses.tolist()
