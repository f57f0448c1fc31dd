"""Sequences of several datasets in one epoch: :class:`ConcatDataset` and :class:`CombinedDataset`.

How an epoch is made (both classes):

1. every sub-dataset sets up the epoch with its own options (``seq_ordering``, ``partition_epoch``,
   ``repeat_epoch`` ...); that gives each one's list of sequences for the epoch;
2. the lists are joined, sub-dataset after sub-dataset (CombinedDataset: in sorted key order; with
   ``sampling_sizes``, a fixed number of sequences from each);
3. this dataset's own ``seq_ordering`` orders the joined list (``default`` keeps it; ``random``, ``sorted``,
   ``laplace`` ... mix the sub-datasets; CombinedDataset's ``random_dataset`` interleaves them at random and
   ``interleave`` evenly (next the one least far through its list), both keeping each one's own order), then its
   ``partition_epoch``, ``repeat_epoch`` and sharding apply;
4. each sub-dataset is told exactly which of its sequences to visit, in order.

So ``partition_epoch`` or ``repeat_epoch`` on a sub-dataset shrinks or grows its share of the mix.

A sequence's corpus index here is its sub-dataset's corpus index plus the sizes of the sub-datasets before it;
:meth:`get_all_tags` lists the sub-datasets' tags one after the other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from returnn.datasets.basic import STRING_DTYPE, Dataset
from returnn.datasets.registry import init_dataset
from returnn.datasets.util.sub_datasets import (
    DataSpec,
    DescribedBySpecs,
    data_spec_of,
    describe_key,
    epoch_corpus_indices,
    reject_options,
)
from returnn.errors import DatasetError

__all__ = ["ConcatDataset", "CombinedDataset"]

logger = logging.getLogger(__name__)


class _SequenceMix(DescribedBySpecs, Dataset):
    """The machinery of both classes (see the module docs). A subclass sets up, in ``__init__``:
    ``self._datasets`` (the sub-datasets, in joining order), ``self._dataset_names`` (for messages) and
    ``self._key_maps`` (per sub-dataset: ``{data_key: the sub-dataset's data key}``), then calls
    :meth:`_describe`. It may override :meth:`_join_epoch_lists` and :meth:`_order_joined`.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        hint = "set it on the sub-datasets"
        reject_options(
            self, ("seq_list_filter_file", "unique_seq_tags", "seq_order_seq_lens_file", "fixed_random_subset"), hint
        )
        self._datasets: list[Dataset] = []
        self._dataset_names: list[str] = []
        self._key_maps: list[dict[str, str]] = []
        self._specs: dict[str, DataSpec] = {}
        self._positions = np.zeros((0, 2), dtype=np.int64)  # per epoch position: sub-dataset, its position there

    def _describe(self, data_dtypes: dict[str, str] | None = None) -> None:
        """Fix each data key's description; every sub-dataset that provides a key must agree on it."""
        providers: dict[str, str] = {}
        inferred: dict[str, bool] = {}  # whether the dim of the key so far was inferred from the data
        for dataset, name, key_map in zip(self._datasets, self._dataset_names, self._key_maps):
            sub_keys = dataset.get_data_keys()
            for key, sub_key in key_map.items():
                if sub_key not in sub_keys:
                    raise DatasetError(f"{self}: {name} has no data key {sub_key!r}; it has {sub_keys}")
                spec = data_spec_of(dataset, sub_key)
                spec_inferred = sub_key in dataset.inferred_dims
                if key in self._specs and spec != self._specs[key]:
                    widened = _widened_sparse_spec(self._specs[key], inferred[key], spec, spec_inferred)
                    if widened is not None:  # classes counted in the data: the largest count holds them all
                        self._specs[key], inferred[key] = widened, inferred[key] and spec_inferred
                        describe_key(self, key, widened)
                        continue
                    raise DatasetError(
                        f"{self}: data key {key!r} differs between {providers[key]} ({self._specs[key]}) and "
                        f"{name} ({spec}); the sub-datasets must agree on dim, shape, dtype and sparsity"
                    )
                if key not in self._specs:
                    self._specs[key], providers[key], inferred[key] = spec, name, spec_inferred
                    describe_key(self, key, spec, dataset, sub_key)
        for key, dtype in (data_dtypes or {}).items():
            if key not in self._specs or self._specs[key].dtype != dtype:
                found = self._specs[key].dtype if key in self._specs else "no such key"
                raise DatasetError(f"{self}: data_dtypes[{key!r}] = {dtype!r}, but the data has {found}")

    # --- the corpus --------------------------------------------------------------------------------------

    def _offsets(self) -> np.ndarray:
        """The corpus index of each sub-dataset's first sequence, then the total."""
        sizes = [dataset.get_total_num_seqs() for dataset in self._datasets]
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def get_total_num_seqs(self) -> int:
        return int(self._offsets()[-1])

    def get_all_tags(self) -> list[str]:
        return [tag for dataset in self._datasets for tag in dataset.get_all_tags()]

    def supports_sharding(self) -> bool:
        return True

    # --- epochs ------------------------------------------------------------------------------------------

    def init_seq_order(
        self, epoch: int | None = None, seq_list: Sequence[str] | None = None, seq_order: Sequence[int] | None = None
    ) -> bool:
        """Set up the epoch (see the module docs); ``seq_list`` / ``seq_order`` name sequences of this corpus."""
        changed = super().init_seq_order(epoch=epoch, seq_list=seq_list, seq_order=seq_order)
        offsets = self._offsets()
        order = epoch_corpus_indices(self, int(offsets[-1]))
        which = np.searchsorted(offsets, order, side="right") - 1
        self._positions = np.zeros((len(order), 2), dtype=np.int64)
        self._positions[:, 0] = which
        for idx, dataset in enumerate(self._datasets):
            mine = np.flatnonzero(which == idx)
            self._positions[mine, 1] = np.arange(len(mine))
            dataset.init_seq_order(epoch=epoch, seq_order=(order[mine] - offsets[idx]).tolist())
        return changed

    def _get_epoch_seq_order(
        self, epoch: int | None, seq_list: Sequence[str] | None, seq_order: Sequence[int] | None
    ) -> list[int]:
        if seq_list is not None or seq_order is not None:
            return super()._get_epoch_seq_order(epoch, seq_list, seq_order)
        epoch_lists = []
        for dataset, name in zip(self._datasets, self._dataset_names):
            dataset.init_seq_order(epoch=epoch)
            try:
                epoch_lists.append(np.asarray(dataset.get_current_seq_order(), dtype=np.int64))
            except DatasetError as exc:
                raise DatasetError(
                    f"{self}: {name} must know its epoch's sequences up front (a corpus, not an endless stream)"
                ) from exc
        joined = self._join_epoch_lists(epoch, epoch_lists)  # [n, 2]: sub-dataset, its corpus index
        picked = joined[self._order_joined(epoch, joined)]
        return (self._offsets()[picked[:, 0]] + picked[:, 1]).tolist()

    def _join_epoch_lists(self, epoch: int | None, epoch_lists: list[np.ndarray]) -> np.ndarray:
        """The sequences of the epoch before this dataset's ordering: ``[n, 2]`` (sub-dataset, corpus index)."""
        return _stack_pairs(epoch_lists)

    def _order_joined(self, epoch: int | None, joined: np.ndarray) -> list[int]:
        """Positions into ``joined``: ordering, partition, repeat and shard of this epoch."""
        get_len = None
        if self._ordering.needs_seq_lens:
            len_fns = [dataset.get_corpus_seq_len_fn() for dataset in self._datasets]
            unknown = [name for name, fn in zip(self._dataset_names, len_fns) if fn is None]
            if unknown:
                raise DatasetError(
                    f"{self}: seq_ordering {self.seq_ordering!r} sorts by length, but {', '.join(unknown)} cannot "
                    "tell lengths before loading; give it a seq_order_seq_lens_file or use another ordering"
                )
            get_len = _joined_len_fn(joined, len_fns)
        return self.get_seq_order_for_epoch(epoch, len(joined), get_len)

    def finish_epoch(self) -> None:
        super().finish_epoch()
        for dataset in self._datasets:
            dataset.finish_epoch()

    # --- sequences of the epoch --------------------------------------------------------------------------

    def load_seqs(self, start: int, end: int) -> None:
        super().load_seqs(start, end)
        window = self._positions[start:end]
        for idx, dataset in enumerate(self._datasets):
            local = window[window[:, 0] == idx, 1]
            if local.size:
                dataset.load_seqs(int(local.min()), int(local.max()) + 1)

    def _locate(self, seq_idx: int) -> tuple[int, int]:
        if not 0 <= seq_idx < len(self._positions):
            raise DatasetError(f"{self}: sequence index {seq_idx} is outside the epoch (0..{len(self._positions) - 1})")
        dataset_idx, local_idx = self._positions[seq_idx].tolist()
        return dataset_idx, local_idx

    def get_data(self, seq_idx: int, key: str) -> np.ndarray:
        dataset_idx, local_idx = self._locate(seq_idx)
        sub_key = self._key_maps[dataset_idx].get(key)
        if sub_key is not None:
            return self._datasets[dataset_idx].get_data(local_idx, sub_key)
        spec = self._spec(key)
        # A key of another sub-dataset: empty, so that a batch mixing the sub-datasets still collates.
        return np.zeros([0, *spec.frame_shape], dtype=object if spec.dtype == STRING_DTYPE else spec.dtype)

    def get_tag(self, seq_idx: int) -> str:
        dataset_idx, local_idx = self._locate(seq_idx)
        return self._datasets[dataset_idx].get_tag(local_idx)

    def get_seq_length(self, seq_idx: int) -> dict[str, int]:
        dataset_idx, local_idx = self._locate(seq_idx)
        sub_lengths = self._datasets[dataset_idx].get_seq_length(local_idx)
        key_map = self._key_maps[dataset_idx]
        return {key: (sub_lengths[key_map[key]] if key in key_map else 0) for key in self.get_data_keys()}

    def get_dataset_index(self, seq_idx: int) -> int:
        """Which sub-dataset (in joining order) the sequence at ``seq_idx`` comes from."""
        return self._locate(seq_idx)[0]

    # --- data description --------------------------------------------------------------------------------

    def get_data_keys(self) -> list[str]:
        return (["data"] if "data" in self._specs else []) + self.get_target_list()

    def get_target_list(self) -> list[str]:
        return sorted(key for key in self._specs if key != "data")


def _widened_sparse_spec(a: DataSpec, a_inferred: bool, b: DataSpec, b_inferred: bool) -> DataSpec | None:
    """Two sparse specs that differ only in the number of classes, where each smaller one was inferred from the data
    (not declared): the spec with the larger number; else None (they disagree)."""
    if not (a.sparse and b.sparse and a._replace(dim=b.dim) == b and a.dim is not None and b.dim is not None):
        return None
    smaller_inferred = a_inferred if a.dim < b.dim else b_inferred
    return (a if a.dim > b.dim else b) if smaller_inferred else None


def _stack_pairs(epoch_lists: Sequence[np.ndarray]) -> np.ndarray:
    """``[(i, index) for i, indices in enumerate(epoch_lists) for index in indices]`` as an ``[n, 2]`` array."""
    if not epoch_lists:
        return np.zeros((0, 2), dtype=np.int64)
    which = np.concatenate([np.full(len(indices), idx, dtype=np.int64) for idx, indices in enumerate(epoch_lists)])
    return np.stack([which, np.concatenate(epoch_lists).astype(np.int64)], axis=1)


def _joined_len_fn(joined: np.ndarray, len_fns: list[Callable[[int], int]]) -> Callable[[int], int]:
    def get_len(position: int) -> int:
        dataset_idx, corpus_idx = joined[position].tolist()
        return len_fns[dataset_idx](corpus_idx)

    return get_len


class ConcatDataset(_SequenceMix):
    """The sequences of several datasets one after the other (with the default ``seq_ordering``).

    The datasets must have the same data keys, with the same dimensions, dtypes and shapes. See the module docs
    for how an epoch is made; unlike RETURNN, every ``seq_ordering`` works here, and sharding too.

    :param datasets: a list of dataset dicts (or datasets).
    """

    def __init__(self, datasets: Sequence[dict[str, Any] | Dataset], **kwargs: Any):
        super().__init__(**kwargs)
        if not isinstance(datasets, (list, tuple)) or not datasets:
            raise DatasetError(f"{self}: 'datasets' must be a non-empty list of dataset dicts")
        self._datasets = [
            init_dataset(opts, default_kwargs={"name": f"{self.name}_{idx}"}) for idx, opts in enumerate(datasets)
        ]
        self._dataset_names = [f"datasets[{idx}] ({type(ds).__name__})" for idx, ds in enumerate(self._datasets)]
        keys = self._datasets[0].get_data_keys()
        for name, dataset in zip(self._dataset_names[1:], self._datasets[1:]):
            if sorted(dataset.get_data_keys()) != sorted(keys):
                raise DatasetError(
                    f"{self}: {name} has data keys {dataset.get_data_keys()}, datasets[0] has {keys}; "
                    "concatenated datasets need the same keys (use CombinedDataset for different ones)"
                )
        self._key_maps = [{key: key for key in keys} for _ in self._datasets]
        self._describe()


class CombinedDataset(_SequenceMix):
    """Sequences of several datasets with different data keys, mixed in one epoch (multi-task learning).

    Each sequence has all data keys of this dataset; those its sub-dataset does not provide are empty
    (length 0). See the module docs for how an epoch is made. Example::

        train = {
            "class": "CombinedDataset",
            "datasets": {"asr": {...}, "lm": {...}},
            "data_map": {("asr", "data"): "audio", ("asr", "classes"): "labels", ("lm", "data"): "labels"},
            "seq_ordering": "random_dataset",
        }

    Use :meth:`get_dataset_index` (or the empty keys) to tell the tasks apart in a batch.

    :param datasets: ``{dataset_key: dataset dict}``; only those named in ``data_map`` are built.
    :param data_map: ``{(dataset_key, dataset_data_key): data_key}``; several datasets may feed one data key.
    :param sampling_sizes: take this many sequences from each dataset per epoch (an int for all, or a dict by
        dataset key) instead of all: epoch e takes the next ones of the dataset's epoch list after those of
        epoch e - 1, wrapping around. Not with ``partition_epoch``.
    :param data_dims: ``{data_key: (dim, ndim)}``, checked against the datasets (RETURNN's double check).
    :param data_dtypes: ``{data_key: dtype}``, checked against the datasets.
    """

    def __init__(
        self,
        datasets: dict[str, dict[str, Any] | Dataset],
        data_map: dict[tuple[str, str], str],
        sampling_sizes: int | dict[str, int] | None = None,
        data_dims: dict[str, Any] | None = None,
        data_dtypes: dict[str, str] | None = None,
        seq_ordering: str = "default",
        **kwargs: Any,
    ):
        mixing = seq_ordering in ("random_dataset", "interleave")  # orders of the mix, not of the joined list
        super().__init__(seq_ordering="default" if mixing else seq_ordering, **kwargs)
        if mixing:
            self.seq_ordering = seq_ordering
        self.random_dataset = seq_ordering == "random_dataset"
        self.interleave = seq_ordering == "interleave"
        keys = self._check_data_map(data_map, datasets)
        self.dataset_keys = keys
        self._datasets = [init_dataset(datasets[key], default_kwargs={"name": f"{self.name}_{key}"}) for key in keys]
        self._dataset_names = [f"dataset {key!r} ({type(ds).__name__})" for key, ds in zip(keys, self._datasets)]
        self._key_maps = [{out: sub for (ds_key, sub), out in data_map.items() if ds_key == key} for key in keys]
        self.sampling_sizes = self._check_sampling_sizes(sampling_sizes)
        self._describe(data_dtypes)
        self._check_data_dims(data_dims)

    def _check_data_map(self, data_map: Any, datasets: Any) -> list[str]:
        """Check the options; return the used dataset keys, sorted."""
        if not isinstance(datasets, dict) or not isinstance(data_map, dict) or not data_map:
            raise DatasetError(
                f"{self}: expected 'datasets' {{dataset_key: dataset dict}} and a non-empty 'data_map' "
                "{(dataset_key, dataset_data_key): data_key}"
            )
        seen: dict[tuple[str, str], Any] = {}
        for source, key in data_map.items():
            if not (isinstance(source, tuple) and len(source) == 2 and isinstance(key, str)):
                raise DatasetError(
                    f"{self}: data_map entry {source!r}: {key!r}; expected (dataset_key, dataset_data_key): data_key"
                )
            if source[0] not in datasets:
                raise DatasetError(
                    f"{self}: data_map entry {source!r} names dataset {source[0]!r}, which is not in datasets "
                    f"({sorted(datasets)})"
                )
            if (source[0], key) in seen:
                raise DatasetError(f"{self}: data_map maps both {seen[source[0], key]!r} and {source!r} to {key!r}")
            seen[source[0], key] = source
        keys = sorted({dataset_key for dataset_key, _ in data_map})
        unused = sorted(set(datasets) - set(keys))
        if unused:
            logger.warning(f"{self}: datasets {unused} are not used by data_map; they are not loaded")
        return keys

    def _check_sampling_sizes(self, sampling_sizes: int | dict[str, int] | None) -> dict[str, int] | None:
        if sampling_sizes is None:
            return None
        if isinstance(sampling_sizes, int):
            sampling_sizes = dict.fromkeys(self.dataset_keys, sampling_sizes)
        problems = []
        if not isinstance(sampling_sizes, dict) or sorted(sampling_sizes) != self.dataset_keys:
            problems.append(f"sampling_sizes must be an int or a dict with the keys {self.dataset_keys}")
        elif not all(isinstance(size, int) and size >= 0 for size in sampling_sizes.values()):
            problems.append("sampling_sizes must be non-negative ints")
        if self.partition_epoch > 1:
            problems.append("sampling_sizes and partition_epoch cannot be combined (the sizes fix the epoch)")
        if problems:
            raise DatasetError(f"{self}: {'; '.join(problems)}, got {sampling_sizes!r}")
        return dict(sampling_sizes)

    def _check_data_dims(self, data_dims: dict[str, Any] | None) -> None:
        from returnn.datasets.generating import convert_data_dims

        for key, (dim, _) in convert_data_dims(data_dims, owner=self).items():
            if key not in self._specs or self.get_data_dim(key) != dim:
                found = self.get_data_dim(key) if key in self._specs else "no such key"
                raise DatasetError(f"{self}: data_dims[{key!r}] has dim {dim}, but the data has {found}")

    def _join_epoch_lists(self, epoch: int | None, epoch_lists: list[np.ndarray]) -> np.ndarray:
        if self.sampling_sizes is None:
            return _stack_pairs(epoch_lists)
        sampled = []
        for key, indices in zip(self.dataset_keys, epoch_lists):
            size = self.sampling_sizes[key]
            if size and not len(indices):
                raise DatasetError(f"{self}: dataset {key!r} has no sequences this epoch to sample {size} from")
            # Epoch e continues where epoch e - 1 stopped, so the whole list is seen before any repeats.
            start = ((epoch or 1) - 1) * size
            sampled.append(indices[np.arange(start, start + size) % max(len(indices), 1)] if size else indices[:0])
        return _stack_pairs(sampled)

    def _order_joined(self, epoch: int | None, joined: np.ndarray) -> list[int]:
        if self.interleave:
            # Next comes the dataset that is least far through its list (ties: the first key), so all finish
            # together and each keeps its own order: sort by (fraction done before the sequence, dataset).
            which = joined[:, 0]
            counts = np.bincount(which, minlength=len(self._datasets))
            rank = np.zeros(len(joined), dtype=np.int64)
            for idx in range(len(self._datasets)):
                rank[which == idx] = np.arange(counts[idx])
            order = np.lexsort((which, rank / np.maximum(counts[which], 1)))
            return self._split_epoch_order(epoch, order)
        if not self.random_dataset:
            return super()._order_joined(epoch, joined)
        # Interleave at random, but keep each sub-dataset's own order: shuffle which dataset comes next.
        rng = np.random.default_rng(self._get_random_seed_for_epoch(epoch))
        slots = rng.permutation(joined[:, 0])
        order = np.empty(len(joined), dtype=np.int64)
        for idx in range(len(self._datasets)):
            order[slots == idx] = np.flatnonzero(joined[:, 0] == idx)
        return self._split_epoch_order(epoch, order)
