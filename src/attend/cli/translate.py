"""``attend translate {train,eval} ...`` and ``attend translate "a sentence" --checkpoint DIR``:
flags in, calls to :mod:`attend.apps.translate` out, results and refusals in the command
line's words."""
from __future__ import annotations

import argparse
import os
import re
import sys

from ._common import (UsageError, draw, need_checkpoint, need_file, new_figure, nonneg_int, positive_int, seed,
                      text_arg, thread_count, unknown_note)

VERBS = ("train", "eval", "text")


def beam_size(text: str) -> int:
    """An argparse type: a beam size, 1 to MAX_BEAM."""
    from ..apps.translate.search import MAX_BEAM

    n = positive_int(text)
    if n > MAX_BEAM:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_BEAM} (each beam holds a copy of the encoder's "
                                         f"states), got {text!r}")
    return n

# flags of one model kind only (argparse default None: given explicitly or not)
_RNN_ONLY = {"attention": "--attention", "rnn": "--rnn", "embed": "--embed", "unidirectional": "--unidirectional"}
_TRANSFORMER_ONLY = {"heads": "--heads", "ff": "--ff", "positional": "--positional"}
# config fields (as resume_differences names them) -> the flag that sets them
_FLAGS = {"model.kind": "--model", "model.hidden_dim": "--hidden", "model.d_model": "--hidden",
          "model.embed_dim": "--embed", "model.layers": "--layers", "model.encoder_layers": "--layers",
          "model.decoder_layers": "--layers", "model.attention": "--attention", "model.rnn": "--rnn",
          "model.bidirectional": "--unidirectional", "model.dropout": "--dropout", "model.heads": "--heads",
          "model.ff_dim": "--ff", "model.positional": "--positional", "train.batch_size": "--batch-size",
          "train.lr": "--lr", "train.epochs": "--epochs", "train.max_minutes": "--minutes",
          "train.eval_every": "--eval-every", "train.patience": "--patience", "train.seed": "--seed",
          "train.warmup_steps": "--warmup", "min_freq": "--min-freq", "data.src_col": "--src-col",
          "data.tgt_col": "--tgt-col", "data.max_len": "--max-len", "data.limit": "--limit", "data.valid": "--valid",
          "data.test": "--test", "data.pairs": "--synthetic", "data.seed": "--seed", "data.corpus": "--data/--synthetic"}


