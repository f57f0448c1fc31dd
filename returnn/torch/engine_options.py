"""The engine's own options (``num_epochs``, ``save_interval``, the datasets, ...), read from the config once.

Options of the parts the engine uses are read where those parts are built: the optimizer and gradient options in
:mod:`returnn.torch.updater`, the checkpoint to start from in :mod:`returnn.torch.model_loading`, the data pipeline
in :mod:`returnn.torch.data.options`, the learning rate in :mod:`returnn.learning_rate_control`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from returnn.config import Config, declare_options
from returnn.errors import ConfigError
from returnn.torch import checkpoints, distributed
from returnn.torch.device import amp_dtype_from_config, resolve_device
from returnn.torch.model_loading import path_option

__all__ = ["EngineOptions"]

declare_options(
    "Training",
    {
        "train": (None, "The training dataset: a dataset dict {'class': ..., ...}, a Dataset, or a callable."),
        "dev": (None, "Dataset evaluated after each epoch (scores dev_loss_<name>); optional."),
        "eval_datasets": (None, "More datasets evaluated after each epoch: {name: dataset} (scores <name>_loss_...)."),
        "forward": (None, "The dataset of task forward."),
        "eval": (
            None,
            "Not used: datasets to evaluate go into dev and eval_datasets (a config setting eval is stopped).",
        ),
        "batching": (
            None,
            "RETURNN's TensorFlow-era default seq_ordering of the train dataset (e.g. 'random'), used where the "
            "dataset sets none.",
        ),
        "window": (
            1,
            "RETURNN's window for every dataset of the config that sets none (HDFDataset: each frame of data "
            "concatenated with its neighbours).",
        ),
        "num_epochs": (5, "Train up to this epoch."),
        "save_interval": (1, "Save a checkpoint every N epochs (and after the last one)."),
        "random_seed": (42, "Seed of the model initialization and of each epoch's random numbers."),
        "stop_on_nonfinite_train_score": (
            True,
            "Stop training when a loss becomes nan or inf (nothing from that state is saved).",
        ),
        "cleanup_old_models": (
            None,
            "Delete old checkpoints after each epoch: True, or {'keep': [epochs], 'keep_last_n': 2, 'keep_best_n': 4}.",
        ),
    },
)

declare_options(
    "Checkpoints",
    {"load_ignore_missing_vars": (False, "Parameters missing in a loaded checkpoint keep their initialization.")},
)


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """The engine's own options, read from the config once.

    :param device: this process's torch device ("cpu", "cuda", "cuda:N")
    :param amp_dtype: the autocast dtype, or None without AMP
    :param model_prefix: the config key ``model``: checkpoints are ``<model_prefix>.<epoch>.pt``
    :param datasets: the dataset definitions by name: train, dev, forward and the ``eval_datasets`` entries
    :param eval_names: the datasets evaluated after each epoch, dev first
    :param train_seq_ordering: the config key ``batching``: the train dataset's seq_ordering where it sets none
    :param window: the config key ``window``: the datasets' window where they set none
    :param cleanup: the ``cleanup_old_models`` policy, or None without cleanup
    """

    device: str
    amp_dtype: torch.dtype | None
    model_prefix: str | None
    num_epochs: int
    save_interval: int
    random_seed: int
    stop_on_nonfinite_train_score: bool
    load_ignore_missing_vars: bool
    cleanup: checkpoints.CleanupPolicy | None
    datasets: dict[str, Any]
    eval_names: tuple[str, ...]
    distributed: distributed.DistributedOptions
    train_seq_ordering: str | None = None
    window: int = 1

    @classmethod
    def from_config(cls, config: Config) -> EngineOptions:
        """Read and check the options.

        :raise ConfigError: a bad value, or the dataset key ``eval`` (which this trainer does not use)
        """
        num_epochs = config.int("num_epochs")
        save_interval = config.int("save_interval")
        window = config.int("window")
        for key, value in (("num_epochs", num_epochs), ("save_interval", save_interval), ("window", window)):
            if value is None or value < 1:
                raise ConfigError(f"config key {key!r}: expected an int >= 1, got {value!r}")
        model_prefix = path_option(config, "model")
        datasets, eval_names = _dataset_definitions(config)
        return cls(
            device=distributed.process_device(resolve_device(config.value("device"))),
            amp_dtype=amp_dtype_from_config(config),
            model_prefix=model_prefix,
            num_epochs=num_epochs,
            save_interval=save_interval,
            random_seed=config.int("random_seed"),
            stop_on_nonfinite_train_score=config.bool("stop_on_nonfinite_train_score"),
            load_ignore_missing_vars=config.bool("load_ignore_missing_vars"),
            cleanup=checkpoints.CleanupPolicy.from_config_value(config.bool_or_other("cleanup_old_models")),
            datasets=datasets,
            eval_names=eval_names,
            distributed=distributed.DistributedOptions.from_config(config),
            train_seq_ordering=config.value("batching"),
            window=window,
        )

    def require_model_prefix(self, what: str) -> str:
        """The checkpoint prefix (config key ``model``); a :class:`ConfigError` if it is not set.

        :param what: what needs it (for the message), e.g. "task 'train'"
        """
        if not self.model_prefix:
            raise ConfigError(
                f"{what} needs the config key 'model': the checkpoint prefix, e.g. model = 'models/epoch' "
                "(files models/epoch.001.pt, ...)"
            )
        return self.model_prefix

    def dataset_defaults(self, name: str) -> dict[str, Any]:
        """The defaults that the engine's options give the options of dataset ``name``: its name, ``batching`` as
        the train dataset's ``seq_ordering``, and ``window``."""
        defaults: dict[str, Any] = {"name": name}
        if name == "train" and self.train_seq_ordering:
            defaults["seq_ordering"] = self.train_seq_ordering
        if self.window > 1:
            defaults["window"] = self.window
        return defaults


def _dataset_definitions(config: Config) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The dataset definitions by name (train, dev, the eval_datasets entries, forward), and the names evaluated
    after each epoch (dev first)."""
    if config.typed_value("eval", None) is not None:
        raise ConfigError(
            "config key 'eval': this trainer evaluates the datasets in 'dev' and 'eval_datasets'; "
            "write eval_datasets = {'eval': ...} instead"
        )
    definitions = {name: config.typed_value(name) for name in ("train", "dev", "forward")}
    # an empty dict (``dev = {}``, as older configs write it) means no dataset
    definitions = {name: value for name, value in definitions.items() if value is not None and value != {}}
    eval_names = ["dev"] if "dev" in definitions else []
    eval_datasets = config.typed_value("eval_datasets") or {}
    if not isinstance(eval_datasets, dict):
        raise ConfigError(f"config key 'eval_datasets': expected a dict {{name: dataset}}, got {eval_datasets!r}")
    for name, definition in eval_datasets.items():
        if name in ("train", "forward", *eval_names):
            raise ConfigError(f"config key 'eval_datasets': the name {name!r} is taken; choose another one")
        definitions[name] = definition
        eval_names.append(name)
    return definitions, tuple(eval_names)
