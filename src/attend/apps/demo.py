"""``attend demo``, the main job: seed 002's translator, trained and judged in minutes.

On the embedded English -> French-like corpus (:func:`attend.data.synthetic_pairs`) it
trains an attention model (Luong "general" score over a bidirectional GRU encoder) and the
no-attention baseline of the same size, then prints translations (with "the black cat
ate the mouse"), BLEU and chrF of both overall and by source length, and writes into a
run folder: both models, the BLEU-by-length plot (Bahdanau et al.'s Figure 2 at our
scale), alignment heat maps, and ``summary.json`` with the resolved settings and scores.

**The result does not depend on the machine's speed or load.** Each model trains for a
fixed number of optimiser steps (not minutes), with torch's intra-op threads set to one
(``threads``): these small models gain little from more threads on two cores, and with
other work running a multi-threaded step can be many times slower (measured: 19x). With
the same seed and thread count, the printed numbers are the same run after run, whatever
else the machine is doing; only the time it takes changes (a progress bar shows the
estimate). ``minutes`` (``--minutes``) adds a time budget per model, for a user who asks
for one; the numbers then depend on the machine.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional, TextIO

import torch

from .. import _check, _io

__all__ = ["DemoSettings", "run", "QUICK", "FULL"]


@dataclass(frozen=True)
class DemoSettings:
    pairs: int = 20_000
    max_words: int = 60
    hidden_dim: int = 256
    embed_dim: int = 64
    # optimiser steps per model, the budget. Measured on the held-out set (attention model,
    # one thread, 2026-11-28): with the cosine schedule BLEU 96.9 at 700 steps and 97.2 at 1000
    # (>= 30 words: 93.8, 94.2); halving the rate on plateaus instead gave 94.1 at 800, 87.3 at 1000.
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    schedule: str = "cosine"  # the learning rate falls to 0 at the last step (attend.apps.translate.TrainConfig)
    test_size: int = 600
    attention: str = "general"


FULL = DemoSettings()
QUICK = DemoSettings(pairs=1_500, max_words=30, hidden_dim=48, embed_dim=24, steps=50, warmup_steps=10,
                     test_size=60)
LONG = 30  # "long" sentences: this many source words or more (where attention matters most)


def _table(out: TextIO, results: dict) -> None:
    names = list(results)
    buckets = [(r["lo"], r["hi"]) for r in results[names[0]].by_length]
    out.write("\n" + "source words".ljust(14) + "".join(n.rjust(14) for n in names) + "   sentences\n")
    for i, (lo, hi) in enumerate(buckets):
        label = f"{lo}-{hi}" if hi < 1000 else f"{lo}+"
        row = [results[n].by_length[i]["bleu"] for n in names]
        out.write(label.ljust(14) + "".join(f"{b:14.1f}" for b in row) + f"   {results[names[0]].by_length[i]['n']:>9}\n")
    out.write("all".ljust(14) + "".join(f"{results[n].bleu:14.1f}" for n in names) + f"   {results[names[0]].n:>9}\n")
    out.write("chrF".ljust(14) + "".join(f"{results[n].chrf:14.1f}" for n in names) + "\n")


def _word_sense(out: TextIO, out_dir: str) -> list[str]:
    """Seeds 003/004 on a pretrained encoder: word sense from context and the attention viewer
    (skipped, saying why, when all-MiniLM-L6-v2 or the tokenizers library is missing)."""
    try:
        from ..models.bert import SentenceEncoder, minilm_path

        encoder = SentenceEncoder.from_pretrained(minilm_path())
    except ImportError as e:
        out.write(f"\n(word sense and the attention viewer skipped: {e})\n")
        return []
    from .wordsense import explain_word
    from ..viz import AttentionView

    texts = ["I sat on the bank of the river", "I deposited money at the bank"]
    out.write("\nword sense from context (all-MiniLM-L6-v2 through attend; `attend word-sense` does this for any sentences):\n")
    out.write(explain_word(encoder, texts, top=3).format() + "\n")
    path = AttentionView.from_encoder(encoder, texts, title="all-MiniLM-L6-v2 on two senses of 'bank'").save(
        os.path.join(out_dir, "attention-viewer.html"), force=True)
    out.write(f"every layer's and head's attention, offline in a browser: {path}\n")
    return [path]


def _fused(out: TextIO) -> None:
    """Seed 001's parallel attention on the fused kernels: run on a GPU, say why not otherwise."""
    import attend

    if not torch.cuda.is_available():
        # Nothing to show without a GPU (Triton's interpreter would take minutes at this size):
        # the section is printed only where the fused kernels run.
        return
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(1, 8, 1024, 64, device=dev, generator=g, dtype=torch.float16) for _ in range(3))
    try:
        o, w = attend.attention(q, k, v, causal=True, return_weights=True, backend="triton")
    except attend.UnsupportedCall:
        return  # e.g. Triton is not installed: nothing runs, so nothing is printed
    out.write("\nfused attention (backend='triton': every position at once, weights included):\n")
    ref_o, ref_w = attend.attention(q.float(), k.float(), v.float(), causal=True, return_weights=True,
                                    backend="eager")
    out.write(f"  8 heads x 1024 tokens, causal, fp16: output and weights from the fused path; max difference to "
              f"eager: output {(o.float() - ref_o).abs().max().item():.1e}, weights "
              f"{(w.float() - ref_w).abs().max().item():.1e}\n")