def add_parser(sub) -> None:
    from ..apps.translate.presets import MODEL_KINDS, PRESETS
    from ..models.seq2seq import ATTENTION_KINDS

    rnn, tf = PRESETS["rnn"], PRESETS["transformer"]
    tr = sub.add_parser("translate", help="train, evaluate and use translators (RNN with attention, or transformer)",
                        description='attend translate {train,eval} ... | attend translate "a sentence" --checkpoint DIR')
    tsub = tr.add_subparsers(dest="verb", metavar="VERB", parser_class=type(tr))

    t = tsub.add_parser("train", help="train a translator on a TSV file of sentence pairs")
    t.set_defaults(handler=_train)
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="TSV file: source<TAB>target[<TAB>...] per line (Tatoeba format)")
    src.add_argument("--synthetic", type=positive_int, metavar="N",
                     help="instead of --data: N pairs of attend's embedded English -> French-like corpus")
    t.add_argument("--src-col", type=nonneg_int, default=None, help="with --data: source column, 0-based (default 0)")
    t.add_argument("--tgt-col", type=nonneg_int, default=None, help="with --data: target column, 0-based (default 1)")
    t.add_argument("--max-len", type=positive_int, default=None, help="drop pairs with a side longer than this (tokens)")
    t.add_argument("--limit", type=positive_int, default=None, help="with --data: read at most this many lines")
    t.add_argument("--valid", type=float, default=0.05, help="validation fraction (default 0.05)")
    t.add_argument("--test", type=float, default=0.05, help="test fraction (default 0.05), written to OUT/test.tsv")
    t.add_argument("--min-freq", type=positive_int, default=1,
                   help="words seen fewer times in the training pairs become <unk> (default 1)")
    t.add_argument("--model", choices=MODEL_KINDS, default="rnn",
                   help="rnn: the seed-002 RNN encoder-decoder with attention (default); transformer: an "
                        "encoder-decoder transformer")
    t.add_argument("--attention", choices=ATTENTION_KINDS, default=None,
                   help=f"rnn: score function (default {rnn.model['attention']})")
    t.add_argument("--rnn", choices=("gru", "lstm"), default=None, help=f"rnn: recurrent cell (default {rnn.model['rnn']})")
    t.add_argument("--hidden", type=positive_int, default=256, help="hidden size / transformer width (default 256)")
    t.add_argument("--embed", type=positive_int, default=None, help=f"rnn: embedding size (default {rnn.model['embed_dim']})")
    t.add_argument("--layers", type=positive_int, default=None,
                   help=f"layers (default {rnn.model['layers']} for rnn; {tf.model['encoder_layers']} encoder + "
                        f"{tf.model['decoder_layers']} decoder for transformer)")
    t.add_argument("--heads", type=positive_int, default=None,
                   help=f"transformer: attention heads (default {tf.model['heads']})")
    t.add_argument("--ff", type=nonneg_int, default=None, help="transformer: feed-forward width (default 4 x hidden)")
    t.add_argument("--positional", choices=("sinusoidal", "learned", "rope", "alibi"), default=None,
                   help=f"transformer: positional encoding (default {tf.model['positional']})")
    t.add_argument("--dropout", type=float, default=0.1, help="dropout rate (default 0.1)")
    t.add_argument("--unidirectional", action="store_true", default=None, help="rnn: forward-only encoder")
    t.add_argument("--epochs", type=positive_int, default=10, help="passes over the training pairs (default 10)")
    t.add_argument("--batch-size", type=positive_int, default=64, help="sentence pairs per step (default 64)")
    t.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {_short(rnn.lr)} rnn, "
                                                          f"{_short(tf.lr)} transformer)")
    t.add_argument("--warmup", type=nonneg_int, default=None, metavar="STEPS",
                   help=f"linear learning-rate warm-up (default: {rnn.warmup_steps} steps for rnn, {tf.warmup_steps} "
                        "for transformer, but at most 10%% of the planned steps = epochs x batches per epoch, and at "
                        "least 1; 0 = none)")
    t.add_argument("--minutes", type=float, default=0.0, help="training time budget (default 0: none)")
    t.add_argument("--eval-every", type=nonneg_int, default=0, help="also validate every N steps (validation also ends each epoch; default 0: only "
                        "there); every validation counts toward --patience and the rate's halving")
    t.add_argument("--patience", type=nonneg_int, default=3,
                   help="stop after this many validations without improvement (default 3; 0 = never)")
    t.add_argument("--seed", type=seed, default=0, help="seed for the split, the corpus and training (default 0)")
    t.add_argument("--out", required=True, help="run folder for the checkpoint")
    t.add_argument("--force", action="store_true", help="start a new run in --out even if it holds one (its weights, "
                   "state and history are removed once the new run has read its data)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out (give the same settings and data; any difference is refused)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("--threads", type=thread_count, default=1,
                   help="torch intra-op threads while training (default 1: the same result on any load, and no "
                        "collapse when other work shares the cores; more can be faster on an idle machine)")

    e = tsub.add_parser("eval", help="BLEU and chrF of a checkpoint on a TSV file")
    e.set_defaults(handler=_eval)
    e.add_argument("--checkpoint", required=True, help="run folder written by `attend translate train`")
    e.add_argument("--data", required=True, help="TSV file of sentence pairs")
    e.add_argument("--src-col", type=nonneg_int, default=0, help="source column, 0-based (default 0)")
    e.add_argument("--tgt-col", type=nonneg_int, default=1, help="target column, 0-based (default 1)")
    e.add_argument("--limit", type=positive_int, default=None, help="read at most this many lines of --data")
    e.add_argument("--beam", type=beam_size, default=1, help="beam size, at most 1024 (default 1: greedy)")
    e.add_argument("--plot", help="also write BLEU by source length here (format from the extension: .png, .pdf, "
                                  ".svg, .jpg, ...)")
    e.add_argument("--force", action="store_true", help="overwrite --plot")

    x = tsub.add_parser("text", help='translate one sentence: attend translate "a sentence" --checkpoint DIR')
    x.set_defaults(handler=_text)
    x.add_argument("sentence", help="the sentence to translate")
    x.add_argument("--checkpoint", required=True, help="run folder written by `attend translate train`")
    x.add_argument("--beam", type=beam_size, default=1, help="beam size, at most 1024 (default 1: greedy)")
    x.add_argument("--max-len", type=positive_int, default=None, help="longest output (default 2 x source + 10)")
    x.add_argument("--heatmap", help="write the attention heat map here (format from the extension: .png, .pdf, "
                                     ".svg, .jpg, ...)")
    x.add_argument("--force", action="store_true", help="overwrite --heatmap")


