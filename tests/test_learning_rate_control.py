"""Learning-rate control: the rules (constant, newbob variants), predefined rates, and the options."""

from __future__ import annotations

import os

import pytest

from returnn.config import Config
from returnn.errors import ConfigError
from returnn.learning_rate_control import (
    ConstantLearningRate,
    EpochData,
    NewbobAbs,
    NewbobMultiEpoch,
    NewbobRelative,
    learning_rate_control_from_config,
)


def test_save_is_atomic_and_loads_back(tmp_path):
    path = str(tmp_path / "sub" / "learning_rates")
    control = ConstantLearningRate(default_learning_rate=0.01, filename=path)
    control.get_learning_rate_for_epoch(1)
    control.set_epoch_error(1, {"train_loss_ce": 1.5})
    control.save()
    assert os.listdir(tmp_path / "sub") == ["learning_rates"]
    again = ConstantLearningRate(default_learning_rate=0.5, filename=path)
    assert again.epoch_data == {1: EpochData(learning_rate=0.01, error={"train_loss_ce": 1.5})}
    assert again.get_learning_rate_for_epoch(1) == 0.01
    assert again.get_learning_rate_for_epoch(2) == 0.01


def test_constant_with_predefined_list_continues_with_last():
    control = ConstantLearningRate(default_learning_rate=1.0, default_learning_rates=[0.1, 0.2, 0.3])
    assert [control.get_learning_rate_for_epoch(e) for e in range(1, 6)] == [0.1, 0.2, 0.3, 0.3, 0.3]


def test_predefined_dict_and_min_learning_rate():
    control = ConstantLearningRate(default_learning_rate=0.5, default_learning_rates={3: 0.001}, min_learning_rate=0.01)
    assert [control.get_learning_rate_for_epoch(e) for e in range(1, 5)] == [0.5, 0.5, 0.001, 0.01]


def test_trained_epochs_from_file_win_over_changed_predefined_list(tmp_path):
    path = str(tmp_path / "lr")
    first = ConstantLearningRate(default_learning_rate=1.0, default_learning_rates=[0.1] * 3, filename=path)
    for epoch in (1, 2):
        first.get_learning_rate_for_epoch(epoch)
        first.set_epoch_error(epoch, {"train_loss_ce": 1.0})
    first.get_learning_rate_for_epoch(3)  # recorded, not trained
    first.save()
    # the config changes the schedule, e.g. extended for more epochs
    second = ConstantLearningRate(default_learning_rate=1.0, default_learning_rates=[0.5] * 5, filename=path)
    assert [second.get_learning_rate_for_epoch(e) for e in range(1, 6)] == [0.1, 0.1, 0.5, 0.5, 0.5]


def _with_scores(control, scores: list[float], key: str = "dev_loss_ce") -> list[float]:
    """Run epochs with the given dev scores; return the learning rates used (one more than scores)."""
    rates = []
    for epoch, score in enumerate(scores, start=1):
        rates.append(control.get_learning_rate_for_epoch(epoch))
        control.set_epoch_error(epoch, {"train_loss_ce": 9.0, key: score})
    rates.append(control.get_learning_rate_for_epoch(len(scores) + 1))
    return rates


def test_newbob_relative():
    control = NewbobRelative(default_learning_rate=1.0, learning_rate_decay=0.5, relative_error_threshold=-0.01)
    # 10 -> 5: -1.0 (improved); 5 -> 4.99: -0.002 > -0.01 (decay); 4.99 -> 6: +0.17 (decay)
    assert _with_scores(control, [10.0, 5.0, 4.99, 6.0]) == [1.0, 1.0, 1.0, 0.5, 0.25]


def test_newbob_relative_div_by_old_and_callable_decay():
    control = NewbobRelative(
        default_learning_rate=1.0,
        learning_rate_decay=lambda lr: lr - 0.25,
        relative_error_threshold=-0.1,
        relative_error_div_by_old=True,
    )
    # (9 - 10) / 10 = -0.1, not above the threshold: keep; by new it would be -0.111
    assert _with_scores(control, [10.0, 9.0, 8.5]) == [1.0, 1.0, 1.0, 0.75]


def test_newbob_min_epochs_per_new_learning_rate():
    control = NewbobRelative(default_learning_rate=1.0, min_num_epochs_per_new_learning_rate=2)
    # no improvement at all: decays whenever allowed, and each rate lasts two epochs
    assert _with_scores(control, [10.0] * 5) == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.parametrize("relative_to_lr, expected", [(False, 0.25), (True, 0.5)])
