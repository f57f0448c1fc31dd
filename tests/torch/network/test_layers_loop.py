"""The layers of recurrent units and the time-axis helpers against plain torch: compare, cumsum, gather,
reduce_out, decide, prefix/postfix_in_time, get_last_hidden_state, rnn_cell."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from returnn.errors import ConfigError
from returnn.torch.network.construction import NetworkBuilder, flatten_subnetworks
from returnn.torch.network.data import DataSpec
from returnn.torch.network.network import Network

SPECS = {"data": DataSpec(dim=4), "classes": DataSpec(dim=3, sparse=True), "pos": DataSpec(dim=None, time=False)}


def build(net_dict: dict[str, Any]) -> Network:
    torch.manual_seed(0)
    return Network(NetworkBuilder(flatten_subnetworks(net_dict), SPECS, default_target="classes").build(), SPECS)


def batch() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(3)
    lengths = torch.tensor([5, 3])
    return {
        "data": torch.randn(2, 5, 4, generator=gen),
        "data:size1": lengths,
        "classes": torch.tensor([[0, 2, 1, 1, 0], [2, 2, 0, 0, 0]]),
        "classes:size1": lengths,
        "pos": torch.tensor([4, 1]),
    }


def outputs(net_dict: dict[str, Any]) -> dict[str, Any]:
    names = list(net_dict)
    net = build({**net_dict, **{f"_{n}": {"class": "copy", "from": n, "is_output_layer": True} for n in names}})
    return net(batch())


def test_compare_cumsum_reduce_out_and_decide():
    data = batch()
    out = outputs(
        {
            "eq": {"class": "compare", "from": "data:classes", "kind": "equal", "value": 2},
            "gt": {"class": "compare", "from": ["data", "data"], "kind": "greater"},
            "cum": {"class": "cumsum", "from": "data"},
            "maxout": {"class": "reduce_out", "mode": "max", "num_pieces": 2, "from": "data"},
            "best": {"class": "decide", "from": "data"},
        }
    )
    assert torch.equal(out["eq"].tensor, data["classes"] == 2) and out["eq"].spec.dtype == "bool"
    assert not out["gt"].tensor.any()
    mask = (torch.arange(5)[None, :] < data["data:size1"][:, None])[..., None]
    torch.testing.assert_close(out["cum"].tensor, torch.cumsum(data["data"] * mask, dim=1))
    torch.testing.assert_close(out["maxout"].tensor, data["data"].reshape(2, 5, 2, 2).max(-1).values)
    assert torch.equal(out["best"].tensor, data["data"])


def test_gather_by_a_position_layer_and_a_constant():
    data = batch()
    out = outputs(
        {
            "at": {"class": "gather", "from": "data", "position": "data:pos", "axis": "T"},
            "first": {"class": "gather", "from": "data", "position": 0, "axis": "T"},
        }
    )
    torch.testing.assert_close(out["at"].tensor, data["data"][torch.arange(2), data["pos"]])
    torch.testing.assert_close(out["first"].tensor, data["data"][:, 0])


def test_prefix_and_postfix_in_time():
    out = outputs(
        {
            "pre": {"class": "prefix_in_time", "from": "data:classes", "prefix": 7, "repeat": 2},
            "post": {"class": "postfix_in_time", "from": "data:classes", "postfix": 9},
        }
    )
    assert out["pre"].lengths.tolist() == [7, 5]
    assert out["pre"].tensor[1, :5].tolist() == [7, 7, 2, 2, 0]
    assert out["post"].lengths.tolist() == [6, 4]
    assert out["post"].tensor[0].tolist() == [0, 2, 1, 1, 0, 9] and out["post"].tensor[1, :4].tolist() == [2, 2, 0, 9]


@pytest.mark.parametrize("unit", ["lstm", "gru"])
def test_get_last_hidden_state_is_each_sequence_state_at_its_end(unit):
    net = build(
        {
            "rnn": {"class": "rec", "unit": unit, "n_out": 3},
            "last": {"class": "get_last_hidden_state", "from": "rnn", "is_output_layer": True},
        }
    )
    data = batch()
    out = net(data)
    sd = net.state_dict()
    for b, length in enumerate(data["data:size1"].tolist()):
        x = data["data"][b, :length]
        h = c = torch.zeros(1, 3)
        for t in range(length):
            if unit == "lstm":
                h, c = torch.lstm_cell(x[t : t + 1], (h, c), sd["rnn.W"], sd["rnn.W_re"], sd["rnn.b"])
            else:
                h = torch.gru_cell(x[t : t + 1], h, sd["rnn.W"], sd["rnn.W_re"], sd["rnn.b"], torch.zeros(9))
        expected = torch.cat([c, h], -1)[0] if unit == "lstm" else h[0]
        torch.testing.assert_close(out["last"].tensor[b], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["rnn"].tensor[b, length - 1], h[0], rtol=1e-5, atol=1e-6)


def test_rnn_cell_over_time_equals_the_rec_layer():
    net = build(
        {
            "cell": {"class": "rnn_cell", "unit": "lstm", "n_out": 3, "from": "data"},
            "rec": {"class": "rec", "unit": "lstm", "n_out": 3, "from": "data", "reuse_params": "cell"},
            "output": {"class": "combine", "kind": "sub", "from": ["cell", "rec"], "is_output_layer": True},
        }
    )
    assert torch.equal(net(batch())["output"].tensor, torch.zeros(2, 5, 3))


@pytest.mark.parametrize(
    "net_dict, match",
    [
        ({"x": {"class": "compare", "from": "data", "kind": "same", "value": 1}}, r"unknown compare kind 'same'"),
        ({"x": {"class": "compare", "from": "data"}}, r"compares two things"),
        ({"x": {"class": "reduce_out", "num_pieces": 3, "from": "data"}}, r"not a multiple of num_pieces=3"),
        ({"x": {"class": "rnn_cell", "unit": "transformer", "n_out": 3}}, r"unknown rnn_cell unit"),
        ({"x": {"class": "get_last_hidden_state", "from": "data"}}, r"must be one rec layer"),
        ({"x": {"class": "prefix_in_time", "from": "data", "repeat": -1}}, r"repeat must be an int >= 0"),
    ],
)
def test_bad_options(net_dict, match):
    net_dict["x"]["is_output_layer"] = True
    with pytest.raises(ConfigError, match=match):
        build(net_dict)
