"""Named per-step learning-rate schedules (``learning_rate_schedule``), without a ``dynamic_learning_rate`` function.

A schedule is a factor ``f(s)`` of the global step ``s`` (0-based index of the step, counted over the whole run), and
the learning rate of a step is the epoch's learning rate (``learning_rate``, ``learning_rates`` or newbob, as the
learning_rates file shows it) times ``f(s)``. With ``W = warmup_steps``, ``T = total_steps``, ``p = min(1, (s - W) /
(T - W))`` (the progress of the decay) and ``e = final_scale``:

=================  ======================================================================================
warmup (s < W)     ``(s + 1) / W`` (every schedule but one_cycle and piecewise)
``constant``       ``1``
``linear``         ``1 - (1 - e) p``
``cosine``         ``e + (1 - e) (1 + cos(pi p)) / 2``
``invsqrt``        ``sqrt(N / (s + 1))`` with ``N = norm`` (default ``W``; mainline's learning_rate_invsqrt_norm)
``one_cycle``      linear from ``initial_scale`` to 1 over the first ``pct_start T`` steps, back to
                   ``initial_scale`` over as many, then linear to ``e`` at ``T``; ``e`` afterwards
``piecewise``      linear interpolation through ``(0, values[0]), (steps[0], values[1]), ...``; the last value
                   after the last step (mainline's learning_rate_piecewise_steps / _values); with
                   ``by_epoch_continuous`` (``learning_rate_piecewise_by_epoch_continuous``) over ``epoch - 1 +
                   the share of the epoch done`` instead of steps
=================  ======================================================================================

Config: ``learning_rate_schedule = {"class": "cosine", "warmup_steps": 1000, "total_steps": 100000}``, or a class name
alone (``"invsqrt"`` then reads ``learning_rate_warmup_steps`` and ``learning_rate_invsqrt_norm``; ``"piecewise"``
reads ``learning_rate_piecewise_steps`` and ``learning_rate_piecewise_values``). Setting
``learning_rate_piecewise_steps`` / ``_values`` alone selects the piecewise schedule, as in mainline RETURNN configs
(where ``learning_rate = 1.0`` makes the values the learning rates).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Any

from returnn.config import Config, declare_options
from returnn.errors import ConfigError

__all__ = ["LearningRateSchedule", "schedule_from_config", "SCHEDULE_CLASSES"]

SCHEDULE_CLASSES = ("constant", "linear", "cosine", "invsqrt", "one_cycle", "piecewise")

declare_options(
    "Learning rate",
    {
        "learning_rate_schedule": (
            None,
            "A per-step factor on the epoch's learning rate: {'class': 'constant' | 'linear' | 'cosine' | 'invsqrt' | "
            "'one_cycle' | 'piecewise', 'warmup_steps', 'total_steps', 'final_scale', 'norm', 'pct_start', "
            "'initial_scale', 'steps', 'values'} or a class name (see returnn/lr_schedules.py for the formulas).",
        ),
        "learning_rate_warmup_steps": (None, "Warmup steps of learning_rate_schedule 'invsqrt' (mainline's key)."),
        "learning_rate_invsqrt_norm": (None, "Norm N of learning_rate_schedule 'invsqrt' (default: the warmup steps)."),
        "learning_rate_piecewise_steps": (
            None,
            "Steps of the piecewise linear schedule (mainline's key); with learning_rate_piecewise_values.",
        ),
        "learning_rate_piecewise_values": (None, "Values at step 0 and at each learning_rate_piecewise_steps entry."),
        "learning_rate_piecewise_by_epoch_continuous": (
            False,
            "learning_rate_piecewise_steps are (fractional) epochs: epoch - 1 + the share of the epoch done.",
        ),
    },
)


@dataclasses.dataclass(frozen=True)
class LearningRateSchedule:
    """A schedule (see the module doc for the formulas)."""

    kind: str
    warmup_steps: int = 0
    total_steps: int | None = None
    final_scale: float = 0.0
    norm: float | None = None
    pct_start: float = 0.45
    initial_scale: float = 0.04
    steps: tuple[float, ...] = ()
    values: tuple[float, ...] = ()
    by_epoch_continuous: bool = False

    def __post_init__(self) -> None:
        where = f"config key 'learning_rate_schedule' ({self.kind})"
        if self.kind not in SCHEDULE_CLASSES:
            raise ConfigError(f"{where}: unknown class; choose one of: {', '.join(SCHEDULE_CLASSES)}")
        if self.warmup_steps < 0:
            raise ConfigError(f"{where}: warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.kind in ("linear", "cosine", "one_cycle") and (
            self.total_steps is None or self.total_steps <= self.warmup_steps
        ):
            raise ConfigError(f"{where}: needs total_steps > warmup_steps, got total_steps={self.total_steps!r}")
        if self.kind == "invsqrt" and self.warmup_steps < 1 and not self.norm:
            raise ConfigError(f"{where}: needs warmup_steps >= 1 (learning_rate_warmup_steps) or a norm")
        if self.kind == "one_cycle" and not 0 < self.pct_start <= 0.5:
            raise ConfigError(f"{where}: pct_start must be in (0, 0.5], got {self.pct_start}")
        if self.kind == "piecewise" and (
            len(self.values) != len(self.steps) + 1 or list(self.steps) != sorted(self.steps) or not self.steps
        ):
            raise ConfigError(
                f"{where}: expected ascending steps [s1, ..., sn] and n + 1 values (at step 0, s1, ..., sn), got "
                f"steps={list(self.steps)}, values={list(self.values)} (learning_rate_piecewise_steps / _values)"
            )

    def factor(self, step: int, epoch_continuous: float = 0.0) -> float:
        """The factor on the epoch's learning rate at global step ``step`` (0-based).

        :param epoch_continuous: epoch - 1 + the share of the epoch done (for piecewise ``by_epoch_continuous``)
        """
        if self.kind == "piecewise":
            return _interpolate((0.0, *self.steps), self.values, epoch_continuous if self.by_epoch_continuous else step)
        if self.kind == "one_cycle":
            rise = self.pct_start * self.total_steps
            points = (0.0, rise, 2 * rise, float(self.total_steps))
            return _interpolate(points, (self.initial_scale, 1.0, self.initial_scale, self.final_scale), step)
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        if self.kind == "invsqrt":
            return math.sqrt((self.norm or self.warmup_steps) / (step + 1))
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        if self.kind == "linear":
            return 1.0 - (1.0 - self.final_scale) * progress
        return self.final_scale + (1.0 - self.final_scale) * (1.0 + math.cos(math.pi * progress)) / 2  # cosine

    def dynamic_learning_rate(
        self, *, global_train_step: int, learning_rate: float, epoch_continuous: float = 0.0, **kwargs: Any
    ) -> float:
        """The schedule as a ``dynamic_learning_rate`` function."""
        return learning_rate * self.factor(global_train_step, epoch_continuous)


def _interpolate(points: tuple[float, ...], values: tuple[float, ...], x: float) -> float:
    if x >= points[-1]:
        return float(values[-1])
    i = bisect.bisect_right(points, x) - 1
    left, right = points[i], points[i + 1]
    if right == left:
        return float(values[i + 1])
    return values[i] + (values[i + 1] - values[i]) * (x - left) / (right - left)


def schedule_from_config(config: Config) -> LearningRateSchedule | None:
    """The config's schedule (see the module doc), or None."""
    value = config.typed_value("learning_rate_schedule")
    piecewise_steps = config.typed_value("learning_rate_piecewise_steps")
    if value is None and piecewise_steps is None:
        return None
    if value is None or value == "piecewise":
        value = {"class": "piecewise"}
    elif isinstance(value, str):
        value = {"class": value}
    if not isinstance(value, dict) or "class" not in value:
        raise ConfigError(
            f"config key 'learning_rate_schedule': expected a class name or a dict with 'class', got {value!r}"
        )
    options = dict(value)
    kind = options.pop("class")
    if kind == "piecewise":
        options.setdefault("steps", piecewise_steps or ())
        options.setdefault("values", config.typed_value("learning_rate_piecewise_values") or ())
        options.setdefault(
            "by_epoch_continuous", bool(config.typed_value("learning_rate_piecewise_by_epoch_continuous"))
        )
    if kind == "invsqrt":
        options.setdefault("warmup_steps", config.typed_value("learning_rate_warmup_steps") or 0)
        options.setdefault("norm", config.typed_value("learning_rate_invsqrt_norm"))
    fields = {field.name for field in dataclasses.fields(LearningRateSchedule)} - {"kind"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(
            f"config key 'learning_rate_schedule': unknown option(s) {', '.join(map(repr, unknown))}; choose from: "
            f"{', '.join(sorted(fields))}"
        )
    for name in ("steps", "values"):
        if name in options:
            options[name] = tuple(float(v) for v in options[name])
    return LearningRateSchedule(kind, **options)
