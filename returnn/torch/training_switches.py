"""Switches for how long and how a training runs: early stopping, debug limits, ``fast_dev_run``, ``torch_compile``.

- ``early_stopping = {"key": "dev_loss_ce", "patience": 3, "min_delta": 0.0}``: before each epoch, training ends
  (normally, exit code 0) when the score has not improved on its best by more than ``min_delta`` in the last
  ``patience`` epochs. Decided from the learning_rates file, so a restarted training decides the same.
- ``max_steps_per_epoch`` / ``max_seqs_per_epoch``: debug limits; each epoch's training ends after that many steps
  or sequences (in each process).
- ``fast_dev_run = True`` (or N): one epoch of N (default 2) train steps and N steps of each evaluated dataset, with
  the checkpoints and the learning_rates file in a temporary directory that is deleted afterwards: nothing is kept,
  and a real training of the same config is not affected. A quick check that a config runs end to end.
- ``torch_compile = True`` (or ``torch.compile`` keyword arguments, e.g. ``{"backend": "inductor", "mode":
  "max-autotune"}``): the model's ``forward`` is compiled; where compiling fails (an unsupported construct, no C
  compiler), it falls back to the uncompiled forward with one warning. Parameter names stay as they are.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from returnn.config import Config, declare_options
from returnn.errors import ConfigError

__all__ = ["EarlyStopping", "TrainingSwitches", "compile_model"]

logger = logging.getLogger(__name__)

declare_options(
    "Training switches",
    {
        "early_stopping": (
            None,
            "{'key': 'dev_loss_ce', 'patience': 3, 'min_delta': 0.0}: end training when the score has not improved by "
            "more than min_delta for patience epochs.",
        ),
        "max_steps_per_epoch": (None, "Debug limit: end each epoch's training after N steps."),
        "max_seqs_per_epoch": (None, "Debug limit: end each epoch's training after N sequences."),
        "fast_dev_run": (
            False,
            "True or N: one epoch of N (default 2) train and evaluation steps, outputs in a temporary directory "
            "that is deleted (nothing kept).",
        ),
        "torch_compile": (
            False,
            "True or torch.compile keyword arguments: compile the model's forward (falls back with a warning).",
        ),
    },
)


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """End training when ``key`` has not improved by more than ``min_delta`` for ``patience`` epochs."""

    key: str
    patience: int = 3
    min_delta: float = 0.0

    @classmethod
    def from_config_value(cls, value: Any) -> EarlyStopping | None:
        """From ``early_stopping`` (None: off)."""
        if value is None:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("key"), str):
            raise ConfigError(
                f"config key 'early_stopping': expected {{'key': 'dev_loss_ce', 'patience': 3, 'min_delta': 0.0}}, "
                f"got {value!r}"
            )
        unknown = sorted(set(value) - {"key", "patience", "min_delta"})
        if unknown:
            raise ConfigError(
                f"config key 'early_stopping': unknown option(s) {unknown}; choose from: key, patience, min_delta"
            )
        stopping = cls(value["key"], int(value.get("patience", 3)), float(value.get("min_delta", 0.0)))
        if stopping.patience < 1 or stopping.min_delta < 0:
            raise ConfigError(f"config key 'early_stopping': expected patience >= 1 and min_delta >= 0, got {value!r}")
        return stopping

    def reason(self, scores: dict[int, dict[str, float]]) -> str | None:
        """Why training ends now, or None.

        :param scores: per epoch the scores of the learning_rates file
        """
        values = [(epoch, scores[epoch][self.key]) for epoch in sorted(scores) if self.key in scores[epoch]]
        values = [(epoch, value) for epoch, value in values if not math.isnan(value)]
        if len(values) <= self.patience:
            return None
        best_before = min(value for _, value in values[: -self.patience])
        if min(value for _, value in values[-self.patience :]) < best_before - self.min_delta:
            return None
        best_epoch = min(values, key=lambda item: item[1])[0]
        return (
            f"early_stopping: {self.key} has not improved by more than {self.min_delta:g} in the last "
            f"{self.patience} epochs (best {best_before:.6g}, epoch {best_epoch})"
        )


def _positive_int(config: Config, key: str) -> int | None:
    value = config.typed_value(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"config key {key!r}: expected an int >= 1, got {value!r}")
    return value


class TrainingSwitches:
    """The options of this module, read from the config once."""

    def __init__(self, config: Config):
        self.early_stopping = EarlyStopping.from_config_value(config.typed_value("early_stopping"))
        self.max_steps_per_epoch = _positive_int(config, "max_steps_per_epoch")
        self.max_seqs_per_epoch = _positive_int(config, "max_seqs_per_epoch")
        self.max_eval_steps: int | None = None
        compile_options = config.typed_value("torch_compile")
        if compile_options not in (None, False, True) and not isinstance(compile_options, dict):
            raise ConfigError(
                f"config key 'torch_compile': expected True/False or a dict of torch.compile arguments, got "
                f"{compile_options!r}"
            )
        self.torch_compile: dict[str, Any] | None = (
            None if compile_options in (None, False) else ({} if compile_options is True else dict(compile_options))
        )
        self._temporary_dir: Any = None  # fast_dev_run's, deleted with this object or at exit
        fast_dev_run = config.typed_value("fast_dev_run")
        if fast_dev_run not in (None, False):
            self._set_up_fast_dev_run(config, 2 if fast_dev_run is True else fast_dev_run)

    def _set_up_fast_dev_run(self, config: Config, num_steps: Any) -> None:
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ConfigError(f"config key 'fast_dev_run': expected True or an int >= 1, got {num_steps!r}")
        directory = tempfile.mkdtemp(prefix="returnn-fast-dev-run-")
        self._temporary_dir = weakref.finalize(self, shutil.rmtree, directory, ignore_errors=True)
        config.update(
            {
                "model": os.path.join(directory, "epoch"),
                "learning_rate_file": os.path.join(directory, "learning_rates"),
                "num_epochs": 1,
                "metrics_csv": None,
                "tensorboard_dir": None,
                "checkpoint_interval_steps": None,
                "checkpoint_interval_minutes": None,
            }
        )
        for key in ("load", "load_epoch", "start_epoch", "import_model_train_epoch1"):
            if config.typed_value(key, None) not in (None, "auto"):
                logger.warning(f"fast_dev_run: {key} is used as set; nothing is written next to it")
        self.max_steps_per_epoch = num_steps
        self.max_eval_steps = num_steps
        logger.info(f"fast_dev_run: {num_steps} train and evaluation steps, outputs in {directory} (deleted after)")

    def early_stop_reason(self, epoch_data: dict[int, Any]) -> str | None:
        """Why training ends before the next epoch (``early_stopping``), or None.

        :param epoch_data: the learning_rates file's :class:`~returnn.learning_rate_file.EpochData` by epoch
        """
        if self.early_stopping is None:
            return None
        return self.early_stopping.reason({epoch: data.scores for epoch, data in epoch_data.items()})

    def train_batches(self, batches: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        """An epoch's train batches, within ``max_steps_per_epoch`` / ``max_seqs_per_epoch``."""
        if self.max_steps_per_epoch is not None:
            batches = itertools.islice(batches, self.max_steps_per_epoch)
        if self.max_seqs_per_epoch is not None:
            batches = _up_to_seqs(batches, self.max_seqs_per_epoch)
        return batches

    def eval_batches(self, batches: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        """A dataset's evaluation batches (limited by ``fast_dev_run``)."""
        return batches if self.max_eval_steps is None else itertools.islice(batches, self.max_eval_steps)


def _up_to_seqs(batches: Iterable[dict[str, Any]], max_seqs: int) -> Iterator[dict[str, Any]]:
    num_seqs = 0
    for batch in batches:
        yield batch
        num_seqs += len(batch.get("seq_tag", ()))
        if num_seqs >= max_seqs:
            return


def compile_model(model: torch.nn.Module, options: dict[str, Any]) -> torch.nn.Module:
    """Replace ``model.forward`` by its ``torch.compile`` version, which falls back to the original forward with a
    warning when compiling fails. The module itself (parameters, their names, ``state_dict``) stays the same."""
    eager_forward = model.forward
    compiled_forward = torch.compile(eager_forward, **options)
    failed: list[BaseException] = []

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not failed:
            try:
                return compiled_forward(*args, **kwargs)
            except (torch._dynamo.exc.BackendCompilerFailed, torch._dynamo.exc.Unsupported) as exc:
                failed.append(exc)
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                logger.warning(
                    f"torch_compile: compiling {type(model).__name__}.forward failed ({first_line}); running it "
                    "uncompiled"
                )
        return eager_forward(*args, **kwargs)

    model.forward = forward
    return model
