"""The Dataset base class: epoch set-up, sharding, pickling, the per-epoch accessors, DatasetSeq."""

from __future__ import annotations

import ast
import copy
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

from returnn.datasets import Dataset, DatasetSeq
from returnn.datasets.generating import StaticDataset, Task12AXDataset
from returnn.errors import DatasetError


class Corpus(Dataset):
    """A corpus that knows its tags but not its lengths before loading (like a text corpus)."""

    def __init__(self, tags: list[str], **kwargs):
        super().__init__(**kwargs)
        self.tags = tags
        self.num_outputs = {"classes": (5, 1)}

    def get_total_num_seqs(self) -> int:
        return len(self.tags)

    def get_all_tags(self) -> list[str]:
        return list(self.tags)

    def get_tag(self, seq_idx: int) -> str:
        return self.tags[self.get_corpus_seq_idx(seq_idx)]

    def get_data(self, seq_idx: int, key: str) -> np.ndarray:
        return np.arange(self.get_corpus_seq_idx(seq_idx) + 1, dtype=np.int32) % 5

    def supports_sharding(self) -> bool:
        return True


@pytest.mark.parametrize("num_shards", [1, 2, 3, 5])
@pytest.mark.parametrize("ordering", ["default", "random", "laplace:.4"])
def test_shards_split_the_epoch_order(num_shards, ordering, static_dataset, epoch_order):
    full = epoch_order(static_dataset(seq_ordering=ordering, partition_epoch=2), 3)
    shards = []
    for shard_index in range(num_shards):
        dataset = static_dataset(seq_ordering=ordering, partition_epoch=2)
        dataset.set_sharding(shard_index, num_shards)
        shards.append(epoch_order(dataset, 3))
        assert shards[-1] == full[shard_index::num_shards]
    assert sorted(sum(shards, [])) == sorted(full)


def test_sharded_data_and_tags_follow_the_corpus(static_dataset, read_epoch):
    dataset = static_dataset(seq_ordering="random")
    dataset.set_sharding(1, 3)
    seqs = read_epoch(dataset, 2)
    assert len(seqs) == 8  # positions 1, 4, ..., 22 of 23
    for tag, data in seqs:
        corpus_idx = int(tag.split("-")[1])
        assert data["data"][0, 0] == corpus_idx


@pytest.mark.parametrize(("index", "num"), [(2, 2), (-1, 3), (0, 0), (0, 1.5)])
def test_invalid_shard(index, num, static_dataset):
    with pytest.raises(DatasetError, match=rf"invalid shard {index!r} of {num!r}"):
        static_dataset().set_sharding(index, num)


def test_endless_dataset_cannot_be_sharded():
    dataset = Task12AXDataset()
    assert not dataset.supports_sharding()
    dataset.set_sharding(0, 1)
    with pytest.raises(DatasetError, match=r"dataset 'Task12AXDataset' \(Task12AXDataset\) cannot be sharded"):
        dataset.set_sharding(0, 2)


def test_pickle_round_trip_keeps_epoch_sharding_and_data(static_dataset, read_epoch):
    dataset = static_dataset(seq_ordering="random", partition_epoch=2, name="train")
    dataset.set_sharding(1, 2)
    for make_clone in (lambda: pickle.loads(pickle.dumps(dataset)), lambda: copy.deepcopy(dataset)):
        dataset.init_seq_order(epoch=3)
        clone = make_clone()
        assert type(clone) is StaticDataset
        assert (clone.name, clone.epoch, clone.num_seqs) == ("train", 3, dataset.num_seqs)
        assert clone.get_current_seq_order() == dataset.get_current_seq_order()
        assert clone.get_tag(2) == dataset.get_tag(2)
        np.testing.assert_array_equal(clone.get_data(2, "data"), dataset.get_data(2, "data"))
        # The clone goes on like the original.
        assert [tag for tag, _ in read_epoch(clone, 4)] == [tag for tag, _ in read_epoch(dataset, 4)]


def test_pickle_before_init_seq_order(static_dataset):
    clone = pickle.loads(pickle.dumps(static_dataset()))
    assert clone.epoch is None
    with pytest.raises(DatasetError, match=r"number of sequences not known"):
        _ = clone.num_seqs


