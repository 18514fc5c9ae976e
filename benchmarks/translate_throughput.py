"""Training throughput: attend's batched trainer vs. a one-sentence-at-a-time loop.

    python benchmarks/translate_throughput.py [--seconds 40] [--out benchmarks/results/translate-throughput.md]

The loop is the style of the well-known PyTorch seq2seq tutorial: one sentence per
optimiser step, the decoder called once per target word (teacher forcing). The model is
the same object size for all three (bi-GRU encoder, GRU decoder, Luong "general"
attention, hidden 256, embeddings 64), trained side by side in one run on the embedded
corpus; tokens/s counts source + target tokens, as the trainer's progress bar does.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

from attend.apps.translate import sequence_loss
from attend.data import LengthGroupedBatches, Vocab, make_batch, prepare, synthetic_pairs
from attend.models import Seq2Seq, Seq2SeqConfig

from _machine import RESULTS, write_results


def build(pairs):
    src = Vocab.build(s for s, _ in pairs)
    tgt = Vocab.build(t for _, t in pairs)
    ids = [(src.encode(s), tgt.encode(t)) for s, t in pairs]
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(src_vocab=len(src), tgt_vocab=len(tgt), hidden_dim=256, embed_dim=64,
                                  attention="general"))
    return model, ids


def batched(model, ids, seconds, batch_size=64):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lb = LengthGroupedBatches(ids, batch_size=batch_size, seed=0)
    toks, t0 = 0, time.perf_counter()
    for ix in lb.order(0):
        b = lb.batch(ix)
        loss, _ = sequence_loss(model, b)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        toks += b.n_tgt_tokens + b.n_src_tokens
        if time.perf_counter() - t0 > seconds:
            break
    return toks / (time.perf_counter() - t0)


def one_at_a_time(model, ids, seconds, stepwise=True):
    """Tutorial style: one sentence per update; with ``stepwise`` the decoder runs one word per call."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    toks, t0 = 0, time.perf_counter()
    for s, t in ids:
        b = make_batch([(s, t)])
        enc = model.encode(b.src, b.src_lengths)
        if stepwise:
            state, losses = enc.state, []
            for i in range(b.tgt_in.shape[1]):
                logits, state, _ = model.decode(b.tgt_in[:, i : i + 1], state, enc)
                losses.append(nn.functional.cross_entropy(logits[:, 0], b.tgt_out[:, i]))
            loss = torch.stack(losses).mean()
        else:
            logits, _, _ = model.decode(b.tgt_in, enc.state, enc)
            loss = nn.functional.cross_entropy(logits[0], b.tgt_out[0])
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        toks += b.n_tgt_tokens + b.n_src_tokens
        if time.perf_counter() - t0 > seconds:
            break
    return toks / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--pairs", type=int, default=20_000, help="sentence pairs of the embedded corpus")
    ap.add_argument("--out", default=os.path.join(RESULTS, "translate-throughput.md"),
                    help="results file (.md; the .json beside it)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    pairs = prepare(synthetic_pairs(args.pairs, seed=0, max_words=60))
    res = {}
    for name, fn in (("one sentence, decoder word by word (tutorial)", lambda m, d: one_at_a_time(m, d, args.seconds)),
                     ("one sentence, decoder over all words at once", lambda m, d: one_at_a_time(m, d, args.seconds, False)),
                     ("attend trainer: length-grouped batches of 64", lambda m, d: batched(m, d, args.seconds))):
        model, ids = build(pairs)
        model.train()
        res[name] = fn(model, ids)
        print(f"{name}: {res[name]:.0f} tokens/s", flush=True)
    base = res["one sentence, decoder word by word (tutorial)"]
    lines = ["Same model for all rows (bi-GRU encoder, GRU decoder, Luong general attention, hidden 256, embeddings 64, "
             f"dropout 0.1), Adam, gradient clipping, embedded corpus ({len(pairs)} pairs, sentences up to 60 words), "
             f"{args.seconds:g} s each, run one after the other in one process. Tokens = source + target.", "",
             "| training loop | tokens/s | ratio to the tutorial loop |", "|---|---|---|"]
    lines += [f"| {k} | {v:.0f} | {v / base:.1f}x |" for k, v in res.items()]
    write_results(args.out, "Training throughput: batched vs. one sentence at a time", lines,
                  data={"tokens_per_s": res})


if __name__ == "__main__":
    main()
