"""DistributeFilesDataset on real HDF files: sub-epochs and processes each load only their files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from returnn.datasets import init_dataset
from returnn.datasets.distrib_files import distribute_by_size
from returnn.datasets.hdf import SimpleHDFWriter
from returnn.errors import DatasetError
from returnn.torch.data import DataPipelineOptions
from returnn.torch.data.pipeline import iterate_batches


def sub_epoch_dataset(files_subepoch):
    return {"class": "HDFDataset", "files": files_subepoch}


@pytest.fixture
def hdf_files(tmp_path):
    """8 files; file f holds 2 sequences 'f<f>-s<i>'."""
    files = []
    for f in range(8):
        path = str(tmp_path / f"part{f}.hdf")
        with SimpleHDFWriter(path, dim=2) as writer:
            writer.insert_batch(np.full((2, 3, 2), f, "float32"), [3, 2], [f"f{f}-s0", f"f{f}-s1"])
        files.append(path)
    return files


def make(files, **kwargs):
    opts = {"class": "DistributeFilesDataset", "files": files, "get_sub_epoch_dataset": sub_epoch_dataset}
    return init_dataset({**opts, **kwargs})


def epoch_tags(dataset, epoch):
    dataset.init_seq_order(epoch=epoch)
    return [dataset.get_tag(i) for i in range(dataset.num_seqs)]


def files_of(tags):
    return {tag.split("-")[0] for tag in tags}


def test_sub_epochs_cover_every_file_once_per_full_epoch(hdf_files):
    dataset = make(hdf_files, partition_epoch=4, seq_ordering="random")
    assert dataset.get_data_keys() == ["data"] and dataset.get_data_dim("data") == 2
    sub_epochs = [epoch_tags(dataset, epoch) for epoch in (1, 2, 3, 4)]
    assert all(len(files_of(tags)) == 2 for tags in sub_epochs)  # 8 files of equal size in 4 parts
    assert sorted(tag for tags in sub_epochs for tag in tags) == sorted(f"f{f}-s{i}" for f in range(8) for i in (0, 1))
    next_full_epoch = [files_of(epoch_tags(dataset, epoch)) for epoch in (5, 6, 7, 8)]
    assert next_full_epoch != [files_of(tags) for tags in sub_epochs]  # shuffled anew
    assert epoch_tags(make(hdf_files, partition_epoch=4), 1) == ["f0-s0", "f0-s1", "f1-s0", "f1-s1"]


def test_distrib_shard_files_gives_each_process_its_own_files(hdf_files):
    options = DataPipelineOptions.parse(batch_size=1000)
    dataset = make(hdf_files, partition_epoch=2, seq_ordering="random", distrib_shard_files=True)
    shards = [
        [tag for batch in iterate_batches(dataset, options, epoch=1, shard_index=i, num_shards=2)
         for tag in batch.lists["seq_tag"]]
        for i in range(2)
    ]  # fmt: skip
    assert len(files_of(shards[0])) == len(files_of(shards[1])) == 2 and not files_of(shards[0]) & files_of(shards[1])
    unsharded = make(hdf_files, partition_epoch=2, seq_ordering="random")
    assert sorted(shards[0] + shards[1]) == sorted(epoch_tags(unsharded, 1))
    # without distrib_shard_files, both processes open the part's files and split its sequences (batched per shard
    # here; with the default batching_scope "epoch" they split its batches)
    plain = make(hdf_files, partition_epoch=2, seq_ordering="random")
    per_shard = DataPipelineOptions.parse(batch_size=1000, batching_scope="shard")
    halves = [
        [tag for batch in iterate_batches(plain, per_shard, epoch=1, shard_index=i, num_shards=2)
         for tag in batch.lists["seq_tag"]]
        for i in range(2)
    ]  # fmt: skip
    assert sorted(halves[0] + halves[1]) == sorted(epoch_tags(unsharded, 1)) and files_of(halves[0]) == files_of(
        halves[1]
    )


def test_pickles_for_workers_and_file_lists_on_disk(hdf_files, tmp_path):
    (tmp_path / "files.txt").write_text("\n".join(hdf_files) + "\n")
    dataset = make(str(tmp_path / "files.txt"), partition_epoch=2)
    clone = pickle.loads(pickle.dumps(dataset))
    assert epoch_tags(clone, 2) == epoch_tags(dataset, 2)
    with pytest.raises(DatasetError, match=r"8 files cannot be split into partition_epoch=9 parts"):
        make(hdf_files, partition_epoch=9)
    with pytest.raises(DatasetError, match=r"seq_ordering 'laplace:.10' orders the files here"):
        make(hdf_files, seq_ordering="laplace:.10")


def test_distribute_by_size_fills_every_bin():
    assert distribute_by_size(list("abcd"), [1, 1, 78, 120], 4) == [["a"], ["b"], ["c"], ["d"]]
    sizes = dict(zip("abcdef", [5, 5, 10, 10, 10, 10]))
    bins = distribute_by_size(list("abcdef"), list(sizes.values()), 3)
    assert sum(bins, []) == list("abcdef") and sorted(sum(sizes[x] for x in b) for b in bins) == [10, 20, 20]
    sizes = [5, 5] + [10] * 7
    bins = distribute_by_size(list(range(9)), sizes, 5)
    assert all(bins) and max(sum(sizes[i] for i in b) for b in bins) == 20  # 16 each is not possible
