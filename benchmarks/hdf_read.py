#!/usr/bin/env python3
"""Reading speed and memory of HDFDataset against a plain h5py loop over the same file.

    python benchmarks/hdf_read.py create /tmp/bench.hdf --size-gb 2
    python benchmarks/hdf_read.py compare /tmp/bench.hdf --reps 3

``create`` writes a file in RETURNN's layout with plain h5py (40-dim float32 features in ``inputs``, sparse
int32 ``classes``, sequences of 100 to 1500 frames), block by block so that it needs little memory.
``compare`` runs each reader in its own process (so that each peak RSS is its own), alternating, and prints
sequences per second, frames per second, the ratio and the peak RSS. Both readers visit every sequence in
corpus order and read every key and the tag, as the training pipeline does; the plain loop reads the lengths
and tags once up front, like a hand-written reader would.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import h5py
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEATURE_DIM = 40
NUM_CLASSES = 100


def create(path: str, size_gb: float, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    bytes_per_frame = FEATURE_DIM * 4 + 4
    total_frames = int(size_gb * 1024**3 / bytes_per_frame)
    lengths = []
    while sum(lengths) < total_frames:
        lengths.append(int(np.clip(rng.lognormal(np.log(400), 0.5), 100, 1500)))
    lengths_arr = np.array(lengths, dtype=np.int32)
    num_frames = int(lengths_arr.sum())
    with h5py.File(path, "w") as f:
        f.attrs["numSeqs"] = len(lengths)
        f.attrs["numTimesteps"] = num_frames
        f.attrs["inputPattSize"] = FEATURE_DIM
        f.attrs["numLabels"] = NUM_CLASSES
        f.create_dataset("seqLengths", data=np.stack([lengths_arr, lengths_arr], axis=1))
        tags = np.array([f"corpus/recording-{i}/1".encode() for i in range(len(lengths))])
        f.create_dataset("seqTags", data=tags)
        inputs = f.create_dataset("inputs", shape=(num_frames, FEATURE_DIM), dtype="float32")
        classes = f.create_dataset("targets/data/classes", shape=(num_frames,), dtype="int32")
        f.create_group("targets/labels")
        f.create_group("targets/size").attrs["classes"] = np.array([NUM_CLASSES, 1], dtype="int32")
        block = 1 << 20
        for start in range(0, num_frames, block):
            end = min(start + block, num_frames)
            inputs[start:end] = rng.standard_normal((end - start, FEATURE_DIM), dtype=np.float32)
            classes[start:end] = rng.integers(0, NUM_CLASSES, end - start, dtype=np.int32)
    print(f"wrote {path}: {len(lengths)} sequences, {num_frames} frames, {os.path.getsize(path) / 1024**3:.2f} GiB")


def read_plain_h5py(path: str) -> tuple[int, int]:
    """The reference: what a hand-written reader does."""
    with h5py.File(path, "r") as f:
        lengths = f["seqLengths"][...]
        tags = f["seqTags"][...]
        offsets = np.zeros((lengths.shape[0] + 1, lengths.shape[1]), dtype=np.int64)
        np.cumsum(lengths, axis=0, out=offsets[1:])
        inputs, classes = f["inputs"], f["targets/data/classes"]
        frames = 0
        for i in range(lengths.shape[0]):
            data = inputs[int(offsets[i, 0]) : int(offsets[i + 1, 0])]
            classes[int(offsets[i, 1]) : int(offsets[i + 1, 1])]
            tags[i].decode("utf-8")
            frames += data.shape[0]
        return lengths.shape[0], frames


def read_dataset(path: str) -> tuple[int, int]:
    from returnn.datasets.hdf import HDFDataset

    dataset = HDFDataset(files=[path])
    dataset.init_seq_order(epoch=1)
    keys = dataset.get_data_keys()
    frames = 0
    seq_idx = 0
    while dataset.is_less_than_num_seqs(seq_idx):  # the calls the training pipeline makes per sequence
        dataset.load_seqs(seq_idx, seq_idx + 1)
        item = {key: dataset.get_data(seq_idx, key) for key in keys}
        dataset.get_tag(seq_idx)
        frames += item["data"].shape[0]
        seq_idx += 1
    return seq_idx, frames


def run_one(mode: str, path: str) -> None:
    reader = {"h5py": read_plain_h5py, "dataset": read_dataset}[mode]
    if mode == "dataset":  # imports are not part of the timing
        sys.path.insert(0, REPO_ROOT)
        import returnn.datasets.hdf  # noqa: F401

    start, start_cpu = time.perf_counter(), time.process_time()
    num_seqs, frames = reader(path)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"mode": mode, "seqs": num_seqs, "frames": frames, "s": seconds, "cpu_s": cpu_seconds}
    print(json.dumps({**result, "peak_rss_mb": peak_rss_mb}))


def compare(path: str, reps: int) -> None:
    with open(path, "rb") as f:  # warm the page cache, so that both readers see the same disk state
        while f.read(1 << 24):
            pass
    results: dict[str, list[dict]] = {"h5py": [], "dataset": []}
    for _ in range(reps):
        for mode in results:
            out = subprocess.run(
                [sys.executable, __file__, "run-one", mode, path], check=True, capture_output=True, text=True
            ).stdout
            results[mode].append(json.loads(out.strip().splitlines()[-1]))
    size_gib = os.path.getsize(path) / 1024**3
    first = results["h5py"][0]
    print(f"file {path}: {size_gib:.2f} GiB, {first['seqs']} sequences, {first['frames']} frames")
    median_s, median_cpu = {}, {}
    for mode, runs in results.items():
        times = [r["s"] for r in runs]
        median_s[mode] = statistics.median(times)
        median_cpu[mode] = statistics.median(r["cpu_s"] for r in runs)
        seqs = runs[0]["seqs"]
        print(
            f"{mode:8s} median {median_s[mode]:.2f} s wall, {median_cpu[mode]:.2f} s CPU "
            f"(wall per run: {', '.join(f'{t:.2f}' for t in times)}), "
            f"{seqs / median_s[mode]:.0f} seqs/s, {size_gib * 1024 / median_s[mode]:.0f} MiB/s, "
            f"peak RSS {max(r['peak_rss_mb'] for r in runs):.0f} MB"
        )
    ratios = [h["s"] / d["s"] for h, d in zip(results["h5py"], results["dataset"])]
    print(
        f"HDFDataset rate / plain h5py rate: wall {median_s['h5py'] / median_s['dataset']:.3f} "
        f"(per round: {', '.join(f'{r:.3f}' for r in ratios)}), CPU {median_cpu['h5py'] / median_cpu['dataset']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_create = sub.add_parser("create", help="write a benchmark file")
    p_create.add_argument("path")
    p_create.add_argument("--size-gb", type=float, default=2.0)
    p_compare = sub.add_parser("compare", help="time both readers")
    p_compare.add_argument("path")
    p_compare.add_argument("--reps", type=int, default=3)
    p_one = sub.add_parser("run-one", help="(internal) one timed read in this process")
    p_one.add_argument("mode", choices=["h5py", "dataset"])
    p_one.add_argument("path")
    args = parser.parse_args()
    if args.command == "create":
        create(args.path, args.size_gb)
    elif args.command == "compare":
        compare(args.path, args.reps)
    else:
        run_one(args.mode, args.path)


if __name__ == "__main__":
    main()
