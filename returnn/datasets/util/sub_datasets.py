"""Helpers for datasets built from other datasets (MetaDataset, CombinedDataset, PostprocessingDataset, ...).

- :class:`DataSpec`: what one data key holds (dimension, per-sequence shape, dtype, sparse), parsed from RETURNN's
  ``extern_data``-style dicts (``data_types``, ``map_outputs``) or read off a dataset; :func:`spec_mismatch`
  compares an array with it; :func:`describe_key` sets a dataset's RETURNN-style description of a key from it;
- mixins for the data description: :class:`DescribedByInner` (that of one inner dataset) and
  :class:`DescribedBySpecs` (a DataSpec per key);
- :func:`epoch_corpus_indices`: the current epoch's corpus indices, range-checked;
- :func:`reject_options`: wrappers that leave ordering to their sub-datasets refuse the base ordering options;
- :func:`check_accepts_kwargs`: user callables must take ``**kwargs`` so that new arguments can be passed later.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from returnn.datasets.basic import STRING_DTYPE, Dataset
from returnn.errors import DatasetError

__all__ = [
    "DataSpec",
    "DescribedByInner",
    "DescribedBySpecs",
    "epoch_corpus_indices",
    "data_spec_of",
    "describe_key",
    "parse_data_spec",
    "spec_mismatch",
    "reject_options",
    "check_accepts_kwargs",
    "ORDERING_OPTIONS",
]

_SPEC_OPTIONS = ("dim", "shape", "sparse", "dtype", "available_for_inference")


class DataSpec(NamedTuple):
    """What one data key holds, per sequence.

    :param dim: number of classes (sparse) or feature dimension (dense); None where not fixed.
    :param shape: the per-sequence shape, time axis included, None for a dynamic axis: ``(None, 80)`` for dense
        features, ``(None,)`` for labels, ``()`` for a scalar per sequence.
    :param dtype: numpy dtype name, or ``"string"``.
    :param sparse: class indices (with ``dim`` classes) rather than features.
    """

    dim: int | None
    shape: tuple[int | None, ...]
    dtype: str
    sparse: bool

    @property
    def frame_shape(self) -> list[int]:
        """The shape of one time frame (``Dataset.get_data_shape``)."""
        return [int(size or 0) for size in self.shape[1:]]

    @property
    def num_outputs_entry(self) -> tuple[int, int]:
        """RETURNN's ``num_outputs`` entry: ``(dim, ndim)``, ndim counting the time axis."""
        return int(self.dim or 0), len(self.shape)


def data_spec_of(dataset: Dataset, key: str) -> DataSpec:
    """The spec of ``key`` as ``dataset`` describes it."""
    sparse = dataset.is_data_sparse(key)
    return DataSpec(
        dim=dataset.get_data_dim(key),
        shape=(None, *dataset.get_data_shape(key)),
        dtype=dataset.get_data_dtype(key),
        sparse=sparse,
    )


def describe_key(
    dataset: Dataset, key: str, spec: DataSpec, source: Dataset | None = None, source_key: str | None = None
) -> None:
    """Set ``dataset.num_outputs[key]`` (and ``labels``, and ``num_inputs`` for ``"data"``) for a key described by
    ``spec``; where the key comes unchanged from ``source``'s ``source_key``, take that dataset's entry and labels."""
    entry = source.num_outputs.get(source_key) if source is not None else None
    dataset.num_outputs[key] = entry or spec.num_outputs_entry
    if source is not None and source_key in source.labels:
        dataset.labels[key] = source.labels[source_key]
    if key == "data":
        dataset.num_inputs = dataset.num_outputs[key][0]


