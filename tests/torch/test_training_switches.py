"""Early stopping, debug limits, fast_dev_run and torch_compile."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from returnn.errors import ConfigError
from returnn.learning_rate_control import load_learning_rate_file
from returnn.torch.engine import Engine
from returnn.torch.training_switches import EarlyStopping

from .conftest import train_step


def test_early_stopping_rule():
    stopping = EarlyStopping("dev_loss_ce", patience=2, min_delta=0.1)

    def scores(*values):
        return {epoch: {"dev_loss_ce": value} for epoch, value in enumerate(values, start=1)}

    assert stopping.reason(scores(3.0, 2.0)) is None  # not enough epochs
    assert stopping.reason(scores(3.0, 2.0, 1.95, 2.5)) == (
        "early_stopping: dev_loss_ce has not improved by more than 0.1 in the last 2 epochs (best 2, epoch 3)"
    )
    assert stopping.reason(scores(3.0, 2.0, 2.5, 1.85)) is None  # improved by 0.15
    assert stopping.reason({1: {}, 2: {"dev_loss_ce": 1.0}}) is None
    with pytest.raises(ConfigError, match=r"'early_stopping': expected \{'key': 'dev_loss_ce'"):
        EarlyStopping.from_config_value({"patience": 2})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['mode'\]"):
        EarlyStopping.from_config_value({"key": "x", "mode": "min"})


def test_early_stopping_ends_training_and_a_restart_agrees(make_config, tmp_path, caplog):
    # the learning rate 0 keeps every score as it is: no improvement after epoch 1
    config = make_config(num_epochs=6, learning_rate=0.0, early_stopping={"key": "train_loss_ce", "patience": 2})
    with caplog.at_level(logging.INFO, logger="returnn"):
        Engine(config).train()
    assert list(load_learning_rate_file(str(tmp_path / "learning_rates"))) == [1, 2, 3]
    assert "has not improved by more than 0 in the last 2 epochs (best" in caplog.text
    assert "training ends before epoch 4" in caplog.text
    Engine(make_config(num_epochs=6, learning_rate=0.0, early_stopping={"key": "train_loss_ce", "patience": 2})).train()
    assert list(load_learning_rate_file(str(tmp_path / "learning_rates"))) == [1, 2, 3]


@pytest.mark.parametrize("limit, steps", [({"max_steps_per_epoch": 3}, 3), ({"max_seqs_per_epoch": 4}, 2)])
def test_debug_limits_per_epoch(make_config, tmp_path, limit, steps):
    Engine(make_config(num_epochs=2, **limit)).train()  # 4 steps of 3 sequences without a limit
    assert torch.load(tmp_path / "models" / "epoch.002.pt", weights_only=True)["step"] == 2 * steps


def test_fast_dev_run_keeps_nothing(make_config, tmp_path):
    seen = []

    def step(*, model, run_ctx, **kwargs):
        seen.append("train" if model.training else "eval")
        train_step(model=model, run_ctx=run_ctx, **kwargs)

    engine = Engine(make_config(num_epochs=5, fast_dev_run=True, train_step=step))
    directory = os.path.dirname(engine.options.model_prefix)
    engine.train()
    assert seen == ["train", "train", "eval"]  # dev has one batch
    assert sorted(os.listdir(directory)) == ["epoch.001.opt.pt", "epoch.001.pt", "learning_rates"]
    assert not os.path.exists(tmp_path / "models") and not os.path.exists(tmp_path / "learning_rates")
    del engine
    assert not os.path.exists(directory)
    with pytest.raises(ConfigError, match=r"'fast_dev_run': expected True or an int >= 1, got -1"):
        Engine(make_config(fast_dev_run=-1))


def test_torch_compile_trains_and_keeps_parameter_names(make_config, tmp_path, assert_same_state):
    Engine(make_config("eager", num_epochs=1)).train()
    Engine(make_config("compiled", num_epochs=1, torch_compile={"backend": "eager"})).train()
    eager = torch.load(tmp_path / "eager" / "epoch.001.pt", weights_only=True)
    compiled = torch.load(tmp_path / "compiled" / "epoch.001.pt", weights_only=True)
    assert_same_state(eager["model"], compiled["model"])


def _failing_backend(graph_module, example_inputs):
    raise RuntimeError("this backend cannot compile")


def test_torch_compile_falls_back_with_a_warning(make_config, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="returnn"):
        Engine(make_config(num_epochs=1, torch_compile={"backend": _failing_backend})).train()
    warnings = [record.getMessage() for record in caplog.records if "torch_compile" in record.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("torch_compile: compiling FrameClassifier.forward failed (")
    assert os.path.exists(tmp_path / "models" / "epoch.001.pt")
    with pytest.raises(ConfigError, match=r"'torch_compile': expected True/False or a dict"):
        Engine(make_config(torch_compile="yes"))
