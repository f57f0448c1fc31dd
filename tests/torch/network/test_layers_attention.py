"""The attention layers (softmax_over_spatial, dot_attention, generic_attention, self_attention,
gauss_window_attention) against plain torch on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch

from returnn.errors import ConfigError
from returnn.torch.network.data import DataSpec
from tests.torch.network.helpers import DATA_SPECS, assert_same_as_alone, build, random_batch, run

SPECS_WITH_POS = {**DATA_SPECS, "pos": DataSpec(dim=None, time=False)}
SPECS_WITH_ENC = {**DATA_SPECS, "enc": DataSpec(dim=4)}


def one_layer(**options) -> dict:
    return {"output": {"from": "data", **options}}


def alone(data: dict[str, torch.Tensor], b: int) -> dict[str, torch.Tensor]:
    """Sequence ``b`` of every data key, each cut to its own length."""
    out = {}
    for key, value in data.items():
        if key.endswith(":size1"):
            continue
        out[key] = value[b : b + 1]
        if f"{key}:size1" in data:
            sizes = data[f"{key}:size1"][b : b + 1]
            out[key], out[f"{key}:size1"] = out[key][:, : int(sizes[0])], sizes
    return out


def assert_each_alone(network, data: dict[str, torch.Tensor]) -> None:
    """Like ``assert_same_as_alone``, for outputs without a time axis and data with several keys."""
    out = run(network, data)
    for b in range(data["data"].shape[0]):
        single = run(network, alone(data, b))
        if out.lengths is None:
            torch.testing.assert_close(out.tensor[b], single.tensor[0])
        else:
            length = int(single.lengths[0])
            assert int(out.lengths[b]) == length
            torch.testing.assert_close(out.tensor[b, :length], single.tensor[0, :length])


# softmax_over_spatial


@pytest.mark.parametrize("energy_factor", [None, 0.5])
def test_softmax_over_spatial_masks_past_lengths(energy_factor):
    net = build(one_layer(**{"class": "softmax_over_spatial", "energy_factor": energy_factor}))
    lengths = [4, 2, 3]
    data = random_batch(lengths)
    out = run(net, data)
    assert net.layer("output").out_spec == DATA_SPECS["data"]
    for b, length in enumerate(lengths):
        expected = torch.softmax(data["data"][b, :length] * (energy_factor or 1.0), dim=0)
        torch.testing.assert_close(out.tensor[b, :length], expected)
        assert (out.tensor[b, length:] == 0).all()
    assert_same_as_alone(net, data)


def test_softmax_over_spatial_window_and_log_space():
    options = {"class": "softmax_over_spatial", "window_start": 1, "window_size": 2}
    data = random_batch([4, 2, 1])
    out = run(build(one_layer(**options)), data)
    log_out = run(build(one_layer(**options, log_space=True)), data)
    for b, length in enumerate([4, 2, 1]):
        keep = torch.zeros(4, 1, dtype=torch.bool)
        keep[1 : min(3, length)] = True
        expected = torch.softmax(data["data"][b].masked_fill(~keep, -math.inf), dim=0).nan_to_num(0.0)
        torch.testing.assert_close(out.tensor[b], expected)
        torch.testing.assert_close(log_out.tensor[b].exp(), expected)
    assert (out.tensor[2] == 0).all()  # length 1: the window [1, 3) is empty


def test_softmax_over_spatial_window_and_start_from_layers():
    specs = {**DATA_SPECS, "start": DataSpec(dim=None, time=False, dtype="int64")}
    options = {"class": "softmax_over_spatial", "start": "data:start", "window_start": "data:start", "window_size": 2}
    net = build(one_layer(**options), specs)
    data = {**random_batch([4, 4]), "start": torch.tensor([0, 2])}
    out = run(net, data)
    for b, start in enumerate([0, 2]):
        expected = torch.zeros(4, 4)
        expected[start : start + 2] = torch.softmax(data["data"][b, start : start + 2], dim=0)
        torch.testing.assert_close(out.tensor[b], expected)


def test_softmax_over_spatial_over_time_per_head_and_without_time_mask():
    data = random_batch([3, 3])
    net = build(
        {
            "split": {"class": "split_dims", "from": "data", "axis": "F", "dims": (2, 2)},
            "output": {"class": "softmax_over_spatial", "from": "split"},
        }
    )
    torch.testing.assert_close(run(net, data).tensor, torch.softmax(data["data"].reshape(2, 3, 2, 2), dim=1))
    data = random_batch([3, 2])
    out = run(build(one_layer(**{"class": "softmax_over_spatial", "use_time_mask": False})), data)
    torch.testing.assert_close(out.tensor, torch.softmax(data["data"], dim=1))  # padding included


@pytest.mark.parametrize(
    "options, message",
    [
        ({"axis": "F"}, "axis 'F': only the time axis is supported here"),
        ({"window_start": 1}, "window_start needs window_size"),
        ({"window_size": 2}, "window_size needs window_start"),
        ({"window_start": 0, "window_size": 0}, "window_size 0: expected a positive int"),
        ({"window_start": 0, "window_size": 2, "use_time_mask": False}, "they need use_time_mask"),
        ({"energy_factor": "1/8"}, "energy_factor '1/8': expected a number"),
    ],
)
def test_softmax_over_spatial_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        build(one_layer(**{"class": "softmax_over_spatial", **options}))


def test_softmax_over_spatial_needs_time_and_float():
    net = {
        "pooled": {"class": "reduce", "from": "data", "mode": "max", "axes": "T"},
        "output": {"class": "softmax_over_spatial", "from": "pooled"},
    }
    with pytest.raises(ConfigError, match=r"its input \[B,F=4\] has no time axis"):
        build(net)
    with pytest.raises(ConfigError, match="is not float energies"):
        build({"output": {"class": "softmax_over_spatial", "from": "data:classes"}})


# dot_attention


def reference_attention(query, keys, values, factor=1.0):
    """``query`` [T_q,F], ``keys`` [T,F], ``values`` [T,F_v] of one sequence."""
    return torch.softmax(query @ keys.T * factor, dim=-1) @ values


def test_dot_attention_query_without_time_axis():
    net = build(
        {
            "query": {"class": "reduce", "from": "data", "mode": "mean", "axes": "T"},
            "output": {"class": "dot_attention", "from": "query", "base": "data", "energy_factor": 0.5},
        }
    )
    lengths = [4, 2, 3]
    data = random_batch(lengths)
    out = run(net, data)
    assert out.lengths is None and net.layer("output").out_spec.describe() == "[B,F=4]"
    for b, length in enumerate(lengths):
        x = data["data"][b, :length]
        expected = reference_attention(x.mean(0, keepdim=True), x, x, 0.5)[0]
        torch.testing.assert_close(out.tensor[b], expected)
    assert_each_alone(net, data)


def test_dot_attention_query_with_time_axis_and_base_ctx():
    net = build(
        {
            "values": {"class": "linear", "from": "data:enc", "n_out": 5},
            "output": {"class": "dot_attention", "from": "data", "base": "values", "base_ctx": "data:enc"},
        },
        SPECS_WITH_ENC,
    )
    data = {**random_batch([3, 2]), "enc": torch.randn(2, 4, 4), "enc:size1": torch.tensor([2, 4])}
    data["enc"][0, 2:] = 1e3
    out = run(net, data)
    assert out.lengths.tolist() == [3, 2] and net.layer("output").out_spec.describe() == "[B,T,F=5]"
    values = run(net, data, "values").tensor
    for b, (q_len, k_len) in enumerate([(3, 2), (2, 4)]):
        expected = reference_attention(data["data"][b, :q_len], data["enc"][b, :k_len], values[b, :k_len])
        torch.testing.assert_close(out.tensor[b, :q_len], expected)
    assert_each_alone(net, data)


def test_dot_attention_over_its_own_input():
    net = build(one_layer(**{"class": "dot_attention", "base": "data"}))
    data = random_batch([3, 1, 2])
    out = run(net, data)
    x = data["data"][0, :3]
    torch.testing.assert_close(out.tensor[0, :3], reference_attention(x, x, x))
    assert_same_as_alone(net, data)


@pytest.mark.parametrize(
    "net, message",
    [
        (
            {"q": {"class": "linear", "from": "data", "n_out": 3}, "output": {"from": "q", "base": "data"}},
            "the query's dim 3 differs from the keys' dim 4 .base.; project one of them",
        ),
        (
            {"q": {"class": "reduce", "from": "data", "mode": "max", "axes": "T"}, "output": {"base": "q"}},
            r"base 'q' \[B,F=4\]: expected \[B,T,F\]",
        ),
        ({"output": {"base": "data", "energy_factor": True}}, "energy_factor True: expected a number"),
        ({"output": {}}, "needs the option.s. base"),
        ({"output": {"base": "data", "from": []}}, "needs the query in 'from'"),
    ],
)
def test_dot_attention_bad_options(net, message):
    net["output"] = {"class": "dot_attention", **net["output"]}
    with pytest.raises(ConfigError, match=message):
        build(net)


# generic_attention


def heads_net(**attention) -> dict:
    """Attention weights per head [B,T,2] over the values [B,T,2,2] (the data split in 2 heads)."""
    return {
        "energy": {"class": "linear", "from": "data", "n_out": 2},
        "weights": {"class": "softmax_over_spatial", "from": "energy"},
        "values": {"class": "split_dims", "from": "data", "axis": "F", "dims": (2, 2)},
        "output": {"class": "generic_attention", "base": "values", **attention},
    }


@pytest.mark.parametrize("attention", [{"weights": "weights"}, {"from": "weights"}, {"weights": "weights", "from": []}])
def test_generic_attention_with_heads(attention):
    torch.manual_seed(0)
    net = build(heads_net(**attention))
    assert net.layer("output").out_spec.describe() == "[B,2,F=2]"
    lengths = [4, 2]
    data = random_batch(lengths)
    out = run(net, data)
    weights = run(net, data, "weights").tensor
    for b, length in enumerate(lengths):
        values = data["data"][b, :length].reshape(length, 2, 2)
        expected = torch.einsum("th,thf->hf", weights[b, :length], values)
        torch.testing.assert_close(out.tensor[b], expected)
    assert_each_alone(net, data)


def test_generic_attention_squeezes_a_single_weight_and_equals_dot_attention():
    net = build(
        {
            "query": {"class": "reduce", "from": "data", "mode": "mean", "axes": "T"},
            "energy": {
                "class": "eval",
                "from": ["data", "query"],
                "eval": "(source(0) * source(1)).sum(-1, True)",
                "out_type": {"dim": 1},
            },
            "weights": {"class": "softmax_over_spatial", "from": "energy"},
            "output": {"class": "generic_attention", "weights": "weights", "base": "data"},
            "dot": {"class": "dot_attention", "from": "query", "base": "data", "is_output_layer": True},
        }
    )
    assert net.layer("output").out_spec.describe() == "[B,F=4]"
    data = random_batch([3, 2])
    outputs = net(data)
    torch.testing.assert_close(outputs["output"].tensor, outputs["dot"].tensor)
    assert_each_alone(net, data)


@pytest.mark.parametrize(
    "net, message",
    [
        (heads_net(weights="weights", **{"from": "energy"}), "either in 'weights' or in 'from', not both"),
        (
            {
                "values": {"class": "split_dims", "from": "data", "axis": "F", "dims": (2, 2)},
                "output": {"base": "values"},
            },
            r"the spatial axes \[2\] of base 'values' .* match no axis of the weights \[B,T,F=4\]",
        ),
        ({"output": {"from": "data", "base": "data:classes"}}, r"base 'data:classes' \[B,T\] sparse dim=3: expected"),
    ],
)
def test_generic_attention_bad_options(net, message):
    net["output"] = {**net["output"], "class": "generic_attention"}
    with pytest.raises(ConfigError, match=message):
        build(net)


# self_attention


def reference_self_attention(x, qkv, num_heads, total_key_dim, causal=False):
    """Self-attention of one sequence ``x`` [T,F] with RETURNN's QKV layout, one head after the other."""
    time = x.shape[0]
    key_dim = total_key_dim // num_heads
    per_head = (x @ qkv).reshape(time, num_heads, -1)
    outputs = []
    for h in range(num_heads):
        q, k, v = per_head[:, h, :key_dim], per_head[:, h, key_dim : 2 * key_dim], per_head[:, h, 2 * key_dim :]
        energy = q @ k.T / math.sqrt(key_dim)
        if causal:
            energy = energy.masked_fill(~torch.ones(time, time, dtype=torch.bool).tril(), -math.inf)
        outputs.append(torch.softmax(energy, dim=-1) @ v)
    return torch.cat(outputs, dim=-1)


