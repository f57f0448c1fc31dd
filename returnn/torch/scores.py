"""Reporting losses: a step's loss values in one tensor, epoch scores, and the per-step log line."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from returnn.errors import StepFunctionError
from returnn.torch.context import Loss

__all__ = ["loss_values", "LossTotals", "Progress", "format_scores"]

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


class Progress:
    """The per-step log line (verbosity 5), with an ETA for the epoch from its expected number of sequences."""

    def __init__(self, epoch: int, expected_num_seqs: int | None):
        self.epoch = epoch
        self.expected_num_seqs = expected_num_seqs
        self.enabled = logger.isEnabledFor(logging.DEBUG)
        self.num_seqs = 0
        self.num_steps = 0
        self.start_time = self.last_time = time.monotonic()

    def step(self, global_step: int, step_losses: dict[str, float], data: dict[str, Any]) -> None:
        """Count a finished step and log its line.

        :param global_step: the steps done so far in the run, this one included
        :param step_losses: the step's normalized losses by name
        :param data: the step's batch (for its number of sequences)
        """
        self.num_steps += 1
        self.num_seqs += len(data.get("seq_tag", ()))
        if not self.enabled:
            return
        now = time.monotonic()
        losses = " ".join(f"loss_{name}={value:.6g}" for name, value in step_losses.items())
        eta = "?"
        if self.expected_num_seqs and self.num_seqs:
            remaining = max(self.expected_num_seqs - self.num_seqs, 0)
            eta = f"{(now - self.start_time) * remaining / self.num_seqs:.1f}s"
        logger.debug(
            f"epoch={self.epoch} step={self.num_steps} global_step={global_step} {losses} "
            f"seqs={len(data.get('seq_tag', ()))} step_time={now - self.last_time:.4f}s eta={eta}"
        )
        self.last_time = now


def format_scores(scores: dict[str, float]) -> str:
    """``key=value ...`` for log lines."""
    return " ".join(f"{key}={value:.6g}" for key, value in scores.items())
