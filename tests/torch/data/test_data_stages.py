"""The pipeline stages alone, on tiny hand-made items: length filter, chunking, batching, batch shuffling."""

from __future__ import annotations

import numpy as np
import pytest

from returnn.errors import ConfigError, DatasetError
from returnn.torch.data.batching import batch_items, exceeds_batch_size, shuffle_batches
from returnn.torch.data.chunking import ChunkingSpec, ChunkStream, chunk_bounds, chunk_items
from returnn.torch.data.filter import filter_by_length


def _item(tag: str, **lengths: int) -> dict:
    """An item with one 1-d array per key, of the given lengths; values count up from 0."""
    item = {key: np.arange(length) for key, length in lengths.items()}
    item["seq_tag"] = tag
    item["seq_idx"] = int(tag[1:]) if tag[1:].isdigit() else 0
    return item


def _tags(items) -> list[str]:
    return [item["seq_tag"] for item in items]


# ------------------------------------------------------------------------------------------------ filter


def test_filter_int_limits_apply_to_every_key_with_a_time_axis():
    items = [_item("s0", data=5, classes=2), _item("s1", data=1, classes=1), _item("s2", data=9, classes=3)]
    assert _tags(filter_by_length(items, min_seq_length=2)) == ["s0", "s2"]
    assert _tags(filter_by_length(items, max_seq_length=5)) == ["s0", "s1"]
    assert _tags(filter_by_length(items, min_seq_length=2, max_seq_length=8)) == ["s0"]


def test_filter_per_key_limits_ignore_keys_the_data_lacks():
    items = [_item("s0", data=5, classes=2), _item("s1", data=8, classes=1)]
    kept = filter_by_length(items, min_seq_length={"classes": 2, "orth": 3}, max_seq_length={"raw_audio": 1})
    assert _tags(kept) == ["s0"]


def test_filter_passes_scalars_and_strings_and_keeps_items_unchanged():
    item = {"data": np.zeros((4, 2)), "speaker": np.array(7), "orth": np.array("hello"), "seq_tag": "a", "seq_idx": 0}
    (kept,) = filter_by_length([item], min_seq_length=2, max_seq_length=4)
    assert kept is item
    assert list(filter_by_length([item], min_seq_length=5)) == []


def test_filter_without_limits_is_the_identity():
    items = [_item("s0", data=1)]
    assert list(filter_by_length(items)) == items


# ------------------------------------------------------------------------------------------------ chunking


def test_chunk_bounds_overlapping_chunks_with_short_tail_chunks():
    stream = ChunkStream(size=100, step=50)
    assert chunk_bounds(250, stream) == [(0, 100), (50, 150), (100, 200), (150, 250), (200, 250)]
    with_min = ChunkStream(size=100, step=50, min_chunk_size=60)
    assert chunk_bounds(250, with_min) == [(0, 100), (50, 150), (100, 200), (150, 250)]


def test_chunk_bounds_sequence_shorter_than_a_chunk():
    assert chunk_bounds(30, ChunkStream(size=100, step=50)) == [(0, 30)]
    assert chunk_bounds(30, ChunkStream(size=100, step=50, min_chunk_size=40)) == []
    assert chunk_bounds(0, ChunkStream(size=100, step=50)) == []


def test_chunk_bounds_step_larger_than_size_skips_frames():
    assert chunk_bounds(10, ChunkStream(size=2, step=4)) == [(0, 2), (4, 6), (8, 10)]
    assert chunk_bounds(10, ChunkStream(size=2, step=4), start=3) == [(3, 5), (7, 9)]


def test_chunk_items_two_keys_at_different_rates_carry_the_rest_along():
    speaker = np.array(3)
    item = {"data": np.arange(8), "classes": np.arange(4) * 10, "speaker": speaker, "seq_tag": "s7", "seq_idx": 7}
    spec = ChunkingSpec(streams={"data": ChunkStream(4, 2), "classes": ChunkStream(2, 1)})
    chunks = list(chunk_items([item], spec))
    assert [chunk["data"].tolist() for chunk in chunks] == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7]]
    assert [chunk["classes"].tolist() for chunk in chunks] == [[0, 10], [10, 20], [20, 30], [30]]
    assert all(chunk["speaker"] is speaker and chunk["seq_tag"] == "s7" and chunk["seq_idx"] == 7 for chunk in chunks)
    assert all(np.shares_memory(chunk["data"], item["data"]) for chunk in chunks)  # views, not copies


