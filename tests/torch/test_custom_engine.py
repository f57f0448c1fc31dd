"""A CustomEngine that overrides every hook; and one defined in a config file, run through the command line."""

from __future__ import annotations

import os
import textwrap
from collections import Counter

import torch

from returnn.__main__ import main
from returnn.learning_rate_control import load_learning_rate_file
from returnn.torch.engine import Engine


class RecordingEngine(Engine):
    """Overrides every hook: records the call, delegates, and changes a little on the way."""

    def __init__(self, config):
        super().__init__(config)
        self.calls: list[str] = []

    def build_model(self, *, epoch, step):
        self.calls.append(f"build_model(epoch={epoch}, step={step})")
        return super().build_model(epoch=epoch, step=step)

    def build_updater(self, model):
        self.calls.append("build_updater")
        updater = super().build_updater(model)
        assert isinstance(updater.optimizer, torch.optim.SGD)
        return updater

    def build_data_loader(self, name, dataset, *, mode):
        self.calls.append(f"build_data_loader({name}, {mode})")
        return super().build_data_loader(name, dataset, mode=mode)

    def run_train_step(self, data, run_ctx):
        self.calls.append("run_train_step")
        return super().run_train_step(data, run_ctx)

    def optimizer_step(self, step_values):
        self.calls.append("optimizer_step")
        return super().optimizer_step(step_values)

    def evaluate_dataset(self, name, data_loader):
        self.calls.append(f"evaluate_dataset({name})")
        scores = super().evaluate_dataset(name, data_loader)
        scores[f"{name}_custom"] = 42.0
        return scores

    def on_epoch_start(self, epoch):
        self.calls.append(f"on_epoch_start({epoch})")
        super().on_epoch_start(epoch)
        self.updater.set_epoch_learning_rate(epoch, 0.5 / epoch)  # a schedule of its own

    def on_epoch_end(self, epoch, scores):
        self.calls.append(f"on_epoch_end({epoch}, {sorted(scores)})")
        super().on_epoch_end(epoch, scores)

    def save_checkpoint(self, epoch):
        self.calls.append(f"save_checkpoint({epoch})")
        super().save_checkpoint(epoch)

    def load_checkpoint(self, path):
        self.calls.append(f"load_checkpoint({os.path.basename(path)})")
        return super().load_checkpoint(path)


def test_every_hook_is_called(make_config, tmp_path):
    config = make_config(optimizer={"class": "sgd"}, num_epochs=2)
    engine = RecordingEngine(config)
    engine.train()
    counts = Counter(engine.calls)
    assert counts["run_train_step"] == counts["optimizer_step"] == 8
    assert [call for call in engine.calls if call not in ("run_train_step", "optimizer_step")] == [
        "build_model(epoch=1, step=0)",
        "build_updater",
        "build_data_loader(train, train)",
        "build_data_loader(dev, eval)",
        "on_epoch_start(1)",
        "save_checkpoint(1)",
        "evaluate_dataset(dev)",
        "on_epoch_end(1, ['dev_custom', 'dev_loss_ce', 'train_loss_ce'])",
        "on_epoch_start(2)",
        "save_checkpoint(2)",
        "evaluate_dataset(dev)",
        "on_epoch_end(2, ['dev_custom', 'dev_loss_ce', 'train_loss_ce'])",
    ]
    epochs = load_learning_rate_file(str(tmp_path / "learning_rates"))
    assert epochs[2].error["dev_custom"] == 42.0
    assert torch.load(tmp_path / "models" / "epoch.002.pt", weights_only=True)["effective_learning_rate"] == 0.25

    resumed = RecordingEngine(make_config(optimizer={"class": "sgd"}, num_epochs=3))
    resumed.train()
    assert resumed.calls[:3] == ["load_checkpoint(epoch.002.pt)", "build_model(epoch=3, step=8)", "build_updater"]
    assert resumed.calls[3] == "load_checkpoint(epoch.002.opt.pt)"


CONFIG = """\
#!rnn.py
import torch
from returnn.torch.engine import Engine

task = "train"
model = "models/epoch"
learning_rate_file = "learning_rates"
num_epochs = 1
device = "cpu"
num_workers_per_gpu = 0
batch_size = 20
optimizer = {"class": "adam", "epsilon": 1e-8}
train = {"class": "DummyDataset", "input_dim": 3, "output_dim": 2, "num_seqs": 4, "seq_len": 5}
log = ["log.txt"]


def get_model(*, epoch, step, **kwargs):
    return torch.nn.Linear(3, 2)


def train_step(*, model, data, run_ctx, **kwargs):
    logits = model(data["data"].float())
    run_ctx.mark_as_loss(logits.square().sum(), "sq", inv_norm_factor=data["data:size1"].sum())


class CustomEngine(Engine):
    def on_epoch_end(self, epoch, scores):
        super().on_epoch_end(epoch, scores)
        with open("custom.txt", "w") as f:
            f.write(f"{epoch} {sorted(scores)}")
"""


def test_custom_engine_from_config_file_through_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.config").write_text(CONFIG)
    assert main(["exp.config"]) == 0
    assert (tmp_path / "custom.txt").read_text() == "1 ['train_loss_sq']"
    assert sorted(os.listdir(tmp_path / "models")) == ["epoch.001.opt.pt", "epoch.001.pt"]
    assert "epoch=1 train_loss_sq=" in (tmp_path / "log.txt").read_text()
    assert main(["exp.config", "++task", "forward"]) == 2  # no forward_step: a user error, exit code 2
    text = textwrap.dedent(CONFIG) + "\nbatch_sise = 10\n"
    (tmp_path / "typo.config").write_text(text)
    assert main(["typo.config"]) == 2
