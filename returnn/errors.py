"""User-facing error types.

Each error means that the *input* is wrong (config, data, files), not the program. ``returnn.__main__.main``
prints them as one line and exits with code 2. Messages say what is wrong, where, and how to fix it.
"""

from __future__ import annotations


class ReturnnError(Exception):
    """Base class of all errors caused by bad user input."""


class ConfigError(ReturnnError):
    """A config file, a config key or a command-line override is wrong."""


class DatasetError(ReturnnError):
    """A dataset definition or a data file is wrong."""


class CheckpointError(ReturnnError):
    """A checkpoint is missing, unreadable or does not match the model."""


class StepFunctionError(ReturnnError):
    """A user step function (``get_model``, ``train_step``, ``forward_step``, ...) broke its contract."""


class TrainingError(ReturnnError):
    """Training cannot go on (e.g. the loss became nan or inf)."""
