"""Pretraining of network dicts: RETURNN's stages, the growth at the epoch start, resume, bad input."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from returnn.config import Config
from returnn.errors import ConfigError
from returnn.torch.engine import Engine
from returnn.torch.model_loading import StartPoint
from returnn.torch.network.growth import copy_params, train_start_model_epoch
from returnn.torch.network.pretrain import Pretrain, WrapEpochValue, pretrain_from_config
from tests.torch.network.helpers import build

REPO = Path(__file__).resolve().parents[3]

CHAIN = {
    "l0": {"class": "linear", "activation": "tanh", "n_out": 6},
    "l1": {"class": "linear", "activation": "tanh", "n_out": 6, "from": ["l0"]},
    "l2": {"class": "linear", "activation": "tanh", "n_out": 6, "from": ["l1"]},
    "output": {"class": "softmax", "loss": "ce", "from": ["l2"]},
}


L0, L1, L2 = CHAIN["l0"], CHAIN["l1"], CHAIN["l2"]
SOFTMAX = {"class": "softmax", "loss": "ce"}

# What RETURNN's returnn/pretrain.py gives for CHAIN (printed from it; the same for both algorithms on a chain).
CHAIN_STAGES = [
    {"l0": L0, "output": {**SOFTMAX, "from": ["l0"]}},
    {"l0": L0, "l1": L1, "output": {**SOFTMAX, "from": ["l1"]}},
    {"l0": L0, "l1": L1, "l2": L2, "output": {**SOFTMAX, "from": ["l2"]}},
]

# A non-trainable layer at the input and a second output; RETURNN's 'from_input' stages of it.
WINDOW = {
    "win": {"class": "window", "window_size": 3, "trainable": False},
    "l0": {"class": "linear", "n_out": 8, "from": ["win"]},
    "l1": {"class": "linear", "n_out": 8, "from": ["l0"]},
    "l2": {"class": "linear", "n_out": 8, "from": ["l1"]},
    "output": {"class": "softmax", "loss": "ce", "from": ["l2"]},
    "ctc": {"class": "softmax", "loss": "ctc", "from": ["l1"], "target": "classes"},
}
WINDOW_FROM_INPUT = [
    {
        "win": WINDOW["win"],
        "l0": WINDOW["l0"],
        "output": {"class": "softmax", "loss": "ce", "from": ["l0"]},
        "ctc": {"class": "softmax", "loss": "ctc", "from": ["l0"], "target": "classes"},
    },
    {
        "win": WINDOW["win"],
        "l0": WINDOW["l0"],
        "l1": WINDOW["l1"],
        "output": {"class": "softmax", "loss": "ce", "from": ["l1"]},
        "ctc": WINDOW["ctc"],
    },
    WINDOW,
]


def _layer_names(stages: list[dict[str, Any]]) -> list[list[str]]:
    return [sorted(stage) for stage in stages]


@pytest.mark.parametrize(
    "net, algo, expected",
    [
        (CHAIN, "from_output", CHAIN_STAGES),
        (CHAIN, "from_input", CHAIN_STAGES),
        (CHAIN, "no_network_modifications", [CHAIN]),
        (WINDOW, "from_input", WINDOW_FROM_INPUT),
    ],
)
def test_the_stages_of_each_construction_algo_are_returnns(net, algo, expected):
    original = copy.deepcopy(net)
    pretrain = Pretrain(net, construction_algo=algo)
    assert pretrain.stages == expected
    assert pretrain.num_epochs == len(expected)
    assert net == original  # the config's dict is left as it is
    assert pretrain.network_for_epoch(len(expected) + 5) == net  # after the pretrain phase: the whole network


@pytest.mark.parametrize(
    "repetitions, counts",
    [
        (None, [1, 1, 1]),
        (2, [2, 2, 2]),
        ([1, 2], [1, 2, 2]),
        ({"default": 1, "final": 3}, [1, 1, 3]),
        ({0: 2, "default": 1}, [2, 1, 1]),
        ({"default": 2, 1: 0}, [2, 0, 2]),
    ],
)
def test_repetitions_repeat_stages_as_returnn_does(repetitions, counts):
    pretrain = Pretrain(CHAIN, repetitions=repetitions)
    assert pretrain.repetitions == counts
    expected = [stage for stage, count in zip(CHAIN_STAGES, counts) for _ in range(count)]
    assert pretrain.stages == expected


def _grow_one_layer_per_idx(idx: int, net_dict: dict[str, Any]) -> dict[str, Any] | None:
    """A construction_algo function: stage idx keeps l0..l<idx>; None after two stages."""
    if idx == 2:
        return None
    for i in range(idx + 1, 3):
        del net_dict[f"l{i}"]
    net_dict["output"]["from"] = [f"l{idx}"]
    if idx == 0:
        net_dict["#repetition"] = 2
    return net_dict


def test_a_construction_function_gives_the_stages_until_it_returns_none_and_wrap_epoch_value_resolves():
    from returnn.pretrain import WrapEpochValue as ConfigsWrapEpochValue  # RETURNN's import path

    assert ConfigsWrapEpochValue is WrapEpochValue
    net = {**CHAIN, "l0": {**CHAIN["l0"], "dropout": WrapEpochValue(lambda epoch: 0.1 * epoch)}}
    pretrain = Pretrain(net, construction_algo=_grow_one_layer_per_idx)
    assert _layer_names(pretrain.stages) == [
        ["l0", "output"],
        ["l0", "output"],
        ["l0", "l1", "output"],
        ["l0", "l1", "l2", "output"],
    ]
    assert [stage["l0"]["dropout"] for stage in pretrain.stages] == [0.1, 0.2, 0.1 * 3, 0.4]
    assert pretrain.repetitions == [2, 1, 1]
    assert isinstance(net["l0"]["dropout"], WrapEpochValue)


def test_the_old_config_keys_and_default():
    config = Config(
        {
            "network": CHAIN,
            "pretrain": "default",
            "pretrain_construction_algo": "from_input",
            "pretrain_repetitions": "1,2",
        }
    )
    pretrain = pretrain_from_config(config)
    assert pretrain is pretrain_from_config(config)  # one per config: get_model and the engine share it
    assert (pretrain.construction_algo, pretrain.repetitions) == ("from_input", [1, 2, 2])
    assert pretrain_from_config(Config({"network": CHAIN})) is None
    assert pretrain_from_config(Config({"network": CHAIN, "pretrain": False})) is None


def test_a_training_start_builds_the_network_of_the_checkpoints_epoch():
    config = Config({"network": CHAIN, "pretrain": "default"})
    assert train_start_model_epoch(config, StartPoint(epoch=1, step=0, kind="fresh")) == 1
    assert train_start_model_epoch(config, StartPoint(epoch=3, step=9, kind="resume")) == 2  # inside the phase
    assert train_start_model_epoch(config, StartPoint(epoch=6, step=9, kind="resume")) == 5  # after: the whole net
    pretrain = pretrain_from_config(config)
    assert pretrain.network_for_epoch(5) == CHAIN
    without = Config({"network": CHAIN})
    assert train_start_model_epoch(without, StartPoint(epoch=3, step=9, kind="resume")) == 3


@pytest.mark.parametrize(
    "mode, copied",
    [
        (None, {"l0.W", "l0.b", "output.W", "output.b"}),
        ("ifpossible", {"l0.W", "l0.b", "output.W", "output.b"}),
        ("subset", {"l0.W", "l0.b", "output.W", "output.b"}),
        ("reset", set()),
    ],
)
def test_copy_param_modes(mode, copied):
    torch.manual_seed(0)
    old = build(
        {
            "l0": {"class": "linear", "n_out": 5},
            "l1": {"class": "linear", "n_out": 4, "from": ["l0"]},
            "output": {"class": "softmax", "loss": "ce", "from": ["l1"]},
        }
    )
    new = build(
        {
            "l0": {"class": "linear", "n_out": 5},
            "l1": {"class": "linear", "n_out": 6, "from": ["l0"]},  # resized
            "l2": {"class": "linear", "n_out": 4, "from": ["l1"]},  # new
            "output": {"class": "softmax", "loss": "ce", "from": ["l2"]},
        }
    )
    fresh = {name: value.clone() for name, value in new.state_dict().items()}
    old_state = old.state_dict()
    assert copy_params(old_state, new, mode=mode) == copied
    state = new.state_dict()
    for name in fresh:
        expected = old_state[name] if name in copied else fresh[name]
        if mode == "subset" and name in ("l1.W", "l1.b"):  # resized: the old part copied, the rest fresh
            expected = fresh[name].clone()
            expected[tuple(slice(0, n) for n in old_state[name].shape)] = old_state[name]
        assert torch.equal(state[name], expected), name
    assert copy_params(old_state, new, skip_layers={"output"}) == {"l0.W", "l0.b"}


# ---------------------------------------------------------------- in the engine

EXTERN_DATA = {"data": {"dim": 5}, "classes": {"dim": 3, "sparse": True}}
DUMMY_TRAIN = {"class": "DummyDataset", "input_dim": 5, "output_dim": 3, "num_seqs": 12, "seq_len": 6}


class RecordingEngine(Engine):
    """Records the parameters and Adam state around each epoch start."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.records: dict[int, dict[str, Any]] = {}

    def _snapshot(self) -> dict[str, Any]:
        params = dict(self.model.named_parameters())
        state = self.updater.optimizer.state
        return {
            "model": self.model,
            "params": {name: param.detach().clone() for name, param in params.items()},
            "adam": {
                name: {key: value.clone() for key, value in state[param].items()}
                for name, param in params.items()
                if param in state
            },
        }

    def on_epoch_start(self, epoch: int) -> None:
        before = self._snapshot()
        super().on_epoch_start(epoch)
        self.records[epoch] = {"before": before, "after": self._snapshot(), "step": self.global_step}


