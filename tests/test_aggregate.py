"""attend.viz.aggregate: attention across heads and layers, against float64 references
written here (rollout, flow), and its refusals."""
from __future__ import annotations

import pytest
import torch

from attend.viz import aggregate as agg


def _attentions(layers, heads, n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(layers, heads, n, n, generator=g) * 2).softmax(-1).to(dtype)


def _rollout_reference(att):
    """Abnar & Zuidema (2020), written out: per layer the head mean, plus the identity, rows
    renormalised; then the product of the layers, the last on the left."""
    att = att.double()
    L, H, n, _ = att.shape
    result = None
    for l in range(L):
        a = [[sum(float(att[l, h, i, j]) for h in range(H)) / H for j in range(n)] for i in range(n)]
        a = [[0.5 * a[i][j] + (0.5 if i == j else 0.0) for j in range(n)] for i in range(n)]
        a = [[x / sum(row) for x in row] for row in a]
        if result is None:
            result = a
        else:
            result = [[sum(a[i][k] * result[k][j] for k in range(n)) for j in range(n)] for i in range(n)]
    return torch.tensor(result, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(1, 1, 3), (6, 12, 9), (3, 2, 17)])
def test_rollout_equals_the_float64_reference(shape):
    att = _attentions(*shape)
    got = agg.rollout(att)
    ref = _rollout_reference(att)
    assert got.dtype == torch.float64
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)
    assert torch.allclose(got.sum(-1), torch.ones(shape[2], dtype=torch.float64), atol=1e-12)
    per_layer = agg.rollout(list(att), per_layer=True)  # a list of layers works the same
    assert per_layer.shape == (shape[0], shape[2], shape[2]) and torch.allclose(per_layer[-1], ref, atol=1e-12)
    assert torch.allclose(per_layer[0], _rollout_reference(att[:1]), atol=1e-12)


def test_rollout_without_residual_is_the_plain_product():
    att = _attentions(3, 4, 5)
    a = att.double().mean(1)
    assert torch.allclose(agg.rollout(att, residual=False), a[2] @ a[1] @ a[0], atol=1e-12)


def test_mean_and_max_over_heads_and_layers():
    att = _attentions(2, 3, 4)
    assert torch.allclose(agg.mean(att), att.double().mean((0, 1)), atol=1e-12)
    assert torch.equal(agg.maximum(att), att.double().amax((0, 1)))
    assert agg.heads_mean(att).shape == (2, 4, 4) and torch.equal(agg.heads_max(att), att.double().amax(1))


def _mixed(att):
    a = 0.5 * att.double().mean(1) + 0.5 * torch.eye(att.shape[-1], dtype=torch.float64)
    return a / a.sum(-1, keepdim=True)


def test_flow_equals_references_for_one_and_two_layers():
    one = _attentions(1, 2, 5)
    assert torch.allclose(agg.flow(one), _mixed(one)[0], atol=1e-9)  # one edge per pair: its capacity
    two = _attentions(2, 3, 5, seed=1)
    a = _mixed(two)
    # two layers: paths j -> k -> i are disjoint, each carries min(a1[k, j], a2[i, k])
    ref = torch.tensor([[sum(min(float(a[0, k, j]), float(a[1, i, k])) for k in range(5)) for j in range(5)]
                        for i in range(5)], dtype=torch.float64)
    assert torch.allclose(agg.flow(two, normalize=False), ref, atol=1e-9)
    # by default each output's row is divided by its sum (as Abnar & Zuidema's code does)
    assert torch.allclose(agg.flow(two), ref / ref.sum(-1, keepdim=True), atol=1e-9)


def test_refusals_name_the_argument():
    with pytest.raises(ValueError, match="max_tokens=20"):
        agg.flow(_attentions(1, 1, 21))
    with pytest.raises(ValueError, match="max_tokens must be a positive int"):
        agg.flow(_attentions(1, 1, 3), max_tokens=0)
    bad = _attentions(1, 1, 3)
    bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinity"):
        agg.rollout(bad)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        agg.rollout(_attentions(1, 1, 3) * 3)
    with pytest.raises(TypeError, match="attentions: expected a tensor"):
        agg.rollout("weights")
    with pytest.raises(ValueError, match=r"attentions\[1\]"):
        agg.rollout([torch.ones(1, 2, 2) / 2, torch.ones(1, 3, 3) / 3])
    with pytest.raises(ValueError, match=r"attentions\[0\]: expected a layer's \(heads, n, n\) weights, got shape "
                                         r"\(2, 3, 4, 4\)$"):  # (before: "like layer 0 (2, 3, 4, 4)", itself)
        agg.mean([torch.ones(2, 3, 4, 4) / 4])