def test_pickle_replays_explicit_seq_list():
    dataset = Corpus(["a", "b", "c", "d"])
    dataset.init_seq_order(epoch=2, seq_list=["d", "b"])
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.get_current_seq_order() == [3, 1]
    assert [clone.get_tag(i) for i in range(clone.num_seqs)] == ["d", "b"]


def test_seq_list_and_seq_order_are_used_as_given(static_dataset):
    dataset = static_dataset(seq_ordering="random", partition_epoch=4)
    dataset.set_sharding(0, 2)
    dataset.init_seq_order(epoch=1, seq_list=["seq-5", "seq-1", "seq-5"])
    assert dataset.get_current_seq_order() == [5, 1, 5]
    dataset.init_seq_order(epoch=1, seq_order=[7, 3])
    assert [dataset.get_tag(i) for i in range(dataset.num_seqs)] == ["seq-7", "seq-3"]


def test_seq_list_with_unknown_tags(static_dataset):
    with pytest.raises(
        DatasetError,
        match=r"2 of the 3 sequence tags given to init_seq_order \(seq_list\) are not in the corpus, e.g. \['x', 'y'\]",
    ):
        static_dataset().init_seq_order(epoch=1, seq_list=["seq-1", "x", "y"])


def test_init_seq_order_says_whether_the_order_changed(static_dataset):
    dataset = static_dataset(seq_ordering="random:2")
    assert dataset.init_seq_order(epoch=1) is True
    assert dataset.init_seq_order(epoch=2) is False
    assert dataset.init_seq_order(epoch=3) is True


def test_accessors_before_init_seq_order():
    dataset = Corpus(["a"])
    with pytest.raises(DatasetError, match=r"dataset 'Corpus' \(Corpus\): number of sequences not known"):
        _ = dataset.num_seqs
    with pytest.raises(DatasetError, match=r"no sequence order \(call init_seq_order first\)"):
        dataset.get_current_seq_order()
    assert dataset.get_complete_frac(0) is None
    assert Corpus(["a"], estimated_num_seqs=4).get_complete_frac(0) == 0.25


def test_base_accessors():
    dataset = Corpus(["a", "b", "c", "d"], seq_ordering="reverse", name="dev")
    assert dataset.init_seq_order(epoch=1) is True
    assert (dataset.num_seqs, dataset.get_total_num_seqs()) == (4, 4)
    assert dataset.is_less_than_num_seqs(3) and not dataset.is_less_than_num_seqs(4)
    assert [dataset.get_corpus_seq_idx(i) for i in range(4)] == [3, 2, 1, 0]
    assert dataset.get_seq_length(1) == {"classes": 3}
    assert dataset.get_complete_frac(1) == 0.5
    assert dataset.get_data_keys() == ["classes"]
    assert (dataset.get_data_dim("classes"), dataset.get_data_dtype("classes")) == (5, "int32")
    assert dataset.is_data_sparse("classes") and dataset.get_data_shape("classes") == []
    assert dataset.len_info() == "dev, 4 seqs"
    assert repr(dataset) == "<Corpus 'dev' epoch=1>"
    with pytest.raises(DatasetError, match=r"unknown data key 'data'; known keys: \['classes'\]"):
        dataset.get_data_dim("data")


def test_unique_seq_tags():
    dataset = Corpus(["a", "b", "a", "c", "b"], unique_seq_tags=True)
    dataset.init_seq_order(epoch=1)
    assert dataset.get_current_seq_order() == [0, 1, 3]


def test_sorting_needs_lengths():
    dataset = Corpus(["a", "b"], seq_ordering="laplace:2")
    with pytest.raises(
        DatasetError,
        match=r"dataset 'Corpus' \(Corpus\): seq_ordering 'laplace:2' sorts by sequence length.*seq_order_seq_lens_f",
    ):
        dataset.init_seq_order(epoch=1)


def test_seq_order_seq_lens_file(tmp_path):
    lens_file = tmp_path / "lens.py"
    lens_file.write_text("{'a': 30, 'b': 10, 'c': 20}\n")
    dataset = Corpus(["a", "b", "c"], seq_ordering="sorted", seq_order_seq_lens_file=str(lens_file))
    dataset.init_seq_order(epoch=1)
    assert dataset.get_current_seq_order() == [1, 2, 0]
    missing = Corpus(["a", "x"], seq_ordering="sorted", seq_order_seq_lens_file=str(lens_file))
    with pytest.raises(
        DatasetError, match=r"seq_order_seq_lens_file '.*lens.py' has no entry for 1 of the 2 sequences, e.g. \['x'\]"
    ):
        missing.init_seq_order(epoch=1)
    lens_file.write_text("[1, 2]")
    with pytest.raises(DatasetError, match=r"seq_order_seq_lens_file '.*lens.py': expected a dict, got list"):
        Corpus(["a"], seq_ordering="sorted", seq_order_seq_lens_file=str(lens_file)).init_seq_order(epoch=1)


