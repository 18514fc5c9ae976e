"""Tatoeba English -> French with the seed-002 translator, trained for a budget of steps.

    python benchmarks/translate_tatoeba.py [--steps N] [--threads 1] [--out benchmarks/results/translate-tatoeba.md]
    python benchmarks/translate_tatoeba.py --model transformer     # -> translate-tatoeba-transformer.md

The budget is in optimiser steps (default: what each model reached in the 28 minutes the
committed results were trained for, 6933 for the RNN and 3426 for the transformer, with 2
threads) and torch runs ``--threads`` threads, so the reported BLEU does not depend on the
machine's speed or load; ``--minutes`` adds a time budget on top (the figures then depend
on the machine). The committed results came from the earlier time-budgeted script
(``--minutes 28``, 2 threads); ``--steps 6933 --threads 2`` is the same budget in steps.

Data: ../shared/data/tatoeba/eng-fra.txt (CC-BY 2.0, tatoeba.org), English side at most 15
words, split so that no English sentence is in two splits. BLEU / chrF with sacrebleu on
the tokenised, lower-cased text, greedy and beam 5, on the whole test split.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from attend.apps.translate import TrainConfig, evaluate, train_translator
from attend.data import prepare, read_tsv, split_by_source

from _machine import RESULTS, write_results

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tatoeba", "eng-fra.txt")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps (default 6933 rnn, 3426 transformer)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--minutes", type=float, default=0.0, help="also a time budget (default: none)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--embed", type=int, default=256)
    ap.add_argument("--attention", default="general")
    ap.add_argument("--run", default="runs/bench-tatoeba")
    ap.add_argument("--model", choices=["rnn", "transformer"], default="rnn")
    ap.add_argument("--out", default=None, help="results file (.md; the .json beside it); default: "
                    "benchmarks/results/translate-tatoeba[-transformer].md")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    if args.out is None:
        suffix = "-transformer" if args.model == "transformer" else ""
        args.out = os.path.join(RESULTS, f"translate-tatoeba{suffix}.md")
    if args.steps is None:
        args.steps = 3426 if args.model == "transformer" else 6933
    torch.set_num_threads(args.threads)

    raw = read_tsv(args.data, limit=args.limit)
    raw = [(s, t) for s, t in raw if len(s.split()) <= 15]
    pairs = prepare(raw, max_len=30)
    split = split_by_source(pairs, valid=0.02, test=0.05, seed=0)
    if args.model == "transformer":
        model = dict(kind="transformer", d_model=args.hidden, heads=4, encoder_layers=3, decoder_layers=2,
                     ff_dim=4 * args.hidden, dropout=0.1)
        lr, warmup = 1e-3, 400
        described = (f"transformer, 3 encoder + 2 decoder layers, d {args.hidden}, 4 heads, feed-forward "
                     f"{4 * args.hidden}, sinusoidal positions, dropout 0.1, tied output embedding")
    else:
        model = dict(attention=args.attention, hidden_dim=args.hidden, embed_dim=args.embed, dropout=0.2)
        lr, warmup = 2e-3, 200
        described = (f"bidirectional GRU encoder, GRU decoder, Luong '{args.attention}' attention, hidden "
                     f"{args.hidden}, embeddings {args.embed}, dropout 0.2")
    cfg = TrainConfig(batch_size=64, lr=lr, warmup_steps=warmup, epochs=30, eval_every=1000, patience=4,
                      max_steps=args.steps, max_minutes=args.minutes, seed=0)
    t0 = time.perf_counter()
    tr, hist = train_translator(split.train, split.valid, args.run, model=model, train_config=cfg, min_freq=2,
                                data={"file": "tatoeba/eng-fra.txt", "max_words": 15}, progress=False)
    wall = time.perf_counter() - t0
    greedy = evaluate(tr, split.test, beam=1)
    beam = evaluate(tr, split.test, beam=5)
    samples = tr.translate(["the black cat ate the mouse .", "i would like a cup of coffee .",
                            "where is the nearest train station ?", "she has been living in paris for three years ."],
                           beam=5)
    data = {"train_pairs": len(split.train), "valid_pairs": len(split.valid), "test_pairs": len(split.test),
            "src_vocab": len(tr.src_vocab), "tgt_vocab": len(tr.tgt_vocab), "model": model, "train": cfg.to_dict(),
            "steps": hist[-1]["step"], "train_seconds": hist[-1]["seconds"], "wall_seconds": round(wall, 1),
            "tokens_per_s": hist[-1]["tokens_per_s"], "history": hist, "greedy": greedy.summary(),
            "beam5": beam.summary(), "samples": [(" ".join(s.source), s.text) for s in samples]}
    lines = [
        f"Data: `../shared/data/tatoeba/eng-fra.txt` (CC-BY 2.0, tatoeba.org), English side <= 15 words, "
        f"split by source sentence (no English sentence in two splits): {data['train_pairs']} train, "
        f"{data['valid_pairs']} valid, {data['test_pairs']} test. Vocabularies (min frequency 2): "
        f"{data['src_vocab']} English, {data['tgt_vocab']} French tokens.", "",
        f"Model: {described}. Training: Adam lr {lr:g} (warm-up {warmup} steps, halved when validation "
        f"loss stops improving), batch 64, clip 1.0, validation every 1000 steps, budget {args.steps} steps"
        f"{f' or {args.minutes:g} min' if args.minutes else ''}, {args.threads} torch thread(s): "
        f"{data['steps']} steps in {data['train_seconds']:.0f} s of training ({data['tokens_per_s']:.0f} tokens/s).",
        "",
        "| decoding | BLEU | chrF |", "|---|---|---|",
        f"| greedy | {greedy.bleu:.2f} | {greedy.chrf:.2f} |", f"| beam 5 | {beam.bleu:.2f} | {beam.chrf:.2f} |", "",
        "BLEU by source length (beam 5): " + ", ".join(f"{r['lo']}-{r['hi']} tokens: {r['bleu']} ({r['n']})"
                                                       for r in beam.by_length), "",
        "Validation loss by step: " + ", ".join(f"{h['step']}: {h['valid_loss']:.3f}" for h in hist), "",
        "Samples (beam 5):", "",
    ] + [f"- {s} -> {t}" for s, t in data["samples"]]
    title = "Tatoeba English -> French, " + ("transformer translator" if args.model == "transformer" else
                                             "seed-002 translator") + " on CPU"
    write_results(args.out, title, lines, data=data)


if __name__ == "__main__":
    main()
