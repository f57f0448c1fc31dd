""":class:`MultiEpochDataset`: one epoch that goes through several epochs of an inner dataset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from returnn.datasets.basic import Dataset, DatasetSeq
from returnn.datasets.cached2 import CachedDataset2
from returnn.datasets.registry import init_dataset
from returnn.datasets.util.sub_datasets import CorpusOfInner, DescribedByInner
from returnn.errors import DatasetError

__all__ = ["MultiEpochDataset"]


class MultiEpochDataset(CorpusOfInner, DescribedByInner, CachedDataset2):
    """Epoch e visits the inner epochs ``(e - 1) * multi_epoch + 1 ... e * multi_epoch``, one after the other. With an
    inner ``partition_epoch`` of the same value, one epoch covers the whole inner corpus (e.g. to forward all parts
    of a :class:`DistributeFilesDataset`). Without an epoch (forwarding), or with a given seq_list / seq_order, it is
    the inner dataset's epoch.

    :param dataset: the inner dataset dict
    :param multi_epoch: inner epochs per epoch
    """

    def __init__(self, *, dataset: dict[str, Any] | Dataset, multi_epoch: int, **kwargs: Any):
        super().__init__(**kwargs)
        if not (isinstance(multi_epoch, int) and multi_epoch >= 1):
            raise DatasetError(f"{self}: multi_epoch must be an int >= 1, got {multi_epoch!r}")
        self.multi_epoch = multi_epoch
        self.inner = init_dataset(dataset, default_kwargs={"name": f"{self.name}_inner"})
        self.copy_inner_description()
        self._next_inner_epochs: list[int] = []  # inner epochs still to visit in this epoch
        self._inner_start = 0  # the position (in this epoch) of the running inner epoch's first sequence

    def init_seq_order(
        self, epoch: int | None = None, seq_list: Sequence[str] | None = None, seq_order: Sequence[int] | None = None
    ) -> bool:
        super().init_seq_order(epoch=epoch, seq_list=seq_list, seq_order=seq_order)
        first = None if epoch is None else (epoch - 1) * self.multi_epoch + 1
        given = seq_list is not None or seq_order is not None
        self._next_inner_epochs = [] if first is None or given else list(range(first + 1, first + self.multi_epoch))
        self._inner_start = 0
        self.inner.init_seq_order(epoch=first, seq_list=seq_list, seq_order=seq_order)
        return True

    def _get_epoch_seq_order(
        self, epoch: int | None, seq_list: Sequence[str] | None, seq_order: Sequence[int] | None
    ) -> None:
        return None  # a stream through the inner epochs

    def _collect_single_seq(self, seq_idx: int) -> DatasetSeq | None:
        local = seq_idx - self._inner_start
        while not self.inner.is_less_than_num_seqs(local):
            if not self._next_inner_epochs:
                return None
            self.inner.finish_epoch()
            self.inner.init_seq_order(epoch=self._next_inner_epochs.pop(0))
            self._inner_start, local = seq_idx, 0
        self.inner.load_seqs(local, local + 1)
        features = {key: self.inner.get_data(local, key) for key in self.get_data_keys()}
        return DatasetSeq(seq_idx, features, seq_tag=self.inner.get_tag(local))

    def finish_epoch(self) -> None:
        super().finish_epoch()
        self.inner.finish_epoch()
