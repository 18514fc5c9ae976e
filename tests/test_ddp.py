"""Data-parallel training on 2 processes (gloo), launched here the way torchrun does (its
environment variables; the CLI test runs torchrun itself): 20 DDP steps equal one process
training on the combined batches, within the tolerance rule (float32); ``attend translate
train`` under torchrun writes the run folder from rank 0 alone and resumes on another number
of processes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "src")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int) -> dict:
    return dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONPATH=SRC)


@pytest.mark.parametrize("kind", ["rnn", "transformer"])
def test_ddp_steps_equal_one_process_on_the_combined_batch(tmp_path, kind):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "ddp_worker.py"), str(tmp_path), kind],
                              env=_env(r, 2, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        try:
            _, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a rank did not finish within 300 s")
        assert p.returncode == 0, err[-3000:]
    for r in range(2):
        res = json.load(open(tmp_path / f"result{r}.json"))
        assert res["steps"] == res["alone_steps"] == 20 and res["losses"] == 20
        assert (res["epoch"], res["position"]) == (res["alone_epoch"], res["alone_position"])
        # float32, 20 Adam steps: the tolerance rule's float32 bound, relative to the weights' size
        assert res["max_param_diff"] <= 1e-4 * max(1.0, res["max_param"]), res
        assert res["max_loss_diff"] <= 1e-4, res
    assert sorted(os.listdir(tmp_path / "ddp")) == sorted(os.listdir(tmp_path / "alone0"))  # rank 0 wrote it all


def _attend(args, world, port=None, timeout=300, logs=None):
    cmd = [sys.executable, "-m", "attend.cli", "translate", "train", *args]
    if world > 1:  # --log-dir: torchrun's own logs, else a torchelastic_* folder left in /tmp
        assert logs is not None, "give torchrun a log folder"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
               "--log-dir", str(logs), "-m", "attend.cli", "translate", "train", *args]
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_a_ddp_run_stopped_on_one_rank_stops_everywhere_and_resumes_on_one_process(tmp_path):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "ddp_worker.py"), str(tmp_path), "resume"],
                              env=_env(r, 2, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    res = json.load(open(tmp_path / "resumed.json"))
    # 7 DDP steps took 14 batches; 13 more steps of one batch each: 27 batches, 23 per epoch
    assert (res["step"], res["epoch"], res["position"], res["losses"], res["last_eval"]) == (20, 1, 4, 20, 20)


def test_translate_train_under_torchrun_writes_from_rank_0(tmp_path):
    out = tmp_path / "run"
    common = ["--synthetic", "300", "--model", "rnn", "--hidden", "16", "--embed", "8", "--batch-size", "8",
              "--no-progress", "--out", str(out), "--epochs", "1"]
    first = _attend(common, world=2, logs=tmp_path / "logs")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("trained ") == 1, first.stdout  # rank 0 alone reports
    assert first.stderr.count("training pairs") == 1, first.stderr
    files = sorted(os.listdir(out))
    for name in ("state.safetensors", "model.safetensors", "config.json", "history.json"):
        assert name in files
    hist = json.load(open(out / "history.json"))
    n_train = int(first.stderr.split("attend: ")[1].split(" training pairs")[0])
    assert hist[-1]["step"] == -(-(-(-n_train // 8)) // 2)  # one batch per process per step
    again = _attend(common + ["--resume"], world=1)  # finished: the resume takes no step, on one process
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"nothing left to train: the run had ended at step {hist[-1]['step']}, its plan done in" in again.stdout
