"""VariableDataset: a dataset per epoch from a user function."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from returnn.datasets import init_dataset
from returnn.datasets.variable import VariableDataset
from returnn.errors import DatasetError

CALLS: list[int] = []


def static(num_seqs: int, seq_len: int = 2, **kwargs) -> dict:
    """Sequence i has ``data`` [seq_len, 2] filled with 10 * num_seqs + i."""
    data = [
        {"data": np.full((seq_len, 2), 10 * num_seqs + i, dtype=np.float32), "classes": np.zeros(seq_len, np.int32)}
        for i in range(num_seqs)
    ]
    return {"class": "StaticDataset", "data": data, "output_dim": {"classes": (3, 1)}, **kwargs}


def curriculum(*, epoch, **kwargs):
    """Epochs 1-2: 3 sequences; later: 5, randomly ordered."""
    CALLS.append(epoch)
    return static(3) if epoch <= 2 else static(5, seq_ordering="random")


def wider_later(*, epoch, **kwargs):
    if epoch == 1:
        return static(2)
    return {"class": "DummyDataset", "input_dim": 4, "output_dim": {"classes": (3, 1)}, "num_seqs": 2}


@pytest.fixture
def values(read_epoch):
    """``values(dataset, epoch)``: the first value of each sequence's data."""
    return lambda dataset, epoch: [int(data["data"][0, 0]) for _, data in read_epoch(dataset, epoch, ["data"])]


def test_dataset_per_epoch_with_reuse(values):
    CALLS.clear()
    dataset = init_dataset({"class": "VariableDataset", "get_dataset": curriculum})
    assert dataset.get_data_keys() == ["classes", "data"] and dataset.num_outputs == {"classes": (3, 1), "data": (2, 2)}
    assert (dataset.get_data_dtype("data"), dataset.get_data_shape("data"), dataset.is_data_sparse("classes")) == (
        "float32",
        [2],
        True,
    )
    first = dataset.inner
    assert values(dataset, 1) == [30, 31, 32] and values(dataset, 2) == [30, 31, 32]
    assert dataset.inner is first  # the same dict again: the dataset is reused
    later = values(dataset, 3)
    assert sorted(later) == [50, 51, 52, 53, 54] and later != sorted(later)
    assert dataset.get_current_seq_order() == [value - 50 for value in later]
    assert values(dataset, 1) == [30, 31, 32] and dataset.inner is not first  # cache size 1: rebuilt
    assert CALLS == [1, 1, 2, 3, 1]
    assert dataset.get_tag(0) == "seq-0" and dataset.get_seq_length(0) == {"classes": 2, "data": 2}


def test_lru_cache_keeps_more_datasets(values):
    dataset = VariableDataset(get_dataset=curriculum, dataset_lru_cache_size=2)
    first = dataset.inner
    values(dataset, 3)
    values(dataset, 1)
    assert dataset.inner is first


def test_epoch_none_uses_the_last_dataset(values):
    dataset = VariableDataset(get_dataset=curriculum)
    values(dataset, 4)
    assert sorted(values(dataset, None)) == [50, 51, 52, 53, 54]


def test_sharding_and_pickling(values):
    full = values(VariableDataset(get_dataset=curriculum), 3)
    shards = []
    for shard_index in range(2):
        dataset = VariableDataset(get_dataset=curriculum, name="train")
        assert dataset.supports_sharding()
        dataset.set_sharding(shard_index, 2)
        shards.append(values(dataset, 3))
        assert shards[-1] == full[shard_index::2]
        clone = pickle.loads(pickle.dumps(dataset))
        assert (clone.epoch, clone.get_tag(0)) == (3, dataset.get_tag(0))
        assert values(clone, 1) == [30, 31, 32][shard_index::2]  # the sharding holds for new datasets too
    assert sorted(sum(shards, [])) == sorted(full)


def test_tags_only_with_always_same_tags():
    with pytest.raises(DatasetError, match=r"the list of all tags is only defined with always_same_tags=True"):
        VariableDataset(get_dataset=curriculum).get_all_tags()
    same = VariableDataset(get_dataset=curriculum, always_same_tags=True)
    assert same.get_all_tags() == ["seq-0", "seq-1", "seq-2"] and same.get_total_num_seqs() == 3


def _no_kwargs(epoch):
    return static(1)


def _not_a_dict(*, epoch, **kwargs):
    return "train.hdf"


def test_bad_input():
    with pytest.raises(DatasetError, match=r"get_dataset: '_no_kwargs' must accept \*\*kwargs"):
        VariableDataset(get_dataset=_no_kwargs)
    with pytest.raises(DatasetError, match=r"get_dataset\(epoch=1\) returned 'train.hdf'; expected a dataset dict"):
        VariableDataset(get_dataset=_not_a_dict)
    with pytest.raises(DatasetError, match=r"partition_epoch=2 has no effect here; set it in the dataset dicts"):
        VariableDataset(get_dataset=curriculum, partition_epoch=2)
    with pytest.raises(DatasetError, match=r"dataset_lru_cache_size must be an int >= 1, got 0"):
        VariableDataset(get_dataset=curriculum, dataset_lru_cache_size=0)
    dataset = VariableDataset(get_dataset=wider_later)
    with pytest.raises(
        DatasetError, match=r"the dataset for epoch 2 has data .*'data': \(4, 'float32', \[4\]\).*epoch 1's had"
    ):
        dataset.init_seq_order(epoch=2)
