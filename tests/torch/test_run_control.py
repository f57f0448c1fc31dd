"""Mid-epoch checkpoints and early stops (signals, time limits): a stopped and restarted training equals one that ran
through, bit for bit."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import torch

from returnn.errors import CheckpointError, ConfigError, RunInterrupted
from returnn.learning_rate_control import load_learning_rate_file
from returnn.torch.engine import Engine
from returnn.torch.run_control import RunControlOptions, mid_epoch_filename, parse_duration

from .conftest import train_step


def _load(path) -> dict:
    return torch.load(path, weights_only=True)


def _signal_at(global_step: int, signum: int = signal.SIGTERM):
    """A train_step that sends ``signum`` to this process at ``global_step`` (the step itself still finishes)."""

    def step(*, run_ctx, **kwargs: Any) -> None:
        if run_ctx.global_step == global_step:
            os.kill(os.getpid(), signum)
        train_step(run_ctx=run_ctx, **kwargs)

    return step


def _assert_same_run(tmp_path, assert_same_state, full: str, resumed: str, last_epoch: int) -> None:
    for name in (f"epoch.{last_epoch:03d}.pt", f"epoch.{last_epoch:03d}.opt.pt"):
        assert_same_state(_load(tmp_path / full / name), _load(tmp_path / resumed / name))
    assert (tmp_path / resumed / "learning_rates").read_text() == (tmp_path / full / "learning_rates").read_text()
    assert not os.path.exists(mid_epoch_filename(str(tmp_path / resumed / "epoch")))


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="plain"),
        pytest.param({"accum_grad_multiple_step": 3}, id="accumulation"),
        pytest.param({"chunking": "4:2"}, id="chunking"),
        pytest.param(
            {"num_workers_per_gpu": 1, "chunking": "4:2", "accum_grad_multiple_step": 2, "dev": None},
            id="worker-chunking-accumulation",
            marks=pytest.mark.slow,  # starts DataLoader worker processes
        ),
    ],
)
def test_sigterm_mid_epoch_then_restart_equals_uninterrupted(make_config, tmp_path, assert_same_state, options):
    Engine(make_config("full", **options)).train()
    steps_per_epoch = _load(tmp_path / "full" / "epoch.001.pt")["step"]  # 4; more with chunking
    # the signal comes in the second step of epoch 2
    with pytest.raises(RunInterrupted, match=r"received SIGTERM: stopped in epoch 2 after step 2 of it"):
        Engine(make_config("resumed", train_step=_signal_at(steps_per_epoch + 1), **options)).train()
    mid = _load(mid_epoch_filename(str(tmp_path / "resumed" / "epoch")))
    assert (mid["kind"], mid["epoch"], mid["step"], mid["epoch_start_step"]) == (
        "mid_epoch",
        2,
        steps_per_epoch + 2,
        steps_per_epoch,
    )
    assert [process["num_batches"] for process in mid["processes"]] == [2]
    assert sorted(os.listdir(tmp_path / "resumed")) == [
        "epoch.001.opt.pt",
        "epoch.001.pt",
        "epoch.mid_epoch.pt",
        "learning_rates",
    ]
    Engine(make_config("resumed", **options)).train()
    _assert_same_run(tmp_path, assert_same_state, "full", "resumed", 2)


def test_sigusr1_in_first_epoch_with_periodic_checkpoints(make_config, tmp_path, assert_same_state):
    Engine(make_config("full", num_epochs=1)).train()
    config = make_config("resumed", num_epochs=1, checkpoint_interval_steps=1, train_step=_signal_at(2, signal.SIGUSR1))
    with pytest.raises(RunInterrupted, match="received SIGUSR1"):
        Engine(config).train()
    assert _load(tmp_path / "resumed" / "epoch.mid_epoch.pt")["step"] == 3
    Engine(make_config("resumed", num_epochs=1)).train()
    _assert_same_run(tmp_path, assert_same_state, "full", "resumed", 1)


def test_periodic_mid_epoch_checkpoint_is_replaced_and_removed_at_epoch_end(make_config, tmp_path):
    written = []

    def step(*, run_ctx, **kwargs):
        path = mid_epoch_filename(str(tmp_path / "models" / "epoch"))
        if os.path.exists(path):
            written.append(_load(path)["step"])
        train_step(run_ctx=run_ctx, **kwargs)

    Engine(make_config(num_epochs=1, checkpoint_interval_steps=2, train_step=step)).train()
    assert written == [2, 2]  # seen in steps 3 and 4; the one of step 4 is deleted with the epoch's checkpoint
    assert sorted(os.listdir(tmp_path / "models")) == ["epoch.001.opt.pt", "epoch.001.pt"]


def test_checkpoint_interval_minutes(make_config, tmp_path):
    seen = []

    def step(*, run_ctx, **kwargs):
        path = mid_epoch_filename(str(tmp_path / "models" / "epoch"))
        seen.append(_load(path)["step"] if os.path.exists(path) else None)
        train_step(run_ctx=run_ctx, **kwargs)

    Engine(make_config(num_epochs=1, checkpoint_interval_minutes=1e-9, train_step=step)).train()
    # a checkpoint after every train step (always due); gone when dev is evaluated (the epoch's checkpoint exists)
    assert seen == [None, 1, 2, 3, None]
    assert sorted(os.listdir(tmp_path / "models")) == ["epoch.001.opt.pt", "epoch.001.pt"]


def test_max_wall_time_stops_with_mid_epoch_checkpoint(make_config, tmp_path):
    with pytest.raises(RunInterrupted, match=r"max_wall_time=1e-06s reached: stopped in epoch 1 after step 1"):
        Engine(make_config(max_wall_time=1e-6)).train()
    assert _load(tmp_path / "models" / "epoch.mid_epoch.pt")["step"] == 1


def test_stale_mid_epoch_checkpoint_is_ignored_and_removed(make_config, tmp_path, assert_same_state):
    Engine(make_config("full")).train()
    Engine(make_config("resumed", num_epochs=1)).train()
    # written in epoch 1, but epoch 1 was saved afterwards (a stop between the two writes)
    torch.save({"kind": "mid_epoch", "epoch": 1}, tmp_path / "resumed" / "epoch.mid_epoch.pt")
    Engine(make_config("resumed")).train()
    _assert_same_run(tmp_path, assert_same_state, "full", "resumed", 2)


def test_mid_epoch_checkpoint_of_other_data_is_an_error(make_config, tmp_path):
    with pytest.raises(RunInterrupted):
        Engine(make_config(train_step=_signal_at(2))).train()
    fewer = dict(make_config().typed_value("train"), num_seqs=3)
    with pytest.raises(CheckpointError, match=r"saved after 3 batches of the epoch, but the epoch now has only 1"):
        Engine(make_config(train=fewer)).train()


def test_stop_for_resubmission_before_an_epoch_that_would_not_fit(make_config, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_END_TIME", "0")  # long past
    config = make_config(num_epochs=3, stop_for_resubmission_when_low_time_left=True)
    with pytest.raises(RunInterrupted, match=r"the SLURM job has -\d+s left.*: stopped before epoch 2"):
        Engine(config).train()
    assert sorted(os.listdir(tmp_path / "models")) == ["epoch.001.opt.pt", "epoch.001.pt"]
    monkeypatch.delenv("SLURM_JOB_END_TIME")
    Engine(make_config(num_epochs=3, stop_for_resubmission_when_low_time_left=True)).train()
    assert _load(tmp_path / "models" / "epoch.003.pt")["step"] == 12


def test_options(make_config):
    assert parse_duration("1-02:03:04", key="k") == 93784
    assert parse_duration("03:04", key="k") == 184
    assert parse_duration(7, key="k") == 7
    options = RunControlOptions.from_config(make_config(checkpoint_interval_minutes=0.5, max_wall_time="1:00:00"))
    assert (options.checkpoint_interval_sec, options.max_wall_time_sec) == (30, 3600)
    with pytest.raises(ConfigError, match=r"'max_wall_time': expected a number of seconds > 0 or 'HH:MM:SS'"):
        RunControlOptions.from_config(make_config(max_wall_time="soon"))
    with pytest.raises(ConfigError, match=r"'checkpoint_interval_steps': expected an int > 0, got 1.5"):
        RunControlOptions.from_config(make_config(checkpoint_interval_steps=1.5))


@pytest.mark.slow  # starts a DataLoader worker process
def test_dataloader_workers_survive_the_signal(make_config, tmp_path):
    def step(*, model, run_ctx, **kwargs):
        if run_ctx.global_step == 0:  # SLURM signals every process of the job; the workers get it first here
            for worker in run_ctx.engine.data_loaders["train"].data_loader._iterator._workers:
                os.kill(worker.pid, signal.SIGTERM)
        if run_ctx.global_step == 9:
            os.kill(os.getpid(), signal.SIGTERM)
        train_step(model=model, run_ctx=run_ctx, **kwargs)

    config = make_config(num_workers_per_gpu=1, train_step=step, max_seqs=1)  # 12 steps per epoch
    with pytest.raises(RunInterrupted, match=r"received SIGTERM: stopped in epoch 1 after step 10"):
        Engine(config).train()


def test_sigterm_during_evaluation_then_restart_equals_uninterrupted(make_config, tmp_path, assert_same_state):
    dev = {**make_config().typed_value("dev"), "num_seqs": 12}  # 3 batches

    def step(*, model, run_ctx, **kwargs):
        if not model.training and run_ctx.epoch == 1 and not (tmp_path / "signalled").exists():
            (tmp_path / "signalled").touch()
            os.kill(os.getpid(), signal.SIGTERM)
        train_step(model=model, run_ctx=run_ctx, **kwargs)

    Engine(make_config("full", dev=dev)).train()
    with pytest.raises(RunInterrupted, match=r"received SIGTERM: stopped while evaluating 'dev' in epoch 1; start"):
        Engine(make_config("resumed", dev=dev, train_step=step)).train()
    assert "dev_loss_ce" not in load_learning_rate_file(str(tmp_path / "resumed" / "learning_rates"))[1].error
    Engine(make_config("resumed", dev=dev)).train()
    _assert_same_run(tmp_path, assert_same_state, "full", "resumed", 2)
