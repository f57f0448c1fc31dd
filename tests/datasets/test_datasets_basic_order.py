"""Sequence orderings, partition_epoch, repeat_epoch, subsets and filters of the Dataset base class."""

from __future__ import annotations

import gzip

import pytest

from returnn.datasets.seq_order import ORDERINGS, parse_seq_ordering
from returnn.errors import DatasetError

ALL_ORDERINGS = [
    "default",
    "reverse",
    "sorted",
    "sorted_reverse",
    "random",
    "random:3",
    "laplace",
    "laplace:3",
    "laplace:.5",
    "laplace:.5:2",
    "sort_bin_shuffle",
    "sort_bin_shuffle:3",
    "sort_bin_shuffle:.5:2",
    "sort_bin_shuffle_x2",
    "sort_bin_shuffle_x2:.10",
    "default_every_n:5",
]


@pytest.mark.parametrize("ordering", ALL_ORDERINGS)
def test_every_ordering_is_a_deterministic_permutation(ordering, static_dataset, epoch_order, seq_lens):
    first = epoch_order(static_dataset(seq_ordering=ordering), 4)
    again = epoch_order(static_dataset(seq_ordering=ordering), 4)
    assert sorted(first) == list(range(len(seq_lens)))
    assert first == again


@pytest.mark.parametrize("ordering", ALL_ORDERINGS)
def test_partitions_of_one_epoch_cover_every_sequence_once(ordering, static_dataset, epoch_order, seq_lens):
    dataset = static_dataset(seq_ordering=ordering, partition_epoch=4)
    for full_epoch in (1, 2):
        parts = [epoch_order(dataset, sub_epoch) for sub_epoch in range(4 * full_epoch - 3, 4 * full_epoch + 1)]
        assert [len(part) for part in parts] == [6, 6, 6, 5]
        assert sorted(sum(parts, [])) == list(range(len(seq_lens)))


def test_simple_orderings_exact(static_dataset, epoch_order, seq_lens):
    num = len(seq_lens)
    by_len = sorted(range(num), key=lambda i: seq_lens[i])
    assert epoch_order(static_dataset(), 1) == list(range(num))
    assert epoch_order(static_dataset(seq_ordering="reverse"), 1) == list(reversed(range(num)))
    assert epoch_order(static_dataset(seq_ordering="sorted"), 1) == by_len
    assert epoch_order(static_dataset(seq_ordering="sorted_reverse"), 1) == by_len[::-1]


def test_sorted_is_stable_for_equal_lengths(static_dataset, epoch_order):
    assert epoch_order(static_dataset([3, 1, 3, 1, 2], seq_ordering="sorted"), 1) == [1, 3, 4, 0, 2]
    assert epoch_order(static_dataset([3, 1, 3, 1, 2], seq_ordering="sorted_reverse"), 1) == [0, 2, 4, 1, 3]


def test_default_every_n_interleaves_blocks(static_dataset, epoch_order):
    order = epoch_order(static_dataset(seq_ordering="default_every_n:5"), 1)
    # 23 sequences: 5 blocks of 4, interleaved; the 3 left over come last.
    assert order == [0, 4, 8, 12, 16, 1, 5, 9, 13, 17, 2, 6, 10, 14, 18, 3, 7, 11, 15, 19, 20, 21, 22]


def test_random_changes_per_epoch_and_stays_for_n_epochs(static_dataset, epoch_order):
    dataset = static_dataset(seq_ordering="random")
    assert epoch_order(dataset, 1) != epoch_order(dataset, 2)
    fixed3 = static_dataset(seq_ordering="random:3")
    orders = [epoch_order(fixed3, epoch) for epoch in range(1, 5)]
    assert orders[0] == orders[1] == orders[2] != orders[3]


def test_seed_options(static_dataset, epoch_order):
    fixed = static_dataset(seq_ordering="random", fixed_random_seed=7)
    assert epoch_order(fixed, 1) == epoch_order(fixed, 2)
    plain = epoch_order(static_dataset(seq_ordering="random"), 1)
    assert epoch_order(static_dataset(seq_ordering="random", random_seed_offset=5), 1) != plain
    # The seed of epoch 1 with offset 5 is the seed of epoch 6 without an offset.
    assert epoch_order(static_dataset(seq_ordering="random", random_seed_offset=5), 1) == epoch_order(
        static_dataset(seq_ordering="random"), 6
    )


def _ascending_runs(values: list[int]) -> list[list[int]]:
    runs = [[values[0]]]
    for value in values[1:]:
        if value >= runs[-1][-1]:
            runs[-1].append(value)
        else:
            runs.append([value])
    return runs


def test_laplace_bins_alternate_ascending_and_descending(static_dataset, epoch_order, seq_lens):
    order = epoch_order(static_dataset(seq_ordering="laplace:2"), 1)
    lens = [seq_lens[i] for i in order]
    assert lens[:12] == sorted(lens[:12])
    assert lens[12:] == sorted(lens[12:], reverse=True)


