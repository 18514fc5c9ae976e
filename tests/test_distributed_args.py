"""Bad arguments to attend.distributed and data-parallel training, refused by message, in one
process (a group of one where a group is needed)."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist

import attend
import attend.distributed as D
from attend.distributed.ranks import init_from_env

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")


@pytest.fixture
def group_of_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _qkv(**kw):
    return [torch.randn(1, 2, 6, 8, **kw) for _ in range(3)]


def test_without_a_process_group_the_error_says_how_to_start_one():
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised: call "
                                           "torch.distributed.init_process_group first"):
        D.ring_attention(*_qkv())


def test_ring_refusals_name_the_argument(group_of_one):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="score: ring attention runs dot-like scores"):
        D.ring_attention(q, k, v, score=attend.scores.Additive(8, 8, 4))
    with pytest.raises(ValueError, match="backend must be one of \\['auto', 'eager', 'inductor', 'sdpa', 'triton'\\]"):
        D.ring_attention(q, k, v, backend="flex")
    with pytest.raises(attend.backends.UnsupportedCall, match="backend 'triton' cannot run this call's blocks: dtype "
                                                               "torch.float64"):
        D.ring_attention(q.double(), k.double(), v.double(), backend="triton")
    w = torch.ones(1, requires_grad=True)
    qg = q.clone().requires_grad_()
    with pytest.raises(ValueError, match="score_mod: a function of your own holding a tensor that requires grad"):
        D.ring_attention(qg, k, v, score_mod=lambda s, b, h, i, j: s * w)
    with pytest.raises(TypeError, match="return_weights must be a bool"):
        D.ring_attention(q, k, v, return_weights=1)
    with pytest.raises(TypeError, match="ulysses_attention\\(\\) got unexpected keyword arguments \\['bogus'\\]"):
        D.ulysses_attention(q, k, v, bogus=1)


def test_a_group_of_one_is_plain_attention(group_of_one):
    q, k, v = (t.double().requires_grad_() for t in _qkv())
    kw = dict(causal=True, score_mod=attend.mods.alibi(2))
    out = D.ring_attention(q, k, v, **kw)
    g = torch.autograd.grad(out.sum(), (q, k, v))
    ref = attend.attention(q, k, v, backend="eager", **kw)
    want = torch.autograd.grad(ref.sum(), (q, k, v))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for a, b in zip(g, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_sequence_parallel_settings_and_module_refusals():
    with pytest.raises(ValueError, match="method must be one of \\['ring', 'ulysses'\\], got 'tree'"):
        D.SequenceParallel(method="tree")
    with pytest.raises(ValueError, match="layout must be one of \\['contiguous', 'zigzag'\\], got 'spiral'"):
        D.SequenceParallel(layout="spiral")
    x = torch.randn(1, 6, 8)
    mha = attend.nn.MultiHeadAttention(8, 2, dropout=0.1, sequence_parallel=D.SequenceParallel())
    with pytest.raises(ValueError, match="dropout: attention dropout is not applied under sequence_parallel"):
        mha(x)
    mha.eval()
    with pytest.raises(ValueError, match="cache: a key/value cache is not kept under sequence_parallel"):
        mha(x, cache=attend.nn.LayerKV())
    with pytest.raises(TypeError, match="mask: a dense mask cannot be split over ranks"):
        mha(x, mask=torch.ones(6, 6, dtype=torch.bool))
    sinks = attend.nn.MultiHeadAttention(8, 2, sinks=True, sequence_parallel=D.SequenceParallel(method="ring"))
    with pytest.raises(ValueError, match="sinks: ring attention has no sinks; use SequenceParallel\\(method='ulysses'\\)"):
        sinks(x)


def test_training_settings_refused_by_message(monkeypatch, tmp_path):
    from attend.apps.translate import TrainConfig, Trainer
    from attend.models import Seq2Seq, Seq2SeqConfig

    model = Seq2Seq(Seq2SeqConfig(src_vocab=9, tgt_vocab=9, embed_dim=4, hidden_dim=6))
    pairs = [([4, 5], [6, 7])] * 4
    with pytest.raises(ValueError, match="accumulate must be a positive int \\(batches per rank per step\\), got 0"):
        Trainer(model, TrainConfig(epochs=1, batch_size=2), pairs, pairs, tmp_path, accumulate=0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2 but RANK is not set: launch with torchrun"):
        init_from_env()


def test_the_schedule_counts_blocks_in_closed_form_as_the_rules_do():
    """The order of pieces counts each piece's allowed query blocks; for plain causal it does so
    by bisection: the same counts as checking the rule block by block (both layouts, L != S,
    3-4 ranks, ragged pieces)."""
    from attend._rule_prep import bind
    from attend._rules import Causal
    from attend.distributed.layout import spans
    from attend.distributed.ring import _Ring

    q = torch.zeros(1, 1, 1, 4)
    call = attend.functional._prepare(q, q, q)[0]
    checked = 0
    for Lg, Sg, W, piece, layout in [(37, 37, 2, 5, "zigzag"), (41, 29, 3, 4, "contiguous"),
                                     (29, 45, 2, 3, "zigzag"), (100, 100, 4, 7, "zigzag")]:
        qs = [spans(Lg, r, W, layout) for r in range(W)]
        ks = [spans(Sg, r, W, layout) for r in range(W)]
        ring = _Ring(None, 0, W, call, qs, ks, Lg, Sg, bind(Causal(), Lg, Sg), None, "auto", [], piece)
        for x in range(W):
            rows = ring.rows_of(x)
            fast = ring._counter(rows)
            for owner in range(W):
                for _, gk, nk in ring._cut(ks[owner]):
                    assert fast(gk, nk) == sum(ring._allowed(gq, nq, gk, nk) for _, gq, nq in rows)
                    checked += 1
    assert checked > 100


def test_arguments_are_described_the_same_in_every_process():
    """What the ranks compare: no address, no device (under NCCL each rank's tensors are on its own GPU)."""
    from dataclasses import dataclass

    from attend.distributed._agree import _describe

    @dataclass(frozen=True)
    class Mine:
        table: torch.Tensor

    here, there = Mine(torch.zeros(2)), Mine(torch.zeros(2, device="meta"))
    assert _describe(here).replace("tensor([0., 0.])", "T") == _describe(there).replace("tensor(..., size=(2,))", "T")
    assert _describe(object()) == _describe(object())  # ("<object object at 0x...>" without its address)
    assert _describe(attend.masks.padding(torch.tensor([3, 4]))) != _describe(attend.masks.padding(torch.tensor([3, 5])))
    assert _describe(lambda b, h, i, j: i >= j).endswith("<lambda>")