def _engine_config(tmp_path: Path, **overrides: Any) -> Config:
    items = {
        "network": CHAIN,
        "extern_data": EXTERN_DATA,
        "pretrain": "default",
        "train": DUMMY_TRAIN,
        "model": str(tmp_path / "out" / "model"),
        "learning_rate_file": str(tmp_path / "out" / "learning_rates"),
        "optimizer": {"class": "adam"},
        "learning_rate": 0.01,
        "batch_size": 20,
        "num_epochs": 4,
        "device": "cpu",
        "num_workers_per_gpu": 0,
    }
    return Config({**items, **overrides})


def test_the_network_grows_a_layer_per_epoch_keeping_params_and_optimizer_state(tmp_path):
    engine = RecordingEngine(_engine_config(tmp_path))
    engine.train()
    records = engine.records
    layers = {epoch: sorted({name.split(".")[0] for name in r["after"]["params"]}) for epoch, r in records.items()}
    assert layers == {1: ["l0", "output"], 2: ["l0", "l1", "output"], 3: ["l0", "l1", "l2", "output"]} | {
        4: ["l0", "l1", "l2", "output"]
    }
    for epoch, new_layer in ((2, "l1"), (3, "l2")):
        before, after = records[epoch]["before"], records[epoch]["after"]
        assert after["model"] is not before["model"]
        assert set(before["params"]) < set(after["params"])
        for name, value in before["params"].items():  # kept: the values and the Adam state, bit for bit
            assert torch.equal(after["params"][name], value), name
            assert after["adam"][name].keys() == {"step", "exp_avg", "exp_avg_sq"}
            assert all(torch.equal(after["adam"][name][k], v) for k, v in before["adam"][name].items()), name
        # new: initialized as a fresh build of the epoch's network (seeded from epoch and step), no Adam state
        fresh = Engine(_engine_config(tmp_path)).build_model(epoch=epoch, step=records[epoch]["step"])
        for name in (f"{new_layer}.W", f"{new_layer}.b"):
            assert torch.equal(after["params"][name], fresh.state_dict()[name])
            assert name not in after["adam"]
        assert not torch.equal(after["params"]["l0.W"], fresh.state_dict()["l0.W"])
    assert records[4]["after"]["model"] is records[4]["before"]["model"]  # after the phase: no rebuild
    saved = torch.load(tmp_path / "out" / "model.002.pt", weights_only=True)["model"]
    assert sorted(saved) == ["l0.W", "l0.b", "l1.W", "l1.b", "output.W", "output.b"]

    # restarted after the pretrain phase: the whole network, loaded from the checkpoint, not rebuilt
    restarted = RecordingEngine(_engine_config(tmp_path, num_epochs=5))
    restarted.train()
    saved = torch.load(tmp_path / "out" / "model.004.pt", weights_only=True)["model"]
    record = restarted.records[5]
    assert list(restarted.records) == [5] and record["after"]["model"] is record["before"]["model"]
    assert record["before"]["params"].keys() == saved.keys()
    assert all(torch.equal(value, saved[name]) for name, value in record["before"]["params"].items())


