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


class RunInterrupted(Exception):
    """Training stopped early on purpose (SIGTERM / SIGUSR1, ``max_wall_time``, too little time left in the cluster
    job), after writing what a restart resumes from. Not an error: ``returnn.__main__.main`` prints the message as one
    line and exits with :data:`EXIT_INTERRUPTED`, so that scripts can tell it from a crash and start the same command
    again."""


EXIT_INTERRUPTED = 75  # EX_TEMPFAIL of sysexits.h: "temporary failure, the user is invited to retry"
