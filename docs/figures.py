"""The concept guide's figures, drawn from code when the docs build starts.

One function per figure; ``FIGURES`` maps each figure's file name (without ``.png``) to its
function. Every number drawn is computed here with attend, with fixed seeds, so the figures
are the same on every build. Run ``python docs/figures.py OUT_DIR`` to draw them by hand.
"""
from __future__ import annotations

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import attend  # noqa: E402

from attend.apps.tour import FEATURES as _VECTORS, WORDS  # noqa: E402  (seed 002's sentence, hand-made vectors)

X = torch.tensor([_VECTORS[w] for w in WORDS])  # (animal, colour, action, function word)
FEATURES = ["animal", "colour", "action", "function"]


def _heat(ax, w, rows, cols, title=None, vmax=1.0, numbers=True, cmap="Blues"):
    """A weight matrix with its labels (rows = queries, columns = keys) and the values printed."""
    w = torch.as_tensor(w, dtype=torch.float32)
    im = ax.imshow(w.numpy(), cmap=cmap, vmin=0.0, vmax=vmax)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    if numbers and w.numel() <= 100:
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if w[i, j] > 0.6 * vmax else "black")
    if title:
        ax.set_title(title, fontsize=9)
    return im


def _save(fig, out: str, name: str) -> None:
    fig.savefig(os.path.join(out, name + ".png"), dpi=110)
    plt.close(fig)


def input_dependent_weights(out: str) -> None:
    x1 = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]])
    x2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.0), layout="constrained")
    items = ["item 0", "item 1", "item 2"]
    for ax, x, name in zip(axes, (x1, x2), ("A(x1)", "A(x2)")):
        _, a = attend.attention(x, x, x, return_weights=True)
        im = _heat(ax, a, items, items, title=name)
    fig.colorbar(im, ax=axes, shrink=0.8, label="weight")
    _save(fig, out, "input-dependent-weights")


def soft_attention(out: str) -> None:
    o, a = attend.attention(X[3:4], X, X, return_weights=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.0, 3.0), layout="constrained")
    ax1.bar(range(6), a[0].tolist(), color="tab:blue")
    ax1.set_xticks(range(6), WORDS)
    ax1.set_ylabel("weight")
    ax1.set_title('weights of the query "ate"', fontsize=9)
    bottom = torch.zeros(4)
    colours = plt.cm.tab10.colors
    for i, w in enumerate(WORDS):
        part = a[0, i] * X[i]
        ax2.bar(range(4), part.tolist(), bottom=bottom.tolist(), color=colours[i], label=f"{i}: {w}")
        bottom += part
    ax2.set_xticks(range(4), FEATURES)
    ax2.set_title("output = Σ aᵢ vᵢ (each word's share stacked)", fontsize=9)
    ax2.legend(fontsize=7, loc="upper right")
    _save(fig, out, "soft-attention")