def test_copy_output_layer_false_keeps_the_output_fresh_and_a_function_algo_trains(tmp_path):
    pretrain = {"construction_algo": _grow_one_layer_per_idx, "copy_output_layer": False}
    engine = RecordingEngine(_engine_config(tmp_path, pretrain=pretrain, num_epochs=3))
    engine.train()
    assert [len(engine.records[epoch]["after"]["params"]) for epoch in (1, 2, 3)] == [4, 4, 6]
    after = engine.records[3]["after"]
    fresh = Engine(_engine_config(tmp_path, pretrain=pretrain)).build_model(epoch=3, step=engine.records[3]["step"])
    assert torch.equal(after["params"]["output.W"], fresh.state_dict()["output.W"])
    assert torch.equal(after["params"]["l0.W"], engine.records[3]["before"]["params"]["l0.W"])
    assert "output.W" not in after["adam"] and "l0.W" in after["adam"]


def test_a_layer_resized_by_wrap_epoch_value_keeps_its_old_part_with_subset(tmp_path):
    network = {
        "l0": {"class": "linear", "activation": "tanh", "n_out": WrapEpochValue(lambda epoch: 4 + 2 * epoch)},
        "output": {"class": "softmax", "loss": "ce", "from": ["l0"]},
    }
    pretrain = {"construction_algo": "no_network_modifications", "repetitions": 2, "copy_param_mode": "subset"}
    engine = RecordingEngine(_engine_config(tmp_path, network=network, pretrain=pretrain, num_epochs=3))
    engine.train()
    before, after = engine.records[2]["before"], engine.records[2]["after"]
    assert (before["params"]["l0.W"].shape, after["params"]["l0.W"].shape) == ((5, 6), (5, 8))
    assert torch.equal(after["params"]["l0.W"][:, :6], before["params"]["l0.W"])
    assert torch.equal(after["params"]["output.W"][:6], before["params"]["output.W"])
    assert torch.equal(after["params"]["output.b"], before["params"]["output.b"])
    assert set(after["adam"]) == {"output.b"}  # only what was copied whole keeps its optimizer state
    assert engine.records[3]["after"]["model"] is engine.records[3]["before"]["model"]  # the last stage stays


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"pretrain": "fancy"}, "expected 'default', True or a dict"),
        ({"pretrain": {"construction_algo": "from_middle"}}, "unknown 'from_middle'; choose one of: 'from_output'"),
        ({"pretrain": {"repetitions": "two"}}, "'repetitions': expected an int >= 0"),
        ({"pretrain": {"repetitions": 1.5}}, "'repetitions': expected an int >= 0"),
        ({"pretrain": {"repetitions": [1, 1, 1, 1]}}, "4 counts for 3 stages"),
        ({"pretrain": {"repetitions": {"last": 2}}}, "key 'last' is no stage"),
        ({"pretrain": {"repetitions": [0]}}, "leaves no pretrain epoch"),
        ({"pretrain": {"copy_param_mode": "all"}}, "unknown mode 'all'"),
        ({"pretrain": {"copy_output_layer": "maybe"}}, "'copy_output_layer': expected True, False"),
        ({"pretrain": True, "pretrain_greedy": True}, "greedy pretraining .* is not supported"),
        ({"pretrain": {"construction": "from_input"}}, "unknown option\\(s\\) 'construction'"),
        ({"pretrain": {"construction_algo": lambda idx, net_dict: [idx]}}, "the function returned list for idx 0"),
        ({"pretrain": {"output_layers": ["out"]}}, "no output layer 'out'"),
        ({"pretrain": {"construction_algo": lambda idx, net_dict: {"#config": {}} if idx == 0 else None}}, "'#config'"),
        (
            {"pretrain": {"construction_algo": lambda idx, net_dict: {"#copy_param_mode": "x"} if idx == 0 else None}},
            "has '#copy_param_mode': 'x'",
        ),
        ({"pretrain": "default", "network": None}, "needs network = {...}"),
    ],
)
def test_bad_pretrain_settings_are_one_line_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message) as info:
        pretrain_from_config(Config({"network": CHAIN, **settings}))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- rnn.py

