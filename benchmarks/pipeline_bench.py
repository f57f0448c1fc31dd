#!/usr/bin/env python3
"""The data pipeline against a hand-written h5py loop: epoch time, peak memory of the process tree, padding.

    python benchmarks/pipeline_bench.py make /tmp/pipeline_bench --num-seqs 1500
    python benchmarks/pipeline_bench.py compare /tmp/pipeline_bench --epochs 5 --reps 3
    python benchmarks/pipeline_bench.py compare /tmp/pipeline_bench --workers 0,1 --reps 3   # worker default
    python benchmarks/pipeline_bench.py padding /tmp/pipeline_bench

``make`` writes ``train.hdf`` with :class:`~returnn.datasets.hdf.SimpleHDFWriter`: 40-dim float32 features,
sequence lengths log-normal around 400 frames clipped to 100..1500, and sparse int32 frame labels (100 classes)
in segments of 2 to 12 frames.

``compare`` trains a trivially small model (one Linear layer 40 -> 100, frame-wise cross entropy, Adam) for some
epochs, once fed by a plain loop (h5py reads, greedy batching in corpus order, padding into preallocated numpy
arrays, ``torch.from_numpy``) and once by the pipeline (``HDFDataset`` + ``build_data_loader``), each in its own
process, alternating. Both use batch_size 20000 and max_seqs 128, so they train on the same batches in the same
order and end with the same weights (checked). It prints the epoch time (the training loop only; start-up is
shown apart), the peak PSS of the process tree (sampled every 20 ms, workers included) and the ratios.

``padding`` reports the pipeline's batch statistics for ``seq_ordering`` "default" and "laplace:.1000".
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

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEATURE_DIM = 40
NUM_CLASSES = 100
BATCH_SIZE = 20000
MAX_SEQS = 128


# ------------------------------------------------------------------------------------------------ data


def make(directory: str, num_seqs: int, seed: int) -> None:
    sys.path.insert(0, REPO_ROOT)
    from returnn.datasets.hdf import SimpleHDFWriter

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "train.hdf")
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(400), 0.5, num_seqs), 100, 1500).astype(int)
    writer = SimpleHDFWriter(path, dim=FEATURE_DIM, extra_type={"classes": (NUM_CLASSES, 1, "int32")})
    with writer:
        for index, length in enumerate(lengths):
            segments = rng.integers(2, 13, length // 2 + 1)
            labels = np.repeat(rng.integers(0, NUM_CLASSES, len(segments)), segments)[:length].astype(np.int32)
            features = rng.standard_normal((1, length, FEATURE_DIM), dtype=np.float32)
            writer.insert_batch(features, [length], [f"corpus/seq-{index}"], extra={"classes": [labels]})
    print(f"wrote {path}: {num_seqs} sequences, {int(lengths.sum())} frames, {os.path.getsize(path) / 2**20:.0f} MiB")


# ------------------------------------------------------------------------------------------------ one run


def _train_step(model, optimizer, features, labels, lengths) -> None:
    import torch
    import torch.nn.functional as F

    logits = model(features)
    mask = torch.arange(features.shape[1])[None, :] < lengths[:, None]
    loss = F.cross_entropy(logits[mask], labels[mask].long(), reduction="sum")
    optimizer.zero_grad()
    (loss / mask.sum()).backward()
    optimizer.step()


def _plain_batches(path: str):
    """The reference: read, batch and pad by hand, as a short training script would."""
    import h5py
    import torch

    with h5py.File(path, "r") as f:
        lengths = f["seqLengths"][:, 0].astype(np.int64)
        tags = f["seqTags"][...]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        inputs, classes = f["inputs"], f["targets/data/classes"]
        for batch in _greedy_batches(lengths):
            longest = int(lengths[batch].max())
            features = np.zeros((len(batch), longest, FEATURE_DIM), dtype=np.float32)
            labels = np.zeros((len(batch), longest), dtype=np.int32)
            for row, index in enumerate(batch):
                start, end = int(offsets[index]), int(offsets[index + 1])
                features[row, : end - start] = inputs[start:end]
                labels[row, : end - start] = classes[start:end]
                tags[index].decode("utf-8")
            yield torch.from_numpy(features), torch.from_numpy(labels), torch.from_numpy(lengths[batch])


def _greedy_batches(lengths: np.ndarray):
    batch, longest = [], 0
    for index, length in enumerate(lengths.tolist()):
        grown = max(longest, length)
        if batch and (len(batch) + 1 > MAX_SEQS or grown * (len(batch) + 1) > BATCH_SIZE):
            yield batch
            batch, grown = [], length
        batch.append(index)
        longest = grown
    if batch:
        yield batch


def run(impl: str, path: str, epochs: int, workers: int, ordering: str, weights_out: str) -> None:
    """One measured run (in its own process); prints a JSON line."""
    sys.path.insert(0, REPO_ROOT)
    start = time.perf_counter()
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(FEATURE_DIM, NUM_CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = None
    if impl == "pipeline":
        from returnn.datasets.hdf import HDFDataset
        from returnn.torch.data import DataPipelineOptions, build_data_loader

        dataset = HDFDataset(files=[path], seq_ordering=ordering)
        options = DataPipelineOptions.parse(batch_size=BATCH_SIZE, max_seqs=MAX_SEQS, num_workers_per_gpu=workers)
        loader = build_data_loader(dataset, options, mode="train", device="cpu")
    setup_s = time.perf_counter() - start
    steps, stats = 0, []
    epoch_start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        if loader is None:
            for features, labels, lengths in _plain_batches(path):
                _train_step(model, optimizer, features, labels, lengths)
                steps += 1
        else:
            for data in loader.iter_epoch(epoch):
                _train_step(model, optimizer, data["data"], data["classes"], data["data:size1"])
                steps += 1
            key_stats = loader.last_epoch_stats.keys["data"]
            stats.append({"batches": loader.last_epoch_stats.num_batches, "padding": key_stats.padding_ratio})
    epochs_s = time.perf_counter() - epoch_start
    if loader is not None:
        loader.close()
    torch.save(model.state_dict(), weights_out)
    print(json.dumps({"setup_s": setup_s, "epochs_s": epochs_s, "steps": steps, "stats": stats}))


# ------------------------------------------------------------------------------------------------ harness


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as file:
                    todo += [int(child) for child in file.read().split()]
        except OSError:
            pass
    return pids


def _pss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            for line in file:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measure(args: list[str]) -> dict:
    """Run this script with ``args`` in a child; sample the PSS of its process tree until it exits."""
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    peak = 0.0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, sum(_pss_mib(p) for p in _tree(process.pid)))
        time.sleep(0.02)
    process.returncode = os.waitstatus_to_exitcode(status)
    output = process.stdout.read()
    if process.returncode:
        raise RuntimeError(f"run {args} failed with exit code {process.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    cpu_s = usage.ru_utime + usage.ru_stime  # the child and its reaped children (the workers)
    result.update(peak_pss_tree_mib=peak, peak_rss_main_mib=usage.ru_maxrss / 1024, cpu_s=cpu_s)
    return result


def _max_weight_difference(path_a: str, path_b: str) -> float:
    import torch

    a, b = torch.load(path_a), torch.load(path_b)
    return max(float((a[key] - b[key]).abs().max()) for key in a)


def compare(directory: str, epochs: int, reps: int, workers: list[int]) -> None:
    path = os.path.join(directory, "train.hdf")
    impls = [("loop", 0)] + [("pipeline", count) for count in workers]
    results: dict[tuple[str, int], list[dict]] = {impl: [] for impl in impls}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            for impl, count in impls:
                weights = os.path.join(tmp, f"{impl}{count}.pt")
                result = measure(["_run", impl, path, str(epochs), str(count), "default", weights])
                if impl == "pipeline" and count <= 1:
                    result["max_abs_dw"] = _max_weight_difference(weights, os.path.join(tmp, "loop0.pt"))
                results[(impl, count)].append(result)
                print(f"round {rep} {impl} workers={count}: " + json.dumps(result), file=sys.stderr)
    loop = results[("loop", 0)]
    print(f"\n{epochs} epochs, {reps} rounds (medians; ratios per round against the loop of the same round)\n")
    header = (
        "impl | workers | epochs s | ratio (per round) | setup s | CPU s | peak PSS tree MiB | ratio | steps | max dw"
    )
    print(f"| {header} |\n" + "|---" * (header.count("|") + 1) + "|")
    for (impl, count), runs in results.items():

        def median(key: str, runs: list[dict] = runs) -> float:
            return statistics.median(run[key] for run in runs)

        ratios = [run["epochs_s"] / ref["epochs_s"] for run, ref in zip(runs, loop)]
        memory = [run["peak_pss_tree_mib"] / ref["peak_pss_tree_mib"] for run, ref in zip(runs, loop)]
        dw = max((run.get("max_abs_dw", float("nan")) for run in runs), default=float("nan"))
        cells = [
            impl,
            str(count) if impl == "pipeline" else "-",
            f"{median('epochs_s'):.2f}",
            f"{statistics.median(ratios):.3f} ({' '.join(f'{r:.2f}' for r in ratios)})",
            f"{median('setup_s'):.2f}",
            f"{median('cpu_s'):.1f}",
            f"{median('peak_pss_tree_mib'):.0f}",
            f"{statistics.median(memory):.3f}",
            str(runs[0]["steps"]),
            f"{dw:.1g}",
        ]
        print("| " + " | ".join(cells) + " |")


def padding(directory: str) -> None:
    path = os.path.join(directory, "train.hdf")
    with tempfile.TemporaryDirectory() as tmp:
        for ordering in ("default", "laplace:.1000"):
            result = measure(["_run", "pipeline", path, "2", "0", ordering, os.path.join(tmp, "w.pt")])
            for epoch, stats in enumerate(result["stats"], 1):
                print(
                    f"seq_ordering={ordering} epoch={epoch} batches={stats['batches']} padding={stats['padding']:.3f}"
                )


def shards(directory: str, reps: int) -> None:
    """batching_scope "epoch": the time one of N shards takes for its batches of an epoch, when it reads every
    sequence to learn the lengths, and when it batches on the lengths from the HDF index and reads only its own."""
    sys.path.insert(0, REPO_ROOT)
    from returnn.datasets.hdf import HDFDataset
    from returnn.torch.data import DataPipelineOptions
    from returnn.torch.data.pipeline import iterate_batches

    class ReadingEverySequence(HDFDataset):
        def knows_lengths_without_loading(self) -> bool:
            return False

    path = os.path.join(directory, "train.hdf")
    options = DataPipelineOptions.parse(batch_size=20000, max_seqs=128, num_workers_per_gpu=0)
    print("| shards | reads every sequence, s | reads its own batches, s | ratio |")
    print("|---|---|---|---|")
    for num_shards in (1, 2, 4, 8):
        times = {}
        for dataset_class in (ReadingEverySequence, HDFDataset):
            rounds = []
            for _ in range(reps):
                dataset = dataset_class(files=[path], seq_ordering="random")
                start = time.perf_counter()
                for _ in iterate_batches(dataset, options, epoch=1, shard_index=0, num_shards=num_shards):
                    pass
                rounds.append(time.perf_counter() - start)
            times[dataset_class] = statistics.median(rounds)
        every, own = times[ReadingEverySequence], times[HDFDataset]
        print(f"| {num_shards} | {every:.3f} | {own:.3f} | {own / every:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make_parser = commands.add_parser("make")
    make_parser.add_argument("directory")
    make_parser.add_argument("--num-seqs", type=int, default=1500)
    make_parser.add_argument("--seed", type=int, default=1)
    compare_parser = commands.add_parser("compare")
    compare_parser.add_argument("directory")
    compare_parser.add_argument("--epochs", type=int, default=5)
    compare_parser.add_argument("--reps", type=int, default=3)
    compare_parser.add_argument("--workers", default="0", help="comma-separated worker counts of the pipeline")
    padding_parser = commands.add_parser("padding")
    padding_parser.add_argument("directory")
    shards_parser = commands.add_parser("shards")
    shards_parser.add_argument("directory")
    shards_parser.add_argument("--reps", type=int, default=5)
    run_parser = commands.add_parser("_run")  # internal: one measured run
    for name in ("impl", "path", "epochs", "workers", "ordering", "weights_out"):
        run_parser.add_argument(name)
    args = parser.parse_args()
    if args.command == "make":
        make(args.directory, args.num_seqs, args.seed)
    elif args.command == "compare":
        compare(args.directory, args.epochs, args.reps, [int(count) for count in args.workers.split(",")])
    elif args.command == "padding":
        padding(args.directory)
    elif args.command == "shards":
        shards(args.directory, args.reps)
    else:
        run(args.impl, args.path, int(args.epochs), int(args.workers), args.ordering, args.weights_out)


if __name__ == "__main__":
    main()
