"""Iterate a dataset and print or dump what it holds; optionally collect mean and standard deviation.

``tools/dump-dataset.py CONFIG|{dataset dict}|FILE.hdf [--dataset KEY] [--epoch N] [--startseq N] [--endseq N]
[--type stdout|print_tag|dump_tag|print_shape|dump_seq_len|numpy|null] [--key K] [--stats] [--dump_stats PREFIX]``

``--endseq`` is inclusive, -1 means all sequences. ``--dump_stats PREFIX`` writes ``PREFIX.mean.txt`` and
``PREFIX.std_dev.txt`` (``numpy.savetxt``, one value per feature dimension, over all frames of ``--key``), the
files that pipelines (i6_core's ExtractDatasetMeanStddevJob) read. Exit code 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import numpy as np

from returnn.config import Config, load_config
from returnn.datasets import Dataset, init_dataset
from returnn.errors import ConfigError, DatasetError, ReturnnError
from returnn.log import log

__all__ = ["main", "dataset_from_arg", "dump_dataset", "run_cli", "FeatureStats"]

logger = logging.getLogger(__name__)

DUMP_TYPES = ("stdout", "print_tag", "dump_tag", "print_shape", "dump_seq_len", "numpy", "null")


def dataset_from_arg(arg: str, *, dataset_key: str | None = None, log_verbosity: int | None = None) -> Dataset:
    """The dataset named by a tool's first argument, with logging set up.

    :param arg: a config file (its ``dataset_key`` dataset, default ``train``), an ``.hdf`` file, or a dataset dict
        as a string (``"{'class': ...}"``)
    :param dataset_key: which dataset of the config; only with a config file
    :param log_verbosity: replaces the config's log settings (logs then go to stdout only)
    """
    config = Config()
    if arg.lstrip().startswith("{") or arg.endswith((".hdf", ".h5")):
        if dataset_key is not None:
            raise ConfigError(f"--dataset {dataset_key!r} needs a config file, but the dataset was given as {arg!r}")
        definition: Any = arg if arg.lstrip().startswith("{") else {"class": "HDFDataset", "files": [arg]}
    else:
        config = load_config([arg])
        definition = _definition_from_config(config, dataset_key or "train", arg)
    if log_verbosity is not None:
        config.set("log", None)
        config.set("log_verbosity", log_verbosity)
    log.init_by_config(config)
    return init_dataset(definition, default_kwargs={"name": dataset_key or "train"})


def _definition_from_config(config: Config, key: str, filename: str) -> Any:
    definition = config.typed_value(key, None)
    if isinstance(definition, str) and definition.startswith("config:"):  # RETURNN's indirection to another key
        definition = config.typed_value(definition[len("config:") :], None)
    if definition is None:
        raise ConfigError(f"config {filename!r} defines no dataset {key!r}; set {key} = {{'class': ...}} in it")
    return definition


class FeatureStats:
    """Mean, standard deviation, min and max per feature dimension over all frames (numerically stable)."""

    def __init__(self) -> None:
        self.num_seqs = 0
        self.num_frames = 0
        self.mean: np.ndarray | None = None
        self._sum_sq_dev: np.ndarray | None = None  # sum of squared deviations from the mean
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None

    def add(self, data: np.ndarray) -> None:
        """Add one sequence: ``[T, ...]``, statistics over the first axis."""
        if data.dtype.kind not in "biuf":
            raise DatasetError(f"cannot compute mean/std dev of {data.dtype} data; choose a numeric key with --key")
        frames = data.astype(np.float64).reshape(data.shape[0], -1) if data.ndim else data.astype(np.float64)[None]
        self.num_seqs += 1
        if frames.shape[0] == 0:
            return
        seq_mean = frames.mean(axis=0)
        seq_sum_sq_dev = ((frames - seq_mean) ** 2).sum(axis=0)
        if self.mean is None:
            self.mean, self._sum_sq_dev = seq_mean, seq_sum_sq_dev
            self.min, self.max = frames.min(axis=0), frames.max(axis=0)
            self.num_frames = frames.shape[0]
            return
        # Chan et al.'s pairwise update: merging per-sequence moments keeps precision over millions of frames.
        total = self.num_frames + frames.shape[0]
        delta = seq_mean - self.mean
        self.mean = self.mean + delta * (frames.shape[0] / total)
        self._sum_sq_dev = self._sum_sq_dev + seq_sum_sq_dev + delta**2 * (self.num_frames * frames.shape[0] / total)
        self.min, self.max = np.minimum(self.min, frames.min(axis=0)), np.maximum(self.max, frames.max(axis=0))
        self.num_frames = total

    @property
    def std_dev(self) -> np.ndarray:
        assert self._sum_sq_dev is not None
        return np.sqrt(self._sum_sq_dev / self.num_frames)

    def report(self, key: str, out: TextIO, dump_prefix: str | None = None) -> None:
        if self.mean is None:
            raise DatasetError(f"no frames of key {key!r} in the dumped sequences; no statistics to write")
        print(f"Data {key!r}: {self.num_seqs} seqs, {self.num_frames} frames", file=out)
        print(f"  mean: {_short(self.mean)}", file=out)
        print(f"  std dev: {_short(self.std_dev)}", file=out)
        print(f"  min/max: {_short(self.min)} / {_short(self.max)}", file=out)
        if dump_prefix:
            np.savetxt(f"{dump_prefix}.mean.txt", self.mean)
            np.savetxt(f"{dump_prefix}.std_dev.txt", self.std_dev)
            print(f"  wrote {dump_prefix}.mean.txt and {dump_prefix}.std_dev.txt", file=out)


def _short(values: np.ndarray) -> str:
    return np.array2string(values, precision=5, threshold=20, max_line_width=sys.maxsize)


class _Dumper:
    """Writes one sequence in the chosen ``--type``."""

    def __init__(self, dataset: Dataset, args: argparse.Namespace, out: TextIO):
        self.dataset, self.args, self.out = dataset, args, out
        self.file: TextIO | None = None
        if args.type == "dump_tag":
            self.file = open(f"{args.dump_prefix}seq-tags.txt", "w", encoding="utf-8")
        elif args.type == "dump_seq_len":
            self.file = open(f"{args.dump_prefix}seq-lens.txt", "w", encoding="utf-8")
            self.file.write("{\n")  # a Python dict literal {tag: length}, as seq_order_seq_lens_file reads it

    def dump(self, seq_idx: int, progress: str) -> None:
        dataset, args, out, kind = self.dataset, self.args, self.out, self.args.type
        tag = dataset.get_tag(seq_idx)
        if kind == "print_tag":
            print(f"seq {progress} tag: {tag}", file=out)
        elif kind == "dump_tag":
            self.file.write(f"{tag}\n")
        elif kind == "dump_seq_len":
            self.file.write(f"{tag!r}: {dataset.get_seq_length(seq_idx)[args.key]!r},\n")
        elif kind in ("stdout", "print_shape", "numpy"):
            for key in [args.key] + [k for k in dataset.get_data_keys() if k != args.key]:
                self._dump_key(seq_idx, progress, tag, key)

    def _dump_key(self, seq_idx: int, progress: str, tag: str, key: str) -> None:
        data = self.dataset.get_data(seq_idx, key)
        name = "data" if key == self.args.key else f"target {key!r}"
        if self.args.type == "print_shape":
            print(f"seq {progress} {name} shape: {data.shape}", file=self.out)
        elif self.args.type == "numpy":
            suffix = "data" if key == self.args.key else f"targets.{key}"
            fmt = "%i" if data.dtype.kind in "biu" else ("%s" if data.dtype.kind in "OUS" else "%.18e")
            np.savetxt(f"{self.args.dump_prefix}{seq_idx}.{suffix}{self.args.dump_postfix}", data, fmt=fmt)
        else:
            if key == self.args.key:
                print(f"seq {progress} tag: {tag}", file=self.out)
            text = repr(data.tobytes()) if self.args.stdout_as_bytes and data.dtype == np.uint8 else str(data)
            labels = self.dataset.labels.get(key)
            if labels and len(labels) > 1 and data.ndim == 1 and data.dtype.kind in "iu":
                text += f" ({self.dataset.serialize_data(key, data)!r})"
            print(f"seq {progress} {name}: {text}", file=self.out)

    def close(self) -> None:
        if self.file is not None:
            if self.args.type == "dump_seq_len":
                self.file.write("}\n")
            print(f"wrote {self.file.name}", file=self.out)
            self.file.close()


def dump_dataset(dataset: Dataset, args: argparse.Namespace, out: TextIO = sys.stdout) -> None:
    """Iterate the sequences ``args.startseq`` .. ``args.endseq`` of ``args.epoch`` and dump them."""
    dataset.init_seq_order(epoch=args.epoch)
    keys = dataset.get_data_keys()
    logger.info(f"dataset {dataset.len_info()}, epoch {args.epoch}, keys {keys}")
    if args.key not in keys:
        raise DatasetError(f"--key {args.key!r}: the dataset has no such key; choose one of {keys}")
    end = float("inf") if args.endseq < 0 else args.endseq
    dumper = _Dumper(dataset, args, out)
    stats = FeatureStats() if (args.stats or args.dump_stats) else None
    seq_lens: dict[str, list[int]] = {key: [] for key in keys}
    start_time = last_log = time.monotonic()
    seq_idx = args.startseq
    try:
        while seq_idx <= end and dataset.is_less_than_num_seqs(seq_idx):
            dataset.load_seqs(seq_idx, seq_idx + 1)
            dumper.dump(seq_idx, _progress(dataset, seq_idx))
            for key, length in dataset.get_seq_length(seq_idx).items():
                seq_lens.setdefault(key, []).append(length)
            if stats is not None:
                stats.add(dataset.get_data(seq_idx, args.key))
            if time.monotonic() - last_log > 10:
                logger.info(f"dump-dataset: seq {_progress(dataset, seq_idx)}")
                last_log = time.monotonic()
            seq_idx += 1
    finally:
        dumper.close()
    more = dataset.is_less_than_num_seqs(seq_idx)
    seconds = time.monotonic() - start_time
    print(f"Done: {seq_idx - args.startseq} seqs in {seconds:.1f} s; more seqs left: {more}", file=out)
    for key, lens in seq_lens.items():
        if lens:
            print(f"Seq length {key!r}: min {min(lens)}, max {max(lens)}, mean {np.mean(lens):.2f}", file=out)
    if stats is not None:
        stats.report(args.key, out, dump_prefix=args.dump_stats)


def _progress(dataset: Dataset, seq_idx: int) -> str:
    try:
        return f"{seq_idx}/{dataset.num_seqs}"
    except DatasetError:
        return f"{seq_idx}/?"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dump-dataset.py", description="Print or dump the sequences of a dataset.")
    parser.add_argument("returnn_config", help="config file, dataset dict as a string '{...}', or an .hdf file")
    parser.add_argument("--dataset", help="which dataset of the config (default: train)")
    parser.add_argument("--epoch", type=int, default=1)
    parser.add_argument("--startseq", type=int, default=0, help="first sequence index (default: 0)")
    parser.add_argument("--endseq", type=int, default=10, help="last sequence index, inclusive; -1: all (default: 10)")
    parser.add_argument("--get_num_seqs", action="store_true", help="only print the number of sequences")
    parser.add_argument("--type", default="stdout", choices=DUMP_TYPES, help="what to do per sequence")
    parser.add_argument("--stdout_limit", type=float, default=None, help="array elements printed (inf: all)")
    parser.add_argument("--stdout_as_bytes", action="store_true", help="print uint8 data as bytes")
    parser.add_argument("--verbosity", type=int, default=4, help="log verbosity (default: 4)")
    parser.add_argument("--dump_prefix", default="/tmp/returnn.dump-dataset.", help="file prefix for dump types")
    parser.add_argument("--dump_postfix", default=".txt.gz", help="file suffix for --type numpy")
    parser.add_argument("--key", default="data", help="the data key to dump and to collect stats of")
    parser.add_argument("--stats", action="store_true", help="print mean / std dev of --key")
    parser.add_argument("--dump_stats", metavar="PREFIX", help="also write PREFIX.mean.txt and PREFIX.std_dev.txt")
    return parser.parse_args(list(argv))


def run_cli(tool: str, body: Callable[[], int | None]) -> int:
    """Run a tool's body and return its exit code: 2 with one line on stderr for bad input, 130 if interrupted."""
    try:
        return body() or 0
    except (ReturnnError, OSError) as exc:  # OSError: an output file that cannot be written
        print(f"{tool}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{tool}: interrupted", file=sys.stderr)
        return 130
    finally:
        log.close()


def _run(args: argparse.Namespace) -> None:
    dataset = dataset_from_arg(args.returnn_config, dataset_key=args.dataset, log_verbosity=args.verbosity)
    if args.get_num_seqs:
        dataset.init_seq_order(epoch=args.epoch)
        print(f"num_seqs: {dataset.num_seqs}")
        return
    limit = args.stdout_limit
    with np.printoptions(threshold=sys.maxsize if limit == float("inf") else int(limit or 1000)):
        dump_dataset(dataset, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_cli("dump-dataset", lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
