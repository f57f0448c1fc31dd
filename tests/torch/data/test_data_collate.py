"""Collation: the data-dict contract of ARCHITECTURE.md, exactly."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from returnn.errors import DatasetError
from returnn.torch.data.collate import collate_batch


def _items() -> list[dict]:
    return [
        {
            "data": np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32),
            "classes": np.array([7, 8], dtype=np.uint32),
            "speaker": np.array(4, dtype=np.int32),
            "orth": np.array("hello world"),
            "seq_tag": "corpus/a",
            "seq_idx": 5,
        },
        {
            "data": np.array([[9, 10]], dtype=np.float32),
            "classes": np.array([11, 12, 13], dtype=np.uint32),
            "speaker": np.array(2, dtype=np.int32),
            "orth": np.array("hi"),
            "seq_tag": "corpus/b",
            "seq_idx": 6,
        },
    ]


def _check_contract(data: dict) -> None:
    assert set(data) == {
        "data",
        "data:size0",
        "data:size1",
        "data:size2",
        "classes",
        "classes:size0",
        "classes:size1",
        "speaker",
        "speaker:size0",
        "orth",
        "seq_tag",
        "seq_idx",
    }
    assert data["data"].dtype == torch.float32
    assert data["data"].tolist() == [[[1, 2], [3, 4], [5, 6]], [[9, 10], [0, 0], [0, 0]]]
    assert data["classes"].dtype == torch.int64  # from uint32
    assert data["classes"].tolist() == [[7, 8, 0], [11, 12, 13]]
    for key in ("data:size0", "classes:size0", "speaker:size0"):
        assert data[key].dtype == torch.int64 and data[key].shape == () and data[key].item() == 2
    for key, expected in (("data:size1", [3, 1]), ("data:size2", [2, 2]), ("classes:size1", [2, 3])):
        assert data[key].dtype == torch.int64 and data[key].tolist() == expected
    assert data["speaker"].dtype == torch.int32 and data["speaker"].tolist() == [4, 2]
    assert data["orth"] == ["hello world", "hi"]
    assert data["seq_tag"] == ["corpus/a", "corpus/b"]
    assert data["seq_idx"] == [5, 6]


def test_collate_follows_the_data_dict_contract():
    batch = collate_batch(_items())
    _check_contract(batch.to_data_dict())
    assert batch.num_seqs == 2
    assert batch.frames == {"data": (4, 3), "classes": (5, 3)}


def test_collate_in_shared_memory_is_one_shared_storage_and_survives_pickling():
    batch = collate_batch(_items(), shared_memory=True)
    assert batch.buffer.is_shared()
    data = batch.to_data_dict()
    storages = {value.untyped_storage().data_ptr() for value in data.values() if isinstance(value, torch.Tensor)}
    assert storages == {batch.buffer.untyped_storage().data_ptr()}
    _check_contract(pickle.loads(pickle.dumps(batch)).to_data_dict())


def test_collate_dtype_conversions_and_kept_dtypes():
    items = [
        {
            "u16": np.array([1, 2], dtype=np.uint16),
            "f64": np.array([0.5], dtype=np.float64),
            "flag": np.array([True, False]),
            "u8": np.array([255], dtype=np.uint8),
            "big_endian": np.array([1.5], dtype=">f4"),
        }
    ]
    data = collate_batch(items).to_data_dict()
    assert data["u16"].dtype == torch.int32 and data["u16"].tolist() == [[1, 2]]
    assert data["f64"].dtype == torch.float64 and data["f64"].tolist() == [[0.5]]
    assert data["flag"].dtype == torch.bool and data["flag"].tolist() == [[True, False]]
    assert data["u8"].dtype == torch.uint8 and data["u8"].tolist() == [[255]]
    assert data["big_endian"].dtype == torch.float32 and data["big_endian"].tolist() == [[1.5]]


def test_collate_pads_every_axis_and_reports_each_extent():
    items = [{"image": np.ones((2, 3), dtype=np.int64)}, {"image": np.full((1, 4), 2, dtype=np.int64)}]
    data = collate_batch(items).to_data_dict()
    assert data["image"].tolist() == [[[1, 1, 1, 0], [1, 1, 1, 0]], [[2, 2, 2, 2], [0, 0, 0, 0]]]
    assert data["image:size1"].tolist() == [2, 1]
    assert data["image:size2"].tolist() == [3, 4]


def test_collate_string_arrays_become_lists_of_python_objects():
    items = [{"words": np.array(["a", "b"])}, {"words": np.array(["c"])}]
    assert collate_batch(items).to_data_dict() == {"words": [["a", "b"], ["c"]]}


def test_collate_mismatching_items_are_clear_errors():
    with pytest.raises(DatasetError, match=r"'a' and 'b' have different keys \['data', 'seq_tag'\] and \['seq_tag'\]"):
        collate_batch([{"data": np.zeros(2), "seq_tag": "a"}, {"seq_tag": "b"}])
    with pytest.raises(DatasetError, match=r"key 'data': sequences have different numbers of axes"):
        collate_batch([{"data": np.zeros(2)}, {"data": np.zeros((2, 2))}])
