"""``attend demo`` (the main job) and ``attend tour`` (the variants, side by side)."""
from __future__ import annotations

import os
import sys
import time

from ._common import UsageError, seed, thread_count


def add_parsers(sub) -> None:
    demo = sub.add_parser("demo", help="the main job: train an attention translator and a no-attention baseline, "
                                       "compare them by sentence length, draw the attention")
    demo.set_defaults(handler=_demo)
    demo.add_argument("--out", help="run folder (default: runs/demo-<date>-<time>)")
    demo.add_argument("--force", action="store_true", help="write into --out even if it is not empty")
    demo.add_argument("--quick", action="store_true", help="a tiny corpus and model: seconds, for a smoke test")
    demo.add_argument("--seed", type=seed, default=0, help="seed for the corpus and training (default 0)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("--threads", type=thread_count, default=1,
                      help="torch intra-op threads (default 1: the same numbers on any load; small models gain "
                           "little from more, and slow down badly when other work shares the cores)")
    demo.add_argument("--minutes", type=float, default=0.0,
                      help="also stop each model's training after this many minutes (default 0: none; the step "
                           "budget alone makes the result independent of the machine's speed)")

    tour = sub.add_parser("tour", help="a terminal tour of the attention variants on one small sentence")
    tour.set_defaults(handler=_tour)
    tour.add_argument("--seed", type=seed, default=0, help="seed for the random parts (default 0)")
    tour.add_argument("--lang", choices=("en", "id", "pl", "zh", "es"), default="en",
                      help="language of the tour: en (English, default), id (Indonesian), pl (Polish), "
                           "zh (Chinese), es (Spanish) — the languages of the five lecture notes")


def _demo(args) -> int:
    from ..apps import demo

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


def _tour(args) -> int:
    from ..apps import tour

    tour.run(sys.stdout, seed=args.seed, lang=args.lang)
    return 0
