"""Fixtures of the engine tests: a tiny frame classifier on generated data."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

from returnn.config import Config
from returnn.torch import context

TRAIN_DATA = {
    "class": "DummyDataset",
    "input_dim": 5,
    "output_dim": 3,
    "num_seqs": 12,
    "seq_len": 6,
    "seq_ordering": "random",
}
DEV_DATA = {"class": "DummyDataset", "input_dim": 5, "output_dim": 3, "num_seqs": 4, "seq_len": 5}


class FrameClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(5, 8)
        self.dropout = torch.nn.Dropout(0.2)  # draws random numbers, so resuming must restore the random state
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(torch.tanh(self.hidden(x))))


def get_model(*, epoch: int, step: int, **kwargs: Any) -> torch.nn.Module:
    return FrameClassifier()


def train_step(*, model: torch.nn.Module, data: dict[str, Any], run_ctx: context.RunCtx, **kwargs: Any) -> None:
    logits = model(data["data"].float())
    mask = torch.arange(logits.shape[1])[None, :] < data["data:size1"][:, None]
    ce = torch.nn.functional.cross_entropy(logits[mask], data["classes"][mask].long(), reduction="sum")
    run_ctx.mark_as_loss(ce, "ce", inv_norm_factor=mask.sum())


@pytest.fixture(autouse=True)
def _no_run_ctx_left():
    """Each test starts without a current run context and leaves none behind."""
    context.set_run_ctx(None)
    yield
    context.set_run_ctx(None)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif isinstance(a[key], dict):
            _assert_same_state(a[key], b[key])
        else:
            assert a[key] == b[key], key


@pytest.fixture
def assert_same_state() -> Callable[[dict, dict], None]:
    """Asserts that two checkpoint contents (or state dicts) are equal: the same keys, tensors equal bit for bit."""
    return _assert_same_state


@pytest.fixture
def make_config(tmp_path) -> Callable[..., Config]:
    """A training config in ``tmp_path``; keyword arguments override its keys (None removes a key).

    ``run_dir="x"`` puts the checkpoints (``x/epoch.NNN.pt``) and the learning_rates file into ``tmp_path / "x"``.
    """

    def make(run_dir: str | None = None, **overrides: Any) -> Config:
        items: dict[str, Any] = dict(
            get_model=get_model,
            train_step=train_step,
            model=os.path.join(tmp_path, run_dir, "epoch") if run_dir else os.path.join(tmp_path, "models", "epoch"),
            learning_rate_file=os.path.join(tmp_path, run_dir or "", "learning_rates"),
            num_epochs=2,
            train=dict(TRAIN_DATA),
            dev=dict(DEV_DATA),
            optimizer={"class": "adam"},
            learning_rate=0.01,
            batch_size=20,
            device="cpu",
            num_workers_per_gpu=0,
        )
        items.update(overrides)
        return Config({key: value for key, value in items.items() if value is not None})

    return make
