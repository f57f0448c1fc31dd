"""The dataset iteration stage, the composed pipeline and the loader in the main process (no workers)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from returnn.datasets.generating import DummyDataset, StaticDataset
from returnn.datasets.hdf import HDFDataset, SimpleHDFWriter
from returnn.errors import ConfigError, DatasetError
from returnn.log import V4
from returnn.torch.data import BatchStatistics, DataPipelineOptions, build_data_loader, default_num_workers
from returnn.torch.data.iterate import iterate_dataset
from returnn.torch.data.pipeline import iterate_batches

# ------------------------------------------------------------------------------------------------ iteration


def test_iterate_dataset_sets_up_the_epoch_and_yields_items(static_dataset, epoch_tags):
    dataset = static_dataset(4, seq_ordering="random")
    items = list(iterate_dataset(dataset, epoch=3))
    assert [item["seq_tag"] for item in items] == epoch_tags(static_dataset(4, seq_ordering="random"), 3)
    assert [item["seq_idx"] for item in items] == [0, 1, 2, 3]
    assert dataset.epoch == 3
    first = items[0]
    assert sorted(first) == ["classes", "data", "seq_idx", "seq_tag"]
    index = int(first["seq_tag"].split("-")[1])
    assert first["data"].tolist() == [[index, index]] * (index + 1)


def test_iterate_dataset_shard_holds_every_nth_sequence_with_global_positions(static_dataset, epoch_tags):
    order = epoch_tags(static_dataset(8, seq_ordering="random"), 2)
    shard = list(iterate_dataset(static_dataset(8, seq_ordering="random"), epoch=2, shard_index=1, num_shards=3))
    assert [item["seq_tag"] for item in shard] == order[1::3]
    assert [item["seq_idx"] for item in shard] == [1, 4, 7]


def test_iterate_dataset_data_key_named_like_a_batch_entry_is_an_error():
    dataset = StaticDataset(data=[{"data": np.zeros((2, 1), "float32"), "seq_idx": np.zeros(1, "int32")}])
    with pytest.raises(DatasetError, match=r"data keys \['seq_idx'\] clash .*; rename these data keys in the dataset"):
        next(iterate_dataset(dataset, epoch=1))


def test_iterate_dataset_unshardable_dataset_with_shards_is_an_error():
    endless = DummyDataset(input_dim=2, output_dim=3, num_seqs=float("inf"))
    with pytest.raises(DatasetError, match="cannot be sharded"):
        next(iterate_dataset(endless, epoch=1, shard_index=0, num_shards=2))


# ------------------------------------------------------------------------------------------------ modes


def _seq_counts(batches) -> list[int]:
    return [batch.num_seqs for batch in batches]


def test_modes_apply_filter_chunking_shuffle_and_drop_last_as_documented(static_dataset):
    options = DataPipelineOptions.parse(
        batch_size=100, max_seqs=3, drop_last=True, min_seq_length=3, chunking=(4, 4), online_shuffle_batches=2
    )
    dataset = static_dataset(8)
    # Lengths 1..8; filter keeps 3..8; chunks of 4: 3, 4, 4+1, 4+2, 4+3, 4+4 -> 10 chunks.
    train = list(iterate_batches(dataset, options, epoch=1, mode="train"))
    assert _seq_counts(train) == [3, 3, 3]  # drop_last drops the 10th chunk
    evaluation = list(iterate_batches(dataset, options, epoch=1, mode="eval"))
    assert _seq_counts(evaluation) == [3, 3, 3, 1]
    forward = list(iterate_batches(dataset, options, epoch=None, mode="forward"))
    assert [tag for batch in forward for tag in batch.lists["seq_tag"]] == [f"seq-{i}" for i in range(8)]
    assert [batch.lists["seq_tag"] for batch in evaluation] == [
        ["seq-2", "seq-3", "seq-4"],
        ["seq-4", "seq-5", "seq-5"],
        ["seq-6", "seq-6", "seq-7"],
        ["seq-7"],
    ]
    # Training shuffles the same batches (after dropping the last one).
    assert sorted(batch.lists["seq_tag"] for batch in train) == sorted(b.lists["seq_tag"] for b in evaluation[:3])
    with pytest.raises(ValueError, match="mode must be one of"):
        next(iterate_batches(dataset, options, epoch=1, mode="search"))


def test_shuffle_seed_gives_another_reproducible_batch_order(static_dataset):
    def tags(shuffle) -> list[str]:
        options = DataPipelineOptions.parse(batch_size=100, max_seqs=1, online_shuffle_batches=shuffle)
        return [batch.lists["seq_tag"][0] for batch in iterate_batches(static_dataset(8), options, epoch=1)]

    unseeded, seeded = tags(4), tags({"buffer_size": 4, "seed": 7})
    assert sorted(unseeded) == sorted(seeded) == [f"seq-{i}" for i in range(8)]
    assert seeded != unseeded and seeded == tags({"buffer_size": 4, "seed": 7})


# ------------------------------------------------------------------------------------------------ loader


def test_loader_in_main_process_yields_data_dicts_and_logs_statistics(caplog, static_dataset):
    options = DataPipelineOptions.parse(batch_size=12, max_seqs=8)
    loader = build_data_loader(static_dataset(5), options, mode="eval", device="cpu", name="dev")
    assert loader.num_workers == 0
    with caplog.at_level(V4, logger="returnn.torch.data"):
        batches = list(loader.iter_epoch(1))
    # Lengths 1..5 with batch_size 12: [1, 2, 3] (3 x 3 = 9), [4, 5] (2 x 5 = 10).
    assert [batch["seq_tag"] for batch in batches] == [["seq-0", "seq-1", "seq-2"], ["seq-3", "seq-4"]]
    assert batches[1]["data"].shape == (2, 5, 2) and batches[1]["data:size1"].tolist() == [4, 5]
    assert batches[1]["classes"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 3, 4]]
    assert isinstance(batches[0]["data"], torch.Tensor)
    stats = loader.last_epoch_stats
    assert isinstance(stats, BatchStatistics)
    assert (stats.epoch, stats.num_batches, stats.num_seqs, stats.min_seqs_per_batch, stats.max_seqs_per_batch) == (
        1,
        2,
        5,
        2,
        3,
    )
    assert (stats.keys["data"].frames, stats.keys["data"].padded_frames) == (15, 19)
    assert stats.keys["data"].padding_ratio == pytest.approx(4 / 19)
    (record,) = [r for r in caplog.records if "batch statistics" in r.getMessage()]
    assert record.levelno == V4
    assert record.getMessage().startswith("batch statistics: dataset=dev epoch=1 batches=2 seqs=5 seqs_per_batch=2.5")
    assert "data: frames_per_batch=8 max_padded=10 padding=0.211" in record.getMessage()
    loader.close()
    with pytest.raises(RuntimeError, match="is closed"):
        next(loader.iter_epoch(2))


def test_loader_reports_an_oversized_sequence_once_and_counts_all(caplog, static_dataset):
    loader = build_data_loader(static_dataset(8), DataPipelineOptions.parse(batch_size=6), mode="eval")
    with caplog.at_level(logging.WARNING, logger="returnn.torch.data"):
        list(loader.iter_epoch(1))
        list(loader.iter_epoch(2))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "dataset 'StaticDataset': sequence 'seq-6' with lengths {'classes': 7, 'data': 7} is larger than batch_size 6 "
        "and forms a batch of its own; further ones are counted in the batch statistics (log_verbosity 4)"
    ]
    assert loader.last_epoch_stats.num_oversized == 2


def test_loader_epoch_changes_the_order(static_dataset, epoch_tags):
    loader = build_data_loader(static_dataset(8, seq_ordering="random"), DataPipelineOptions.parse(batch_size=100))
    for epoch in (1, 2):
        (batch,) = loader.iter_epoch(epoch)
        assert batch["seq_tag"] == epoch_tags(static_dataset(8, seq_ordering="random"), epoch)


def test_loader_without_workers_ignores_worker_only_dataloader_options(static_dataset):
    options = DataPipelineOptions.parse(
        batch_size=100, num_workers_per_gpu=0, torch_dataloader_opts={"prefetch_factor": 4, "persistent_workers": True}
    )
    (batch,) = build_data_loader(static_dataset(3), options).iter_epoch(1)
    assert batch["seq_idx"] == [0, 1, 2]


def test_loader_refuses_more_shards_than_the_dataset_supports():
    endless = DummyDataset(input_dim=2, output_dim=3, num_seqs=float("inf"))
    options = DataPipelineOptions.parse(batch_size=100, num_workers_per_gpu=2, batching_scope="shard")
    with pytest.raises(ConfigError, match=r"cannot be split over 2 shards \(2 DataLoader workers x 1 distributed"):
        build_data_loader(endless, options)
    single = DataPipelineOptions.parse(batch_size=100, num_workers_per_gpu=0, batching_scope="shard")
    with pytest.raises(ConfigError, match=r"over 4 shards .* \(distributed training needs one\)"):
        build_data_loader(endless, single, rank=1, world_size=4)


def test_distributed_ranks_split_the_epoch(static_dataset):
    options = DataPipelineOptions.parse(batch_size=100, num_workers_per_gpu=0, batching_scope="shard")
    tags = []
    for rank in range(2):
        (batch,) = build_data_loader(static_dataset(6), options, rank=rank, world_size=2).iter_epoch(1)
        assert batch["seq_idx"] == list(range(rank, 6, 2))
        tags += batch["seq_tag"]
    assert sorted(tags) == [f"seq-{i}" for i in range(6)]


def _data_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key] for key in a
    )


@pytest.mark.parametrize("num_ranks", [2, 4])
def test_epoch_batches_are_dealt_to_ranks_and_the_same_for_any_number_of_ranks(static_dataset, num_ranks):
    # length filter, random chunk starts, drop_last, online shuffle and partition_epoch all act on the epoch's
    # order as in one process; rank r then trains the batches r, r + R, ... (in step k: batches kR .. kR + R - 1)
    stream = {"size": 3, "step": 2}
    options = DataPipelineOptions.parse(
        batch_size=9,
        max_seqs=2,
        min_seq_length=2,
        chunking_options={"chunk_streams": {"data": stream, "classes": stream}, "random_chunk_start": True},
        online_shuffle_batches=4,
        drop_last=True,
        num_workers_per_gpu=0,
    )

    def batches(epoch: int, rank: int = 0, world_size: int = 1) -> list[dict]:
        dataset = static_dataset(14, partition_epoch=2, seq_ordering="random")
        return list(build_data_loader(dataset, options, rank=rank, world_size=world_size).iter_epoch(epoch))

    uneven = []
    for epoch in (1, 2):
        single = batches(epoch)
        per_rank = [batches(epoch, rank, num_ranks) for rank in range(num_ranks)]
        assert len(single) > num_ranks
        uneven.append(len(single) % num_ranks != 0)
        # in an uneven last round, the first ranks have one batch more
        assert [len(own) for own in per_rank] == [len(range(r, len(single), num_ranks)) for r in range(num_ranks)]
        dealt = [per_rank[index % num_ranks][index // num_ranks] for index in range(len(single))]
        assert all(_data_dicts_equal(a, b) for a, b in zip(dealt, single))
    assert any(uneven)


class ReadCountingHDFDataset(HDFDataset):
    """Notes the positions of the sequences whose data is read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads: list[tuple[int, str]] = []

    @property
    def read_positions(self) -> set[int]:
        return {position for position, _ in self.reads}

    def get_data(self, seq_idx, key):
        self.reads.append((seq_idx, key))
        return super().get_data(seq_idx, key)

    def knows_lengths_without_loading(self):
        return True  # its data is HDFDataset's (a subclass that overrides get_data is not trusted by default)


