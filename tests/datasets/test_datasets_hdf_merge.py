"""Merging HDF files (the parts that the processes of a forward run write) into one, in a given order."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from returnn.datasets.hdf import HDFDataset, SimpleHDFWriter
from returnn.datasets.util.hdf_merge import merge_hdf_files
from returnn.errors import DatasetError

RNG = np.random.default_rng(0)
# (tag, [T, 3] features, [T] labels) of six sequences of different lengths
SEQS = [
    (f"seq-{i}", RNG.normal(size=(n, 3)).astype("float32"), RNG.integers(0, 4, size=n).astype("int32"))
    for i, n in enumerate((3, 1, 5, 2, 4, 2))
]


def write(path, seqs, *, with_labels: bool = True) -> str:
    """The sequences as SimpleHDFWriter writes them, one batch per sequence, with labels as extra data."""
    extra_type = {"classes": (4, 1, "int32")} if with_labels else None
    with SimpleHDFWriter(str(path), dim=3, labels=["a", "b", "c"], extra_type=extra_type) as writer:
        for tag, features, labels in seqs:
            extra = {"classes": [labels]} if with_labels else None
            writer.insert_batch(features[None], [len(features)], [tag], extra=extra)
    return str(path)


def contents(path) -> dict[str, object]:
    """Every dataset and attribute of an HDF file, by name."""
    found: dict[str, object] = {f"attr {key}": value.tolist() for key, value in h5py.File(path, "r").attrs.items()}
    with h5py.File(path, "r") as f:

        def visit(name: str, item: object) -> None:
            for key, value in item.attrs.items():
                found[f"{name} attr {key}"] = np.asarray(value).tolist()
            if isinstance(item, h5py.Dataset):
                found[name] = (item.dtype.str if item.dtype.kind != "O" else "O", item[()].tolist())

        f.visititems(visit)
    return found


def test_merged_in_the_order_of_the_keys_equals_the_file_written_in_that_order(tmp_path):
    # as two forward processes write them: rank 0 the batches 0 and 2 of the epoch, rank 1 the batch 1 (uneven)
    part0 = write(tmp_path / "out.hdf.part0", [SEQS[0], SEQS[1], SEQS[4], SEQS[5]])
    part1 = write(tmp_path / "out.hdf.part1", [SEQS[2], SEQS[3]])
    num_seqs = merge_hdf_files(str(tmp_path / "out.hdf"), [part0, part1], [[0, 1, 4, 5], [2, 3]])
    assert num_seqs == 6
    write(tmp_path / "single.hdf", SEQS)
    assert contents(tmp_path / "out.hdf") == contents(tmp_path / "single.hdf")
    dataset = HDFDataset(files=[str(tmp_path / "out.hdf")])
    dataset.init_seq_order(1)
    dataset.load_seqs(0, 6)
    for i, (tag, features, labels) in enumerate(SEQS):
        assert dataset.get_tag(i) == tag
        np.testing.assert_array_equal(dataset.get_data(i, "data"), features)
        np.testing.assert_array_equal(dataset.get_data(i, "classes"), labels)
    assert sorted(os.listdir(tmp_path)) == ["out.hdf", "out.hdf.part0", "out.hdf.part1", "single.hdf"]


def test_without_keys_the_parts_follow_each_other_and_an_empty_part_adds_nothing(tmp_path):
    parts = [
        write(tmp_path / "a.hdf", SEQS[:2], with_labels=False),
        write(tmp_path / "b.hdf", [], with_labels=False),
        write(tmp_path / "c.hdf", SEQS[2:], with_labels=False),
    ]
    assert merge_hdf_files(str(tmp_path / "out.hdf"), parts) == 6
    write(tmp_path / "single.hdf", SEQS, with_labels=False)
    assert contents(tmp_path / "out.hdf") == contents(tmp_path / "single.hdf")


def test_long_runs_of_one_part_are_copied_in_several_reads(tmp_path, monkeypatch):
    import returnn.datasets.util.hdf_merge as hdf_merge

    monkeypatch.setattr(hdf_merge, "_MAX_RUN_SEQS", 2)
    part = write(tmp_path / "part.hdf", SEQS)
    assert merge_hdf_files(str(tmp_path / "out.hdf"), [part], [[5, 4, 3, 2, 1, 0]]) == 6
    write(tmp_path / "reversed.hdf", SEQS[::-1])
    assert contents(tmp_path / "out.hdf") == contents(tmp_path / "reversed.hdf")


def test_parts_with_other_keys_or_keys_that_do_not_fit_are_refused_and_nothing_is_written(tmp_path):
    with_labels = write(tmp_path / "a.hdf", SEQS[:2])
    without = write(tmp_path / "b.hdf", SEQS[2:], with_labels=False)
    out = str(tmp_path / "out.hdf")
    with pytest.raises(DatasetError, match=r"cannot merge HDF files: '.*b.hdf' holds data keys \['data'\], "):
        merge_hdf_files(out, [with_labels, without])
    with pytest.raises(DatasetError, match=r"merge_hdf_files: 3 order keys for the 2 sequences of '.*a.hdf'"):
        merge_hdf_files(out, [with_labels], [[0, 1, 2]])
    with pytest.raises(DatasetError, match=r"merge_hdf_files: 1 lists of order keys for 2 parts"):
        merge_hdf_files(out, [with_labels, with_labels], [[0, 1]])
    assert sorted(os.listdir(tmp_path)) == ["a.hdf", "b.hdf"]
