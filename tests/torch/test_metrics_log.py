"""Metrics loggers: the CSV file and TensorBoard, read back; after a restart no step is missing or doubled."""

from __future__ import annotations

import os
import signal

import pytest

from returnn.errors import ConfigError, RunInterrupted
from returnn.learning_rate_control import load_learning_rate_file
from returnn.torch.engine import Engine
from returnn.torch.metrics_log import MetricsLog, read_metrics_csv

from .conftest import train_step


def _signal_at(global_step: int, signum: int):
    def step(*, run_ctx, **kwargs):
        if run_ctx.global_step == global_step:
            os.kill(os.getpid(), signum)
        train_step(run_ctx=run_ctx, **kwargs)

    return step


def _keys(rows: list[dict]) -> list[tuple]:
    return [(row["kind"], row["epoch"], row["global_step"], row["key"]) for row in rows]


def test_csv_holds_step_and_epoch_metrics(make_config, tmp_path):
    Engine(make_config(metrics_csv=str(tmp_path / "logs" / "metrics.csv"), metrics_log_interval_steps=2)).train()
    rows = read_metrics_csv(str(tmp_path / "logs" / "metrics.csv"))
    steps = [row for row in rows if row["kind"] == "step"]
    assert sorted({row["global_step"] for row in steps}) == [2, 4, 6, 8]
    assert {row["key"] for row in steps} == {"loss_ce", "learning_rate", "grad_norm"}
    epochs = {(row["epoch"], row["key"]): row["value"] for row in rows if row["kind"] == "epoch"}
    for epoch, data in load_learning_rate_file(str(tmp_path / "learning_rates")).items():
        assert epochs[epoch, "learning_rate"] == data.learning_rate
        assert {key: epochs[epoch, key] for key in data.error} == data.error
    assert len(_keys(rows)) == len(set(_keys(rows)))


@pytest.mark.parametrize("checkpoint_interval_steps", [None, 5])
def test_csv_after_stop_and_restart_equals_uninterrupted(make_config, tmp_path, checkpoint_interval_steps):
    def config(name, **overrides):
        csv_path = str(tmp_path / name / "metrics.csv")
        return make_config(
            name, metrics_csv=csv_path, metrics_log_interval_steps=1, num_epochs=3, dev=None, **overrides
        )

    Engine(config("full")).train()
    # SIGTERM in step 7: mid-epoch checkpoint after it; SIGINT in step 7 with a mid-epoch checkpoint at step 5:
    # steps 6 and 7 were logged after the checkpoint, and are logged again after the restart
    signum = signal.SIGTERM if checkpoint_interval_steps is None else signal.SIGINT
    with pytest.raises(RunInterrupted if signum == signal.SIGTERM else KeyboardInterrupt):
        stopping = config(
            "resumed", train_step=_signal_at(6, signum), checkpoint_interval_steps=checkpoint_interval_steps
        )
        Engine(stopping).train()
    Engine(config("resumed")).train()
    full = read_metrics_csv(str(tmp_path / "full" / "metrics.csv"))
    resumed = read_metrics_csv(str(tmp_path / "resumed" / "metrics.csv"))
    assert _keys(resumed) == _keys(full)
    assert [row["value"] for row in resumed] == [row["value"] for row in full]  # the training is bit-exact


def test_tensorboard_events(make_config, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = tmp_path / "tb"
    Engine(make_config(tensorboard_dir=str(log_dir), metrics_log_interval_steps=1)).train()
    events = EventAccumulator(str(log_dir))
    events.Reload()
    assert [event.step for event in events.Scalars("step/loss_ce")] == list(range(1, 9))
    assert [event.step for event in events.Scalars("epoch/dev_loss_ce")] == [1, 2]


def test_tensorboard_without_the_package(make_config, tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"'tensorboard_dir' needs the package tensorboard: pip install"):
            MetricsLog.from_config(make_config(tensorboard_dir=str(tmp_path)), resume_step=0, first_epoch=1)
    else:
        pytest.skip("tensorboard is installed")


def test_bad_interval(make_config):
    with pytest.raises(ConfigError, match=r"'metrics_log_interval_steps': expected an int >= 1, got 0"):
        MetricsLog.from_config(make_config(metrics_log_interval_steps=0), resume_step=0, first_epoch=1)


def test_tensorboard_after_stop_and_restart_has_each_step_once(make_config, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def config(**overrides):
        return make_config(tensorboard_dir=str(tmp_path / "tb"), metrics_log_interval_steps=1, dev=None, **overrides)

    with pytest.raises(KeyboardInterrupt):  # steps 6 and 7 are logged after the mid-epoch checkpoint of step 5
        Engine(config(train_step=_signal_at(6, signal.SIGINT), checkpoint_interval_steps=5)).train()
    Engine(config()).train()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [event.step for event in events.Scalars("step/loss_ce")] == list(range(1, 9))
    assert [event.step for event in events.Scalars("epoch/train_loss_ce")] == [1, 2]


def test_csv_after_stop_in_evaluation_and_restart_equals_uninterrupted(make_config, tmp_path):
    def config(name, **overrides):
        return make_config(
            name, metrics_csv=str(tmp_path / name / "metrics.csv"), metrics_log_interval_steps=1, **overrides
        )

    def step(*, model, run_ctx, **kwargs):
        if not model.training and run_ctx.epoch == 1:  # the epoch's rows are not logged yet
            os.kill(os.getpid(), signal.SIGTERM)
        train_step(model=model, run_ctx=run_ctx, **kwargs)

    Engine(config("full")).train()
    with pytest.raises(RunInterrupted, match="while evaluating 'dev'"):
        Engine(config("resumed", train_step=step)).train()
    Engine(config("resumed")).train()  # evaluates dev of epoch 1, then logs the epoch
    full = read_metrics_csv(str(tmp_path / "full" / "metrics.csv"))
    resumed = read_metrics_csv(str(tmp_path / "resumed" / "metrics.csv"))
    assert _keys(resumed) == _keys(full)
    assert [row["value"] for row in resumed] == [row["value"] for row in full]
