"""Long runs: mid-epoch checkpoints, and stopping on a signal or a time limit so that a restart resumes exactly.

Mid-epoch checkpoint: one file, ``<model>.mid_epoch.pt``, rewritten atomically every ``checkpoint_interval_steps``
steps and/or ``checkpoint_interval_minutes`` minutes and when training stops early; it is deleted once the epoch's
``<model>.<epoch>.pt`` is written (so only the newest exists, and pipelines, which read ``<model>.NNN.pt``, never
see it). Content (plain types, ``weights_only`` loadable)::

    {"kind": "mid_epoch", "model": state_dict, "updater": Updater.state_dict(), "epoch": int, "step": int,
     "epoch_start_step": int, "returnn_version": str,
     "processes": [{"num_batches": int, "loss_sums": {name: [Σloss, Σinv_norm]}, "num_seqs": int, "rng": ...}]}

``step`` is the global step after the last finished step; ``processes`` holds, by rank, what differs between the
processes of a training with several (torchrun): the batches of the epoch this process consumed so far, its loss
sums and sequences of the epoch, and its random state. A restart needs the same number of processes.

Training restarted with the same config continues from it when it belongs to the epoch that would be trained next
(or a later one, with ``save_interval`` > 1): the model and optimizer state are loaded, the epoch starts as usual
(seed, learning rate), its first ``num_batches`` batches are read again and skipped, then the random state of the
moment of saving is restored. As the data pipeline's order depends only on the epoch, the resumed run then sees the
same batches and random numbers as one that ran through, and ends bit-identical to it.

With several processes, they agree after every step (one small all_reduce) on whether to save and stop, so all
save and stop at the same step, whichever of them got the signal.

Stopping (each writes the mid-epoch checkpoint, logs one line, and ends the task with :class:`RunInterrupted`, exit
code 75): SIGTERM / SIGUSR1 after the current step (:mod:`returnn.torch.signals`); ``max_wall_time`` after the step
that reaches it; and between epochs ``stop_for_resubmission_when_low_time_left``, when SLURM's job end time
(``SLURM_JOB_END_TIME``) is nearer than the last epoch's duration times ``stop_for_resubmission_safety_factor``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

import returnn
from returnn.config import Config, declare_options
from returnn.errors import CheckpointError, ConfigError, RunInterrupted
from returnn.torch import checkpoints, distributed
from returnn.torch.random_state import get_rng_state, set_rng_state
from returnn.torch.signals import StopSignals

if TYPE_CHECKING:
    from returnn.torch.engine import Engine
    from returnn.torch.model_loading import StartPoint
    from returnn.torch.progress import Progress
    from returnn.torch.scores import LossTotals

logger = logging.getLogger(__name__)

__all__ = ["RunControlOptions", "RunControl", "mid_epoch_filename", "parse_duration"]

declare_options(
    "Long runs",
    {
        "checkpoint_interval_steps": (
            None,
            "Write a mid-epoch checkpoint <model>.mid_epoch.pt every N train steps (only the newest is kept; a "
            "restarted training resumes from it bit-exactly).",
        ),
        "checkpoint_interval_minutes": (None, "Write a mid-epoch checkpoint every N minutes (float)."),
        "max_wall_time": (
            None,
            "Stop training after this much time, with a mid-epoch checkpoint and exit code 75: seconds, or "
            "'HH:MM:SS' / 'D-HH:MM:SS'.",
        ),
        "stop_for_resubmission_when_low_time_left": (
            False,
            "In a SLURM job: before an epoch, stop (exit code 75) when the job's time left (SLURM_JOB_END_TIME) is "
            "less than the last epoch's duration times stop_for_resubmission_safety_factor.",
        ),
        "stop_for_resubmission_safety_factor": (1.2, "See stop_for_resubmission_when_low_time_left."),
    },
)

_GO, _SAVE, _STOP = 0, 1, 2  # after a step: go on, write the mid-epoch checkpoint, write it and stop
_OTHER_PROCESS = "another training process was asked to stop"

_DURATION = re.compile(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)")


def parse_duration(value: Any, *, key: str) -> float | None:
    """Seconds from a number of seconds or SLURM's ``[D-]HH:MM:SS`` / ``MM:SS``; None stays None.

    :param key: the config key, for the error message
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(
            f"config key {key!r}: expected a number of seconds > 0 or 'HH:MM:SS' / 'D-HH:MM:SS', got {value!r}"
        )
    days, hours, minutes, seconds = (float(part or 0) for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _positive(config: Config, key: str, kind: type) -> Any:
    value = config.typed_value(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or kind(value) != value:
        raise ConfigError(f"config key {key!r}: expected a{'n int' if kind is int else ' number'} > 0, got {value!r}")
    return kind(value)


@dataclasses.dataclass(frozen=True)
class RunControlOptions:
    """The options of :class:`RunControl` (see the module doc); times in seconds."""

    checkpoint_interval_steps: int | None = None
    checkpoint_interval_sec: float | None = None
    max_wall_time_sec: float | None = None
    stop_for_resubmission: bool = False
    stop_for_resubmission_safety_factor: float = 1.2

    @classmethod
    def from_config(cls, config: Config) -> RunControlOptions:
        """Read and check the options."""
        minutes = _positive(config, "checkpoint_interval_minutes", float)
        return cls(
            checkpoint_interval_steps=_positive(config, "checkpoint_interval_steps", int),
            checkpoint_interval_sec=minutes * 60 if minutes is not None else None,
            max_wall_time_sec=parse_duration(config.typed_value("max_wall_time"), key="max_wall_time"),
            stop_for_resubmission=bool(config.bool("stop_for_resubmission_when_low_time_left")),
            stop_for_resubmission_safety_factor=_positive(config, "stop_for_resubmission_safety_factor", float),
        )


def mid_epoch_filename(model_prefix: str) -> str:
    """``<model>.mid_epoch.pt``: does not match ``<model>.NNN.pt``, so no epoch-checkpoint reader takes it."""
    return f"{model_prefix}.mid_epoch.pt"


def _slurm_time_left() -> float | None:
    """Seconds until the SLURM job's end (``SLURM_JOB_END_TIME``, Unix time), or None outside SLURM."""
    end = os.environ.get("SLURM_JOB_END_TIME")
    try:
        return float(end) - time.time() if end else None
    except ValueError:
        return None


class RunControl:
    """Mid-epoch checkpoints and early stops during task train (see the module doc). The engine calls
    :meth:`resume_point` once, :meth:`before_epoch` before each epoch, :meth:`resumed_batches` and
    :meth:`after_step` in the step loop, and :meth:`epoch_saved` after the epoch checkpoint."""

    def __init__(self, options: RunControlOptions, clock: Callable[[], float] = time.monotonic):
        self.options = options
        self.signals = StopSignals()
        self._clock = clock
        self._start_time = clock()
        self._last_save_time = self._start_time
        self._epoch_start_time: float | None = None
        self._last_epoch_duration: float | None = None
        self._epoch_start_step = 0
        self._resume: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, config: Config) -> RunControl:
        """From the config's options."""
        return cls(RunControlOptions.from_config(config))

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Around the training: SIGTERM / SIGUSR1 are noted instead of ending the process."""
        self._start_time = self._last_save_time = self._clock()
        with self.signals.installed():
            yield

    # ---------------------------------------------------------------- resume

    def resume_point(self, engine: Engine, start: StartPoint, *, explicit_start: bool) -> int:
        """Load the mid-epoch checkpoint into the engine's model and updater if training continues from it.

        :param start: where training would start without it
        :param explicit_start: ``start_epoch`` / ``load_epoch`` are set: the mid-epoch checkpoint is not used
        :return: the first epoch to train
        """
        path = mid_epoch_filename(engine.options.require_model_prefix("task 'train'"))
        if not os.path.isfile(path):
            return start.epoch
        content = engine.load_checkpoint(path)
        epoch = _int_entry(content, "epoch", path)
        if explicit_start or epoch < start.epoch or epoch > engine.options.num_epochs:
            logger.info(f"{path}: mid-epoch checkpoint of epoch {epoch} not used (training starts at {start.epoch})")
            if not explicit_start:
                distributed.remove_file(path)
            return start.epoch
        fsdp = engine.data_parallel.fsdp if engine.data_parallel is not None else None
        if fsdp is not None:  # the sharded model takes the full tensors through torch's state_dict helpers
            fsdp.load_model_state_dict(content["model"])
        else:
            checkpoints.load_model_state(engine.model, content["model"], source=path)
        engine.updater.load_state_dict(content["updater"], source=path)
        engine.global_step = _int_entry(content, "epoch_start_step", path)
        processes = content.get("processes") or []
        if len(processes) != distributed.world_size():
            raise CheckpointError(
                f"{path} was written by a training with {len(processes)} process(es), this one has "
                f"{distributed.world_size()}; restart it with {len(processes)}, or delete the file to start epoch "
                f"{epoch} from its beginning"
            )
        self._resume = {**content, **processes[distributed.rank()]}
        logger.info(
            f"train: resuming epoch={epoch} after {self._resume['num_batches']} batches "
            f"(global_step={content['step']}) from {path}"
        )
        return epoch

    @property
    def resuming_mid_epoch(self) -> bool:
        """Between :meth:`resume_point` loading a mid-epoch checkpoint and the epoch's batches starting after it."""
        return self._resume is not None

    def resume_step(self, *, default: int) -> int:
        """The global step training continues after: the mid-epoch checkpoint's if it resumes from one."""
        return int(self._resume["step"]) if self._resume is not None else default

    def resumed_batches(
        self, engine: Engine, totals: LossTotals, progress: Progress, batches: Iterable[Any]
    ) -> Iterable[Any]:
        """The epoch's batches; when resuming, without those done before the checkpoint, and with the engine's
        step counter, the epoch's loss sums and the random state as they were then."""
        content, self._resume = self._resume, None
        if content is None:
            return batches
        engine.global_step = int(content["step"])
        totals.sums = {name: [float(v) for v in values] for name, values in content["loss_sums"].items()}
        totals.keys = dict(content.get("score_keys", {}))
        totals.num_steps = progress.num_steps = int(content["num_batches"])
        progress.num_seqs = int(content["num_seqs"])
        return _skip(batches, totals.num_steps, lambda: set_rng_state(content["rng"]), engine.options.model_prefix)

    # ---------------------------------------------------------------- during training

    def before_epoch(self, engine: Engine, epoch: int) -> None:
        """Stop before the epoch when a signal came, or the epoch would not fit into the SLURM job's time left (the
        last epoch is saved already). ``max_wall_time`` is checked after each step only, so every start trains."""
        now = self._clock()
        if self._epoch_start_time is not None:
            self._last_epoch_duration = now - self._epoch_start_time
        self._epoch_start_time = now
        self._epoch_start_step = engine.global_step
        reason = f"received {self.signals.received}" if self.signals.received is not None else None
        if reason is None and self.options.stop_for_resubmission and self._last_epoch_duration is not None:
            time_left = _slurm_time_left()
            needed = self._last_epoch_duration * self.options.stop_for_resubmission_safety_factor
            if time_left is not None and time_left < needed:
                reason = f"the SLURM job has {time_left:.0f}s left, the next epoch needs about {needed:.0f}s"
        if self._agreed(engine, _STOP if reason is not None else _GO) == _STOP:
            raise RunInterrupted(
                f"{reason or _OTHER_PROCESS}: stopped before epoch {epoch}; start the same command again to "
                "continue with it"
            )

    def after_step(self, engine: Engine, totals: LossTotals, progress: Progress) -> None:
        """After a train step: write the mid-epoch checkpoint when due, and stop when asked to."""
        reason = self._stop_reason()
        interval = self.options.checkpoint_interval_steps
        due = (interval is not None and engine.global_step % interval == 0) or (
            self.options.checkpoint_interval_sec is not None
            and self._clock() - self._last_save_time >= self.options.checkpoint_interval_sec
        )
        decision = self._agreed(engine, _STOP if reason is not None else _SAVE if due else _GO)
        if decision == _GO:
            return
        path = self._save(engine, totals, progress)
        if decision == _STOP:
            raise RunInterrupted(
                f"{reason or _OTHER_PROCESS}: stopped in epoch {engine.epoch} after step {totals.num_steps} of it "
                f"(global_step={engine.global_step}), saved {path}; start the same command again to resume from there"
            )

    def during_evaluation(self, engine: Engine, name: str) -> None:
        """After an evaluation step: stop when a signal came (a restart evaluates what is missing). Only with one
        process: with several, each evaluates its own number of batches, so there is no common step to stop at."""
        if self.signals.received is not None and engine.data_parallel is None:
            raise RunInterrupted(
                f"received {self.signals.received}: stopped while evaluating {name!r} in epoch {engine.epoch}; start "
                "the same command again: it evaluates what is missing and goes on"
            )

    def epoch_saved(self, engine: Engine) -> None:
        """The epoch's checkpoint exists: the mid-epoch one is outdated."""
        distributed.remove_file(mid_epoch_filename(engine.options.model_prefix))

    def _stop_reason(self) -> str | None:
        if self.signals.received is not None:
            return f"received {self.signals.received}"
        limit = self.options.max_wall_time_sec
        if limit is not None and self._clock() - self._start_time >= limit:
            return f"max_wall_time={limit:g}s reached"
        return None

    @staticmethod
    def _agreed(engine: Engine, decision: int) -> int:
        """The strongest decision of all processes (a collective with several)."""
        if engine.data_parallel is None:
            return decision
        flag = torch.tensor([decision], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag[0])

    def _save(self, engine: Engine, totals: LossTotals, progress: Progress) -> str:
        path = mid_epoch_filename(engine.options.model_prefix)
        fsdp = engine.data_parallel.fsdp if engine.data_parallel is not None else None
        process = {
            "num_batches": totals.num_steps,
            "loss_sums": {name: list(values) for name, values in totals.sums.items()},
            "score_keys": dict(totals.keys),
            "num_seqs": progress.num_seqs,
            "rng": get_rng_state(include_cuda=torch.device(engine.device).type == "cuda"),
        }
        content = {
            "kind": "mid_epoch",
            "model": fsdp.model_state_dict() if fsdp is not None else engine.model.state_dict(),
            "updater": engine.updater.state_dict(),  # with several processes a collective
            "epoch": engine.epoch,
            "step": engine.global_step,
            "epoch_start_step": self._epoch_start_step,
            "returnn_version": returnn.__version__,
            "processes": [process] if engine.data_parallel is None else engine.data_parallel.gather_to_main(process),
        }
        checkpoints.save_checkpoint(path, content)
        engine.metrics_log.flush()
        self._last_save_time = self._clock()
        return path


def _int_entry(content: dict[str, Any], key: str, path: str) -> int:
    try:
        return int(content[key])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(
            f"{path}: not a mid-epoch checkpoint of this trainer (no valid {key!r}); delete it to start the epoch "
            "from its beginning"
        ) from None


def _skip(batches: Iterable[Any], num: int, then: Callable[[], None], model_prefix: str | None) -> Iterator[Any]:
    iterator = iter(batches)
    for done in range(num):
        if next(iterator, None) is None:
            raise CheckpointError(
                f"{mid_epoch_filename(model_prefix or '<model>')}: it was saved after {num} batches of the epoch, but "
                f"the epoch now has only {done}; the data or the batching changed. Delete the file to start the epoch "
                "from its beginning"
            )
    then()
    yield from iterator