SELF_ATTENTION = {"class": "self_attention", "num_heads": 2, "total_key_dim": 4, "n_out": 6}


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_against_reference(causal):
    net = build(one_layer(**SELF_ATTENTION, attention_left_only=causal))
    qkv = net.layer("output").QKV
    assert qkv.shape == (4, 2 * 4 + 6) and [name for name, _ in net.named_parameters()] == ["output.QKV"]
    lengths = [4, 2, 3]
    data = random_batch(lengths)
    out = run(net, data)
    assert out.lengths.tolist() == lengths and out.tensor.shape == (3, 4, 6)
    with torch.no_grad():
        for b, length in enumerate(lengths):
            expected = reference_self_attention(data["data"][b, :length], qkv, 2, 4, causal)
            torch.testing.assert_close(out.tensor[b, :length], expected)
        assert_same_as_alone(net, data)


def test_causal_self_attention_equals_step_by_step_over_prefixes():
    net = build(one_layer(**SELF_ATTENTION, attention_left_only=True))
    data = random_batch([5])
    with torch.no_grad():
        full = run(net, data).tensor[0]
        for t in range(5):
            prefix = run(net, random_batch([t + 1]) | {"data": data["data"][:, : t + 1]}).tensor[0]
            torch.testing.assert_close(prefix[t], full[t])
            torch.testing.assert_close(prefix, full[: t + 1])


