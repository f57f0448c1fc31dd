#!/usr/bin/env python3
"""The engine against a hand-written PyTorch training loop: epoch time of a small BLSTM frame classifier.

    python benchmarks/engine_bench.py make /tmp/engine_bench --num-seqs 300
    python benchmarks/engine_bench.py compare /tmp/engine_bench --epochs 1 --reps 3

``make`` writes ``train.hdf`` as ``benchmarks/pipeline_bench.py make`` does (with
:class:`~returnn.datasets.hdf.SimpleHDFWriter`): 40-dim float32 features, sequence lengths log-normal around 400
frames clipped to 100..1500, sparse int32 labels (100 classes) in segments of 2 to 12 frames.

``compare`` trains the same model (2-layer BLSTM, 64 units per direction, and a Linear layer; run padded, the
loss masked), with the same batches (greedy in corpus order, batch_size 20000 padded frames, max_seqs 128) and
the same optimizer (Adam, learning rate 1e-3) in three ways, each in its own process, alternating:

- ``loop``: a hand-written loop: h5py reads, batching and padding into numpy arrays, forward, backward, step;
- ``loop+loader``: the same loop fed by the project's data loader (``HDFDataset`` + ``build_data_loader``);
- ``engine``: ``Engine(config).train()`` with ``HDFDataset``, at log_verbosity 5 (one log line per step),
  saving a checkpoint and the learning_rates file every epoch;
- ``network``: the same as ``engine`` with the model written as a RETURNN network dict (:data:`NETWORK`: ``rec``
  layers forward and backward, each backward one exact on the padded batch, and a ``softmax`` layer with a ``ce``
  loss); its weights differ (other initialization), its epoch time is compared with ``engine``'s.

It prints the epoch time (the time inside the epochs; start-up apart) as wall-clock and as CPU time of the
process, their ratios to ``loop`` per round, and the largest weight difference to ``loop`` at the end (0: the same
computation). On a shared machine the CPU-time ratio is the steadier one; ``--threads 1`` steadies both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING

# The data file, its constants and the hand-written batches are the data pipeline benchmark's: the engine runs on the
# same data, and its reference loop is fed the same way.
from pipeline_bench import BATCH_SIZE, FEATURE_DIM, MAX_SEQS, NUM_CLASSES, REPO_ROOT, make
from pipeline_bench import _plain_batches as _hand_written_batches

if TYPE_CHECKING:  # a measured run imports torch itself (its total_s includes the import); make and compare need none
    import torch

    from returnn.torch.context import RunCtx

IMPLS = ("loop", "loop+loader", "engine", "network")

# the model of get_model as a network dict (use_normalized_loss: the same objective as train_step's)
NETWORK = {
    "lstm0_fw": {"class": "rec", "unit": "NativeLstm2", "n_out": 64, "direction": 1},
    "lstm0_bw": {"class": "rec", "unit": "NativeLstm2", "n_out": 64, "direction": -1},
    "lstm1_fw": {"class": "rec", "unit": "NativeLstm2", "n_out": 64, "direction": 1, "from": ["lstm0_fw", "lstm0_bw"]},
    "lstm1_bw": {"class": "rec", "unit": "NativeLstm2", "n_out": 64, "direction": -1, "from": ["lstm0_fw", "lstm0_bw"]},
    "output": {
        "class": "softmax",
        "loss": "ce",
        "loss_opts": {"use_normalized_loss": True},
        "from": ["lstm1_fw", "lstm1_bw"],
    },
}


# ------------------------------------------------------------------------------------------------ the model


def get_model(*, epoch: int, step: int, **kwargs: object) -> torch.nn.Module:
    """The model, as a config's get_model builds it."""
    import torch

    class BLSTMFrameClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(FEATURE_DIM, 64, num_layers=2, bidirectional=True, batch_first=True)
            self.out = torch.nn.Linear(128, NUM_CLASSES)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.out(self.lstm(features)[0])

    return BLSTMFrameClassifier()


