"""Reporting losses: a step's loss values in one tensor, epoch scores (the per-step line is in
:mod:`returnn.torch.progress`), and the stop at a train loss that is not finite."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from returnn.errors import DatasetError, StepFunctionError, TrainingError
from returnn.torch.context import Loss

__all__ = ["loss_values", "LossTotals", "format_scores", "check_finite", "empty_sequences"]

logger = logging.getLogger(__name__)


def loss_values(losses: dict[str, Loss]) -> torch.Tensor:
    """``[loss_0, inv_norm_0, loss_1, inv_norm_1, ...]`` (unscaled; inv_norm 1 where not given) as one tensor on
    the device, so that the step's values reach the host in one copy."""
    if not losses:
        raise StepFunctionError(
            "train_step marked no loss: call run_ctx.mark_as_loss(loss, name, inv_norm_factor=...) at least once"
        )
    device = next(iter(losses.values())).loss.device  # report-only losses may live elsewhere (e.g. on the CPU)
    parts = []
    for loss in losses.values():
        parts.append(loss.loss.detach().float().reshape(1).to(device))
        norm = loss.inv_norm_factor
        if isinstance(norm, torch.Tensor):
            parts.append(norm.detach().float().reshape(1).to(device))
        else:
            parts.append(torch.full((1,), 1.0 if norm is None else float(norm), device=device))
    return torch.cat(parts)


class LossTotals:
    """Sums of each loss and its inv_norm_factor over an epoch; the score is their ratio."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = {}
        self.keys: dict[str, str] = {}  # loss name -> score key without the dataset prefix ("" = not reported)
        self.num_steps = 0

    def add(self, losses: dict[str, Loss], values: list[float]) -> dict[str, float]:
        """Add one step (``values`` as from :func:`loss_values`). Returns the step's normalized losses."""
        step = {}
        for i, name in enumerate(losses):
            value, norm = values[2 * i], values[2 * i + 1]
            total = self.sums.setdefault(name, [0.0, 0.0])
            self.keys.setdefault(name, losses[name].key)
            total[0] += value
            total[1] += norm
            step[name] = value / norm if norm else math.nan
        self.num_steps += 1
        return step

    def scores(self, dataset: str) -> dict[str, float]:
        """``{f"{dataset}_{key}": Σloss / Σinv_norm_factor}`` (nan where Σinv_norm_factor is 0), the key being
        ``loss_<name>`` unless the loss was marked with its own ``score_key``.

        :param dataset: e.g. ``"train"`` or ``"dev"``
        """
        return {
            f"{dataset}_{self.keys.get(name, 'loss_' + name)}": (value / norm if norm else math.nan)
            for name, (value, norm) in self.sums.items()
            if self.keys.get(name) != ""
        }


def format_scores(scores: dict[str, float]) -> str:
    """``key=value ...`` for log lines."""
    return " ".join(f"{key}={value:.6g}" for key, value in scores.items())


def check_finite(
    step_losses: dict[str, float], values: list[float], data: dict[str, Any], *, epoch: int, step: int
) -> None:
    """Stop the training at a step loss that is not finite (``stop_on_nonfinite_train_score``).

    :param step_losses: the step's losses by name (as :meth:`LossTotals.add` returns them)
    :param values: the step's loss values ``[loss_0, inv_norm_0, loss_1, ...]``
    :param data: the step's batch (its sequences of length 0 are named as the likely cause)
    :raise DatasetError: the batch holds sequences of length 0
    :raise TrainingError: otherwise
    """
    for i, (name, value) in enumerate(step_losses.items()):
        if not math.isfinite(value) and empty_sequences(data):
            listed = ", ".join(f"{tag!r} ({', '.join(keys)})" for tag, keys in empty_sequences(data).items())
            raise DatasetError(
                f"epoch={epoch} step={step}: the batch holds sequences of length 0: {listed}, "
                f"and loss {name!r} became {value}; remove them from the data, or drop them with "
                "min_seq_length = 1"
            )
        if not math.isfinite(value):
            raise TrainingError(
                f"epoch={epoch} step={step}: loss {name!r} is {value} (sum {values[2 * i]}, "
                f"inv_norm_factor {values[2 * i + 1]}); training stopped, nothing of this epoch was saved. "
                "Set stop_on_nonfinite_train_score = False to go on regardless"
            )


def empty_sequences(data: dict[str, Any]) -> dict[str, list[str]]:
    """The sequences of a batch with length 0 in some data key: ``{seq tag: [keys]}`` (a loss normalized by such a
    length divides by 0)."""
    tags = data.get("seq_tag") or []
    empty: dict[str, list[str]] = {}
    for key, lengths in data.items():
        if key.endswith(":size1") and isinstance(lengths, torch.Tensor) and lengths.dim() == 1:
            for index in torch.nonzero(lengths == 0).flatten().tolist():
                tag = tags[index] if index < len(tags) else f"#{index}"
                empty.setdefault(tag, []).append(key[: -len(":size1")])
    return empty