def test_self_attention_on_sparse_input_and_attention_dropout():
    net = build({"output": {"from": "data:classes", **SELF_ATTENTION}})
    data = random_batch([3, 2])
    data["classes"] = torch.tensor([[0, 2, 1], [1, 1, 0]])
    qkv = net.layer("output").QKV
    with torch.no_grad():
        out = run(net, data)
        expected = reference_self_attention(torch.eye(3)[data["classes"][0]], qkv, 2, 4)
        torch.testing.assert_close(out.tensor[0], expected)
    net = build(one_layer(**SELF_ATTENTION, attention_dropout=0.5))
    data = random_batch([4])
    with torch.no_grad():
        net.eval()
        expected = reference_self_attention(data["data"][0], net.layer("output").QKV, 2, 4)
        torch.testing.assert_close(run(net, data).tensor[0], expected)
        net.train()
        assert not torch.allclose(run(net, data).tensor[0], expected)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"total_key_dim": 5}, "total_key_dim 5 and n_out 6 must both be divisible by num_heads 2"),
        ({"num_heads": 0}, "num_heads 0: expected a positive int"),
        ({"key_shift": "rel_pos"}, "key_shift .* is not supported yet"),
        ({"attention_dropout": 1.0}, r"attention_dropout 1.0: expected a rate in \[0, 1\)"),
        ({"n_out": None}, "needs 'n_out'"),
    ],
)
def test_self_attention_bad_options(options, message):
    options = {**SELF_ATTENTION, **options}
    if options["n_out"] is None:
        del options["n_out"]
    with pytest.raises(ConfigError, match=message):
        build(one_layer(**options))


