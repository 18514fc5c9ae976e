"""Files a user hands us are checked before they cost anything (translator run folders,
resume state), and a run folder has one owner: the lock (two real processes), stale temp
files of killed saves, byte-identical saves."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from attend import _io, cli
from attend.apps import Translator, train_translator
from attend.apps.translate import translator as translator_module
from attend.data import prepare, split_by_source, synthetic_pairs
from attend.apps.translate import RunFolder, RunFolderBusy, TrainConfig, Trainer

CFG = TrainConfig(epochs=2, batch_size=64, lr=5e-3, warmup_steps=1, max_steps=3, seed=0)
MODEL = dict(attention="dot", embed_dim=8, hidden_dim=12, dropout=0.0)


@pytest.fixture(scope="module")
def corpus():
    pairs = prepare(synthetic_pairs(700, seed=1, max_words=8, max_clauses=1))
    return split_by_source(pairs, valid=0.05, test=0.0, seed=0)


@pytest.fixture(scope="module")
def trained_run(corpus, tmp_path_factory):
    """A run stopped after 3 of its planned steps (state: epoch 0, position 3 of 11 batches)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    train_translator(corpus.train, corpus.valid, out, model=MODEL, train_config=CFG, progress=False)
    return out


@pytest.fixture
def run(trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


def _edit_config(run, edit):
    path = run / "config.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _snapshot(folder):
    return {p: (folder / p).read_bytes() for p in sorted(os.listdir(folder))}


def _no_build(monkeypatch):
    """Fail if a model is allocated (the checks must refuse before that)."""
    def refuse(*a, **k):
        raise AssertionError("a model was built before the files were checked")

    monkeypatch.setattr(translator_module, "build_model", refuse)


# -- translator run folders ------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("hidden_dim", 20_000), ("layers", 50), ("embed_dim", 7),
                                          ("rnn", "lstm"), ("bidirectional", False)])
def test_config_sizes_are_checked_against_the_weights_header_before_building(run, monkeypatch, field, value):
    _edit_config(run, lambda d: d["model"].__setitem__(field, value))
    _no_build(monkeypatch)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=rf"config\.json: model\.{field} is {value!r}, but .*model\.safetensors holds "
                                         rf"model\.{field} = "):
        Translator.load(run)
    assert time.perf_counter() - t0 < 5


def test_a_size_missing_from_the_config_is_said_to_be_missing(run, corpus, monkeypatch):
    _edit_config(run, lambda d: d["model"].pop("hidden_dim"))  # (older configs may lack a field: its default is taken)
    _no_build(monkeypatch)
    for call, file in ((lambda: Translator.load(run), "model"), (lambda: train_translator(
            corpus.train, corpus.valid, run, train_config=CFG, resume=True, progress=False), "state")):
        with pytest.raises(ValueError, match=r"config\.json: model\.hidden_dim is not in the file, and its default 256 "
                                             rf"does not fit: .*{file}\.safetensors( \(its tensors 'model\.\*'\))? "
                                             r"holds model\.hidden_dim = \d+ "):
            call()  # (before: "model.hidden_dim is 256", a value the file does not hold)


def test_vocabulary_longer_than_the_embedding_is_refused(run, monkeypatch):
    _no_build(monkeypatch)

    def grow(d):
        d["src_vocab"] += ["elephant", "bread"]
        d["model"]["src_vocab"] += 2

    _edit_config(run, grow)
    with pytest.raises(ValueError, match=r"config\.json: model\.src_vocab is \d+, but .*model\.safetensors holds "
                                         r"model\.src_vocab = \d+ \(tensor 'src_embed\.weight' has shape"):
        Translator.load(run)
    _edit_config(run, lambda d: d["src_vocab"].append("giraffe"))
    with pytest.raises(ValueError, match=r"config\.json: field 'src_vocab' has \d+ tokens, but model\.src_vocab is"):
        Translator.load(run)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("format"), "not an attend translator config"),
    (lambda d: d["model"].__setitem__("dropout", "x"), r"malformed config \(model: dropout must be a number"),
    (lambda d: d["train"].__setitem__("epochs", -1), r"malformed config \(train: epochs must be an int >= 1"),
    (lambda d: d.__setitem__("src_vocab", "abc"), r"field 'src_vocab' must be a list, got a string"),
    (lambda d: d["tgt_vocab"].__setitem__(5, 7), r"field tgt_vocab\[5\] must be a string, got an integer"),
    (lambda d: d.__setitem__("min_freq", 0), r"field 'min_freq' must be an integer >= 1, got 0"),
    (lambda d: d.__setitem__("model", []), r"field 'model' must be a JSON object, got a list"),
    (lambda d: d.__setitem__("min_frq", 2), r"unknown fields 'min_frq' \(did you mean 'min_freq'\?\)"),
    (lambda d: d.pop("train"), r"missing field 'train'$"),  # (the file named once)
])
def test_config_fields_are_checked_by_name(run, edit, message):
    _edit_config(run, edit)
    with pytest.raises(ValueError, match=r"config\.json: " + message):
        Translator.load(run)


