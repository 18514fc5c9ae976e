"""The translator of seed 002 (and its transformer sibling) as one application:

    presets.py     model kinds: config <-> JSON, model from config, weights checked against a
                   config; each kind's default settings, learning rate and warm-up
    config.py      TrainConfig (and its learning-rate schedule), planned steps, scaled warm-up
    training.py    Trainer: the loop, early stopping, signals; TrainingInterrupted/Diverged
    state.py       TrainState, the one dataclass of where a training is, and its saved form
    run.py         RunFolder, the run folder's one owner: layout, lock, config, weights,
                   state, history, splits, and the resume checks
    search.py      greedy and beam-search decoding, with the attention behind every word
    translator.py  Translator (load, translate), train_translator
    evaluation.py  evaluate: BLEU and chrF, by source length
    data.py        DataSource: a TSV file or the embedded corpus, filtered and split
    job.py         TrainJob: one training as ``attend translate train`` runs it

It imports ``attend.models``, ``attend.data`` and below; nothing below imports it.
"""
from .config import SEED_LIMIT, TrainConfig, planned_steps, scaled_warmup
from .data import DataSource, PreparedData, read_pairs
from .evaluation import LENGTH_BUCKETS, EvalResult, evaluate
from .job import TrainJob, TrainStart
from .presets import MODEL_KINDS, PRESETS, Preset, build_model, check_weights, model_config, model_options, \
    model_template
from .run import FORMAT, ResumeMismatch, RunConfig, RunFolder, RunFolderBusy, RunFolderRefused, check_history, \
    resume_differences
from .search import Hypothesis, beam_search, greedy
from .state import TrainState
from .training import Trainer, TrainingDiverged, TrainingInterrupted, sequence_loss
from .translator import Translation, Translator, train_translator

__all__ = ["Translator", "Translation", "train_translator", "evaluate", "EvalResult", "LENGTH_BUCKETS",
           "TrainConfig", "Trainer", "TrainState", "TrainingInterrupted", "TrainingDiverged", "sequence_loss",
           "planned_steps", "scaled_warmup", "SEED_LIMIT", "greedy", "beam_search", "Hypothesis",
           "RunFolder", "RunFolderBusy", "RunFolderRefused", "RunConfig", "ResumeMismatch", "resume_differences",
           "check_history", "FORMAT", "MODEL_KINDS", "PRESETS", "Preset", "model_options", "model_template",
           "model_config", "build_model", "check_weights", "DataSource", "PreparedData", "read_pairs", "TrainJob",
           "TrainStart"]