def test_self_attention_inside_a_rec_unit_attends_step_by_step_to_the_steps_before():
    unit = {
        "att": {"class": "self_attention", "from": ["data:source", "prev:out"], **_SA_OPTIONS},
        "out": {"class": "linear", "from": "att", "n_out": 4, "activation": "tanh"},
        "output": {"class": "copy", "from": "out"},
    }
    network = build({"output": {"class": "rec", "from": "data", "unit": unit, "is_output_layer": True}})
    assert network.layer("output").phases["att"] == "loop"
    data = random_batch([5, 5])
    got = run(network, data).tensor
    # the same by hand: each step's keys and values are appended, the query attends to all of them
    sd = network.state_dict()
    qkv_w, out_w, out_b = sd["output.att.QKV"], sd["output.out.W"], sd["output.out.b"]
    batch, time = data["data"].shape[:2]
    prev, keys, values, outs = torch.zeros(batch, 4), [], [], []
    for t in range(time):
        qkv = (torch.cat([data["data"][:, t], prev], -1) @ qkv_w).reshape(batch, 2, -1)
        q, k, v = qkv.split([3, 3, 2], dim=-1)
        keys.append(k)
        values.append(v)
        energy = torch.einsum("bhd,bthd->bht", q * 3**-0.5, torch.stack(keys, 1))
        att = torch.einsum("bht,bthd->bhd", energy.softmax(-1), torch.stack(values, 1)).reshape(batch, -1)
        prev = torch.tanh(att @ out_w + out_b)
        outs.append(prev)
    torch.testing.assert_close(got, torch.stack(outs, 1), rtol=1e-5, atol=1e-6)