def test_chunk_items_disagreeing_chunk_counts_are_an_error():
    item = {"data": np.arange(8), "classes": np.arange(8), "seq_tag": "utt-1", "seq_idx": 0}
    spec = ChunkingSpec(streams={"data": ChunkStream(4, 4), "classes": ChunkStream(2, 2)})
    with pytest.raises(DatasetError, match=r"'utt-1'.*different numbers of chunks \{'data': 2, 'classes': 4\}"):
        list(chunk_items([item], spec))


def test_chunk_items_stream_key_missing_in_the_data_is_an_error():
    spec = ChunkingSpec(streams={"audio": ChunkStream(4, 4)})
    with pytest.raises(ConfigError, match=r"chunk_streams names \['audio'\], but the data has keys \['data'\]"):
        list(chunk_items([_item("s0", data=8)], spec))


def test_chunk_items_all_keys_form_chunks_every_time_axis_and_carries_length_one_keys():
    item = {"data": np.arange(5), "classes": np.arange(5), "label": np.array([9]), "seq_tag": "s0", "seq_idx": 0}
    chunks = list(chunk_items([item], ChunkingSpec(all_keys=ChunkStream(2, 2, min_chunk_size=2))))
    assert [chunk["data"].tolist() for chunk in chunks] == [[0, 1], [2, 3]]
    assert [chunk["classes"].tolist() for chunk in chunks] == [[0, 1], [2, 3]]
    assert all(chunk["label"] is item["label"] for chunk in chunks)


def test_chunk_items_random_start_is_below_step_shared_by_keys_and_zero_for_short_sequences():
    long_item = {"data": np.arange(40), "classes": np.arange(20), "seq_tag": "long", "seq_idx": 0}
    short_item = {"data": np.arange(6), "classes": np.arange(3), "seq_tag": "short", "seq_idx": 1}
    spec = ChunkingSpec(streams={"data": ChunkStream(10, 8), "classes": ChunkStream(5, 4)}, random_start=True)
    fraction = np.random.default_rng(5).random()
    data_start, classes_start = int(fraction * 8), int(fraction * 4)
    chunks = list(chunk_items([long_item, short_item], spec, rng=np.random.default_rng(5)))
    long_chunks = [chunk for chunk in chunks if chunk["seq_tag"] == "long"]
    expected_data = chunk_bounds(40, ChunkStream(10, 8), start=data_start)
    expected_classes = chunk_bounds(20, ChunkStream(5, 4), start=classes_start)
    assert [(c["data"][0], c["data"][-1] + 1) for c in long_chunks] == expected_data
    assert [(c["classes"][0], c["classes"][-1] + 1) for c in long_chunks] == expected_classes
    (short_chunk,) = [chunk for chunk in chunks if chunk["seq_tag"] == "short"]
    assert short_chunk["data"].tolist() == list(range(6)) and short_chunk["classes"].tolist() == [0, 1, 2]


def test_chunk_items_item_without_chunkable_keys_passes_whole():
    item = {"speaker": np.array(1), "seq_tag": "s0", "seq_idx": 0}
    assert list(chunk_items([item], ChunkingSpec(all_keys=ChunkStream(2, 2)))) == [item]


# ------------------------------------------------------------------------------------------------ batching


def _lengths(batches) -> list[list[int]]:
    return [[item["data"].shape[0] for item in batch] for batch in batches]


def test_batch_items_greedy_padded_size_limit():
    items = [_item(f"s{i}", data=n) for i, n in enumerate([3, 3, 5, 2, 2, 2, 9])]
    assert _lengths(batch_items(items, batch_size=10)) == [[3, 3], [5, 2], [2, 2], [9]]


def test_batch_items_oversized_sequence_forms_its_own_batch():
    items = [_item(f"s{i}", data=n) for i, n in enumerate([2, 15, 2])]
    assert _lengths(batch_items(items, batch_size=10)) == [[2], [15], [2]]
    assert exceeds_batch_size({"data": 15}, 10) and not exceeds_batch_size({"data": 10}, 10)
    assert exceeds_batch_size({"data": 15, "classes": 3}, {"classes": 2})
    assert not exceeds_batch_size({"data": 15, "classes": 2}, {"classes": 2})


def test_batch_items_max_seqs_and_drop_last():
    items = [_item(f"s{i}", data=1) for i in range(7)]
    assert _lengths(batch_items(items, batch_size=100, max_seqs=3)) == [[1, 1, 1], [1, 1, 1], [1]]
    assert _lengths(batch_items(items, batch_size=100, max_seqs=3, drop_last=True)) == [[1, 1, 1], [1, 1, 1]]
    assert [_tags(batch) for batch in batch_items(items[:2], batch_size=100)] == [["s0", "s1"]]


