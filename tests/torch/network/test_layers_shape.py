"""The shape layers (reduce, slice, split_dims, merge_dims, window, time_chunking, time_unchunking) against plain
torch on tiny inputs."""

from __future__ import annotations

import pytest
import torch

from returnn.errors import ConfigError
from tests.torch.network.helpers import assert_same_as_alone, build, random_batch, run


def one_layer(**options) -> dict:
    return {"output": {"from": "data", **options}}


@pytest.mark.parametrize("mode", ["sum", "max", "min", "mean", "prod", "logsumexp"])
def test_reduce_over_time_respects_lengths(mode):
    net = build(one_layer(**{"class": "reduce", "mode": mode, "axes": "T"}))
    data = random_batch([4, 2])
    out = run(net, data)
    assert out.lengths is None and out.tensor.shape == (2, 4)
    assert not net.layer("output").out_spec.time
    for b, length in enumerate([4, 2]):
        x = data["data"][b, :length]
        expected = {
            "sum": x.sum(0), "max": x.amax(0), "min": x.amin(0), "mean": x.mean(0), "prod": x.prod(0),
            "logsumexp": x.logsumexp(0),
        }[mode]  # fmt: skip
        torch.testing.assert_close(out.tensor[b], expected)


def test_reduce_feature_keep_dims_and_axis_names():
    data = random_batch([3, 2])
    out = run(build(one_layer(**{"class": "reduce", "mode": "max", "axis": "feature", "keep_dims": True})), data)
    assert out.tensor.shape == (2, 3, 1) and out.lengths.tolist() == [3, 2]
    torch.testing.assert_close(out.tensor, data["data"].amax(-1, keepdim=True))
    net = build(one_layer(**{"class": "reduce", "mode": "mean", "axes": ["time", "F"]}))
    out = run(net, data)
    assert out.tensor.shape == (2,) and net.layer("output").out_spec.describe() == "[B]"
    torch.testing.assert_close(out.tensor[1], data["data"][1, :2].mean())


def test_reduce_time_keep_dims_and_spatial():
    net = build(
        {
            "split": {"class": "split_dims", "from": "data", "axis": "F", "dims": (2, 2)},
            "output": {"class": "reduce", "from": "split", "mode": "sum", "axes": "spatial"},
        }
    )
    data = random_batch([3])
    out = run(net, data)
    torch.testing.assert_close(out.tensor, data["data"].reshape(1, 3, 2, 2).sum(2))
    out = run(build(one_layer(**{"class": "reduce", "mode": "sum", "axes": "T", "keep_dims": True})), data)
    assert out.tensor.shape == (1, 1, 4) and out.lengths.tolist() == [1]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mode": "median", "axes": "T"}, "mode 'median': choose one of"),
        ({"mode": "sum"}, "set exactly one of 'axes' and 'axis'"),
        ({"mode": "sum", "axes": "B"}, "axis 'B': choose one of"),
        ({"mode": "sum", "axes": "spatial"}, "axis 'spatial': its input .* has no such axis"),
        ({"mode": "sum", "axes": 1}, "axes are named here, not numbered"),
    ],
)
def test_reduce_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        build(one_layer(**{"class": "reduce", **options}))


@pytest.mark.parametrize(
    "start, end, step", [(1, None, None), (None, -1, None), (-3, None, None), (0, None, 2), (1, 3, None), (5, 9, 1)]
)
def test_slice_time_per_sequence(start, end, step):
    net = build(
        one_layer(**{"class": "slice", "axis": "T", "slice_start": start, "slice_end": end, "slice_step": step})
    )
    lengths = [6, 4, 1]
    data = random_batch(lengths)
    out = run(net, data)
    for b, length in enumerate(lengths):
        expected = data["data"][b, :length][start:end:step]
        assert int(out.lengths[b]) == expected.shape[0]
        torch.testing.assert_close(out.tensor[b, : expected.shape[0]], expected)
    assert_same_as_alone(net, data)


def test_slice_feature():
    net = build(one_layer(**{"class": "slice", "axis": "F", "slice_start": 1, "slice_step": 2}))
    data = random_batch([3])
    out = run(net, data)
    assert net.layer("output").out_spec.dim == 2
    torch.testing.assert_close(out.tensor, data["data"][..., 1::2])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"axis": "B", "slice_start": 1}, "axis 'B': choose 'T' or 'F'"),
        ({"axis": "T", "slice_step": -1}, "only positive steps"),
        ({"axis": "F", "slice_start": 4}, "is empty"),
        ({"axis": "T", "slice_start": 1.5}, "slice_start 1.5: expected an int"),
    ],
)
def test_slice_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        build(one_layer(**{"class": "slice", **options}))


def test_split_dims_and_merge_dims_round_trip():
    net = build(
        {
            "split": {"class": "split_dims", "from": "data", "axis": "F", "dims": (2, -1)},
            "output": {"class": "merge_dims", "from": "split", "axes": "static"},
        }
    )
    assert net.layer("split").out_spec.describe() == "[B,T,2,F=2]"
    assert net.layer("output").out_spec.describe() == "[B,T,F=4]"
    data = random_batch([3, 2])
    outputs = net(data)
    torch.testing.assert_close(outputs["split"].tensor, data["data"].reshape(2, 3, 2, 2))
    torch.testing.assert_close(outputs["output"].tensor, data["data"])
    assert outputs["output"].lengths.tolist() == [3, 2]