@pytest.mark.parametrize(
    "stages",
    [
        dict(chunking_options={"chunk_streams": {"data": {"size": 3, "step": 2}, "classes": {"size": 3, "step": 2}},
                               "random_chunk_start": True}, context_window={"data": 3}),
        dict(context_window=(({"data": 2}, {"data": 1}))),
        dict(),
    ],
)  # fmt: skip
def test_epoch_batches_of_a_dataset_that_knows_its_lengths_are_read_by_their_shard_alone(tmp_path, stages):
    # an HDF file knows the lengths without reading the data: each of 3 shards batches the epoch on the lengths
    # (chunks, context, length filter, drop_last, shuffle, partition_epoch) and reads only its own batches' sequences;
    # the batches are those of one shard that reads every sequence
    rng = np.random.default_rng(5)
    with SimpleHDFWriter(str(tmp_path / "data.hdf"), dim=2, ndim=2, extra_type={"classes": (4, 1, "int32")}) as writer:
        for i in range(17):
            length = int(rng.integers(1, 9))
            features = rng.standard_normal((1, length, 2)).astype("float32")
            classes = rng.integers(0, 4, (1, length)).astype("int32")
            writer.insert_batch(features, [length], [f"seq-{i}"], extra={"classes": classes})
    options = DataPipelineOptions.parse(
        batch_size=12, max_seqs=3, min_seq_length=2, online_shuffle_batches=4, drop_last=True, num_workers_per_gpu=0,
        **stages,
    )  # fmt: skip

    def batches(rank: int = 0, world_size: int = 1) -> tuple[list[dict], set[int]]:
        dataset = ReadCountingHDFDataset(files=[str(tmp_path / "data.hdf")], partition_epoch=2, seq_ordering="random")
        loaded = list(build_data_loader(dataset, options, rank=rank, world_size=world_size).iter_epoch(2))
        assert len(set(dataset.reads)) == len(dataset.reads)  # each sequence read once, also for several chunks
        return loaded, dataset.read_positions

    assert not HDFDataset.knows_lengths_without_loading(ReadCountingHDFDataset(files=[str(tmp_path / "data.hdf")]))
    single, _ = batches()
    per_rank = [batches(rank, 3) for rank in range(3)]
    dealt = [per_rank[index % 3][0][index // 3] for index in range(len(single))]
    assert [len(own) for own, _ in per_rank] == [len(range(r, len(single), 3)) for r in range(3)]
    assert all(_data_dicts_equal(a, b) for a, b in zip(dealt, single))
    for own, read in per_rank:
        assert read == {position for batch in own for position in batch["seq_idx"]}
    batched = {position for batch in single for position in batch["seq_idx"]}
    reads = [read for _, read in per_rank]
    assert set().union(*reads) == batched and all(len(read) < len(batched) for read in reads)
    if "chunking_options" not in stages:  # the chunks of a sequence may lie in the batches of several shards
        assert sum(map(len, reads)) == len(batched)


def test_epoch_batching_works_for_datasets_that_cannot_be_sharded():
    endless = DummyDataset(input_dim=2, output_dim=3, num_seqs=float("inf"), seq_len=2)
    options = DataPipelineOptions.parse(batch_size=100, max_seqs=2, num_workers_per_gpu=0)
    batches = build_data_loader(endless, options, rank=1, world_size=2).iter_epoch(1)
    assert [next(batches)["seq_idx"] for _ in range(3)] == [[2, 3], [6, 7], [10, 11]]


def test_default_number_of_workers_by_device():
    assert default_num_workers(None) == 0
    assert default_num_workers("cpu") == 0
    assert default_num_workers("cuda") == 1
    assert default_num_workers(torch.device("cuda", 1)) == 1
