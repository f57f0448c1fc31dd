"""What a training shows during an epoch: progress lines, per-step lines, the epoch's resource line."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from returnn.errors import ConfigError
from returnn.log import log
from returnn.torch.engine import Engine
from returnn.torch.progress import Progress, ProgressOptions

from .conftest import train_step


def _batch(num_seqs: int, seq_len: int) -> dict:
    return {"seq_tag": [f"seq-{i}" for i in range(num_seqs)], "data:size1": torch.full((num_seqs,), seq_len)}


def test_plain_progress_line_every_interval(caplog):
    now = [0.0]
    progress = Progress(3, 40, ProgressOptions(10.0, bar=False), clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="returnn.torch.progress"):
        for step in range(1, 5):
            now[0] += 4.0  # a step every 4 s: lines after 12 s and (12 + 10 =) 22 s, i.e. after steps 3 (and none at 4)
            progress.step(step, {"ce": step * 1.0}, _batch(5, 10), learning_rate=0.001, grad_norm=0.5)
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "epoch=3 progress steps=3 seqs=15/40 (37.5%) loss_ce=2 lr=0.001 seqs/s=1.2 frames/s=12 eta=20.0s",
    ]
    assert not any("\r" in line for line in lines)


def test_epoch_summary_line():
    now = [0.0]
    progress = Progress(1, None, ProgressOptions(0.0, bar=False), clock=lambda: now[0])
    batches = progress.timed(iter([_batch(2, 3), _batch(2, 3)]))
    for data in batches:
        now[0] += 1.0  # compute
        progress.step(1, {"ce": 1.0}, data, grad_norm=2.0)
        progress.step(1, {"ce": 1.0}, data, grad_norm=None)
    summary = progress.epoch_summary(num_steps=2, num_seqs=4, skipped_updates=1)
    assert re.fullmatch(
        r"epoch=1 part=train steps=2 seqs=4 grad_norm=2 skipped_updates=1 peak_mem=\d+MB data_time=0.0s "
        r"compute_time=2.0s",
        summary,
    ), summary


def test_log_progress_interval_sec_option(make_config):
    assert ProgressOptions.from_config(make_config()).interval_sec == 60.0
    with pytest.raises(ConfigError, match=r"'log_progress_interval_sec': expected a number >= 0, got 'often'"):
        ProgressOptions.from_config(make_config(log_progress_interval_sec="often"))


def test_training_at_default_verbosity_shows_progress_and_resources(make_config, capsys):
    def step_with_inf_gradient_in_step_2(*, model, run_ctx, **kwargs):
        train_step(model=model, run_ctx=run_ctx, **kwargs)
        if run_ctx.global_step == 1:
            run_ctx.mark_as_loss(model.out.bias.sum() * float("inf"), "inf")

    config = make_config(
        num_epochs=1,
        log_progress_interval_sec=1e-9,
        gradient_clip_norm=100.0,
        stop_on_nonfinite_train_score=False,
        train_step=step_with_inf_gradient_in_step_2,
    )
    log.init_by_config(config)
    Engine(config).train()
    out = capsys.readouterr().out
    progress_lines = [line for line in out.splitlines() if line.startswith("epoch=1 progress ")]
    assert len(progress_lines) == 4
    assert re.fullmatch(
        r"epoch=1 progress steps=1 seqs=3/12 \(25.0%\) loss_ce=\S+ lr=0.01 seqs/s=\S+ frames/s=\d+ "
        r"eta=\S+s",
        progress_lines[0],
    ), progress_lines[0]
    summary = [line for line in out.splitlines() if line.startswith("epoch=1 part=train ")]
    assert len(summary) == 1
    assert re.fullmatch(
        r"epoch=1 part=train steps=4 seqs=12 grad_norm=\S+ skipped_updates=1 peak_mem=\d+MB data_time=\S+s "
        r"compute_time=\S+s",
        summary[0],
    ), summary[0]
    assert "non-finite gradient norm, update skipped" in out


def test_per_step_line_at_verbosity_5_has_grad_norm_and_learning_rate(make_config, capsys):
    config = make_config(num_epochs=1, log_verbosity=5, accum_grad_multiple_step=2)
    log.init_by_config(config)
    Engine(config).train()
    step_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch=1 step=")]
    assert " grad_norm=" not in step_lines[0]  # no update in step 1 of 2
    assert re.search(r" grad_norm=[\d.]+ lr=0.01 data_time=[\d.]+s peak_mem=\d+MB$", step_lines[1]), step_lines[1]


def test_live_bar_with_tqdm(caplog, capsys):
    pytest.importorskip("tqdm")
    with caplog.at_level(logging.INFO, logger="returnn.torch.progress"):
        progress = Progress(1, 4, ProgressOptions(1.0, bar=True))
        progress.step(1, {"ce": 1.0}, _batch(2, 3), learning_rate=0.1)
        assert progress._bar.n == 2
        progress.close()
    assert not caplog.records  # the bar replaces the progress lines
    assert "epoch 1" in capsys.readouterr().err