def test_weights_of_another_run_are_refused(run):
    # dot and none attention have the same tensors: the weights' metadata tells them apart
    _edit_config(run, lambda d: d["model"].__setitem__("attention", "none"))
    with pytest.raises(ValueError, match=r"config\.json: model settings \['attention'\] differ from those "
                                         r".*model\.safetensors was trained with"):
        Translator.load(run)
    _edit_config(run, lambda d: d["model"].__setitem__("attention", "dot"))
    Translator.load(run)

    def swap(d):  # same sizes, other word order: translations would be garbage
        v = d["tgt_vocab"]
        v[4], v[5] = v[5], v[4]

    _edit_config(run, swap)
    with pytest.raises(ValueError, match=r"model\.safetensors was trained with other vocabularies or model settings"):
        Translator.load(run)


def test_resume_checks_config_sizes_against_the_state(run, corpus, monkeypatch):
    _edit_config(run, lambda d: d["model"].__setitem__("hidden_dim", 20_000))
    _no_build(monkeypatch)
    before = _snapshot(run)
    with pytest.raises(ValueError, match=r"config\.json: model\.hidden_dim is 20000, but "
                                         r".*state\.safetensors \(its tensors 'model\.\*'\) holds"):
        train_translator(corpus.train, corpus.valid, run, train_config=CFG, resume=True, progress=False)
    assert _snapshot(run) == before


# -- resume state ----------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_holding_nan_or_inf_are_refused_by_tensor_name(run, value):
    """(Before, a translator's model.safetensors was checked by its header only: inf weights
    translated every sentence to <unk> with exit 0.)"""
    path = run / "model.safetensors"
    t, m = _io.load_tensors(path)
    t["out.weight"].view(-1)[3] = value
    _io.save_tensors(path, t, m)
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'out\.weight' has NaN or infinite values"):
        Translator.load(run)


def test_a_repeated_json_key_and_files_that_are_not_files_are_refused_by_name(run, corpus):
    path = run / "config.json"
    path.write_text(path.read_text().replace('"hidden_dim": 12', '"hidden_dim": 9999, "hidden_dim": 12', 1))
    with pytest.raises(ValueError, match=r"config\.json: not a valid JSON checkpoint config \(the key 'hidden_dim' "
                                         r"appears twice in one object\)"):  # (json kept the last one)
        Translator.load(run)
    path.write_text(path.read_text().replace('"hidden_dim": 9999, ', "", 1))
    Translator.load(run)
    weights = run / "model.safetensors"
    weights.unlink()
    weights.mkdir()
    with pytest.raises(IsADirectoryError, match=r"^model weights is a folder, not a file: .*model\.safetensors$"):
        Translator.load(run)
    weights.rmdir()
    weights.symlink_to(weights)
    with pytest.raises(FileNotFoundError, match=r"^model weights is a link to nothing \(broken or a loop\): "):
        Translator.load(run)
    state = run / "state.safetensors"
    state.unlink()
    state.mkdir()
    with pytest.raises(IsADirectoryError, match=r"^resume state is a folder, not a file: .*state\.safetensors$"):
        _resume(run, corpus)


def _edit_state(run, tensors=None, scalars=None, meta=None):
    path = run / "state.safetensors"
    t, m = _io.load_tensors(path)
    if tensors:
        tensors(t)
    if scalars:
        sc = json.loads(m["trainer"])
        scalars(sc)
        m["trainer"] = json.dumps(sc)
    if meta:
        meta(m)
    _io.save_tensors(path, t, m)