def test_sort_bin_shuffle_keeps_bins_of_neighbouring_lengths(static_dataset, epoch_order, seq_lens):
    lens = [seq_lens[i] for i in epoch_order(static_dataset(seq_ordering="sort_bin_shuffle:4"), 1)]
    runs = _ascending_runs(lens)
    assert len(runs) <= 4
    assert sum(sorted(runs, key=lambda run: run[0]), []) == sorted(seq_lens)


def test_sort_bin_shuffle_x2_shuffles_inside_the_bins(static_dataset, epoch_order, seq_lens):
    twenty = seq_lens[:20]
    dataset = static_dataset(twenty, seq_ordering="sort_bin_shuffle_x2:4")
    lens = [twenty[i] for i in epoch_order(dataset, 1)]
    bins = sorted(tuple(sorted(lens[start : start + 5])) for start in range(0, 20, 5))
    assert bins == [tuple(sorted(twenty)[start : start + 5]) for start in range(0, 20, 5)]
    assert any(list(run) != sorted(run) for run in (lens[start : start + 5] for start in range(0, 20, 5)))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("shuffle", "unknown ordering"),
        ("random:x", "'x' is not an integer"),
        ("laplace:0", "'0' must be at least 1"),
        ("default_every_n", "default_every_n needs exactly one argument N"),
        ("sorted:3", "unknown ordering"),
    ],
)
def test_bad_ordering_lists_the_valid_ones(text, why, static_dataset):
    with pytest.raises(DatasetError, match=rf"seq_ordering '{text}': {why}.*Valid orderings: default, reverse"):
        static_dataset(seq_ordering=text)


def test_parse_seq_ordering_fields():
    assert parse_seq_ordering("laplace:.50:3").bin_size == 50
    assert parse_seq_ordering("laplace:.50:3").num_epochs_fixed == 3
    assert parse_seq_ordering("sort_bin_shuffle_x2:7").num_bins == 7
    assert parse_seq_ordering("sort_bin_shuffle_x2:7").get_num_bins(1000) == 7
    assert parse_seq_ordering("laplace:.50").get_num_bins(1000) == 20
    assert parse_seq_ordering("laplace:.50").get_num_bins(60) == 2
    assert "default_every_n:N" in ORDERINGS


def test_repeat_epoch_visits_the_order_repeatedly(static_dataset, epoch_order):
    order = epoch_order(static_dataset(seq_ordering="random", repeat_epoch=2), 3)
    assert order[:23] == order[23:]
    assert sorted(order[:23]) == list(range(23))


def test_epoch_none_visits_everything_once(static_dataset, epoch_order):
    assert epoch_order(static_dataset(partition_epoch=3, repeat_epoch=None), None) == list(range(23))
    assert len(epoch_order(static_dataset(repeat_epoch=3), None)) == 23


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"partition_epoch": 0}, "partition_epoch must be a positive int, got 0"),
        ({"repeat_epoch": 1.5}, "repeat_epoch must be a positive int, got 1.5"),
        ({"partition_epoch": 2, "repeat_epoch": 2}, "either partition_epoch or repeat_epoch"),
        ({"fixed_random_subset": 1.5}, "fixed_random_subset as a fraction must be at most 1"),
        ({"random_subset": -3}, "random_subset must be a count"),
    ],
)
def test_bad_epoch_options(kwargs, match, static_dataset):
    with pytest.raises(DatasetError, match=match):
        static_dataset(**kwargs)


def test_fixed_random_subset_is_the_same_every_epoch(static_dataset, epoch_order):
    dataset = static_dataset(fixed_random_subset=10, seq_ordering="random")
    subset = sorted(epoch_order(dataset, 1))
    assert len(subset) == 10 and len(set(subset)) == 10
    assert sorted(epoch_order(dataset, 2)) == subset
    assert sorted(epoch_order(static_dataset(fixed_random_subset=10), 5)) == subset
    assert len(epoch_order(static_dataset(fixed_random_subset=0.5), 1)) == 12


def test_random_subset_changes_per_epoch(static_dataset, epoch_order):
    dataset = static_dataset(random_subset=8)
    first, second = epoch_order(dataset, 1), epoch_order(dataset, 2)
    assert len(first) == len(second) == 8
    assert first == sorted(first) and first != second


def test_seq_list_filter_file(tmp_path, static_dataset, epoch_order):
    plain = tmp_path / "keep.txt"
    plain.write_text("seq-3\nseq-0\n\nseq-9\nseq-999\n")
    assert epoch_order(static_dataset(seq_list_filter_file=str(plain)), 1) == [0, 3, 9]
    zipped = tmp_path / "keep.txt.gz"
    with gzip.open(zipped, "wt") as file:
        file.write("seq-5\nseq-1\n")
    assert epoch_order(static_dataset(seq_list_filter_file=str(zipped), seq_ordering="reverse"), 1) == [5, 1]


def test_seq_list_filter_file_missing(tmp_path, static_dataset):
    dataset = static_dataset(seq_list_filter_file=str(tmp_path / "nope.txt"))
    with pytest.raises(
        DatasetError, match=r"cannot read dataset 'StaticDataset' \(StaticDataset\) seq_list_filter_file '.*nope.txt'"
    ):
        dataset.init_seq_order(epoch=1)
