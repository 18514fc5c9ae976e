"""One training as ``attend translate train`` runs it: settings checked first (the model's
once, through its kind's preset), then the run folder owned, then the data read and split,
and the translator trained with the warm-up scaled to the run and torch's threads set
for the training (restored after).

    job = TrainJob(out="runs/fr", source=DataSource(file="eng-fra.txt"), kind="transformer", epochs=3)
    translator, history = job.run(on_start=print)
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Optional

import torch

from ... import _check
from .config import TrainConfig, planned_steps, scaled_warmup
from .data import DataSource
from .presets import PRESETS, ModelConfig, model_options, model_template
from .run import RunFolder
from .translator import Translator, fit_translator

__all__ = ["TrainJob", "TrainStart"]


class TrainStart(NamedTuple):
    """What a job trains on, told once its checks have passed and the first step is taken."""
    n_train: int
    n_valid: int
    n_test: int
    test_file: Optional[str]  # where the test split was written (None on a resume: the run keeps its own)
    planned_steps: int
    warmup_steps: int
    n_dropped: int = 0  # pairs of the data left out: a side with no words, or longer than max_len


@dataclass(frozen=True)
class TrainJob:
    """A training into the run folder ``out``: the data ``source``, the model ``kind`` with
    the settings ``model`` given (None or missing: the kind's preset), the peak learning rate
    and warm-up (None: the preset's, the warm-up at most 10 % of the planned steps), the
    training budget, ``resume`` (continue the run; the same settings and data) or ``force``
    (a new run into a folder that is not empty), and torch's intra-op ``threads``. Checked
    on creation (``ValueError`` naming the setting); nothing is read or written until
    :meth:`run`."""
    out: str
    source: DataSource
    kind: str = "rnn"
    model: Mapping[str, Any] = field(default_factory=dict)
    lr: Optional[float] = None
    warmup_steps: Optional[int] = None
    batch_size: int = 64
    epochs: int = 10
    max_minutes: float = 0.0
    eval_every: int = 0
    patience: int = 3
    seed: int = 0
    min_freq: int = 1
    resume: bool = False
    force: bool = False
    threads: int = 1
    progress: bool = True
    template: ModelConfig = field(init=False, repr=False)  # the model config, vocabulary sizes still to come
    train_config: TrainConfig = field(init=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.source, DataSource):
            raise TypeError(f"source must be a DataSource, got {type(self.source).__name__}")
        options = model_options(self.kind, self.model)  # (an unknown kind is refused here)
        preset = PRESETS[self.kind]
        object.__setattr__(self, "train_config", TrainConfig(
            batch_size=self.batch_size, lr=preset.lr if self.lr is None else self.lr, epochs=self.epochs,
            max_minutes=self.max_minutes, eval_every=self.eval_every, patience=self.patience, seed=self.seed,
            warmup_steps=preset.warmup_steps if self.warmup_steps is None else self.warmup_steps))
        object.__setattr__(self, "template", model_template(options))
        _check.integer(self.threads, "threads", low=1)

    def run(self, on_start: Optional[Callable[[TrainStart], None]] = None) -> tuple[Translator, list[dict]]:
        """Own the run folder (:class:`~attend.apps.translate.run.RunFolderBusy` at once if
        another training does, before any data is read), check it for this job
        (:class:`~attend.apps.translate.run.RunFolderRefused`), read the data, train. Returns
        the translator with the best validation loss and the history."""
        from ...distributed.ranks import Ranks

        ranks = Ranks.current()  # under torchrun: every rank runs this; rank 0 owns the folder
        run = RunFolder(self.out)
        with run.lock() if ranks.main else contextlib.nullcontext():
            saved, failed = None, None
            if ranks.main:
                try:
                    saved = run.start(resume=self.resume, force=self.force,
                                      reads=[self.source.file] if self.source.file is not None else [])
                except Exception as e:  # told to the other ranks first, then raised here
                    failed = e
            ranks.agree(failed is None, f"start the run folder {self.out}")
            if failed is not None:
                raise failed
            if self.resume and not ranks.main:
                saved = run.read_config()
            split, note, dropped = self.source.read()
            tcfg = self.train_config
            planned = planned_steps(len(split.train), tcfg)  # (in batches: the schedule does not change with
            if self.warmup_steps is None:  # the number of processes, so a run resumes on another number)
                tcfg = dataclasses.replace(tcfg, warmup_steps=scaled_warmup(PRESETS[self.kind].warmup_steps, planned))
            steps = planned  # steps of this run: each takes one batch per process
            if ranks.parallel:
                per_epoch = -(-len(split.train) // tcfg.batch_size)  # batches
                steps = tcfg.epochs * -(-per_epoch // ranks.world)
                steps = min(steps, tcfg.max_steps) if tcfg.max_steps else steps
            start = TrainStart(len(split.train), len(split.valid), len(split.test),
                               None if self.resume else run.file(RunFolder.TEST), steps, tcfg.warmup_steps, dropped)
            told = []

            def announce(trainer) -> None:  # once the run's checks have passed and it trains
                if not told and on_start is not None and ranks.main:
                    told.append(True)
                    on_start(start)

            previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                return fit_translator(run, saved, split.train, split.valid, template=self.template,
                                      given=self.template.to_dict(), train_config=tcfg, min_freq=self.min_freq,
                                      data=note, progress=self.progress, on_step=announce,
                                      held_out={RunFolder.VALID: split.valid, RunFolder.TEST: split.test},
                                      ranks=ranks)
            finally:
                torch.set_num_threads(previous)