def _short(x: float) -> str:
    """2e-3, not 0.002 or 2e-03."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def rewrite(argv: list[str]) -> list[str]:
    """``attend translate "a sentence" ...`` -> ``attend translate text "a sentence" ...``."""
    try:
        i = argv.index("translate")
    except ValueError:
        return argv
    if any(a == "translate" for a in argv[:i]) or i + 1 >= len(argv):
        return argv
    j = i + 1
    while j < len(argv) and argv[j] == "--debug":
        j += 1
    if j >= len(argv) or argv[j] in VERBS or argv[j] in ("-h", "--help"):
        return argv
    return argv[: i + 1] + ["text"] + argv[i + 1 :]


def _job(args: argparse.Namespace):
    """The training the flags ask for (usage errors exit 2 before anything is read or written)."""
    from ..apps.translate import DataSource, TrainJob

    transformer = args.model == "transformer"
    wrong = _RNN_ONLY if transformer else _TRANSFORMER_ONLY
    for dest, flag in wrong.items():
        if getattr(args, dest) is not None:
            raise UsageError(f"{flag} applies to --model {'rnn' if transformer else 'transformer'}, not --model "
                             f"{args.model}")
    if args.synthetic is not None:
        for dest, flag in (("src_col", "--src-col"), ("tgt_col", "--tgt-col"), ("limit", "--limit")):
            if getattr(args, dest) is not None:
                raise UsageError(f"{flag} applies to --data, not --synthetic")
    src_col = 0 if args.src_col is None else args.src_col
    tgt_col = 1 if args.tgt_col is None else args.tgt_col
    if src_col == tgt_col:
        raise UsageError(f"--src-col and --tgt-col must differ, both are {src_col}")
    if args.resume and args.force:
        raise UsageError("--resume continues the run in --out and --force starts a new one: give one of them")
    if args.data is not None:
        need_file(args.data, "data file")
    if transformer:
        model = dict(d_model=args.hidden, heads=args.heads, encoder_layers=args.layers, decoder_layers=args.layers,
                     ff_dim=args.ff, dropout=args.dropout, positional=args.positional)
    else:
        model = dict(attention=args.attention, rnn=args.rnn, hidden_dim=args.hidden, embed_dim=args.embed,
                     layers=args.layers, dropout=args.dropout,
                     bidirectional=None if args.unidirectional is None else not args.unidirectional)
    try:
        source = DataSource(file=args.data, src_col=src_col, tgt_col=tgt_col, limit=args.limit,
                            synthetic=args.synthetic, max_len=args.max_len, valid=args.valid, test=args.test,
                            seed=args.seed)
        return TrainJob(out=args.out, source=source, kind=args.model, model=model, lr=args.lr,
                        warmup_steps=args.warmup, batch_size=args.batch_size, epochs=args.epochs,
                        max_minutes=args.minutes, eval_every=args.eval_every, patience=args.patience, seed=args.seed,
                        min_freq=args.min_freq, resume=args.resume, force=args.force, threads=args.threads,
                        progress=not args.no_progress)
    except ValueError as e:
        raise UsageError(_in_flags(str(e))) from None


def _in_flags(message: str) -> str:
    """A model config's message in the command line's words: its fields named by their flags
    (``_FLAGS``; not ``bidirectional``, which ``--unidirectional`` sets the other way)."""
    fields = {k[len("model."):]: f for k, f in _FLAGS.items() if k.startswith("model.") and k != "model.bidirectional"}
    return re.sub(r"\b(" + "|".join(fields) + r")\b(?= \(| must)", lambda m: fields[m.group(1)], message)


def _train(args) -> int:
    from ..distributed.ranks import init_from_env

    job = _job(args)
    ranks = init_from_env()  # launched by torchrun: data-parallel training (rank 0 writes and prints)
    try:
        return _train_job(job, args, ranks)
    finally:
        if ranks is not None:
            import torch.distributed as dist

            dist.destroy_process_group()


def _longer(args) -> str:
    return f", or one longer than --max-len {args.max_len}" if getattr(args, "max_len", None) else ""


def _train_job(job, args, ranks) -> int:
    from ..apps.translate import ResumeMismatch, RunFolderBusy, RunFolderRefused, TrainingInterrupted

    main = ranks is None or ranks.main

    planned = []

    def started(s) -> None:
        planned.append(s.planned_steps)
        where = "the split of the run" if s.test_file is None else f"test split: {s.test_file}"
        left_out = f"; {s.n_dropped} pairs of the data left out (a side with no words{_longer(args)})" \
            if s.n_dropped else ""
        print(f"attend: {s.n_train} training pairs, {s.n_valid} validation, {s.n_test} test ({where}){left_out}; "
              f"{s.planned_steps} steps planned, warm-up {s.warmup_steps}", file=sys.stderr)

    try:
        _, hist = job.run(on_start=started)
    except (RunFolderBusy, RunFolderRefused) as e:
        raise UsageError(_refusal(e, args)) from None
    except ResumeMismatch as e:  # said in the command line's words
        raise ValueError(f"{e.config_path}: different training settings from the run's: "
                         f"{_resume_differences(e.diffs, e.saved, e.data, args)}; resume with the same "
                         "settings and data") from None
    except TrainingInterrupted as e:
        if main:
            print(f"attend: interrupted; training state saved in {e.out_dir} (continue with --resume)",
                  file=sys.stderr)
        return e.exit_code
    if not main:
        return 0
    best = min(hist, key=lambda h: h["valid_loss"])
    steps, seconds = hist[-1]["step"], hist[-1]["seconds"]
    why = ""
    if not planned or steps < planned[0]:  # say what stopped it short of the plan
        if args.minutes > 0 and seconds >= args.minutes * 60:
            why = f" (stopped by --minutes {args.minutes:g})"
        elif args.patience > 0 and len(hist) - 1 - hist.index(best) >= args.patience:
            why = f" (stopped early: {args.patience} validations without improvement)"
    if planned:
        done = f"trained {steps} of {planned[0]} planned steps in {seconds:.0f} s{why}"
    else:  # a resumed run that took no step (its plan was in its own steps, maybe on another number of processes)
        done = f"nothing left to train: the run had ended at step {steps}{why or ', its plan done'} in {seconds:.0f} s"
    print(f"{done}; best validation loss {best['valid_loss']:.4f} at step {best['step']}; checkpoint: {args.out}")
    return 0


def _refusal(e: Exception, args) -> str:
    """Why the run folder was refused, in the command line's words."""
    reason = getattr(e, "reason", None)
    if reason == "not_a_folder":
        return f"--out is not a folder: {args.out}"
    if reason == "not_empty":
        return f"{args.out} is not empty; pass --force to train into it or --resume to continue"
    if reason == "nothing_to_resume":
        return f"nothing to resume in {args.out} (no state.safetensors)"
    return str(e)


