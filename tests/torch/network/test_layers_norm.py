"""The layer_norm and batch_norm layers against plain torch on tiny inputs."""

from __future__ import annotations

import pytest
import torch

from returnn.errors import ConfigError
from tests.torch.network.helpers import assert_same_as_alone, build, random_batch, run


def norm_net(**options) -> dict:
    return {"output": {"from": "data", **options}}


def test_layer_norm_matches_torch():
    net = build(norm_net(**{"class": "layer_norm"}))
    layer = net.layer("output")
    assert sorted(name for name, _ in layer.named_parameters()) == ["bias", "scale"]
    with torch.no_grad():
        layer.scale.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        layer.bias.copy_(torch.tensor([0.0, 1.0, 0.0, 3.0]))
    data = random_batch([3, 2])
    out = run(net, data)
    expected = torch.nn.functional.layer_norm(data["data"], (4,), layer.scale, layer.bias, eps=1e-6)
    torch.testing.assert_close(out.tensor, expected)
    assert out.lengths.tolist() == [3, 2]
    assert_same_as_alone(net, data)


def test_layer_norm_epsilon_and_sparse_input():
    net = build(norm_net(**{"class": "layer_norm", "epsilon": 0.5}))
    data = random_batch([2])
    expected = torch.nn.functional.layer_norm(data["data"], (4,), eps=0.5)
    torch.testing.assert_close(run(net, data).tensor, expected)
    with pytest.raises(ConfigError, match="must be dense with a feature axis"):
        build({"output": {"class": "layer_norm", "from": "data:classes"}})


def masked_moments(data: dict) -> tuple[torch.Tensor, torch.Tensor]:
    frames = torch.cat([data["data"][b, :length] for b, length in enumerate(data["data:size1"].tolist())])
    return frames.mean(0), frames.var(0, unbiased=False)


def test_batch_norm_training_uses_masked_batch_statistics():
    net = build(norm_net(**{"class": "batch_norm"}))
    layer = net.layer("output")
    names = sorted(name for name, _ in layer.named_parameters())
    assert names == ["v2_beta", "v2_gamma"]
    assert sorted(name for name, _ in layer.named_buffers()) == ["v2_mean", "v2_variance"]
    net.train()
    data = random_batch([4, 2])  # the frames past the lengths are 1e3: they must not count
    out = run(net, data)
    mean, variance = masked_moments(data)
    torch.testing.assert_close(out.tensor[0], (data["data"][0] - mean) / torch.sqrt(variance + 1e-3))
    # running statistics: default momentum 0.1 from (0, 1)
    torch.testing.assert_close(layer.v2_mean, 0.1 * mean)
    torch.testing.assert_close(layer.v2_variance, 0.9 + 0.1 * variance)


def test_batch_norm_eval_uses_running_statistics_without_update():
    net = build(norm_net(**{"class": "batch_norm", "momentum": 0.5, "epsilon": 1e-5}))
    layer = net.layer("output")
    net.train()
    run(net, random_batch([3, 3], seed=1))
    running_mean, running_variance = layer.v2_mean.clone(), layer.v2_variance.clone()
    net.eval()
    data = random_batch([4, 2])
    out = run(net, data)
    torch.testing.assert_close(layer.v2_mean, running_mean)
    expected = (data["data"] - running_mean) / torch.sqrt(running_variance + 1e-5)
    torch.testing.assert_close(out.tensor, expected)
    assert_same_as_alone(net, data)


def test_batch_norm_without_shift_and_std_and_no_delay():
    net = build(norm_net(**{"class": "batch_norm", "use_shift": False, "use_std": False, "delay_sample_update": False}))
    layer = net.layer("output")
    assert list(layer.parameters()) == []
    net.train()
    data = random_batch([3])
    out = run(net, data)
    mean, variance = masked_moments(data)
    torch.testing.assert_close(out.tensor, (data["data"] - mean) / torch.sqrt(variance + 1e-3))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"param_version": 0}, "param_version 0: only 2 is supported"),
        ({"momentum": 1.5}, "momentum 1.5: expected a factor"),
        ({"use_sample": -1.0}, "use_sample -1.0"),
        ({"momentun": 0.1}, "unknown option 'momentun'"),
    ],
)
def test_batch_norm_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        build(norm_net(**{"class": "batch_norm", **options}))
