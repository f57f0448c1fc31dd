"""use_last_best_model: the decision on tables of scores (RETURNN's rules), and in the engine: back to the best
epoch's model with a fresh optimizer state, and a restarted training deciding as an uninterrupted one."""

from __future__ import annotations

import logging
import math
import os
import signal
from typing import Any

import pytest
import torch

from returnn.config import Config
from returnn.errors import ConfigError, RunInterrupted
from returnn.learning_rate_control import ConstantLearningRate, load_learning_rate_file
from returnn.torch.engine import Engine
from returnn.torch.last_best import LastBestOptions, epoch_to_load, watched_scores

from .conftest import train_step

# ---------------------------------------------------------------------------------------------------------------
# the decision

DEMO = LastBestOptions(modulo=5, filter_score=1.5, only_last_n=5, min_score_dist=0.2)  # demo-tf-att-copy.config


@pytest.mark.parametrize(
    "epoch, scores, options, expected",
    [
        pytest.param(3, {1: 2.0, 2: 1.0}, LastBestOptions(), None, id="last-is-best"),
        pytest.param(4, {1: 2.0, 2: 1.0, 3: 1.5}, LastBestOptions(), 2, id="back-to-best"),
        pytest.param(4, {1: 1.0, 2: 1.0, 3: 1.5}, LastBestOptions(), 1, id="tie-takes-earlier"),
        pytest.param(4, {1: 1.0, 2: 1.2, 3: 1.1}, LastBestOptions(), 1, id="best-not-last-but-one"),
        pytest.param(2, {1: 1.0}, LastBestOptions(), None, id="one-epoch"),
        pytest.param(1, {}, LastBestOptions(), None, id="first-epoch"),
        pytest.param(4, {1: 1.0, 2: 1.0, 3: 1.0}, LastBestOptions(), None, id="equal-is-not-better"),
        pytest.param(4, {1: 1.0, 2: 1.2, 3: 1.15}, LastBestOptions(min_score_dist=0.2), None, id="within-dist"),
        pytest.param(4, {1: 1.0, 2: 1.2, 3: 1.25}, LastBestOptions(min_score_dist=0.2), 1, id="beyond-dist"),
        pytest.param(4, {1: 0.5, 2: 1.0, 3: 1.5}, LastBestOptions(only_last_n=2), 2, id="only-last-n"),
        pytest.param(4, {1: 0.5, 2: 1.0, 3: 1.5}, LastBestOptions(only_last_epochs=2), 2, id="only-last-epochs"),
        pytest.param(4, {1: 0.5, 2: 1.0, 3: 1.5}, LastBestOptions(first_epoch=2), 2, id="first-epoch-option"),
        # filter_score drops candidates before only_last_n counts them
        pytest.param(5, {1: 1.0, 2: 3.0, 3: 3.0, 4: 2.5}, LastBestOptions(filter_score=2.0, only_last_n=2), 1),
        pytest.param(4, {1: 2.2, 2: 2.1, 3: 2.5}, LastBestOptions(filter_score=2.0), None, id="all-filtered"),
        # modulo: only every 5th epoch, unless the last score is above filter_score
        pytest.param(7, {1: 2.0, 2: 1.0, 3: 1.5, 4: 1.4, 5: 1.3, 6: 1.45}, DEMO, None, id="modulo-off-epoch"),
        pytest.param(7, {1: 2.0, 2: 1.0, 3: 1.5, 4: 1.4, 5: 1.3, 6: 1.6}, DEMO, 2, id="modulo-bad-last-score"),
        pytest.param(10, {1: 2.0, 2: 1.0, **{e: 1.3 for e in range(3, 10)}}, DEMO, None, id="modulo-only-last-5"),
        pytest.param(10, {**{e: 1.3 for e in range(1, 6)}, 6: 1.0, 7: 1.3, 8: 1.3, 9: 1.3}, DEMO, 6, id="modulo"),
        pytest.param(10, {**{e: 1.3 for e in range(1, 6)}, 6: 1.2, 7: 1.3, 8: 1.3, 9: 1.3}, DEMO, None, id="demo-dist"),
        # an epoch without the watched score: the newest score is the latest one
        pytest.param(4, {1: 1.0, 2: 1.5}, LastBestOptions(), 1, id="last-without-score"),
        pytest.param(4, {1: 1.0, 2: 2.0, 3: math.nan}, LastBestOptions(), None, id="nan-last"),
        pytest.param(4, {1: math.nan, 2: 1.0, 3: 2.0}, LastBestOptions(), 2, id="nan-never-best"),
    ],
)
def test_epoch_to_load(epoch, scores, options, expected):
    assert epoch_to_load(epoch, scores, options) == expected


