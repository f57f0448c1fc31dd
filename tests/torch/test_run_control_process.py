"""SIGTERM to a real training process (``python rnn.py``), then the same command again: the result equals an
uninterrupted run bit for bit. (Through torchrun with two processes: test_distributed_run.py, which shares its
uninterrupted run.)"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

from returnn.errors import EXIT_INTERRUPTED

pytestmark = pytest.mark.slow

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# train_step waits in global step WAIT_STEP (after writing reached.0) until the process got its signal, so that the
# test knows where the signal arrives.
CONFIG = """\
#!rnn.py
import os
import time

import torch

device = "cpu"
num_epochs = 1
model = "models/epoch"
learning_rate_file = "learning_rates"
train = {"class": "DummyDataset", "input_dim": 3, "output_dim": 2, "num_seqs": 12, "seq_len": 5,
         "seq_ordering": "random"}
dev = {"class": "DummyDataset", "input_dim": 3, "output_dim": 2, "num_seqs": 3, "seq_len": 4}
max_seqs = 2
batch_size = 1000
chunking = "3:2"
num_workers_per_gpu = 0
optimizer = {"class": "adam"}
learning_rate = 0.01
accum_grad_multiple_step = 2
WAIT_STEP = @WAIT@


def get_model(*, epoch, step, **kwargs):
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 2))


def train_step(*, model, data, run_ctx, **kwargs):
    logits = model(data["data"])
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), data["classes"].flatten().long(), reduction="sum")
    run_ctx.mark_as_loss(ce, "ce", inv_norm_factor=data["data:size1"].sum())
    if model.training and run_ctx.global_step == WAIT_STEP:
        open("reached.0", "w").close()
        deadline = time.monotonic() + 60
        while run_ctx.engine.run_control.signals.received is None and time.monotonic() < deadline:
            time.sleep(0.02)
"""


def _write_config(run_dir: pathlib.Path, *, wait_step: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = CONFIG.replace("@WAIT@", str(wait_step))
    (run_dir / "exp.config").write_text(text)


_COMMAND = [sys.executable, str(REPO_ROOT / "rnn.py"), "exp.config"]


def _run(run_dir: pathlib.Path) -> subprocess.CompletedProcess:
    result = subprocess.run(_COMMAND, cwd=run_dir, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _run_and_signal(run_dir: pathlib.Path) -> subprocess.CompletedProcess:
    """Start the training, send SIGTERM once it waits in WAIT_STEP, and wait for the end."""
    pipe = subprocess.PIPE
    process = subprocess.Popen(_COMMAND, cwd=run_dir, stdout=pipe, stderr=pipe, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "reached.0").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _assert_same(full: pathlib.Path, resumed: pathlib.Path, assert_same_state) -> None:
    def load(run_dir: pathlib.Path, name: str) -> dict:
        return torch.load(run_dir / "models" / name, weights_only=True)

    for name in ("epoch.001.pt", "epoch.001.opt.pt"):  # the optimizer file with the pending accumulated gradients
        assert_same_state(load(full, name), load(resumed, name))
    assert (resumed / "learning_rates").read_text() == (full / "learning_rates").read_text()
    assert sorted(os.listdir(resumed / "models")) == sorted(os.listdir(full / "models"))
    assert not [name for name in os.listdir(resumed / "models") if ".tmp" in name]


def test_sigterm_to_rnn_py_then_restart_equals_uninterrupted(tmp_path, assert_same_state):
    # 12 sequences of 5 frames in 3 chunks each (3 frames every 2), 2 per batch: 18 steps. (DataLoader workers: the
    # in-process tests of test_run_control.py, which cost no process start-ups.)
    for name in ("full", "resumed"):
        _write_config(tmp_path / name, wait_step=4 if name == "resumed" else -1)
    _run(tmp_path / "full")
    stopped = _run_and_signal(tmp_path / "resumed")
    assert stopped.returncode == EXIT_INTERRUPTED, stopped.stderr[-3000:]
    lines = stopped.stderr.strip().splitlines()
    assert lines[-1].startswith("returnn: received SIGTERM: stopped in epoch 1 after step 5 of it (global_step=5)")
    assert "epoch.mid_epoch.pt" in os.listdir(tmp_path / "resumed" / "models")
    resumed = _run(tmp_path / "resumed")
    assert "train: resuming epoch=1 after 5 batches (global_step=5)" in resumed.stdout + resumed.stderr
    _assert_same(tmp_path / "full", tmp_path / "resumed", assert_same_state)