def _loss(
    model: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame-wise cross entropy, summed over the real frames; and their count."""
    import torch

    logits = model(features)
    mask = torch.arange(features.shape[1])[None, :] < lengths[:, None]
    loss = torch.nn.functional.cross_entropy(logits[mask], labels[mask].long(), reduction="sum")
    return loss, mask.sum()


def train_step(*, model: torch.nn.Module, data: dict, run_ctx: RunCtx, **kwargs: object) -> None:
    """The config's train_step: the loss of :func:`_loss` with the frames as its inv_norm_factor."""
    loss, frames = _loss(model, data["data"], data["classes"], data["data:size1"])
    run_ctx.mark_as_loss(loss, "ce", inv_norm_factor=frames)


# ------------------------------------------------------------------------------------------------ one run


def _run_loop(impl: str, path: str, epochs: int) -> tuple[dict, object]:
    import torch

    from returnn.torch.random_state import derive_seed, seed_all

    seed_all(derive_seed(42, 1, 0))  # the engine's seed for building the model of epoch 1
    model = get_model(epoch=1, step=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = None
    if impl == "loop+loader":
        from returnn.datasets.hdf import HDFDataset
        from returnn.torch.data import DataPipelineOptions, build_data_loader

        options = DataPipelineOptions.parse(batch_size=BATCH_SIZE, max_seqs=MAX_SEQS, num_workers_per_gpu=0)
        loader = build_data_loader(HDFDataset(files=[path]), options, mode="train", device="cpu")
    epoch_seconds = epoch_cpu_seconds = 0.0
    for epoch in range(1, epochs + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        batches = (
            _hand_written_batches(path)
            if loader is None
            else ((d["data"], d["classes"], d["data:size1"]) for d in loader.iter_epoch(epoch))
        )
        model.train()
        for features, labels, lengths in batches:
            loss, frames = _loss(model, features, labels, lengths)
            (loss / frames).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        epoch_seconds += time.perf_counter() - start
        epoch_cpu_seconds += time.process_time() - cpu_start
    return {"epochs_s": epoch_seconds, "epochs_cpu_s": epoch_cpu_seconds}, model.state_dict()


def _timed_engine_class() -> type:
    from returnn.torch.engine import Engine

    class TimedEngine(Engine):
        """Times the epochs, and within them the CPU time of the steps (step function, backward, update) and of
        fetching batches: the rest is the engine's own work."""

        epoch_seconds = epoch_cpu_seconds = step_cpu_seconds = data_cpu_seconds = 0.0

        def train_epoch(self, epoch: int) -> None:
            start, cpu_start = time.perf_counter(), time.process_time()
            super().train_epoch(epoch)
            TimedEngine.epoch_seconds += time.perf_counter() - start
            TimedEngine.epoch_cpu_seconds += time.process_time() - cpu_start

        def run_train_step(self, data, run_ctx):
            cpu_start = time.process_time()
            try:
                return super().run_train_step(data, run_ctx)
            finally:
                TimedEngine.step_cpu_seconds += time.process_time() - cpu_start

        def optimizer_step(self, step_values):
            cpu_start = time.process_time()
            try:
                return super().optimizer_step(step_values)
            finally:
                TimedEngine.step_cpu_seconds += time.process_time() - cpu_start

        def build_data_loader(self, name, dataset, *, mode):
            loader = super().build_data_loader(name, dataset, mode=mode)
            iter_epoch = loader.iter_epoch

            def timed_iter_epoch(epoch):
                batches = iter_epoch(epoch)
                while True:
                    cpu_start = time.process_time()
                    batch = next(batches, None)
                    TimedEngine.data_cpu_seconds += time.process_time() - cpu_start
                    if batch is None:
                        return
                    yield batch

            loader.iter_epoch = timed_iter_epoch
            return loader

    return TimedEngine


def _run_engine(path: str, epochs: int, workdir: str, network: bool = False) -> tuple[dict, object]:
    from returnn.config import Config
    from returnn.log import log

    TimedEngine = _timed_engine_class()
    model: dict = dict(get_model=get_model, train_step=train_step)
    if network:
        extern_data = {"data": {"dim": FEATURE_DIM}, "classes": {"dim": NUM_CLASSES, "sparse": True}}
        model = dict(network=NETWORK, extern_data=extern_data)
    config = Config(
        dict(
            **model,
            train={"class": "HDFDataset", "files": [path]},
            batch_size=BATCH_SIZE,
            max_seqs=MAX_SEQS,
            num_workers_per_gpu=0,
            optimizer={"class": "adam"},
            learning_rate=1e-3,
            num_epochs=epochs,
            device="cpu",
            model=os.path.join(workdir, "epoch"),
            learning_rate_file=os.path.join(workdir, "learning_rates"),
            log=[os.path.join(workdir, "log.txt")],
            log_verbosity=5,
        )
    )
    log.init_by_config(config)
    engine = TimedEngine(config)
    engine.train()
    log.close()
    own = TimedEngine.epoch_cpu_seconds - TimedEngine.step_cpu_seconds - TimedEngine.data_cpu_seconds
    result = {"epochs_s": TimedEngine.epoch_seconds, "epochs_cpu_s": TimedEngine.epoch_cpu_seconds}
    result.update(engine_own_cpu_s=own, data_cpu_s=TimedEngine.data_cpu_seconds)
    return result, engine.model.state_dict()


def run(impl: str, path: str, epochs: int, threads: int, weights_out: str) -> None:
    """One measured run (in its own process); prints a JSON line."""
    sys.path.insert(0, REPO_ROOT)
    start = time.perf_counter()
    import torch

    if threads:
        torch.set_num_threads(threads)
    import torch._dynamo  # torch imports it at the first optimizer step; here it stays out of the epochs

    with tempfile.TemporaryDirectory() as workdir:
        if impl in ("engine", "network"):
            result, weights = _run_engine(path, epochs, workdir, network=impl == "network")
        else:
            result, weights = _run_loop(impl, path, epochs)
    torch.save(weights, weights_out)
    result["total_s"] = time.perf_counter() - start
    print(json.dumps(result))


# ------------------------------------------------------------------------------------------------ harness


def _max_weight_difference(path_a: str, path_b: str) -> float:
    import torch

    a, b = torch.load(path_a, weights_only=True), torch.load(path_b, weights_only=True)
    return max(float((a[key] - b[key]).abs().max()) for key in a)


def compare(directory: str, epochs: int, reps: int, threads: int) -> None:
    """Run each implementation ``reps`` times, alternating, and print the table of epoch times and ratios."""
    path = os.path.join(directory, "train.hdf")
    results: dict[str, list[dict]] = {impl: [] for impl in IMPLS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            for impl in IMPLS:
                weights = os.path.join(tmp, f"{impl}.pt")
                args = [sys.executable, __file__, "_run", impl, path, str(epochs), str(threads), weights]
                output = subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True).stdout
                result = json.loads(output.strip().splitlines()[-1])
                if impl not in ("loop", "network"):
                    result["max_abs_dw"] = _max_weight_difference(weights, os.path.join(tmp, "loop.pt"))
                results[impl].append(result)
                print(f"round {rep} {impl}: {json.dumps(result)}", file=sys.stderr)
    loop = results["loop"]
    engine_runs = results["engine"]
    network_ratios = [n["epochs_s"] / e["epochs_s"] for n, e in zip(results["network"], engine_runs)]
    network_cpu = [n["epochs_cpu_s"] / e["epochs_cpu_s"] for n, e in zip(results["network"], engine_runs)]
    print(
        f"network dict against get_model/train_step (engine): epoch time ratio median "
        f"{statistics.median(network_ratios):.3f} "
        f"({' '.join(f'{r:.3f}' for r in network_ratios)}), CPU {statistics.median(network_cpu):.3f}"
    )
    own = [r["engine_own_cpu_s"] / r["epochs_cpu_s"] for r in engine_runs]
    print(
        f"engine's own work (epoch CPU time outside steps and batch fetching): median "
        f"{statistics.median(r['engine_own_cpu_s'] for r in engine_runs) * 1000:.0f} ms per run, "
        f"{statistics.median(own) * 100:.2f} % of the epochs' CPU time"
    )
    print(f"\n{epochs} epoch(s), {reps} rounds (medians; ratios per round against the loop of the same round)\n")
    print("| impl | epochs s | ratio (per round) | epochs CPU s | CPU ratio (per round) | other s | max abs dw |")
    print("|---|---|---|---|---|---|---|")
    for impl, runs in results.items():
        ratios = [r["epochs_s"] / ref["epochs_s"] for r, ref in zip(runs, loop)]
        cpu_ratios = [r["epochs_cpu_s"] / ref["epochs_cpu_s"] for r, ref in zip(runs, loop)]
        rest = statistics.median(r["total_s"] - r["epochs_s"] for r in runs)
        dw = max((r.get("max_abs_dw", 0.0) for r in runs), default=0.0)
        print(
            f"| {impl} | {statistics.median(r['epochs_s'] for r in runs):.2f} | {statistics.median(ratios):.3f} "
            f"({' '.join(f'{r:.3f}' for r in ratios)}) | {statistics.median(r['epochs_cpu_s'] for r in runs):.2f} "
            f"| {statistics.median(cpu_ratios):.3f} ({' '.join(f'{r:.3f}' for r in cpu_ratios)}) | {rest:.2f} "
            f"| {dw:.1g} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make_parser = commands.add_parser("make")
    make_parser.add_argument("directory")
    make_parser.add_argument("--num-seqs", type=int, default=300)
    make_parser.add_argument("--seed", type=int, default=1)
    compare_parser = commands.add_parser("compare")
    compare_parser.add_argument("directory")
    compare_parser.add_argument("--epochs", type=int, default=1)
    compare_parser.add_argument("--reps", type=int, default=3)
    compare_parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    run_parser = commands.add_parser("_run")  # internal: one measured run
    for name in ("impl", "path", "epochs", "threads", "weights_out"):
        run_parser.add_argument(name)
    args = parser.parse_args()
    if args.command == "make":
        make(args.directory, args.num_seqs, args.seed)
    elif args.command == "compare":
        compare(args.directory, args.epochs, args.reps, args.threads)
    else:
        run(args.impl, args.path, int(args.epochs), int(args.threads), args.weights_out)


if __name__ == "__main__":
    main()