def query_key_value(out: str) -> None:
    french = ["le", "noir", "chat", "a mangé", "la", "souris"]
    q = torch.tensor([[4.0, 0.0, 0.0, 0.0]])
    scores = (q @ X.T)[0]
    o, a = attend.attention(q, X, torch.eye(6), score="dot", return_weights=True)
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 2.8), layout="constrained")
    for ax, vals, labels, title in ((axes[0], scores, WORDS, "scores q · kᵢ"), (axes[1], a[0], WORDS, "weights (softmax)"),
                                    (axes[2], o[0], french, "output: a mix of the values")):
        ax.bar(range(6), vals.tolist(), color="tab:green" if ax is axes[2] else "tab:blue")
        ax.set_xticks(range(6), labels, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    _save(fig, out, "query-key-value")


def score_functions(out: str) -> None:
    from attend.scores import Additive, Cosine, General

    scores = {"dot": "dot", "scaled dot": "scaled_dot", "cosine τ=0.2": Cosine(temperature=0.2),
              "bilinear": General(4, 4), "additive": Additive(4, 4, 8)}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.0, 3.2), layout="constrained")
    width = 0.16
    for n, (name, score) in enumerate(scores.items()):
        _, a = attend.attention(X[3:4], X, X, score=score, return_weights=True)
        ax1.bar([i + (n - 2) * width for i in range(6)], a[0].tolist(), width, label=name)
    ax1.set_xticks(range(6), WORDS)
    ax1.set_title('weights of "ate" per score function', fontsize=9)
    ax1.legend(fontsize=7)
    g = torch.Generator().manual_seed(0)
    ds = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    top = {"dot": [], "scaled dot": []}
    for d in ds:
        q = torch.randn(500, 1, d, generator=g)
        k = torch.randn(500, 16, d, generator=g)
        top["dot"].append(attend.attention(q, k, k, score="dot", return_weights=True)[1].amax(-1).mean().item())
        top["scaled dot"].append(attend.attention(q, k, k, return_weights=True)[1].amax(-1).mean().item())
    for name, ys in top.items():
        ax2.plot(ds, ys, marker="o", label=name)
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("features d")
    ax2.set_ylabel("mean largest weight (16 keys)")
    ax2.set_ylim(0, 1.05)
    ax2.set_title("why divide by √d", fontsize=9)
    ax2.legend(fontsize=8)
    _save(fig, out, "score-functions")


def softmax(out: str) -> None:
    scores = torch.tensor([2.0, 1.0, 0.5, -1.0])
    fig, ax = plt.subplots(figsize=(6.0, 3.0), layout="constrained")
    width = 0.25
    for n, tau in enumerate((0.25, 1.0, 4.0)):
        ax.bar([i + (n - 1) * width for i in range(4)], torch.softmax(scores / tau, -1).tolist(), width, label=f"τ = {tau}")
    ax.set_xticks(range(4), [f"score {s:g}" for s in scores.tolist()])
    ax.set_ylabel("weight")
    ax.legend(fontsize=8)
    _save(fig, out, "softmax")


def hard_attention(out: str) -> None:
    ts = torch.linspace(0, 1, 101)
    soft, hard = [], []
    for t in ts.tolist():
        q = ((1 - t) * X[2] + t * X[1]).view(1, 4) * 4
        soft.append(attend.attention(q, X, X)[0, 1].item())
        hard.append(attend.attention(q, X, X, hard=True)[0, 1].item())
    fig, ax = plt.subplots(figsize=(6.0, 3.0), layout="constrained")
    ax.plot(ts.tolist(), soft, label="soft (differentiable)")
    ax.plot(ts.tolist(), hard, label="hard (a step)", drawstyle="steps-post")
    ax.set_xlabel('query: from "cat" (0) to "black" (1)')
    ax.set_ylabel("colour feature of the output")
    ax.legend(fontsize=8)
    _save(fig, out, "hard-attention")


def self_attention(out: str) -> None:
    w = 2.0 * torch.eye(4)
    _, a = attend.attention(X @ w, X @ w, X, return_weights=True)
    fig, ax = plt.subplots(figsize=(4.6, 3.8), layout="constrained")
    im = _heat(ax, a, WORDS, WORDS, title="self-attention weights (row = query)")
    fig.colorbar(im, ax=ax, shrink=0.8, label="weight")
    _save(fig, out, "self-attention")


def _minilm():
    from attend.models.bert import SentenceEncoder, minilm_path

    return SentenceEncoder.from_pretrained(minilm_path())


def multi_head(out: str) -> None:
    encoder = _minilm()
    batch, result = encoder.embed_tokens(["the black cat ate the mouse because it was hungry"], need_weights=True)
    tokens = batch.tokens[0]
    n = len(tokens)
    i = torch.arange(1, n - 1)
    special = torch.tensor([0, n - 1])
    patterns = {"previous token": lambda a: a[i, i - 1], "itself": lambda a: a[i, i],
                "next token": lambda a: a[i, i + 1], "[CLS]/[SEP]": lambda a: a[i][:, special].sum(-1)}
    fig, axes = plt.subplots(1, 4, figsize=(13.0, 3.8), layout="constrained")
    for ax, (name, pick) in zip(axes, patterns.items()):
        _, l, h = max((pick(layer[0, h]).mean().item(), l, h)
                      for l, layer in enumerate(result.attentions) for h in range(layer.shape[1]))
        im = _heat(ax, result.attentions[l][0, h], tokens, tokens, title=f"{name}: layer {l + 1} head {h + 1}", numbers=False)
    fig.colorbar(im, ax=axes, shrink=0.8, label="weight")
    _save(fig, out, "multi-head")


