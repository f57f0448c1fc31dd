"""Learning-rate control per epoch: constant and the newbob variants, with the learning_rates file behind them.

The file format is in :mod:`returnn.learning_rate_file`. Which learning rate an epoch gets:

1. An epoch already in the file keeps its learning rate, if it has scores (it was trained).
2. Else ``learning_rates`` (a list for epochs 1, 2, ... or a dict ``{epoch: lr}``) if it names the epoch.
3. Else the control rule of ``learning_rate_control``, starting from the previous epoch's rate: ``constant`` keeps
   it; the newbob variants multiply it by ``learning_rate_decay`` when the score of the previous epoch did not improve
   enough, and else by ``learning_rate_growth`` (1.0 by default, so the rate stays). The result is never below
   ``min_learning_rate``.
"""

from __future__ import annotations

import ast
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Union

from returnn.config import Config, declare_options
from returnn.errors import ConfigError
from returnn.learning_rate_file import EpochData, format_epoch_data, load_learning_rate_file, parse_epoch_data
from returnn.torch.distributed import write_file_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "EpochData",
    "LearningRateControl",
    "ConstantLearningRate",
    "NewbobRelative",
    "NewbobAbs",
    "NewbobMultiEpoch",
    "learning_rate_control_from_config",
    "format_epoch_data",
    "parse_epoch_data",
    "load_learning_rate_file",
]

declare_options(
    "Learning rate",
    {
        "learning_rate": (1.0, "The initial learning rate, and the one for epochs that no other rule covers."),
        "learning_rates": (
            None,
            "Predefined learning rates: a list (epochs 1, 2, ...) or a dict {epoch: lr}. "
            "After the list ends, learning_rate_control goes on from the last one.",
        ),
        "learning_rate_control": (
            "constant",
            "How the learning rate changes between epochs: constant, newbob (= newbob_rel), newbob_abs, "
            "newbob_multi_epoch.",
        ),
        "min_learning_rate": (0.0, "The learning rate never decays below this."),
        "learning_rate_file": (
            None,
            "The learning_rates file: learning rate and scores per epoch (read back when training restarts).",
        ),
        "learning_rate_control_error_measure": (
            None,
            "Score key (or list of keys, first present wins) that newbob watches, e.g. 'dev_loss_ce'. "
            "Default: the first dev_* key, else the first train_* key.",
        ),
        "learning_rate_control_relative_error_relative_lr": (
            False,
            "newbob: divide the relative error by (learning rate / initial learning rate).",
        ),
        "learning_rate_control_min_num_epochs_per_new_lr": (
            0,
            "newbob: keep a new learning rate for at least this many epochs.",
        ),
        "newbob_relative_error_div_by_old": (
            False,
            "newbob: relative error = (new - old) / old instead of (new - old) / new.",
        ),
        "learning_rate_decay": (0.5, "newbob: factor (or function lr -> lr) applied when the score got worse."),
        "newbob_learning_rate_decay": (None, "Alias of learning_rate_decay (wins when both are set)."),
        "learning_rate_growth": (
            1.0,
            "newbob variants: factor (or function lr -> lr) applied when the score improved by more than the "
            "threshold.",
        ),
        "newbob_learning_rate_growth": (None, "Alias of learning_rate_growth (wins when both are set)."),
        "newbob_relative_error_threshold": (
            -0.01,
            "newbob/newbob_multi_epoch: decay when the relative error change is above this.",
        ),
        "newbob_error_threshold": (-0.01, "newbob_abs: decay when the absolute error change is above this."),
        "newbob_multi_num_epochs": (5, "newbob_multi_epoch: average the relative error over this many epochs."),
        "newbob_multi_update_interval": (
            None,
            "newbob_multi_epoch: change the learning rate only every this many epochs "
            "(default: newbob_multi_num_epochs).",
        ),
        "newbob_relative_error_grow_threshold": (
            None,
            "newbob_multi_epoch: grow when the mean relative error is below this "
            "(default: newbob_relative_error_threshold).",
        ),
    },
)

