"""``epoch_wise_filter``: restrict the sequences of early epochs, e.g. to short ones (curriculum learning).

The option is a dict ``{(first_epoch, last_epoch): {filter options}}``; the range is inclusive, and ``None`` or
``-1`` as the last epoch means "from then on". Filter options:

- ``max_mean_len``: keep the shortest sequences, as many as possible while their mean length stays at most this
  (in the dataset's length unit: OggZipDataset uses ``int(duration * 100)``); the kept ones stay in epoch order.
- ``use_new_filter``: accepted for compatibility; there is only one implementation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from returnn.errors import ConfigError

__all__ = ["EpochWiseFilter"]

logger = logging.getLogger(__name__)

_KNOWN_OPTIONS = ("max_mean_len", "use_new_filter")


class EpochWiseFilter:
    """Applies ``epoch_wise_filter`` options (see module docs) to an epoch's sequence order."""

    def __init__(self, epochs_opts: dict[tuple[int | None, int | None], dict[str, Any]]):
        if not isinstance(epochs_opts, dict):
            raise ConfigError(f"epoch_wise_filter: expected a dict {{(first, last): options}}, got {epochs_opts!r}")
        self.ranges: list[tuple[int, float, dict[str, Any]]] = []
        for key, opts in epochs_opts.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ConfigError(f"epoch_wise_filter: keys must be epoch ranges (first, last), got {key!r}")
            first, last = key
            first = 1 if first is None else first
            last = float("inf") if last in (None, -1) else last
            if not (isinstance(first, int) and first >= 1 and last >= first):
                raise ConfigError(f"epoch_wise_filter: invalid epoch range {key!r}")
            unknown = sorted(set(opts) - set(_KNOWN_OPTIONS)) if isinstance(opts, dict) else [repr(opts)]
            if unknown:
                raise ConfigError(
                    f"epoch_wise_filter {key!r}: unknown option(s) {unknown}; supported: {', '.join(_KNOWN_OPTIONS)}"
                )
            self.ranges.append((first, last, dict(opts)))

    def filter(self, epoch: int | None, seq_order: Sequence[int], get_seq_len: Callable[[int], int]) -> list[int]:
        """The part of ``seq_order`` (corpus indices) that the filters of ``epoch`` keep."""
        order = list(seq_order)
        if epoch is None:
            return order
        for first, last, opts in self.ranges:
            if first <= epoch <= last and "max_mean_len" in opts:
                kept = _keep_short(order, get_seq_len, opts["max_mean_len"])
                logger.info(f"epoch {epoch}: epoch_wise_filter keeps {len(kept)} of {len(order)} sequences")
                order = kept
        return order


def _keep_short(order: list[int], get_seq_len: Callable[[int], int], max_mean_len: float) -> list[int]:
    lens = np.array([get_seq_len(idx) for idx in order], dtype=np.float64)
    by_len = np.argsort(lens, kind="stable")
    running_mean = np.cumsum(lens[by_len]) / np.arange(1, len(order) + 1)
    num_keep = int(np.searchsorted(running_mean, max_mean_len, side="right"))  # the running mean only grows
    keep = np.zeros(len(order), dtype=bool)
    keep[by_len[:num_keep]] = True
    return [idx for idx, kept in zip(order, keep) if kept]