def _data_source(note: dict) -> str:
    """How a run's data was given, in command-line words."""
    if "corpus" in note:
        return f"--synthetic {note.get('pairs')}"
    return f"--data {note['file']}" if note.get("file") else "--data"


def _resume_differences(diffs, saved: dict, note: dict, args) -> str:
    """The settings of a refused ``--resume`` that differ from the run's, in the words of the
    command line: one entry per flag (``--seed`` sets two fields, ``--layers`` up to two),
    a change of data said as such (not as the split sizes it leads to), and settings the
    user did not give (a default that follows from the others: ``--lr``, ``--warmup``) only
    when nothing else explains them."""
    run_data = dict(saved.get("data") or {})
    counts = ("data.n_train", "data.n_valid", "data.n_test")
    derived = {f for f, given in (("train.warmup_steps", args.warmup), ("train.lr", args.lr)) if given is None}
    explained = [f for f, _, _ in diffs if f not in derived and f not in counts and f != "pairs"]
    data_flags = [f for f in explained if f.startswith("data.") or f == "train.seed"]  # what makes the split
    out: dict[str, str] = {}
    for f, a, b in diffs:
        if f.startswith("data.") and ("corpus" in run_data) != ("corpus" in note):
            out.setdefault("data", f"--data/--synthetic (run: {_data_source(run_data)}, given: {_data_source(note)})")
        elif f in counts or f == "pairs":
            if data_flags:
                continue  # a consequence of the data flags listed
            if f in counts:
                sizes = lambda d: f"{d.get('n_train')} training, {d.get('n_valid')} validation, {d.get('n_test')} test"
                detail = f"run: {sizes(run_data)} pairs, given: {sizes(note)}"
            else:
                detail = "the same numbers of pairs, other sentences"
            out.setdefault("data", f"{_data_source(note)}: other sentence pairs than the run's ({detail})")
        elif f in derived:
            if explained:
                continue  # follows from the differences listed
            flag = _FLAGS[f]
            out.setdefault(flag, f"{flag} (run: {a!r}, given: {b!r}, the default for these settings)")
        else:
            flag = _FLAGS.get(f)
            if flag == "--unidirectional" and isinstance(a, bool) and isinstance(b, bool):
                a, b = not a, not b
            label = flag or (f"training setting {f[len('train.'):]}" if f.startswith("train.") else f)
            out.setdefault(label, f"{label} (run: {a!r}, given: {b!r})")
    return ", ".join(out.values())


