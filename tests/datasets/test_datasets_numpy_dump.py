"""Tests for NumpyDumpDataset (returnn.datasets.numpy_dump) on dumps written with numpy.savetxt."""

from __future__ import annotations

import numpy as np
import pytest

from returnn.datasets.numpy_dump import NumpyDumpDataset
from returnn.errors import DatasetError


def write_dump(tmp_path, num_seqs: int, with_targets: bool = True, targets_name: str = "targets.classes") -> str:
    prefix = str(tmp_path / "dump.")
    for i in range(num_seqs):
        np.savetxt(f"{prefix}{i}.data.txt.gz", np.arange(3 * (i + 1), dtype=np.float32).reshape(i + 1, 3) / 2)
        if with_targets:
            np.savetxt(f"{prefix}{i}.{targets_name}.txt.gz", np.arange(i + 1) + i, fmt="%i")
    return prefix


@pytest.mark.parametrize("targets_name", ["targets.classes", "targets"])
def test_reads_gzipped_dumps_and_infers_dims(tmp_path, targets_name):
    prefix = write_dump(tmp_path, 3, targets_name=targets_name)
    dataset = NumpyDumpDataset(prefix=prefix, seq_ordering="reverse")
    assert dataset.num_outputs == {"data": (3, 2), "classes": (5, 1)}
    dataset.init_seq_order(epoch=1)
    assert dataset.num_seqs == 3
    assert dataset.get_tag(0) == "seq-2"
    assert dataset.get_data(0, "classes").tolist() == [2, 3, 4]
    data = dataset.get_data(2, "data")
    assert data.dtype == np.float32 and data.tolist() == [[0.0, 0.5, 1.0]]


def test_range_without_targets_and_missing_files(tmp_path):
    prefix = write_dump(tmp_path, 3, with_targets=False)
    dataset = NumpyDumpDataset(prefix=prefix, start_seq=1, end_seq=3, num_inputs=3)
    assert dataset.get_data_keys() == ["data"]
    dataset.init_seq_order(epoch=1)
    assert [dataset.get_data(i, "data").shape for i in range(2)] == [(2, 3), (3, 3)]
    with pytest.raises(DatasetError, match=r"no dump files '.*other.0.data.txt.gz' ... found"):
        NumpyDumpDataset(prefix=str(tmp_path / "other."))
    beyond = NumpyDumpDataset(prefix=prefix, end_seq=4, num_inputs=3)
    beyond.init_seq_order(epoch=1)
    with pytest.raises(DatasetError, match=r"cannot read '.*dump.3.data.txt.gz'"):
        beyond.get_data(3, "data")
