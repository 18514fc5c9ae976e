"""The small CPU benchmark scripts refuse bad arguments by name before they measure anything."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import types

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


BAD = [  # (script, arguments, what its error says)
    ("flex_blocks.py", ["--reps", "0"], "--reps must be at least 1, got 0"),
    ("flex_blocks.py", ["--shapes", "1x8x2048"], "--shapes: '1x8x2048' is not BxHxLxE"),
    ("page_faults.py", ["--reps", "-1"], "--reps must be at least 1, got -1"),
    ("page_faults.py", ["--shape", "big"], "--shape: 'big' is not BxHxLxE"),
    ("page_faults.py", ["--rep", "3"], "unrecognized arguments: --rep"),  # no abbreviations
    ("flex_blocks.py", ["--threads", "0"], "--threads must be at least 1, got 0"),
    ("page_faults.py", ["--threads", "0"], "--threads must be at least 1, got 0"),
    ("distance_bias.py", ["--reps", "0"], "--reps must be at least 1, got 0"),
    ("distance_bias.py", ["--shapes", "1x8x2048x64,1x8"], "--shapes: '1x8' is not BxHxLxE"),
    ("full_chunks.py", ["--reps", "0"], "--reps must be at least 1, got 0"),
    ("full_chunks.py", ["--shapes", "2048"], "--shapes: '2048' is not BxHxLxE"),
    ("softcap_parts.py", ["--reps", "0"], "--reps must be at least 1, got 0"),
    ("softcap_parts.py", ["--shapes", "1x8x2048x64x2"], "--shapes: '1x8x2048x64x2' is not BxHxLxE"),
    ("bounds.py", ["--reps", "0"], "--reps must be at least 1, got 0"),
    ("bounds.py", ["--threads", "-2"], "--threads must be at least 1, got -2"),
    ("bounds.py", ["--shapes", "1x8x512x64"], "unrecognized arguments: --shapes"),  # its shapes are the issue's
]


@functools.lru_cache(maxsize=None)
def _main_of(script: str):
    """The script's ``main``, imported once in this process (a new Python process per case costs
    ~2 s of importing torch; the first case runs as a real process below)."""
    import importlib.util

    sys.path.insert(0, BENCH)
    try:
        spec = importlib.util.spec_from_file_location(f"_bench_{script[:-3]}", os.path.join(BENCH, script))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(BENCH)
    return mod.main


def test_bad_arguments_are_refused_by_name(monkeypatch, capsys, tmp_path):
    out = tmp_path / "never.md"
    script, args, needle = BAD[0]  # as a user runs it: its own process, exit status 2
    done = subprocess.run([sys.executable, os.path.join(BENCH, script), *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=BENCH)
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr
    for script, args, needle in BAD:
        monkeypatch.setattr(sys, "argv", [script, *args, "--out", str(out)])
        with pytest.raises(SystemExit) as exit_:
            _main_of(script)()
        assert exit_.value.code == 2, (script, args)
        assert needle in capsys.readouterr().err, (script, args)
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_a_compiled_cell_too_slow_to_repeat_reports_its_warm_call(monkeypatch):
    """``cpu.py``'s ``measure``: where the first call compiled and the second still takes over the
    budget, the cell is that warm call, and the first (compile included) stays in ``first_ms``.
    (It reported the first call before: the additive 4096 forward+backward read ~48.6x, a compile.)"""
    sys.path.insert(0, BENCH)
    try:
        import cpu
    finally:
        sys.path.remove(BENCH)
    clock = iter([0.0, 9.0,  # the first call: 9 s, a compile
                  10.0, 14.0])  # the second: 4 s, over the 3 s budget
    monkeypatch.setattr(cpu, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setattr(cpu, "compiled_since", lambda t0: True)
    monkeypatch.setattr(cpu, "_reset_peak", lambda: None)
    import torch
    cell = cpu.measure(lambda: torch.zeros(2), False, [], reps=5, budget=3.0)
    assert (cell["runs"], cell["ms"], cell["first_ms"], cell["warm_ms"]) == (1, 4000.0, 9000.0, 4000.0)
    clock = iter([0.0, 9.0, 10.0, 11.0] + [float(t) for t in range(20, 40)])  # a 1 s warm call: then 5 timed ones
    monkeypatch.setattr(cpu, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    cell = cpu.measure(lambda: torch.zeros(2), False, [], reps=5, budget=3.0)
    assert (cell["runs"], cell["ms"], cell["first_ms"], cell["warm_ms"]) == (5, 1000.0, 9000.0, 1000.0)
    clock = iter([0.0, 4.0])  # nothing compiled: a slow first call is the cell, and its warm call
    monkeypatch.setattr(cpu, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setattr(cpu, "compiled_since", lambda t0: False)
    cell = cpu.measure(lambda: torch.zeros(2), False, [], reps=5, budget=3.0)
    assert (cell["runs"], cell["ms"], cell["first_ms"], cell["warm_ms"]) == (1, 4000.0, 4000.0, 4000.0)


def test_a_result_off_the_float64_reference_writes_nothing():
    """The small benchmarks' check: a difference over the tolerance, or NaN, exits naming the cell."""
    import torch

    sys.path.insert(0, BENCH)
    try:
        from _machine import checked_against
    finally:
        sys.path.remove(BENCH)
    ref = (torch.zeros(3, dtype=torch.float64),)
    assert checked_against(ref, (torch.full((3,), 1e-6),), 1e-4, "cell") == pytest.approx(1e-6)
    for bad in (torch.full((3,), 1e-3), torch.tensor([0.0, float("nan"), 0.0])):
        with pytest.raises(SystemExit, match=r"cell: differs from eager float64 by .* \(more than 1e-04\); no results"):
            checked_against(ref, (bad,), 1e-4, "cell")
