"""The ``attend`` command: it parses, calls the library and prints; the work is the
library's (:mod:`attend.apps`).

    attend demo                      the main job: train and compare the seed-002 translators
    attend tour                      the attention variants, side by side, on one sentence
    attend translate train ...       train a translator on a TSV file (or the embedded corpus)
    attend translate eval ...        BLEU / chrF of a checkpoint on a TSV file
    attend translate "a sentence" --checkpoint DIR
    attend word-sense "sentence" ["sentence" ...] [--html out.html]   word sense + attention viewer
                                     (``attend explain`` is its first name, kept as an alias)
    attend view "sentence" ... --html out.html [--checkpoint RUN | --model FOLDER]
                                     the attention viewer for a translator, an HF folder or MiniLM

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
from typing import Optional, Sequence

from .. import __version__
from . import demo as _demo_cmd
from . import translate as _translate_cmd
from . import view as _view_cmd
from . import wordsense as _wordsense_cmd
from ._common import Parser, UsageError, one_line
from .translate import rewrite as _rewrite

__all__ = ["main", "build_parser", "UsageError"]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="attend", description="attend: the attention mechanism, every variant behind one API.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for runtime errors")
    p.add_argument("--version", action="version", version=f"attend {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    _demo_cmd.add_parsers(sub)
    _translate_cmd.add_parser(sub)
    _wordsense_cmd.add_parser(sub)
    _view_cmd.add_parser(sub)
    _debug_everywhere(p)
    return p


def _debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """``--debug`` after any subcommand too (default SUPPRESS keeps the top-level value)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(s): s for s in action.choices.values()}.values():  # an alias names its parser again
                sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show tracebacks for runtime errors")
                _debug_everywhere(sub)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing what is left at exit does not fail again
    (Python's documented recipe for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (a test's capture)
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = _rewrite(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "translate" and args.verb is None:  # (the top-level help would not list train / eval)
        print('attend: error: attend translate needs a sentence (attend translate "the cat ." --checkpoint RUN) or '
              "a verb: train, eval (attend translate train --help)", file=sys.stderr)
        return 2
    try:
        code = args.handler(args)
        sys.stdout.flush()  # a reader that went away shows here, not at exit
        return code
    except BrokenPipeError:  # `attend tour | head`: the reader has what it wanted; not an error
        _quiet_stdout()
        return 128 + 13  # as a process killed by SIGPIPE
    except UsageError as e:
        print(f"attend: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attend: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # runtime error: one line unless --debug
        training = sys.modules.get("attend.apps.translate.training")
        run = sys.modules.get("attend.apps.translate.run")
        if training is not None and isinstance(e, training.TrainingInterrupted):  # Ctrl-C / SIGTERM in a training
            print(f"attend: {one_line(e)}", file=sys.stderr)
            return e.exit_code
        if run is not None and isinstance(e, (run.RunFolderBusy, run.RunFolderRefused)):  # not a folder to train in
            print(f"attend: error: {one_line(e)}", file=sys.stderr)
            return 2
        if args.debug:
            raise
        print(f"attend: error: {one_line(e)}", file=sys.stderr)
        return 1
