"""Merge HDF files in RETURNN's layout (see :mod:`returnn.datasets.util.hdf_writer`) into one, in a given order.

Task forward with several processes writes one part per process; :func:`merge_hdf_files` puts them together in the
order of the dataset's epoch. The merged file is written under a temporary name and renamed, as the writers do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from returnn.datasets.util.hdf_writer import INPUT_KEY, _HDFAppender
from returnn.errors import DatasetError

__all__ = ["check_hdf_parts", "merge_hdf_files"]

_MAX_RUN_SEQS = 1000  # sequences copied per read: bounds the memory of one copy


def merge_hdf_files(
    filename: str, parts: Sequence[str], order_keys: Sequence[Sequence[int]] | None = None, *, overwrite: bool = False
) -> int:
    """Write the sequences of the HDF files ``parts`` into the new HDF file ``filename``.

    The parts must hold the same data keys with the same shapes (as the parts of one writer's output do); the header
    (dims, labels) is that of the first part with sequences.

    :param parts: the files to merge (at least one)
    :param order_keys: per part, a sort key of each of its sequences (e.g. its position in the dataset's epoch); the
        merged file holds the sequences by ascending key (ties by part). None: the parts one after the other.
    :param overwrite: replace an existing ``filename`` (else an error)
    :return: the number of sequences written
    :raise DatasetError: the parts differ in their data keys, or ``order_keys`` does not fit them
    """
    import h5py

    if not parts:
        raise ValueError("merge_hdf_files needs at least one part")
    files = [h5py.File(part, "r") for part in parts]
    try:
        layouts = [_Layout(f, part) for f, part in zip(files, parts)]
        first = _check_layouts(layouts)
        order = _merged_order([layout.num_seqs for layout in layouts], order_keys, parts)
        appender = _HDFAppender(filename, has_inputs=first.has_inputs or not first.num_seqs, overwrite=overwrite)
        try:
            _copy_header(first.file, appender)
            for part_index, start, end in _runs(order):
                tags, seqs = layouts[part_index].read(start, end)
                appender.append(tags, seqs)
        except BaseException:
            appender.abort()
            raise
        appender.close()
    finally:
        for f in files:
            f.close()
    return len(order)


def check_hdf_parts(parts: Sequence[str]) -> None:
    """Check that :func:`merge_hdf_files` can merge ``parts`` (without writing anything).

    :raise DatasetError: the parts differ in their data keys, or in a key's dtype or shape per frame
    """
    import h5py

    with contextlib.ExitStack() as stack:
        _check_layouts([_Layout(stack.enter_context(h5py.File(part, "r")), part) for part in parts])


def _check_layouts(layouts: list[_Layout]) -> _Layout:
    """The first layout with sequences (a part without sequences has no data sets yet: a process that got no batch);
    an error if the others with sequences differ from it."""
    first = next((layout for layout in layouts if layout.num_seqs), layouts[0])
    for layout in layouts:
        if not layout.num_seqs:
            continue
        if layout.keys != first.keys:
            raise DatasetError(
                f"cannot merge HDF files: {layout.name!r} holds data keys {layout.keys}, {first.name!r} holds "
                f"{first.keys}"
            )
        for key in layout.keys:
            if layout.frame_type(key) != first.frame_type(key):
                (dtype, shape), (first_dtype, first_shape) = layout.frame_type(key), first.frame_type(key)
                raise DatasetError(
                    f"cannot merge HDF files: data key {key!r} has dtype {dtype} and shape per frame {shape} in "
                    f"{layout.name!r}, but dtype {first_dtype} and shape per frame {first_shape} in {first.name!r}"
                )
    return first


class _Layout:
    """Where each sequence's rows of each key lie in one file."""

    def __init__(self, f: Any, name: str):
        self.file = f
        self.name = name
        self.has_inputs = "inputs" in f
        targets = sorted(f["targets/data"].keys()) if "targets/data" in f else []
        self.keys = ([INPUT_KEY] if self.has_inputs else []) + targets
        lengths = np.asarray(f["seqLengths"][()], dtype=np.int64)
        self.num_seqs = int(lengths.shape[0])
        # offsets[i, column]: the first row of sequence i of the key in that column; one row more at the end
        self.offsets = np.zeros((self.num_seqs + 1, max(lengths.shape[1], 1)), dtype=np.int64)
        np.cumsum(lengths, axis=0, out=self.offsets[1:])

    def dataset(self, key: str) -> Any:
        return self.file["inputs"] if key == INPUT_KEY else self.file["targets/data"][key]

    def frame_type(self, key: str) -> tuple[str, tuple[int, ...]]:
        """The dtype and shape per frame (row) of ``key``."""
        dataset = self.dataset(key)
        return str(dataset.dtype), tuple(dataset.shape[1:])

    def read(self, start: int, end: int) -> tuple[list[str], list[dict[str, np.ndarray]]]:
        """Tags and data of sequences ``start .. end - 1``."""
        tags = [tag.decode("utf-8") if isinstance(tag, bytes) else str(tag) for tag in self.file["seqTags"][start:end]]
        seqs: list[dict[str, np.ndarray]] = [{} for _ in range(end - start)]
        for column, key in enumerate(self.keys):
            first, last = self.offsets[start, column], self.offsets[end, column]
            rows = self.dataset(key)[first:last]
            bounds = self.offsets[start + 1 : end, column] - first
            for seq, value in zip(seqs, np.split(rows, bounds)):
                seq[key] = value
        return tags, seqs


def _copy_header(source: Any, appender: _HDFAppender) -> None:
    """The input dim and labels, and each target's size attribute, dtype, shape and labels."""
    appender.set_inputs_info(int(source.attrs["inputPattSize"]), _labels(source["labels"]) or None)
    if "targets/data" not in source:
        return
    for key in sorted(source["targets/data"].keys()):
        dataset = source["targets/data"][key]
        dim, ndim = (int(x) for x in source["targets/size"].attrs[key])
        labels = source["targets/labels"].get(key) if "targets/labels" in source else None
        appender.declare_target(
            key,
            dim=dim,
            ndim=ndim,
            dtype=dataset.dtype,
            feature_shape=dataset.shape[1:],
            labels=_labels(labels) if labels is not None else None,
        )


def _labels(dataset: Any) -> list[str]:
    return [label.decode("utf-8") if isinstance(label, bytes) else str(label) for label in dataset[()]]


def _merged_order(
    num_seqs: list[int], order_keys: Sequence[Sequence[int]] | None, parts: Sequence[str]
) -> list[tuple[int, int]]:
    """(part, sequence index in the part) of each merged sequence."""
    if order_keys is None:
        return [(part, index) for part, count in enumerate(num_seqs) for index in range(count)]
    if len(order_keys) != len(num_seqs):
        raise DatasetError(f"merge_hdf_files: {len(order_keys)} lists of order keys for {len(num_seqs)} parts")
    for part, (keys, count) in enumerate(zip(order_keys, num_seqs)):
        if len(keys) != count:
            raise DatasetError(f"merge_hdf_files: {len(keys)} order keys for the {count} sequences of {parts[part]!r}")
    keyed = [(key, part, index) for part, keys in enumerate(order_keys) for index, key in enumerate(keys)]
    keyed.sort()
    return [(part, index) for _, part, index in keyed]


def _runs(order: list[tuple[int, int]]) -> Iterator[tuple[int, int, int]]:
    """``order`` as runs (part, start, end) of consecutive sequences of one part, each of at most _MAX_RUN_SEQS."""
    i = 0
    while i < len(order):
        part, start = order[i]
        end = start + 1
        i += 1
        while i < len(order) and order[i] == (part, end) and end - start < _MAX_RUN_SEQS:
            end += 1
            i += 1
        yield part, start, end