_SA_OPTIONS = {"num_heads": 2, "total_key_dim": 6, "n_out": 4}


# gauss_window_attention


def reference_gauss_window(x, t, window_size, std, centers):
    """The Gauss window sum of one sequence ``x`` [T,F] around position ``t``, at each of ``centers``."""
    first = round(t) - window_size // 2
    outputs = []
    for center in centers:
        total = torch.zeros(x.shape[1])
        for j in range(first, first + window_size):
            weight = math.exp(-((center - j) ** 2) / (2 * std**2)) / (std * math.sqrt(2 * math.pi))
            total += weight * x[min(max(j, 0), x.shape[0] - 1)]
        outputs.append(total)
    return torch.stack(outputs)


@pytest.mark.parametrize("inner_size", [None, 3])
def test_gauss_window_attention_against_reference(inner_size):
    options = {"class": "gauss_window_attention", "from": "data:pos", "base": "data", "window_size": 3, "std": 0.8}
    net = build({"output": {**options, "inner_size": inner_size}}, SPECS_WITH_POS)
    lengths, positions = [4, 2, 3], [1.4, 1.6, 0.2]
    data = {**random_batch(lengths), "pos": torch.tensor(positions)}
    out = run(net, data)
    assert net.layer("output").out_spec.describe() == ("[B,3,F=4]" if inner_size else "[B,F=4]")
    for b, (length, t) in enumerate(zip(lengths, positions)):
        centers = [t + i * 0.5 - 1.5 for i in range(3)] if inner_size else [t]
        expected = reference_gauss_window(data["data"][b, :length], t, 3, 0.8, centers)
        torch.testing.assert_close(out.tensor[b], expected if inner_size else expected[0])
    assert_each_alone(net, data)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"window_size": 0}, "window_size 0: expected a positive int"),
        ({"std": 0}, "std 0: expected a positive number"),
        ({"from": "data"}, r"the position \[B,T,F=4\]: expected one number per sequence"),
        ({"base": "data:pos"}, r"base 'data:pos' \[B\]: expected \[B,T,F\]"),
    ],
)
def test_gauss_window_attention_bad_options(options, message):
    layer = {"class": "gauss_window_attention", "from": "data:pos", "base": "data", "window_size": 3, **options}
    with pytest.raises(ConfigError, match=message):
        build({"output": layer}, SPECS_WITH_POS)
