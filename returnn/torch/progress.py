"""What a training shows during an epoch: the progress line or bar, the per-step line, and the epoch's resource line.

- Default verbosity (3): every ``log_progress_interval_sec`` seconds one plain line (never a carriage-return
  stream, so log files and pipelines stay readable)::

      epoch=2 progress steps=120 seqs=960/3200 (30.0%) loss_ce=1.234 lr=0.001 seqs/s=55.1 frames/s=5510 eta=40.7s

  When stderr is a terminal and the optional package ``tqdm`` is installed, a live bar on stderr replaces those
  lines (not at verbosity 5, whose per-step lines would tear it).
- Verbosity 5: one line per step (``epoch=... step=... global_step=... loss_<name>=... seqs=... step_time=... eta=...
  grad_norm=... lr=... data_time=... peak_mem=...``; ``grad_norm`` only in steps that update, ``nan`` / ``inf`` in
  an update skipped for it, ``data_time`` the step's wait for its batch).
- After the epoch's train steps (verbosity 3): ``epoch=... part=train steps=... seqs=... grad_norm=<mean>
  skipped_updates=... peak_mem=...MB data_time=...s compute_time=...s``; the gradient norm is the global norm before
  clipping, peak memory the CUDA maximum allocated on a GPU (reset every epoch), else the process's peak RSS.

The loss shown is the running mean of the step losses since the epoch started; ``data_time`` is the time the loop
waited for batches, ``compute_time`` the rest of the steps.
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from returnn.config import Config, declare_options
from returnn.errors import ConfigError, DatasetError
from returnn.torch import distributed
from returnn.torch.metrics_log import MetricsLog

if TYPE_CHECKING:
    from returnn.datasets import Dataset
    from returnn.torch.data.loader import BatchLoader

__all__ = ["Progress", "ProgressOptions", "expected_num_seqs", "peak_memory_mb"]

logger = logging.getLogger(__name__)

declare_options(
    "Logging",
    {
        "log_progress_interval_sec": (
            60.0,
            "During an epoch, a progress line (steps, sequences, loss, learning rate, throughput, ETA) every N "
            "seconds at the default verbosity; a live bar instead on a terminal with tqdm installed. 0: none.",
        ),
    },
)


class ProgressOptions:
    """How progress is shown (see the module doc)."""

    def __init__(self, interval_sec: float = 60.0, *, bar: bool | None = None):
        """
        :param interval_sec: seconds between progress lines; 0 turns them (and the bar) off
        :param bar: use a tqdm bar; None: when stderr is a terminal and tqdm is installed
        """
        self.interval_sec = interval_sec
        self.bar = _tqdm_available() if bar is None else bar

    @classmethod
    def from_config(cls, config: Config) -> ProgressOptions:
        """From ``log_progress_interval_sec``."""
        value = config.typed_value("log_progress_interval_sec")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"config key 'log_progress_interval_sec': expected a number >= 0, got {value!r}")
        return cls(float(value))


def _tqdm_available() -> bool:
    if not sys.stderr.isatty():
        return False
    try:
        import tqdm  # noqa: F401  (optional: pip install tqdm)
    except ImportError:
        return False
    return True


def peak_memory_mb(device: str) -> float:
    """Peak memory in MB: CUDA's maximum allocated on a GPU, else the process's peak resident set size."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def expected_num_seqs(dataset: Dataset, data_loader: BatchLoader) -> int | None:
    """Sequences expected in this process in the coming epoch: as many as in the last one, else the corpus size per
    partition and process."""
    if data_loader.last_epoch_stats is not None:
        return data_loader.last_epoch_stats.num_seqs
    try:
        return -(-dataset.get_total_num_seqs() // (max(1, dataset.partition_epoch) * distributed.world_size()))
    except (DatasetError, AttributeError, NotImplementedError):
        return dataset.estimated_num_seqs


class Progress:
    """The progress of one epoch's train steps (see the module doc).

    :param expected_num_seqs: the sequences expected in this process's epoch (for percentage and ETA), if known
    :param clock: the time source (tests pass their own)
    :param metrics_log: gets the step metrics
    """

    def __init__(
        self,
        epoch: int,
        expected_num_seqs: int | None,
        options: ProgressOptions | None = None,
        *,
        device: str = "cpu",
        clock: Callable[[], float] = time.monotonic,
        metrics_log: MetricsLog | None = None,
    ):
        self.epoch = epoch
        self.expected_num_seqs = expected_num_seqs
        self.options = options or ProgressOptions(bar=False)
        self.device = device
        self.metrics_log = metrics_log
        self.per_step = logger.isEnabledFor(logging.DEBUG)
        self.num_seqs = 0
        self.num_steps = 0
        self.num_frames = 0
        self.data_time = 0.0
        self._last_data_time = 0.0  # data_time at the last per-step line
        self.loss_sums: dict[str, float] = {}
        self._loss_steps = 0  # steps in loss_sums (a resumed epoch starts them anew)
        self.grad_norm_sum = 0.0
        self.num_grad_norms = 0
        self._clock = clock
        self.start_time = self.last_time = self._last_line_time = clock()
        show = self.options.interval_sec > 0 and distributed.is_main_process()
        self._bar = _make_bar(epoch, expected_num_seqs) if show and self.options.bar and not self.per_step else None
        self._lines = show and self._bar is None
        if torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats(torch.device(device))

    def timed(self, batches: Iterable[Any]) -> Iterator[Any]:
        """``batches``, counting the time spent waiting for each as data time."""
        iterator = iter(batches)
        while True:
            start = self._clock()
            batch = next(iterator, _END)
            self.data_time += self._clock() - start
            if batch is _END:
                return
            yield batch

    def step(
        self,
        global_step: int,
        step_losses: dict[str, float],
        data: dict[str, Any],
        *,
        learning_rate: float | None = None,
        grad_norm: float | None = None,
    ) -> None:
        """Count a finished step and show what is due.

        :param global_step: the steps done so far in the run, this one included
        :param step_losses: the step's normalized losses by name
        :param data: the step's batch (for its numbers of sequences and frames)
        :param grad_norm: the gradient norm of the update of this step, if it made one
        """
        num_seqs = len(data.get("seq_tag", ()))
        self.num_steps += 1
        self.num_seqs += num_seqs
        self.num_frames += _num_frames(data)
        for name, value in step_losses.items():
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + value
        self._loss_steps += 1
        if grad_norm is not None and math.isfinite(grad_norm):
            self.grad_norm_sum += grad_norm
            self.num_grad_norms += 1
        if self.metrics_log is not None and self.metrics_log.wants_step(global_step):
            values = {f"loss_{name}": value for name, value in step_losses.items()}
            self.metrics_log.step(
                self.epoch, global_step, {**values, "learning_rate": learning_rate, "grad_norm": grad_norm}
            )
        now = self._clock()
        if self.per_step:
            losses = " ".join(f"loss_{name}={value:.6g}" for name, value in step_losses.items())
            extra = (f" grad_norm={grad_norm:.6g}" if grad_norm is not None else "") + (
                f" lr={learning_rate:.6g}" if learning_rate is not None else ""
            )
            logger.debug(
                f"epoch={self.epoch} step={self.num_steps} global_step={global_step} {losses} seqs={num_seqs} "
                f"step_time={now - self.last_time:.4f}s eta={self._eta(now)}{extra} "
                f"data_time={self.data_time - self._last_data_time:.4f}s peak_mem={peak_memory_mb(self.device):.0f}MB"
            )
            self._last_data_time = self.data_time
        self.last_time = now
        if self._bar is not None:
            self._bar.update(num_seqs)
            self._bar.set_postfix_str(self._fields(learning_rate, with_counts=False), refresh=False)
        elif self._lines and now - self._last_line_time >= self.options.interval_sec:
            self._last_line_time = now
            logger.info(f"epoch={self.epoch} progress {self._fields(learning_rate, with_counts=True)}")

    def epoch_fraction(self) -> float:
        """The share of the epoch's expected sequences done so far (0 when the epoch's size is not known)."""
        if not self.expected_num_seqs:
            return 0.0
        return min(1.0, self.num_seqs / self.expected_num_seqs)

    def close(self) -> None:
        """The epoch's steps are done (closes the bar)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def epoch_summary(self, *, num_steps: int, num_seqs: int, skipped_updates: int) -> str:
        """The epoch's resource line (see the module doc).

        :param num_steps: the steps of the epoch with data (over all processes)
        :param num_seqs: the sequences of the epoch (over all processes)
        :param skipped_updates: the updates skipped in the epoch (non-finite gradient norm)
        """
        elapsed = self._clock() - self.start_time
        grad_norm = f"{self.grad_norm_sum / self.num_grad_norms:.6g}" if self.num_grad_norms else "n/a"
        return (
            f"epoch={self.epoch} part=train steps={num_steps} seqs={num_seqs} grad_norm={grad_norm} "
            f"skipped_updates={skipped_updates} peak_mem={peak_memory_mb(self.device):.0f}MB "
            f"data_time={self.data_time:.1f}s compute_time={max(elapsed - self.data_time, 0.0):.1f}s"
        )

    def _fields(self, learning_rate: float | None, *, with_counts: bool) -> str:
        now = self._clock()
        elapsed = max(now - self.start_time, 1e-9)
        parts = []
        if with_counts:
            total = f"/{self.expected_num_seqs}" if self.expected_num_seqs else ""
            percent = f" ({100 * self.num_seqs / self.expected_num_seqs:.1f}%)" if self.expected_num_seqs else ""
            parts.append(f"steps={self.num_steps} seqs={self.num_seqs}{total}{percent}")
        parts += [f"loss_{name}={value / self._loss_steps:.4g}" for name, value in self.loss_sums.items()]
        if learning_rate is not None:
            parts.append(f"lr={learning_rate:.4g}")
        parts.append(f"seqs/s={self.num_seqs / elapsed:.1f} frames/s={self.num_frames / elapsed:.0f}")
        if with_counts:
            parts.append(f"eta={self._eta(now)}")
        return " ".join(parts)

    def _eta(self, now: float) -> str:
        if not (self.expected_num_seqs and self.num_seqs):
            return "?"
        remaining = max(self.expected_num_seqs - self.num_seqs, 0)
        return f"{(now - self.start_time) * remaining / self.num_seqs:.1f}s"


_END = object()


def _num_frames(data: dict[str, Any]) -> int:
    """Frames of the batch: the sum of the sequence lengths of its first data key with lengths ("data" first)."""
    keys = ["data:size1"] + [key for key in data if key.endswith(":size1")]
    for key in keys:
        lengths = data.get(key)
        if isinstance(lengths, torch.Tensor):
            return int(lengths.sum())
    return 0


def _make_bar(epoch: int, expected_num_seqs: int | None) -> Any:
    from tqdm import tqdm  # optional: checked by _tqdm_available

    return tqdm(total=expected_num_seqs, unit="seq", desc=f"epoch {epoch}", file=sys.stderr, leave=False)
