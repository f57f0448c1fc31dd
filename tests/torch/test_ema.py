"""The moving average of the weights (ema_decay): its formula, where it is saved and evaluated, exact resume."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from returnn.errors import ConfigError, RunInterrupted
from returnn.learning_rate_control import load_learning_rate_file
from returnn.torch.ema import WeightAverage
from returnn.torch.engine import Engine

from .conftest import train_step


def test_average_formula_and_swap():
    model = torch.nn.BatchNorm1d(3)  # parameters and buffers, an integer buffer too
    start = {name: value.clone() for name, value in model.state_dict().items()}
    average = WeightAverage(model, 0.75)
    assert average.names == ["weight", "bias", "running_mean", "running_var"]
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(4.0)
    average.update(model)
    state = average.state_dict()
    assert torch.allclose(state["weight"], 0.75 * start["weight"] + 0.25 * 2.0)
    assert torch.allclose(state["running_mean"], 0.75 * start["running_mean"] + 0.25 * 4.0)
    with average.swapped_into(model):
        assert torch.equal(model.weight, state["weight"])
    assert torch.equal(model.weight, torch.full((3,), 2.0))


def test_saved_evaluated_and_resumed_exactly(make_config, tmp_path, assert_same_state):
    Engine(make_config("full", ema_decay=0.5)).train()
    checkpoint = torch.load(tmp_path / "full" / "epoch.002.pt", weights_only=True)
    assert checkpoint["model_ema"].keys() == checkpoint["model"].keys()
    assert not torch.equal(checkpoint["model_ema"]["out.weight"], checkpoint["model"]["out.weight"])
    scores = load_learning_rate_file(str(tmp_path / "full" / "learning_rates"))[2].error
    assert sorted(scores) == ["dev_ema_loss_ce", "dev_loss_ce", "train_loss_ce"]
    assert scores["dev_ema_loss_ce"] != scores["dev_loss_ce"]

    def stop_in_step_6(*, run_ctx, **kwargs):
        if run_ctx.global_step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        train_step(run_ctx=run_ctx, **kwargs)

    with pytest.raises(RunInterrupted):
        Engine(make_config("resumed", ema_decay=0.5, train_step=stop_in_step_6)).train()
    Engine(make_config("resumed", ema_decay=0.5)).train()
    assert_same_state(checkpoint, torch.load(tmp_path / "resumed" / "epoch.002.pt", weights_only=True))
    assert (tmp_path / "resumed" / "learning_rates").read_text() == (tmp_path / "full" / "learning_rates").read_text()


def test_bad_decay(make_config):
    with pytest.raises(ConfigError, match=r"'ema_decay': expected a number in \[0, 1\), e.g. 0.999, got 1.5"):
        WeightAverage.decay_from_config(make_config(ema_decay=1.5))
