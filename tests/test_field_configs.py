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


MAINLINE_CONFIG = """
import torch
import returnn.frontend as rf
from returnn.tensor import TensorDict, batch_dim

backend = "torch"
train = {"class": "Task12AXDataset", "num_seqs": 20}
dev = {"class": "Task12AXDataset", "num_seqs": 6, "fixed_random_seed": 1}
forward = {"class": "Task12AXDataset", "num_seqs": 3, "fixed_random_seed": 2}
extern_data = {"data": {"dim": 9}, "classes": {"dim": 2, "sparse": True, "available_for_inference": False}}
model_outputs = {"output": {"dim": 2}}
batch_size = 400
max_seqs = 5
optimizer = {"class": "adam"}
learning_rate = 0.01
model = "out/model"
num_epochs = 1


def get_model(*, epoch, step, **_kwargs):
    return torch.nn.Sequential(torch.nn.Linear(9, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def train_step(*, model, extern_data: TensorDict, **_kwargs):
    data = extern_data["data"]
    lengths = data.dims[1].dyn_size_ext.raw_tensor
    logits = model(data.raw_tensor)
    packed = torch.nn.utils.rnn.pack_padded_sequence(logits, lengths, batch_first=True, enforce_sorted=False)
    targets = torch.nn.utils.rnn.pack_padded_sequence(
        extern_data["classes"].raw_tensor, lengths, batch_first=True, enforce_sorted=False
    )
    loss = torch.nn.functional.cross_entropy(packed.data, targets.data.long(), reduction="none")
    rf.get_run_ctx().mark_as_loss(loss, "ce")
    rf.get_run_ctx().mark_as_loss(packed.data.argmax(-1) != targets.data, "fer", as_error=True)


def forward_step(*, model, extern_data: TensorDict):
    data = extern_data["data"]
    expected = rf.get_run_ctx().expected_outputs["output"]
    expected.dims[1].dyn_size_ext.raw_tensor = data.dims[1].dyn_size_ext.raw_tensor
    rf.get_run_ctx().mark_as_default_output(model(data.raw_tensor))
"""

CALLBACK_CONFIG = """
from returnn.forward_iface import ForwardCallbackIface


class WriteLengths(ForwardCallbackIface):
    def init(self, *, model):
        self.lines = []

    def process_seq(self, *, seq_tag, outputs):
        out = outputs["output"]
        size = out.dims[0].dyn_size_ext.raw_tensor
        self.lines.append(f"{seq_tag} {out.raw_tensor.shape[0]} {out.raw_tensor.shape[1]} {size}")

    def finish(self):
        with open("lengths.txt", "w") as f:
            f.write("\\n".join(self.lines) + "\\n")


forward_callback = WriteLengths
"""


@pytest.mark.slow
def test_mainline_extern_data_config_trains_and_forwards(tmp_path):
    import h5py

    from returnn.datasets import init_dataset
    from returnn.learning_rate_file import load_learning_rate_file

    trained = run_rnn(tmp_path, MAINLINE_CONFIG + "learning_rate_file = 'lr.txt'\n")
    assert trained.returncode == 0, trained.stderr
    scores = load_learning_rate_file(str(tmp_path / "lr.txt"))[1].scores
    assert sorted(scores) == ["dev_loss_ce", "dev_loss_fer", "train_loss_ce", "train_loss_fer"]
    assert 0 <= scores["dev_loss_fer"] <= 1 and scores["dev_loss_ce"] > 0
    forwarded = run_rnn(
        tmp_path, MAINLINE_CONFIG, "++task", "forward", "++load", "out/model.001.pt", "++output_file", "out.hdf"
    )
    assert forwarded.returncode == 0, forwarded.stderr
    dataset = init_dataset({"class": "Task12AXDataset", "num_seqs": 3, "fixed_random_seed": 2})
    dataset.init_seq_order(epoch=1)
    with h5py.File(tmp_path / "out.hdf", "r") as f:
        lengths = f["seqLengths"][:, 0].tolist()
        assert f["inputs"].shape == (sum(lengths), 2)
    assert lengths == [dataset.get_seq_length(i)["data"] for i in range(3)]
    forward_args = ("++task", "forward", "++load", "out/model.001.pt")
    called_back = run_rnn(tmp_path, MAINLINE_CONFIG + CALLBACK_CONFIG, *forward_args)
    assert called_back.returncode == 0, called_back.stderr
    expected = [f"{dataset.get_tag(i)} {length} 2 {length}" for i, length in enumerate(lengths)]
    assert sorted((tmp_path / "lengths.txt").read_text().splitlines()) == sorted(expected)
