"""attend.apps.translate (training and the translator): learning, checkpoints, resume, signals, files."""
from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

from attend import _io
from attend.apps import Translator, evaluate, train_translator
from attend.data import prepare, split_by_source, synthetic_pairs
from attend.apps.translate import TrainConfig, TrainingInterrupted


@pytest.fixture(scope="module")
def tiny_corpus():
    pairs = prepare(synthetic_pairs(2000, seed=3, max_words=8, max_clauses=1))
    return split_by_source(pairs, valid=0.05, test=0.05, seed=0)


SMALL = dict(embed_dim=32, hidden_dim=64, dropout=0.0)


def test_tiny_model_learns_tiny_corpus(tiny_corpus, tmp_path):
    sp = tiny_corpus
    tr, hist = train_translator(sp.train, sp.valid, tmp_path, model=dict(SMALL, attention="general"),
                                train_config=TrainConfig(epochs=6, batch_size=32, lr=1e-2, warmup_steps=10),
                                progress=False)
    assert hist[-1]["valid_loss"] < 0.2 * hist[0]["valid_loss"]
    r = evaluate(tr, sp.test)
    assert r.bleu > 80, r.summary()
    assert sorted(os.listdir(tmp_path)) == ["config.json", "history.json", "model.safetensors", "state.safetensors"]
    again = Translator.load(tmp_path)
    assert [t.tokens for t in again.translate(["the black cat ate the mouse ."])] == \
        [t.tokens for t in tr.translate(["the black cat ate the mouse ."])]


def _run(out, corpus, on_step=None, resume=False, max_steps=14, attention="general"):
    sp = corpus
    cfg = TrainConfig(epochs=3, batch_size=128, lr=5e-3, warmup_steps=3, max_steps=max_steps, seed=7)
    return train_translator(sp.train[:600], sp.valid, out, model=dict(SMALL, attention=attention, dropout=0.2),
                            train_config=cfg, progress=False, on_step=on_step, resume=resume)


