"""Sequence-parallel attention on N processes; run it with

    torchrun --standalone --nproc-per-node 2 examples/sequence_parallel.py

Every process builds the same long sequence (a real program would load only its part),
keeps its own positions, and computes attention over the whole sequence with the others:
ring attention (any head count) and all-to-all attention (heads divisible by N), then a
small transformer encoder trained with its sequence split. Each checks itself against one
process computing everything, and rank 0 prints the differences.
"""
import torch
import torch.distributed as dist

import attend
import attend.distributed as D
from attend.nn import Encoder

dist.init_process_group("gloo")  # "nccl" on GPUs
rank = dist.get_rank()
torch.manual_seed(0)  # the same tensors on every rank
q, k, v = (torch.randn(1, 4, 1000, 32, dtype=torch.float64) for _ in range(3))
ids = torch.arange(1000) // 300  # four packed documents
kw = dict(causal=True, mask=attend.masks.document(ids), score_mod=attend.mods.alibi(4))

# ring attention: this rank's positions (zigzag: an early and a late span, so causal work is even)
mine = [D.shard(t, layout="zigzag").requires_grad_() for t in (q, k, v)]
out = D.ring_attention(*mine, layout="zigzag", **kw)
out.sum().backward()
whole = [t.clone().requires_grad_() for t in (q, k, v)]
ref = attend.attention(*whole, **kw)
ref.sum().backward()
err = max((out - D.shard(ref, layout="zigzag")).abs().max().item(),
          (mine[1].grad - D.shard(whole[1].grad, layout="zigzag")).abs().max().item())

# all-to-all attention: the same call, heads split instead of keys passed around
out2 = D.ulysses_attention(*(D.shard(t, layout="zigzag") for t in (q, k, v)), layout="zigzag", **kw)
err2 = (out2 - D.shard(ref, layout="zigzag")).abs().max().item()

# a transformer encoder with its sequence split over the ranks
enc = Encoder(num_layers=2, d_model=32, num_heads=4, dropout=0.0).double()
single = Encoder(num_layers=2, d_model=32, num_heads=4, dropout=0.0).double()
single.load_state_dict(enc.state_dict())
sp = D.SequenceParallel(method="ring", layout="zigzag")
enc.set_sequence_parallel(sp)
x = torch.randn(2, 1000, 32, dtype=torch.float64)
enc(sp.shard(x)).hidden.sum().backward()
D.all_reduce_grads(enc.parameters())  # each rank holds its rows' share: sum them
single(x).hidden.sum().backward()
err3 = max((a.grad - b.grad).abs().max().item() for a, b in zip(enc.parameters(), single.parameters()))

if rank == 0:
    print(f"ring: max difference from one process {err:.1e}")
    print(f"all-to-all: {err2:.1e}")
    print(f"encoder gradients: {err3:.1e}")
dist.destroy_process_group()