def _resume(run, corpus, cfg=CFG):
    return train_translator(corpus.train, corpus.valid, run, train_config=cfg, resume=True, progress=False)


STATE_CASES = [
    (dict(scalars=lambda s: s.pop("step")), r"missing field 'trainer\.step'"),
    (dict(scalars=lambda s: s.__setitem__("step", -5)), r"field 'trainer\.step' must be an integer >= 0, got -5"),
    (dict(scalars=lambda s: s.__setitem__("batches", 4)), r"4 batches taken do not match epoch 0 and position 3 "
                                                          r"with 11 batches per epoch"),
    (dict(scalars=lambda s: s.__setitem__("step", 4)), r"field 'trainer\.step' is 4, more than the 3 batches taken "
                                                       r"\(trainer\.batches\): each step takes at least one batch"),
    (dict(scalars=lambda s: s.__setitem__("batches", -1)), r"field 'trainer\.batches' must be an integer >= 0, got -1"),
    (dict(scalars=lambda s: s.__setitem__("position", 11)), r"field 'trainer\.position' must be an integer in \[0, 10\]"),
    (dict(scalars=lambda s: s.__setitem__("epoch", 3)), r"field 'trainer\.epoch' must be an integer in \[0, 2\]"),
    (dict(scalars=lambda s: s.__setitem__("history", [1, 2])), r"field 'trainer\.history\[0\]' must be a JSON object"),
    (dict(scalars=lambda s: s.__setitem__("best_valid", "x")), r"field 'trainer\.best_valid' must be a number"),
    (dict(scalars=lambda s: s["config"].__setitem__("epochs", 9)), r"different training config: epochs \(state: 9, "
                                                                   r"given: 2\)"),
    (dict(meta=lambda m: m.__setitem__("trainer", "[1, 2]")), r"field 'trainer' must be a JSON object, got a list"),
    (dict(meta=lambda m: m.__setitem__("trainer", "{oops")), r"metadata 'trainer' is not valid JSON"),
    (dict(meta=lambda m: m.pop("param_groups")), r"metadata 'param_groups' is missing"),
    (dict(meta=lambda m: m.__setitem__("param_groups", json.dumps([{"betas": [0.5, 0.5]}]))),
     r"optimiser setting 'betas' is \[0\.5, 0\.5\]"),
    (dict(tensors=lambda t: t.__setitem__("rng.torch", t["rng.torch"].float())),
     r"tensor 'rng\.torch' must be a uint8 tensor of shape \(5056,\)"),
    (dict(tensors=lambda t: t.__setitem__("rng.torch", t["rng.torch"][:100])), r"tensor 'rng\.torch' must be a uint8"),
    (dict(tensors=lambda t: t.__setitem__("optim.0.exp_avg", torch.zeros(3, 3))),
     r"tensor 'optim\.0\.exp_avg' is torch\.float32 \(3, 3\), expected torch\.float32 \(\d+, 8\)"),
    (dict(tensors=lambda t: t.__setitem__("optim.99.exp_avg", torch.zeros(1))), r"unexpected tensor 'optim\.99\.exp_avg'"),
    (dict(tensors=lambda t: t.pop("optim.1.exp_avg_sq")), r"optimiser state of parameter 1 is incomplete"),
    (dict(tensors=lambda t: [t.pop(f"optim.1.{k}") for k in ("step", "exp_avg", "exp_avg_sq")]),
     r"no optimiser state for parameter\(s\) \[1\] of \d+, after 3 step\(s\)"),
    (dict(tensors=lambda t: [t.pop(k) for k in list(t) if k.startswith("optim.")]),
     r"no optimiser state for parameter\(s\) \[0, 1, 2, 3, 4\] … of \d+, after 3 step\(s\)"),
    (dict(tensors=lambda t: t.__setitem__("optim.0.step", torch.tensor(7.0))), r"tensor 'optim\.0\.step' is 7\.0"),
    (dict(tensors=lambda t: t.__setitem__("history.loss", torch.zeros(2, dtype=torch.float64))),
     r"'history\.loss' has 2 losses for 3 steps"),
    (dict(tensors=lambda t: t.pop("model.out.bias")), r"missing tensor\(s\) \['out\.bias'\]"),
    (dict(tensors=lambda t: t["optim.2.exp_avg"].fill_(float("nan"))), r"'optim\.2\.exp_avg' has NaN"),
    (dict(tensors=lambda t: t["history.loss"].view(-1)[1].fill_(float("nan"))),
     r"tensor 'history\.loss' holds a loss that is not a finite number >= 0"),
    (dict(tensors=lambda t: t["history.loss"].view(-1)[0].fill_(-1.0)), r"tensor 'history\.loss' holds a loss that"),
    (dict(scalars=lambda s: s.__setitem__("postion", 1)),
     r"metadata 'trainer' has unknown fields 'postion' \(did you mean 'position'\?\)"),
    (dict(tensors=lambda t: t["optim.1.exp_avg_sq"].view(-1)[4].fill_(-2.0)),
     r"tensor 'optim\.1\.exp_avg_sq' has negative values \(-2\); Adam's second moments are averages of squares"),
    (dict(tensors=lambda t: t.__setitem__("rng.torch", torch.full_like(t["rng.torch"], 7))),
     r"tensor 'rng\.torch' is not a valid state of torch's random number generator \("),
    (dict(scalars=lambda s: s.__setitem__("decays", 10 ** 6)),
     r"field 'trainer\.decays' is 1000000, but trainer\.history records 0 evaluation\(s\) without improvement"),
    (dict(scalars=lambda s: s.__setitem__("bad_evals", 99)),
     r"field 'trainer\.bad_evals' is 99, more than the patience \(3\)"),
    (dict(scalars=lambda s: s.__setitem__("bad_evals", 2)),
     r"field 'trainer\.bad_evals' is 2, but trainer\.history records 0 evaluation\(s\) without improvement since"),
    (dict(scalars=lambda s: s.__setitem__("history", [])),
     r"field 'trainer\.last_eval_step' is 3, but trainer\.history records no evaluation"),
    (dict(scalars=lambda s: s.__setitem__("last_eval_step", -1)),
     r"field 'trainer\.last_eval_step' is -1, but the last evaluation in trainer\.history is at step 3"),
    (dict(scalars=lambda s: s.__setitem__("best_valid", s["best_valid"] + 1)),
     r"field 'trainer\.best_valid' is [\d.]+, but the best validation loss in trainer\.history is [\d.]+"),
    (dict(scalars=lambda s: s.__setitem__("best_valid", None)), r"field 'trainer\.best_valid' is None, but the best"),
    (dict(meta=lambda m: m.__setitem__("trainer", '{"step": ' + "9" * 5000 + "}")),
     r"metadata 'trainer' is not valid JSON \(Exceeds the limit \(4300 digits\)"),
]


