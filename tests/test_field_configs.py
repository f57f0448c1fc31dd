"""Configs as they come from the field, run as ``python rnn.py CONFIG`` in a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_rnn(tmp_path, text: str, *args: str) -> subprocess.CompletedProcess:
    """Write ``text`` as exp.config in ``tmp_path`` and run rnn.py on it there."""
    config = tmp_path / "exp.config"
    config.write_text("#!rnn.py\n" + textwrap.dedent(text).lstrip("\n"))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "rnn.py"), str(config), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


I6_EXPERIMENTS_CONFIG = """
import json
import torch
from returnn.config import get_global_config

config = {}
config = json.loads('{"batch_size": 100, "max_seqs": 4, "num_epochs": 1, "model": "out/epoch", "device": "cpu"}')
locals().update(**config)
train = {"class": "DummyDataset", "input_dim": 3, "output_dim": 2, "num_seqs": 8, "seq_len": 4}
model_kwargs = {"hidden": 6}
learning_rate_piecewise_steps = [2, 4]
learning_rate_piecewise_values = [0.01, 0.1, 0.01]
learning_rate_peak = 0.1
max_seq_len = 300  # a near miss of max_seq_length, read by get_model through the global config
log_verbosity = 4
optimizer = {"class": "adam"}


def get_model(*, epoch, step, **kwargs):
    hidden = get_global_config().typed_value("model_kwargs")["hidden"]
    assert get_global_config().int("max_seq_len", 0) == 300
    return torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Linear(hidden, 2))


def train_step(*, model, data, run_ctx, **kwargs):
    logits = model(data["data"])
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), data["classes"].flatten().long(), reduction="sum")
    run_ctx.mark_as_loss(ce, "ce", inv_norm_factor=logits.shape[0] * logits.shape[1])


def dynamic_learning_rate(*, global_train_step, learning_rate, **kwargs):
    config = get_global_config()
    steps = config.int_list("learning_rate_piecewise_steps")
    values = config.float_list("learning_rate_piecewise_values")
    assert config.float("learning_rate_peak") == max(values)
    return float(torch.tensor(values)[sum(global_train_step >= s for s in steps)])
"""


@pytest.mark.slow
def test_i6_experiments_style_config_trains_without_unknown_key_warnings(tmp_path):
    result = run_rnn(tmp_path, I6_EXPERIMENTS_CONFIG)
    assert result.returncode == 0, result.stderr
    assert "not used" not in result.stdout + result.stderr
    assert "did you mean" not in result.stdout + result.stderr
    assert (tmp_path / "out" / "epoch.001.pt").exists()


@pytest.mark.slow
def test_config_function_reads_the_config_global_and_unread_keys_are_reported_after_the_task(tmp_path):
    result = run_rnn(
        tmp_path,
        """
        task = "config:show"
        hidden = 7
        hiden_size = 3  # not read by anything: reported at the end of the task


        def show():
            print(f"hidden={config.int('hidden', 512)}")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "hidden=7" in result.stdout
    assert "config key 'hiden_size' is set but not used by anything" in result.stdout + result.stderr