def bidirectional_masked_cross(out: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 3.2), layout="constrained")
    L = 5
    words = [f"x{i + 1}" for i in range(L)]
    _heat(axes[0], torch.ones(L, L), words, words, title="bidirectional (encoder)", numbers=False, cmap="Greens")
    _heat(axes[1], torch.ones(L, L).tril(), words, words, title="causal (decoder)", numbers=False, cmap="Greens")
    torch.manual_seed(0)
    x = torch.randn(5, 8)
    source = torch.randn(5, 8)
    target = torch.randn(3, 8)
    _, a = attend.attention(target, source, source, return_weights=True)
    _heat(axes[2], a, [f"y{i + 1}" for i in range(3)], [f"x{i + 1}" for i in range(5)], title="cross (decoder → encoder)")
    del x
    _save(fig, out, "bidirectional-masked-cross")


def long_range_parallel(out: str) -> None:
    torch.manual_seed(0)
    d = 16
    gru = torch.nn.GRU(d, d, batch_first=True)
    wq, wk, wv = (torch.nn.Linear(d, d) for _ in range(3))
    lengths = [2, 4, 8, 16, 32, 64, 128]
    rnn, att = [], []
    g = torch.Generator().manual_seed(0)
    with torch.enable_grad():
        for n in lengths:
            r = a = 0.0
            for _ in range(8):
                x = torch.randn(1, n, d, generator=g).requires_grad_()
                r += torch.autograd.grad(gru(x)[0][0, -1].sum(), x)[0][0, 0].norm().item() / 8
                a += torch.autograd.grad(attend.attention(wq(x), wk(x), wv(x))[0, -1].sum(), x)[0][0, 0].norm().item() / 8
            rnn.append(r)
            att.append(a)
    fig, ax = plt.subplots(figsize=(6.0, 3.2), layout="constrained")
    ax.plot(lengths, rnn, marker="o", label="GRU")
    ax.plot(lengths, att, marker="o", label="self-attention")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("distance n (sequence length)")
    ax.set_ylabel("|∂ y_n / ∂ x_1|")
    ax.legend(fontsize=8)
    _save(fig, out, "long-range-parallel")


def rnn_encoder_decoder(out: str) -> None:
    import tempfile

    from attend.apps.translate import TrainConfig, train_translator
    from attend.data import prepare, split_by_source, synthetic_pairs

    pairs = prepare(synthetic_pairs(6000, seed=0, max_words=12))
    split = split_by_source(pairs, valid=0.05, test=0.05, seed=0)
    config = TrainConfig(batch_size=32, lr=3e-3, max_steps=1500, warmup_steps=100, schedule="cosine", seed=0)
    with torch.enable_grad(), tempfile.TemporaryDirectory() as folder:
        translator, _ = train_translator(split.train, split.valid, folder, train_config=config, progress=False,
                                         model=dict(attention="general", hidden_dim=96, embed_dim=32))
    r = translator.translate(["the black cat ate the mouse ."])[0]
    fig, ax = plt.subplots(figsize=(5.2, 4.4), layout="constrained")
    im = _heat(ax, r.weights, r.tokens, r.source, title="what each French word attended to")
    fig.colorbar(im, ax=ax, shrink=0.8, label="weight")
    _save(fig, out, "rnn-encoder-decoder")


