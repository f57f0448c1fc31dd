"""Recurrent units: teacher-forced training against a hand-written loop, the loop analysis, beam search, bad input."""

from __future__ import annotations

import ast
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from returnn.config import Config
from returnn.errors import ConfigError
from returnn.torch.context import RunCtx
from returnn.torch.network.construction import NetworkBuilder, flatten_subnetworks
from returnn.torch.network.data import DataSpec
from returnn.torch.network.network import Network
from returnn.torch.network.search import beam_search
from returnn.torch.network.search_task import SearchOptions, search_hypotheses, write_search_output
from returnn.torch.network.steps import mark_losses, score_keys

SPECS = {"data": DataSpec(dim=5, sparse=True), "classes": DataSpec(dim=4, sparse=True)}


def decoder(*, with_end: bool = False, beam_size: int = 3) -> dict[str, Any]:
    """A decoder whose state ``acc`` sums the LSTM outputs: ``s`` and ``acc`` form a loop through ``prev:acc``."""
    unit = {
        "emb": {"class": "linear", "from": "prev:output", "n_out": 3, "with_bias": False},
        "s": {"class": "rnn_cell", "unit": "lstm", "from": ["emb", "prev:acc", "base:enc_last"], "n_out": 5},
        "acc": {"class": "combine", "kind": "add", "from": ["prev:acc", "s"]},
        "prob": {"class": "softmax", "from": ["s", "acc"], "loss": "ce", "target": "classes"},
        "output": {"class": "choice", "from": "prob", "target": "classes", "beam_size": beam_size},
    }
    if with_end:
        unit["end"] = {"class": "compare", "from": "output", "value": 3}
    return {
        "enc": {"class": "linear", "n_out": 6, "activation": "tanh"},
        "enc_last": {"class": "reduce", "mode": "mean", "axes": "T", "from": "enc"},
        "output": {"class": "rec", "from": [], "unit": unit, "max_seq_len": 6},
    }


def build(net_dict: dict[str, Any], specs: dict[str, DataSpec] | None = None) -> Network:
    torch.manual_seed(0)
    specs = specs or SPECS
    return Network(NetworkBuilder(flatten_subnetworks(net_dict), specs, default_target="classes").build(), specs)


def batch(seed: int = 1, lengths=(5, 3), target_lengths=(4, 2)) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "data": torch.randint(0, 5, (len(lengths), max(lengths)), generator=gen),
        "data:size1": torch.tensor(lengths),
        "classes": torch.randint(0, 3, (len(lengths), max(target_lengths)), generator=gen),
        "classes:size1": torch.tensor(target_lengths),
        "seq_tag": [f"seq-{i}" for i in range(len(lengths))],
        "seq_idx": list(range(len(lengths))),
    }


