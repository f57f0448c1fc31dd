"""Named learning-rate schedules, each against its formula."""

from __future__ import annotations

import math

import pytest

from returnn.config import Config
from returnn.errors import ConfigError
from returnn.lr_schedules import LearningRateSchedule, schedule_from_config


def _factors(schedule: LearningRateSchedule, steps) -> list[float]:
    return [schedule.factor(step) for step in steps]


def test_warmup_then_constant():
    assert _factors(LearningRateSchedule("constant", warmup_steps=4), range(6)) == [0.25, 0.5, 0.75, 1, 1, 1]


@pytest.mark.parametrize("final", [0.0, 0.1])
def test_warmup_then_linear_and_cosine(final):
    linear = LearningRateSchedule("linear", warmup_steps=10, total_steps=110, final_scale=final)
    cosine = LearningRateSchedule("cosine", warmup_steps=10, total_steps=110, final_scale=final)
    for step in range(0, 200, 7):
        progress = min(1.0, max(0.0, (step - 10) / 100))
        warm = (step + 1) / 10 if step < 10 else None
        assert linear.factor(step) == pytest.approx(warm or 1 - (1 - final) * progress)
        assert cosine.factor(step) == pytest.approx(
            warm or final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
        )
    assert linear.factor(60) == pytest.approx(1 - (1 - final) / 2)
    assert cosine.factor(110) == pytest.approx(final) and cosine.factor(500) == pytest.approx(final)


def test_invsqrt_with_mainline_keys():
    schedule = schedule_from_config(
        Config(
            {"learning_rate_schedule": "invsqrt", "learning_rate_warmup_steps": 100, "learning_rate_invsqrt_norm": 400}
        )
    )
    assert schedule.factor(49) == pytest.approx(0.5)
    for step in (100, 399, 1000, 10**6):
        assert schedule.factor(step) == pytest.approx(math.sqrt(400 / (step + 1)))
    default_norm = LearningRateSchedule("invsqrt", warmup_steps=100)
    assert default_norm.factor(99) == 1.0 and default_norm.factor(399) == pytest.approx(0.5)


def test_one_cycle():
    schedule = LearningRateSchedule("one_cycle", total_steps=100, pct_start=0.4, initial_scale=0.1, final_scale=0.01)
    expected = {0: 0.1, 20: 0.55, 40: 1.0, 60: 0.55, 80: 0.1, 90: 0.055, 100: 0.01, 150: 0.01}
    for step, value in expected.items():
        assert schedule.factor(step) == pytest.approx(value), step


def test_piecewise_from_mainline_keys():
    config = Config(
        {"learning_rate_piecewise_steps": [100, 200, 250], "learning_rate_piecewise_values": [1e-5, 1e-3, 1e-5, 1e-6]}
    )
    schedule = schedule_from_config(config)
    assert schedule.kind == "piecewise"
    expected = {0: 1e-5, 50: 5.05e-4, 100: 1e-3, 150: 5.05e-4, 200: 1e-5, 225: 5.5e-6, 250: 1e-6, 10**6: 1e-6}
    for step, value in expected.items():
        assert schedule.factor(step) == pytest.approx(value), step
    assert schedule.dynamic_learning_rate(global_train_step=100, learning_rate=2.0, epoch=1) == pytest.approx(2e-3)


@pytest.mark.parametrize(
    "value, match",
    [
        ("exponential", r"'learning_rate_schedule' \(exponential\): unknown class; choose one of: constant, linear"),
        (
            {"class": "cosine", "warmup_steps": 10},
            r"\(cosine\): needs total_steps > warmup_steps, got total_steps=None",
        ),
        (
            {"class": "linear", "total_steps": 10, "decay": 1},
            r"unknown option\(s\) 'decay'; choose from: by_epoch_continuous, final_scale",
        ),
        ({"class": "piecewise", "steps": [2, 1], "values": [1, 2, 3]}, r"expected ascending steps"),
        ({"class": "invsqrt"}, r"needs warmup_steps >= 1 \(learning_rate_warmup_steps\) or a norm"),
        (3, r"expected a class name or a dict with 'class', got 3"),
    ],
)
def test_bad_schedules(value, match):
    with pytest.raises(ConfigError, match=match):
        schedule_from_config(Config({"learning_rate_schedule": value}))


def test_no_schedule():
    assert schedule_from_config(Config({})) is None


def test_piecewise_by_epoch_continuous():
    config = Config(
        {
            "learning_rate_piecewise_steps": [0.5, 2],
            "learning_rate_piecewise_values": [0.1, 1.0, 0.01],
            "learning_rate_piecewise_by_epoch_continuous": True,
        }
    )
    schedule = schedule_from_config(config)
    assert schedule.factor(10**6, epoch_continuous=0.25) == pytest.approx(0.55)
    assert schedule.factor(0, epoch_continuous=1.25) == pytest.approx(1.0 - 0.99 * 0.5)
    assert schedule.factor(0, epoch_continuous=7.0) == pytest.approx(0.01)