def test_batch_items_int_limit_counts_the_longest_key_and_scalars_as_one():
    items = [_item(f"s{i}", data=2, classes=4) for i in range(3)]
    assert [len(batch) for batch in batch_items(items, batch_size=8)] == [2, 1]  # classes: 4 x 2 = 8
    scalars = [{"speaker": np.array(i), "seq_tag": f"s{i}", "seq_idx": i} for i in range(3)]
    assert [len(batch) for batch in batch_items(scalars, batch_size=2)] == [2, 1]


def test_batch_items_per_key_limit_only_limits_listed_keys():
    items = [_item(f"s{i}", data=50, classes=2) for i in range(5)]
    assert [len(batch) for batch in batch_items(items, batch_size={"classes": 4})] == [2, 2, 1]
    with pytest.raises(ConfigError, match=r"none of its keys \['labels'\] is in the data"):
        list(batch_items(items, batch_size={"labels": 4}))


def test_shuffle_batches_is_a_seeded_bounded_permutation():
    batches = [[_item(f"s{i}", data=1)] for i in range(20)]

    def order(buffer_size: int, seed: int) -> list[int]:
        shuffled = shuffle_batches(batches, buffer_size=buffer_size, rng=np.random.default_rng(seed))
        return [batch[0]["seq_idx"] for batch in shuffled]

    assert order(1, 0) == list(range(20))
    shuffled = order(4, 0)
    assert sorted(shuffled) == list(range(20)) and shuffled != list(range(20))
    assert shuffled == order(4, 0) and shuffled != order(4, 1)
    # Batch j enters the buffer when j arrives, and output k happens after batch k + 4 arrived.
    assert all(position >= index - 4 for position, index in enumerate(shuffled))


@pytest.mark.parametrize("scope, expected", [("shard", [3, 3, 2]), ("epoch", [3, 3, 3])])
def test_drop_last_drops_one_batch_per_epoch_not_one_per_shard(static_dataset, scope, expected):
    from returnn.torch.data import DataPipelineOptions
    from returnn.torch.data.pipeline import iterate_batches

    # 10 sequences in 4 shards, max_seqs 3. Per shard (3, 3, 2, 2 sequences): one batch per shard, and only one of
    # them dropped. On the epoch's order: batches of 3, 3, 3, 1, the last one dropped, as without shards.
    options = DataPipelineOptions.parse(batch_size=1000, max_seqs=3, drop_last=True, batching_scope=scope)
    dataset = static_dataset(10)
    batches = [
        batch
        for shard in range(4)
        for batch in iterate_batches(dataset, options, epoch=1, mode="train", shard_index=shard, num_shards=4)
    ]
    assert [batch.num_seqs for batch in batches] == expected
    unsharded = list(iterate_batches(static_dataset(10), options, epoch=1, mode="train"))
    assert [batch.num_seqs for batch in unsharded] == [3, 3, 3]


def test_chunks_with_context_frames_from_the_sequence_and_zeros_beyond():
    from returnn.torch.data.chunking import add_context

    item = _item("s1", data=6, classes=6)
    item["data"] = item["data"] + 1  # frames 1..6, so that the zero padding shows
    spec = ChunkingSpec(streams={"data": ChunkStream(3, 3), "classes": ChunkStream(3, 3)})
    chunks = list(chunk_items([item], spec, context={"data": (1, 2)}))
    assert [c["data"].tolist() for c in chunks] == [[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 0, 0]]
    assert [c["classes"].tolist() for c in chunks] == [[0, 1, 2], [3, 4, 5]]  # no context for classes
    (padded,) = add_context([item], {"data": (2, 1), "absent": (1, 1)})
    assert padded["data"].tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 0] and padded["classes"].tolist() == list(range(6))


def test_context_window_in_the_pipeline_also_when_forwarding(static_dataset):
    from returnn.torch.data import DataPipelineOptions
    from returnn.torch.data.pipeline import iterate_batches

    options = DataPipelineOptions.parse(batch_size=1000, max_seqs=1, context_window=3, chunking=(2, 2))
    train = list(iterate_batches(static_dataset(2), options, epoch=1, mode="train"))
    assert [batch.to_data_dict()["data"].shape[1] for batch in train] == [3, 4]  # seq-0: 1 frame, seq-1: 2 frames
    forward = list(iterate_batches(static_dataset(2), options, epoch=None, mode="forward"))
    assert [batch.to_data_dict()["data:size1"].tolist() for batch in forward] == [[3], [4]]