def test_epoch_to_load_first_epoch_after_pretrain_and_saved_epochs():
    scores = {1: 0.5, 2: 2.0, 3: 1.0, 4: 1.5, 5: 2.0}
    assert epoch_to_load(6, scores, LastBestOptions()) == 1
    assert epoch_to_load(6, scores, LastBestOptions(), first_epoch=2) == 3  # the last pretrain epoch counts
    assert epoch_to_load(6, scores, LastBestOptions(first_epoch=3), first_epoch=1) == 3  # the option wins
    assert epoch_to_load(6, scores, LastBestOptions(), saved=[2, 4, 5]) == 4  # epochs 1 and 3 were deleted
    assert epoch_to_load(6, scores, LastBestOptions(), saved=[5]) is None


def test_watched_scores_only_of_the_newest_key():
    control = ConstantLearningRate(default_learning_rate=1.0)
    control.set_epoch_error(1, {"train_loss_ce": 3.0})  # no dev score: watched would be train_loss_ce
    control.set_epoch_error(2, {"train_loss_ce": 2.0, "dev_loss_ce": 2.5})
    control.set_epoch_error(3, {"train_loss_ce": 1.0, "dev_loss_ce": 2.7})
    control.get_learning_rate_for_epoch(4)  # the coming epoch: a learning rate, no scores
    assert watched_scores(control, 3) == ("dev_loss_ce", {2: 2.5, 3: 2.7})
    assert watched_scores(control, 1) == ("train_loss_ce", {1: 3.0})
    assert watched_scores(control, 0) == (None, {})


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        (False, None),
        (True, LastBestOptions()),
        ({"modulo": 5, "filter_score": 1.5, "only_last_n": 5, "min_score_dist": 0.2}, DEMO),
        ({"only_last_n": -1, "filter_score": 2}, LastBestOptions(filter_score=2)),
    ],
)
def test_options(value, expected):
    assert LastBestOptions.from_config_value(value) == expected


@pytest.mark.parametrize(
    "value, match",
    [
        ("often", r"^config key 'use_last_best_model': expected True/False or a dict, got str 'often'$"),
        ({"key": "dev_loss_ce"}, r"unknown option\(s\) 'key'; choose from: modulo, .* learning_rate_control_error_"),
        ({"modulo": 0}, r"'modulo' must be an int >= 1, got 0$"),
        ({"modulo": None}, r"'modulo' must be an int >= 1, got None$"),
        ({"only_last_n": 2.5}, r"'only_last_n' must be an int >= 1 \(or -1: all\), got 2.5$"),
        ({"first_epoch": True}, r"'first_epoch' must be an int >= 1, got True$"),
        ({"filter_score": "1.5"}, r"'filter_score' must be a number, got '1.5'$"),
        ({"min_score_dist": -0.1}, r"'min_score_dist' must be a number >= 0, got -0.1$"),
    ],
)
def test_bad_options(value, match):
    with pytest.raises(ConfigError, match=match):
        LastBestOptions.from_config(Config({"use_last_best_model": value}))


# ---------------------------------------------------------------------------------------------------------------
# in the engine

# epoch 3 trains with a learning rate that ruins the model; epoch 4 with 0, so its checkpoint shows the model that
# it started from
BAD_EPOCH_3 = dict(num_epochs=4, learning_rates=[0.01, 0.01, 10.0, 0.0], use_last_best_model={"min_score_dist": 0.1})


def _load(path) -> dict:
    return torch.load(path, weights_only=True)


def test_worse_epoch_goes_back_to_best_model_with_fresh_optimizer(make_config, tmp_path, assert_same_state, caplog):
    with caplog.at_level(logging.INFO, logger="returnn"):
        Engine(make_config(**BAD_EPOCH_3)).train()
    models = tmp_path / "models"
    scores = {
        epoch: data.error["dev_loss_ce"]
        for epoch, data in load_learning_rate_file(str(tmp_path / "learning_rates")).items()
    }
    assert scores[3] > scores[2] + 0.1 and scores[2] < scores[1]  # epoch 2 is the best, epoch 3 is worse
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("use_last_best_model")]
    assert len(lines) == 1
    assert lines[0].startswith(
        f"use_last_best_model: epoch=4 last_epoch=3 last_score={scores[3]:.6g} best_epoch=2 "
        f"best_score={scores[2]:.6g} key=dev_loss_ce: going on from {models / 'epoch.002.pt'}"
    )
    epoch_2, epoch_3, epoch_4 = (_load(models / f"epoch.00{epoch}.pt") for epoch in (2, 3, 4))
    assert_same_state(epoch_4["model"], epoch_2["model"])  # learning rate 0: epoch 4 ends where it started
    assert not torch.equal(epoch_4["model"]["out.weight"], epoch_3["model"]["out.weight"])
    assert epoch_4["step"] == 16  # the global step goes on
    # a fresh Adam state: 4 steps, not 16
    assert {int(state["step"]) for state in _load(models / "epoch.004.opt.pt")["optimizer"]["state"].values()} == {4}


