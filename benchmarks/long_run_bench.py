#!/usr/bin/env python3
"""What the long-run features cost: per-step work of progress, metrics logging and stop handling, and the time of a
mid-epoch checkpoint against an epoch checkpoint of the same model.

    python benchmarks/long_run_bench.py steps --steps 20000
    python benchmarks/long_run_bench.py checkpoints --hidden 2048 --reps 5

``steps`` runs, per synthetic step, exactly what the engine adds per train step for these features:
``Progress.timed`` around the batch, ``Progress.step`` (progress line due every 60 s, metrics CSV row every 100
steps) and ``RunControl.after_step`` (with the SIGTERM / SIGUSR1 handlers installed and ``max_wall_time`` set, no
checkpoint due), and reports microseconds per step. It also times the gradient norm that the updater now computes
at every update without ``gradient_clip_norm`` (``torch.nn.utils.get_total_norm``) for the engine benchmark's BLSTM.

``checkpoints`` trains one short epoch of a model with two Linear layers of ``hidden`` units (Adam), then times
``Engine.save_checkpoint`` (``epoch.NNN.pt`` and ``epoch.NNN.opt.pt``) and the mid-epoch checkpoint
(``epoch.mid_epoch.pt``, model and optimizer in one file), alternating, and reports the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from returnn.config import Config
from returnn.torch.engine import Engine
from returnn.torch.metrics_log import MetricsLog
from returnn.torch.progress import Progress, ProgressOptions
from returnn.torch.run_control import RunControl, RunControlOptions
from returnn.torch.scores import LossTotals


class _EngineStub:
    """The few engine attributes that RunControl.after_step reads when no checkpoint is due."""

    global_step = 0
    epoch = 1
    data_parallel = None


def bench_steps(num_steps: int) -> None:
    batch = {"seq_tag": [f"seq-{i}" for i in range(64)], "data:size1": torch.full((64,), 400)}
    with tempfile.TemporaryDirectory() as directory:
        metrics = MetricsLog(csv_path=os.path.join(directory, "metrics.csv"), interval_steps=100)
        progress = Progress(1, 64 * num_steps, ProgressOptions(60.0, bar=False), metrics_log=metrics)
        control = RunControl(RunControlOptions(max_wall_time_sec=10**9))
        engine, totals = _EngineStub(), LossTotals()
        with control.running():
            start = time.perf_counter()
            for _ in progress.timed(batch for _ in range(num_steps)):
                engine.global_step += 1
                progress.step(engine.global_step, {"ce": 1.0}, batch, learning_rate=1e-3, grad_norm=0.5)
                control.after_step(engine, totals, progress)
            elapsed = time.perf_counter() - start
        metrics.close()
    print(f"per-step work of progress, metrics and stop handling: {elapsed / num_steps * 1e6:.1f} us per step")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from engine_bench import get_model

    model = get_model(epoch=1, step=0)
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    grads = [param.grad for param in model.parameters()]
    times = []
    for _ in range(200):
        start = time.perf_counter()
        torch.nn.utils.get_total_norm(grads).item()
        times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters())
    median_us = statistics.median(times) * 1e6
    print(f"gradient norm of the engine benchmark's BLSTM ({params} parameters): {median_us:.0f} us")


def bench_checkpoints(hidden: int, reps: int) -> None:
    def get_model(**kwargs: Any) -> torch.nn.Module:
        layers = [torch.nn.Linear(5, hidden), torch.nn.Linear(hidden, hidden), torch.nn.Linear(hidden, 3)]
        return torch.nn.Sequential(*layers)

    def train_step(*, model, data, run_ctx, **kwargs):
        logits = model(data["data"].float())
        run_ctx.mark_as_loss(logits.logsumexp(-1).sum(), "lse")

    with tempfile.TemporaryDirectory() as directory:
        config = Config(
            {
                "get_model": get_model,
                "train_step": train_step,
                "model": os.path.join(directory, "epoch"),
                "num_epochs": 1,
                "train": {"class": "DummyDataset", "input_dim": 5, "output_dim": 3, "num_seqs": 4, "seq_len": 3},
                "optimizer": {"class": "adam"},
                "learning_rate": 1e-3,
                "batch_size": 100,
                "device": "cpu",
            }
        )
        engine = Engine(config)
        engine.train()
        params = sum(p.numel() for p in engine.model.parameters())
        epoch_times, mid_times = [], []
        totals, progress = LossTotals(), Progress(1, None)
        for _ in range(reps):
            start = time.perf_counter()
            engine.save_checkpoint(1)
            epoch_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            engine.run_control._save(engine, totals, progress)
            mid_times.append(time.perf_counter() - start)
        sizes = {name: os.path.getsize(os.path.join(directory, name)) for name in sorted(os.listdir(directory))}
    print(f"model: {params} parameters; files: {sizes}")
    print(
        f"epoch checkpoint (model + optimizer files): median {statistics.median(epoch_times):.3f} s; "
        f"mid-epoch checkpoint (one file): median {statistics.median(mid_times):.3f} s ({reps} each, alternating)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    steps = commands.add_parser("steps")
    steps.add_argument("--steps", type=int, default=20000)
    checkpoint = commands.add_parser("checkpoints")
    checkpoint.add_argument("--hidden", type=int, default=2048)
    checkpoint.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if args.command == "steps":
        bench_steps(args.steps)
    else:
        bench_checkpoints(args.hidden, args.reps)


if __name__ == "__main__":
    main()
