""":class:`VariableDataset`: a different dataset for each (sub-)epoch, chosen by a user function."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from returnn.datasets.basic import Dataset
from returnn.datasets.registry import init_dataset
from returnn.datasets.util.sub_datasets import (
    ORDERING_OPTIONS,
    DescribedByInner,
    EpochOfInner,
    check_accepts_kwargs,
    reject_options,
)
from returnn.errors import DatasetError

__all__ = ["VariableDataset"]


class VariableDataset(EpochOfInner, DescribedByInner, Dataset):
    """For every epoch, the dataset that ``get_dataset(epoch=epoch, **kwargs)`` returns (e.g. a curriculum)::

        def get_train_dataset(*, epoch, **kwargs):
            files = ["part1.hdf"] if epoch <= 5 else ["part1.hdf", "part2.hdf"]
            return {"class": "HDFDataset", "files": files, "seq_ordering": "laplace:.1000"}

        train = {"class": "VariableDataset", "get_dataset": get_train_dataset}

    A returned dict equal to one returned before (within the last ``dataset_lru_cache_size``) reuses that
    dataset instead of building it again. Every dataset must have the data keys of epoch 1's, with the same
    description. Ordering options belong in the returned dicts. ``epoch=None`` (forwarding) uses the dataset of the
    last epoch set up (epoch 1's at first).

    :param get_dataset: ``(*, epoch: int, **kwargs) -> dataset dict``; it also gets ``self`` (this dataset).
    :param dataset_lru_cache_size: how many built datasets to keep for reuse.
    :param always_same_tags: all returned datasets have the same sequences; then :meth:`get_all_tags` and
        :meth:`get_total_num_seqs` work (e.g. inside a MetaDataset).
    """

    def __init__(
        self,
        get_dataset: Callable[..., dict[str, Any] | Dataset],
        dataset_lru_cache_size: int = 1,
        always_same_tags: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        reject_options(self, list(ORDERING_OPTIONS), "set it in the dataset dicts that get_dataset returns")
        check_accepts_kwargs(get_dataset, f"{self} get_dataset", required=("epoch",))
        if not (isinstance(dataset_lru_cache_size, int) and dataset_lru_cache_size >= 1):
            raise DatasetError(f"{self}: dataset_lru_cache_size must be an int >= 1, got {dataset_lru_cache_size!r}")
        self.get_dataset = get_dataset
        self.dataset_lru_cache_size = dataset_lru_cache_size
        self.always_same_tags = always_same_tags
        self._cache: list[tuple[Any, Dataset]] = []  # (what get_dataset returned, the dataset); most recent last
        self._first_description: dict[str, tuple[Any, ...]] | None = None
        self.inner = self._dataset_for_epoch(1)
        self.copy_inner_description()

    def _dataset_for_epoch(self, epoch: int) -> Dataset:
        opts = self.get_dataset(epoch=epoch, self=self)
        for idx, (cached_opts, dataset) in enumerate(self._cache):
            if _same_definition(opts, cached_opts):
                self._cache.append(self._cache.pop(idx))
                return dataset
        if not isinstance(opts, (dict, Dataset)):
            raise DatasetError(f"{self}: get_dataset(epoch={epoch}) returned {opts!r}; expected a dataset dict")
        dataset = init_dataset(opts, default_kwargs={"name": f"{self.name}_epoch{epoch}"})
        self._check_description(dataset, epoch)
        dataset.set_sharding(self._shard_index, self._num_shards)
        self._cache.append((opts, dataset))
        del self._cache[: -self.dataset_lru_cache_size]
        return dataset

    def _check_description(self, dataset: Dataset, epoch: int) -> None:
        description = {
            key: (dataset.get_data_dim(key), dataset.get_data_dtype(key), dataset.get_data_shape(key))
            for key in dataset.get_data_keys()
        }
        if self._first_description is None:
            self._first_description = description
        elif description != self._first_description:
            raise DatasetError(
                f"{self}: the dataset for epoch {epoch} has data {description} ({{key: (dim, dtype, shape)}}), "
                f"epoch 1's had {self._first_description}; get_dataset must return datasets with the same data"
            )

    # --- epochs: the current dataset's ---------------------------------------------------------------------

    def init_seq_order(
        self, epoch: int | None = None, seq_list: Sequence[str] | None = None, seq_order: Sequence[int] | None = None
    ) -> bool:
        """Pick the epoch's dataset (see the class docs) and set up its epoch."""
        super().init_seq_order(epoch=epoch, seq_list=seq_list, seq_order=seq_order)
        if epoch is not None:
            self.inner = self._dataset_for_epoch(epoch)
        self.inner.init_seq_order(epoch=epoch, seq_list=seq_list, seq_order=seq_order)
        return True

    def set_sharding(self, shard_index: int, num_shards: int) -> None:
        super().set_sharding(shard_index, num_shards)
        for _, dataset in self._cache:
            dataset.set_sharding(shard_index, num_shards)

    def supports_sharding(self) -> bool:
        return self.inner.supports_sharding()

    def _same_tags_needed(self, what: str) -> DatasetError:
        return DatasetError(
            f"{self}: {what} is only defined with always_same_tags=True (all datasets of get_dataset have the "
            "same sequences)"
        )

    def get_total_num_seqs(self) -> int:
        if not self.always_same_tags:
            raise self._same_tags_needed("the total number of sequences")
        return self.inner.get_total_num_seqs()

    def get_all_tags(self) -> list[str]:
        if not self.always_same_tags:
            raise self._same_tags_needed("the list of all tags")
        return self.inner.get_all_tags()


def _same_definition(opts: Any, cached: Any) -> bool:
    """Whether two dataset definitions are equal (recursively; numpy arrays by value)."""
    if opts is cached:
        return True
    if isinstance(opts, dict) and isinstance(cached, dict):
        return opts.keys() == cached.keys() and all(_same_definition(opts[k], cached[k]) for k in opts)
    if isinstance(opts, (list, tuple)) and isinstance(cached, (list, tuple)):
        return type(opts) is type(cached) and len(opts) == len(cached) and all(map(_same_definition, opts, cached))
    if isinstance(opts, np.ndarray) or isinstance(cached, np.ndarray):
        return isinstance(opts, np.ndarray) and isinstance(cached, np.ndarray) and np.array_equal(opts, cached)
    try:
        return bool(opts == cached)
    except (ValueError, TypeError):  # objects without a plain truth value of ==
        return False
