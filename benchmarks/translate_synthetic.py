"""The embedded corpus: attention vs. no attention, overall and by sentence length.

    python benchmarks/translate_synthetic.py [--steps 3000] [--threads 1] [--out benchmarks/results/translate-synthetic.md]

The budget is in optimiser steps and torch runs one thread (``--threads``), so the
reported BLEU does not depend on the machine's speed or load; ``--minutes`` adds a time
budget on top, for a user who asks for one (the figures then depend on the machine).

Targets (issue 3): the attention model's BLEU >= 90 on the held-out test split, and on
sentences of >= 30 words a lead of >= 30 BLEU over the no-attention baseline of the same
size. Bahdanau et al. (2015), Figure 2, is the same comparison on WMT'14.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from attend.apps.translate import TrainConfig, evaluate, train_translator
from attend.data import prepare, split_by_source, synthetic_pairs
from attend.viz import attention_heatmap, bleu_by_length_plot

from _machine import RESULTS, results_path, side_file, write_results

LONG = (30, 10_000)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=40_000)
    ap.add_argument("--steps", type=int, default=3000, help="optimiser steps per model (the budget)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--minutes", type=float, default=0.0, help="also a time budget per model (default: none)")
    ap.add_argument("--kinds", default="general,none")
    ap.add_argument("--run", default="runs/bench-synthetic")
    ap.add_argument("--out", default=os.path.join(RESULTS, "translate-synthetic.md"),
                    help="results file (.md; the .json and .png files beside it)")
    args = ap.parse_args()
    results_path(args.out)
    alignment = side_file(args.out, "-alignment.png")
    torch.set_num_threads(args.threads)
    pairs = prepare(synthetic_pairs(args.pairs, seed=0, max_words=60))
    split = split_by_source(pairs, valid=0.02, test=0.04, seed=0)
    cfg = TrainConfig(batch_size=64, lr=3e-3, epochs=20, eval_every=500, patience=4, max_steps=args.steps,
                      max_minutes=args.minutes, seed=0)
    rows, series = {}, {}
    for kind in args.kinds.split(","):
        t0 = time.perf_counter()
        tr, hist = train_translator(split.train, split.valid, os.path.join(args.run, kind), train_config=cfg,
                                    model=dict(attention=kind, hidden_dim=256, embed_dim=64), progress=False)
        r = evaluate(tr, split.test)
        r5 = evaluate(tr, split.test, beam=5)
        long_sel = [p for p in split.test if len(p[0]) >= LONG[0]]
        long_bleu = evaluate(tr, long_sel, buckets=[LONG]).bleu
        rows[kind] = {"bleu": r.bleu, "chrf": r.chrf, "bleu_beam5": r5.bleu, "bleu_ge30": long_bleu,
                      "by_length": r.by_length, "steps": hist[-1]["step"], "train_seconds": hist[-1]["seconds"],
                      "tokens_per_s": hist[-1]["tokens_per_s"], "wall_seconds": round(time.perf_counter() - t0, 1)}
        series[kind if kind != "none" else "no attention"] = r.by_length
        print(kind, json.dumps(rows[kind]), flush=True)
        if kind != "none":
            t = max(r.translations, key=lambda t: len(t.source) if len(t.source) <= 30 else 0)
            attention_heatmap(t.weights, t.source, t.tokens, alignment,
                              title=f"{kind} attention, a {len(t.source)}-word test sentence")
    plot = bleu_by_length_plot(series, side_file(args.out, ".png"))
    n_long = sum(len(p[0]) >= 30 for p in split.test)
    data = {"pairs": len(pairs), "train": len(split.train), "valid": len(split.valid), "test": len(split.test),
            "test_ge30": n_long, "config": cfg.to_dict(), "models": rows}
    kinds = list(rows)
    lines = [f"Corpus: `attend.data.synthetic_pairs({args.pairs}, seed=0, max_words=60)`, split by source sentence: "
             f"{data['train']} train, {data['valid']} valid, {data['test']} test ({n_long} of >= 30 words). "
             f"Models: bidirectional GRU encoder, hidden 256, embeddings 64, dropout 0.1; training budget "
             f"{args.steps} steps each{f' or {args.minutes:g} min' if args.minutes else ''}, {args.threads} torch "
             f"thread(s) (Adam 3e-3, batch 64, validation every 500 steps, early stopping).", "",
             "| model | BLEU (greedy) | BLEU (beam 5) | chrF | BLEU, >= 30 words | steps | train s | tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {v['bleu']:.2f} | {v['bleu_beam5']:.2f} | {v['chrf']:.2f} | {v['bleu_ge30']:.2f} | "
                     f"{v['steps']} | {v['train_seconds']:.0f} | {v['tokens_per_s']:.0f} |")
    lines += ["", "BLEU by source length (greedy):", "", "| words | " + " | ".join(kinds) + " | sentences |",
              "|---|" + "---|" * (len(kinds) + 1)]
    for i, b in enumerate(rows[kinds[0]]["by_length"]):
        label = f"{b['lo']}-{b['hi']}" if b["hi"] < 1000 else f"{b['lo']}+"
        lines.append(f"| {label} | " + " | ".join(f"{rows[k]['by_length'][i]['bleu']:.1f}" for k in kinds) + f" | {b['n']} |")
    if "none" in rows and len(kinds) > 1:
        a = kinds[0]
        lines += ["", f"Targets: {a} BLEU {rows[a]['bleu']:.2f} (>= 90: {'met' if rows[a]['bleu'] >= 90 else 'NOT met'}); "
                  f">= 30 words: {rows[a]['bleu_ge30']:.2f} vs {rows['none']['bleu_ge30']:.2f}, lead "
                  f"{rows[a]['bleu_ge30'] - rows['none']['bleu_ge30']:.2f} (>= 30: "
                  f"{'met' if rows[a]['bleu_ge30'] - rows['none']['bleu_ge30'] >= 30 else 'NOT met'})."]
    lines += ["", f"Plot: `{os.path.basename(plot)}`; alignment: `{os.path.basename(alignment)}`."]
    write_results(args.out, "Embedded corpus: attention vs. no attention", lines, data=data)


if __name__ == "__main__":
    main()
