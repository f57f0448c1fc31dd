"""Network dicts end to end: ``python rnn.py`` on network configs as RETURNN users write them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from returnn.datasets.hdf import HDFDataset

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.slow

# The shape of RETURNN's 12AX demos: TensorFlow-era keys included, unchanged.
CONFIG_12AX = """#!rnn.py
import os
from returnn.util.basic import get_login_username
demo_name, _ = os.path.splitext(__file__)
use_tensorflow = True
tf_session_opts = {"log_device_placement": False}
tf_log_memory_usage = True
task = "train"
train = {"class": "Task12AXDataset", "num_seqs": 150}
dev = {"class": "Task12AXDataset", "num_seqs": 40, "fixed_random_seed": 1}
forward = {"class": "Task12AXDataset", "num_seqs": 7, "fixed_random_seed": 3}
num_inputs = 9
num_outputs = 2
batching = "random"
batch_size = 2000
max_seqs = 40
chunking = "0"
adam = True
learning_rate = 0.01
model = "out/model"
learning_rate_file = "out/learning_rates"
num_epochs = 3
log_verbosity = 4
"""

NETWORKS = {
    "feed_forward": {
        "fw1": {"class": "linear", "activation": "relu", "dropout": 0.1, "n_out": 32},
        "fw2": {"class": "linear", "activation": "relu", "dropout": 0.1, "n_out": 32, "from": ["fw1"]},
        "output": {"class": "softmax", "loss": "ce", "from": ["fw2"]},
    },
    "lstm": {
        "lstm1": {"class": "rec", "unit": "lstm", "dropout": 0.1, "n_out": 16},
        "lstm2": {"class": "rec", "unit": "lstm", "dropout": 0.1, "n_out": 16, "from": ["lstm1"]},
        "output": {"class": "softmax", "loss": "ce", "from": ["lstm2"]},
    },
    "blstm": {
        f"lstm{i}_{d}": {
            "class": "rec", "unit": "NativeLstm2", "n_out": 8, "dropout": 0.1, "L2": 0.01,
            "direction": 1 if d == "fw" else -1, **({"from": [f"lstm{i - 1}_fw", f"lstm{i - 1}_bw"]} if i else {}),
        }
        for i in range(3)
        for d in ("fw", "bw")
    } | {"output": {"class": "softmax", "loss": "ce", "from": ["lstm2_fw", "lstm2_bw"]}},
}  # fmt: skip


def run(cwd: Path, config: str, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    path = cwd / "exp.config"
    path.write_text(config, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "rnn.py"), str(path), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == expect, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def scores(cwd: Path) -> dict[int, dict[str, float]]:
    from returnn.learning_rate_file import load_learning_rate_file

    return {epoch: data.scores for epoch, data in load_learning_rate_file(str(cwd / "out/learning_rates")).items()}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_the_documented_networks_train_and_the_dev_score_falls(tmp_path, name):
    proc = run(tmp_path, CONFIG_12AX + f"network = {NETWORKS[name]!r}\n")
    epochs = scores(tmp_path)
    assert set(epochs[3]) == {"train_score", "train_error", "dev_score", "dev_error"}
    assert epochs[3]["dev_score"] < epochs[1]["dev_score"]
    # the TensorFlow-era keys are taken as they are: no warning about them
    for key in ("use_tensorflow", "tf_session_opts", "num_inputs", "num_outputs", "batching", "chunking", "adam"):
        assert f"'{key}'" not in proc.stdout + proc.stderr, key


def test_forward_writes_the_output_layer_and_compute_priors_the_log_priors(tmp_path):
    config = CONFIG_12AX.replace("num_epochs = 3", "num_epochs = 1") + f"network = {NETWORKS['lstm']!r}\n"
    run(tmp_path, config)
    run(tmp_path, config, "++task", "forward", "++output_file", "fwd.hdf")
    dataset = HDFDataset(files=[str(tmp_path / "fwd.hdf")])
    dataset.init_seq_order(1)
    dataset.load_seqs(0, 7)
    assert dataset.num_seqs == 7
    probs = dataset.get_data(0, "data")
    assert probs.shape[1] == 2 and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    run(tmp_path, config, "++task", "compute_priors", "++output_file", "prior.txt")
    log_priors = np.loadtxt(tmp_path / "prior.txt")
    assert log_priors.shape == (2,) and np.isclose(np.exp(log_priors).sum(), 1.0, atol=1e-6)


def test_a_restarted_run_equals_an_uninterrupted_one(tmp_path):
    config = CONFIG_12AX + f"network = {NETWORKS['blstm']!r}\n"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir()
    resumed.mkdir()
    run(straight, config)
    run(resumed, config, "++num_epochs", "2")
    run(resumed, config)
    a = torch.load(straight / "out/model.003.pt", weights_only=True)["model"]
    b = torch.load(resumed / "out/model.003.pt", weights_only=True)["model"]
    assert list(a) == [f"lstm{i}_{d}.{p}" for i in range(3) for d in ("fw", "bw") for p in ("W", "W_re", "b")] + [
        "output.W",
        "output.b",
    ]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert scores(straight) == scores(resumed)


@pytest.mark.parametrize(
    "addition, message",
    [
        ("network = {'output': {'class': 'sofmax', 'loss': 'ce'}}", "layer class 'sofmax' is not supported yet"),
        (
            "network = {'output': {'class': 'softmax', 'loss': 'ce'}}\ndef get_model(**kwargs):\n    pass\n",
            "defines both 'network' and 'get_model'",
        ),
        ("network = {'output': {'class': 'softmax', 'loss': 'ce', 'from': 'lstm'}}", "refers to 'lstm'"),
    ],
)
def test_bad_network_configs_exit_2_and_write_nothing(tmp_path, addition, message):
    proc = run(tmp_path, CONFIG_12AX + addition + "\n", expect=2)
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def run_two_processes(cwd: Path, *args: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*command, str(REPO / "rnn.py"), "exp.config", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_a_network_trains_with_two_processes_under_torchrun(tmp_path):
    (tmp_path / "exp.config").write_text(
        CONFIG_12AX.replace("num_epochs = 3", "num_epochs = 2") + f"network = {NETWORKS['lstm']!r}\n", encoding="utf-8"
    )
    run_two_processes(tmp_path)
    epochs = scores(tmp_path)
    assert set(epochs[2]) == {"train_score", "train_error", "dev_score", "dev_error"}
    assert epochs[2]["dev_score"] < epochs[1]["dev_score"]
    params = torch.load(tmp_path / "out/model.002.pt", weights_only=True)["model"]
    assert set(params) == {
        "lstm1.W",
        "lstm1.W_re",
        "lstm1.b",
        "lstm2.W",
        "lstm2.W_re",
        "lstm2.b",
        "output.W",
        "output.b",
    }
