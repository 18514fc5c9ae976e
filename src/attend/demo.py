"""``attend demo``, the main job: seed 002's translator, trained and judged in minutes.

On the embedded English -> French-like corpus (:func:`attend.data.synthetic_pairs`) it
trains an attention model (Luong "general" score over a bidirectional GRU encoder) and the
no-attention baseline of the same size, then prints translations (with "the black cat
ate the mouse"), BLEU and chrF of both overall and by source length, and writes into a
run folder: both models, the BLEU-by-length plot (Bahdanau et al.'s Figure 2 at our
scale), alignment heat maps, and ``summary.json`` with the resolved settings and scores.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TextIO

import torch

from . import _io

__all__ = ["DemoSettings", "run", "QUICK", "FULL"]


@dataclass(frozen=True)
class DemoSettings:
    pairs: int = 20_000
    max_words: int = 60
    hidden_dim: int = 256
    embed_dim: int = 64
    epochs: int = 4
    minutes_per_model: float = 2.0
    batch_size: int = 64
    lr: float = 3e-3
    test_size: int = 600
    attention: str = "general"


FULL = DemoSettings()
QUICK = DemoSettings(pairs=1_500, max_words=30, hidden_dim=48, embed_dim=24, epochs=2, minutes_per_model=0.5,
                     test_size=60)


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
        from .models.bert import SentenceEncoder, minilm_path

        encoder = SentenceEncoder.from_pretrained(minilm_path())
    except ImportError as e:
        out.write(f"\n(word sense and the attention viewer skipped: {e})\n")
        return []
    from .apps.wordsense import explain_word
    from .viz import AttentionView

    texts = ["I sat on the bank of the river", "I deposited money at the bank"]
    out.write("\nword sense from context (all-MiniLM-L6-v2 through attend; `attend explain` does this for any sentences):\n")
    out.write(explain_word(encoder, texts, top=3).format() + "\n")
    path = AttentionView.from_encoder(encoder, texts, title="all-MiniLM-L6-v2 on two senses of 'bank'").save(
        os.path.join(out_dir, "attention-viewer.html"), force=True)
    out.write(f"every layer's and head's attention, offline in a browser: {path}\n")
    return [path]


def _fused(out: TextIO) -> None:
    """Seed 001's parallel attention on the fused kernels: run on a GPU, say why not otherwise."""
    import attend

    out.write("\nfused attention (backend='triton': every position at once, weights included):\n")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(1, 8, 1024, 64, device=dev, generator=g, dtype=torch.float16 if dev == "cuda" else
                           torch.float32) for _ in range(3))
    try:
        o, w = attend.attention(q, k, v, causal=True, return_weights=True, backend="triton")
    except attend.UnsupportedCall as e:
        out.write(f"  not on this machine: {e}\n")
        return
    ref_o, ref_w = attend.attention(q.float(), k.float(), v.float(), causal=True, return_weights=True,
                                    backend="eager")
    out.write(f"  8 heads x 1024 tokens, causal, fp16: output and weights from the fused path; max difference to "
              f"eager: output {(o.float() - ref_o).abs().max().item():.1e}, weights "
              f"{(w.float() - ref_w).abs().max().item():.1e}\n")


def run(out: TextIO, *, out_dir: str, seed: int = 0, settings: DemoSettings = FULL, progress: bool = True) -> dict:
    """Train, evaluate and draw; print to ``out``; return the summary (also in summary.json)."""
    from .apps import evaluate, train_translator
    from .data import SYNTHETIC_EXAMPLE, prepare, split_by_source, synthetic_pairs
    from .train import TrainConfig
    from .viz import attention_heatmap, bleu_by_length_plot

    s = settings
    t_start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    out.write("attend demo: seed 002's translator, an RNN encoder-decoder with attention; then word sense and\n"
              "attention maps from a pretrained transformer (seeds 003, 004)\n")
    out.write(f"run folder: {out_dir}\n\n")
    pairs = prepare(synthetic_pairs(s.pairs, seed=seed, max_words=s.max_words))
    split = split_by_source(pairs, valid=0.02, test=s.test_size / len(pairs), seed=seed)
    long = sum(len(p[0]) >= 30 for p in split.test)
    out.write(f"corpus: {len(pairs)} English -> French-like pairs from attend's own grammar (seed {seed}); "
              f"train {len(split.train)}, valid {len(split.valid)}, test {len(split.test)} ({long} of >= 30 words)\n")
    example = f"  e.g. {SYNTHETIC_EXAMPLE[0]!r} -> {SYNTHETIC_EXAMPLE[1]!r}\n"
    out.write(example)
    data_note = {"corpus": "attend.data.synthetic_pairs", "seed": seed, "pairs": s.pairs, "max_words": s.max_words}
    tcfg = TrainConfig(batch_size=s.batch_size, lr=s.lr, epochs=s.epochs, max_minutes=s.minutes_per_model, seed=seed)
    models, results, train_info = {}, {}, {}
    for name, kind in (("attention", s.attention), ("no attention", "none")):
        out.write(f"\ntraining the {name} model ({kind}; hidden {s.hidden_dim}, at most {s.epochs} epochs / "
                  f"{s.minutes_per_model:g} min) ...\n")
        out.flush()
        folder = os.path.join(out_dir, "attention" if kind != "none" else "baseline")
        tr, hist = train_translator(split.train, split.valid, folder, train_config=tcfg, data=data_note,
                                    model=dict(attention=kind, hidden_dim=s.hidden_dim, embed_dim=s.embed_dim),
                                    progress=progress)
        last = hist[-1]
        out.write(f"  {last['step']} steps in {last['seconds']:.0f} s ({last['tokens_per_s']:.0f} tokens/s), "
                  f"best validation loss {min(h['valid_loss'] for h in hist):.3f}; saved in {folder}\n")
        models[name] = tr
        train_info[name] = {"folder": folder, "steps": last["step"], "seconds": last["seconds"],
                            "valid_loss": min(h["valid_loss"] for h in hist)}
        results[name] = evaluate(tr, split.test)

    # translations
    longest = max(split.test, key=lambda p: len(p[0]) if len(p[0]) <= 40 else 0)
    samples = [SYNTHETIC_EXAMPLE[0], "the small white dogs will follow a happy girl .", " ".join(longest[0])]
    translated = {name: tr.translate(samples) for name, tr in models.items()}
    out.write("\ntranslations (greedy):\n")
    for k, src in enumerate(samples):
        out.write(f"  source       {src}\n")
        for name in models:
            out.write(f"  {name:<12} {translated[name][k].text}\n")
        if src == " ".join(longest[0]):
            out.write(f"  reference    {' '.join(longest[1])}\n")
    out.write("\nBLEU on the held-out test set, by source length (sacrebleu, tokenised text):")
    _table(out, results)

    # pictures
    plot = bleu_by_length_plot({n: r.by_length for n, r in results.items()}, os.path.join(out_dir, "bleu_by_length.png"),
                               title="BLEU by source length: attention vs. no attention")
    maps = []
    for i, t in enumerate([translated["attention"][0], translated["attention"][2]], 1):
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
    summary = {"settings": s.__dict__, "seed": seed, "train": train_info,
               "results": {n: r.summary() for n, r in results.items()},
               "seconds": round(time.perf_counter() - t_start, 1), "torch_threads": torch.get_num_threads()}
    _io.write_json(os.path.join(out_dir, "summary.json"), summary)
    out.write(f"  {os.path.join(out_dir, 'summary.json')}\n")
    out.write(f"\ndone in {summary['seconds']:.0f} s. For the attention variants one by one: `attend tour`.\n")
    return summary