def test_without_the_option_training_goes_on_from_the_last_epoch(make_config, tmp_path, assert_same_state):
    Engine(make_config(**{**BAD_EPOCH_3, "use_last_best_model": None})).train()
    models = tmp_path / "models"
    assert_same_state(_load(models / "epoch.004.pt")["model"], _load(models / "epoch.003.pt")["model"])


def test_restart_decides_as_uninterrupted_run(make_config, tmp_path, assert_same_state):
    options = {**BAD_EPOCH_3, "learning_rates": [0.01, 0.01, 10.0, 0.01]}
    Engine(make_config("full", **options)).train()
    Engine(make_config("resumed", **{**options, "num_epochs": 3})).train()
    Engine(make_config("resumed", **options)).train()  # restarted: continues after epoch 3, goes back to epoch 2
    for name in ("epoch.004.pt", "epoch.004.opt.pt"):
        assert_same_state(_load(tmp_path / "full" / name), _load(tmp_path / "resumed" / name))
    assert (tmp_path / "resumed" / "learning_rates").read_text() == (tmp_path / "full" / "learning_rates").read_text()


def test_epoch_resumed_mid_way_does_not_go_back_again(make_config, tmp_path, assert_same_state):
    def sigterm_in_epoch_4(*, run_ctx, **kwargs: Any) -> None:
        if run_ctx.global_step == 13:  # the second step of epoch 4, after its start went back to epoch 2
            os.kill(os.getpid(), signal.SIGTERM)
        train_step(run_ctx=run_ctx, **kwargs)

    options = {**BAD_EPOCH_3, "learning_rates": [0.01, 0.01, 10.0, 0.01]}
    Engine(make_config("full", **options)).train()
    with pytest.raises(RunInterrupted, match="stopped in epoch 4 after step 2 of it"):
        Engine(make_config("resumed", train_step=sigterm_in_epoch_4, **options)).train()
    Engine(make_config("resumed", **options)).train()
    for name in ("epoch.004.pt", "epoch.004.opt.pt"):
        assert_same_state(_load(tmp_path / "full" / name), _load(tmp_path / "resumed" / name))


NETWORK = {
    "hidden": {"class": "linear", "activation": "tanh", "n_out": 8},
    "output": {"class": "softmax", "loss": "ce", "from": ["hidden"]},
}


def test_network_dict_goes_back_to_best_model(make_config, tmp_path, assert_same_state, caplog):
    config = make_config(get_model=None, train_step=None, network=NETWORK, **BAD_EPOCH_3)
    with caplog.at_level(logging.INFO, logger="returnn"):
        Engine(config).train()
    assert any(r.getMessage().startswith("use_last_best_model: epoch=4 last_epoch=3") for r in caplog.records)
    assert "key=dev_score:" in caplog.text
    models = tmp_path / "models"
    assert_same_state(_load(models / "epoch.004.pt")["model"], _load(models / "epoch.002.pt")["model"])


def test_after_pretraining_goes_back_within_the_whole_network(make_config, tmp_path, assert_same_state, caplog):
    network = {"hidden0": NETWORK["hidden"], **NETWORK}
    network["hidden"] = {**network["hidden"], "from": ["hidden0"]}
    config = make_config(
        get_model=None,
        train_step=None,
        network=network,
        pretrain="default",  # epoch 1: hidden0 and output; from epoch 2 on: the whole network
        num_epochs=5,
        learning_rates=[0.01, 0.01, 0.01, 10.0, 0.0],
        use_last_best_model={"min_score_dist": 0.1},
    )
    with caplog.at_level(logging.INFO, logger="returnn"):
        Engine(config).train()
    scores = {
        epoch: data.error["dev_score"]
        for epoch, data in load_learning_rate_file(str(tmp_path / "learning_rates")).items()
    }
    best = min((2, 3), key=lambda epoch: (scores[epoch], epoch))
    assert scores[4] > scores[best]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("use_last_best_model")]
    assert [line.split(" key=")[0].split(" best_score=")[0] for line in lines] == [
        f"use_last_best_model: epoch=5 last_epoch=4 last_score={scores[4]:.6g} best_epoch={best}"
    ]
    models = tmp_path / "models"
    assert_same_state(_load(models / "epoch.005.pt")["model"], _load(models / f"epoch.00{best}.pt")["model"])
