"""SimpleHDFWriter and HDFDatasetWriter: round trips through HDFDataset, and the raw layout RETURNN reads."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from returnn.datasets import init_dataset
from returnn.datasets.generating import StaticDataset
from returnn.datasets.hdf import HDFDataset, HDFDatasetWriter, SimpleHDFWriter
from returnn.errors import DatasetError


@pytest.fixture
def read_all(read_epoch):
    """``read_all(path)``: the HDFDataset of a file, and its first epoch as (tag, data by key)."""

    def read_all(path) -> tuple[HDFDataset, list[tuple[str, dict[str, np.ndarray]]]]:
        dataset = HDFDataset(files=[str(path)])
        return dataset, read_epoch(dataset, 1)

    return read_all


def padded_batch(lens: list[int], dim: int, offset: float = 0.0) -> np.ndarray:
    batch = np.zeros((len(lens), max(lens), dim), dtype="float32")
    for b, n in enumerate(lens):
        batch[b, :n] = offset + b + np.arange(n * dim, dtype="float32").reshape(n, dim) / 100
    return batch


# --------------------------------------------------------------------------------------------------
# SimpleHDFWriter


def test_simple_writer_dense_round_trip_and_layout(tmp_path, read_all):
    path = tmp_path / "out.hdf"
    batch1, batch2 = padded_batch([11, 7, 5], 13), padded_batch([10, 13, 3, 2], 13, offset=10)
    with SimpleHDFWriter(str(path), dim=13) as writer:
        writer.insert_batch(batch1, seq_len=[11, 7, 5], seq_tag=["seq-0", "seq-1", "seq-2"])
        writer.insert_batch(batch2, seq_len=np.array([10, 13, 3, 2]), seq_tag=[b"seq-3", "seq-4", "seq-5", "seq-6"])
    dataset, seqs = read_all(path)
    assert dataset.get_data_keys() == ["data"]
    assert dataset.num_outputs == {"data": (13, 2)}
    assert dataset.get_data_dtype("data") == "float32" and not dataset.is_data_sparse("data")
    assert [tag for tag, _ in seqs] == [f"seq-{i}" for i in range(7)]
    lens = [11, 7, 5, 10, 13, 3, 2]
    assert [data["data"].shape for _, data in seqs] == [(n, 13) for n in lens]
    np.testing.assert_array_equal(seqs[1][1]["data"], batch1[1, :7])
    np.testing.assert_array_equal(seqs[6][1]["data"], batch2[3, :2])
    with h5py.File(path, "r") as f:  # what RETURNN's reader relies on
        assert {k: int(v) for k, v in f.attrs.items()} == {
            "numSeqs": 7,
            "numTimesteps": sum(lens),
            "inputPattSize": 13,
            "numLabels": 13,
            "numDims": 1,
        }
        assert f["seqLengths"][...].tolist() == [[n, 0] for n in lens]
        assert f["seqTags"].asstr()[...].tolist() == [f"seq-{i}" for i in range(7)]
        assert "targets" not in f and f["labels"].shape == (0,)
    assert os.listdir(tmp_path) == ["out.hdf"]  # the temporary file is gone


def test_simple_writer_sparse_inputs_with_labels(tmp_path, read_all):
    path = tmp_path / "align.hdf"
    writer = SimpleHDFWriter(str(path), dim=4, ndim=1, labels=["sil", "a", "b", "c"])
    writer.insert_batch(np.array([[1, 2, 3], [3, 0, 0]], dtype="int32"), seq_len=[3, 1], seq_tag=["x", "y"])
    writer.close()
    dataset, seqs = read_all(path)
    assert dataset.num_outputs == {"data": (4, 1)}
    assert dataset.is_data_sparse("data") and dataset.labels == {"data": ["sil", "a", "b", "c"]}
    assert [data["data"].tolist() for _, data in seqs] == [[1, 2, 3], [3]]


def test_simple_writer_two_dynamic_axes_store_sizes(tmp_path, read_all):
    path = tmp_path / "att.hdf"
    dec, enc = [3, 2], [4, 5]
    weights = np.random.default_rng(0).random((2, 3, 5)).astype("float32")
    writer = SimpleHDFWriter(str(path), dim=None, ndim=2)
    writer.insert_batch(weights, seq_len={0: dec, 1: enc}, seq_tag=["a", "b"])
    writer.close()
    dataset, seqs = read_all(path)
    assert dataset.get_data_keys() == ["data", "sizes"]
    assert dataset.get_data_shape("data") == [] and dataset.get_data_dtype("sizes") == "int32"
    assert [data["sizes"].tolist() for _, data in seqs] == [[3, 4], [2, 5]]
    np.testing.assert_array_equal(seqs[1][1]["data"].reshape(2, 5), weights[1, :2, :5])


def test_simple_writer_extra_data_with_declared_types_and_labels(tmp_path, read_all):
    path = tmp_path / "out.hdf"
    writer = SimpleHDFWriter(
        str(path),
        dim=2,
        extra_type={"classes": (3, 1, "int32"), "orth": (1, 0, "string")},
        extra_labels={"classes": ["x", "y", "ü"]},
    )
    classes = np.array([[0, 2, 1], [1, 1, 1]], dtype="int32")
    writer.insert_batch(padded_batch([2, 1], 2), [2, 1], ["s0", "s1"], extra={"classes": classes, "orth": ["hi", "yo"]})
    writer.close()
    dataset, seqs = read_all(path)
    assert dataset.get_data_keys() == ["data", "classes", "orth"]
    assert dataset.num_outputs["classes"] == (3, 1) and dataset.is_data_sparse("classes")
    assert dataset.labels == {"classes": ["x", "y", "ü"]}
    assert dataset.get_data_dtype("orth") == "string"
    # extra data is stored whole (RETURNN's behaviour), not cut to seq_len
    assert [data["classes"].tolist() for _, data in seqs] == [[0, 2, 1], [1, 1, 1]]
    assert [data["orth"].tolist() for _, data in seqs] == [["hi"], ["yo"]]
    with h5py.File(path, "r") as f:
        assert f["targets/size"].attrs["classes"].tolist() == [3, 1]
        assert f["seqLengths"][...].tolist() == [[2, 3, 1], [1, 3, 1]]


def test_simple_writer_extends_existing_file(tmp_path, read_all):
    path = tmp_path / "out.hdf"
    with SimpleHDFWriter(str(path), dim=3) as writer:
        writer.insert_batch(padded_batch([2, 4], 3), [2, 4], ["a", "b"], extra={"classes": np.ones((2, 1), "int32")})
    with SimpleHDFWriter(str(path), dim=3, extend_existing_file=True) as writer:
        writer.insert_batch(padded_batch([1], 3, 5), [1], ["c"], extra={"classes": np.full((1, 2), 7, "int32")})
    dataset, seqs = read_all(path)
    assert [tag for tag, _ in seqs] == ["a", "b", "c"]
    assert [data["data"].shape[0] for _, data in seqs] == [2, 4, 1]
    assert [data["classes"].tolist() for _, data in seqs] == [[1], [1], [7, 7]]
    np.testing.assert_array_equal(seqs[2][1]["data"], padded_batch([1], 3, 5)[0])
    with h5py.File(path, "r") as f:
        assert int(f.attrs["numSeqs"]) == 3 and int(f.attrs["numTimesteps"]) == 7


def test_simple_writer_file_existence_errors(tmp_path):
    path = tmp_path / "out.hdf"
    with pytest.raises(DatasetError, match=r"out\.hdf' does not exist, so it cannot be extended"):
        SimpleHDFWriter(str(path), dim=3, extend_existing_file=True)
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"out\.hdf' already exists; delete it first, or pass extend_existing"):
        SimpleHDFWriter(str(path), dim=3)
    with pytest.raises(
        DatasetError, match=r"cannot extend HDF file '.*out\.hdf': it lacks \['seqLengths', 'seqTags'\]"
    ):
        SimpleHDFWriter(str(path), dim=3, extend_existing_file=True)
    assert os.listdir(tmp_path) == ["out.hdf"]  # no temporary file left behind


def test_simple_writer_bad_batches(tmp_path):
    writer = SimpleHDFWriter(str(tmp_path / "out.hdf"), dim=3)
    with pytest.raises(DatasetError, match=r"inputs of shape \(2, 4\) for 2 tags; expected \[2, \.\.\.\] with 2 axes"):
        writer.insert_batch(np.zeros((2, 4)), [4, 4], ["a", "b"])
    with pytest.raises(DatasetError, match=r"inputs have feature dim 5, the writer was created with dim=3"):
        writer.insert_batch(np.zeros((2, 4, 5)), [4, 4], ["a", "b"])
    with pytest.raises(DatasetError, match=r"seq_len for axis 0 is \[4, 9\]; expected 2 lengths of at most 4"):
        writer.insert_batch(np.zeros((2, 4, 3)), [4, 9], ["a", "b"])
    writer.insert_batch(np.zeros((1, 4, 3)), [4], ["a"])
    with pytest.raises(DatasetError, match=r"sequence 'b': has data keys \['late'\] that earlier sequences did not"):
        writer.insert_batch(np.zeros((1, 4, 3)), [4], ["b"], extra={"late": np.zeros((1, 2))})
    writer.close()
    with pytest.raises(DatasetError, match=r"out.hdf': cannot add sequences, the writer was closed; .*extend_existing"):
        writer.insert_batch(np.zeros((1, 4, 3)), [4], ["c"])


def test_simple_writer_aborted_by_exception_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with SimpleHDFWriter(str(tmp_path / "out.hdf"), dim=3) as writer:
            writer.insert_batch(np.zeros((1, 2, 3)), [2], ["a"])
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# HDFDatasetWriter


def dump(dataset, path, **kwargs) -> int:
    writer = HDFDatasetWriter(str(path))
    count = writer.dump_from_dataset(dataset, use_progress_bar=False, **kwargs)
    writer.close()
    return count


def test_dataset_writer_dummy_dataset_round_trip(tmp_path, read_all):
    source = init_dataset({"class": "DummyDataset", "input_dim": 13, "output_dim": 7, "num_seqs": 23, "seq_len": 17})
    assert dump(source, tmp_path / "d.hdf") == 23
    dataset, seqs = read_all(tmp_path / "d.hdf")
    assert dataset.get_data_keys() == ["data", "classes"]
    assert dataset.num_outputs == {"data": (13, 2), "classes": (7, 1)}
    source.init_seq_order(epoch=1)
    assert [tag for tag, _ in seqs] == [source.get_tag(i) for i in range(23)]
    for i, (_, data) in enumerate(seqs):
        for key in ("data", "classes"):
            expected = source.get_data(i, key)
            assert data[key].dtype == expected.dtype
            np.testing.assert_array_equal(data[key], expected)
    with h5py.File(tmp_path / "d.hdf", "r") as f:
        assert int(f.attrs["inputPattSize"]) == 13 and int(f.attrs["numLabels"]) == 7
        assert f["targets/size"].attrs["classes"].tolist() == [7, 1]
        assert f["seqLengths"].shape == (23, 2)


def test_dataset_writer_not_frame_synced_with_labels(tmp_path, read_all):
    source = init_dataset({"class": "TaskNumberBaseConvertDataset", "num_seqs": 9})
    dump(source, tmp_path / "d.hdf")
    dataset, seqs = read_all(tmp_path / "d.hdf")
    assert dataset.labels == source.labels
    assert dataset.num_outputs == {"data": (8, 1), "classes": (2, 1)}
    source.init_seq_order(epoch=1)
    assert [data["classes"].tolist() for _, data in seqs] == [source.get_data(i, "classes").tolist() for i in range(9)]
    assert any(len(data["data"]) != len(data["classes"]) for _, data in seqs)


@pytest.mark.parametrize(
    ("data", "classes"),
    [
        (np.array([1, 2, 3], "uint8"), np.array([-1, 5], "int16")),
        (np.array([1, 2, 3], "uint8"), np.array([2147483647, 2147483646], "int32")),
        (np.array([1, 2, 3], "float32"), np.array([-1, 5], "float32")),
        (np.array([[1, 2, 3], [2, 3, 4]], "float32"), np.array([[-1, 5], [-2, 4], [-3, 2]], "float64")),
    ],
)
def test_dataset_writer_keeps_dtypes_dims_and_shapes(tmp_path, data, classes, read_all):
    source = StaticDataset([{"data": data, "classes": classes}])
    dump(source, tmp_path / "d.hdf")
    dataset, seqs = read_all(tmp_path / "d.hdf")
    for key, value in (("data", data), ("classes", classes)):
        assert dataset.get_data_dtype(key) == source.get_data_dtype(key) == str(value.dtype)
        assert dataset.get_data_dim(key) == source.get_data_dim(key)
        assert dataset.get_data_shape(key) == list(value.shape[1:])
        assert dataset.is_data_sparse(key) == source.is_data_sparse(key)
        assert seqs[0][1][key].dtype == value.dtype
        np.testing.assert_array_equal(seqs[0][1][key], value)


def test_dataset_writer_strings_and_keys_without_data(tmp_path, read_all):
    source = StaticDataset(
        [{"orth": np.array(["grüße"]), "classes": np.array([1, 2], "int32")}, {"orth": np.array(["x"]), "classes": []}]
    )
    dump(source, tmp_path / "d.hdf")
    dataset, seqs = read_all(tmp_path / "d.hdf")
    assert dataset.get_data_keys() == ["classes", "orth"]
    with h5py.File(tmp_path / "d.hdf", "r") as f:
        assert "inputs" not in f and f["seqLengths"].shape == (2, 2)
    assert [(data["orth"].tolist(), data["classes"].tolist()) for _, data in seqs] == [(["grüße"], [1, 2]), (["x"], [])]


def test_dataset_writer_replaces_an_existing_file(tmp_path, read_all):
    (tmp_path / "d.hdf").write_bytes(b"")  # pipelines pass a file made with mkstemp
    source = init_dataset({"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 4})
    assert dump(source, tmp_path / "d.hdf") == 4
    assert [tag for tag, _ in read_all(tmp_path / "d.hdf")[1]] == ["seq-0", "seq-1", "seq-2", "seq-3"]


def test_dataset_writer_range_is_inclusive_like_returnn(tmp_path, read_all):
    source = init_dataset({"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 10})
    assert dump(source, tmp_path / "d.hdf", start_seq=2, end_seq=4) == 3
    _, seqs = read_all(tmp_path / "d.hdf")
    assert [tag for tag, _ in seqs] == ["seq-2", "seq-3", "seq-4"]


def test_dataset_writer_error_leaves_no_file(tmp_path):
    source = StaticDataset([{"data": np.zeros((2, 3), "float32")}, {"data": np.zeros((2, 4), "float32")}])
    with pytest.raises(DatasetError, match=r"sequence 'seq-1', key 'data': shape \(2, 4\) does not fit .*\[T, 3\]"):
        dump(source, tmp_path / "d.hdf")
    assert os.listdir(tmp_path) == []


def test_written_file_has_the_permissions_of_other_outputs(tmp_path):
    path = tmp_path / "out.hdf"
    with SimpleHDFWriter(str(path), dim=2) as writer:
        writer.insert_batch(np.zeros((1, 3, 2), dtype="float32"), [3], ["seq-0"])
    other = tmp_path / "other.txt"
    other.write_text("x")
    assert os.stat(path).st_mode & 0o777 == os.stat(other).st_mode & 0o777 != 0o600