def parse_data_spec(key: str, opts: Any, where: str) -> DataSpec:
    """Parse ``{"dim": ..., "shape": ..., "sparse": ..., "dtype": ...}`` (RETURNN's extern_data style).

    Defaults: shape ``(None,)`` for sparse and ``(None, dim)`` for dense data; dtype int32 for sparse, else
    float32; dim the last axis of dense data.

    :param where: names the option in errors, e.g. ``"PostprocessingDataset 'train' map_outputs"``.
    """
    if not isinstance(opts, dict):
        raise DatasetError(f"{where}[{key!r}]: expected a dict like {{'dim': 80, 'shape': (None, 80)}}, got {opts!r}")
    unknown = sorted(set(opts) - set(_SPEC_OPTIONS))
    if unknown:
        raise DatasetError(f"{where}[{key!r}]: unknown option(s) {unknown}; valid: {', '.join(_SPEC_OPTIONS)}")
    sparse = bool(opts.get("sparse", False))
    dim = opts.get("dim")
    shape = opts.get("shape")
    if shape is None:
        if not sparse and dim is None:
            raise DatasetError(f"{where}[{key!r}]: give 'dim' or 'shape' (e.g. {{'dim': 80}})")
        shape = (None,) if sparse else (None, dim)
    shape = tuple(shape)
    if not all(size is None or (isinstance(size, int) and size >= 0) for size in shape):
        raise DatasetError(f"{where}[{key!r}]: shape must hold ints and None, got {shape!r}")
    if dim is None and not sparse and shape and shape[-1] is not None and len(shape) >= 2:
        dim = shape[-1]
    if sparse and dim is None:
        raise DatasetError(f"{where}[{key!r}]: sparse data needs 'dim' (the number of classes)")
    dtype = opts.get("dtype") or ("int32" if sparse else "float32")
    if dtype != STRING_DTYPE:
        try:
            dtype = np.dtype(dtype).name
        except TypeError as exc:
            raise DatasetError(f"{where}[{key!r}]: unknown dtype {dtype!r}") from exc
    return DataSpec(dim=dim, shape=shape, dtype=dtype, sparse=sparse)


def spec_mismatch(array: np.ndarray, spec: DataSpec) -> str | None:
    """What in ``array`` does not match ``spec`` (for an error message), or None if it matches."""
    if spec.dtype == STRING_DTYPE:
        return None
    problems = []
    if array.dtype.name != spec.dtype:
        problems.append(f"dtype {array.dtype.name}, declared {spec.dtype}")
    if array.ndim != len(spec.shape) or any(
        size is not None and size != actual for size, actual in zip(spec.shape, array.shape)
    ):
        problems.append(f"shape {list(array.shape)}, declared {list(spec.shape)} (None: any size)")
    return "; ".join(problems) or None


class DescribedByInner:
    """Mixin for a dataset that has the data keys, dimensions, dtypes and shapes of one inner dataset.

    The class sets ``self.inner`` (a :class:`Dataset`); put the mixin before the Dataset base class.
    """

    inner: Dataset

    def copy_inner_description(self) -> None:
        """Take over ``num_inputs``, ``num_outputs`` and ``labels`` of the inner dataset."""
        self.num_inputs = self.inner.num_inputs
        self.num_outputs = dict(self.inner.num_outputs)
        self.labels = dict(self.inner.labels)

    def get_data_keys(self) -> list[str]:
        return self.inner.get_data_keys()

    def get_target_list(self) -> list[str]:
        return self.inner.get_target_list()

    def get_data_dim(self, key: str) -> int:
        return self.inner.get_data_dim(key)

    def get_data_dtype(self, key: str) -> str:
        return self.inner.get_data_dtype(key)

    def is_data_sparse(self, key: str) -> bool:
        return self.inner.is_data_sparse(key)

    def get_data_shape(self, key: str) -> list[int]:
        return self.inner.get_data_shape(key)


class EpochOfInner:
    """Mixin for a dataset whose current epoch is that of ``self.inner`` (sequences, their order and count); put it
    before :class:`DescribedByInner` and the Dataset base class."""

    inner: Dataset

    def _get_epoch_seq_order(
        self, epoch: int | None, seq_list: Sequence[str] | None, seq_order: Sequence[int] | None
    ) -> None:
        return None  # the inner dataset's

    @property
    def num_seqs(self) -> int:
        return self.inner.num_seqs

    def is_less_than_num_seqs(self, n: int) -> bool:
        return self.inner.is_less_than_num_seqs(n)

    def get_current_seq_order(self) -> list[int]:
        return self.inner.get_current_seq_order()

    def have_corpus_seq_idx(self) -> bool:
        return self.inner.have_corpus_seq_idx()

    def finish_epoch(self) -> None:
        super().finish_epoch()
        self.inner.finish_epoch()

    def load_seqs(self, start: int, end: int) -> None:
        self.inner.load_seqs(start, end)

    def get_data(self, seq_idx: int, key: str) -> np.ndarray:
        return self.inner.get_data(seq_idx, key)

    def get_tag(self, seq_idx: int) -> str:
        return self.inner.get_tag(seq_idx)

    def get_seq_length(self, seq_idx: int) -> dict[str, int]:
        return self.inner.get_seq_length(seq_idx)