def test_merge_dims_spatial_axes_and_except_time():
    net = build(
        {
            "split": {"class": "split_dims", "from": "data", "axis": "F", "dims": (2, 2, 1)},
            "spatial": {"class": "merge_dims", "from": "split", "axes": "spatial", "is_output_layer": True},
            "output": {"class": "merge_dims", "from": "split", "axes": "except_time"},
        }
    )
    assert net.layer("spatial").out_spec.describe() == "[B,T,4,F=1]"
    assert net.layer("output").out_spec.describe() == "[B,T,F=4]"
    data = random_batch([2])
    torch.testing.assert_close(run(net, data, "spatial").tensor, data["data"].reshape(1, 2, 4, 1))


@pytest.mark.parametrize(
    "layer, message",
    [
        ({"class": "split_dims", "axis": "F", "dims": (3, 2)}, "do not split the feature dim 4"),
        ({"class": "split_dims", "axis": "T", "dims": (2, 2)}, "only the feature axis"),
        ({"class": "merge_dims", "axes": "except_batch"}, "include the time axis"),
        ({"class": "merge_dims", "axes": "static", "keep_order": False}, "keep_order=False is not supported"),
    ],
)
def test_split_merge_bad_options(layer, message):
    with pytest.raises(ConfigError, match=message):
        build(one_layer(**layer))


def test_window_same_centered():
    net = build(one_layer(**{"class": "window", "window_size": 3}))
    data = random_batch([4, 2])
    out = run(net, data)
    assert out.tensor.shape == (2, 4, 3, 4) and out.lengths.tolist() == [4, 2]
    assert net.layer("output").out_spec.spatial == (3,)
    x = torch.nn.functional.pad(data["data"][1, :2], (0, 0, 1, 1))
    torch.testing.assert_close(out.tensor[1, 1], x[1:4])  # frame 0, frame 1, a zero past the length
    assert_same_as_alone(net, data)


def test_window_left_only_and_valid():
    net = build(one_layer(**{"class": "window", "window_size": 3, "window_right": 0}))
    data = random_batch([4, 3])
    out = run(net, data)
    torch.testing.assert_close(out.tensor[0, 2], data["data"][0, 0:3])
    assert_same_as_alone(net, data)
    net = build(one_layer(**{"class": "window", "window_size": 2, "padding": "valid"}))
    data = random_batch([4, 2, 1])
    out = run(net, data)
    assert out.lengths.tolist() == [3, 1, 0]
    torch.testing.assert_close(out.tensor[0, 2], data["data"][0, 2:4])
    assert_same_as_alone(net, data)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"window_size": 3, "window_left": 2, "window_right": 2}, "must equal window_size=3"),
        ({"window_size": 0}, "window_size 0: expected a positive int"),
        ({"window_size": 3, "axis": "F"}, "only the time axis"),
        ({"window_size": 3, "padding": "causal"}, "padding 'causal'"),
    ],
)
def test_window_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        build(one_layer(**{"class": "window", **options}))


def chunk_net(size: int, step: int, middle: dict | None = None) -> dict:
    net = {
        "chunks": {"class": "time_chunking", "from": "data", "chunk_size": size, "chunk_step": step},
        "output": {"class": "time_unchunking", "from": "chunks", "chunking_layer": "chunks"},
    }
    if middle is not None:
        net["middle"] = {"from": "chunks", **middle}
        net["output"]["from"] = "middle"
    return net


def test_time_chunking_layout_and_lengths():
    net = build(chunk_net(3, 2))
    data = random_batch([5, 2])
    chunks = run(net, data, "chunks")
    # n_chunks from T=5: (5 - 3 + 1) // 2 + 1 = 2; chunk i of seq b at b*n_chunks + i
    assert chunks.tensor.shape == (4, 3, 4)
    assert chunks.lengths.tolist() == [3, 3, 2, 0]
    torch.testing.assert_close(chunks.tensor[1], data["data"][0, 2:5])
    torch.testing.assert_close(chunks.tensor[2, :2], data["data"][1, :2])
    alone = run(net, {k: v[1:2, :2] if v.dim() > 1 else v[1:2] for k, v in data.items()}, "chunks")
    assert alone.lengths.tolist() == [2]
    torch.testing.assert_close(alone.tensor[0, :2], chunks.tensor[2, :2])


def test_time_unchunking_restores_input():
    net = build(chunk_net(3, 2))
    data = random_batch([5, 4, 1])
    out = run(net, data)
    assert out.lengths.tolist() == [5, 4, 1]
    for b, length in enumerate([5, 4, 1]):
        torch.testing.assert_close(out.tensor[b, :length], data["data"][b, :length])
    assert_same_as_alone(net, data)


def test_time_unchunking_averages_overlaps():
    net = build(chunk_net(2, 1, middle={"class": "eval", "eval": "source(0) + 1.0"}))
    data = random_batch([3])
    out = run(net, data)
    torch.testing.assert_close(out.tensor, data["data"] + 1.0)


@pytest.mark.parametrize(
    "net, message",
    [
        (chunk_net(2, 3), "chunk_step 3 > chunk_size 2"),
        (chunk_net(0, 1), "chunk_size 0: expected a positive int"),
        ({"output": {"class": "time_unchunking", "from": "data", "chunking_layer": "data"}}, "not a 'time_chunking'"),
    ],
)
def test_chunking_bad_options(net, message):
    with pytest.raises(ConfigError, match=message):
        build(net)
