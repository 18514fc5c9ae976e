"""One rank of the data-parallel training check (launched by tests/test_ddp.py through torchrun's
environment variables, gloo). Trains a small translator for 20 steps with DDP over the ranks,
and, in the same process, one process alone on the combined batches (gradient accumulation
over as many batches as there are ranks); writes the largest differences as JSON."""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from attend.apps.translate import TrainConfig, Trainer  # noqa: E402
from attend.distributed.ranks import Ranks, init_from_env  # noqa: E402
from attend.models import Seq2Seq, Seq2SeqConfig  # noqa: E402


def train(out, ranks, accumulate, kind, stop_at=None, resume=False):
    torch.manual_seed(0)
    if kind == "rnn":
        model = Seq2Seq(Seq2SeqConfig(src_vocab=20, tgt_vocab=20, embed_dim=8, hidden_dim=12, dropout=0.0))
    else:
        from attend.models.transformer import TransformerConfig, TransformerSeq2Seq

        model = TransformerSeq2Seq(TransformerConfig(src_vocab=20, tgt_vocab=20, d_model=16, heads=2,
                                                            encoder_layers=1, decoder_layers=1, ff_dim=32,
                                                            dropout=0.0))
    g = torch.Generator().manual_seed(5)
    pairs = []
    for _ in range(90):  # 90 pairs in batches of 4: 23 per epoch, so the last step of an epoch is uneven
        n, m = int(torch.randint(1, 7, (1,), generator=g)), int(torch.randint(1, 7, (1,), generator=g))
        pairs.append((torch.randint(4, 20, (n,), generator=g).tolist(), torch.randint(4, 20, (m,), generator=g).tolist()))
    cfg = TrainConfig(epochs=3, batch_size=4, lr=3e-3, warmup_steps=3, max_steps=20, eval_every=0, patience=0)
    trainer = Trainer(model, cfg, pairs, pairs[:8], out, progress=False, ranks=ranks, accumulate=accumulate)
    on_step = (lambda t: t.request_stop() if t.state.step == stop_at and t.ranks.rank == t.ranks.world - 1 else None)
    hist = trainer.fit(resume=resume, on_step=on_step if stop_at else None)
    return model, trainer.state, hist


def main():
    out_dir, kind = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    ranks = init_from_env(timeout_s=60)
    assert ranks is not None and ranks.world > 1
    if kind == "resume":
        return resume_elsewhere(out_dir, ranks)
    model, state, _ = train(os.path.join(out_dir, "ddp"), ranks, 1, kind)
    alone, alone_state, _ = train(os.path.join(out_dir, f"alone{ranks.rank}"), Ranks(), ranks.world, kind)
    res = {
        "rank": ranks.rank,
        "steps": state.step, "alone_steps": alone_state.step,
        "epoch": state.epoch, "position": state.position, "alone_epoch": alone_state.epoch,
        "alone_position": alone_state.position,
        "max_param_diff": max((a - b).abs().max().item() for a, b in zip(model.parameters(), alone.parameters())),
        "max_param": max(p.abs().max().item() for p in alone.parameters()),
        "max_loss_diff": max(abs(x - y) for x, y in zip(state.losses, alone_state.losses)),
        "losses": len(state.losses),
    }
    with open(os.path.join(out_dir, f"result{ranks.rank}.json"), "w") as f:
        json.dump(res, f)
    import torch.distributed as dist

    dist.destroy_process_group()


def resume_elsewhere(out_dir, ranks):
    """Stop a DDP run at step 7 (a stop asked on the last rank only: every rank stops there),
    then resume it in one process to step 20."""
    import torch.distributed as dist

    from attend.apps.translate import TrainingInterrupted

    out = os.path.join(out_dir, "run")
    try:
        train(out, ranks, 1, "rnn", stop_at=7)
        raise AssertionError("the stop was not taken")
    except TrainingInterrupted:
        pass
    dist.barrier()
    dist.destroy_process_group()
    if ranks.rank != 0:
        return
    _, state, hist = train(out, Ranks(), 1, "rnn", resume=True)
    with open(os.path.join(out_dir, "resumed.json"), "w") as f:
        json.dump({"step": state.step, "epoch": state.epoch, "position": state.position,
                   "losses": len(state.losses), "last_eval": hist[-1]["step"]}, f)


if __name__ == "__main__":
    main()
