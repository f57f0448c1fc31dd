"""Stage 1: the sequences of one epoch of a dataset, as plain dicts (items).

An item is ``{data_key: np.ndarray, ..., "seq_tag": str, "seq_idx": int}``. The later stages (filter, chunking,
batching, collation) work on items and know nothing of datasets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from returnn.errors import DatasetError

if TYPE_CHECKING:
    from returnn.datasets.basic import Dataset

__all__ = ["SEQ_IDX", "SEQ_TAG", "Item", "iterate_dataset"]

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
    dataset.set_sharding(shard_index, num_shards)
    dataset.init_seq_order(epoch=epoch)
    keys = list(dataset.get_data_keys())
    clashes = {SEQ_TAG, SEQ_IDX}.intersection(keys)
    if clashes:
        raise DatasetError(
            f"{dataset}: data keys {sorted(clashes)} clash with the batch entries of the same name; rename these data "
            "keys in the dataset"
        )
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
