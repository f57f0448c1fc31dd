"""ConcatDataset and CombinedDataset: the sequences of several datasets in one epoch."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from returnn.datasets import init_dataset
from returnn.datasets.combined import CombinedDataset, ConcatDataset
from returnn.datasets.map import MapDatasetBase
from returnn.errors import DatasetError
from returnn.torch.data.collate import collate_batch
from returnn.torch.data.iterate import iterate_dataset

A_LENS = [3, 8, 1, 6, 4]
B_LENS = [7, 2, 5]


def static(base: int, lens: list[int], **kwargs) -> dict:
    """A StaticDataset dict; sequence i has ``data`` [T, 2] filled with base + i and ``classes`` [T] (dim 4)."""
    data = [
        {"data": np.full((n, 2), base + i, dtype=np.float32), "classes": np.arange(n, dtype=np.int32) % 4}
        for i, n in enumerate(lens)
    ]
    return {"class": "StaticDataset", "data": data, "output_dim": {"classes": (4, 1)}, **kwargs}


@pytest.fixture
def ids(read_epoch):
    """``ids(dataset, epoch)``: the epoch's sequences, each as the value its data is filled with (100 + i: a[i],
    200 + i: b[i])."""
    return lambda dataset, epoch: [int(data["data"][0, 0]) for _, data in read_epoch(dataset, epoch, ["data"])]


def concat(a_opts=None, b_opts=None, **kwargs) -> ConcatDataset:
    return init_dataset(
        {
            "class": "ConcatDataset",
            "datasets": [static(100, A_LENS, **(a_opts or {})), static(200, B_LENS, **(b_opts or {}))],
            **kwargs,
        }
    )


# --- ConcatDataset ------------------------------------------------------------------------------------------


def test_concat_goes_through_the_datasets_in_their_own_order(ids):
    dataset = concat(a_opts={"seq_ordering": "reverse"})
    assert ids(dataset, 1) == [104, 103, 102, 101, 100, 200, 201, 202]
    assert dataset.get_data_keys() == ["data", "classes"] and dataset.num_outputs == {"data": (2, 2), "classes": (4, 1)}
    assert dataset.get_tag(5) == "seq-0" and dataset.get_seq_length(1) == {"data": 6, "classes": 6}
    assert (dataset.get_data_dtype("data"), dataset.get_data_shape("data"), dataset.get_data_dim("classes")) == (
        "float32",
        [2],
        4,
    )
    assert dataset.get_total_num_seqs() == 8 and dataset.get_all_tags()[4:6] == ["seq-4", "seq-0"]


def test_concat_partition_of_a_sub_dataset_shrinks_its_share(ids):
    dataset = concat(a_opts={"partition_epoch": 2})
    assert ids(dataset, 1) == [100, 101, 102, 200, 201, 202]
    assert ids(dataset, 2) == [103, 104, 200, 201, 202]


def test_concat_own_ordering_mixes_the_datasets(ids):
    dataset = concat(seq_ordering="sorted")
    order = ids(dataset, 1)
    lens = {100 + i: n for i, n in enumerate(A_LENS)} | {200 + i: n for i, n in enumerate(B_LENS)}
    assert order == sorted(lens, key=lens.__getitem__)
    random = concat(seq_ordering="random", partition_epoch=2)
    first, second = ids(random, 1), ids(random, 2)
    assert sorted(first + second) == sorted(lens) and len(first) == 4
    assert ids(random, 1) == first  # deterministic per epoch


@pytest.mark.parametrize("ordering", ["default", "random"])
def test_concat_shards_cover_the_epoch_once(ordering, ids):
    full = ids(concat(seq_ordering=ordering), 2)
    shards = []
    for shard_index in range(3):
        dataset = concat(seq_ordering=ordering)
        dataset.set_sharding(shard_index, 3)
        shards.append(ids(dataset, 2))
        assert shards[-1] == full[shard_index::3]
    assert sorted(sum(shards, [])) == sorted(full) and len(full) == 8


def test_concat_pickle_round_trip(ids):
    dataset = concat(seq_ordering="random", name="train")
    dataset.set_sharding(0, 2)
    expected = ids(dataset, 3)
    clone = pickle.loads(pickle.dumps(dataset))
    assert (type(clone), clone.epoch, clone.num_seqs) == (ConcatDataset, 3, len(expected))
    assert [int(clone.get_data(i, "data")[0, 0]) for i in range(clone.num_seqs)] == expected
    assert ids(clone, 4) == ids(dataset, 4)


def test_concat_explicit_seq_order_indexes_the_joined_corpus():
    dataset = concat()
    dataset.init_seq_order(epoch=1, seq_order=[6, 0, 5, 4])
    assert [int(dataset.get_data(i, "data")[0, 0]) for i in range(4)] == [201, 100, 200, 104]
    with pytest.raises(DatasetError, match=r"seq_order holds indices outside 0..7"):
        dataset.init_seq_order(epoch=1, seq_order=[8])


def test_concat_needs_the_same_data():
    other_keys = {"class": "DummyDataset", "input_dim": 2, "output_dim": {"labels": (4, 1)}, "num_seqs": 2}
    with pytest.raises(
        DatasetError, match=r"datasets\[1\] \(DummyDataset\) has data keys \['data', 'labels'\], datasets\[0\] has"
    ):
        init_dataset({"class": "ConcatDataset", "datasets": [static(0, [1]), other_keys]})
    wider = {"class": "DummyDataset", "input_dim": 3, "output_dim": 4, "num_seqs": 2}
    with pytest.raises(
        DatasetError,
        match=r"data key 'data' differs between datasets\[0\] \(StaticDataset\) .* and datasets\[1\] \(DummyDataset\)",
    ):
        init_dataset({"class": "ConcatDataset", "datasets": [static(0, [1]), wider]})
    with pytest.raises(DatasetError, match=r"'datasets' must be a non-empty list"):
        init_dataset({"class": "ConcatDataset", "datasets": []})
    with pytest.raises(
        DatasetError, match=r"seq_list_filter_file='x.txt' has no effect here; set it on the sub-datasets"
    ):
        concat(seq_list_filter_file="x.txt")


def test_concat_takes_the_largest_inferred_number_of_classes(read_epoch):
    def labels(values: list[int]) -> dict:  # no output_dim: the classes are counted in the data
        return {"class": "StaticDataset", "data": [{"data": np.zeros((2, 2), "float32"), "classes": np.array(values)}]}

    dataset = init_dataset({"class": "ConcatDataset", "datasets": [labels([0, 2]), labels([5, 1])]})
    assert dataset.get_data_dim("classes") == 6 and dataset.num_outputs["classes"] == (6, 1)
    assert [data["classes"].tolist() for _, data in read_epoch(dataset, 1)] == [[0, 2], [5, 1]]
    declared_smaller = {**labels([5, 1]), "output_dim": {"classes": (4, 1)}}
    with pytest.raises(DatasetError, match="data key 'classes' differs between"):
        init_dataset({"class": "ConcatDataset", "datasets": [labels([0, 7]), declared_smaller]})


class _NoLengths(MapDatasetBase):
    def __init__(self):
        super().__init__(data_types={"data": {"dim": 2}, "classes": {"dim": 4, "sparse": True}})

    def __len__(self):
        return 2

    def __getitem__(self, seq_idx):
        return {"data": np.zeros((1, 2), dtype=np.float32), "classes": np.zeros(1, dtype=np.int32)}


def test_concat_sorting_needs_lengths_of_every_dataset():
    dataset = init_dataset(
        {
            "class": "ConcatDataset",
            "datasets": [static(0, [1]), {"class": "MapDatasetWrapper", "map_dataset": _NoLengths}],
            "seq_ordering": "laplace:2",
        }
    )
    with pytest.raises(
        DatasetError, match=r"'laplace:2' sorts by length, but datasets\[1\] \(MapDatasetWrapper\) cannot tell"
    ):
        dataset.init_seq_order(epoch=1)


# --- CombinedDataset ----------------------------------------------------------------------------------------


def combined(**kwargs) -> CombinedDataset:
    lm = {
        "class": "StaticDataset",
        "data": [{"text": np.arange(n, dtype=np.int32) % 4} for n in B_LENS],
        "output_dim": {"text": (4, 1)},
    }
    opts = {
        "class": "CombinedDataset",
        "datasets": {"asr": static(100, A_LENS), "lm": lm},
        "data_map": {("asr", "data"): "data", ("asr", "classes"): "classes", ("lm", "text"): "classes"},
    }
    return init_dataset({**opts, **kwargs})


def sources(dataset, epoch) -> list[str]:
    """Per sequence of the epoch: 'asr<i>' or 'lm<i>' (from the sub-dataset index and tag)."""
    dataset.init_seq_order(epoch=epoch)
    return [
        f"{dataset.dataset_keys[dataset.get_dataset_index(i)]}{dataset.get_tag(i)[4:]}" for i in range(dataset.num_seqs)
    ]


def test_combined_keys_and_empty_data_of_the_other_task():
    dataset = combined()
    assert dataset.get_data_keys() == ["data", "classes"]
    assert dataset.num_outputs == {"data": (2, 2), "classes": (4, 1)}
    assert sources(dataset, 1) == ["asr0", "asr1", "asr2", "asr3", "asr4", "lm0", "lm1", "lm2"]  # sorted keys
    lm_data = dataset.get_data(6, "data")
    assert (lm_data.shape, lm_data.dtype) == ((0, 2), np.float32)  # the lm sequences have no audio
    np.testing.assert_array_equal(dataset.get_data(6, "classes"), [0, 1])
    assert dataset.get_seq_length(6) == {"data": 0, "classes": 2}
    # Mixed batches collate: the empty entries have length 0.
    items = list(iterate_dataset(dataset, epoch=1))
    batch = collate_batch([items[4], items[5]]).to_data_dict()
    assert batch["data"].shape == (2, 4, 2) and batch["data:size1"].tolist() == [4, 0]
    assert batch["classes:size1"].tolist() == [4, 7]


def test_combined_random_dataset_keeps_each_datasets_order():
    dataset = combined(seq_ordering="random_dataset")
    order = sources(dataset, 1)
    assert [s for s in order if s.startswith("asr")] == [f"asr{i}" for i in range(5)]
    assert [s for s in order if s.startswith("lm")] == [f"lm{i}" for i in range(3)]
    assert order != sorted(order, key=lambda s: s.startswith("lm"))  # mixed (for this seed)
    assert sources(dataset, 1) == order and sources(combined(seq_ordering="random_dataset"), 1) == order
    assert dataset.seq_ordering == "random_dataset"
    parted = combined(seq_ordering="random_dataset", partition_epoch=2)
    assert sorted(sources(parted, 1) + sources(parted, 2)) == sorted(order)


def test_combined_interleave_spreads_each_dataset_over_the_epoch():
    # asr has 5 sequences, lm 3: next comes the one least far through its list (asr first on ties)
    dataset = combined(seq_ordering="interleave")
    assert sources(dataset, 1) == ["asr0", "lm0", "asr1", "lm1", "asr2", "asr3", "lm2", "asr4"]
    assert dataset.seq_ordering == "interleave"


def test_combined_joint_ordering_and_sub_dataset_options():
    dataset = combined(seq_ordering="sorted_reverse")
    lens = dict(zip([f"asr{i}" for i in range(5)] + [f"lm{i}" for i in range(3)], A_LENS + B_LENS))
    assert sources(dataset, 1) == sorted(lens, key=lambda s: -lens[s])
    repeated = combined(
        datasets={"asr": static(100, A_LENS[:2]), "lm": static(200, B_LENS[:1], repeat_epoch=3)},
        data_map={("asr", "data"): "data", ("lm", "data"): "data"},
    )
    assert sources(repeated, 1) == ["asr0", "asr1", "lm0", "lm0", "lm0"]  # repeat_epoch grows the lm share


def test_combined_sampling_sizes():
    dataset = combined(sampling_sizes={"asr": 2, "lm": 2})
    assert sources(dataset, 1) == ["asr0", "asr1", "lm0", "lm1"]
    assert sources(dataset, 2) == ["asr2", "asr3", "lm2", "lm0"]  # continues, wrapping around
    assert sources(dataset, 3) == ["asr4", "asr0", "lm1", "lm2"]
    assert len(sources(combined(sampling_sizes=4, seq_ordering="random"), 1)) == 8


def test_combined_shards_and_pickle():
    full = sources(combined(seq_ordering="random_dataset"), 5)
    shards = []
    for shard_index in range(2):
        dataset = combined(seq_ordering="random_dataset")
        dataset.set_sharding(shard_index, 2)
        shards.append(sources(dataset, 5))
        assert shards[-1] == full[shard_index::2]
        clone = pickle.loads(pickle.dumps(dataset))
        assert [
            f"{clone.dataset_keys[clone.get_dataset_index(i)]}{clone.get_tag(i)[4:]}" for i in range(clone.num_seqs)
        ] == shards[-1]
    assert sorted(sum(shards, [])) == sorted(full)


def test_combined_bad_options():
    with pytest.raises(
        DatasetError,
        match=r"data_map entry \('tts', 'data'\) names dataset 'tts', which is not in datasets \(\['asr', 'lm'\]\)",
    ):
        combined(data_map={("tts", "data"): "data"})
    with pytest.raises(
        DatasetError, match=r"data_map entry 'asr': 'data'; expected \(dataset_key, dataset_data_key\): data_key"
    ):
        combined(data_map={"asr": "data"})
    with pytest.raises(
        DatasetError, match=r"dataset 'lm' \(StaticDataset\) has no data key 'classes'; it has \['text'\]"
    ):
        combined(data_map={("asr", "data"): "data", ("lm", "classes"): "classes"})
    with pytest.raises(DatasetError, match=r"data key 'data' differs between dataset 'asr' .* and dataset 'lm'"):
        combined(data_map={("asr", "data"): "data", ("lm", "text"): "data"})
    with pytest.raises(DatasetError, match=r"data_map maps both \('asr', 'data'\) and \('asr', 'classes'\) to 'x'"):
        combined(data_map={("asr", "data"): "x", ("asr", "classes"): "x"})
    with pytest.raises(DatasetError, match=r"sampling_sizes and partition_epoch cannot be combined"):
        combined(sampling_sizes=2, partition_epoch=2)
    with pytest.raises(DatasetError, match=r"sampling_sizes must be an int or a dict with the keys \['asr', 'lm'\]"):
        combined(sampling_sizes={"asr": 2})
    with pytest.raises(DatasetError, match=r"data_dims\['classes'\] has dim 5, but the data has 4"):
        combined(data_dims={"classes": 5})
    with pytest.raises(DatasetError, match=r"data_dtypes\['data'\] = 'float64', but the data has float32"):
        combined(data_dtypes={"data": "float64"})
    assert (
        combined(data_dims={"data": (2, 2), "classes": 4}, data_dtypes={"classes": "int32"}).get_data_dim("classes")
        == 4
    )
