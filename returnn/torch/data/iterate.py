"""Stage 1: the sequences of one epoch of a dataset, as plain dicts (items).

An item is ``{data_key: np.ndarray, ..., "seq_tag": str, "seq_idx": int}``. The later stages (filter, chunking,
batching, collation) work on items and know nothing of datasets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from returnn.errors import DatasetError

if TYPE_CHECKING:
    from returnn.datasets.basic import Dataset

__all__ = ["SEQ_IDX", "SEQ_TAG", "Item", "iterate_dataset", "ItemLoader", "iterate_lengths"]

SEQ_TAG = "seq_tag"
SEQ_IDX = "seq_idx"

Item = dict[str, Any]


def iterate_dataset(
    dataset: Dataset, *, epoch: int | None, shard_index: int = 0, num_shards: int = 1
) -> Iterator[Item]:
    """Set up the epoch in the calling process and yield its sequences (of one shard).

    ``seq_idx`` is the position in the epoch's order over all shards: the dataset's shard ``i`` of ``n`` holds
    ``order[i::n]`` (see :meth:`Dataset.set_sharding`), so its local sequence ``j`` is position ``i + j * n``.
    The dataset's :meth:`~Dataset.finish_epoch` runs when the iteration ends, also when it is abandoned.

    :param epoch: passed to ``init_seq_order``; None outside of training.
    :param shard_index: this shard (``rank * num_workers + worker_id``).
    :param num_shards: all shards (``world_size * num_workers``); more than 1 needs ``dataset.supports_sharding()``.
    """
    keys = _start_epoch(dataset, epoch, shard_index, num_shards)
    try:
        seq_idx = 0
        while dataset.is_less_than_num_seqs(seq_idx):
            dataset.load_seqs(seq_idx, seq_idx + 1)
            item = {key: dataset.get_data(seq_idx, key) for key in keys}
            item[SEQ_TAG] = dataset.get_tag(seq_idx)
            item[SEQ_IDX] = shard_index + seq_idx * num_shards
            yield item
            seq_idx += 1
    finally:
        dataset.finish_epoch()


def iterate_lengths(dataset: Dataset, *, epoch: int | None) -> Iterator[Item]:
    """Set up the epoch (not sharded) and yield its sequences as stand-ins that carry only their lengths, for a dataset
    that :meth:`~Dataset.knows_lengths_without_loading`: each key's value is the frame numbers ``1 .. length`` (so
    that the stages that cut and pad sequences show which frames an item holds: 0 for padding), read by
    :class:`ItemLoader`. The caller runs the dataset's ``finish_epoch`` when it has loaded what it needs."""
    keys = _start_epoch(dataset, epoch, 0, 1)
    seq_idx = 0
    while dataset.is_less_than_num_seqs(seq_idx):
        lengths = dataset.get_seq_length(seq_idx)
        item: Item = {key: np.arange(1, lengths[key] + 1) for key in keys}
        item[SEQ_TAG] = dataset.get_tag(seq_idx)
        item[SEQ_IDX] = seq_idx
        yield item
        seq_idx += 1


class ItemLoader:
    """Loads the items of :func:`iterate_lengths` with their data: the frames they stand for, zeros where they hold 0.
    The chunks of a sequence come one after the other: its data is read once for all of them."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.keys = list(dataset.get_data_keys())
        self._last: tuple[int, dict[str, np.ndarray]] | None = None  # the last sequence read: position, data

    def load(self, items: list[Item]) -> list[Item]:
        return [self._load(item) for item in items]

    def _load(self, item: Item) -> Item:
        position = item[SEQ_IDX]
        if self._last is None or self._last[0] != position:
            self._last = position, {key: self.dataset.get_data(position, key) for key in self.keys}
        loaded = dict(item)
        for key, data in self._last[1].items():
            frames = item[key]
            if len(frames) and frames[0] > 0 and frames[-1] - frames[0] + 1 == len(frames):
                loaded[key] = data[frames[0] - 1 : frames[-1]]  # consecutive frames: a view, as without stand-ins
            else:
                loaded[key] = np.zeros((len(frames), *data.shape[1:]), dtype=data.dtype)
                inside = frames > 0
                loaded[key][inside] = data[frames[inside] - 1]
        return loaded


def _start_epoch(dataset: Dataset, epoch: int | None, shard_index: int, num_shards: int) -> list[str]:
    """Shard and order the epoch; the data keys."""
    dataset.set_sharding(shard_index, num_shards)
    dataset.init_seq_order(epoch=epoch)
    keys = list(dataset.get_data_keys())
    clashes = {SEQ_TAG, SEQ_IDX}.intersection(keys)
    if clashes:
        raise DatasetError(
            f"{dataset}: data keys {sorted(clashes)} clash with the batch entries of the same name; rename these data "
            "keys in the dataset"
        )
    return keys
