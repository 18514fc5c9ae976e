"""The attend command: demo output, usage errors (exit 2), runtime errors (exit 1)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from attend import cli


def test_tour_shows_variants_and_backends(capsys):
    assert cli.main(["tour"]) == 0
    out = capsys.readouterr().out
    for text in ["What does 'ate' attend to?", "cosine", "additive", "hard", "causal (decoder, GPT)",
                 "1 1 1 0", "Multi-head", "auto picks", "chunked"]:
        assert text in out, text
    # the hard row is one-hot, computed, not typed in
    hard = next(line for line in out.splitlines() if line.startswith("hard"))
    assert sorted(float(x) for x in hard.split()[-6:]) == [0.0] * 5 + [1.0]


def test_usage_errors_exit_2_with_one_line():
    for argv in (["demo", "--bogus"], ["nope"], [], ["translate"], ["translate", "train"], ["translate", "x"]):
        r = subprocess.run([sys.executable, "-m", "attend.cli", *argv], capture_output=True, text=True)
        assert r.returncode == 2, (argv, r.stderr)
        assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "attend.cli", "demo", "--bogus"], capture_output=True, text=True)
    assert r.stderr.strip().splitlines() == ["attend: error: unrecognized arguments: --bogus"]


def test_runtime_error_exit_1_without_traceback(monkeypatch, capsys, tmp_path):
    from attend import demo

    def boom(out, **kw):
        raise RuntimeError("the demo broke")

    monkeypatch.setattr(demo, "run", boom)
    assert cli.main(["demo", "--out", str(tmp_path / "a")]) == 1
    assert capsys.readouterr().err == "attend: error: the demo broke\n"
    with pytest.raises(RuntimeError, match="the demo broke"):
        cli.main(["--debug", "demo", "--out", str(tmp_path / "b")])


def test_ctrl_c_exits_130(monkeypatch, capsys, tmp_path):
    from attend import demo

    def interrupted(out, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run", interrupted)
    assert cli.main(["demo", "--out", str(tmp_path)]) == 130
