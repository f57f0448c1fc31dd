"""ConcatSeqsDataset: sequences of an inner dataset glued together."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from returnn.datasets import init_dataset
from returnn.datasets.concat_seqs import ConcatSeqsDataset
from returnn.errors import DatasetError

LENS = [3, 5, 2, 4, 6, 1]
EOS = 7
LINES = ["seq-0;seq-1", "seq-2", "seq-3;seq-4;seq-5"]


def inner() -> dict:
    """Sequence i: ``data`` [T, 2] holding (i, frame), ``classes`` = [10 + i] * (T - 1) + [EOS]."""
    data = [
        {
            "data": np.stack([np.full(n, i), np.arange(n)], axis=1).astype(np.float32),
            "classes": np.array([10 + i] * (n - 1) + [EOS], dtype=np.int32),
        }
        for i, n in enumerate(LENS)
    ]
    return {"class": "StaticDataset", "data": data, "output_dim": {"classes": (20, 1)}}


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    (tmp_path / "list.txt").write_text("\n".join(LINES) + "\n")
    (tmp_path / "lens.py").write_text(repr({f"seq-{i}": n for i, n in enumerate(LENS)}))
    return {"seq_list_file": str(tmp_path / "list.txt"), "seq_len_file": str(tmp_path / "lens.py")}


def make(files, **kwargs) -> ConcatSeqsDataset:
    return init_dataset({"class": "ConcatSeqsDataset", "dataset": inner(), **files, **kwargs})


def test_concatenates_parts_in_order(files, read_epoch):
    dataset = make(files)
    assert dataset.get_data_keys() == ["classes", "data"] and dataset.num_outputs == {
        "data": (2, 2),
        "classes": (20, 1),
    }
    assert dataset.get_all_tags() == LINES and dataset.get_total_num_seqs() == 3
    seqs = read_epoch(dataset, 1)
    assert [tag for tag, _ in seqs] == LINES
    tag, data = seqs[2]
    assert data["data"][:, 0].tolist() == [3] * 4 + [4] * 6 + [5] * 1
    assert data["data"][:, 1].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 0]
    assert data["classes"].tolist() == [13, 13, 13, EOS, 14, 14, 14, 14, 14, EOS, EOS]
    assert dataset.get_seq_length(2) == {"data": 11, "classes": 11}


def test_orders_by_summed_length_and_shards(files, read_epoch):
    dataset = make(files, seq_ordering="sorted")
    assert [tag for tag, _ in read_epoch(dataset, 1)] == [
        "seq-2",
        "seq-0;seq-1",
        "seq-3;seq-4;seq-5",
    ]  # 2, 8, 11 frames
    shards = []
    for shard_index in range(2):
        sharded = make(files, seq_ordering="sorted")
        sharded.set_sharding(shard_index, 2)
        shards.append([tag for tag, _ in read_epoch(sharded, 1)])
    assert shards == [["seq-2", "seq-3;seq-4;seq-5"], ["seq-0;seq-1"]]
    parts = make(files, partition_epoch=2)
    assert [tag for tag, _ in read_epoch(parts, 1) + read_epoch(parts, 2)] == LINES


def test_pickle_round_trip(files, read_epoch):
    dataset = make(files, seq_ordering="random", name="train")
    expected = read_epoch(dataset, 2)
    clone = pickle.loads(pickle.dumps(dataset))
    assert type(clone) is ConcatSeqsDataset and clone.epoch == 2
    assert [tag for tag, _ in read_epoch(clone, 2)] == [tag for tag, _ in expected]
    np.testing.assert_array_equal(clone.get_data(clone.num_seqs - 1, "data"), expected[-1][1]["data"])


def test_in_between_options(files, read_epoch):
    dataset = make(
        files,
        remove_in_between_postfix={"classes": EOS},
        repeat_in_between_last_frame_up_to_multiple_of={"data": 4},
    )
    _, data = read_epoch(dataset, 1)[0]  # seq-0 (3 frames) + seq-1 (5 frames)
    assert data["classes"].tolist() == [10, 10, 11, 11, 11, 11, EOS]  # only the last EOS stays
    assert data["data"][:, 1].tolist() == [0, 1, 2, 2, 0, 1, 2, 3, 4]  # seq-0 padded to 4 with its last frame
    narrowed = make(files, pad_narrow_data_to_multiple_of_target_len={"data": ("classes", 2)})
    _, data = read_epoch(narrowed, 1)[2]  # parts of 4 and 6 frames become 8 and 12, the last stays 1
    assert data["data"][:, 1].tolist() == [0, 1, 2, 3, 3, 3, 3, 3] + [0, 1, 2, 3, 4, 5, 5, 5, 5, 5, 5, 5] + [0]


def test_epoch_wise_filter(files, read_epoch):
    dataset = make(files, epoch_wise_filter={(1, 1): {"max_mean_len": 6}})
    assert [tag for tag, _ in read_epoch(dataset, 1)] == ["seq-0;seq-1", "seq-2"]  # mean 5 with 8 and 2
    assert len(read_epoch(dataset, 2)) == 3


def test_bad_input(files, tmp_path, read_epoch):
    (tmp_path / "bad.txt").write_text("seq-0;seq-9\nseq-1\n")
    with pytest.raises(
        DatasetError,
        match=r"seq_list_file '.*bad.txt' names 1 tag\(s\) that seq_len_file '.*lens.py' does not have, e.g. \['seq-9",
    ):
        make({**files, "seq_list_file": str(tmp_path / "bad.txt")}).init_seq_order(epoch=1)
    (tmp_path / "lens9.py").write_text(repr({f"seq-{i}": 1 for i in range(10)}))
    with pytest.raises(DatasetError, match=r"names 1 tag\(s\) that the inner dataset does not have, e.g. \['seq-9'\]"):
        make({"seq_list_file": str(tmp_path / "bad.txt"), "seq_len_file": str(tmp_path / "lens9.py")}).get_all_tags()
    with pytest.raises(DatasetError, match=r"remove_in_between_postfix\['labels'\]: the inner dataset has no such key"):
        make(files, remove_in_between_postfix={"labels": 0})
    wrong_postfix = make(files, remove_in_between_postfix={"classes": 3})
    with pytest.raises(
        DatasetError,
        match=r"sequence 'seq-0;seq-1', part 'seq-0', key 'classes': remove_in_between_postfix expects it to end in 3",
    ):
        read_epoch(wrong_postfix, 1)
    with pytest.raises(
        DatasetError, match=r"pad_narrow_data_to_multiple_of_target_len\['data'\] = 2; expected \(target_key"
    ):
        make(files, pad_narrow_data_to_multiple_of_target_len={"data": 2})
