"""HDFDataset on files built with plain h5py in the layouts that RETURNN's own writers produce.

The fixtures here do not use this project's writers: each writes RETURNN's documented on-disk format directly
(``inputs``, ``targets/data|size|labels``, ``seqLengths``, ``seqTags``, root attributes), in the variants that
exist in the wild: RETURNN's hdf_dump (contiguous arrays, fixed-length byte tags, ``[dim, ndim]`` size
attributes), its SimpleHDFWriter (growing arrays, variable-length tags, no targets), older files (scalar size
attributes, 1-d ``seqLengths``), and files without ``inputs``.
"""

from __future__ import annotations

import multiprocessing
import pickle
from typing import Any

import h5py
import numpy as np
import pytest

from returnn.datasets import init_dataset
from returnn.datasets.hdf import HDFDataset
from returnn.errors import DatasetError

TAGS = ["corpus/rec-a/1", "corpus/rec-b/1", "corpus/rec-c/2"]
LENS = [4, 2, 3]


def _features(lens: list[int], dim: int, dtype: str = "float32") -> list[np.ndarray]:
    counter = np.arange(sum(lens) * dim).reshape(-1, dim).astype(dtype)
    return np.split(counter, np.cumsum(lens)[:-1])


def _fixed_strings(items: list[str]) -> np.ndarray:
    encoded = [item.encode("utf-8") for item in items]
    return np.array(encoded, dtype=f"S{max(len(b) for b in encoded) + 1}")


def write_hdf_dump_layout(path, *, lens=LENS, tags=TAGS, classes_lens=None, size_attr="pair") -> dict[str, Any]:
    """RETURNN's hdf_dump: float32 inputs [T, 3], sparse int32 classes (dim 5, labels), fixed-length byte tags."""
    inputs = _features(lens, 3)
    classes_lens = classes_lens or lens
    classes = [np.arange(n, dtype="int32") % 5 for n in classes_lens]
    with h5py.File(path, "w") as f:
        f.create_dataset("seqTags", data=_fixed_strings(tags))
        f.create_dataset("seqLengths", data=np.array([lens, classes_lens], dtype="int32").T)
        f.create_dataset("inputs", data=np.concatenate(inputs))
        f.create_dataset("targets/data/classes", data=np.concatenate(classes))
        f.create_group("targets/size").attrs["classes"] = np.array([5, 1]) if size_attr == "pair" else 5
        f.create_dataset("targets/labels/classes", data=_fixed_strings(["a", "b", "c", "d", "e"]))
        f.attrs["inputPattSize"] = 3
    return {"data": inputs, "classes": classes}


def write_simple_writer_layout(path, *, lens=LENS, tags=TAGS) -> list[np.ndarray]:
    """RETURNN's SimpleHDFWriter without extra data: growing datasets, vlen tags, a second unused length column."""
    inputs = _features(lens, 2)
    with h5py.File(path, "w") as f:
        for name, value in {"numTimesteps": sum(lens), "inputPattSize": 2, "numDims": 1, "numLabels": 2}.items():
            f.attrs[name] = value
        f.attrs["numSeqs"] = len(lens)
        f.create_dataset("labels", shape=(0,), dtype="S5")
        lengths = f.create_dataset("seqLengths", shape=(len(lens), 2), dtype="i", maxshape=(None, None))
        lengths[:, 0] = lens
        vlen_tags = f.create_dataset("seqTags", shape=(len(tags),), dtype=h5py.string_dtype(), maxshape=(None,))
        vlen_tags[...] = tags
        f.create_dataset("inputs", data=np.concatenate(inputs), maxshape=(None, 2))
    return inputs