@pytest.mark.parametrize("edit, message", STATE_CASES)
def test_resume_state_is_checked_field_by_field_and_changes_nothing(run, corpus, edit, message):
    _edit_state(run, **edit)
    before = _snapshot(run)
    with pytest.raises(ValueError, match=r"state\.safetensors( \(its tensors 'model\.\*'\))?: .*" + message):
        _resume(run, corpus)
    assert _snapshot(run) == before  # nothing written


def test_a_config_with_an_integer_too_long_to_read_names_the_file(run, capsys):
    path = run / "config.json"
    path.write_text(path.read_text().replace('"min_freq": 1', '"min_freq": ' + "1" * 5000))
    with pytest.raises(ValueError, match=r"config\.json: not a valid JSON checkpoint config \(Exceeds the limit "
                                         r"\(4300 digits\)"):
        Translator.load(run)
    assert cli.main(["translate", "the cat .", "--checkpoint", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"attend: error: {path}: not a valid JSON") and len(err.strip().splitlines()) == 1


def test_intact_state_resumes_and_a_finished_run_takes_no_extra_step(run, corpus):
    tr, hist = _resume(run, corpus)  # stopped by max_steps=3: nothing left to do
    assert hist[-1]["step"] == 3
    t, _ = _io.load_tensors(run / "state.safetensors")
    assert t["history.loss"].shape == (3,)
    assert tr.translate(["the cat ."])[0].source == ["the", "cat", "."]


def test_history_json_is_checked():
    # the same check reads history.json and the history inside the state
    folder = RunFolder(os.path.dirname(__file__))
    from attend.apps.translate import check_history

    good = [{"step": 3, "epoch": 0, "train_loss": 1.0, "valid_loss": 2.0, "lr": 0.1, "seconds": 1, "tokens_per_s": 3}]
    assert check_history(good, "h.json") == good
    for bad, message in [({"a": 1}, "history must be a list of evaluation records, got an object"),
                         ([dict(good[0], step=-1)], r"field 'history\[0\]\.step' must be an integer >= 0"),
                         ([dict(good[0], lr="x")], r"field 'history\[0\]\.lr' must be a number"),
                         (good + [dict(good[0], step=1)], r"field 'history\[1\]\.step' is 1, before the previous")]:
        with pytest.raises(ValueError, match="h.json: " + message):
            check_history(bad, "h.json")
    assert folder.history_path.endswith("history.json")


# -- one owner -------------------------------------------------------------------------------

HOLD = r"""
import sys, time
from attend.apps.translate.run import RunFolder
with RunFolder(sys.argv[1]).lock():
    print("locked", flush=True)
    time.sleep(120)
"""


def _holder(folder):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_training_into_an_owned_folder_stops_at_once(run, corpus, capsys):
    before = _snapshot(run)
    other = _holder(run)  # another process owns the folder (as a running training does)
    try:
        t0 = time.perf_counter()
        code = cli.main(["translate", "train", "--synthetic", "200", "--out", str(run), "--force", "--hidden", "8",
                         "--embed", "4", "--epochs", "1", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.strip().splitlines() == [f"attend: error: run folder {run} is in use by another training "
                                            "(a run folder has one owner at a time); wait for it to finish or use "
                                            "another folder"]
        code = cli.main(["translate", "train", "--synthetic", "200", "--out", str(run), "--resume", "--hidden", "8",
                         "--no-progress"])
        assert code == 2 and "is in use by another training" in capsys.readouterr().err
        with pytest.raises(RunFolderBusy, match="is in use by another training"):
            train_translator(corpus.train, corpus.valid, run, model=MODEL, train_config=CFG, progress=False)
        assert time.perf_counter() - t0 < 30
        assert _snapshot(run) == before  # nothing in the folder changed
    finally:
        other.kill()  # a killed owner leaves no stale lock: the kernel drops it
        other.wait()
    with RunFolder(run).lock():
        pass


def test_a_busy_folder_is_refused_before_any_data_is_read(run, tmp_path, monkeypatch, capsys):
    import attend.data

    def never(*a, **k):
        raise AssertionError("the data was read before the run folder's lock was taken")

    monkeypatch.setattr(attend.data, "synthetic_pairs", never)  # 20000 pairs took 5 s to read and split
    monkeypatch.setattr(attend.data, "read_tsv", never)
    data = tmp_path / "d.tsv"
    data.write_text("a b\tc d\n" * 10)
    before = _snapshot(run)
    other = _holder(run)
    try:
        for extra in (["--synthetic", "20000", "--force"], ["--data", str(data), "--force"],
                      ["--synthetic", "700", "--resume"]):
            code = cli.main(["translate", "train", *extra, "--out", str(run), "--no-progress"])
            err = capsys.readouterr().err
            assert code == 2 and "is in use by another training" in err, (extra, err)
    finally:
        other.kill()
        other.wait()
    assert _snapshot(run) == before


def test_the_lock_is_reentrant_in_a_thread_and_exclusive_across_threads(tmp_path):
    import threading

    folder = RunFolder(tmp_path / "f")
    errors = []
    with folder.lock():
        with folder.lock():  # the CLI, then the trainer it calls
            assert folder.owned()

        def other():
            try:
                with folder.lock():
                    pass
            except RunFolderBusy as e:
                errors.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1 and not folder.owned()
    assert os.listdir(tmp_path / "f") == []  # the lock adds no file


WRITER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("writing", flush=True)
time.sleep(120)
"""


def test_stale_temp_files_are_removed_by_the_next_save_but_a_live_writers_are_not(tmp_path):
    stale = tmp_path / ".tmp-abcd1234-w.safetensors"
    stale.write_bytes(b"x" * 1000)  # what a SIGKILL during a save leaves
    live = tmp_path / ".tmp-live5678-w.safetensors"
    other = tmp_path / ".tmp-zzzz9999-other.bin"
    other.write_bytes(b"y")
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(live)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "writing"
        _io.save_tensors(tmp_path / "w.safetensors", {"a": torch.ones(2)})
        assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "w.safetensors"])
    finally:
        p.kill()
        p.wait()
    # the writer is gone: its temp file is now a leftover too
    with RunFolder(tmp_path).lock():  # owning the folder changes nothing in it
        pass
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "w.safetensors"])
    _io.save_tensors(tmp_path / "other.bin", {"a": torch.ones(1)})  # a save removes the leftovers of its own name
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, "other.bin", "w.safetensors"])
    _io.save_tensors(tmp_path / "w.safetensors", {"a": torch.ones(2)})
    assert sorted(os.listdir(tmp_path)) == ["other.bin", "w.safetensors"]


def test_a_refused_command_deletes_no_temp_file_and_a_save_only_its_own(run, corpus, capsys):
    ours = run / ".tmp-abcdefgh-state.safetensors"  # what a killed save of the state leaves
    ours.write_bytes(b"half a state")
    notes = run / ".tmp-zzzzzzzz-notes.txt"  # a name no attend save makes
    notes.write_bytes(b"someone's notes")
    unlike = run / ".tmp-abc-state.safetensors"  # not the pattern attend's writer names
    unlike.write_bytes(b"x")
    before = _snapshot(run)
    code = cli.main(["translate", "train", "--synthetic", "700", "--out", str(run), "--resume", "--hidden", "32",
                     "--no-progress"])
    assert code == 1 and "different training settings" in capsys.readouterr().err
    assert _snapshot(run) == before  # a refused command changes nothing on disk
    with RunFolder(run).lock():
        pass
    assert _snapshot(run) == before
    _resume(run, corpus)  # saves state.safetensors: its own leftover goes, nothing else
    names = set(os.listdir(run))
    assert ours.name not in names and {notes.name, unlike.name} <= names
    assert notes.read_bytes() == b"someone's notes"


SLOW_SAVE = r"""
import sys, time
from attend import _io

def chunks():
    yield b"x" * 100_000
    print("writing", flush=True)
    time.sleep(120)
    yield b"never"

_io.atomic_write(sys.argv[1], chunks())
"""


def test_a_save_killed_midway_leaves_a_temp_file_that_the_next_save_removes(tmp_path):
    import signal

    path = tmp_path / "state.safetensors"
    path.write_bytes(b"old")
    p = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGKILL)
    p.wait()
    left = [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    assert len(left) == 1 and left[0].endswith("-state.safetensors")  # 100 kB of a half-written save
    assert path.read_bytes() == b"old"  # the previous file is intact
    _io.atomic_write(path, b"new")
    assert os.listdir(tmp_path) == ["state.safetensors"] and path.read_bytes() == b"new"


def test_the_same_state_saves_to_the_same_bytes(tmp_path, corpus):
    tensors = {"b": torch.arange(6, dtype=torch.float32).view(2, 3), "a": torch.tensor(3.5, dtype=torch.float64),
               "h": torch.ones(3, dtype=torch.bfloat16), "m": torch.tensor([True, False]),
               "e": torch.zeros(0, 4), "i": torch.tensor([1, 2], dtype=torch.int64)}
    meta = {f"k{i}": str(i) for i in range(12)}
    blobs = set()
    for i in range(5):
        _io.save_tensors(tmp_path / f"x{i}.safetensors", tensors, dict(reversed(list(meta.items()))) if i % 2 else meta)
        blobs.add((tmp_path / f"x{i}.safetensors").read_bytes())
    assert len(blobs) == 1
    from safetensors.torch import load

    back = load(blobs.pop())  # the reference reader agrees
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k

    from attend.models import Seq2Seq, Seq2SeqConfig

    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(src_vocab=9, tgt_vocab=9, embed_dim=4, hidden_dim=6))
    pairs = [([4, 5], [6, 7])] * 4
    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=2), pairs, pairs, tmp_path / "t", progress=False)
    trainer.fit()
    first = (tmp_path / "t" / "state.safetensors").read_bytes()
    trainer.save_state()
    assert (tmp_path / "t" / "state.safetensors").read_bytes() == first
