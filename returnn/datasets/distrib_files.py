""":class:`DistributeFilesDataset`: a corpus split over many files, of which each sub-epoch and process loads only
its share (the standard way to train on data larger than one machine's disk or memory)."""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from returnn.datasets.basic import Dataset
from returnn.datasets.registry import init_dataset
from returnn.datasets.util.sub_datasets import DescribedByInner, EpochOfInner
from returnn.errors import DatasetError

__all__ = ["DistributeFilesDataset", "distribute_by_size"]

FileTree = Any  # a file name, or a tuple / list / dict of file trees (files that belong together)


class DistributeFilesDataset(EpochOfInner, DescribedByInner, Dataset):
    """The files are shuffled per full epoch (``seq_ordering = "random"``; ``"default"`` keeps their order) and
    split into ``partition_epoch`` parts of about equal size (in bytes); sub-epoch e builds the dataset of its part
    with ``get_sub_epoch_dataset(files)`` and visits its sequences::

        def get_sub_epoch_dataset(files_subepoch):
            return {"class": "HDFDataset", "files": files_subepoch, "seq_ordering": "random"}

        train = {
            "class": "DistributeFilesDataset",
            "files": ["/data/part001.hdf", ...],  # or a .txt (one per line) / .json / .py file listing them
            "get_sub_epoch_dataset": get_sub_epoch_dataset,
            "partition_epoch": 20,
            "distrib_shard_files": True,
        }

    Only the files of the running sub-epoch are open. When the data is sharded over processes (torchrun ranks and
    DataLoader workers), ``distrib_shard_files = True`` gives each process its own files (each part is split once
    more, by size), so a process loads only 1 / (processes x partition_epoch) of the corpus; without it, or with fewer
    files in a part than processes, every process opens the part's files and takes its share of their sequences.
    Either way each sequence is visited once per full epoch. A file tree (a tuple of an alignment and a feature
    file, say) stays together; its size is the sum of its files'.

    :param files: file trees, or a ``.txt`` / ``.json`` / ``.py`` file listing them, or a function returning them
    :param get_sub_epoch_dataset: ``(files) -> dataset dict`` for a part of the files
    :param distrib_shard_files: give each process its own files (see above)
    :param preload_next_n_sub_epochs: accepted for compatibility; files are opened when their sub-epoch starts
    :param buffer_size: accepted for compatibility
    :param sharding_fix: accepted for compatibility; the sub-epoch datasets are never sharded twice
    """

    def __init__(
        self,
        *,
        files: Sequence[FileTree] | str | os.PathLike | Callable[[], Sequence[FileTree]],
        get_sub_epoch_dataset: Callable[[list[FileTree]], dict[str, Any]],
        distrib_shard_files: bool = False,
        preload_next_n_sub_epochs: int = 1,
        buffer_size: int = 1,
        sharding_fix: bool | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if self.seq_ordering not in ("default", "random"):
            raise DatasetError(
                f"{self}: seq_ordering {self.seq_ordering!r} orders the files here; choose 'default' or 'random', and "
                "order the sequences in the dataset dicts of get_sub_epoch_dataset"
            )
        if not callable(get_sub_epoch_dataset):
            raise DatasetError(f"{self}: get_sub_epoch_dataset must be a function (files) -> dataset dict")
        self.files = _file_list(files, self)
        if len(self.files) < self.partition_epoch:
            raise DatasetError(
                f"{self}: {len(self.files)} files cannot be split into partition_epoch={self.partition_epoch} parts; "
                f"set partition_epoch to at most {len(self.files)}"
            )
        self.get_sub_epoch_dataset = get_sub_epoch_dataset
        self.distrib_shard_files = bool(distrib_shard_files)
        # each process reads only its own files: the pipeline batches per shard (see torch.data.pipeline)
        self.shards_itself = self.distrib_shard_files
        self._sizes: list[int] | None = None  # bytes per file tree, read when the first epoch starts
        self.inner = self._sub_dataset([self.files[0]], "description")
        self.copy_inner_description()

    def _sub_dataset(self, files: list[FileTree], what: str) -> Dataset:
        opts = self.get_sub_epoch_dataset(files)
        if not isinstance(opts, (dict, Dataset)):
            raise DatasetError(f"{self}: get_sub_epoch_dataset returned {opts!r}; expected a dataset dict")
        return init_dataset(opts, default_kwargs={"name": f"{self.name}_{what}"})

    def supports_sharding(self) -> bool:
        return True

    def init_seq_order(
        self, epoch: int | None = None, seq_list: Sequence[str] | None = None, seq_order: Sequence[int] | None = None
    ) -> bool:
        """Build the dataset of this sub-epoch's (and process's) files and set up its epoch; ``epoch=None``
        (forwarding) visits all files."""
        if seq_list is not None or seq_order is not None:
            raise DatasetError(f"{self}: a given seq_list / seq_order is not supported; the files decide the order")
        super().init_seq_order(epoch=epoch)
        files, sharded_by_files = self.files_of_epoch(epoch)
        self.inner = self._sub_dataset(files, f"epoch{epoch}")
        if not sharded_by_files:
            self.inner.set_sharding(self._shard_index, self._num_shards)
        self.inner.init_seq_order(epoch=epoch)
        return True

    def files_of_epoch(self, epoch: int | None) -> tuple[list[FileTree], bool]:
        """The files this process reads in ``epoch``, and whether they are its own (sharded by files)."""
        if epoch is None:
            return list(self.files), False
        if self._sizes is None:
            self._sizes = [_tree_size(tree, self) for tree in self.files]
        order = np.arange(len(self.files))
        if self.seq_ordering == "random":
            np.random.RandomState(self._get_random_seed_for_epoch(epoch) % 2**32).shuffle(order)
        parts = distribute_by_size(order.tolist(), [self._sizes[i] for i in order], self.partition_epoch)
        part = parts[(epoch - 1) % self.partition_epoch]
        by_files = self.distrib_shard_files and 1 < self._num_shards <= len(part)
        if by_files:
            chosen = distribute_by_size(part, [self._sizes[i] for i in part], self._num_shards)[self._shard_index]
        else:
            chosen = part
        return [self.files[i] for i in chosen], by_files


def distribute_by_size(items: list[Any], sizes: list[int], num_bins: int) -> list[list[Any]]:
    """Split ``items`` (in order) into ``num_bins`` non-empty consecutive bins of about equal total size."""
    if len(items) < num_bins:
        raise ValueError(f"cannot split {len(items)} items into {num_bins} non-empty bins")
    total = sum(sizes)
    bins: list[list[Any]] = [[] for _ in range(num_bins)]
    current, size_so_far = 0, 0
    for i, (item, size) in enumerate(zip(items, sizes)):
        bins_after = num_bins - current - 1
        must_move = len(items) - i <= bins_after  # each later bin still needs an item
        past_share = size_so_far + size / 2 > total * (current + 1) / num_bins
        if bins[current] and bins_after and (must_move or past_share):
            current += 1
        bins[current].append(item)
        size_so_far += size
    return bins


def _file_list(files: Any, owner: Dataset) -> list[FileTree]:
    """The file trees of the ``files`` option (see :class:`DistributeFilesDataset`)."""
    if callable(files):
        files = files()
    if isinstance(files, (str, os.PathLike)):
        path = os.fspath(files)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise DatasetError(f"{owner}: cannot read the file list {path!r}: {exc}") from None
        if path.endswith(".txt"):
            files = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        elif path.endswith(".json"):
            files = json.loads(text)
        elif path.endswith(".py"):
            files = ast.literal_eval(text)
        else:
            raise DatasetError(f"{owner}: file list {path!r}: expected a .txt, .json or .py file")
    if not isinstance(files, (list, tuple)) or not files:
        raise DatasetError(f"{owner}: 'files' must be a non-empty list of files, got {type(files).__name__}")
    return list(files)


def _tree_size(tree: FileTree, owner: Dataset) -> int:
    """The total size in bytes of the files of a file tree."""
    if isinstance(tree, dict):
        return sum(_tree_size(value, owner) for value in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_tree_size(value, owner) for value in tree)
    try:
        return os.path.getsize(os.fspath(tree))
    except (OSError, TypeError) as exc:
        raise DatasetError(f"{owner}: file {tree!r} of 'files': {exc}") from None
