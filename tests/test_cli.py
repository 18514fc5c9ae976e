"""The attend command: demo output, usage errors (exit 2), runtime errors (exit 1)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import attend
from attend import cli
from cases import cli_status


def test_tour_shows_variants_and_backends(capsys):
    assert cli.main(["tour"]) == 0
    out = capsys.readouterr().out
    for text in ["What does 'ate' attend to?", "cosine", "additive", "hard", "causal (decoder, GPT)",
                 "1 1 1 0", "Multi-head", "auto picks", "chunked"]:
        assert text in out, text
    # the hard row is one-hot, computed, not typed in
    hard = next(line for line in out.splitlines() if line.startswith("hard"))
    assert sorted(float(x) for x in hard.split()[-6:]) == [0.0] * 5 + [1.0]


def test_usage_errors_exit_2_with_one_line(capsys):
    for argv in (["nope"], [], ["translate"], ["translate", "train"], ["translate", "x"]):  # in this process
        code, warned = cli_status(argv)
        assert code == 2, argv
        err = capsys.readouterr().err + warned
        assert "Traceback" not in err and ("error:" in err or "usage: attend" in err), (argv, err)
    code, _ = cli_status(["translate"])  # (before: the top-level help, which lists neither train nor eval)
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == ('attend: error: attend translate needs a sentence (attend translate "the cat ." '
                                         "--checkpoint RUN) or a verb: train, eval (attend translate train --help)")
    r = subprocess.run([sys.executable, "-m", "attend.cli", "demo", "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr  # and as a user runs it: its own process
    assert r.stderr.strip().splitlines() == ["attend: error: unrecognized arguments: --bogus"]


def test_runtime_error_exit_1_without_traceback(monkeypatch, capsys, tmp_path):
    from attend.apps import demo

    def boom(out, **kw):
        raise RuntimeError("the demo broke")

    monkeypatch.setattr(demo, "run", boom)
    assert cli.main(["demo", "--out", str(tmp_path / "a")]) == 1
    assert capsys.readouterr().err == "attend: error: the demo broke\n"
    with pytest.raises(RuntimeError, match="the demo broke"):
        cli.main(["--debug", "demo", "--out", str(tmp_path / "b")])


def test_ctrl_c_exits_130(monkeypatch, capsys, tmp_path):
    from attend.apps import demo

    def interrupted(out, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run", interrupted)
    assert cli.main(["demo", "--out", str(tmp_path)]) == 130


def test_an_interrupted_training_in_the_demo_exits_130(monkeypatch, capsys, tmp_path):
    import signal

    from attend.apps import demo
    from attend.apps.translate import TrainingInterrupted

    def interrupted(out, **kw):  # what the trainer raises after saving, on Ctrl-C
        raise TrainingInterrupted(signal.SIGINT, str(tmp_path / "attention"))

    monkeypatch.setattr(demo, "run", interrupted)
    assert cli.main(["demo", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"attend: training interrupted (signal 2); state saved in {tmp_path / 'attention'}"]


def test_a_busy_run_folder_is_a_usage_error(monkeypatch, capsys, tmp_path):
    from attend.apps import demo
    from attend.apps.translate import RunFolderBusy

    def busy(out, **kw):
        raise RunFolderBusy("run folder x is in use by another training")

    monkeypatch.setattr(demo, "run", busy)
    assert cli.main(["demo", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "attend: error: run folder x is in use by another training\n"


def test_debug_is_accepted_after_the_subcommand(monkeypatch, tmp_path):
    from attend.apps import demo

    def boom(out, **kw):
        raise RuntimeError("the demo broke")

    monkeypatch.setattr(demo, "run", boom)
    for argv in (["demo", "--out", str(tmp_path / "a"), "--debug"], ["demo", "--debug", "--out", str(tmp_path / "b")]):
        with pytest.raises(RuntimeError, match="the demo broke"):
            cli.main(argv)
    assert cli.main(["demo", "--out", str(tmp_path / "c")]) == 1
    # `attend translate --debug "a sentence"` is still the text verb
    assert cli._rewrite(["translate", "--debug", "hello", "--checkpoint", "x"]) == \
        ["translate", "text", "--debug", "hello", "--checkpoint", "x"]
    assert cli._rewrite(["translate", "--debug", "train"]) == ["translate", "--debug", "train"]


@pytest.fixture
def fake_checkpoint(tmp_path):
    """A folder that passes the usage checks (the runtime load is never reached)."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def test_flags_that_do_not_apply_are_refused_naming_them(tmp_path, fake_checkpoint, capsys):
    data = tmp_path / "d.tsv"
    data.write_text("a b\tc d\n" * 10)
    out = str(tmp_path / "out")
    ck = str(fake_checkpoint)
    cases = [
        (["translate", "train", "--synthetic", "50", "--out", out, "--model", "transformer", "--attention", "additive"],
         "--attention applies to --model rnn, not --model transformer"),
        (["translate", "train", "--synthetic", "50", "--out", out, "--model", "transformer", "--rnn", "lstm"],
         "--rnn applies to --model rnn"),
        (["translate", "train", "--synthetic", "50", "--out", out, "--model", "transformer", "--embed", "8"],
         "--embed applies to --model rnn"),
        (["translate", "train", "--synthetic", "50", "--out", out, "--model", "transformer", "--unidirectional"],
         "--unidirectional applies to --model rnn"),
        (["translate", "train", "--synthetic", "50", "--out", out, "--heads", "2"],
         "--heads applies to --model transformer, not --model rnn"),
        (["translate", "train", "--synthetic", "50", "--out", out, "--ff", "64"], "--ff applies to --model transformer"),
        (["translate", "train", "--synthetic", "50", "--out", out, "--positional", "rope"],
         "--positional applies to --model transformer"),
        (["translate", "train", "--synthetic", "50", "--out", out, "--src-col", "1"], "--src-col applies to --data"),
        (["translate", "train", "--synthetic", "50", "--out", out, "--limit", "5"], "--limit applies to --data"),
        (["translate", "train", "--data", str(data), "--out", out, "--src-col", "1", "--tgt-col", "1"],
         "--src-col and --tgt-col must differ, both are 1"),
        (["translate", "train", "--data", str(data), "--out", out, "--src-col", "1"],
         "--src-col and --tgt-col must differ, both are 1"),
        (["translate", "train", "--data", str(data), "--out", out, "--resume", "--force"],
         "--resume continues the run in --out and --force starts a new one"),
        (["translate", "eval", "--checkpoint", ck, "--data", str(data), "--src-col", "1", "--tgt-col", "1"],
         "--src-col and --tgt-col must differ"),
        (["translate", "eval", "--checkpoint", ck, "--data", str(data), "--force"], "--force applies to --plot"),
        (["translate", "eval", "--checkpoint", ck, "--data", str(data), "--plot", str(tmp_path / "p.bmp")],
         f"--plot {tmp_path / 'p.bmp'}: '.bmp' is not a figure format; use one of .png, .pdf, .svg"),
        (["translate", "hello", "--checkpoint", ck, "--force"], "--force applies to --heatmap"),
        (["translate", "hello", "--checkpoint", ck, "--heatmap", str(tmp_path / "h.bin")], "'.bin' is not a figure format"),
        (["translate", "hello", "--checkpoint", ck, "--heatmap", str(tmp_path / "h")],
         f"--heatmap {tmp_path / 'h'}: no file extension; use one of .png, .pdf, .svg"),
        (["translate", "", "--checkpoint", ck], "TEXT must not be empty"),
        (["translate", " \t ", "--checkpoint", ck], "TEXT must not be empty"),
        (["explain", "a bank", "--html", str(tmp_path / "v.png")],
         f"--html {tmp_path / 'v.png'}: '.png' is not .html or .htm (the viewer is an HTML page)"),
        (["word-sense", "a bank", "--html", str(tmp_path / "v")], "no file extension: it must be .html or .htm"),
        (["translate", "hello", "--checkpoint", ck, "--heatmap", str(tmp_path)], f"--heatmap {tmp_path} is a folder"),
        (["translate", "hello", "--checkpoint", str(data)], f"--checkpoint is a file, not a run folder: {data}"),
        (["translate", "eval", "--checkpoint", str(data), "--data", str(data)], "--checkpoint is a file, not a run folder"),
        (["translate", "the \udcff cat .", "--checkpoint", ck, "--heatmap", str(tmp_path / "h.png")],
         "TEXT is not valid UTF-8 text (byte 0xff at position 4)"),
        (["explain", "a bank", "--html", str(tmp_path / "v.html"), "--top", "3"], "--top applies to word sense"),
        (["explain", "a bank", "--html", str(tmp_path / "v.html"), "--same", "the bank"], "--same applies to word sense"),
        (["word-sense", "a bank", "the bank", "--force"], "--force applies to --html"),
        (["word-sense", "a bank", "the bank", "--word", ""], "--word must not be empty"),  # (it fell back to "bank")
        (["translate", "train", "--synthetic", "300", "--model", "transformer", "--hidden", "30", "--heads", "4",
          "--out", str(tmp_path / "t")], "--hidden (30) must be divisible by --heads (4)"),  # (said: d_model, heads)
        (["explain", "a bank", "the bank", "--model", str(data)], "--model is a file, not a model folder"),
        (["word-sense", "a bank", "the bank", "--html", str(tmp_path)], f"--html {tmp_path} is a folder"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("attend: error: ") and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "d.tsv"]  # nothing written


@pytest.mark.parametrize("argv", [["demo", "--quick", "--no-progress"], ["tour"],
                                  ["translate", "train", "--synthetic", "50", "--hidden", "8", "--embed", "4",
                                   "--no-progress"]])
@pytest.mark.parametrize("seed", ["-5", "99999999999999999999", str(2 ** 63), "x"])
def test_seeds_are_checked_by_argparse_and_nothing_is_created(argv, seed, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = ["--out", "d"] if argv[0] != "tour" else []
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, *out, "--seed", seed])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [f"attend: error: argument --seed: expected an integer from 0 to "
                                                 f"2**63 - 1, got {seed!r}"]
    assert captured.out == "" and os.listdir(tmp_path) == []


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"attend {attend.__version__}\n"