@pytest.mark.parametrize("stop_at", [3, 5])  # 5 = first step of the second epoch (5 batches per epoch)
def test_resume_is_bit_identical_to_an_uninterrupted_run(tiny_corpus, tmp_path, stop_at):
    full, hist_full = _run(tmp_path / "full", tiny_corpus)

    def stop(trainer):
        if trainer.state.step == stop_at:
            trainer.request_stop()

    with pytest.raises(TrainingInterrupted) as e:
        _run(tmp_path / "cut", tiny_corpus, on_step=stop)
    assert e.value.exit_code == 130
    resumed, hist_resumed = _run(tmp_path / "cut", tiny_corpus, resume=True)
    strip = lambda hs: [{k: v for k, v in h.items() if k not in ("seconds", "tokens_per_s")} for h in hs]
    assert strip(hist_resumed) == strip(hist_full)
    a, _ = _io.load_tensors(tmp_path / "full" / "state.safetensors")
    b, _ = _io.load_tensors(tmp_path / "cut" / "state.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        if k != "rng.torch":
            assert torch.equal(a[k], b[k]), k  # parameters, Adam moments, loss of every step
    for (k, v), w in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(v, w), k


def test_resume_with_other_settings_is_refused(tiny_corpus, tmp_path):
    _run(tmp_path, tiny_corpus, max_steps=2)
    with pytest.raises(ValueError, match="different training settings"):
        train_translator(tiny_corpus.train[:600], tiny_corpus.valid, tmp_path, model=SMALL,
                         train_config=TrainConfig(epochs=9), resume=True, progress=False)


def test_checkpoint_files_are_checked_and_never_unpickled(tiny_corpus, tmp_path):
    _run(tmp_path, tiny_corpus, max_steps=2)
    weights = tmp_path / "model.safetensors"
    good = weights.read_bytes()

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    weights.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="model.safetensors: not a safetensors file .*pickles are never loaded"):
        Translator.load(tmp_path)
    assert not (tmp_path / "pwned").exists()
    torch.save({"x": Evil()}, weights)  # a torch.save zip archive is refused too
    with pytest.raises(ValueError, match="not a safetensors file"):
        Translator.load(tmp_path)
    assert not (tmp_path / "pwned").exists()

    weights.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError, match="model.safetensors"):
        Translator.load(tmp_path)

    t, _ = _io.load_tensors(tmp_path / "state.safetensors")
    model = {k[len("model."):]: v for k, v in t.items() if k.startswith("model.")}
    missing = dict(model)
    missing.pop("out.bias")
    _io.save_tensors(weights, missing)
    with pytest.raises(ValueError, match=r"model.safetensors: missing tensor\(s\) \['out.bias'\]"):
        Translator.load(tmp_path)
    _io.save_tensors(weights, dict(model, extra=torch.zeros(2)))
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\) \['extra'\]"):
        Translator.load(tmp_path)
    _io.save_tensors(weights, dict(model, **{"out.bias": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"tensor 'out.bias' has shape \(3,\), expected"):
        Translator.load(tmp_path)

    weights.write_bytes(good)
    Translator.load(tmp_path)
    cfg = tmp_path / "config.json"
    text = cfg.read_text()
    cfg.write_text(text[:40])
    with pytest.raises(ValueError, match="config.json: not a valid JSON checkpoint config"):
        Translator.load(tmp_path)
    doc = json.loads(text)
    doc["model"]["hidden_dim"] = -1
    cfg.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="config.json: malformed config .*hidden_dim"):
        Translator.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        Translator.load(tmp_path / "nope")


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    f = tmp_path / "x.bin"
    _io.atomic_write(f, b"old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        _io.atomic_write(f, b"new")
    assert f.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]  # no temp file left behind


KILL_DURING_SAVE = r"""
import os, sys, torch
from attend import _io
path = sys.argv[1]
_io.save_tensors(path, {"w": torch.ones(4)})
print("saved", flush=True)
big = {f"t{i}": torch.randn(256, 1024) for i in range(64)}  # 64 MiB: takes a while to write
while True:
    _io.save_tensors(path, big)
"""


def test_sigkill_during_a_save_leaves_a_loadable_file(tmp_path):
    path = tmp_path / "w.safetensors"
    p = subprocess.Popen([sys.executable, "-c", KILL_DURING_SAVE, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "saved"
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    tensors, _ = _io.load_tensors(path)  # the old small file or a complete big one, never half
    assert set(tensors) in ({"w"}, {f"t{i}" for i in range(64)})
    _io.save_tensors(path, {"w": torch.ones(4)})  # the next save removes what the killed one left
    assert os.listdir(tmp_path) == ["w.safetensors"]


def test_train_config_validation():
    for kw, msg in [(dict(batch_size=0), "batch_size must be an int >= 1"), (dict(lr=0.0), "lr must be"),
                    (dict(lr_decay=0), "lr_decay"), (dict(max_minutes=-1), "max_minutes"),
                    (dict(label_smoothing=1.0), "label_smoothing"), (dict(patience=-1), "patience")]:
        with pytest.raises(ValueError, match=msg):
            TrainConfig(**kw)


def test_sigterm_saves_and_exits_143(tiny_corpus, tmp_path):
    def terminate(trainer):
        if trainer.state.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets a flag

    with pytest.raises(TrainingInterrupted) as e:
        _run(tmp_path, tiny_corpus, on_step=terminate)
    assert e.value.exit_code == 143
    t, meta = _io.load_tensors(tmp_path / "state.safetensors")
    assert json.loads(meta["trainer"])["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    Translator.load(tmp_path)  # weights saved even before the first validation


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    f = tmp_path / "x.bin"
    _io.atomic_write(f, b"data")
    umask = os.umask(0)
    os.umask(umask)
    assert (f.stat().st_mode & 0o777) == (0o666 & ~umask)


def _tiny_trainer(out, config, pairs=None):
    from attend.models import Seq2Seq, Seq2SeqConfig
    from attend.apps.translate import Trainer

    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(src_vocab=9, tgt_vocab=9, embed_dim=4, hidden_dim=6))
    pairs = pairs or [([4, 5, 6][: 1 + i % 3], [6, 7, 8][: 1 + i % 2]) for i in range(8)]
    return Trainer(model, config, pairs, pairs[:4], out, progress=False)


def test_a_non_finite_training_loss_stops_training_naming_the_step(tmp_path, monkeypatch, capsys):
    import attend.apps.translate.training as train_module
    from attend.apps.translate import TrainingDiverged

    real = train_module.sequence_loss
    seen = {"steps": 0, "files": None}

    def poisoned(model, batch, *a, **k):
        loss, n = real(model, batch, *a, **k)
        if model.training:
            seen["steps"] += 1
            if seen["steps"] == 5:  # the 5th training step: what a diverging run gives
                seen["files"] = {p: (tmp_path / p).read_bytes() for p in sorted(os.listdir(tmp_path))}
                seen["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
                return loss * float("nan"), n
        return loss, n

    monkeypatch.setattr(train_module, "sequence_loss", poisoned)
    trainer = _tiny_trainer(tmp_path, TrainConfig(epochs=5, batch_size=2, eval_every=2, warmup_steps=0))
    with pytest.raises(TrainingDiverged, match=r"training stopped at step 5 \(epoch 2, batch 1 of 4, learning rate "
                                               r"0\.002\): the training loss is nan; that step was not taken and nothing "
                                               r"was saved after it: .* keeps its last checkpoint") as e:
        trainer.fit()
    assert e.value.step == 5 and trainer.state.step == 4
    assert {p: (tmp_path / p).read_bytes() for p in sorted(os.listdir(tmp_path))} == seen["files"]  # nothing written
    assert sorted(seen["files"]) == ["history.json", "model.safetensors"]  # the best weights, at step 4
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, seen["weights"][k]), k  # the weights were not updated from the NaN loss
    tensors, _ = _io.load_tensors(tmp_path / "model.safetensors")
    assert all(bool(torch.isfinite(t).all()) for t in tensors.values())


def test_a_non_finite_gradient_stops_training_too(tmp_path, monkeypatch):
    from attend.apps.translate import TrainingDiverged

    trainer = _tiny_trainer(tmp_path, TrainConfig(epochs=1, batch_size=2, warmup_steps=0))

    def poison(grad):
        return grad * float("inf")

    trainer.model.out.weight.register_hook(poison)
    with pytest.raises(TrainingDiverged, match=r"training stopped at step 1 .*: the gradient norm is (nan|inf)"):
        trainer.fit()
    assert os.listdir(tmp_path) == []


def test_the_cli_reports_a_diverged_training_in_one_line(tmp_path, monkeypatch, capsys):
    import attend.apps.translate.training as train_module
    from attend import cli

    real = train_module.sequence_loss

    def poisoned(model, batch, *a, **k):
        loss, n = real(model, batch, *a, **k)
        return (loss * float("inf") if model.training else loss), n

    monkeypatch.setattr(train_module, "sequence_loss", poisoned)
    out = tmp_path / "run"
    code = cli.main(["translate", "train", "--synthetic", "100", "--out", str(out), "--hidden", "8", "--embed", "4",
                     "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("attend: error: training stopped at step 1 (epoch 1, batch 1 of 2"), err
    assert "the training loss is inf" in err[-1]


def test_a_resumed_run_that_stopped_early_takes_no_extra_step(tmp_path, monkeypatch):
    import attend.apps.translate.training as train_module

    monkeypatch.setattr(train_module, "evaluate_loss", lambda model, batches: 5.0)  # never improves after the first
    config = TrainConfig(epochs=50, batch_size=2, eval_every=1, patience=2, warmup_steps=0)
    trainer = _tiny_trainer(tmp_path, config)
    history = trainer.fit()
    assert [h["step"] for h in history] == [1, 2, 3] and trainer.state.bad_evals == 2  # stopped early at step 3
    before, _ = _io.load_tensors(tmp_path / "state.safetensors")
    again = _tiny_trainer(tmp_path, config)
    assert again.fit(resume=True) == history and again.state.step == 3  # (it took a 4th step before)
    after, meta = _io.load_tensors(tmp_path / "state.safetensors")
    assert json.loads(meta["trainer"])["step"] == 3 and after["history.loss"].shape == (3,)
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_seeds_beyond_what_generators_take_are_refused():
    assert TrainConfig(seed=2 ** 63 - 1).seed == 2 ** 63 - 1
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*63\), got 9223372036854775808"):
        TrainConfig(seed=2 ** 63)


def test_cosine_schedule_falls_to_zero_at_the_last_step():
    cfg = TrainConfig(lr=1e-2, warmup_steps=10, max_steps=110, schedule="cosine")
    assert cfg.lr_at(0) == pytest.approx(1e-3)  # warming up
    assert cfg.lr_at(9) == pytest.approx(1e-2)  # the peak, at the end of the warm-up
    assert cfg.lr_at(60) == pytest.approx(0.5e-2)  # half-way down
    assert cfg.lr_at(109) == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert cfg.lr_at(110) == pytest.approx(0.0, abs=1e-18)
    assert cfg.lr_at(60, decays=1) == pytest.approx(0.25e-2)  # plateau halvings still apply on top
    trainer = _tiny_trainer("unused", cfg)  # the trainer's rate is its config's, after its state's decays
    trainer.state.decays = 1
    assert trainer.lr_at(60) == cfg.lr_at(60, decays=1)
    with pytest.raises(ValueError, match="schedule must be 'plateau' or 'cosine', got 'linear'"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match=r"schedule='cosine' falls to 0 at max_steps, which must be above warmup_steps \(100\), got max_steps=0"):
        TrainConfig(schedule="cosine")


def test_the_old_module_name_still_imports():
    import attend.apps.translate as translate
    from attend.train import TrainConfig as Old, Trainer, sequence_loss

    assert (Old, Trainer, sequence_loss) == (translate.TrainConfig, translate.Trainer, translate.sequence_loss)


def test_a_second_ctrl_c_stops_at_once_only_when_pressed_later(tmp_path, monkeypatch):
    import signal

    from attend.apps.translate import training

    trainer = _tiny_trainer(tmp_path, TrainConfig(epochs=1, batch_size=2, warmup_steps=0))
    clock = [100.0]
    monkeypatch.setattr(training.time, "monotonic", lambda: clock[0])
    trainer._handler(signal.SIGINT, None)
    trainer._handler(signal.SIGINT, None)  # the same Ctrl-C, forwarded (torchrun): save and stop, as asked
    clock[0] += 30
    trainer._handler(signal.SIGTERM, None)  # a supervisor's SIGTERM after it: still that request
    assert trainer._stop == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C pressed later: stop now
        trainer._handler(signal.SIGINT, None)



def test_train_loss_is_the_last_epochs_steps_whatever_each_step_takes(tmp_path):
    from attend.models import Seq2Seq, Seq2SeqConfig
    from attend.apps.translate import Trainer

    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(src_vocab=9, tgt_vocab=9, embed_dim=4, hidden_dim=6))
    pairs = [([4, 5, 6][: 1 + i % 3], [6, 7, 8][: 1 + i % 2]) for i in range(16)]
    trainer = Trainer(model, TrainConfig(epochs=2, batch_size=2, warmup_steps=0), pairs, pairs[:4], tmp_path,
                      progress=False, accumulate=2)  # 8 batches an epoch, 2 a step: 4 steps an epoch
    hist = trainer.fit()
    losses = trainer.state.losses
    assert len(losses) == 8 and [h["step"] for h in hist] == [4, 8]
    for h in hist:  # (before: the last 8 steps, two epochs' worth, as under torchrun on 2 processes)
        assert h["train_loss"] == pytest.approx(sum(losses[h["step"] - 4 : h["step"]]) / 4, rel=1e-12)