def test_corpus_seq_len_fn_prefers_seq_order_seq_lens_file(tmp_path, static_dataset, epoch_order):
    own = static_dataset(seq_lens=[3, 1, 2], seq_ordering="sorted")
    assert [own.get_corpus_seq_len_fn()(idx) for idx in range(3)] == [3, 1, 2]
    assert epoch_order(own, 1) == [1, 2, 0]
    (tmp_path / "lens.py").write_text("{'seq-0': 1, 'seq-1': 2, 'seq-2': 3}")
    from_file = static_dataset(
        seq_lens=[3, 1, 2], seq_ordering="sorted", seq_order_seq_lens_file=str(tmp_path / "lens.py")
    )
    assert [from_file.get_corpus_seq_len_fn()(idx) for idx in range(3)] == [1, 2, 3]
    assert epoch_order(from_file, 1) == [0, 1, 2]
    assert Corpus(["a"]).get_corpus_seq_len_fn() is None


def test_get_seq_order_for_epoch_is_public():
    dataset = Corpus(["a", "b", "c", "d", "e"], seq_ordering="sorted_reverse", partition_epoch=2)
    assert dataset.get_seq_order_for_epoch(1, 5, get_seq_len=lambda i: i) == [4, 3, 2]
    assert dataset.get_seq_order_for_epoch(2, 5, get_seq_len=lambda i: i) == [1, 0]


def test_dataset_seq():
    seq = DatasetSeq(3, np.zeros((4, 2), dtype=np.float32), targets=np.array([1, 2], dtype=np.int32))
    assert seq.seq_tag == "seq-3"
    assert seq.get_data_keys() == ["data", "classes"]
    assert seq.num_frames == {"data": 4, "classes": 2}
    scalar = DatasetSeq(0, {"score": np.array(1.5)}, seq_tag="x")
    assert scalar.num_frames == {"score": 1}
    assert repr(scalar) == "<DatasetSeq 0 'x' {score: () float64}>"
    with pytest.raises(DatasetError, match=r"sequence 'x' has no data key 'data'; it has \['score'\]"):
        scalar.get_data("data")


_READ_SHARD = """
import pickle, sys
dataset = pickle.load(sys.stdin.buffer)
dataset.set_sharding(int(sys.argv[1]), 2)
dataset.init_seq_order(epoch=dataset.epoch)
tags = [dataset.get_tag(i) for i in range(dataset.num_seqs)]
sums = [float(dataset.get_data(i, "data").sum()) for i in range(dataset.num_seqs)]
print(repr((dataset.epoch, tags, sums)))
"""


def test_unpickled_in_a_fresh_interpreter(read_epoch):
    """What a spawn-started DataLoader worker does: rebuild the dataset from a pickle and read its shard."""
    repo_root = pathlib.Path(__file__).resolve().parents[2]
    dataset = Task12AXDataset(num_seqs=9, seq_ordering="random", name="train")
    expected = {tag: float(data["data"].sum()) for tag, data in read_epoch(dataset, 3)}
    found = {}
    for shard in (0, 1):
        proc = subprocess.run(
            [sys.executable, "-c", _READ_SHARD, str(shard)],
            input=pickle.dumps(dataset),
            capture_output=True,
            cwd=repo_root,
            check=True,
        )
        epoch, tags, sums = ast.literal_eval(proc.stdout.decode())
        assert epoch == 3 and len(tags) == (5 if shard == 0 else 4)
        found.update(zip(tags, sums))
    assert found == expected


def test_partition_epoch_larger_than_the_corpus_is_an_error_in_the_first_epoch(static_dataset, epoch_order):
    dataset = static_dataset(seq_lens=[3, 4], partition_epoch=4, name="train")
    with pytest.raises(DatasetError, match=r"partition_epoch=4 splits the 2 sequences .* at most 2"):
        epoch_order(dataset, 1)
    assert epoch_order(static_dataset(seq_lens=[3, 4], partition_epoch=2), 2) in ([0], [1])