def test_word_sense_answers_to_both_its_names(tmp_path, capsys):
    # `attend word-sense` says what it does; `attend explain`, its first name, is the same command
    helps = []
    for name in ("word-sense", "explain"):
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0
        helps.append(capsys.readouterr().out)
        assert cli.main([name, "a bank", "--html", str(tmp_path / "v.png")]) == 2
        assert "'.png' is not .html or .htm" in capsys.readouterr().err
    assert helps[0] == helps[1] and helps[0].startswith("usage: attend word-sense ")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "word-sense (explain)" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


def test_the_largest_seed_is_accepted(capsys):
    assert cli.main(["tour", "--seed", str(2 ** 63 - 1)]) == 0
    assert "What does 'ate' attend to?" in capsys.readouterr().out


def test_a_closed_pipe_is_not_an_error():
    # `attend tour | head`: the reader goes away; attend stops quietly (no message, no traceback), as Unix tools do
    p = subprocess.Popen([sys.executable, "-m", "attend.cli", "tour"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before attend writes anything
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) in (0, 141) and err == "", err


def test_tour_refuses_a_seed_out_of_range_by_name():
    import io

    from attend.apps import tour

    for seed in (-1, 2 ** 63, 99999999999999999999, True):
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*63\), got "):
            tour.run(io.StringIO(), seed=seed)