def write_targets(path, targets: dict[str, list[np.ndarray]], *, tags=TAGS, inputs=None, lengths_1d=False) -> None:
    """A file whose target keys are given as lists of per-sequence arrays (sizes from the arrays)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("seqTags", data=_fixed_strings(tags))
        columns = ([inputs] if inputs is not None else []) + [targets[key] for key in sorted(targets)]
        lengths = np.array([[len(seq) for seq in column] for column in columns], dtype="int32").T
        f.create_dataset("seqLengths", data=lengths[:, 0] if lengths_1d else lengths)
        if inputs is not None:
            f.create_dataset("inputs", data=np.concatenate(inputs))
        for key, seqs in targets.items():
            data = np.concatenate(seqs)
            if data.dtype.kind == "U":
                data = data.astype(object)
            dtype = h5py.string_dtype() if data.dtype.kind == "O" else data.dtype
            f.create_dataset(f"targets/data/{key}", data=data, dtype=dtype)
            dim = data.shape[-1] if data.ndim >= 2 else 1
            f.require_group("targets/size").attrs[key] = np.array([dim, data.ndim])
        f.require_group("targets/labels")


@pytest.fixture
def read_all(read_epoch):
    """``read_all(dataset, epoch=1)``: the epoch as (tag, data by key)."""
    return lambda dataset, epoch=1: read_epoch(dataset, epoch)


# --------------------------------------------------------------------------------------------------
# Layouts written by RETURNN


def test_hdf_dump_layout_frame_synced(tmp_path, read_all):
    expected = write_hdf_dump_layout(tmp_path / "a.hdf")
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf")])
    assert dataset.get_data_keys() == ["data", "classes"]
    assert dataset.num_outputs == {"data": (3, 2), "classes": (5, 1)}
    assert dataset.num_inputs == 3
    assert [dataset.get_data_dtype(k) for k in ("data", "classes")] == ["float32", "int32"]
    assert [dataset.is_data_sparse(k) for k in ("data", "classes")] == [False, True]
    assert [dataset.get_data_shape(k) for k in ("data", "classes")] == [[3], []]
    assert dataset.labels == {"classes": ["a", "b", "c", "d", "e"]}
    seqs = read_all(dataset)
    assert [tag for tag, _ in seqs] == TAGS
    for i, (_, data) in enumerate(seqs):
        np.testing.assert_array_equal(data["data"], expected["data"][i])
        np.testing.assert_array_equal(data["classes"], expected["classes"][i])
        assert data["data"].dtype == np.float32 and data["classes"].dtype == np.int32
    assert dataset.get_seq_length(0) == {"data": 4, "classes": 4}


def test_not_frame_synced_with_scalar_size_attribute(tmp_path, read_all):
    expected = write_hdf_dump_layout(tmp_path / "a.hdf", classes_lens=[1, 5, 2], size_attr="scalar")
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf")])
    assert dataset.num_outputs["classes"] == (5, 1)
    seqs = read_all(dataset)
    assert [data["classes"].tolist() for _, data in seqs] == [c.tolist() for c in expected["classes"]]
    assert [dataset.get_seq_length(i) for i in range(3)] == [
        {"data": 4, "classes": 1},
        {"data": 2, "classes": 5},
        {"data": 3, "classes": 2},
    ]


def test_simple_writer_layout_without_targets(tmp_path, read_all):
    expected = write_simple_writer_layout(tmp_path / "a.hdf")
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf")])
    assert dataset.get_data_keys() == ["data"]
    assert dataset.get_target_list() == []
    assert dataset.labels == {}
    seqs = read_all(dataset)
    assert [tag for tag, _ in seqs] == TAGS
    assert all(isinstance(tag, str) for tag, _ in seqs)
    for (_, data), exp in zip(seqs, expected):
        np.testing.assert_array_equal(data["data"], exp)


def test_sparse_inputs_take_dim_from_input_patt_size(tmp_path, read_all):
    path = tmp_path / "a.hdf"
    with h5py.File(path, "w") as f:
        f.create_dataset("seqTags", data=_fixed_strings(["x", "y"]))
        f.create_dataset("seqLengths", data=np.array([[2, 2], [1, 1]], dtype="int32"))
        f.create_dataset("inputs", data=np.array([7, 8, 9], dtype="int32"))
        f.attrs["inputPattSize"] = 10
        f.create_dataset("labels", data=_fixed_strings([str(i) for i in range(10)]))
    dataset = HDFDataset(files=[str(path)])
    assert dataset.num_outputs == {"data": (10, 1)}
    assert dataset.is_data_sparse("data") and dataset.get_data_shape("data") == []
    assert dataset.labels == {"data": [str(i) for i in range(10)]}
    assert [data["data"].tolist() for _, data in read_all(dataset)] == [[7, 8], [9]]


def test_dense_targets_and_float_frame_values(tmp_path, read_all):
    feats = _features(LENS, 4, "float64")
    scores = [np.linspace(0, 1, n, dtype="float32") for n in LENS]
    write_targets(tmp_path / "a.hdf", {"feats": feats, "score": scores})
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf")])
    assert dataset.get_data_keys() == ["feats", "score"]  # no inputs in this file
    assert dataset.num_outputs == {"feats": (4, 2), "score": (1, 1)}
    assert not dataset.is_data_sparse("feats") and not dataset.is_data_sparse("score")
    assert dataset.get_data_shape("feats") == [4] and dataset.get_data_shape("score") == []
    seqs = read_all(dataset)
    for i, (_, data) in enumerate(seqs):
        np.testing.assert_array_equal(data["feats"], feats[i])
        np.testing.assert_array_equal(data["score"], scores[i])


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "uint32", "int64", "float16", "float64"])
def test_every_dtype_is_kept(tmp_path, dtype, read_all):
    values = [np.array([1, 2, 3], dtype=dtype), np.array([250], dtype=dtype)]
    write_targets(tmp_path / "a.hdf", {"classes": values}, tags=["s0", "s1"])
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf")])
    assert dataset.get_data_dtype("classes") == dtype
    assert dataset.is_data_sparse("classes") == (np.dtype(dtype).kind in "iu")
    read = [data["classes"] for _, data in read_all(dataset)]
    assert [r.dtype for r in read] == [np.dtype(dtype)] * 2
    assert [r.tolist() for r in read] == [[1, 2, 3], [250]]


def test_variable_length_string_targets(tmp_path, read_all):
    orth = [np.array(["hello world"], dtype=object), np.array(["grüße"], dtype=object)]
    write_targets(tmp_path / "a.hdf", {"orth": orth}, tags=["s0", "s1"])
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf")])
    assert dataset.get_data_dtype("orth") == "string"
    assert [data["orth"].tolist() for _, data in read_all(dataset)] == [["hello world"], ["grüße"]]


def test_one_dimensional_seq_lengths_of_old_files(tmp_path, read_all):
    inputs = _features(LENS, 2)
    classes = [np.full(n, i, dtype="int32") for i, n in enumerate(LENS)]
    write_targets(tmp_path / "a.hdf", {"classes": classes}, inputs=inputs, lengths_1d=True)
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf")])
    seqs = read_all(dataset)
    assert [data["classes"].tolist() for _, data in seqs] == [[0] * 4, [1] * 2, [2] * 3]
    np.testing.assert_array_equal(seqs[2][1]["data"], inputs[2])


def test_unicode_labels_fixed_length_and_variable_length(tmp_path):
    path = tmp_path / "a.hdf"
    write_hdf_dump_layout(path)
    with h5py.File(path, "r+") as f:
        del f["targets/labels/classes"]
        # RETURNN falls back to variable-length unicode when labels are not ASCII
        f.create_dataset("targets/labels/classes", data=["ä", "ö", "ü", "ß", "€"], dtype=h5py.string_dtype())
        f.create_dataset("labels", data=_fixed_strings(["x", "ÿ", "z"]))
    dataset = HDFDataset(files=[str(path)])
    assert dataset.labels == {"classes": ["ä", "ö", "ü", "ß", "€"], "data": ["x", "ÿ", "z"]}


def test_placeholder_labels_are_not_labels(tmp_path):
    path = tmp_path / "a.hdf"
    write_hdf_dump_layout(path)
    with h5py.File(path, "r+") as f:
        del f["targets/labels/classes"]
        f.create_dataset("targets/labels/classes", data=_fixed_strings(["dummy-label"]))
        f["targets/data/score"] = np.zeros(9, dtype="float32")
        f["targets/size"].attrs["score"] = np.array([1, 1])
        f["targets/labels/score"] = _fixed_strings(["dummy-label"])
        lengths = f["seqLengths"][...]
        del f["seqLengths"]
        f["seqLengths"] = np.concatenate([lengths, lengths[:, :1]], axis=1)
    dataset = HDFDataset(files=[str(path)])
    assert dataset.num_outputs == {"data": (3, 2), "classes": (5, 1), "score": (1, 1)}
    assert dataset.labels == {}


# --------------------------------------------------------------------------------------------------
# Several files


def test_several_files_are_one_corpus(tmp_path, read_all):
    first = write_hdf_dump_layout(tmp_path / "a.hdf")
    second = write_hdf_dump_layout(tmp_path / "b.hdf", lens=[1, 6], tags=["other/1", "other/2"])
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf"), str(tmp_path / "b.hdf")])
    assert dataset.get_total_num_seqs() == 5
    assert dataset.get_all_tags() == TAGS + ["other/1", "other/2"]
    seqs = read_all(dataset)
    np.testing.assert_array_equal(seqs[1][1]["data"], first["data"][1])
    np.testing.assert_array_equal(seqs[4][1]["data"], second["data"][1])
    sorted_dataset = HDFDataset(files=[str(tmp_path / "a.hdf"), str(tmp_path / "b.hdf")], seq_ordering="sorted")
    sorted_dataset.init_seq_order(epoch=1)
    assert [sorted_dataset.get_tag(i) for i in range(5)] == ["other/1", TAGS[1], TAGS[2], TAGS[0], "other/2"]


def test_later_file_may_have_more_keys_but_not_fewer(tmp_path, read_all):
    write_hdf_dump_layout(tmp_path / "a.hdf")
    write_targets(tmp_path / "b.hdf", {"classes": [np.array([1], "int32")], "extra": [np.ones(1)]}, tags=["b"])
    write_targets(tmp_path / "c.hdf", {"extra": [np.ones(1)]}, tags=["c"])
    with pytest.raises(DatasetError, match=r"b\.hdf' lacks data keys \['data'\], which .*a\.hdf' has"):
        HDFDataset(files=[str(tmp_path / "a.hdf"), str(tmp_path / "b.hdf")])
    dataset = HDFDataset(files=[str(tmp_path / "b.hdf"), str(tmp_path / "b.hdf")])
    assert dataset.get_data_keys() == ["classes", "extra"]
    with pytest.raises(DatasetError, match=r"c\.hdf' lacks data keys \['classes'\]"):
        HDFDataset(files=[str(tmp_path / "b.hdf"), str(tmp_path / "c.hdf")])
    narrow = HDFDataset(files=[str(tmp_path / "c.hdf"), str(tmp_path / "b.hdf")])
    assert narrow.get_data_keys() == ["extra"]
    assert [data["extra"].tolist() for _, data in read_all(narrow)] == [[1.0], [1.0]]


def test_files_with_different_dims_are_an_error(tmp_path):
    write_hdf_dump_layout(tmp_path / "a.hdf")
    write_simple_writer_layout(tmp_path / "b.hdf")
    classes, inputs = [np.array([1], "int32")], [np.ones((1, 3), "float64")]
    write_targets(tmp_path / "c.hdf", {"classes": classes}, inputs=inputs, tags=["c"])
    with pytest.raises(DatasetError, match=r"data key 'data' differs between HDF files: .*b\.hdf' has dim 2"):
        HDFDataset(files=[str(tmp_path / "b.hdf"), str(tmp_path / "a.hdf")])
    with pytest.raises(DatasetError, match=r"dtype float32.*c\.hdf' has dim 3, dtype float64"):
        HDFDataset(files=[str(tmp_path / "a.hdf"), str(tmp_path / "c.hdf")])


# --------------------------------------------------------------------------------------------------
# Bad input


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"HDF file '.*nope\.hdf' does not exist; fix the path"):
        init_dataset({"class": "HDFDataset", "files": [str(tmp_path / "nope.hdf")]})


def test_file_that_is_not_hdf(tmp_path):
    (tmp_path / "a.hdf").write_text("not hdf")
    with pytest.raises(DatasetError, match=r"a\.hdf' cannot be opened as HDF5"):
        HDFDataset(files=[str(tmp_path / "a.hdf")])


def test_files_given_as_string(tmp_path):
    with pytest.raises(DatasetError, match=r"'files' must be a list of file names, got the string"):
        HDFDataset(files=str(tmp_path / "a.hdf"))


@pytest.mark.parametrize(
    ("delete", "message"),
    [
        (["seqTags"], r"lacks seqTags, which RETURNN's HDF format requires; write HDF datasets with SimpleHDFWriter"),
        (["seqLengths", "seqTags"], r"lacks seqLengths, seqTags"),
        (["inputs", "targets"], r"lacks 'inputs' or 'targets/data'"),
    ],
)
def test_file_lacking_required_fields(tmp_path, delete, message):
    path = tmp_path / "a.hdf"
    write_hdf_dump_layout(path)
    with h5py.File(path, "r+") as f:
        for name in delete:
            del f[name]
    with pytest.raises(DatasetError, match=r"HDF file '.*a\.hdf' " + message):
        HDFDataset(files=[str(path)])


def test_stream_hdf_file_gets_a_hint(tmp_path):
    with h5py.File(tmp_path / "a.hdf", "w") as f:
        f.create_group("streams/features")
        f.create_dataset("seq_names", data=_fixed_strings(["a"]))
    with pytest.raises(DatasetError, match=r"looks like a NextGen/stream HDF file \(use StreamHDFDataset\)"):
        HDFDataset(files=[str(tmp_path / "a.hdf")])


def test_too_few_seq_length_columns(tmp_path):
    path = tmp_path / "a.hdf"
    write_hdf_dump_layout(path)
    with h5py.File(path, "r+") as f:
        lens = f["seqLengths"][:, :1]
        del f["seqLengths"]
        f.create_dataset("seqLengths", data=lens)
    with pytest.raises(DatasetError, match=r"has 1 seqLengths columns, but needs 2"):
        HDFDataset(files=[str(path)])


def test_sparse_inputs_without_input_patt_size(tmp_path):
    path = tmp_path / "a.hdf"
    write_targets(path, {"classes": [np.array([1], "int32")]}, inputs=[np.array([3], "int32")], tags=["a"])
    with pytest.raises(DatasetError, match=r"no root attribute 'inputPattSize'.*f\.attrs\['inputPattSize'\] ="):
        HDFDataset(files=[str(path)])


def test_truncated_file_is_found_at_first_read(tmp_path):
    path = tmp_path / "a.hdf"
    write_hdf_dump_layout(path)
    with h5py.File(path, "r+") as f:
        f["seqLengths"][2, 0] = 30
    dataset = HDFDataset(files=[str(path)])  # lengths are read lazily: construction does not notice
    dataset.init_seq_order(epoch=1)
    with pytest.raises(DatasetError, match=r"seqLengths sums to 36 frames for key 'data', but 'inputs' holds only 9"):
        dataset.get_data(0, "data")


def test_unknown_key(tmp_path):
    write_hdf_dump_layout(tmp_path / "a.hdf")
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf")])
    dataset.init_seq_order(epoch=1)
    with pytest.raises(DatasetError, match=r"unknown data key 'clases'; the HDF files have \['classes', 'data'\]"):
        dataset.get_data(0, "clases")


# --------------------------------------------------------------------------------------------------
# Laziness, ordering, sharding, pickling, processes


def test_each_read_is_one_slice_of_one_sequence(tmp_path, monkeypatch):
    write_hdf_dump_layout(tmp_path / "a.hdf")
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf")], seq_ordering="reverse")
    dataset.init_seq_order(epoch=1)
    dataset.get_tag(0)  # reads all tags, once
    requests = []
    original = h5py.Dataset.__getitem__

    def recording_getitem(self, selection, *args, **kwargs):
        requests.append((self.name, selection))
        return original(self, selection, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording_getitem)
    for seq_idx in range(3):
        dataset.get_tag(seq_idx)
        dataset.get_data(seq_idx, "data")
        dataset.get_data(seq_idx, "classes")
    assert requests == [
        ("/seqLengths", Ellipsis),  # all lengths, once, at the first read of data
        ("/inputs", slice(6, 9)),
        ("/targets/data/classes", slice(6, 9)),
        ("/inputs", slice(4, 6)),
        ("/targets/data/classes", slice(4, 6)),
        ("/inputs", slice(0, 4)),
        ("/targets/data/classes", slice(0, 4)),
    ]


def test_partition_epoch_covers_every_sequence_once(tmp_path, read_all):
    lens = list(range(1, 12))
    write_simple_writer_layout(tmp_path / "a.hdf", lens=lens, tags=[f"s{i}" for i in range(11)])
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf")], partition_epoch=3, seq_ordering="random")
    tags = []
    for epoch in (1, 2, 3):
        tags += [tag for tag, _ in read_all(dataset, epoch)]
    assert sorted(tags) == sorted(f"s{i}" for i in range(11))


def test_seq_list_selects_by_tag(tmp_path):
    write_hdf_dump_layout(tmp_path / "a.hdf")
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf")])
    dataset.init_seq_order(epoch=1, seq_list=[TAGS[2], TAGS[0]])
    assert [dataset.get_tag(0), dataset.get_tag(1)] == [TAGS[2], TAGS[0]]
    assert dataset.get_data(0, "data").shape == (3, 3)


def test_shards_split_the_epoch(tmp_path, read_all):
    write_simple_writer_layout(tmp_path / "a.hdf", lens=[1, 2, 3, 4, 5], tags=[f"s{i}" for i in range(5)])
    shards = []
    for index in range(2):
        dataset = HDFDataset(files=[str(tmp_path / "a.hdf")], seq_ordering="random")
        dataset.set_sharding(index, 2)
        shards.append([tag for tag, _ in read_all(dataset)])
    assert sorted(shards[0] + shards[1]) == [f"s{i}" for i in range(5)]
    assert len(shards[0]) == 3 and len(shards[1]) == 2


def test_pickle_round_trip_keeps_epoch_and_shard(tmp_path, read_all):
    write_hdf_dump_layout(tmp_path / "a.hdf")
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf")], seq_ordering="random")
    dataset.set_sharding(1, 2)
    expected = read_all(dataset, epoch=3)
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.epoch == 3
    got = [(clone.get_tag(i), {k: clone.get_data(i, k) for k in clone.get_data_keys()}) for i in range(clone.num_seqs)]
    assert [tag for tag, _ in got] == [tag for tag, _ in expected]
    np.testing.assert_array_equal(got[0][1]["data"], expected[0][1]["data"])


def _read_tags_and_sums(dataset: HDFDataset, queue: Any = None) -> list[tuple[str, float]]:
    result = [(dataset.get_tag(i), float(dataset.get_data(i, "data").sum())) for i in range(dataset.num_seqs)]
    if queue is not None:
        queue.put(result)
    return result


def test_files_added_later_are_kept_when_pickled(tmp_path):
    write_hdf_dump_layout(tmp_path / "a.hdf")
    write_hdf_dump_layout(tmp_path / "b.hdf", lens=[5], tags=["b/1"])
    dataset = HDFDataset([str(tmp_path / "a.hdf")])
    dataset.add_file(str(tmp_path / "b.hdf"))
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.get_all_tags() == TAGS + ["b/1"]


def test_read_in_spawned_and_forked_processes(tmp_path):
    write_hdf_dump_layout(tmp_path / "a.hdf")
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf")])
    dataset.init_seq_order(epoch=1)
    expected = _read_tags_and_sums(dataset)  # opens the file in this process first
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # the dataset travels pickled
        assert pool.apply(_read_tags_and_sums, (dataset,)) == expected
    fork = multiprocessing.get_context("fork")
    queue = fork.SimpleQueue()
    child = fork.Process(target=_read_tags_and_sums, args=(dataset, queue))  # inherits the open dataset
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert queue.get() == expected


def test_use_cache_manager_without_cf_reads_in_place(tmp_path, monkeypatch, read_all):
    monkeypatch.setenv("PATH", str(tmp_path))  # no cf executable
    write_hdf_dump_layout(tmp_path / "a.hdf")
    dataset = init_dataset({"class": "HDFDataset", "files": [str(tmp_path / "a.hdf")], "use_cache_manager": True})
    assert dataset.files == [str(tmp_path / "a.hdf")]
    assert [tag for tag, _ in read_all(dataset)] == TAGS


def test_window_stacks_each_frame_with_its_neighbours(tmp_path):
    from returnn.datasets.hdf import SimpleHDFWriter

    path = str(tmp_path / "w.hdf")
    with SimpleHDFWriter(path, dim=2, extra_type={"classes": (5, 1, "int32")}) as writer:
        frames = np.arange(6, dtype="float32").reshape(1, 3, 2) + 1  # frames [1, 2], [3, 4], [5, 6]
        writer.insert_batch(frames, [3], ["s"], extra={"classes": np.array([[0, 1, 2]], dtype="int32")})
    dataset = init_dataset({"class": "HDFDataset", "files": [path], "window": 2})  # even: grows to 3
    assert dataset.window == 3 and dataset.get_data_dim("data") == 6 and dataset.num_inputs == 6
    assert dataset.get_data_shape("data") == [6] and dataset.num_outputs["data"] == (6, 2)
    dataset.init_seq_order(epoch=1)
    dataset.load_seqs(0, 1)
    assert dataset.get_data(0, "data").tolist() == [[0, 0, 1, 2, 3, 4], [1, 2, 3, 4, 5, 6], [3, 4, 5, 6, 0, 0]]
    assert dataset.get_data(0, "classes").tolist() == [0, 1, 2]
    with pytest.raises(DatasetError, match="the option window is supported by HDFDataset only"):
        init_dataset({"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 2, "window": 3})