LearningRateChange = Union[float, Callable[[float], float]]


# --------------------------------------------------------------------------------------------------
# Control rules


def _change_learning_rate(learning_rate: float, change: LearningRateChange) -> float:
    return float(change(learning_rate)) if callable(change) else learning_rate * change


class LearningRateControl:
    """Learning rate per epoch plus the scores of each epoch, persisted in the learning_rates file.

    Subclasses implement :meth:`calc_learning_rate_for_epoch`, the rule for an epoch that has no rate yet.
    """

    names: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        default_learning_rate: float,
        min_learning_rate: float = 0.0,
        default_learning_rates: Sequence[float] | dict[int, float] | None = None,
        error_measure_key: str | Sequence[str] | None = None,
        relative_error_also_relative_to_learning_rate: bool = False,
        min_num_epochs_per_new_learning_rate: int = 0,
        relative_error_div_by_old: bool = False,
        learning_rate_decay: LearningRateChange = 0.5,
        learning_rate_growth: LearningRateChange = 1.0,
        filename: str | None = None,
    ):
        """
        :param default_learning_rate: the rate of epoch 1, unless given otherwise
        :param default_learning_rates: predefined rates, a list (epochs 1, 2, ...) or ``{epoch: lr}``
        :param error_measure_key: the score key(s) that newbob watches
        :param filename: the learning_rates file; read now if it exists
        """
        self.default_learning_rate = float(default_learning_rate)
        self.min_learning_rate = float(min_learning_rate)
        self.error_measure_key = error_measure_key
        self.relative_error_also_relative_to_learning_rate = relative_error_also_relative_to_learning_rate
        self.min_num_epochs_per_new_learning_rate = min_num_epochs_per_new_learning_rate
        self.relative_error_div_by_old = relative_error_div_by_old
        self.learning_rate_decay = learning_rate_decay
        self.learning_rate_growth = learning_rate_growth
        self.filename = filename
        self.epoch_data: dict[int, EpochData] = {}
        if filename:
            self.epoch_data = load_learning_rate_file(filename)
        if isinstance(default_learning_rates, dict):
            predefined = {int(epoch): float(lr) for epoch, lr in default_learning_rates.items()}
        else:
            predefined = {i + 1: float(lr) for i, lr in enumerate(default_learning_rates or ())}
        for epoch, learning_rate in predefined.items():
            self._set_predefined_learning_rate(epoch, learning_rate)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} default={self.default_learning_rate} epochs={len(self.epoch_data)}>"

    def _set_predefined_learning_rate(self, epoch: int, learning_rate: float) -> None:
        data = self.epoch_data.get(epoch)
        if data is None:
            self.epoch_data[epoch] = EpochData(learning_rate=learning_rate)
        elif not data.error:  # an epoch that was not trained yet follows the (possibly changed) config
            data.learning_rate = learning_rate

    # ---------------------------------------------------------------- learning rates

    def get_learning_rate_for_epoch(self, epoch: int) -> float:
        """The learning rate of an epoch; decided (and recorded) on the first call for that epoch."""
        if epoch < 1:
            return self.default_learning_rate
        data = self.epoch_data.get(epoch)
        if data is not None and data.learning_rate is not None:
            return data.learning_rate
        learning_rate = self._new_learning_rate_for_epoch(epoch)
        if data is None:
            self.epoch_data[epoch] = EpochData(learning_rate=learning_rate)
        else:
            data.learning_rate = learning_rate
        return learning_rate

    def _new_learning_rate_for_epoch(self, epoch: int) -> float:
        keep_for = self.min_num_epochs_per_new_learning_rate
        if keep_for > 1:
            recent = [self.epoch_data[e].learning_rate for e in self.previous_epochs(epoch, keep_for)]
            # a rate that changed within the last epochs (or that has not lasted long enough yet) is kept
            if len(set(recent)) >= 2 or 0 < len(recent) < keep_for:
                return recent[-1]
        return max(self.calc_learning_rate_for_epoch(epoch), self.min_learning_rate)

    def calc_learning_rate_for_epoch(self, epoch: int) -> float:
        """The rule for an epoch that has no learning rate yet (subclasses)."""
        raise NotImplementedError

    def previous_epochs(self, epoch: int, count: int) -> list[int]:
        """Up to ``count`` recorded epochs before ``epoch``, ascending."""
        return sorted(e for e in self.epoch_data if e < epoch)[-count:] if count > 0 else []

    def last_learning_rate_before(self, epoch: int) -> tuple[int | None, float]:
        """The last recorded epoch before ``epoch`` with its learning rate, or ``(None, default)``."""
        for previous in reversed(self.previous_epochs(epoch, len(self.epoch_data))):
            learning_rate = self.epoch_data[previous].learning_rate
            if learning_rate is not None:
                return previous, learning_rate
        return None, self.default_learning_rate

    # ---------------------------------------------------------------- scores

    def set_epoch_error(self, epoch: int, scores: dict[str, float]) -> None:
        """Record scores of an epoch (merged into what it has)."""
        if epoch not in self.epoch_data:
            self.epoch_data[epoch] = EpochData(learning_rate=self.get_learning_rate_for_epoch(epoch))
        self.epoch_data[epoch].error.update({key: float(value) for key, value in scores.items()})

    def get_error_key(self, epoch: int) -> str | None:
        """The score key that the control rule watches for this epoch (None if the epoch has no scores)."""
        scores = self.epoch_data[epoch].scores if epoch in self.epoch_data else {}
        if not scores:
            return None
        if self.error_measure_key:
            wanted = [self.error_measure_key] if isinstance(self.error_measure_key, str) else self.error_measure_key
            for key in wanted:
                for candidate in (key, key + "_output"):
                    if candidate in scores:
                        return candidate
            raise ConfigError(
                f"config key 'learning_rate_control_error_measure': {self.error_measure_key!r} is not among the "
                f"scores of epoch {epoch}; choose one of: {', '.join(sorted(scores))}"
            )
        for prefix in ("dev_score", "dev_", "train_score", "train_"):  # network dicts: RETURNN watches the score
            keys = sorted(key for key in scores if key.startswith(prefix))
            if keys:
                return keys[0]
        return min(scores)

    def get_epoch_error_value(self, epoch: int, key: str | None = None) -> float | None:
        """The watched score of an epoch (or the score ``key``); None if the epoch lacks it."""
        key = key or self.get_error_key(epoch)
        if key is None or epoch not in self.epoch_data:
            return None
        return self.epoch_data[epoch].scores.get(key)

    def error_pair(self, old_epoch: int, new_epoch: int) -> tuple[float, float] | None:
        """The watched score (the key of ``new_epoch``) of both epochs; None if one of them lacks it."""
        key = self.get_error_key(new_epoch)
        old_error = self.get_epoch_error_value(old_epoch, key)
        new_error = self.get_epoch_error_value(new_epoch, key)
        return None if old_error is None or new_error is None else (old_error, new_error)

    def calc_relative_error(self, old_epoch: int, new_epoch: int) -> float | None:
        """(new - old) / |new| (or / |old|) of the watched score; None if a score is missing."""
        errors = self.error_pair(old_epoch, new_epoch)
        if errors is None:
            return None
        old_error, new_error = errors
        denominator = abs(old_error) if self.relative_error_div_by_old else abs(new_error)
        if denominator == 0:
            return None
        relative_error = (new_error - old_error) / denominator
        learning_rate = self.epoch_data[new_epoch].learning_rate
        if self.relative_error_also_relative_to_learning_rate and learning_rate and self.default_learning_rate:
            relative_error /= learning_rate / self.default_learning_rate
        return relative_error

    # ---------------------------------------------------------------- file

    def save(self) -> None:
        """Rewrite the learning_rates file (atomically; only the main process writes)."""
        if not self.filename:
            return
        text = format_epoch_data(self.epoch_data)
        write_file_atomic(self.filename, lambda f: f.write(text))


