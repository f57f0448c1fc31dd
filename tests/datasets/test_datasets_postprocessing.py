"""PostprocessingDataset: per-sequence and stream functions over another dataset; LaplaceOrdering, Sequential."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from returnn.config import Config, load_config
from returnn.datasets import init_dataset
from returnn.datasets.postprocessing import LaplaceOrdering, PostprocessingDataset, Sequential
from returnn.errors import DatasetError

LENS = [4, 1, 6, 3, 5, 2, 7]


def inner(**kwargs) -> dict:
    """Sequence i: ``data`` [T, 2] filled with i, ``classes`` [T] counting up (mod 5)."""
    data = [
        {"data": np.full((n, 2), i, dtype=np.float32), "classes": np.arange(n, dtype=np.int32) % 5}
        for i, n in enumerate(LENS)
    ]
    return {"class": "StaticDataset", "data": data, "output_dim": {"classes": (5, 1)}, **kwargs}


def scale(data, *, rng, **kwargs):
    data["data"] = data["data"] * np.float32(rng.uniform(1.0, 2.0))
    return data


def add_energy(data, *, rng, epoch, **kwargs):
    feats = data["data"]
    data["data"] = np.concatenate([feats, feats.sum(axis=1, keepdims=True)], axis=1)
    data["epoch"] = np.array(epoch, dtype=np.int64)
    del data["classes"]
    return data


def merge_pairs(iterator, *, rng, **kwargs):
    """Two consecutive sequences become one (a trailing single one stays)."""
    pending = None
    for item in iterator:
        if pending is None:
            pending = item
            continue
        yield {
            "data": np.concatenate([pending["data"], item["data"]]),
            "classes": np.concatenate([pending["classes"], item["classes"]]),
            "seq_tag": f"{pending['seq_tag']}+{item['seq_tag']}",
        }
        pending = None
    if pending is not None:
        yield pending


def make(**kwargs) -> PostprocessingDataset:
    return init_dataset({"class": "PostprocessingDataset", "dataset": inner(seq_ordering="random"), **kwargs})


def test_map_seq_keeps_order_keys_and_description(read_epoch):
    dataset = make(map_seq=scale)
    assert dataset.get_data_keys() == ["classes", "data"] and dataset.num_outputs == {"classes": (5, 1), "data": (2, 2)}
    assert (dataset.get_data_dtype("data"), dataset.get_data_shape("data"), dataset.is_data_sparse("classes")) == (
        "float32",
        [2],
        True,
    )
    reference = init_dataset(inner(seq_ordering="random"))
    reference.init_seq_order(epoch=2)
    seqs = read_epoch(dataset, 2)
    assert dataset.num_seqs == 7  # known up front: one output per input
    assert [tag for tag, _ in seqs] == [reference.get_tag(i) for i in range(7)]
    assert dataset.get_current_seq_order() == reference.get_current_seq_order()
    for tag, data in seqs:
        idx = int(tag.removeprefix("seq-"))
        factor = data["data"][0, 0] / idx if idx else 1.5
        assert 1.0 <= factor < 2.0 and np.allclose(data["data"], idx * factor) and data["data"].dtype == np.float32
        np.testing.assert_array_equal(data["classes"], np.arange(LENS[idx]) % 5)
    assert [tag for tag, _ in read_epoch(dataset, 2)] == [tag for tag, _ in seqs]
    np.testing.assert_array_equal(read_epoch(dataset, 2)[3][1]["data"], seqs[3][1]["data"])  # deterministic per epoch


def test_map_seq_results_do_not_depend_on_sharding(read_epoch):
    full = dict(read_epoch(make(map_seq=scale), 3))
    sharded = {}
    for shard_index in range(3):
        dataset = make(map_seq=scale)
        assert dataset.supports_sharding()
        dataset.set_sharding(shard_index, 3)
        sharded.update(read_epoch(dataset, 3))
    assert sorted(sharded) == sorted(full)
    for tag, data in full.items():
        np.testing.assert_array_equal(sharded[tag]["data"], data["data"])


def test_map_outputs_declare_changed_added_and_dropped_keys(read_epoch):
    dataset = make(
        map_seq=add_energy,
        map_outputs={"data": {"dim": 3}, "epoch": {"shape": (), "dtype": "int64"}, "classes": None},
    )
    assert dataset.get_data_keys() == ["data", "epoch"]
    assert dataset.num_outputs == {"data": (3, 2), "epoch": (0, 0)}
    assert (dataset.get_data_shape("data"), dataset.get_data_dtype("epoch")) == ([3], "int64")
    tag, data = read_epoch(dataset, 4)[0]
    idx = int(tag.removeprefix("seq-"))
    assert data["data"].shape == (LENS[idx], 3) and (data["data"][:, 2] == 2 * idx).all()
    assert data["epoch"] == 4


def test_map_seq_stream_merges_sequences(read_epoch):
    dataset = make(map_seq_stream=merge_pairs)
    dataset.init_seq_order(epoch=1)
    with pytest.raises(DatasetError, match=r"number of sequences not known before the end of the epoch"):
        _ = dataset.num_seqs
    seqs = read_epoch(dataset, 1)
    reference = init_dataset(inner(seq_ordering="random"))
    reference.init_seq_order(epoch=1)
    order = [reference.get_tag(i) for i in range(7)]
    assert [tag for tag, _ in seqs] == [
        f"{order[0]}+{order[1]}",
        f"{order[2]}+{order[3]}",
        f"{order[4]}+{order[5]}",
        order[6],
    ]
    assert dataset.num_seqs == 4
    assert seqs[0][1]["data"].shape[0] == sum(LENS[int(t.removeprefix("seq-"))] for t in order[:2])
    with pytest.raises(DatasetError, match=r"the list of all tags is not defined with map_seq_stream"):
        dataset.get_all_tags()


def test_laplace_ordering_and_sequential(read_epoch):
    stream = Sequential(merge_pairs, LaplaceOrdering(num_seqs_per_bin=2))
    assert not stream.preserves_num_seqs  # merge_pairs does not say so
    dataset = make(map_seq=scale, map_seq_stream=LaplaceOrdering(2))
    seqs = read_epoch(dataset, 1)
    lens = [data["data"].shape[0] for _, data in seqs]
    assert lens[0] <= lens[1] and lens[2] >= lens[3] and lens[4] <= lens[5] and len(lens) == 7
    dataset.init_seq_order(epoch=1)
    assert dataset.num_seqs == 7  # LaplaceOrdering preserves the number of sequences
    merged = read_epoch(make(map_seq_stream=stream), 1)
    assert len(merged) == 4 and len(merged[0][1]["data"]) <= len(merged[1][1]["data"])


def test_pickle_round_trip_keeps_the_functions(read_epoch):
    dataset = make(map_seq=scale, map_seq_stream=merge_pairs, name="train")
    expected = read_epoch(dataset, 2)
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.map_seq is scale and clone.map_seq_stream is merge_pairs  # by reference, not wrapped
    assert [(tag, data["data"].tolist()) for tag, data in read_epoch(clone, 2)] == [
        (tag, data["data"].tolist()) for tag, data in expected
    ]


def _without_kwargs(data, rng):
    return data


def _to_float64(data, **kwargs):
    data["data"] = data["data"].astype(np.float64)
    return data


def _drops_classes(data, **kwargs):
    del data["classes"]
    return data


def _wrong_dim(data, **kwargs):
    return data


def _list_stream(iterator, **kwargs):
    return list(iterator)


def _drop_all(iterator, **kwargs):
    yield from ()


def test_bad_options():
    with pytest.raises(DatasetError, match=r"set map_seq or map_seq_stream \(or both\)"):
        make()
    with pytest.raises(DatasetError, match=r"seq_ordering='sorted' has no effect here; set it on the wrapped dataset"):
        make(map_seq=scale, seq_ordering="sorted")
    with pytest.raises(DatasetError, match=r"'_without_kwargs' must accept \*\*kwargs.*\(epoch=\.\.\., \*\*kwargs\)"):
        make(map_seq=_without_kwargs)
    with pytest.raises(DatasetError, match=r"map_outputs drops 'speed', which the wrapped dataset lacks"):
        make(map_seq=scale, map_outputs={"speed": None})
    with pytest.raises(DatasetError, match=r"map_outputs\['data'\]: give 'dim' or 'shape'"):
        make(map_seq=scale, map_outputs={"data": {"dtype": "float32"}})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"map_seq": _to_float64},
            r"map_seq result for 'seq-\d', key 'data': got dtype float64 with 2 axes, the wrapped dataset gives "
            r"float32 with 2; convert it back, or declare the new form in map_outputs",
        ),
        (
            {"map_seq": _drops_classes},
            r"map_seq gave keys \['data'\] for 'seq-\d', but the dataset has \['classes', 'data'\]; declare added keys "
            r"in map_outputs .* and dropped ones as \{key: None\}",
        ),
        (
            {"map_seq": _wrong_dim, "map_outputs": {"data": {"dim": 3}}},
            r"result for 'seq-\d', key 'data': got shape \[\d, 2\], declared \[None, 3\] \(None: any size\) "
            r"\(map_outputs\)",
        ),
        ({"map_seq_stream": _list_stream}, r"map_seq_stream must return an iterator, got list"),
        (
            {"map_seq_stream": _drop_all, "map_seq_stream_preserves_num_seqs": True},
            r"map_seq_stream stopped after 0 sequences, but it is declared to preserve the number of sequences \(7\)",
        ),
    ],
)
def test_bad_results(kwargs, message, read_epoch):
    with pytest.raises(DatasetError, match=message):
        read_epoch(make(**kwargs), 1)


def test_stream_cannot_take_a_seq_list():
    dataset = make(map_seq_stream=merge_pairs)
    with pytest.raises(DatasetError, match=r"with map_seq_stream, an epoch cannot be given as a list of sequences"):
        dataset.init_seq_order(epoch=1, seq_list=["seq-1"])
    plain = make(map_seq=scale)
    plain.init_seq_order(epoch=1, seq_list=["seq-4", "seq-1"])
    assert [plain.get_tag(i) for i in range(plain.num_seqs)] == ["seq-4", "seq-1"]


_CONFIG = """\
import numpy as np