def _telling_examples(results: dict, pairs, limit: int = 40) -> tuple[list, bool]:
    """Up to two held-out pairs that show the difference: the attention model's translation
    equals the reference and the baseline's does not, one of 10-20 words and the longest of
    at most ``limit`` words; or, where no such sentence exists, the longest (and False)."""
    att, base = results["attention"].translations, results["no attention"].translations
    telling = [i for i, (src, tgt) in enumerate(pairs) if len(src) <= limit
               and att[i].text == " ".join(tgt) and base[i].text != " ".join(tgt)]
    medium = [i for i in telling if 10 <= len(pairs[i][0]) <= 20]
    chosen = medium[:1]
    longest = max(telling or range(len(pairs)), key=lambda i: (len(pairs[i][0]) <= limit, len(pairs[i][0])))
    if longest not in chosen:
        chosen.append(longest)
    return [pairs[i] for i in chosen], bool(telling)


def _why(out: TextIO, results: dict, hidden: int) -> None:
    """Why the gap grows with length, with the table's own numbers."""
    gap_first = results["attention"].by_length[0]["bleu"] - results["no attention"].by_length[0]["bleu"]
    gap_last = results["attention"].by_length[-1]["bleu"] - results["no attention"].by_length[-1]["bleu"]
    out.write(
        "\nwhy: without attention the decoder sees the source only through the encoder's final state, one vector\n"
        f"of {hidden} numbers, however long the sentence; with attention it builds a new context vector for every\n"
        "output word from all the encoder states (seed 002), so nothing has to fit in one vector.\n")
    if gap_last > gap_first and gap_last > _LEAD:
        out.write(f"Short sentences fit in one vector, long ones do not: attention leads by {gap_first:.1f} BLEU in the\n"
                  f"shortest row and by {gap_last:.1f} in the longest.\n")
    else:
        how = (f"grows only a little with length, to a lead under {_LEAD} BLEU" if gap_last > gap_first else
               "does not grow with length")
        out.write(f"Here the gap {how} ({gap_first:.1f} BLEU in the shortest row, {gap_last:.1f} in the\n"
                  "longest): the models are too little trained to show it (--quick is a smoke test, not a result).\n")


_LEAD = 5  # BLEU: the least lead in the longest row that the explanation reads as attention's advantage


def _long_bleu(result, pairs) -> Optional[float]:
    """BLEU over the test sentences of at least ``LONG`` source words (None if there are none)."""
    from .translate.evaluation import bleu

    sel = [i for i, (src, _) in enumerate(pairs) if len(src) >= LONG]
    if not sel:
        return None
    return round(bleu([result.translations[i].text for i in sel], [" ".join(pairs[i][1]) for i in sel]), 2)