class ConstantLearningRate(LearningRateControl):
    """The previous epoch's learning rate (so the last entry of ``learning_rates`` persists)."""

    names = ("constant",)

    def calc_learning_rate_for_epoch(self, epoch: int) -> float:
        return self.last_learning_rate_before(epoch)[1]


class _NewbobLastTwoEpochs(LearningRateControl):
    """Decay when the change of the watched score between the last two epochs is above ``threshold``, else grow
    (by ``learning_rate_growth``, which is 1.0 unless configured)."""

    def __init__(self, *, threshold: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.threshold = threshold

    def error_change(self, old_epoch: int, new_epoch: int) -> float | None:
        """How much the watched score got worse from ``old_epoch`` to ``new_epoch``; None if unknown."""
        raise NotImplementedError

    def calc_learning_rate_for_epoch(self, epoch: int) -> float:
        last_epoch, learning_rate = self.last_learning_rate_before(epoch)
        before = self.previous_epochs(last_epoch, 1) if last_epoch is not None else []
        change = self.error_change(before[0], last_epoch) if before else None
        if change is None:
            return learning_rate
        change_by = self.learning_rate_decay if change > self.threshold else self.learning_rate_growth
        return _change_learning_rate(learning_rate, change_by)


class NewbobRelative(_NewbobLastTwoEpochs):
    """Decay when the relative change (see :meth:`calc_relative_error`) is above ``relative_error_threshold``."""

    names = ("newbob", "newbob_rel", "newbob_relative")

    def __init__(self, *, relative_error_threshold: float = -0.01, **kwargs: Any):
        super().__init__(threshold=relative_error_threshold, **kwargs)

    def error_change(self, old_epoch: int, new_epoch: int) -> float | None:
        return self.calc_relative_error(old_epoch, new_epoch)


class NewbobAbs(_NewbobLastTwoEpochs):
    """Decay when the absolute change (new - old) is above ``error_threshold``."""

    names = ("newbob_abs",)

    def __init__(self, *, error_threshold: float = -0.01, **kwargs: Any):
        super().__init__(threshold=error_threshold, **kwargs)

    def error_change(self, old_epoch: int, new_epoch: int) -> float | None:
        errors = self.error_pair(old_epoch, new_epoch)
        return None if errors is None else errors[1] - errors[0]


class NewbobMultiEpoch(LearningRateControl):
    """Every ``update_interval`` epochs: the mean relative change over the last ``num_epochs`` epochs decides
    between decay (above ``relative_error_threshold``), growth (below ``relative_error_grow_threshold``) or keep."""

    names = ("newbob_multi_epoch",)

    def __init__(
        self,
        *,
        num_epochs: int = 5,
        update_interval: int | None = None,
        relative_error_threshold: float = -0.01,
        relative_error_grow_threshold: float | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if num_epochs < 1:
            raise ConfigError(f"config key 'newbob_multi_num_epochs': expected an int >= 1, got {num_epochs!r}")
        if update_interval is not None and update_interval < 1:
            raise ConfigError(
                f"config key 'newbob_multi_update_interval': expected an int >= 1, got {update_interval!r}; "
                "leave it unset to update every newbob_multi_num_epochs epochs"
            )
        self.num_epochs = num_epochs
        self.update_interval = update_interval or num_epochs
        self.relative_error_threshold = relative_error_threshold
        self.relative_error_grow_threshold = (
            relative_error_threshold if relative_error_grow_threshold is None else relative_error_grow_threshold
        )

    def calc_learning_rate_for_epoch(self, epoch: int) -> float:
        last_epoch, learning_rate = self.last_learning_rate_before(epoch)
        if last_epoch is None or (epoch - 1) % self.update_interval != 0:
            return learning_rate
        epochs = self.previous_epochs(epoch, self.num_epochs + 1)
        if len(epochs) < 2:
            return learning_rate
        relative_errors = [self.calc_relative_error(old, new) for old, new in zip(epochs[:-1], epochs[1:])]
        if any(error is None for error in relative_errors):
            return learning_rate
        mean_relative_error = sum(relative_errors) / len(relative_errors)
        if mean_relative_error > self.relative_error_threshold:
            return _change_learning_rate(learning_rate, self.learning_rate_decay)
        if mean_relative_error < self.relative_error_grow_threshold:
            return _change_learning_rate(learning_rate, self.learning_rate_growth)
        return learning_rate


_CONTROL_CLASSES: tuple[type[LearningRateControl], ...] = (
    ConstantLearningRate,
    NewbobRelative,
    NewbobAbs,
    NewbobMultiEpoch,
)


# --------------------------------------------------------------------------------------------------
# From the config


def _predefined_learning_rates(config: Config) -> list[float] | dict[int, float] | None:
    value = config.typed_value("learning_rates")
    if isinstance(value, str):  # from the command line
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ConfigError(
                f"config key 'learning_rates': cannot read {value!r}; give a list [lr1, lr2, ...] or a dict "
                "{epoch: lr}"
            ) from None
    if value is None:
        return None
    try:
        if isinstance(value, dict):
            return {int(epoch): float(lr) for epoch, lr in value.items()}
        if isinstance(value, (list, tuple)):
            return [float(lr) for lr in value]
    except (TypeError, ValueError):
        pass
    raise ConfigError(
        f"config key 'learning_rates': expected a list [lr1, lr2, ...] or a dict {{epoch: lr}}, got {value!r}"
    )


def _learning_rate_change(config: Config, key: str, alias: str) -> LearningRateChange:
    value = config.typed_value(alias)
    if value is None:
        value = config.typed_value(key)
    if callable(value):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {key!r}: expected a number or a function lr -> lr, got {value!r}") from None


def learning_rate_control_from_config(config: Config) -> LearningRateControl:
    """The learning rate control that the config asks for, with the learning_rates file read in."""
    name = config.value("learning_rate_control")
    by_name = {alias: cls for cls in _CONTROL_CLASSES for alias in cls.names}
    if name not in by_name:
        raise ConfigError(
            f"config key 'learning_rate_control': unknown value {name!r}; choose one of: {', '.join(by_name)}"
        )
    cls = by_name[name]
    error_measure = config.typed_value("learning_rate_control_error_measure")
    if error_measure is not None and not isinstance(error_measure, (str, list, tuple)):
        raise ConfigError(
            f"config key 'learning_rate_control_error_measure': expected a score key or a list of them, "
            f"got {error_measure!r}"
        )
    filename = config.typed_value("learning_rate_file")
    kwargs: dict[str, Any] = dict(
        default_learning_rate=config.float("learning_rate"),
        min_learning_rate=config.float("min_learning_rate"),
        default_learning_rates=_predefined_learning_rates(config),
        error_measure_key=error_measure,
        relative_error_also_relative_to_learning_rate=config.bool("learning_rate_control_relative_error_relative_lr"),
        min_num_epochs_per_new_learning_rate=config.int("learning_rate_control_min_num_epochs_per_new_lr"),
        relative_error_div_by_old=config.bool("newbob_relative_error_div_by_old"),
        learning_rate_decay=_learning_rate_change(config, "learning_rate_decay", "newbob_learning_rate_decay"),
        learning_rate_growth=_learning_rate_change(config, "learning_rate_growth", "newbob_learning_rate_growth"),
        filename=os.fspath(filename) if filename else None,  # a str or an os.PathLike
    )
    if cls is NewbobRelative:
        kwargs["relative_error_threshold"] = config.float("newbob_relative_error_threshold")
    elif cls is NewbobAbs:
        kwargs["error_threshold"] = config.float("newbob_error_threshold")
    elif cls is NewbobMultiEpoch:
        kwargs["num_epochs"] = config.int("newbob_multi_num_epochs")
        kwargs["update_interval"] = config.int("newbob_multi_update_interval")
        kwargs["relative_error_threshold"] = config.float("newbob_relative_error_threshold")
        kwargs["relative_error_grow_threshold"] = config.float("newbob_relative_error_grow_threshold")
    return cls(**kwargs)
