"""MultiProcDataset, MultiEpochDataset and TextDictDataset, as mainline configs use them."""

from __future__ import annotations

import gzip
import pickle

import pytest

from returnn.datasets import init_dataset
from returnn.errors import DatasetError
from returnn.torch.data import DataPipelineOptions
from returnn.torch.data.pipeline import iterate_batches

STATIC = {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 6, "seq_ordering": "random"}


def tags(dataset, epoch, read_epoch):
    return [tag for tag, _ in read_epoch(dataset, epoch, ["data"])]


def test_multi_proc_dataset_is_the_inner_dataset(read_epoch):
    wrapped = init_dataset({"class": "MultiProcDataset", "dataset": STATIC, "num_workers": 4, "buffer_size": 10})
    inner = init_dataset(STATIC)
    assert wrapped.get_data_keys() == inner.get_data_keys() and wrapped.num_outputs == inner.num_outputs
    assert read_epoch(wrapped, 2, ["data"])[0][0] == read_epoch(inner, 2, ["data"])[0][0]
    assert tags(wrapped, 2, read_epoch) == tags(inner, 2, read_epoch)
    options = DataPipelineOptions.parse(batch_size=1000)
    shards = [
        tag
        for shard in range(2)
        for batch in iterate_batches(wrapped, options, epoch=1, shard_index=shard, num_shards=2)
        for tag in batch.lists["seq_tag"]
    ]
    assert sorted(shards) == sorted(tags(inner, 1, read_epoch))
    wrapped.set_sharding(0, 1)
    assert tags(pickle.loads(pickle.dumps(wrapped)), 3, read_epoch) == tags(inner, 3, read_epoch)


def test_multi_epoch_dataset_covers_all_parts_of_the_inner_partition(read_epoch):
    inner = {**STATIC, "partition_epoch": 3}
    dataset = init_dataset({"class": "MultiEpochDataset", "dataset": inner, "multi_epoch": 3})
    plain = init_dataset(inner)
    expected = [tag for epoch in (4, 5, 6) for tag in tags(plain, epoch, read_epoch)]
    assert tags(dataset, 2, read_epoch) == expected and sorted(expected) == [f"seq-{i}" for i in range(6)]
    assert len(tags(dataset, None, read_epoch)) == 6  # forwarding: the inner dataset's epoch
    with pytest.raises(DatasetError, match="multi_epoch must be an int >= 1"):
        init_dataset({"class": "MultiEpochDataset", "dataset": inner, "multi_epoch": 0})


def test_text_dict_dataset_search_output(tmp_path, read_epoch):
    path = tmp_path / "search_out.py.gz"
    with gzip.open(path, "wt") as f:
        f.write(repr({"s1": [(-2.5, "b a"), (-0.5, "a b c")], "s2": [(-1.0, "c")]}))
    vocab = {"labels": ["a", "b", "c"], "unknown_label": None}
    dataset = init_dataset({"class": "TextDictDataset", "filename": str(path), "vocab": vocab})
    seqs = read_epoch(dataset, 1)
    assert [tag for tag, _ in seqs] == ["s1", "s2"]
    s1 = seqs[0][1]
    assert s1["data"].tolist() == [0, 1, 2] and s1["data_flat"].tolist() == [1, 0, 0, 1, 2]
    assert s1["data_seq_lens"].tolist() == [2, 3] and s1["scores"].tolist() == [-2.5, -0.5]
    assert dataset.num_outputs["data"] == (3, 1) and dataset.get_data_dtype("scores") == "float32"
    (tmp_path / "refs.py").write_text(repr({"r1": "c a"}))
    single = init_dataset(
        {"class": "TextDictDataset", "filename": str(tmp_path / "refs.py"), "vocab": vocab, "item_format": "single"}
    )
    assert [(tag, data["data"].tolist()) for tag, data in read_epoch(single, 1)] == [("r1", [2, 0])]
    wrong = init_dataset({"class": "TextDictDataset", "filename": str(tmp_path / "refs.py"), "vocab": vocab})
    with pytest.raises(DatasetError, match=r"entry 'r1': expected a non-empty list \[\(score, text\), ...\]"):
        wrong.init_seq_order(epoch=1)