class CorpusOfInner:
    """Mixin for a dataset that wraps ``self.inner`` with its corpus: the same tags, and sharding passed on."""

    inner: Dataset

    def set_sharding(self, shard_index: int, num_shards: int) -> None:
        super().set_sharding(shard_index, num_shards)
        self.inner.set_sharding(shard_index, num_shards)

    def supports_sharding(self) -> bool:
        return self.inner.supports_sharding()

    def get_total_num_seqs(self) -> int:
        return self.inner.get_total_num_seqs()

    def get_all_tags(self) -> list[str]:
        return self.inner.get_all_tags()


class DescribedBySpecs:
    """Mixin for a dataset that describes its data keys by ``self._specs: dict[str, DataSpec]``."""

    _specs: dict[str, DataSpec]

    def _spec(self, key: str) -> DataSpec:
        if key not in self._specs:
            raise DatasetError(f"{self}: unknown data key {key!r}; known keys: {list(self._specs)}")
        return self._specs[key]

    def get_data_dim(self, key: str) -> int:
        return int(self._spec(key).dim or 0)

    def get_data_dtype(self, key: str) -> str:
        return self._spec(key).dtype

    def is_data_sparse(self, key: str) -> bool:
        return self._spec(key).sparse

    def get_data_shape(self, key: str) -> list[int]:
        return self._spec(key).frame_shape


def epoch_corpus_indices(dataset: Dataset, total: int) -> np.ndarray:
    """The corpus indices of ``dataset``'s current epoch, checked to lie in ``0 .. total - 1`` (explicit
    ``seq_order`` lists come from users)."""
    order = np.asarray(dataset.get_current_seq_order(), dtype=np.int64)
    if order.size and (order.min() < 0 or order.max() >= total):
        raise DatasetError(f"{dataset}: seq_order holds indices outside 0..{total - 1}")
    return order


# The base-class options that decide which sequences an epoch visits, with their neutral values.
ORDERING_OPTIONS: dict[str, Any] = {
    "seq_ordering": "default",
    "partition_epoch": 1,
    "repeat_epoch": 1,
    "seq_list_filter_file": None,
    "unique_seq_tags": False,
    "seq_order_seq_lens_file": None,
    "fixed_random_subset": None,
    "random_subset": None,
}


def reject_options(dataset: Dataset, names: Sequence[str], hint: str) -> None:
    """Raise if any of the base options ``names`` is set on ``dataset`` (wrappers whose sub-datasets decide)."""
    given = [f"{name}={getattr(dataset, name)!r}" for name in names if getattr(dataset, name) != ORDERING_OPTIONS[name]]
    if given:
        raise DatasetError(f"{dataset}: {', '.join(given)} has no effect here; {hint}")


def check_accepts_kwargs(func: Any, what: str, required: Sequence[str] = ()) -> None:
    """Raise unless ``func`` is callable and takes ``**kwargs`` (and the keyword arguments ``required``).

    :param what: names the option in errors, e.g. ``"PostprocessingDataset 'train' map_seq"``.
    """
    if not callable(func):
        raise DatasetError(f"{what}: expected a function, got {func!r}")
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return  # builtins and some C callables have no signature; they are called as they are
    if not any(param.kind == param.VAR_KEYWORD for param in params):
        names = [name for name in required if name not in {param.name for param in params}]
        needs = ", ".join([*(f"{name}=..." for name in names), "**kwargs"])
        raise DatasetError(
            f"{what}: {getattr(func, '__name__', func)!r} must accept **kwargs, so that new arguments can be "
            f"passed in later versions; add them to its signature ({needs})"
        )
