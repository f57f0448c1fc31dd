"""Generated datasets: shapes, dtypes, tags, determinism, sharding."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from returnn.datasets.generating import (
    CopyTaskDataset,
    DummyDataset,
    DummyDatasetMultipleDataKeys,
    DummyDatasetMultipleSequenceLength,
    StaticDataset,
    Task12AXDataset,
    TaskEpisodicCopyDataset,
    TaskNumberBaseConvertDataset,
    convert_data_dims,
)
from returnn.errors import DatasetError


def test_dummy_dataset_values(read_epoch):
    dataset = DummyDataset(input_dim=2, output_dim=3, num_seqs=4)
    assert dataset.num_outputs == {"classes": (3, 1), "data": (2, 2)}
    assert dataset.get_data_keys() == ["data", "classes"]
    seqs = read_epoch(dataset, 1)
    assert [tag for tag, _ in seqs] == ["seq-0", "seq-1", "seq-2", "seq-3"]
    data = seqs[1][1]
    # Sequence 1: the counter runs 1..4 for the features, 5..6 for the classes.
    np.testing.assert_allclose(data["data"], [[-0.4, -0.3], [-0.2, -0.1]], rtol=1e-6)
    np.testing.assert_array_equal(data["classes"], [2, 0])
    assert (data["data"].dtype, data["classes"].dtype) == (np.float32, np.int32)
    assert (dataset.get_data_dtype("data"), dataset.get_data_dtype("classes")) == ("float32", "int32")
    assert (dataset.get_data_shape("data"), dataset.get_data_shape("classes")) == ([2], [])
    assert dataset.get_seq_length(0) == {"data": 2, "classes": 2}


def test_dummy_dataset_shift_and_scale(read_epoch):
    dataset = DummyDataset(
        input_dim=1, output_dim=2, num_seqs=1, seq_len=3, input_max_value=2, input_shift=1, input_scale=3
    )
    np.testing.assert_array_equal(read_epoch(dataset, 1)[0][1]["data"], [[3.0], [6.0], [3.0]])


def test_dummy_dataset_multiple_sequence_length(read_epoch):
    dataset = DummyDatasetMultipleSequenceLength(input_dim=4, output_dim=5, num_seqs=2)
    data = read_epoch(dataset, 1)[0][1]
    assert (data["data"].shape, data["classes"].shape) == ((10, 4), (20,))
    np.testing.assert_array_equal(data["classes"][:6], [0, 1, 2, 3, 4, 0])  # the counter is at 40 after the data
    custom = DummyDatasetMultipleSequenceLength(
        input_dim=1, output_dim=2, num_seqs=1, seq_len={"data": 3, "classes": 1}
    )
    custom.init_seq_order(epoch=1)
    assert custom.get_seq_length(0) == {"data": 3, "classes": 1}


def test_dummy_dataset_multiple_data_keys(read_epoch):
    dataset = DummyDatasetMultipleDataKeys(
        output_dim={"feats": (3, 2), "labels": (7, 1), "data": (2, 2)},
        data_keys=["feats", "labels", "data"],
        num_seqs=3,
        seq_len={"feats": 4, "labels": 2, "data": 5},
    )
    assert dataset.get_data_keys() == ["feats", "labels", "data"]
    assert dataset.get_target_list() == ["feats", "labels"]
    data = read_epoch(dataset, 1)[2][1]
    assert (data["feats"].shape, data["labels"].shape, data["data"].shape) == ((4, 3), (2,), (5, 2))
    np.testing.assert_array_equal(data["labels"], [0, 1])  # counter 2 + 12 = 14 -> 14 % 7, 15 % 7
    assert (data["feats"].dtype, data["labels"].dtype) == (np.float32, np.int32)
    default = DummyDatasetMultipleDataKeys(output_dim={"data": (2, 2), "classes": (3, 1)}, num_seqs=1)
    default.init_seq_order(epoch=1)
    assert default.get_seq_length(0) == {"data": 20, "classes": 20}


def test_dummy_dataset_multiple_data_keys_checks_keys():
    with pytest.raises(DatasetError, match=r"output_dim must be a dict with exactly the keys \['a'\].*seq_len must"):
        DummyDatasetMultipleDataKeys(output_dim={"b": 3}, data_keys=["a"], num_seqs=1, seq_len={"c": 2})


def test_static_dataset_keys_dims_dtypes(read_epoch):
    data = [
        {"data": np.ones((3, 4), dtype=np.float16), "classes": np.array([1, 2], dtype=np.int64)},
        {"data": np.zeros((2, 4), dtype=np.float16), "classes": np.array([6], dtype=np.int64)},
    ]
    dataset = StaticDataset(data=data)
    assert dataset.get_data_keys() == ["classes", "data"]
    assert dataset.get_target_list() == ["classes"]
    assert dataset.num_outputs == {"classes": (7, 1), "data": (4, 2)}
    assert (dataset.get_data_dtype("data"), dataset.get_data_dtype("classes")) == ("float16", "int64")
    assert dataset.is_data_sparse("classes") and not dataset.is_data_sparse("data")
    seqs = read_epoch(dataset, 1)
    np.testing.assert_array_equal(seqs[1][1]["classes"], [6])
    assert seqs[0][1]["data"].dtype == np.float16


def test_static_dataset_custom_keys_with_dims(read_epoch):
    dataset = StaticDataset(
        data=[{"source": np.array([3, 1]), "target": np.array([0.5, 1.5], dtype=np.float32)}],
        output_dim={"source": (10, 1)},
        target_list=["target"],
    )
    assert dataset.num_outputs == {"source": (10, 1), "target": (1, 1)}
    assert not dataset.is_data_sparse("target") and dataset.get_data_shape("target") == []
    assert dataset.get_data_dim("source") == 10
    assert read_epoch(dataset, 1)[0][0] == "seq-0"


def test_static_dataset_bad_input():
    with pytest.raises(DatasetError, match=r"StaticDataset: data is empty"):
        StaticDataset(data=[])
    with pytest.raises(DatasetError, match=r"sequence 1 has keys \['a'\], the first \['a', 'b'\]"):
        StaticDataset(data=[{"a": np.zeros(1), "b": np.zeros(1)}, {"a": np.zeros(1)}])
    with pytest.raises(DatasetError, match=r"target_list keys \['c'\] are not in the data keys"):
        StaticDataset(data=[{"a": np.zeros(1)}], target_list=["c"])


def test_static_dataset_serialize_utf8():
    text = "Hallo Wörld"
    dataset = StaticDataset(
        data=[{"data": np.frombuffer(text.encode("utf8"), dtype=np.uint8)}], output_dim={"data": (255, 1)}
    )
    dataset.init_seq_order(epoch=1)
    assert dataset.serialize_data("data", dataset.get_data(0, "data")) == text


def test_static_dataset_copy_from_dataset(read_epoch):
    source = DummyDataset(input_dim=2, output_dim=3, num_seqs=5, seq_ordering="reverse")
    source.init_seq_order(epoch=1)
    copy = StaticDataset.copy_from_dataset(source, start_seq_idx=1, max_seqs=3)
    assert copy.num_outputs == source.num_outputs
    copied = read_epoch(copy, 1)
    original = read_epoch(source, 1)[1:4]
    assert len(copied) == 3
    for (_, got), (_, want) in zip(copied, original):
        np.testing.assert_array_equal(got["data"], want["data"])
        np.testing.assert_array_equal(got["classes"], want["classes"])


def test_task_12ax(read_epoch):
    dataset = Task12AXDataset(num_seqs=20)
    assert dataset.num_outputs == {"classes": (2, 1), "data": (9, 2)}
    assert dataset.labels == {"data": list("123ABCXYZ"), "classes": ["L", "R"]}
    for _, data in read_epoch(dataset, 1):
        assert 10 <= data["data"].shape[0] < 100 and data["data"].shape[1] == 9
        assert data["data"].dtype == np.float32 and data["classes"].dtype == np.int32
        np.testing.assert_array_equal(data["data"].sum(axis=1), 1)
        symbols = "".join("123ABCXYZ"[i] for i in data["data"].argmax(axis=1))
        expected = Task12AXDataset.make_output_str(symbols)
        assert "".join("LR"[i] for i in data["classes"]) == expected
    assert Task12AXDataset.make_output_str("1AX2AX2BYBY1CAZX") == "LLRLLLLLRLRLLLLR"


def test_task_12ax_endless_stream():
    dataset = Task12AXDataset()
    dataset.init_seq_order(epoch=1)
    assert dataset.is_less_than_num_seqs(10**9)
    assert dataset.get_tag(10**9) == "seq-1000000000"
    with pytest.raises(DatasetError, match=r"infinite number of sequences"):
        _ = dataset.num_seqs
    with pytest.raises(DatasetError, match=r"endless generated stream cannot follow a given sequence list"):
        dataset.init_seq_order(epoch=1, seq_order=[1, 2])


def test_generated_data_depends_on_epoch_and_corpus_index_only(read_epoch):
    first = dict(read_epoch(Task12AXDataset(num_seqs=6), 1))
    again = dict(read_epoch(Task12AXDataset(num_seqs=6, seq_ordering="reverse"), 1))
    other_epoch = dict(read_epoch(Task12AXDataset(num_seqs=6), 2))
    for tag in first:
        np.testing.assert_array_equal(first[tag]["classes"], again[tag]["classes"])
    assert any(first[tag]["data"].shape != other_epoch[tag]["data"].shape for tag in first)
    fixed = Task12AXDataset(num_seqs=6, fixed_random_seed=3)
    assert [d["data"].shape for _, d in read_epoch(fixed, 1)] == [d["data"].shape for _, d in read_epoch(fixed, 2)]


def test_generated_dataset_shards_and_sorts(read_epoch):
    full = dict(read_epoch(TaskNumberBaseConvertDataset(num_seqs=10), 1))
    shards = {}
    for index in range(3):
        dataset = TaskNumberBaseConvertDataset(num_seqs=10)
        dataset.set_sharding(index, 3)
        shards.update(read_epoch(dataset, 1))
    assert sorted(shards) == sorted(full)
    for tag, data in shards.items():
        np.testing.assert_array_equal(data["classes"], full[tag]["classes"])
    lens = [len(d["data"]) for _, d in read_epoch(TaskNumberBaseConvertDataset(num_seqs=10, seq_ordering="sorted"), 1)]
    assert lens == sorted(lens)


def test_pickled_generating_dataset_gives_the_same_data(read_epoch):
    dataset = Task12AXDataset(num_seqs=4, seq_ordering="random")
    dataset.init_seq_order(epoch=5)
    clone = pickle.loads(pickle.dumps(dataset))
    for (tag_a, a), (tag_b, b) in zip(read_epoch(dataset, 5), read_epoch(clone, 5)):
        assert tag_a == tag_b
        np.testing.assert_array_equal(a["data"], b["data"])


def test_number_base_convert(read_epoch):
    dataset = TaskNumberBaseConvertDataset(
        input_base=8, output_base=3, min_input_seq_len=2, max_input_seq_len=4, num_seqs=15
    )
    assert dataset.num_outputs == {"data": (8, 1), "classes": (3, 1)}
    assert dataset.labels["classes"] == ["0", "1", "2"]
    for _, data in read_epoch(dataset, 1):
        assert 2 <= len(data["data"]) <= 4
        assert data["data"].dtype == np.int32 and data["classes"].dtype == np.int32
        number = int("".join(map(str, data["data"])), 8)
        assert int("".join(map(str, data["classes"])), 3) == number
        assert data["classes"][0] != 0 or number == 0
    with pytest.raises(DatasetError, match=r"need 0 < min_input_seq_len <= max_input_seq_len, got 3 and 2$"):
        TaskNumberBaseConvertDataset(min_input_seq_len=3, max_input_seq_len=2)
    with pytest.raises(DatasetError, match=r"input_base=1 and output_base=2 must both be in 2\.\.36$"):
        TaskNumberBaseConvertDataset(input_base=1)


def test_copy_task(read_epoch):
    dataset = CopyTaskDataset(nsymbols=5, minlen=2, maxlen=3, maxlen_epoch_factor=1, num_seqs=10)
    lens = set()
    for _, data in read_epoch(dataset, 4):
        np.testing.assert_array_equal(data["data"], data["classes"])
        assert data["data"].dtype == np.int32 and data["data"].max() < 5
        lens.add(len(data["data"]))
    assert lens <= set(range(2, 8)) and max(lens) > 3
    with pytest.raises(DatasetError, match=r"in epoch 1, need 0 < minlen \(0\) <= maxlen \(0\)"):
        read_epoch(CopyTaskDataset(nsymbols=5, num_seqs=1), 1)
    with pytest.raises(DatasetError, match=r"nsymbols must be in 1..256, got 300"):
        CopyTaskDataset(nsymbols=300)


def test_episodic_copy(read_epoch):
    for _, data in read_epoch(TaskEpisodicCopyDataset(num_seqs=5), 1):
        symbols = "".join(" .01234567"[i] for i in data["data"].argmax(axis=1))
        recalled = "".join(" .01234567"[i] for i in data["classes"])
        chars = symbols.split(" ")[0]
        assert recalled.endswith(chars + ".")
        assert recalled.strip(" ") == chars + "."


def test_convert_data_dims():
    assert convert_data_dims(5) == {"classes": (5, 1)}
    assert convert_data_dims({"data": 3, "c": 4, "d": [2, 2], "e": {"dim": 6, "sparse": True}}) == {
        "data": (3, 2),
        "c": (4, 1),
        "d": (2, 2),
        "e": (6, 1),
    }
    assert convert_data_dims({"f": {"dim": 8, "shape": (None, 8)}}) == {"f": (8, 3)}
    with pytest.raises(DatasetError, match=r"output_dim\['x'\] must be dim, \(dim, ndim\) or a dict, got 'y'"):
        convert_data_dims({"x": "y"})


def test_get_corpus_seq_matches_the_epoch(read_epoch):
    dataset = Task12AXDataset(num_seqs=5, seq_ordering="random")
    seqs = dict(read_epoch(dataset, 2))
    assert dataset.have_get_corpus_seq()
    seq = dataset.get_corpus_seq(3)
    assert seq.seq_tag == "seq-3"
    np.testing.assert_array_equal(seq.get_data("data"), seqs["seq-3"]["data"])


def test_dummy_dataset_num_seqs_is_known_before_the_first_epoch():
    dataset = DummyDataset(input_dim=2, output_dim=3, num_seqs=5)
    assert dataset.num_seqs == 5
    dataset.init_seq_order(epoch=1)
    assert dataset.num_seqs == 5 and dataset.is_less_than_num_seqs(4) and not dataset.is_less_than_num_seqs(5)
