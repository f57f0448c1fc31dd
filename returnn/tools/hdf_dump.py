"""Dump a dataset into an HDF file that :class:`returnn.datasets.hdf.HDFDataset` (and RETURNN) read.

``tools/hdf_dump.py CONFIG_OR_DATASET OUT.hdf [--start_seq N] [--end_seq N] [--epoch N]``

The first argument is a config file (its ``train`` dataset is dumped, with the config's log settings), a dataset
dict as a string (``"{'class': 'DummyDataset', ...}"``), or an ``.hdf`` file. ``--end_seq`` is inclusive, as in
RETURNN. An existing ``OUT.hdf`` is replaced; the file appears only when the dump is complete.
Exit code 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from returnn.datasets.hdf import HDFDatasetWriter
from returnn.tools.dump_dataset import dataset_from_arg, run_cli

__all__ = ["main"]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hdf_dump.py", description="Dump a dataset (or part of it) into an HDF file.")
    parser.add_argument("config_file_or_dataset", help="config file (its 'train'), dataset dict '{...}', or .hdf file")
    parser.add_argument("hdf_filename", help="the HDF file to write")
    parser.add_argument("--start_seq", type=int, default=0, help="first sequence index (default: 0)")
    parser.add_argument("--end_seq", type=int, default=float("inf"), help="last sequence index, inclusive")
    parser.add_argument("--epoch", type=int, default=1, help="the epoch whose sequence order is dumped (default: 1)")
    return parser.parse_args(list(argv))


def _run(args: argparse.Namespace) -> None:
    dataset = dataset_from_arg(args.config_file_or_dataset)
    writer = HDFDatasetWriter(args.hdf_filename)
    count = writer.dump_from_dataset(dataset, epoch=args.epoch, start_seq=args.start_seq, end_seq=args.end_seq)
    writer.close()
    print(f"hdf_dump: wrote {count} sequences of {dataset.len_info()} to {args.hdf_filename}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_cli("hdf_dump", lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
