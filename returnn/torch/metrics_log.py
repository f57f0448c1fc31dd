"""Metrics loggers: a CSV file (``metrics_csv``) and TensorBoard (``tensorboard_dir``), written by the main process.

Both get, every ``metrics_log_interval_steps`` train steps, the step's losses (``loss_<name>``), learning rate and
gradient norm, and after each epoch its scores (``train_loss_<name>``, ``dev_loss_<name>``, ...) and learning rate.

CSV: one row per value, ``kind,epoch,global_step,key,value`` (``kind`` is ``step`` or ``epoch``), so that keys may
come and go; read it with ``csv.DictReader`` or ``pandas.read_csv``. TensorBoard: scalars ``step/<key>`` at the global
step, ``epoch/<key>`` at the epoch (needs the optional ``tensorboard`` package).

Resume: a restarted training continues after its checkpoint (an epoch's, or a mid-epoch one), so what was logged
after that point will be logged again. At start-up the CSV file drops the rows of later steps and of the epochs to
come, and TensorBoard's writer purges events after the resume step; so no step is missing or doubled.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable
from typing import Any

from returnn.config import Config, declare_options
from returnn.errors import ConfigError
from returnn.torch import distributed

__all__ = ["MetricsLog", "read_metrics_csv"]

logger = logging.getLogger(__name__)

declare_options(
    "Logging",
    {
        "metrics_csv": (None, "Write step and epoch metrics to this CSV file (rows kind,epoch,global_step,key,value)."),
        "tensorboard_dir": (None, "Write step and epoch metrics as TensorBoard events into this directory."),
        "metrics_log_interval_steps": (100, "Log the step metrics (CSV, TensorBoard) every N train steps."),
    },
)

CSV_FIELDS = ("kind", "epoch", "global_step", "key", "value")


def read_metrics_csv(path: str) -> list[dict[str, Any]]:
    """The rows of a metrics CSV file, with ``epoch`` and ``global_step`` as ints and ``value`` as float."""
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {**row, "epoch": int(row["epoch"]), "global_step": int(row["global_step"]), "value": float(row["value"])}
            for row in csv.DictReader(f)
        ]


class MetricsLog:
    """The configured loggers (none, CSV, TensorBoard or both); a context manager that closes them.

    :param csv_path: the CSV file, or None
    :param tensorboard_dir: the TensorBoard directory, or None
    :param interval_steps: log step metrics every N steps
    :param resume_step: the global step training continues after (rows and events after it are dropped)
    :param first_epoch: the first epoch this run trains (its and later epochs' rows are dropped)
    """

    def __init__(
        self,
        *,
        csv_path: str | None = None,
        tensorboard_dir: str | None = None,
        interval_steps: int = 100,
        resume_step: int = 0,
        first_epoch: int = 1,
    ):
        self.interval_steps = interval_steps
        self._csv_file = None
        self._csv = None
        self._tensorboard = None
        self._logged_epochs: set[int] = set()  # epochs with rows in the CSV file
        if not distributed.is_main_process():
            return
        if csv_path:
            self._open_csv(csv_path, resume_step, first_epoch)
        if tensorboard_dir:
            self._tensorboard = _summary_writer(tensorboard_dir, purge_step=resume_step + 1 if resume_step else None)

    @classmethod
    def from_config(cls, config: Config, *, resume_step: int, first_epoch: int) -> MetricsLog:
        """The loggers of ``metrics_csv``, ``tensorboard_dir`` and ``metrics_log_interval_steps``."""
        interval = config.typed_value("metrics_log_interval_steps")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ConfigError(f"config key 'metrics_log_interval_steps': expected an int >= 1, got {interval!r}")
        paths = {}
        for key in ("metrics_csv", "tensorboard_dir"):
            value = config.typed_value(key)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ConfigError(f"config key {key!r}: expected a path, got {value!r}")
            paths[key] = os.fspath(value) if value else None
        return cls(
            csv_path=paths["metrics_csv"],
            tensorboard_dir=paths["tensorboard_dir"],
            interval_steps=interval,
            resume_step=resume_step,
            first_epoch=first_epoch,
        )

    def _open_csv(self, path: str, resume_step: int, first_epoch: int) -> None:
        kept: list[dict[str, Any]] = []
        if os.path.exists(path):
            kept = [
                row
                for row in read_metrics_csv(path)
                if row["global_step"] <= resume_step and not (row["kind"] == "epoch" and row["epoch"] >= first_epoch)
            ]
        self._logged_epochs = {row["epoch"] for row in kept if row["kind"] == "epoch"}
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)

        def write(f: Any) -> None:
            writer = csv.DictWriter(f, CSV_FIELDS)
            writer.writeheader()
            writer.writerows({**row, "value": repr(row["value"])} for row in kept)

        distributed.write_file_atomic(path, write)  # the rows kept, then appended to
        self._csv_file = open(path, "a", newline="", encoding="utf-8")  # closed by close()
        self._csv = csv.writer(self._csv_file)

    @property
    def enabled(self) -> bool:
        """Whether any logger is on (in this process)."""
        return self._csv is not None or self._tensorboard is not None

    def wants_step(self, global_step: int) -> bool:
        """Whether the step with this number (the steps done so far, it included) is logged."""
        return self.enabled and global_step % self.interval_steps == 0

    def step(self, epoch: int, global_step: int, values: dict[str, float | None]) -> None:
        """Log a train step's values (if :meth:`wants_step`); None values are left out.

        :param global_step: the steps done so far, this one included
        """
        if self.wants_step(global_step):
            self._write("step", epoch, global_step, values.items())

    def epoch(self, epoch: int, global_step: int, values: dict[str, float | None]) -> None:
        """Log an epoch's values (scores, learning rate); written to disk now."""
        if self.enabled:
            self._write("epoch", epoch, global_step, values.items())
            self._logged_epochs.add(epoch)
            self.flush()

    def epoch_if_missing(self, epoch: int, global_step: int, values: dict[str, float | None]) -> None:
        """Log an epoch that the CSV file lacks: one whose evaluation a restart completed (the interrupted run
        stopped before logging it). Without a CSV file nothing is known, and nothing is logged."""
        if self._csv is not None and epoch not in self._logged_epochs:
            self.epoch(epoch, global_step, values)

    def flush(self) -> None:
        """Write what is buffered to disk (with every checkpoint, so that a killed run has logged up to it)."""
        if self._csv_file is not None:
            self._csv_file.flush()
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def _write(self, kind: str, epoch: int, global_step: int, items: Iterable[tuple[str, float | None]]) -> None:
        for key, value in items:
            if value is None:
                continue
            if self._csv is not None:
                self._csv.writerow((kind, epoch, global_step, key, repr(float(value))))
            if self._tensorboard is not None:
                self._tensorboard.add_scalar(f"{kind}/{key}", value, epoch if kind == "epoch" else global_step)

    def close(self) -> None:
        """Flush and close the loggers."""
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = self._csv = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _summary_writer(log_dir: str, *, purge_step: int | None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "config key 'tensorboard_dir' needs the package tensorboard: pip install tensorboard (or remove the key)"
        ) from None
    return SummaryWriter(log_dir=log_dir, purge_step=purge_step)