def perturb(data, *, rng, **kwargs):
    data["data"] = data["data"] + np.float32(rng.randint(1, 4) * 1000)
    return data

train = {
    "class": "PostprocessingDataset",
    "dataset": {
        "class": "MetaDataset",
        "datasets": {"gen": {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 9, "seq_len": 2,
                             "seq_ordering": "random"}},
        "data_map": {"data": ("gen", "data"), "classes": ("gen", "classes")},
        "seq_order_control_dataset": "gen",
    },
    "map_seq": perturb,
}
batch_size = 100
max_seqs = 1
num_workers_per_gpu = 2
"""


@pytest.mark.slow
def test_config_function_in_spawned_dataloader_workers(tmp_path, read_epoch):
    """Real spawned DataLoader workers rebuild the dataset (config function by reference) and shard it."""
    from returnn.torch.data import DataPipelineOptions, build_data_loader

    path = tmp_path / "exp.config"
    path.write_text(_CONFIG)
    try:
        config = load_config([str(path)])
        dataset = init_dataset(config.typed_value("train"))
        expected = {tag: data["data"] for tag, data in read_epoch(dataset, 2)}
        with build_data_loader(dataset, DataPipelineOptions.from_config(config), mode="eval") as loader:
            batches = list(loader.iter_epoch(2))
    finally:
        sys.modules.pop(Config.MODULE_NAME, None)
    tags = [batch["seq_tag"][0] for batch in batches]
    assert sorted(tags) == sorted(expected) and len(tags) == 9
    for tag, batch in zip(tags, batches):
        np.testing.assert_array_equal(batch["data"][0].numpy(), expected[tag])
        assert batch["data"].min() >= 999  # DummyDataset features lie in [-0.5, 0.5)


def test_options_are_checked_by_name():
    with pytest.raises(DatasetError, match=r"unknown option 'map_seqs' \(did you mean 'map_seq'\?\)"):
        make(map_seqs=scale)
