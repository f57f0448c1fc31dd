"""Network dicts: construction, the basic and recurrent layers against plain torch, losses, scores, bad input."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from returnn.config import Config
from returnn.errors import ConfigError
from returnn.torch.context import RunCtx
from returnn.torch.network.construction import NetworkBuilder, flatten_subnetworks
from returnn.torch.network.data import DataSpec
from returnn.torch.network.extern_data import data_specs_from_config
from returnn.torch.network.network import Network
from returnn.torch.network.steps import mark_losses, score_keys
from returnn.torch.scores import LossTotals, loss_values

SPECS = {"data": DataSpec(dim=4), "classes": DataSpec(dim=3, sparse=True)}


def build(net_dict: dict[str, Any], specs: dict[str, DataSpec] | None = None) -> Network:
    torch.manual_seed(0)
    specs = specs or SPECS
    return Network(NetworkBuilder(flatten_subnetworks(net_dict), specs, default_target="classes").build(), specs)


def batch(lengths=(5, 3), dim=4, num_classes=3, seed=1) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    x = torch.randn(len(lengths), max(lengths), dim, generator=gen)
    y = torch.randint(0, num_classes, (len(lengths), max(lengths)), generator=gen)
    return {
        "data": x,
        "data:size0": torch.tensor(len(lengths)),
        "data:size1": lengths_t,
        "classes": y,
        "classes:size0": torch.tensor(len(lengths)),
        "classes:size1": lengths_t.clone(),
        "seq_tag": [f"seq-{i}" for i in range(len(lengths))],
    }


def single(data: dict[str, Any], b: int) -> dict[str, Any]:
    """Sequence ``b`` of a batch, alone and without padding."""
    n = int(data["data:size1"][b])
    return {
        "data": data["data"][b : b + 1, :n],
        "data:size1": data["data:size1"][b : b + 1],
        "classes": data["classes"][b : b + 1, :n],
        "classes:size1": data["classes:size1"][b : b + 1],
    }


# ---------------------------------------------------------------- construction


def test_only_layers_the_outputs_need_are_built_and_params_are_named_by_layer():
    net = build(
        {
            "unused": {"class": "linear", "n_out": 7},
            "hidden": {"class": "linear", "activation": "tanh", "n_out": 6},
            "output": {"class": "softmax", "loss": "ce", "from": "hidden"},
        }
    )
    assert [e.name for e in net.entries] == ["hidden", "output"]
    assert list(net.state_dict()) == ["hidden.W", "hidden.b", "output.W", "output.b"]
    assert net.state_dict()["output.W"].shape == (6, 3)  # n_out from the target


def test_linear_and_softmax_equal_plain_torch():
    net = build(
        {
            "h": {"class": "linear", "activation": "relu", "n_out": 5},
            "output": {"class": "softmax", "from": "h", "loss": "ce"},
        }
    )
    data = batch()
    out = net(data)
    sd = net.state_dict()
    hidden = torch.relu(data["data"] @ sd["h.W"] + sd["h.b"])
    torch.testing.assert_close(out["h"].tensor, hidden)
    torch.testing.assert_close(out["output"].tensor, torch.softmax(hidden @ sd["output.W"] + sd["output.b"], -1))
    assert torch.equal(out["output"].lengths, data["data:size1"])


def test_from_list_concatenates_and_data_key_selects_input():
    specs = {**SPECS, "extra": DataSpec(dim=2)}
    net = build({"output": {"class": "copy", "from": ["data", "data:extra"], "is_output_layer": True}}, specs)
    data = batch()
    data["extra"] = torch.ones(2, 5, 2)
    data["extra:size1"] = data["data:size1"]
    out = net(data)["output"]
    assert out.spec.dim == 6
    torch.testing.assert_close(out.tensor, torch.cat([data["data"], data["extra"]], -1))


def test_sparse_input_to_linear_is_an_embedding():
    specs = {"data": DataSpec(dim=10, sparse=True), "classes": DataSpec(dim=3, sparse=True)}
    net = build(
        {
            "emb": {"class": "linear", "n_out": 4, "with_bias": False},
            "output": {"class": "softmax", "from": "emb", "loss": "ce"},
        },
        specs,
    )
    data = batch()
    data["data"] = torch.tensor([[1, 2, 9, 0, 0], [3, 3, 4, 0, 0]])
    out = net(data)["emb"].tensor
    torch.testing.assert_close(out, net.state_dict()["emb.W"][data["data"]])


@pytest.mark.parametrize("unit", ["NativeLstm2", "lstm", "gru", "rnn"])
@pytest.mark.parametrize("direction", [1, -1])
def test_rec_on_a_padded_batch_equals_each_sequence_alone(unit, direction):
    net = build(
        {
            "r": {"class": "rec", "unit": unit, "n_out": 6, "direction": direction},
            "output": {"class": "softmax", "from": "r", "loss": "ce"},
        }
    )
    net.eval()
    data = batch(lengths=(7, 4, 2))
    full = net(data)["output"].tensor
    for b in range(3):
        alone = net(single(data, b))["output"].tensor[0]
        n = alone.shape[0]
        torch.testing.assert_close(full[b, :n], alone, rtol=1e-5, atol=1e-6)


def test_lstm_equals_torch_lstm_with_the_same_weights():
    net = build(
        {"r": {"class": "rec", "unit": "lstm", "n_out": 6}, "output": {"class": "softmax", "from": "r", "loss": "ce"}}
    )
    lstm = torch.nn.LSTM(4, 6, batch_first=True)
    sd = net.state_dict()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(sd["r.W"])
        lstm.weight_hh_l0.copy_(sd["r.W_re"])
        lstm.bias_ih_l0.copy_(sd["r.b"])
        lstm.bias_hh_l0.zero_()
    data = batch(lengths=(5, 5))
    torch.testing.assert_close(net(data)["r"].tensor, lstm(data["data"])[0])


def test_basic_lstm_starts_with_forget_bias_one_native_lstm_without():
    basic = build({"output": {"class": "rec", "unit": "BasicLSTM", "n_out": 3, "loss": "ce", "bias_init": 0.0}})
    native = build({"output": {"class": "rec", "unit": "NativeLstm2", "n_out": 3, "loss": "ce", "bias_init": 0.0}})
    assert basic.state_dict()["output.b"].tolist() == [0.0] * 3 + [1.0] * 3 + [0.0] * 6
    assert native.state_dict()["output.b"].abs().sum() == 0


def test_combine_and_eval_equal_torch():
    net = build(
        {
            "a": {"class": "linear", "n_out": 3, "activation": None},
            "sum": {"class": "combine", "kind": "add", "from": ["a", "data:classes_dense"]},
            "ev": {"class": "eval", "from": ["a", "sum"], "eval": "source(0) * 2 - torch.tanh(source(1))"},
            "output": {"class": "copy", "from": "ev", "is_output_layer": True},
        },
        {**SPECS, "classes_dense": DataSpec(dim=3)},
    )
    data = batch()
    data["classes_dense"] = torch.randn(2, 5, 3)
    data["classes_dense:size1"] = data["data:size1"]
    out = net(data)
    a = out["a"].tensor
    torch.testing.assert_close(out["sum"].tensor, a + data["classes_dense"])
    torch.testing.assert_close(out["output"].tensor, a * 2 - torch.tanh(a + data["classes_dense"]))


def test_subnetwork_is_flattened_with_prefixed_names_and_base_access():
    net = build(
        {
            "pre": {"class": "linear", "n_out": 5},
            "sub": {
                "class": "subnetwork",
                "from": "pre",
                "subnetwork": {
                    "h": {"class": "linear", "n_out": 4, "activation": "tanh"},
                    "output": {"class": "combine", "kind": "add", "from": ["h", "base:pre_small"]},
                },
            },
            "pre_small": {"class": "linear", "n_out": 4, "from": "data"},
            "output": {"class": "softmax", "from": "sub", "loss": "ce"},
        }
    )
    assert "sub/h.W" in net.state_dict()
    out = net(batch())
    sd = net.state_dict()
    pre = out["pre"].tensor
    expected = torch.tanh(pre @ sd["sub/h.W"] + sd["sub/h.b"]) + out["pre_small"].tensor
    torch.testing.assert_close(out["sub"].tensor, expected)


def test_reuse_params_shares_the_tensors():
    net = build(
        {
            "a": {"class": "linear", "n_out": 4},
            "b": {"class": "linear", "n_out": 4, "reuse_params": "a"},
            "output": {"class": "combine", "kind": "add", "from": ["a", "b"], "is_output_layer": True},
        }
    )
    assert net.layer("a").W is net.layer("b").W
    assert len(list(net.parameters())) == 2


def test_trainable_false_freezes_the_layer():
    net = build(
        {
            "h": {"class": "linear", "n_out": 5, "trainable": False},
            "output": {"class": "softmax", "from": "h", "loss": "ce"},
        }
    )
    assert not net.layer("h").W.requires_grad and net.layer("output").W.requires_grad


@pytest.mark.parametrize(
    "init, check",
    [
        (0.5, lambda w: torch.all(w == 0.5)),
        ("zeros", lambda w: torch.all(w == 0)),
        ("random_normal_initializer(stddev=0.01)", lambda w: 0.005 < w.std() < 0.015),
        ("orthogonal", lambda w: torch.allclose(w.T @ w, torch.eye(w.shape[1]), atol=1e-5)),
        (
            {"class": "VarianceScaling", "scale": 1.0, "mode": "fan_in", "distribution": "uniform"},
            lambda w: w.abs().max() <= math.sqrt(3 / 64),
        ),
        ("glorot_uniform", lambda w: w.abs().max() <= math.sqrt(6 / (64 + 32)) and w.std() > 0.05),
        (
            "variance_scaling_initializer(factor=1.0, mode='FAN_AVG', uniform=True)",
            lambda w: w.abs().max() <= math.sqrt(6 / 96),
        ),
    ],
)
def test_initializers(init, check):
    specs = {"data": DataSpec(dim=64), "classes": DataSpec(dim=3, sparse=True)}
    net = build(
        {"output": {"class": "linear", "n_out": 32, "forward_weights_init": init, "is_output_layer": True}}, specs
    )
    assert check(net.state_dict()["output.W"])


# ---------------------------------------------------------------- losses and scores


def run_losses(net: Network, data: dict[str, Any], *, train: bool) -> RunCtx:
    net.train(train)
    run_ctx = RunCtx(stage="train_step", device="cpu", engine=None, epoch=1, global_step=0)
    mark_losses(net, net(data), run_ctx)
    return run_ctx


def test_ce_loss_is_the_frame_sum_and_scores_are_normalized():
    net = build({"output": {"class": "softmax", "loss": "ce", "loss_opts": {"label_smoothing": 0.1}}})
    data = batch()
    run_ctx = run_losses(net, data, train=False)
    out = net(data)["output"]
    mask = out.mask()
    logits = out.pre_activation[mask]
    expected = F.cross_entropy(logits, data["classes"][mask], label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(run_ctx.losses["output"].loss, expected)
    torch.testing.assert_close(run_ctx.total_loss(), expected)  # summed, not normalized: RETURNN's objective
    errors = (logits.argmax(-1) != data["classes"][mask]).sum().float()
    totals = LossTotals()
    totals.add(run_ctx.losses, loss_values(run_ctx.losses).tolist())
    assert totals.scores("dev") == pytest.approx({"dev_score": expected.item() / 8, "dev_error": errors.item() / 8})


def test_several_losses_get_layer_score_keys_and_loss_scale():
    net = build(
        {
            "h": {"class": "linear", "n_out": 5, "activation": "tanh"},
            "aux": {"class": "softmax", "from": "h", "loss": "ce", "loss_scale": 0.3},
            "output": {"class": "softmax", "from": "h", "loss": "ce", "loss_opts": {"use_normalized_loss": True}},
        }
    )
    assert score_keys(net) == {"aux": ("score_aux", "error_aux"), "output": ("score_output", "error_output")}
    run_ctx = run_losses(net, batch(), train=False)
    aux, out = run_ctx.losses["aux"], run_ctx.losses["output"]
    torch.testing.assert_close(run_ctx.total_loss(), 0.3 * aux.loss + out.loss / out.inv_norm_factor)


def test_l2_is_added_in_training_only():
    net = build({"output": {"class": "softmax", "loss": "ce", "L2": 0.01}})
    train_ctx = run_losses(net, batch(), train=True)
    params = sum(p.pow(2).sum() for p in net.layer("output").parameters())
    torch.testing.assert_close(train_ctx.losses["constraints"].loss, 0.01 * params)
    torch.testing.assert_close(train_ctx.total_loss(), train_ctx.losses["output"].loss + 0.01 * params)
    assert "constraints" not in run_losses(net, batch(), train=False).losses


def test_l2_shrinks_weights():
    def weight_norm(l2: float) -> float:
        net = build({"output": {"class": "softmax", "loss": "ce", "L2": l2}})
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
        for step in range(20):
            optimizer.zero_grad()
            run_losses(net, batch(seed=step), train=True).total_loss().backward()
            optimizer.step()
        return net.layer("output").W.detach().norm().item()

    assert weight_norm(1.0) < 0.8 * weight_norm(0.0)


def test_ctc_loss_and_label_error():
    specs = {"data": DataSpec(dim=4), "classes": DataSpec(dim=3, sparse=True)}
    net = build({"output": {"class": "softmax", "loss": "ctc"}}, specs)
    assert net.specs()["output"].dim == 4  # target dim + blank
    data = batch(lengths=(6, 5))
    data["classes"] = torch.tensor([[0, 1, 2], [2, 2, 0]])
    data["classes:size1"] = torch.tensor([3, 2])
    run_ctx = run_losses(net, data, train=False)
    out = net(data)["output"]
    log_probs = torch.log_softmax(out.pre_activation, -1)
    expected = F.ctc_loss(
        log_probs.transpose(0, 1), data["classes"], data["data:size1"], data["classes:size1"], blank=3, reduction="sum"
    )
    torch.testing.assert_close(run_ctx.losses["output"].loss, expected)
    assert float(run_ctx.losses["output"].inv_norm_factor) == 5
    assert 0 <= float(run_ctx.losses["output:error"].loss) <= 6


@pytest.mark.parametrize("kind", ["mse", "l1", "binary_ce"])
def test_regression_losses(kind):
    specs = {"data": DataSpec(dim=4), "target": DataSpec(dim=2)}
    activation = "sigmoid" if kind == "binary_ce" else None
    net = build(
        {"output": {"class": "linear", "n_out": 2, "activation": activation, "loss": kind, "target": "target"}}, specs
    )
    data = batch()
    data["target"] = torch.rand(2, 5, 2)
    data["target:size1"] = data["data:size1"]
    run_ctx = run_losses(net, data, train=False)
    out = net(data)["output"]
    mask = out.mask()
    y, t = out.tensor[mask], data["target"][mask]
    expected = {
        "mse": lambda: ((y - t) ** 2).sum(),
        "l1": lambda: (y - t).abs().sum(),
        "binary_ce": lambda: F.binary_cross_entropy(y, t, reduction="sum"),
    }[kind]()
    torch.testing.assert_close(run_ctx.losses["output"].loss, expected, rtol=1e-5, atol=1e-5)
    assert "output:error" not in run_ctx.losses


# ---------------------------------------------------------------- data dims


def test_extern_data_and_num_outputs_forms():
    config = Config(
        {"extern_data": {"data": {"dim": 9}, "classes": {"dim": 2, "sparse": True}, "w": {"shape": (None, 3, 5)}}}
    )
    specs = data_specs_from_config(config)
    assert specs["data"] == DataSpec(dim=9) and specs["classes"] == DataSpec(dim=2, sparse=True)
    assert specs["w"] == DataSpec(dim=5, spatial=(3,))
    assert data_specs_from_config(Config({"num_inputs": 9, "num_outputs": 2})) == {
        "data": DataSpec(dim=9),
        "classes": DataSpec(dim=2, sparse=True),
    }
    legacy = data_specs_from_config(Config({"num_outputs": {"data": [40, 2], "classes": [61, 1]}}))
    assert legacy == {"data": DataSpec(dim=40), "classes": DataSpec(dim=61, sparse=True)}
    assert data_specs_from_config(Config({})) is None


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "net_dict, match",
    [
        (
            {"output": {"class": "softmaxx", "loss": "ce"}},
            r"layer class 'softmaxx' is not supported yet \(did you mean 'softmax'\?\)",
        ),
        ({"output": {"class": "softmax", "loss": "ce", "n_outt": 3}}, r"unknown option 'n_outt'.*did you mean 'n_out'"),
        (
            {"output": {"class": "softmax", "loss": "ce", "from": "hiden"}, "hidden": {"class": "copy"}},
            r"refers to 'hiden'.*did you mean 'hidden'",
        ),
        ({"output": {"class": "softmax", "loss": "ce", "from": "data:feats"}}, r"data key 'feats'"),
        (
            {
                "a": {"class": "copy", "from": "b"},
                "b": {"class": "copy", "from": "a"},
                "output": {"class": "softmax", "from": "a", "loss": "ce"},
            },
            r"cycle: a -> b -> a",
        ),
        ({"output": {"class": "softmax", "loss": "ce", "target": "nope"}}, r"target 'nope' is not a data key"),
        ({"output": {"class": "linear", "is_output_layer": True}}, r"needs 'n_out'"),
        ({"output": {"class": "softmax", "loss": "ce", "n_out": 5}}, r"needs 3 output classes.*set n_out = 3"),
        (
            {
                "a": {"class": "linear", "n_out": 2},
                "output": {"class": "combine", "kind": "add", "from": ["a", "data"], "is_output_layer": True},
            },
            r"feature dims of the sources differ",
        ),
        ({"output": {"class": "eval", "eval": "tf.nn.relu(source(0))", "is_output_layer": True}}, r"TensorFlow code"),
        ({"output": {"class": "rec", "unit": {"x": {"class": "copy"}}, "loss": "ce"}}, r"its unit needs an 'output'"),
        (
            {"output": {"class": "softmax", "loss": "ce", "forward_weights_init": "bogus"}},
            r"unknown initializer 'bogus'",
        ),
        ({"output": {"class": "softmax", "loss": "mce"}}, r"loss 'mce' is not supported"),
        ({"h": {"class": "linear", "n_out": 3}}, r"no output layer"),
    ],
)
def test_bad_network_dicts_are_config_errors(net_dict, match):
    with pytest.raises(ConfigError, match=match):
        build(net_dict)


def test_tf_only_options_are_accepted(caplog):
    caplog.set_level("INFO")
    build({"output": {"class": "softmax", "loss": "ce", "param_device": "cpu"}})
    assert any("param_device" in record.message and "no effect" in record.message for record in caplog.records)


def test_copy_activation_dropout_constant_length_reinterpret_and_source_layers():
    specs = {**SPECS, "extra": DataSpec(dim=3, sparse=True)}
    net = build(
        {
            "act": {"class": "activation", "activation": "relu+exp"},
            "drop": {"class": "dropout", "from": "act", "dropout": 0.5},
            "copy": {"class": "copy", "from": ["act", "drop"]},
            "const": {"class": "constant", "value": 2.5, "from": []},
            "scaled": {"class": "combine", "kind": "mul", "from": ["copy", "const"]},
            "len": {"class": "length", "from": "data"},
            "src": {"class": "source", "data_key": "extra"},
            "wider": {"class": "reinterpret_data", "from": "src", "increase_sparse_dim": 2},
            "output": {"class": "copy", "from": "scaled", "is_output_layer": True},
            "lengths_out": {"class": "copy", "from": "len", "is_output_layer": True},
            "wider_out": {"class": "copy", "from": "wider", "is_output_layer": True},
        },
        specs,
    )
    data = batch()
    data["extra"] = torch.tensor([[0, 2, 1, 0, 0], [1, 1, 2, 0, 0]])
    data["extra:size1"] = data["data:size1"]
    net.eval()  # no dropout
    out = net(data)
    act = torch.exp(torch.relu(data["data"]))
    torch.testing.assert_close(out["output"].tensor, torch.cat([act, act], -1) * 2.5)
    assert torch.equal(out["lengths_out"].tensor, data["data:size1"])
    assert out["wider_out"].spec == DataSpec(dim=5, sparse=True) and torch.equal(out["wider_out"].tensor, data["extra"])
    net.train()
    dropped = net(data)["drop"].tensor
    kept = dropped != 0
    assert 0 < kept.float().mean() < 1  # about half the values are dropped, the others scaled by 2
    torch.testing.assert_close(dropped[kept], 2 * act[kept])


def test_dropout_noise_shape_shares_the_mask_over_time():
    net = build({"output": {"class": "copy", "dropout": 0.5, "dropout_noise_shape": {"T": 1}, "is_output_layer": True}})
    net.train()
    data = batch(lengths=(5, 5))
    data["data"] = torch.ones(2, 5, 4)
    dropped = net(data)["output"].tensor
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))  # the same features dropped in every frame
