"""The conv and pool layers against plain torch on tiny inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from returnn.errors import ConfigError
from tests.torch.network.helpers import assert_same_as_alone, build, random_batch, run


def conv_net(**options) -> dict:
    return {"output": {"class": "conv", "from": "data", **options}}


def test_conv_1d_same_matches_torch():
    net = build(conv_net(filter_size=(3,), padding="same", n_out=5, activation="relu"))
    data = random_batch([6, 4])
    out = run(net, data)
    layer = net.layer("output")
    assert layer.W.shape == (3, 4, 5) and layer.bias.shape == (5,)
    assert out.tensor.shape == (2, 6, 5) and out.lengths.tolist() == [6, 4]
    x = data["data"][0:1].transpose(1, 2)
    expected = F.conv1d(x, layer.W.permute(2, 1, 0), layer.bias, padding=1).transpose(1, 2).relu()
    torch.testing.assert_close(out.tensor[0:1], expected)
    assert_same_as_alone(net, data)


def test_conv_1d_valid_strided_dilated_lengths():
    net = build(conv_net(filter_size=(2,), padding="VALID", n_out=3, strides=2, dilation_rate=2, with_bias=False))
    data = random_batch([9, 5, 3, 2])
    out = run(net, data)
    # dilated filter covers 3 frames: (len - 3) // 2 + 1, at least 0
    assert out.lengths.tolist() == [4, 2, 1, 0]
    assert net.layer("output").bias is None
    x = data["data"][0:1].transpose(1, 2)
    weight = net.layer("output").W.permute(2, 1, 0)
    expected = F.conv1d(x, weight, stride=2, dilation=2).transpose(1, 2)
    torch.testing.assert_close(out.tensor[0:1], expected)
    assert_same_as_alone(net, data)


def test_conv_same_strided_lengths_and_padding_independent():
    net = build(conv_net(filter_size=(3,), padding="same", n_out=2, strides=2))
    data = random_batch([7, 4, 1])
    out = run(net, data)
    assert out.tensor.shape[1] == 4 and out.lengths.tolist() == [4, 2, 1]
    assert_same_as_alone(net, data)


def test_conv_2d_on_split_features():
    net = build(
        {
            "split": {"class": "split_dims", "from": "data", "axis": "F", "dims": (4, 1)},
            "output": {"class": "conv", "from": "split", "filter_size": (3, 2), "padding": "valid", "n_out": 2},
        }
    )
    data = random_batch([5, 3])
    out = run(net, data)
    assert net.layer("output").out_spec.spatial == (3,)
    assert out.tensor.shape == (2, 3, 3, 2) and out.lengths.tolist() == [3, 1]
    layer = net.layer("output")
    x = data["data"][0:1].unsqueeze(1)  # [1, C=1, T, W=4]
    expected = F.conv2d(x, layer.W.permute(3, 2, 0, 1), layer.bias).permute(0, 2, 3, 1)
    torch.testing.assert_close(out.tensor[0:1], expected)
    assert_same_as_alone(net, data)


def test_conv_bias_init():
    net = build(conv_net(filter_size=(1,), padding="same", n_out=2, bias_init=0.5, forward_weights_init=0.0))
    out = run(net, random_batch([2]))
    torch.testing.assert_close(out.tensor, torch.full((1, 2, 2), 0.5))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"filter_size": (3,), "padding": "full", "n_out": 2}, "padding 'full': choose one of"),
        ({"filter_size": 3, "padding": "same", "n_out": 2}, "filter_size 3: expected a tuple"),
        ({"filter_size": (3, 3), "padding": "same", "n_out": 2}, "filter/pool size has 2 axes"),
        ({"filter_size": (3,), "padding": "same", "n_out": 2, "strides": 0}, "strides 0: expected 1 positive"),
    ],
)
def test_conv_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        build(conv_net(**options))


def test_conv_needs_padding():
    with pytest.raises(ConfigError, match="needs the option"):
        build(conv_net(filter_size=(3,), n_out=2))


def pool_net(**options) -> dict:
    return {"output": {"class": "pool", "from": "data", **options}}


def test_pool_max_valid_default_strides():
    net = build(pool_net(mode="max", pool_size=(2,)))
    data = random_batch([5, 4, 1])
    out = run(net, data)
    assert out.lengths.tolist() == [2, 2, 0]
    expected = F.max_pool1d(data["data"][0:1, :4].transpose(1, 2), 2).transpose(1, 2)
    torch.testing.assert_close(out.tensor[0:1], expected)
    assert_same_as_alone(net, data)


def test_pool_max_same_ignores_padding_frames():
    net = build(pool_net(mode="max", pool_size=(2,), padding="same"))
    x = -torch.ones(1, 3, 4)
    x[0, 2] = -5.0
    data = random_batch([3])
    data["data"] = x
    out = run(net, data)
    # the last window holds frame 2 and a padding frame, which must not win with 0
    assert out.lengths.tolist() == [2]
    torch.testing.assert_close(out.tensor, torch.tensor([[[-1.0] * 4, [-5.0] * 4]]))
    assert_same_as_alone(net, random_batch([5, 3, 2]))


def test_pool_avg_excludes_padding():
    net = build(pool_net(mode="avg", pool_size=(3,), padding="same", strides=1))
    data = random_batch([4, 2])
    out = run(net, data)
    x = data["data"][1, :2]
    torch.testing.assert_close(out.tensor[1, 0], x.mean(dim=0))  # window: pad, frame 0, frame 1
    torch.testing.assert_close(out.tensor[1, 1], x.mean(dim=0))  # window: frame 0, frame 1, past the length
    assert out.lengths.tolist() == [4, 2]
    assert_same_as_alone(net, data)


def test_pool_2d():
    net = build(
        {
            "split": {"class": "split_dims", "from": "data", "axis": "F", "dims": (2, 2)},
            "output": {"class": "pool", "from": "split", "mode": "avg", "pool_size": (2, 2)},
        }
    )
    data = random_batch([4, 3])
    out = run(net, data)
    assert out.tensor.shape == (2, 2, 1, 2) and out.lengths.tolist() == [2, 1]
    x = data["data"][0].reshape(4, 2, 2)
    torch.testing.assert_close(out.tensor[0, 0, 0], x[0:2].mean(dim=(0, 1)))
    assert_same_as_alone(net, data)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mode": "sum", "pool_size": (2,)}, "mode 'sum': choose one of: max, avg"),
        ({"mode": "max", "pool_size": (0,)}, "pool_size \\(0,\\): expected 1 positive"),
        ({"mode": "max", "pool_size": (2,), "padding": "wrap"}, "padding 'wrap'"),
    ],
)
def test_pool_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        build(pool_net(**options))