def test_newbob_relative_error_relative_to_learning_rate(relative_to_lr, expected):
    control = NewbobRelative(
        default_learning_rate=1.0,
        default_learning_rates=[1.0, 0.5],
        relative_error_also_relative_to_learning_rate=relative_to_lr,
    )
    # relative error -0.08 / 9.92 = -0.008 (decay); at half the initial rate it counts double: -0.016 (keep)
    assert _with_scores(control, [10.0, 9.92]) == [1.0, 0.5, expected]


def test_newbob_abs():
    control = NewbobAbs(default_learning_rate=1.0, error_threshold=-0.5)
    # 10 -> 9: -1 (keep); 9 -> 8.8: -0.2 > -0.5 (decay)
    assert _with_scores(control, [10.0, 9.0, 8.8]) == [1.0, 1.0, 1.0, 0.5]


@pytest.mark.parametrize("cls", [NewbobRelative, NewbobAbs])
def test_newbob_grows_when_the_score_improved_enough(cls):
    control = cls(default_learning_rate=1.0, learning_rate_decay=0.5, learning_rate_growth=1.5)
    # 10 -> 5: improved (grow); 5 -> 5: not enough (decay); 5 -> 2: improved (grow)
    assert _with_scores(control, [10.0, 5.0, 5.0, 2.0]) == [1.0, 1.0, 1.5, 0.75, 1.125]


def test_newbob_multi_epoch():
    control = NewbobMultiEpoch(
        default_learning_rate=1.0,
        num_epochs=2,
        update_interval=2,
        relative_error_threshold=-0.01,
        relative_error_grow_threshold=-0.3,
        learning_rate_growth=2.0,
    )
    scores = [16.0, 8.0, 4.0, 3.99, 3.98, 3.97]
    rates = _with_scores(control, scores)
    # updates only at epochs 3, 5, 7: epoch 3 looks at 1..2 (-1.0: grow), epoch 5 at 2..4 (mean (-1 - 0.0025)/2:
    # grow), epoch 7 at 4..6 (about -0.0025: decay)
    assert rates == [1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 2.0]


def test_error_measure_key_and_default_key():
    control = NewbobRelative(default_learning_rate=1.0)
    control.set_epoch_error(1, {"train_loss_ce": 1.0, "devtrain_loss_ce": 1.0, "dev_loss_fer": 2.0, "dev_loss_ce": 3.0})
    assert control.get_error_key(1) == "dev_loss_ce"
    control.set_epoch_error(2, {"train_loss_x": 1.0, "other": 0.0})
    assert control.get_error_key(2) == "train_loss_x"
    control.error_measure_key = ["missing", "dev_loss_fer"]
    assert control.get_error_key(1) == "dev_loss_fer"
    control.error_measure_key = "dev_loss_cee"
    with pytest.raises(ConfigError, match=r"'dev_loss_cee' is not among the scores of epoch 1; choose one of: dev_"):
        control.get_error_key(1)


def test_from_config():
    config = Config(
        {
            "learning_rate_control": "newbob_multi_epoch",
            "learning_rate": 0.5,
            "learning_rates": "[0.1, 0.2]",
            "newbob_multi_num_epochs": 3,
            "newbob_learning_rate_decay": 0.7,
            "learning_rate_decay": 0.1,
            "min_learning_rate": 0.001,
        }
    )
    control = learning_rate_control_from_config(config)
    assert isinstance(control, NewbobMultiEpoch)
    assert (control.num_epochs, control.update_interval, control.learning_rate_decay) == (3, 3, 0.7)
    assert control.relative_error_grow_threshold == -0.01
    assert (control.default_learning_rate, control.min_learning_rate) == (0.5, 0.001)
    assert [control.get_learning_rate_for_epoch(e) for e in (1, 2, 3)] == [0.1, 0.2, 0.2]
    assert isinstance(learning_rate_control_from_config(Config()), ConstantLearningRate)
    assert isinstance(learning_rate_control_from_config(Config({"learning_rate_control": "newbob"})), NewbobRelative)


@pytest.mark.parametrize(
    "items, match",
    [
        ({"learning_rate_control": "newbobb"}, r"unknown value 'newbobb'; choose one of: constant, newbob, "),
        ({"learning_rates": "[0.1,"}, r"'learning_rates': cannot read"),
        ({"learning_rates": 0.1}, r"'learning_rates': expected a list"),
        ({"learning_rate_decay": "x"}, r"'learning_rate_decay': expected a number or a function"),
        ({"learning_rate_control_error_measure": 3}, r"expected a score key or a list"),
        (
            {"learning_rate_control": "newbob_multi_epoch", "newbob_multi_update_interval": -2},
            r"'newbob_multi_update_interval': expected an int >= 1, got -2; leave it unset",
        ),
    ],
)
def test_from_config_bad_input(items, match):
    with pytest.raises(ConfigError, match=match):
        learning_rate_control_from_config(Config(items))