def _eval(args) -> int:
    from ..apps.translate import Translator, evaluate
    from ..apps.translate.data import read_pairs_counted

    need_checkpoint(args.checkpoint)
    need_file(args.data, "data file")
    if args.src_col == args.tgt_col:
        raise UsageError(f"--src-col and --tgt-col must differ, both are {args.src_col}")
    if args.plot:
        new_figure(args.plot, args.force, "--plot")
    elif args.force:
        raise UsageError("--force applies to --plot, and no --plot was given")
    tr = Translator.load(args.checkpoint)
    pairs, left_out = read_pairs_counted(args.data, src_col=args.src_col, tgt_col=args.tgt_col, limit=args.limit)
    if left_out:
        print(f"attend: {left_out} of {len(pairs) + left_out} pairs in {args.data} left out: a side with no words",
              file=sys.stderr)
    r = evaluate(tr, pairs, beam=args.beam)
    unknown = [w for t in r.translations for w in t.unknown]
    if unknown:
        print(unknown_note(unknown, sum(bool(t.unknown) for t in r.translations)), file=sys.stderr)
    print(f"BLEU {r.bleu:.2f}  chrF {r.chrf:.2f}  ({r.n} sentences, beam {args.beam})")
    for row in r.by_length:
        label = f"{row['lo']}-{row['hi']}" if row["hi"] < 1000 else f"{row['lo']}+"
        print(f"  {label:>7} words: BLEU {row['bleu']:6.2f}  ({row['n']} sentences)")
    if args.plot:
        from ..viz import bleu_by_length_plot

        name = os.path.basename(os.path.normpath(args.checkpoint))
        print(draw(lambda: bleu_by_length_plot({name: r.by_length}, args.plot), args.plot, "the plot"))
    return 0


def _text(args) -> int:
    from ..apps.translate import Translator
    from ..data import tokenize

    need_checkpoint(args.checkpoint)
    text_arg(args.sentence, "TEXT")
    if not tokenize(args.sentence):
        raise UsageError("TEXT must not be empty")
    if args.heatmap:
        new_figure(args.heatmap, args.force, "--heatmap")
    elif args.force:
        raise UsageError("--force applies to --heatmap, and no --heatmap was given")
    tr = Translator.load(args.checkpoint)
    if args.heatmap and getattr(tr.model.config, "attention", None) == "none":
        raise UsageError("--heatmap: this checkpoint has no attention (attention='none'): no heat map to draw")
    t = tr.translate([args.sentence], beam=args.beam, max_len=args.max_len)[0]
    if t.unknown:
        print(unknown_note(t.unknown), file=sys.stderr)
    print(t.text)
    if args.heatmap:
        if not t.tokens:
            raise ValueError("the translation is empty: no heat map to draw")
        from ..viz import attention_heatmap

        print(draw(lambda: attention_heatmap(t.weights, t.source, t.tokens, args.heatmap), args.heatmap,
                   "the heat map"), file=sys.stderr)
    return 0
