"""The learning_rates file: its exact format, reading it back safely, and reading it the way pipelines do."""

from __future__ import annotations

import math

import pytest

from returnn.config import Config
from returnn.errors import CheckpointError
from returnn.learning_rate_control import learning_rate_control_from_config
from returnn.learning_rate_file import EpochData, format_epoch_data, load_learning_rate_file, parse_epoch_data


def _eval_as_dict(text: str) -> dict:
    """How pipelines read the file for progress: EpochData is dict, so only the keyword form works."""
    return eval(text, {"EpochData": dict, "nan": float("nan"), "inf": float("inf")})


def _eval_as_function(text: str) -> dict:
    """How pipelines read the file to pick the best epoch: EpochData is a function of (learningRate, error)."""

    def EpochData(learningRate, error):  # the names that the file uses
        return {"lr": learningRate, "error": error}

    return eval(text, {"EpochData": EpochData})


def test_file_format_exact():
    data = {
        2: EpochData(learning_rate=0.0005, error={}),
        1: EpochData(learning_rate=0.001, error={"train_loss_ce": 3.2, "dev_loss_ce": 2.9}),
    }
    assert format_epoch_data(data) == (
        "{\n"
        "    1: EpochData(learningRate=0.001, error={'dev_loss_ce': 2.9, 'train_loss_ce': 3.2}),\n"
        "    2: EpochData(learningRate=0.0005, error={}),\n"
        "}\n"
    )


def test_file_non_finite_and_numpy_values_are_plain_floats():
    import numpy as np

    data = {1: EpochData(learning_rate=np.float64(0.25), error={"a": np.float32(0.5), "b": math.nan, "c": -math.inf})}
    text = format_epoch_data(data)
    assert "np." not in text
    assert "error={'a': 0.5, 'b': float('nan'), 'c': float('-inf')}" in text


def test_file_read_back_by_pipelines_both_ways():
    data = {
        1: EpochData(learning_rate=0.001, error={"dev_loss_ce": 2.9, "train_loss_ce": math.inf}),
        2: EpochData(learning_rate=0.001, error={"dev_loss_ce": math.nan}),
        3: EpochData(learning_rate=1e-05, error={}),
    }
    text = format_epoch_data(data)
    as_dict = _eval_as_dict(text)
    assert list(as_dict) == [1, 2, 3]
    assert as_dict[1] == {"learningRate": 0.001, "error": {"dev_loss_ce": 2.9, "train_loss_ce": math.inf}}
    assert math.isnan(as_dict[2]["error"]["dev_loss_ce"])
    assert as_dict[3] == {"learningRate": 1e-05, "error": {}}
    as_function = _eval_as_function(text)
    assert as_function[1] == {"lr": 0.001, "error": {"dev_loss_ce": 2.9, "train_loss_ce": math.inf}}
    assert as_function[3] == {"lr": 1e-05, "error": {}}


def test_parse_round_trip():
    data = {
        1: EpochData(learning_rate=0.001, error={"dev_loss_ce": 2.9, "x": -math.inf}),
        1000: EpochData(learning_rate=0.5, error={}),
    }
    parsed = parse_epoch_data(format_epoch_data(data))
    assert parsed == data


def test_parse_other_writers_forms():
    text = (
        "{1: EpochData(0.1, {'dev_score': np.float64(2.5), 'x': nan, 'y': -inf, ':meta:host': 'node1'}),\n"
        " 2: EpochData(learningRate=0.05, error={'dev_score': 2})}"
    )
    parsed = parse_epoch_data(text)
    assert parsed[1].learning_rate == 0.1
    assert (
        parsed[1].error["dev_score"] == 2.5 and math.isnan(parsed[1].error["x"]) and parsed[1].error["y"] == -math.inf
    )
    assert parsed[1].error[":meta:host"] == "node1"
    assert parsed[1].scores.keys() == {"dev_score", "x", "y"}
    assert parsed[2] == EpochData(learning_rate=0.05, error={"dev_score": 2.0})


@pytest.mark.parametrize(
    "text, match",
    [
        ("{1: EpochData(learningRate=0.1, error={'a': 1.0}", r"corrupted \(line 1: "),
        ("[1, 2]", r"corrupted \(line 1: expected a dict"),
        ("{1: __import__('os').system('true')}", r"expected EpochData"),
        ("{1: EpochData(learningRate=0.1, error={'a': open('x')})}", r"expected a number, got \"open\('x'\)\""),
        ("{'1': EpochData(learningRate=0.1, error={})}", "expected an int epoch"),
        ("{1: EpochData(learningRate=0.1, foo={})}", "unexpected argument 'foo'"),
    ],
)
def test_parse_corrupted(text, match):
    with pytest.raises(CheckpointError, match=match):
        parse_epoch_data(text, "lr.txt")


def test_corrupted_file_is_left_as_it_is(tmp_path):
    path = tmp_path / "learning_rates"
    text = "{1: EpochData(learningRate=0.1, error={'dev_loss_ce': 2.0}),\n 2: EpochDa"
    path.write_text(text)
    config = Config({"learning_rate_file": str(path)})
    with pytest.raises(CheckpointError, match=r"learning_rates file '.*learning_rates' is corrupted .* left as it is"):
        learning_rate_control_from_config(config)
    assert path.read_text() == text


def test_missing_file_reads_empty(tmp_path):
    assert load_learning_rate_file(str(tmp_path / "nothing")) == {}


def test_unreadable_file_says_what_to_check(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"cannot read learning_rates file .*; check the path and the permissions"
    ):
        load_learning_rate_file(str(tmp_path))  # a directory
