"""``attend view``: the attention viewer for a whole model, as one offline HTML file —
a translator run (``--checkpoint``), a Hugging Face folder (``--model``: a BERT-family
encoder, or any encoder–decoder such as BART, Marian or T5), or, by default, the packaged
all-MiniLM-L6-v2."""
from __future__ import annotations

import json
import os
import sys

from ._common import UsageError, need_checkpoint, new_output, positive_int, text_arg

NAME = "view"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="write the attention viewer (one offline HTML file) for a translator run, a "
                                  "Hugging Face model folder or the packaged MiniLM",
                       description='attend view "I sat on the bank of the river" "I deposited money at the bank" '
                                   "--html bank.html")
    p.set_defaults(handler=_view)
    p.add_argument("texts", nargs="+", metavar="TEXT", help="sentences to show (sources, for a translator)")
    p.add_argument("--html", required=True, help="the page to write (.html or .htm)")
    p.add_argument("--checkpoint", help="a translator run folder (`attend translate train` / `attend demo`)")
    p.add_argument("--model", help="a Hugging Face model folder: a BERT-family encoder or an encoder-decoder")
    p.add_argument("--target", action="append", metavar="TEXT",
                   help="with an encoder-decoder --model: the target for each TEXT (default: what it generates)")
    p.add_argument("--max-tokens", type=positive_int, default=4096, help="longest text shown (default 4096)")
    p.add_argument("--force", action="store_true", help="overwrite --html")


def _is_seq2seq(folder: str) -> bool:
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"--model {folder}: cannot read config.json ({e})") from None
    if not isinstance(config, dict):
        raise UsageError(f"--model {path}: expected a JSON object")
    return bool(config.get("is_encoder_decoder", False))


def _view(args) -> int:
    new_output(args.html, args.force, "--html")
    ext = os.path.splitext(args.html)[1]
    if ext.lower() not in (".html", ".htm"):
        raise UsageError(f"--html {args.html}: {ext!r} is not .html or .htm (the viewer is an HTML page)")
    for t in args.texts + (args.target or []):
        text_arg(t, "TEXT")
    if any(not t.strip() for t in args.texts):
        raise UsageError("TEXT must not be empty")
    if args.checkpoint and args.model:
        raise UsageError("give --checkpoint (a translator) or --model (a Hugging Face folder), not both")
    if args.model is not None and not os.path.isdir(args.model):
        raise UsageError(f"--model: model folder not found: {args.model}")
    seq2seq = args.model is not None and _is_seq2seq(args.model)
    if args.target is not None and not seq2seq:
        raise UsageError("--target applies to an encoder-decoder --model")
    if args.target is not None and len(args.target) != len(args.texts):
        raise UsageError(f"--target: {len(args.target)} given for {len(args.texts)} TEXT")
    from ..viz._store import MAX_COLUMNS
    from ..viz.html import TooManyTokens

    if args.max_tokens > MAX_COLUMNS:
        raise UsageError(f"--max-tokens: at most {MAX_COLUMNS}, got {args.max_tokens}")
    try:
        view = _build(args, seq2seq)
    except TooManyTokens as e:
        raise UsageError(f"TEXT {e.index + 1} has {e.count} tokens; the viewer shows at most --max-tokens "
                         f"{e.limit} (split the text or raise --max-tokens)") from None
    print(f"viewer: {view.save(args.html, force=args.force)}", file=sys.stderr)
    return 0


def _build(args, seq2seq: bool):
    """The view of what ``args`` asks for."""
    if args.checkpoint:
        from ..apps.translate import Translator
        from ..apps.view import translation_view

        need_checkpoint(args.checkpoint)
        translator = Translator.load(args.checkpoint)
        if getattr(translator.model.config, "attention", None) == "none":
            raise UsageError(f"--checkpoint {args.checkpoint}: this translator has no attention to show (it was "
                             "trained with --attention none, as the demo's baseline)")
        return translation_view(translator, args.texts, max_tokens=args.max_tokens,
                                title=f"Attention of {_last_two(args.checkpoint)}")
    if seq2seq:
        try:
            import transformers
        except ImportError:
            raise UsageError("an encoder-decoder --model needs Hugging Face transformers (extra 'hf')") from None
        from ..apps.view import hf_seq2seq_view

        tokenizer = transformers.AutoTokenizer.from_pretrained(args.model, local_files_only=True)
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(args.model, local_files_only=True,
                                                                   use_safetensors=True, attn_implementation="eager")
        return hf_seq2seq_view(model, tokenizer, args.texts, targets=args.target, max_tokens=args.max_tokens,
                               title=f"Attention of {os.path.basename(os.path.normpath(args.model))}")
    from ..models.bert import SentenceEncoder, minilm_path
    from ..viz import AttentionView

    try:
        folder = args.model or minilm_path()
    except ImportError as e:
        raise UsageError(str(e)) from None
    return AttentionView.from_encoder(SentenceEncoder.from_pretrained(folder), args.texts, max_tokens=args.max_tokens,
                                      title=f"Attention of {_model_name(folder, args.model)}")


def _model_name(folder: str, given) -> str:
    """What the page's title calls the model: the folder's name, or the packaged MiniLM's."""
    return os.path.basename(os.path.normpath(folder)) if given else "all-MiniLM-L6-v2"


def _last_two(path: str) -> str:
    """A run folder's last two names (the demo writes ``runs/demo-…/attention`` and ``…/baseline``)."""
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    return "/".join(p for p in parts[-2:] if p)
