"""MetaDataset: data keys of several datasets over the same sequences (HDF files and generated data)."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

from returnn.datasets import init_dataset
from returnn.datasets.hdf import HDFDataset, SimpleHDFWriter
from returnn.datasets.map import MapDatasetBase
from returnn.datasets.meta import MetaDataset
from returnn.errors import DatasetError

LENS = [4, 9, 2, 7, 5, 1, 8, 3, 6, 10]  # sequence i of the corpus has LENS[i] frames


def write_hdf(path, tags, corpus_indices, *, with_classes=True) -> str:
    """Sequence ``corpus_indices[j]`` under ``tags[j]``: features [T, 3] filled with its index, classes [T]."""
    lens = [LENS[idx] for idx in corpus_indices]
    feats = np.zeros((len(lens), max(lens), 3), dtype=np.float32)
    for row, idx in enumerate(corpus_indices):
        feats[row, : LENS[idx]] = idx
    extra_type = {"classes": (5, 1, "int32")} if with_classes else None
    with SimpleHDFWriter(str(path), dim=3, extra_type=extra_type) as writer:
        extra = {"classes": [np.arange(LENS[idx], dtype=np.int32) % 5 for idx in corpus_indices]}
        writer.insert_batch(feats, seq_len=lens, seq_tag=tags, extra=extra if with_classes else None)
    return str(path)


@pytest.fixture
def features_hdf(tmp_path) -> str:
    """Tags rec0..rec9 in corpus order."""
    return write_hdf(tmp_path / "features.hdf", [f"rec{i}" for i in range(10)], list(range(10)))


@pytest.fixture
def align_hdf(tmp_path) -> str:
    """The same sequences (same tags) stored in reverse order, features only."""
    order = list(range(10))[::-1]
    return write_hdf(tmp_path / "align.hdf", [f"rec{i}" for i in order], order, with_classes=False)


def meta(features_hdf, align_hdf, **kwargs) -> MetaDataset:
    opts = {
        "class": "MetaDataset",
        "datasets": {
            "feat": {"class": "HDFDataset", "files": [features_hdf]},
            "align": {"class": "HDFDataset", "files": [align_hdf]},
        },
        "data_map": {"data": ("feat", "data"), "classes": ("feat", "classes"), "align": ("align", "data")},
    }
    opts.update(kwargs)
    return init_dataset(opts)


def corpus_idx(tag: str) -> int:
    return int(tag.removeprefix("rec"))


def check_consistent(seqs):
    """Every key of every sequence holds the data of its tag, whichever file it came from."""
    for tag, data in seqs:
        idx = corpus_idx(tag)
        assert data["data"].shape == (LENS[idx], 3) and (data["data"] == idx).all()
        assert (data["align"] == idx).all() and data["align"].shape == (LENS[idx], 3)
        np.testing.assert_array_equal(data["classes"], np.arange(LENS[idx]) % 5)


def test_keys_dims_dtypes_and_data(features_hdf, align_hdf, read_epoch):
    dataset = meta(features_hdf, align_hdf)
    assert dataset.get_data_keys() == ["align", "classes", "data"]
    assert dataset.get_target_list() == ["align", "classes"]
    assert dataset.num_outputs == {"data": (3, 2), "classes": (5, 1), "align": (3, 2)}
    assert (dataset.get_data_dtype("data"), dataset.get_data_dtype("classes")) == ("float32", "int32")
    assert dataset.is_data_sparse("classes") and not dataset.is_data_sparse("align")
    assert (dataset.get_data_shape("data"), dataset.get_data_shape("classes")) == ([3], [])
    seqs = read_epoch(dataset, 1)
    assert [tag for tag, _ in seqs] == [f"rec{i}" for i in range(10)]  # the default dataset's ("data") order
    check_consistent(seqs)
    assert dataset.get_seq_length(3) == {"data": 7, "classes": 7, "align": 7}
    assert dataset.get_all_tags() == [f"rec{i}" for i in range(10)] and dataset.get_total_num_seqs() == 10


def test_hdf_with_generated_data(features_hdf, tmp_path, read_epoch):
    # Tags seq-0 .. seq-9, as the generated datasets name their sequences.
    hdf = write_hdf(tmp_path / "gen_tags.hdf", [f"seq-{i}" for i in range(10)], list(range(10)))
    dataset = init_dataset(
        {
            "class": "MetaDataset",
            "datasets": {
                "hdf": {"class": "HDFDataset", "files": [hdf]},
                "dummy": {"class": "DummyDataset", "input_dim": 2, "output_dim": 7, "num_seqs": 10, "seq_len": 3},
            },
            "data_map": {"data": ("hdf", "data"), "targets": ("dummy", "classes")},
            "seq_order_control_dataset": "hdf",
        }
    )
    dummy = init_dataset({"class": "DummyDataset", "input_dim": 2, "output_dim": 7, "num_seqs": 10, "seq_len": 3})
    dummy.init_seq_order(epoch=1)
    for tag, data in read_epoch(dataset, 1):
        idx = int(tag.removeprefix("seq-"))
        assert (data["data"] == idx).all()
        np.testing.assert_array_equal(data["targets"], dummy.get_corpus_seq(idx).features["classes"])
    assert dataset.num_outputs == {"data": (3, 2), "targets": (7, 1)}


def test_control_dataset_orders_every_epoch(features_hdf, align_hdf, read_epoch):
    control_opts = {"class": "HDFDataset", "files": [align_hdf], "seq_ordering": "random", "partition_epoch": 2}
    dataset = init_dataset(
        {
            "class": "MetaDataset",
            "datasets": {"feat": {"class": "HDFDataset", "files": [features_hdf]}, "align": control_opts},
            "data_map": {"data": ("feat", "data"), "classes": ("feat", "classes"), "align": ("align", "data")},
            "seq_order_control_dataset": "align",
        }
    )
    reference = HDFDataset(files=[align_hdf], seq_ordering="random", partition_epoch=2)
    seen = []
    for epoch in (1, 2):
        seqs = read_epoch(dataset, epoch)
        reference.init_seq_order(epoch=epoch)
        assert [tag for tag, _ in seqs] == [reference.get_tag(i) for i in range(reference.num_seqs)]
        check_consistent(seqs)
        seen += [tag for tag, _ in seqs]
    assert sorted(seen) == sorted(f"rec{i}" for i in range(10))  # the two partitions cover the corpus once


def test_orders_itself_without_control_dataset(features_hdf, align_hdf, read_epoch):
    dataset = meta(features_hdf, align_hdf, seq_ordering="sorted", partition_epoch=2)
    by_length = sorted(range(10), key=LENS.__getitem__)
    first, second = read_epoch(dataset, 1), read_epoch(dataset, 2)
    assert [corpus_idx(tag) for tag, _ in first + second] == by_length
    check_consistent(first + second)


def test_seq_lens_file_sorts(features_hdf, align_hdf, tmp_path, read_epoch):
    lens_file = tmp_path / "lens.json"
    lens_file.write_text("{" + ", ".join(f'"rec{i}": {{"data": {(i * 7) % 10}}}' for i in range(10)) + "}")
    dataset = meta(features_hdf, align_hdf, seq_ordering="sorted_reverse", seq_lens_file=str(lens_file))
    assert [corpus_idx(tag) for tag, _ in read_epoch(dataset, 1)] == sorted(range(10), key=lambda i: -((i * 7) % 10))
    assert dataset.get_seq_length(0) == {"data": 9}


@pytest.mark.parametrize("control", [None, "align"])
def test_shards_cover_the_epoch_once(features_hdf, align_hdf, control, read_epoch):
    kwargs = {"seq_order_control_dataset": control} if control else {"seq_ordering": "random"}
    full = [tag for tag, _ in read_epoch(meta(features_hdf, align_hdf, **kwargs), 3)]
    shards = []
    for shard_index in range(3):
        dataset = meta(features_hdf, align_hdf, **kwargs)
        assert dataset.supports_sharding()
        dataset.set_sharding(shard_index, 3)
        seqs = read_epoch(dataset, 3)
        check_consistent(seqs)
        assert [tag for tag, _ in seqs] == full[shard_index::3]
        shards += [tag for tag, _ in seqs]
    assert sorted(shards) == sorted(full) and len(full) == 10


def test_pickle_round_trip(features_hdf, align_hdf, read_epoch):
    dataset = meta(features_hdf, align_hdf, seq_ordering="random", partition_epoch=2, name="train")
    dataset.set_sharding(1, 2)
    expected = read_epoch(dataset, 3)
    clone = pickle.loads(pickle.dumps(dataset))
    assert (type(clone), clone.name, clone.epoch) == (MetaDataset, "train", 3)
    assert [clone.get_tag(i) for i in range(clone.num_seqs)] == [tag for tag, _ in expected]
    np.testing.assert_array_equal(clone.get_data(1, "align"), expected[1][1]["align"])
    assert [tag for tag, _ in read_epoch(clone, 4)] == [tag for tag, _ in read_epoch(dataset, 4)]


def test_explicit_seq_list_and_seq_order(features_hdf, align_hdf):
    dataset = meta(features_hdf, align_hdf, seq_ordering="random", partition_epoch=4)
    dataset.set_sharding(0, 2)  # explicit lists are used as given: no ordering, partition or sharding
    dataset.init_seq_order(epoch=2, seq_list=["rec7", "rec2"])
    assert [dataset.get_tag(i) for i in range(dataset.num_seqs)] == ["rec7", "rec2"]
    assert (dataset.get_data(0, "align") == 7).all()
    dataset.init_seq_order(epoch=2, seq_order=[3, 3, 0])
    assert [dataset.get_tag(i) for i in range(dataset.num_seqs)] == ["rec3", "rec3", "rec0"]
    with pytest.raises(DatasetError, match=r"seq_order holds indices outside 0..9"):
        dataset.init_seq_order(epoch=2, seq_order=[10])


# --- seq_list_file ------------------------------------------------------------------------------------------


@pytest.fixture
def renamed_align_hdf(tmp_path) -> str:
    """The alignments under other tags: utt-<i> for rec<i>."""
    order = [5, 0, 9, 2, 7, 1, 8, 3, 6, 4]
    return write_hdf(tmp_path / "renamed.hdf", [f"utt-{i}" for i in order], order, with_classes=False)


@pytest.mark.parametrize("fmt", ["text", "gzip"])
def test_seq_list_file_of_tags(features_hdf, align_hdf, tmp_path, fmt, read_epoch):
    tags = ["rec8", "rec1", "rec4"]
    path = tmp_path / ("list.txt" if fmt == "text" else "list.gz")
    content = "\n".join(tags) + "\n\n"
    path.write_bytes(gzip.compress(content.encode()) if fmt == "gzip" else content.encode())
    dataset = meta(features_hdf, align_hdf, seq_list_file=str(path))
    seqs = read_epoch(dataset, 1)
    assert [tag for tag, _ in seqs] == tags and dataset.get_all_tags() == tags
    check_consistent(seqs)


def per_dataset_lists():
    return {"feat": [f"rec{i}" for i in (3, 0, 6)], "align": [f"utt-{i}" for i in (3, 0, 6)]}


@pytest.mark.parametrize("fmt", ["literal", "pickle", "files"])
def test_seq_list_per_dataset_matches_by_position(features_hdf, renamed_align_hdf, tmp_path, fmt, read_epoch):
    lists = per_dataset_lists()
    if fmt == "literal":
        (tmp_path / "lists.py").write_text(repr(lists))
        seq_list_file = str(tmp_path / "lists.py")
    elif fmt == "pickle":
        (tmp_path / "lists.pkl").write_bytes(pickle.dumps(lists))
        seq_list_file = str(tmp_path / "lists.pkl")
    else:
        seq_list_file = {}
        for key, tags in lists.items():
            (tmp_path / f"{key}.txt").write_text("\n".join(tags))
            seq_list_file[key] = str(tmp_path / f"{key}.txt")
    seqs = read_epoch(meta(features_hdf, renamed_align_hdf, seq_list_file=seq_list_file), 1)
    assert [tag for tag, _ in seqs] == ["rec3", "rec0", "rec6"]  # the default dataset's tags
    check_consistent(seqs)


def test_seq_list_file_with_control_dataset_skips_unlisted(features_hdf, renamed_align_hdf, tmp_path, read_epoch):
    (tmp_path / "lists.py").write_text(repr(per_dataset_lists()))
    control = {"class": "HDFDataset", "files": [renamed_align_hdf], "seq_ordering": "reverse"}
    dataset = init_dataset(
        {
            "class": "MetaDataset",
            "datasets": {"feat": {"class": "HDFDataset", "files": [features_hdf]}, "align": control},
            "data_map": {"data": ("feat", "data"), "classes": ("feat", "classes"), "align": ("align", "data")},
            "seq_list_file": str(tmp_path / "lists.py"),
            "seq_order_control_dataset": "align",
        }
    )
    seqs = read_epoch(dataset, 1)
    # The control file stores 5 0 9 2 7 1 8 3 6 4; reversed, the listed ones come as 6, 3, 0. Named by the control.
    assert [tag for tag, _ in seqs] == ["utt-6", "utt-3", "utt-0"]
    assert [int(data["data"][0, 0]) for _, data in seqs] == [6, 3, 0]
    assert all((data["align"] == data["data"]).all() for _, data in seqs)


# --- bad input --------------------------------------------------------------------------------------------


def test_datasets_disagree_on_tags(features_hdf, renamed_align_hdf):
    dataset = meta(features_hdf, renamed_align_hdf)
    with pytest.raises(
        DatasetError,
        match=r"the datasets disagree on sequence tags: dataset 'align' \(HDFDataset\) lacks 10 of the 10 tags of "
        r"dataset 'feat', e.g. \['rec0', 'rec1', 'rec2'\]\. .*give a seq_list_file",
    ):
        dataset.init_seq_order(epoch=1)


def test_seq_list_file_names_unknown_tags(features_hdf, align_hdf, tmp_path):
    (tmp_path / "list.txt").write_text("rec1\nrec99\nbogus\n")
    dataset = meta(features_hdf, align_hdf, seq_list_file=str(tmp_path / "list.txt"))
    with pytest.raises(
        DatasetError,
        match=r"seq_list_file '.*list.txt' names 2 tag\(s\) that dataset '(feat|align)' \(HDFDataset\) does not have, "
        r"e.g. \['rec99', 'bogus'\]; remove them",
    ):
        dataset.init_seq_order(epoch=1)


def test_seq_list_file_lacks_a_dataset(features_hdf, align_hdf, tmp_path):
    (tmp_path / "lists.py").write_text(repr({"feat": ["rec1"]}))
    dataset = meta(features_hdf, align_hdf, seq_list_file=str(tmp_path / "lists.py"))
    with pytest.raises(DatasetError, match=r"seq_list_file '.*lists.py': has no tag list for datasets \['align'\]"):
        dataset.get_all_tags()
    (tmp_path / "uneven.py").write_text(repr({"feat": ["rec1"], "align": ["rec1", "rec2"]}))
    dataset = meta(features_hdf, align_hdf, seq_list_file=str(tmp_path / "uneven.py"))
    with pytest.raises(DatasetError, match=r"the tag lists differ in length \{'align': 2, 'feat': 1\}"):
        dataset.get_all_tags()


def test_data_map_names_unknown_dataset(features_hdf, align_hdf):
    with pytest.raises(
        DatasetError,
        match=r"data_map\['align'\] names dataset 'alignment', which is not in datasets \(\['align', 'feat'\]\)",
    ):
        meta(features_hdf, align_hdf, data_map={"data": ("feat", "data"), "align": ("alignment", "data")})


def test_data_map_names_unknown_data_key(features_hdf, align_hdf):
    with pytest.raises(
        DatasetError,
        match=r"data_map\['classes'\] = \('align', 'classes'\), but dataset 'align' \(HDFDataset\) has no data key "
        r"'classes'; it has \['data'\]",
    ):
        meta(features_hdf, align_hdf, data_map={"data": ("feat", "data"), "classes": ("align", "classes")})
    with pytest.raises(DatasetError, match=r"data_map\['data'\] = 'feat'; expected \(dataset_key, dataset_data_key\)"):
        meta(features_hdf, align_hdf, data_map={"data": "feat"})


def test_ordering_options_belong_to_the_control_dataset(features_hdf, align_hdf):
    with pytest.raises(
        DatasetError,
        match=r"seq_ordering='random', partition_epoch=2 has no effect here; set it on the control dataset 'feat'",
    ):
        meta(features_hdf, align_hdf, seq_order_control_dataset="feat", seq_ordering="random", partition_epoch=2)
    with pytest.raises(DatasetError, match=r"seq_order_control_dataset 'zip' is not in datasets"):
        meta(features_hdf, align_hdf, seq_order_control_dataset="zip")


def test_needs_a_default_dataset(features_hdf, align_hdf):
    with pytest.raises(DatasetError, match=r"without a 'data' key in data_map, set seq_order_control_dataset"):
        meta(features_hdf, align_hdf, data_map={"x": ("feat", "data"), "y": ("align", "data")})


def test_data_dims_and_dtypes_are_checked(features_hdf, align_hdf):
    dataset = meta(features_hdf, align_hdf, data_dims={"data": (3, 2), "classes": 5}, data_dtypes={"align": "float32"})
    assert dataset.get_data_dim("classes") == 5
    with pytest.raises(DatasetError, match=r"data_dims\['classes'\] = 6, but \('feat', 'classes'\) has 5"):
        meta(features_hdf, align_hdf, data_dims={"classes": 6})
    with pytest.raises(DatasetError, match=r"data_dtypes\['data'\] = 'int32', but \('feat', 'data'\) has 'float32'"):
        meta(features_hdf, align_hdf, data_dtypes={"data": "int32"})
    with pytest.raises(DatasetError, match=r"unknown data key 'labels'; data_map has \['align', 'classes', 'data'\]"):
        dataset.get_data_dim("labels")


def test_zip_corpus_with_hdf_alignments_as_real_setups(tmp_path, read_epoch):
    """The usual top level: an OggZipDataset (here text only) controls the order, an HDF adds per-tag data."""
    import zipfile

    entries = [
        {"text": "ab", "duration": 0.3, "file": "a.wav", "seq_name": "corpus/a"},
        {"text": "b", "duration": 0.1, "file": "b.wav", "seq_name": "corpus/b"},
        {"text": "ba", "duration": 0.2, "file": "c.wav", "seq_name": "corpus/c"},
    ]
    with zipfile.ZipFile(tmp_path / "corpus.zip", "w") as zf:
        zf.writestr("corpus.txt", repr(entries))
    (tmp_path / "chars.txt").write_text(repr({"a": 0, "b": 1, "@": 2}))
    hdf = write_hdf(tmp_path / "align.hdf", ["corpus/c", "corpus/a", "corpus/b"], [2, 0, 1], with_classes=False)
    zip_dataset = {
        "class": "OggZipDataset",
        "path": str(tmp_path / "corpus.zip"),
        "audio": None,
        "targets": {"class": "CharacterTargets", "vocab_file": str(tmp_path / "chars.txt")},
        "seq_ordering": "sorted_reverse",
    }
    dataset = init_dataset(
        {
            "class": "MetaDataset",
            "datasets": {"zip_dataset": zip_dataset, "align": {"class": "HDFDataset", "files": [hdf]}},
            "data_map": {
                "labels": ("zip_dataset", "classes"),
                "orth": ("zip_dataset", "raw"),
                "data": ("align", "data"),
            },
            "seq_order_control_dataset": "zip_dataset",
        }
    )
    assert dataset.get_data_keys() == ["data", "labels", "orth"] and dataset.labels["labels"] == ["a", "b", "@"]
    seqs = read_epoch(dataset, 1)
    assert [tag for tag, _ in seqs] == ["corpus/a", "corpus/c", "corpus/b"]  # longest first, by duration
    assert [data["labels"].tolist() for _, data in seqs] == [[0, 1], [1, 0], [1]]
    assert [str(data["orth"]) for _, data in seqs] == ["ab", "ba", "b"]
    assert [int(data["data"][0, 0]) for _, data in seqs] == [0, 2, 1]


def test_seq_lens_file_lacks_a_tag(features_hdf, align_hdf, tmp_path):
    (tmp_path / "lens.json").write_text('{"rec0": {"data": 4}}')
    dataset = meta(features_hdf, align_hdf, seq_ordering="sorted", seq_lens_file=str(tmp_path / "lens.json"))
    with pytest.raises(DatasetError, match=r"seq_lens_file '.*lens.json' has no entry \{data_key: length\} for 'rec1'"):
        dataset.init_seq_order(epoch=1)


class _Speakers(MapDatasetBase):
    """A speaker id per sequence, tags rec0..rec9; remembers what was loaded."""

    def __init__(self):
        super().__init__(data_types={"speaker": {"dim": 3, "sparse": True, "shape": ()}})
        self.loaded = []

    def __len__(self):
        return 10

    def __getitem__(self, seq_idx):
        self.loaded.append(seq_idx)
        return {"speaker": np.array(seq_idx % 3, dtype=np.int32)}

    def get_seq_tag(self, seq_idx):
        return f"rec{seq_idx}"


def test_loads_only_the_requested_sequences(features_hdf):
    speakers = _Speakers()
    dataset = init_dataset(
        {
            "class": "MetaDataset",
            "datasets": {
                "feat": {"class": "HDFDataset", "files": [features_hdf], "seq_ordering": "reverse"},
                "spk": {"class": "MapDatasetWrapper", "map_dataset": speakers},
            },
            "data_map": {"data": ("feat", "data"), "speaker": ("spk", "speaker")},
            "seq_order_control_dataset": "feat",
        }
    )
    dataset.init_seq_order(epoch=1)
    assert speakers.loaded == []
    dataset.load_seqs(2, 4)
    assert speakers.loaded == [7, 6] and dataset.get_data(3, "speaker") == 0 and dataset.get_tag(3) == "rec6"
    assert dataset.num_outputs["speaker"] == (3, 0) and dataset.get_data_shape("speaker") == []
