"""``epoch_wise_filter``: restrict the sequences of early epochs, e.g. to short ones (curriculum learning).

The option is a dict ``{(first_epoch, last_epoch): {filter options}}``; the range is inclusive, and ``None`` or
``-1`` as the last epoch means "from then on". Filter options:

- ``max_mean_len``: keep the shortest sequences, as many as possible while their mean length stays at most this
  (in the dataset's length unit: OggZipDataset uses ``int(duration * 100)``); the kept ones stay in epoch order.
- ``use_new_filter``: accepted for compatibility; there is only one implementation.

A dataset with the option mixes in :class:`EpochWiseFiltered`: the filter then runs on each (sub-)epoch's order
after ``partition_epoch`` and before sharding, so that the kept sequences do not depend on the number of DataLoader
workers or ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from returnn.errors import DatasetError

__all__ = ["EpochWiseFilter", "EpochWiseFiltered"]

logger = logging.getLogger(__name__)

_KNOWN_OPTIONS = ("max_mean_len", "use_new_filter")


class EpochWiseFilter:
    """Applies ``epoch_wise_filter`` options (see module docs) to an epoch's sequence order.

    :param epochs_opts: the option's value
    :param where: names the option in errors, e.g. ``"dataset 'train' (OggZipDataset) epoch_wise_filter"``
    """

    def __init__(
        self, epochs_opts: dict[tuple[int | None, int | None], dict[str, Any]], where: str = "epoch_wise_filter"
    ):
        if not isinstance(epochs_opts, dict):
            raise DatasetError(f"{where}: expected a dict {{(first_epoch, last_epoch): options}}, got {epochs_opts!r}")
        self.ranges: list[tuple[int, float, dict[str, Any]]] = []
        for key, opts in epochs_opts.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise DatasetError(f"{where}: keys must be epoch ranges (first_epoch, last_epoch), got {key!r}")
            first, last = key
            first = 1 if first is None else first
            last = float("inf") if last in (None, -1) else last
            if not (isinstance(first, int) and first >= 1 and last >= first):
                raise DatasetError(
                    f"{where}: invalid epoch range {key!r}; expected (first, last) with 1 <= first <= last"
                )
            unknown = sorted(set(opts) - set(_KNOWN_OPTIONS)) if isinstance(opts, dict) else [repr(opts)]
            if unknown:
                raise DatasetError(
                    f"{where}[{key!r}]: unknown option(s) {unknown}; supported: {', '.join(_KNOWN_OPTIONS)}"
                )
            self.ranges.append((first, last, dict(opts)))

    @classmethod
    def from_option(cls, value: Any, where: str) -> EpochWiseFilter | None:
        """The filter of a dataset's ``epoch_wise_filter`` option (a dict, a filter, or None for no filtering)."""
        if value is None or isinstance(value, EpochWiseFilter):
            return value
        return cls(value, where)

    def filter(
        self, epoch: int | None, seq_order: Sequence[int] | np.ndarray, get_seq_len: Callable[[int], int]
    ) -> list[int]:
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


class EpochWiseFiltered:
    """Mixin for datasets with an ``epoch_wise_filter`` option: put it before the Dataset base class, and set
    ``self.epoch_wise_filter`` with :meth:`EpochWiseFilter.from_option`. Lengths come from the dataset's
    ``_get_seq_len_for_ordering``."""

    epoch_wise_filter: EpochWiseFilter | None

    def _filter_epoch_order(self, epoch: int | None, order: np.ndarray) -> np.ndarray:
        order = super()._filter_epoch_order(epoch, order)  # type: ignore[misc]
        if self.epoch_wise_filter is None or epoch is None:
            return order
        kept = self.epoch_wise_filter.filter(epoch, order, self._get_seq_len_for_ordering())  # type: ignore[attr-defined]
        return np.asarray(kept, dtype=np.int64)
