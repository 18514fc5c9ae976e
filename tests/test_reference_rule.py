"""The test helpers the GPU lease uses: the tolerance rule as a number (``reference.rule_ratio``,
in benchmarks/gpu.py's report) says what ``reference.check`` says, <= 1 exactly where check
passes; and the fixed triton blocks of ``ATTEND_TEST_TRITON_BLOCKS``."""
from __future__ import annotations

import math

import pytest
import torch

import reference as R


def _cases():
    torch.manual_seed(0)
    ref = torch.randn(64, dtype=torch.float64)
    base = ref + 1e-3 * torch.randn(64, dtype=torch.float64)  # the baseline's error: ~1e-3
    yield "close", ref + 1e-4 * torch.randn(64, dtype=torch.float64), base, ref
    yield "5x the baseline", ref + 5 * (base - ref), base, ref
    yield "1.5x the baseline, over the absolute cap", ref + 1.5 * (base - ref), base, ref
    broken = ref + 10.0  # a broken baseline: only the absolute cap catches the result
    yield "broken baseline", ref + 9.0, broken, ref


@pytest.mark.parametrize("case", range(4))
def test_rule_ratio_agrees_with_check(case):
    name, x, base, ref = list(_cases())[case]
    ratio = R.rule_ratio(x.float(), base.float(), ref, dtype=torch.float32, m=2)
    try:
        R.check(x.float(), base.float(), ref, dtype=torch.float32, m=2, what=name)
        passed = True
    except AssertionError:
        passed = False
    assert (ratio <= 1.0) == passed, (name, ratio)


def test_rule_ratio_is_infinite_for_nan():
    ref = torch.randn(8, dtype=torch.float64)
    x = ref.float().clone()
    x[3] = math.nan
    assert R.rule_ratio(x, ref.float(), ref, dtype=torch.float32, m=2) == math.inf


def test_fixed_triton_blocks_for_a_gpu_run_are_read_and_checked(monkeypatch):
    """``ATTEND_TEST_TRITON_BLOCKS`` (benchmarks/gpu_lease.sh) fixes the grid's triton blocks on a
    GPU; a malformed value is refused, naming the variable."""
    import cases

    monkeypatch.setenv("ATTEND_TEST_TRITON_BLOCKS", "64x32")
    assert cases._triton_blocks() == {"block_m": 64, "block_n": 32}
    monkeypatch.delenv("ATTEND_TEST_TRITON_BLOCKS")
    assert cases._triton_blocks() == {}
    monkeypatch.setenv("ATTEND_TEST_TRITON_BLOCKS", "64")
    with pytest.raises(ValueError, match="ATTEND_TEST_TRITON_BLOCKS must be like 64x32, got '64'"):
        cases._triton_blocks()