def word_sense(out: str) -> None:
    from attend.apps.wordsense import explain_word

    texts = ["I sat on the bank of the river", "I deposited money at the bank"]
    report = explain_word(_minilm(), texts, top=1)
    fig, axes = plt.subplots(1, 3, figsize=(12.0, 3.4), layout="constrained", width_ratios=[1.2, 1, 1])
    layers = [s.layer for s in report.layers]
    axes[0].plot(layers, [s.within for s in report.layers], marker="o", label="same sense")
    axes[0].plot(layers, [s.across for s in report.layers], marker="o", label="different senses")
    axes[0].set_xlabel("layer (0 = embeddings)")
    axes[0].set_ylabel('cosine of "bank" vectors')
    axes[0].legend(fontsize=8)
    head = report.heads[0]
    for k, (ax, tokens, atts) in enumerate(zip(axes[1:], report.tokens, report.attentions)):
        pos = [i for i, t in enumerate(tokens) if t == "bank"]
        row = atts[head.layer][head.head, pos].mean(0)
        ax.bar(range(len(tokens)), row.tolist(), color="tab:purple")
        ax.set_xticks(range(len(tokens)), tokens, rotation=60, ha="right", fontsize=8)
        ax.set_title(f'sentence {k + 1}, from "bank": layer {head.layer + 1} head {head.head + 1}', fontsize=9)
    _save(fig, out, "word-sense")


def attention_maps(out: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.0), layout="constrained")
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    values = torch.tensor([[2.0, 1.0], [2.0, 1.0], [2.0, 1.01]])
    outs = []
    for n, q in enumerate((torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 4.0]]))):
        o, a = attend.attention(q, keys, values, score="dot", return_weights=True)
        axes[0].bar([i + (n - 0.5) * 0.4 for i in range(3)], a[0].tolist(), 0.4, label=f"query {n + 1}")
        outs.append(o[0])
    axes[0].set_xticks(range(3), ["elem 1", "elem 2", "elem 3"])
    axes[0].set_title("two queries, different weights", fontsize=9)
    axes[0].legend(fontsize=8)
    for n, o in enumerate(outs):
        axes[1].bar([i + (n - 0.5) * 0.4 for i in range(2)], o.tolist(), 0.4, label=f"query {n + 1}")
    axes[1].set_xticks(range(2), ["output[0]", "output[1]"])
    axes[1].set_title("the same output", fontsize=9)
    axes[1].legend(fontsize=8)
    keys = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    values = torch.tensor([[0.05, 0.0], [3.0, 1.0], [0.0, 2.0]])
    _, a = attend.attention(torch.tensor([[1.0, 0.5]]), keys, values, score="dot", return_weights=True)
    c = (a[0, :, None] * values).norm(dim=-1)
    axes[2].bar([i - 0.2 for i in range(3)], a[0].tolist(), 0.4, label="weight aᵢ")
    axes[2].bar([i + 0.2 for i in range(3)], (c / c.sum()).tolist(), 0.4, label="share of ‖aᵢⱼ vⱼ‖")
    axes[2].set_xticks(range(3), ["elem 1", "elem 2", "elem 3"])
    axes[2].set_title("weights are not contributions", fontsize=9)
    axes[2].legend(fontsize=8, loc="upper center")
    axes[2].set_ylim(0, 1.15)
    _save(fig, out, "attention-maps")



FIGURES = {
    "input-dependent-weights": input_dependent_weights,
    "soft-attention": soft_attention,
    "query-key-value": query_key_value,
    "score-functions": score_functions,
    "softmax": softmax,
    "hard-attention": hard_attention,
    "self-attention": self_attention,
    "multi-head": multi_head,
    "bidirectional-masked-cross": bidirectional_masked_cross,
    "long-range-parallel": long_range_parallel,
    "rnn-encoder-decoder": rnn_encoder_decoder,
    "word-sense": word_sense,
    "attention-maps": attention_maps,
}


def draw_all(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    with torch.no_grad():
        for name, draw in FIGURES.items():
            torch.manual_seed(0)
            draw(out)


if __name__ == "__main__":
    draw_all(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "_generated"))