def explicit_decoder(net: Network, data: dict[str, Any], labels: torch.Tensor) -> torch.Tensor:
    """The decoder's logits ``[B, T, 4]`` written as a plain torch loop over ``labels`` (teacher forcing)."""
    sd = net.state_dict()
    mask = torch.arange(data["data"].shape[1])[None, :] < data["data:size1"][:, None]
    enc = torch.tanh(F.embedding(data["data"], sd["enc.W"]) + sd["enc.b"])
    enc_last = (enc * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    batch_size, steps = labels.shape
    previous = torch.cat([torch.zeros(batch_size, 1, dtype=torch.int64), labels[:, :-1]], dim=1)
    emb = F.embedding(previous, sd["output.emb.W"])
    h = c = torch.zeros(batch_size, 5)
    acc = torch.zeros(batch_size, 5)
    logits = []
    for t in range(steps):
        x = torch.cat([emb[:, t], acc, enc_last], dim=-1)
        h, c = torch.lstm_cell(x, (h, c), sd["output.s.W"], sd["output.s.W_re"], sd["output.s.b"], torch.zeros(20))
        acc = acc + h
        logits.append(torch.cat([h, acc], -1) @ sd["output.prob.W"] + sd["output.prob.b"])
    return torch.stack(logits, dim=1)


def test_the_loop_analysis_moves_out_what_does_not_recur():
    net = build(decoder())
    assert net.layer("output").phases == {"emb": "pre", "s": "loop", "acc": "loop", "prob": "post", "output": "pre"}


def test_teacher_forced_training_equals_a_hand_written_loop():
    net = build(decoder())
    data = batch()
    outputs = net(data)
    expected = explicit_decoder(net, data, data["classes"])
    torch.testing.assert_close(outputs["output/prob"].pre_activation, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(outputs["output"].tensor, data["classes"])  # the choice gives the target
    run_ctx = RunCtx(stage="train_step", device="cpu", engine=None, epoch=1, global_step=0)
    mark_losses(net, outputs, run_ctx)
    mask = torch.arange(4)[None, :] < data["classes:size1"][:, None]
    ce = F.cross_entropy(expected[mask], data["classes"][mask], reduction="sum")
    torch.testing.assert_close(run_ctx.losses["output/prob"].loss, ce, rtol=1e-5, atol=1e-5)
    assert score_keys(net) == {"output/prob": ("score", "error")}
    run_ctx.total_loss().backward()
    assert net.state_dict(keep_vars=True)["output.s.W"].grad.abs().sum() > 0


def test_a_cell_that_does_not_recur_runs_over_the_whole_sequence_with_the_same_result():
    unit = {
        "emb": {"class": "linear", "from": "prev:output", "n_out": 3},
        "s": {"class": "rec", "unit": "lstm", "from": "emb", "n_out": 5},  # a cell inside a unit: one step each
        "prob": {"class": "softmax", "from": "s", "loss": "ce"},
        "output": {"class": "choice", "from": "prob", "target": "classes"},
    }
    net = build({"output": {"class": "rec", "from": [], "unit": unit}})
    assert net.layer("output").phases == {"emb": "pre", "s": "pre", "prob": "pre", "output": "pre"}
    data = batch()
    sd = net.state_dict()
    previous = torch.cat([torch.zeros(2, 1, dtype=torch.int64), data["classes"][:, :-1]], 1)
    emb = F.embedding(previous, sd["output.emb.W"]) + sd["output.emb.b"]
    h = c = torch.zeros(2, 5)
    states = []
    for t in range(4):
        h, c = torch.lstm_cell(emb[:, t], (h, c), sd["output.s.W"], sd["output.s.W_re"], sd["output.s.b"])
        states.append(h)
    torch.testing.assert_close(net(data)["output/s"].tensor, torch.stack(states, 1), rtol=1e-5, atol=1e-6)


def test_several_losses_are_scored_per_layer_with_the_unit_path():
    net_dict = decoder()
    net_dict["aux"] = {"class": "softmax", "from": "enc", "loss": "ce", "target": "data_classes"}
    specs = {**SPECS, "data_classes": DataSpec(dim=4, sparse=True)}
    net = build(net_dict, specs)
    assert score_keys(net) == {
        "aux": ("score_aux", "error_aux"),
        "output/prob": ("score_output/prob", "error_output/prob"),
    }


# ---------------------------------------------------------------- search


def greedy(net: Network, data: dict[str, Any], steps: int) -> torch.Tensor:
    """Greedy decoding with the network's weights, by hand: the label of each step is the argmax."""
    labels = torch.zeros(2, 0, dtype=torch.int64)
    for _ in range(steps):
        candidate = torch.cat([labels, torch.zeros(2, 1, dtype=torch.int64)], 1)
        logits = explicit_decoder(net, data, candidate)
        labels = torch.cat([labels, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return labels


def test_beam_search_with_beam_1_is_greedy_decoding():
    net = build(decoder(beam_size=1))
    net.eval()
    data = batch()
    out = net.search(data)["output"]
    assert out.tensor.shape == (2, 6) and out.lengths.tolist() == [6, 6]  # no end layer: max_seq_len steps
    assert torch.equal(out.tensor, greedy(net, data, 6))


def test_beam_search_finds_a_better_hypothesis_than_greedy():
    # label 0 first is likelier (0.6), but after it three labels share the rest; after label 1 the end (2) is sure
    def step(previous: torch.Tensor, state: torch.Tensor):
        table = torch.log(
            torch.tensor(
                [
                    [0.6, 0.4, 1e-9, 1e-9],  # the first step (state 0)
                    [0.34, 0.33, 0.33, 1e-9],  # after label 0
                    [1e-9, 1e-9, 1.0, 1e-9],  # after label 1
                ]
            )
        )
        row = torch.where(state == 0, 0, previous + 1).clamp(max=2)
        return table[row], state + 1

    kwargs = dict(batch=1, max_len=2, end_label=2, length_normalization=False)
    greedy_result = beam_search(step, torch.zeros(1, dtype=torch.int64), beam_size=1, **kwargs)
    beam_result = beam_search(step, torch.zeros(1, dtype=torch.int64), beam_size=3, **kwargs)
    assert greedy_result.tokens[0, 0].tolist() == [0, 0]
    assert beam_result.tokens[0, 0].tolist() == [1, 2] and beam_result.lengths[0, 0] == 2
    assert beam_result.scores[0, 0] > greedy_result.scores[0, 0]
    assert beam_result.scores[0, 0] == pytest.approx(torch.log(torch.tensor(0.4)).item(), abs=1e-6)


def test_search_with_an_end_layer_stops_and_leaves_out_the_end_label(tmp_path):
    net = build(decoder(with_end=True, beam_size=4))
    net.eval()
    with torch.no_grad():  # make label 3 (the end) the most likely after one step
        net.layer("output").layer("prob").b[3] = 50.0
    data = batch()
    out = net.search(data)["output"]
    assert out.lengths.tolist() == [0, 0]  # ended at once; the end label itself is not part of the output
    hyps = search_hypotheses(net, [data], "output", "classes").hyps
    assert set(hyps) == {"seq-0", "seq-1"} and len(hyps["seq-0"]) == 4
    options = SearchOptions(Config({"search_output_file": str(tmp_path / "out.py"), "search_output_file_format": "py"}))
    write_search_output(options, hyps, ["a", "b", "c", "</s>"])
    written = ast.literal_eval((tmp_path / "out.py").read_text())
    score, text = written["seq-0"][0]
    assert isinstance(score, float) and text == ""


def test_search_output_py_and_txt_read_back(tmp_path):
    hyps = {"seq-0": [1, 0, 2], "seq-1": []}
    py = SearchOptions(Config({"search_output_file": str(tmp_path / "a.py"), "search_output_file_format": "py"}))
    write_search_output(py, hyps, ["x", "y", "z"])
    assert ast.literal_eval((tmp_path / "a.py").read_text()) == {"seq-0": "y x z", "seq-1": ""}
    txt = SearchOptions(Config({"search_output_file": str(tmp_path / "a.txt"), "search_output_file_format": "txt"}))
    write_search_output(txt, hyps, None)
    assert (tmp_path / "a.txt").read_text().splitlines() == ["seq-0\t1 0 2", "seq-1\t"]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "unit, match",
    [
        ({"output": {"class": "copy", "from": "prev:nope"}}, r"'prev:nope' names no layer of the unit"),
        ({"output": {"class": "copy", "from": "base:nope"}}, r"'nope', which is neither a layer"),
        ({"output": {"class": "choice", "from": "data:source", "target": "nope"}}, r"data key 'nope'"),
        ({"x": {"class": "copy"}}, r"its unit needs an 'output' layer"),
        (
            {
                "output": {
                    "class": "linear",
                    "from": ["data:source", "prev:output"],
                    "n_out": 3,
                    "initial_output": "f(0)",
                }
            },
            r"initial_output must be a number, 'zeros' or 'ones', got 'f\(0\)'",
        ),
        (
            {
                "a": {"class": "copy", "from": "b"},
                "b": {"class": "copy", "from": "a"},
                "output": {"class": "copy", "from": "a"},
            },
            r"cycle",
        ),
    ],
)
def test_bad_units_are_config_errors(unit, match):
    specs = {"data": DataSpec(dim=3), "classes": DataSpec(dim=4, sparse=True)}
    with pytest.raises(ConfigError, match=match):
        build({"output": {"class": "rec", "from": "data", "unit": unit}}, specs)


def test_search_without_a_way_to_end_is_a_config_error():
    net_dict = decoder()
    del net_dict["output"]["max_seq_len"]
    net = build({**net_dict, "enc_last": {"class": "reduce", "mode": "mean", "axes": "T", "from": "enc"}})
    with pytest.raises(
        ConfigError, match="no way to end: give its unit an 'end' layer or the rec layer a 'max_seq_len'"
    ):
        net.search(batch())
