"""The small CPU benchmark scripts refuse bad arguments by name before they measure anything."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.mark.parametrize("script,args,needle", [
    ("flex_blocks.py", ["--reps", "0"], "--reps must be at least 1, got 0"),
    ("flex_blocks.py", ["--shapes", "1x8x2048"], "--shapes: '1x8x2048' is not BxHxLxE"),
    ("page_faults.py", ["--reps", "-1"], "--reps must be at least 1, got -1"),
    ("page_faults.py", ["--shape", "big"], "--shape: 'big' is not BxHxLxE"),
    ("page_faults.py", ["--rep", "3"], "unrecognized arguments: --rep"),  # no abbreviations
    ("flex_blocks.py", ["--threads", "0"], "--threads must be at least 1, got 0"),
    ("page_faults.py", ["--threads", "0"], "--threads must be at least 1, got 0"),
])
def test_bad_arguments_are_refused_by_name(script, args, needle, tmp_path):
    out = tmp_path / "never.md"
    done = subprocess.run([sys.executable, os.path.join(BENCH, script), *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=BENCH)
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr
    assert not out.exists() and not out.with_suffix(".json").exists()
