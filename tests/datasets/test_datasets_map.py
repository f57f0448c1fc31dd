"""MapDatasetBase, MapDatasetWrapper, FromListDataset: random-access user datasets."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from returnn.datasets import init_dataset
from returnn.datasets.map import FromListDataset, MapDatasetBase, MapDatasetWrapper
from returnn.errors import DatasetError

LENS = [5, 2, 7, 1, 4, 6]


class Utterances(MapDatasetBase):
    """Sequence i: ``data`` [T, 3] filled with i, ``classes`` [T] = i % 4; tag ``utt-i``."""

    def __init__(self, with_lengths: bool = True):
        super().__init__(data_types={"data": {"dim": 3, "shape": (None, 3)}, "classes": {"dim": 4, "sparse": True}})
        self.with_lengths = with_lengths
        self.loaded = []

    def __len__(self):
        return len(LENS)

    def __getitem__(self, seq_idx):
        self.loaded.append(seq_idx)
        n = LENS[seq_idx]
        return {"data": np.full((n, 3), seq_idx, dtype=np.float32), "classes": np.full(n, seq_idx % 4, dtype=np.int32)}

    def get_seq_len(self, seq_idx):
        return LENS[seq_idx]

    def get_seq_tag(self, seq_idx):
        return f"utt-{seq_idx}"


class EveryOther(Utterances):
    def get_seq_order(self, epoch=None):
        return list(range((epoch or 1) % 2, len(LENS), 2))


def tags(dataset, epoch):
    dataset.init_seq_order(epoch=epoch)
    return [dataset.get_tag(i) for i in range(dataset.num_seqs)]


def test_wrapper_keys_data_and_tags():
    dataset = init_dataset({"class": "MapDatasetWrapper", "map_dataset": Utterances()})
    assert dataset.get_data_keys() == ["data", "classes"] and dataset.get_target_list() == ["classes"]
    assert dataset.num_outputs == {"data": (3, 2), "classes": (4, 1)}
    assert (dataset.get_data_dtype("data"), dataset.get_data_dtype("classes")) == ("float32", "int32")
    assert (dataset.get_data_shape("data"), dataset.is_data_sparse("classes")) == ([3], True)
    assert tags(dataset, 1) == [f"utt-{i}" for i in range(6)]
    dataset.load_seqs(2, 3)
    assert dataset.get_data(2, "data").shape == (7, 3) and (dataset.get_data(2, "classes") == 2).all()
    assert dataset.get_all_tags()[3] == "utt-3" and dataset.get_total_num_seqs() == 6
    assert dataset.get_corpus_seq(4).seq_tag == "utt-4"


def test_wrapper_orders_with_get_seq_len_and_loads_lazily():
    map_dataset = Utterances()
    dataset = MapDatasetWrapper(map_dataset=map_dataset, seq_ordering="sorted", partition_epoch=2)
    assert tags(dataset, 1) + tags(dataset, 2) == [f"utt-{i}" for i in (3, 1, 4, 0, 5, 2)]
    assert map_dataset.loaded == []  # sorting needs only get_seq_len
    dataset.load_seqs(0, 1)
    assert map_dataset.loaded == [0]  # position 0 of epoch 2 is utt-0


def test_wrapper_takes_a_class_and_its_get_seq_order():
    dataset = init_dataset({"class": "MapDatasetWrapper", "map_dataset": EveryOther, "seq_ordering": "reverse"})
    assert tags(dataset, 1) == ["utt-1", "utt-3", "utt-5"]  # get_seq_order replaces seq_ordering
    assert tags(dataset, 2) == ["utt-0", "utt-2", "utt-4"]
    dataset.set_sharding(1, 2)
    assert tags(dataset, 2) == ["utt-2"]


def test_wrapper_shards_cover_the_epoch_once_and_pickles():
    full = tags(MapDatasetWrapper(map_dataset=Utterances, seq_ordering="random"), 3)
    shards = []
    for shard_index in range(4):
        dataset = MapDatasetWrapper(map_dataset=Utterances, seq_ordering="random")
        dataset.set_sharding(shard_index, 4)
        shards.append(tags(dataset, 3))
        assert shards[-1] == full[shard_index::4]
        clone = pickle.loads(pickle.dumps(dataset))
        assert [clone.get_tag(i) for i in range(clone.num_seqs)] == shards[-1]
        if clone.num_seqs:
            np.testing.assert_array_equal(clone.get_data(0, "classes"), dataset.get_data(0, "classes"))
    assert sorted(sum(shards, [])) == sorted(full)


def test_wrapper_explicit_seq_list():
    dataset = MapDatasetWrapper(map_dataset=Utterances())
    dataset.init_seq_order(epoch=1, seq_list=["utt-5", "utt-0"])
    assert dataset.get_current_seq_order() == [5, 0] and (dataset.get_data(0, "data") == 5).all()


class _BadItems(Utterances):
    def __getitem__(self, seq_idx):
        if seq_idx == 0:
            return {"data": np.zeros((2, 3), dtype=np.int64), "classes": np.zeros(2, dtype=np.int32)}
        return {"data": np.zeros((2, 3), dtype=np.float32)}


def test_wrapper_checks_the_items():
    dataset = MapDatasetWrapper(map_dataset=_BadItems())
    dataset.init_seq_order(epoch=1)
    with pytest.raises(DatasetError, match=r"sequence 'utt-0', key 'data': got dtype int64, declared float32"):
        dataset.load_seqs(0, 1)
    with pytest.raises(
        DatasetError,
        match=r"_BadItems\[1\] \('utt-1'\) returned \['data'\]; expected a dict with the keys of data_types",
    ):
        dataset.load_seqs(1, 2)


class _NumpyDefaults(Utterances):
    def __getitem__(self, seq_idx):
        return {"data": np.full((2, 3), 0.5), "classes": np.array([1, 2])}  # float64 and int64: numpy's defaults


def test_wrapper_converts_numpy_default_dtypes_where_no_dtype_is_declared():
    dataset = MapDatasetWrapper(map_dataset=_NumpyDefaults())
    dataset.init_seq_order(epoch=1)
    dataset.load_seqs(0, 1)
    assert dataset.get_data(0, "data").dtype == np.float32 and dataset.get_data(0, "data")[0, 0] == 0.5
    assert dataset.get_data(0, "classes").dtype == np.int32 and dataset.get_data(0, "classes").tolist() == [1, 2]


class _DeclaredFloat64(_NumpyDefaults):
    def __init__(self):
        super().__init__()
        self.data_types = {"data": {"dim": 3, "dtype": "float64"}, "classes": {"dim": 4, "sparse": True}}


def test_wrapper_keeps_a_declared_dtype():
    dataset = MapDatasetWrapper(map_dataset=_DeclaredFloat64())
    dataset.init_seq_order(epoch=1)
    dataset.load_seqs(0, 1)
    assert dataset.get_data(0, "data").dtype == np.float64


def test_wrapper_bad_input():
    with pytest.raises(DatasetError, match=r"map_dataset must be a MapDatasetBase \(or a function returning one\)"):
        MapDatasetWrapper(map_dataset=[1, 2])
    with pytest.raises(DatasetError, match=r"MapDatasetBase declares no data_types; pass data_types="):
        MapDatasetWrapper(map_dataset=MapDatasetBase())
    typo = MapDatasetBase(data_types={"data": {"dims": 3}})
    with pytest.raises(DatasetError, match=r"data_types\['data'\]: unknown option\(s\) \['dims'\]; valid: dim, shape"):
        MapDatasetWrapper(map_dataset=typo)
    with pytest.raises(DatasetError, match=r"unknown data key 'labels'; known keys: \['data', 'classes'\]"):
        MapDatasetWrapper(map_dataset=Utterances()).get_data_dim("labels")


class _NoLengths(Utterances):
    get_seq_len = MapDatasetBase.get_seq_len


def test_wrapper_sorting_without_get_seq_len():
    dataset = MapDatasetWrapper(map_dataset=_NoLengths(), seq_ordering="laplace:2")
    with pytest.raises(
        DatasetError,
        match=r"'laplace:2' sorts by sequence length, but this dataset cannot tell the lengths before loading",
    ):
        dataset.init_seq_order(epoch=1)
    assert len(tags(MapDatasetWrapper(map_dataset=_NoLengths(), seq_ordering="random"), 1)) == 6


def test_from_list_dataset():
    data = [{"feat": np.ones((n, 2), dtype=np.float16), "labels": np.arange(n, dtype=np.int64)} for n in (3, 1, 2)]
    map_dataset = FromListDataset(data, sort_data_key="labels")
    assert map_dataset.data_types == {
        "feat": {"dim": 2, "shape": (None, 2), "dtype": "float16"},
        "labels": {"dim": 3, "sparse": True, "dtype": "int64"},
    }
    dataset = MapDatasetWrapper(map_dataset=map_dataset, seq_ordering="sorted_reverse")
    assert tags(dataset, 1) == ["seq-0", "seq-2", "seq-1"]
    assert dataset.num_outputs == {"feat": (2, 2), "labels": (3, 1)} and dataset.get_data_dtype("feat") == "float16"
    dataset.load_seqs(2, 3)
    np.testing.assert_array_equal(dataset.get_data(2, "labels"), [0])
    unsorted = MapDatasetWrapper(map_dataset=FromListDataset(data), seq_ordering="sorted")
    with pytest.raises(DatasetError, match=r"FromListDataset: give sort_data_key to sort by length"):
        unsorted.init_seq_order(epoch=1)
    with pytest.raises(DatasetError, match=r"FromListDataset: sequence 1 has keys \['feat'\], the first"):
        FromListDataset([data[0], {"feat": data[1]["feat"]}])
