"""Random-access user datasets: :class:`MapDatasetBase` (write your own), :class:`MapDatasetWrapper` (makes it a
:class:`~returnn.datasets.basic.Dataset`), :class:`FromListDataset` (sequences given as a list).

Example, in a config file::

    class MyData(MapDatasetBase):
        def __init__(self):
            super().__init__(data_types={"data": {"dim": 80}, "classes": {"dim": 10, "sparse": True}})

        def __len__(self):
            return 1000

        def __getitem__(self, seq_idx):
            return {"data": ..., "classes": ...}  # numpy arrays, time first

        def get_seq_len(self, seq_idx):  # optional: enables the length-based orderings
            return ...

    train = {"class": "MapDatasetWrapper", "map_dataset": MyData, "seq_ordering": "laplace:.100"}

The map dataset is pickled with the wrapper (for DataLoader workers): keep it light (paths, not loaded data), or
pass the class (or any function returning the map dataset) instead of an instance, so that each process makes its
own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from returnn.datasets.basic import STRING_DTYPE, DatasetSeq
from returnn.datasets.cached2 import CachedDataset2
from returnn.datasets.util.sub_datasets import DataSpec, DescribedBySpecs, describe_key, parse_data_spec, spec_mismatch
from returnn.errors import DatasetError

__all__ = ["MapDatasetBase", "MapDatasetWrapper", "FromListDataset"]


class MapDatasetBase:
    """Base class of random-access user datasets (see the module docs).

    :param data_types: ``{data_key: {"dim": ..., "shape": ..., "sparse": ..., "dtype": ...}}`` for every key that
        ``__getitem__`` returns (RETURNN's ``extern_data`` style; ``shape`` includes the time axis as None).
    """

    def __init__(self, data_types: dict[str, dict[str, Any]] | None = None):
        self.data_types = data_types or {}

    def __len__(self) -> int:
        """The number of sequences."""
        raise NotImplementedError(f"{type(self).__name__}.__len__")

    def __getitem__(self, seq_idx: int) -> dict[str, np.ndarray]:
        """The data of one sequence, ``{data_key: array}``, in any order of access."""
        raise NotImplementedError(f"{type(self).__name__}.__getitem__")

    def get_seq_len(self, seq_idx: int) -> int:
        """Optional: the length of a sequence without loading it, for the length-based ``seq_ordering``."""
        raise NotImplementedError(f"{type(self).__name__}.get_seq_len")

    def get_seq_tag(self, seq_idx: int) -> str:
        """The tag of a sequence; ``seq-<idx>`` unless overridden."""
        return f"seq-{seq_idx}"

    def get_seq_order(self, epoch: int | None = None) -> Sequence[int]:
        """Optional: the sequence indices of an epoch, replacing ``seq_ordering`` and ``partition_epoch``."""
        raise NotImplementedError(f"{type(self).__name__}.get_seq_order")


def _overrides(obj: MapDatasetBase, name: str) -> bool:
    return getattr(type(obj), name) is not getattr(MapDatasetBase, name)


class MapDatasetWrapper(DescribedBySpecs, CachedDataset2):
    """A :class:`MapDatasetBase` as a dataset: ordering (``get_seq_len`` enables the length-based orderings),
    ``partition_epoch``, sharding. A ``get_seq_order`` of the map dataset replaces ordering and partitioning.

    :param map_dataset: the map dataset, or a function (e.g. the class) that returns one.
    """

    def __init__(self, map_dataset: MapDatasetBase | Callable[[], MapDatasetBase], **kwargs: Any):
        super().__init__(**kwargs)
        if not isinstance(map_dataset, MapDatasetBase) and callable(map_dataset):
            map_dataset = map_dataset()
        if not isinstance(map_dataset, MapDatasetBase):
            raise DatasetError(
                f"{self}: map_dataset must be a MapDatasetBase (or a function returning one), got {map_dataset!r}"
            )
        if not map_dataset.data_types:
            raise DatasetError(
                f"{self}: {type(map_dataset).__name__} declares no data_types; pass data_types={{key: {{'dim': ..., "
                "'sparse': ...}}}} to MapDatasetBase.__init__ for every key that __getitem__ returns"
            )
        self.map_dataset = map_dataset
        where = f"{self} data_types"
        self._specs: dict[str, DataSpec] = {
            key: parse_data_spec(key, opts, where) for key, opts in map_dataset.data_types.items()
        }
        for key, spec in self._specs.items():
            describe_key(self, key, spec)
        self.inferred_dims = set(getattr(map_dataset, "inferred_dims", ()))
        # keys whose dtype is only the default: numpy's float64 / int64 arrays are converted to it
        self._default_dtype_keys = {key for key, opts in map_dataset.data_types.items() if not opts.get("dtype")}

    def get_total_num_seqs(self) -> int:
        return len(self.map_dataset)

    def get_all_tags(self) -> list[str]:
        return [self.map_dataset.get_seq_tag(idx) for idx in range(len(self.map_dataset))]

    def supports_sharding(self) -> bool:
        return True

    def _get_seq_len_for_ordering(self) -> Callable[[int], int] | None:
        return self.map_dataset.get_seq_len if _overrides(self.map_dataset, "get_seq_len") else None

    def _get_epoch_seq_order(
        self, epoch: int | None, seq_list: Sequence[str] | None, seq_order: Sequence[int] | None
    ) -> list[int]:
        if seq_list is None and seq_order is None and _overrides(self.map_dataset, "get_seq_order"):
            return self._shard_order(list(self.map_dataset.get_seq_order(epoch=epoch)))
        return super()._get_epoch_seq_order(epoch, seq_list, seq_order)

    def have_get_corpus_seq(self) -> bool:
        return True

    def get_corpus_seq(self, corpus_idx: int) -> DatasetSeq:
        tag = self.map_dataset.get_seq_tag(corpus_idx)
        item = self.map_dataset[corpus_idx]
        if not isinstance(item, dict) or item.keys() != self._specs.keys():
            found = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise DatasetError(
                f"{self}: {type(self.map_dataset).__name__}[{corpus_idx}] ({tag!r}) returned {found}; expected a dict "
                f"with the keys of data_types {sorted(self._specs)}"
            )
        features = {key: self._as_declared(key, np.asarray(value)) for key, value in item.items()}
        for key, value in features.items():
            problem = spec_mismatch(value, self._specs[key])
            if problem:
                raise DatasetError(f"{self}: sequence {tag!r}, key {key!r}: got {problem} (data_types)")
        return DatasetSeq(corpus_idx, features, seq_tag=tag)

    def _as_declared(self, key: str, value: np.ndarray) -> np.ndarray:
        """Floats as the default float dtype, integers as the default int dtype, for keys without a declared dtype."""
        dtype = np.dtype(self._specs[key].dtype) if self._specs[key].dtype != STRING_DTYPE else None
        if key not in self._default_dtype_keys or dtype is None or value.dtype == dtype:
            return value
        same_kind = value.dtype.kind == dtype.kind or (value.dtype.kind in "iu" and dtype.kind in "iu")
        return value.astype(dtype) if same_kind else value

    def get_tag(self, seq_idx: int) -> str:
        return self.map_dataset.get_seq_tag(self.get_corpus_seq_idx(seq_idx))

    def get_data_keys(self) -> list[str]:
        return list(self._specs)

    def get_target_list(self) -> list[str]:
        return [key for key in self._specs if key != "data"]


class FromListDataset(MapDatasetBase):
    """A map dataset over a list of sequences ``[{data_key: array}, ...]``.

    :param data_list: the sequences; all with the same keys.
    :param sort_data_key: the key whose length sorts the sequences (enables the length-based orderings).
    :param data_types: as in :class:`MapDatasetBase`; where not given, inferred from the data: the last axis of
        dense data, the largest class + 1 of 1-d integer data (sparse).
    """

    def __init__(
        self,
        data_list: Sequence[dict[str, np.ndarray]],
        sort_data_key: str | None = None,
        data_types: dict[str, dict[str, Any]] | None = None,
    ):
        if not data_list:
            raise DatasetError("FromListDataset: data_list is empty; give at least one sequence")
        self.data_list = [{key: np.asarray(value) for key, value in seq.items()} for seq in data_list]
        keys = sorted(self.data_list[0])
        for idx, seq in enumerate(self.data_list):
            if sorted(seq) != keys:
                raise DatasetError(f"FromListDataset: sequence {idx} has keys {sorted(seq)}, the first {keys}")
        if sort_data_key is not None and sort_data_key not in keys:
            raise DatasetError(f"FromListDataset: sort_data_key {sort_data_key!r} is not a data key ({keys})")
        self.sort_data_key = sort_data_key
        super().__init__(data_types=data_types or {key: self._infer_type(key) for key in keys})
        self.inferred_dims = set() if data_types else set(keys)  # MapDatasetWrapper passes this on

    def _infer_type(self, key: str) -> dict[str, Any]:
        first = self.data_list[0][key]
        if first.ndim == 1 and np.issubdtype(first.dtype, np.integer):
            num_classes = max((int(seq[key].max()) + 1 for seq in self.data_list if seq[key].size), default=0)
            return {"dim": num_classes, "sparse": True, "dtype": first.dtype.name}
        shape = (None, *first.shape[1:]) if first.ndim else ()
        return {"dim": first.shape[-1] if first.ndim >= 2 else None, "shape": shape, "dtype": first.dtype.name}

    def __len__(self) -> int:
        return len(self.data_list)

    def __getitem__(self, seq_idx: int) -> dict[str, np.ndarray]:
        return self.data_list[seq_idx]

    def get_seq_len(self, seq_idx: int) -> int:
        if self.sort_data_key is None:
            raise DatasetError("FromListDataset: give sort_data_key to sort by length")
        return len(self.data_list[seq_idx][self.sort_data_key])
