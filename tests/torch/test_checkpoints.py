"""Checkpoint files, the cleanup policy, the random state, and the rank-aware disk writes."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from returnn.errors import CheckpointError, ConfigError
from returnn.torch import checkpoints, distributed
from returnn.torch.random_state import derive_seed, get_rng_state, seed_all, set_rng_state


def test_names():
    assert checkpoints.checkpoint_filename("models/epoch", 7) == "models/epoch.007.pt"
    assert checkpoints.checkpoint_filename("epoch", 1000) == "epoch.1000.pt"
    assert checkpoints.optimizer_filename("models/epoch", 12) == "models/epoch.012.opt.pt"


def test_existing_epochs(tmp_path):
    for name in ["epoch.001.pt", "epoch.002.opt.pt", "epoch.003.pt", "epoch.003.opt.pt", "epoch.1000.pt"]:
        (tmp_path / name).write_bytes(b"")
    for name in ["epoch.04.pt", "epoch.005.pt.tmp12", "other.006.pt", "epoch.007.ptx"]:
        (tmp_path / name).write_bytes(b"")
    prefix = str(tmp_path / "epoch")
    assert checkpoints.existing_epochs(prefix) == [1, 3, 1000]
    assert checkpoints.existing_optimizer_epochs(prefix) == [2, 3]
    assert checkpoints.existing_epochs(str(tmp_path / "missing_dir" / "epoch")) == []


def test_save_load_plain_types_atomically(tmp_path):
    path = str(tmp_path / "deep" / "model.001.pt")
    content = {"model": {"w": torch.ones(2)}, "epoch": 1, "step": 5, "rng": get_rng_state()}
    checkpoints.save_checkpoint(path, content)
    assert os.listdir(tmp_path / "deep") == ["model.001.pt"]  # no temporary file left behind
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 1 and torch.equal(loaded["model"]["w"], torch.ones(2))
    assert checkpoints.load_checkpoint(path)["step"] == 5


def test_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "learning_rates"
    path.write_text("old")

    def write(f):
        f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        distributed.write_file_atomic(path, write)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["learning_rates"]


def test_only_the_main_process_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (1, 2, False)
    (tmp_path / "keep.pt").write_text("x")
    assert distributed.write_file_atomic(tmp_path / "a.txt", lambda f: f.write("x")) is False
    assert distributed.remove_file(tmp_path / "keep.pt") is False
    assert os.listdir(tmp_path) == ["keep.pt"]
    monkeypatch.setenv("RANK", "0")
    assert distributed.remove_file(tmp_path / "keep.pt") is True
    assert distributed.remove_file(tmp_path / "keep.pt") is False


@pytest.mark.parametrize(
    "content, match",
    [
        (b"not a zip file", r"cannot read checkpoint '.*bad.pt' \(truncated or not a torch file\?\)"),
        (None, r"expected a dict, got list"),
    ],
)
def test_load_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save([1, 2], path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        checkpoints.load_checkpoint(str(path))


class _Settings:  # not a plain type: weights_only loading refuses it
    pass


@pytest.mark.parametrize("value, name", [(_Settings(), "._Settings"), (print, ".print")])
def test_load_refuses_other_objects_for_safety(tmp_path, value, name):
    path = tmp_path / "pickled.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": value}, path)
    with pytest.raises(CheckpointError) as error:
        checkpoints.load_checkpoint(str(path))
    message = str(error.value)
    assert "holds objects other than tensors, numbers, strings, lists and dicts, which are not loaded for" in message
    assert name in message and "\n" not in message
    path.write_bytes(path.read_bytes()[:200])  # the same file truncated is not a refusal
    with pytest.raises(CheckpointError, match=r"\(truncated or not a torch file\?\)"):
        checkpoints.load_checkpoint(str(path))


def test_resolve_checkpoint_path(tmp_path):
    (tmp_path / "epoch.003.pt").write_bytes(b"")
    assert checkpoints.resolve_checkpoint_path(tmp_path / "epoch.003", config_key="load").endswith("epoch.003.pt")
    assert checkpoints.resolve_checkpoint_path(str(tmp_path / "epoch.003.pt"), config_key="load").endswith(".003.pt")
    with pytest.raises(CheckpointError, match=r"config key 'load': checkpoint file not found: '.*epoch.004'"):
        checkpoints.resolve_checkpoint_path(str(tmp_path / "epoch.004"), config_key="load")


def test_load_model_state_ignore_missing(caplog):
    model = torch.nn.Linear(2, 2)
    checkpoints.load_model_state(
        model, {"weight": torch.zeros(2, 2), "extra": torch.ones(1)}, source="x", ignore_missing=True
    )
    assert torch.equal(model.weight, torch.zeros(2, 2))
    assert "x: parameters not in the checkpoint, kept as initialized: bias" in caplog.text
    assert "x: checkpoint entries the model does not have, ignored: extra" in caplog.text


# --------------------------------------------------------------------------------------------------
# cleanup policy


def test_cleanup_policy_keeps_last_best_and_listed():
    policy = checkpoints.CleanupPolicy(keep=frozenset({2}), keep_last_n=2, keep_best_n=1)
    scores = {
        1: {"dev_loss_ce": 3.0, "train_loss_ce": 3.0, "const": 1.0},
        3: {"dev_loss_ce": 1.0, "train_loss_ce": 2.5, "const": 1.0},
        4: {"dev_loss_ce": 2.0, "train_loss_ce": 2.0, "const": 1.0},
        5: {"dev_loss_ce": float("nan"), "train_loss_ce": 1.5, "const": 1.0},
        6: {"dev_loss_ce": 2.5, "train_loss_ce": 1.9, "const": 1.0},
    }
    epochs = [1, 2, 3, 4, 5, 6, 7]
    # kept: 2 (listed), 6 and 7 (last two), 3 (best dev), 5 (best train); the constant key keeps nothing
    assert policy.epochs_to_delete(epochs, scores) == [1, 4]


def test_cleanup_policy_never_deletes_the_newest_and_waits_for_enough_epochs():
    policy = checkpoints.CleanupPolicy(keep_last_n=0, keep_best_n=0)
    assert policy.epochs_to_delete([1, 2, 3], {}) == [1, 2]
    assert checkpoints.CleanupPolicy(keep_last_n=2, keep_best_n=4).epochs_to_delete([1, 2, 3, 4], {}) == []


def test_cleanup_policy_from_config_value():
    assert checkpoints.CleanupPolicy.from_config_value(None) is None
    assert checkpoints.CleanupPolicy.from_config_value(False) is None
    assert checkpoints.CleanupPolicy.from_config_value(True) == checkpoints.CleanupPolicy(frozenset(), 2, 4)
    policy = checkpoints.CleanupPolicy.from_config_value({"keep": {10, 20}, "keep_best_n": 1})
    assert policy == checkpoints.CleanupPolicy(frozenset({10, 20}), 2, 1)
    with pytest.raises(ConfigError, match=r"'cleanup_old_models': expected True/False or a dict, got str 'yes'"):
        checkpoints.CleanupPolicy.from_config_value("yes")
    with pytest.raises(ConfigError, match=r"keep_last_n / keep_best_n = ints >= 0, got \{'keep_last_n': -1\}"):
        checkpoints.CleanupPolicy.from_config_value({"keep_last_n": -1})


def test_delete_epoch_and_old_optimizer_files(tmp_path):
    prefix = str(tmp_path / "epoch")
    for epoch in (1, 2, 3, 4):
        (tmp_path / f"epoch.00{epoch}.pt").write_bytes(b"")
        (tmp_path / f"epoch.00{epoch}.opt.pt").write_bytes(b"")
    checkpoints.delete_epoch(prefix, 3)
    checkpoints.delete_old_optimizer_files(prefix)
    assert sorted(os.listdir(tmp_path)) == [
        "epoch.001.pt",
        "epoch.002.opt.pt",
        "epoch.002.pt",
        "epoch.004.opt.pt",
        "epoch.004.pt",
    ]


# --------------------------------------------------------------------------------------------------
# random state


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    seed_all(5)
    np.random.randn()  # a cached gaussian in numpy's state
    random.gauss(0, 1)
    state = get_rng_state()
    expected = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random(), random.gauss(0, 1))
    path = str(tmp_path / "rng.pt")
    checkpoints.save_checkpoint(path, {"rng": state})
    seed_all(99)
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random(), random.gauss(0, 1))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]


def test_derive_seed():
    assert derive_seed(42, 1, 0) == derive_seed(42, 1, 0)
    seeds = {derive_seed(42, epoch, step) for epoch in range(1, 5) for step in (0, 10)} | {derive_seed(1, 1, 0)}
    assert len(seeds) == 9
    assert all(0 <= seed < 2**31 for seed in seeds)