def _train(name: str, kind: str, split, folder: str, s: DemoSettings, seed: int, minutes: float, progress: bool,
           data_note: dict):
    """Train one model for ``s.steps`` steps, with one progress bar (ETA) for the whole budget."""
    from tqdm.auto import tqdm

    from .translate import TrainConfig, train_translator

    tcfg = TrainConfig(batch_size=s.batch_size, lr=s.lr, epochs=10_000, max_steps=s.steps, max_minutes=minutes,
                       warmup_steps=s.warmup_steps, schedule=s.schedule, seed=seed)
    bar = tqdm(total=s.steps, desc=f"  {name}", unit="step", disable=not progress, dynamic_ncols=True, leave=False)

    def on_step(trainer):
        bar.update(trainer.state.step - bar.n)
        bar.set_postfix(loss=f"{trainer.state.losses[-1]:.3f}")

    try:
        return train_translator(split.train, split.valid, folder, train_config=tcfg, data=data_note,
                                model=dict(attention=kind, hidden_dim=s.hidden_dim, embed_dim=s.embed_dim),
                                progress=False, on_step=on_step)
    finally:
        bar.close()


def run(out: TextIO, *, out_dir: str, seed: int = 0, settings: DemoSettings = FULL, progress: bool = True,
        threads: int = 1, minutes: float = 0.0) -> dict:
    """Train, evaluate and draw; print to ``out``; return the summary (also in summary.json).

    ``threads``: torch's intra-op threads while the demo runs (restored after). ``minutes``:
    an optional time budget per model on top of the step budget (0: none).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    _check.integer(threads, "threads", low=1, high=cpus,
                   expected=f"an int from 1 to {cpus} (the CPUs this process may use)")
    _check.number(minutes, "minutes", low=0, expected="a number >= 0")
    from .translate import SEED_LIMIT

    _check.integer(seed, "seed", low=0, high=SEED_LIMIT - 1, expected="an int in [0, 2**63)")
    if not isinstance(settings, DemoSettings):
        raise TypeError(f"settings must be an attend.apps.demo.DemoSettings, got {type(settings).__name__}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(out, out_dir=out_dir, seed=seed, settings=settings, progress=progress, threads=threads,
                    minutes=float(minutes))
    finally:
        torch.set_num_threads(previous)


def _run(out: TextIO, *, out_dir: str, seed: int, settings: DemoSettings, progress: bool, threads: int,
         minutes: float) -> dict:
    from .translate import evaluate
    from ..data import SYNTHETIC_EXAMPLE, prepare, split_by_source, synthetic_pairs
    from ..viz import attention_heatmap, bleu_by_length_plot

    s = settings
    t_start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    out.write("attend demo: seed 002's translator, an RNN encoder-decoder with attention; then word sense and\n"
              "attention maps from a pretrained transformer (seeds 003, 004)\n")
    out.write(f"run folder: {out_dir}\n\n")
    pairs = prepare(synthetic_pairs(s.pairs, seed=seed, max_words=s.max_words))
    split = split_by_source(pairs, valid=0.02, test=s.test_size / len(pairs), seed=seed)
    long = sum(len(p[0]) >= LONG for p in split.test)
    out.write(f"corpus: {len(pairs)} English -> French-like pairs from attend's own grammar (seed {seed}); "
              f"train {len(split.train)}, valid {len(split.valid)}, test {len(split.test)} ({long} of >= {LONG} words)\n")
    example = f"  e.g. {SYNTHETIC_EXAMPLE[0]!r} -> {SYNTHETIC_EXAMPLE[1]!r}\n"
    out.write(example)
    budget = f"{s.steps} steps" + (f" or {minutes:g} min" if minutes else "")
    out.write(f"budget: {budget} per model, {threads} torch thread{'s' if threads > 1 else ''} "
              f"(the same seed and threads print the same numbers on a busy machine or an idle one"
              f"{'; a time budget can change them' if minutes else ''})\n")
    data_note = {"corpus": "attend.data.synthetic_pairs", "seed": seed, "pairs": s.pairs, "max_words": s.max_words}
    models, results, train_info = {}, {}, {}
    for name, kind in (("attention", s.attention), ("no attention", "none")):
        out.write(f"\ntraining the {name} model ({kind}; hidden {s.hidden_dim}, {budget}) ...\n")
        out.flush()
        folder = os.path.join(out_dir, "attention" if kind != "none" else "baseline")
        tr, hist = _train(name, kind, split, folder, s, seed, minutes, progress, data_note)
        last = hist[-1]
        best = min(h["valid_loss"] for h in hist)
        out.write(f"  {last['step']} steps in {last['seconds']:.0f} s ({last['tokens_per_s']:.0f} tokens/s), "
                  f"best validation loss {best:.3f}; saved in {folder}\n")
        models[name] = tr
        train_info[name] = {"folder": folder, "steps": last["step"], "seconds": last["seconds"], "valid_loss": best}
        results[name] = evaluate(tr, split.test)

    # translations: the seed's sentence, then test sentences where the two models differ
    chosen, telling = _telling_examples(results, split.test)
    samples = [SYNTHETIC_EXAMPLE[0], *[" ".join(p[0]) for p in chosen]]
    refs = {" ".join(p[0]): " ".join(p[1]) for p in split.test}
    translated = {name: tr.translate(samples) for name, tr in models.items()}
    out.write("\ntranslations (greedy): the seed's sentence, then " +
              ("held-out sentences the attention model gets right and the baseline does not:\n" if telling else
               "the longest held-out sentence (neither model gets one right that the other gets wrong):\n"))
    for k, src in enumerate(samples):
        out.write(f"  source       {src}  ({len(src.split())} words)\n")
        for name in models:
            out.write(f"  {name:<12} {translated[name][k].text}\n")
        if src in refs:
            out.write(f"  reference    {refs[src]}\n")
        if k == 0 and len({translated[n][0].text for n in models}) == 1:
            out.write("  (the same from both: a short sentence fits in the baseline's one vector)\n")
    out.write("\nBLEU on the held-out test set, by source length (sacrebleu, tokenised text):")
    _table(out, results)
    long_bleu = {n: _long_bleu(r, split.test) for n, r in results.items()}
    if all(b is not None for b in long_bleu.values()):
        a, b = long_bleu["attention"], long_bleu["no attention"]
        out.write(f">= {LONG} words".ljust(14) + f"{a:14.1f}{b:14.1f}   {long:>9}   (attention leads by {a - b:.1f})\n")
    _why(out, results, s.hidden_dim)

    # pictures
    plot = bleu_by_length_plot({n: r.by_length for n, r in results.items()}, os.path.join(out_dir, "bleu_by_length.png"),
                               title="BLEU by source length: attention vs. no attention")
    maps = []
    for i, t in enumerate([translated["attention"][0], translated["attention"][-1]], 1):
        maps.append(attention_heatmap(t.weights, t.source, t.tokens, os.path.join(out_dir, f"alignment-{i}.png"),
                                      title=f"what each output word attended to ({s.attention} attention)"))
    files = [plot, *maps]
    files += _word_sense(out, out_dir)
    _fused(out)
    out.write("\nfiles:\n")
    for p in files:
        out.write(f"  {p}\n")
    for n, info in train_info.items():
        out.write(f"  {info['folder']}  ({n} model: translate with `attend translate \"...\" --checkpoint {info['folder']}`)\n")
    summary = {"settings": s.__dict__, "seed": seed, "threads": threads, "minutes": minutes, "train": train_info,
               "results": {n: dict(r.summary(), bleu_long=long_bleu[n]) for n, r in results.items()},
               "seconds": round(time.perf_counter() - t_start, 1)}
    _io.write_json(os.path.join(out_dir, "summary.json"), summary)
    out.write(f"  {os.path.join(out_dir, 'summary.json')}\n")
    out.write(f"\ndone in {summary['seconds']:.0f} s. For the attention variants one by one: `attend tour`.\n")
    return summary