CONFIG = f"""#!rnn.py
train = {{"class": "Task12AXDataset", "num_seqs": 12}}
dev = {{"class": "Task12AXDataset", "num_seqs": 4, "fixed_random_seed": 1}}
num_inputs = 9
num_outputs = 2
batch_size = 1000
max_seqs = 6
optimizer = {{"class": "adam"}}
learning_rate = 0.01
pretrain_learning_rate = 0.005
model = "out/model"
learning_rate_file = "out/learning_rates"
num_epochs = 4
pretrain = {{"construction_algo": "from_output"}}
network = {CHAIN!r}
network["l1"]["dropout"] = 0.1
"""


def _rnn(cwd: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    cwd.mkdir(exist_ok=True)
    (cwd / "exp.config").write_text(CONFIG, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "rnn.py"), "exp.config", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == expect, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_rnn_py_pretrain_resumed_inside_the_phase_equals_an_uninterrupted_run(tmp_path):
    from returnn.learning_rate_file import load_learning_rate_file

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    proc = _rnn(straight)
    log = proc.stdout + proc.stderr
    assert "pretrain epoch=2 of=3 layers=l0,l1,output new_layers=l1 copied_params=4 fresh_params=l1.W,l1.b" in log
    assert "pretrain done: epoch=4 trains the whole network" in log
    _rnn(resumed, "++num_epochs", "2")
    proc = _rnn(resumed)  # continues after epoch 2: the network of epoch 2, grown at the start of epoch 3
    assert "pretrain epoch=3 of=3 layers=l0,l1,l2,output new_layers=l2" in proc.stdout + proc.stderr
    keys = {
        epoch: sorted(torch.load(straight / f"out/model.00{epoch}.pt", weights_only=True)["model"])
        for epoch in range(1, 5)
    }
    assert [len(keys[epoch]) for epoch in range(1, 5)] == [4, 6, 8, 8]
    a = torch.load(straight / "out/model.004.pt", weights_only=True)["model"]
    b = torch.load(resumed / "out/model.004.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    epochs = load_learning_rate_file(str(straight / "out/learning_rates"))
    # RETURNN's rates: pretrain_learning_rate fixed in the pretrain epochs, learning_rate right after
    assert [epochs[epoch].learning_rate for epoch in range(1, 5)] == [0.005, 0.005, 0.005, 0.01]
    assert all(set(data.error) == {"train_score", "train_error", "dev_score", "dev_error"} for data in epochs.values())
    assert epochs == load_learning_rate_file(str(resumed / "out/learning_rates"))


@pytest.mark.slow
def test_rnn_py_bad_pretrain_exits_2_with_one_line(tmp_path):
    proc = _rnn(tmp_path, "++pretrain", "{'construction_algo': 'from_middle'}", expect=2)
    assert "unknown 'from_middle'" in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "out").exists()
