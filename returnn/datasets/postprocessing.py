""":class:`PostprocessingDataset`: on-the-fly processing of another dataset's sequences (augmentation, feature
extraction, mixing sequences), plus :class:`LaplaceOrdering` and :class:`Sequential` for ``map_seq_stream``.

The processing functions see a sequence as a plain dict: ``{data_key: numpy array, ..., "seq_tag": str}``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from returnn.datasets.basic import Dataset, DatasetSeq
from returnn.datasets.cached2 import CachedDataset2
from returnn.datasets.registry import init_dataset
from returnn.datasets.util.sub_datasets import (
    ORDERING_OPTIONS,
    DataSpec,
    DescribedBySpecs,
    check_accepts_kwargs,
    data_spec_of,
    describe_key,
    parse_data_spec,
    reject_options,
    spec_mismatch,
)
from returnn.errors import DatasetError

__all__ = ["PostprocessingDataset", "LaplaceOrdering", "Sequential"]

logger = logging.getLogger(__name__)

SEQ_TAG = "seq_tag"
Item = dict[str, Any]


class PostprocessingDataset(DescribedBySpecs, CachedDataset2):
    """Another dataset's sequences, changed on the fly by user functions (usually defined in the config)::

        def speed_perturb(data, *, rng, **kwargs):
            data["data"] = ...  # a new numpy array
            return data

        train = {
            "class": "PostprocessingDataset",
            "dataset": {"class": "HDFDataset", "files": [...], "seq_ordering": "laplace:.1000"},
            "map_seq": speed_perturb,
            "map_outputs": {"data": {"dim": 80}},  # only for keys whose description changes
        }

    - ``map_seq(data, *, rng, epoch, **kwargs) -> data``: one sequence in, one out. ``data`` is
      ``{data_key: array, ..., "seq_tag": str}``; ``rng`` a :class:`numpy.random.RandomState` seeded from the epoch
      and the sequence's position in the epoch, so the result does not depend on the number of DataLoader workers
      (use it only during the call).
    - ``map_seq_stream(iterator, *, rng, epoch, **kwargs) -> iterator``: the whole stream of the epoch (of this
      process's shard); may merge, split, drop or reorder sequences. Its ``rng`` is seeded from the epoch and the
      shard. With both, ``map_seq`` runs first.

    Both must accept ``**kwargs``. They are kept as given (pickled by reference, like any config function).

    The order of the epoch, ``partition_epoch`` and sharding are the wrapped dataset's: set ``seq_ordering`` etc.
    there, not here.

    Every result is checked: it must be a dict with exactly this dataset's data keys (plus optionally
    ``seq_tag``). Keys declared in ``map_outputs`` must match their declaration; the others must keep the dtype and
    number of axes the wrapped dataset gives them.

    :param dataset: the wrapped dataset (dict).
    :param map_seq: the per-sequence function.
    :param map_seq_stream: the stream function.
    :param map_outputs: ``{data_key: {"dim": ..., "shape": ..., "sparse": ..., "dtype": ...}}`` for keys that the
        functions add or change (shape includes the time axis as None); ``{data_key: None}`` for keys they drop.
    :param map_seq_stream_preserves_num_seqs: the stream yields exactly one sequence per input sequence, so the
        number of sequences is known up front (default: the function's ``preserves_num_seqs`` attribute).
    :param buf_size: accepted for RETURNN configs; unused (DataLoader workers prefetch).
    :param num_workers: accepted for RETURNN configs; parallelism comes from the DataLoader workers
        (``num_workers_per_gpu``), which shard the wrapped dataset.
    """

    def __init__(
        self,
        dataset: dict[str, Any] | Dataset,
        map_seq: Callable[..., Item] | None = None,
        map_seq_stream: Callable[..., Iterator[Item]] | None = None,
        map_outputs: dict[str, dict[str, Any] | None] | None = None,
        map_seq_stream_preserves_num_seqs: bool | None = None,
        buf_size: int = 1,
        num_workers: int = 0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        reject_options(self, list(ORDERING_OPTIONS), "set it on the wrapped dataset")
        if map_seq is None and map_seq_stream is None:
            raise DatasetError(f"{self}: set map_seq or map_seq_stream (or both)")
        for name, func in (("map_seq", map_seq), ("map_seq_stream", map_seq_stream)):
            if func is not None:
                check_accepts_kwargs(func, f"{self} {name}", required=("rng", "epoch"))
        if num_workers:
            logger.warning(
                f"{self}: num_workers={num_workers} has no effect; the DataLoader workers (num_workers_per_gpu) "
                "run the postprocessing in parallel"
            )
        self.map_seq = map_seq
        self.map_seq_stream = map_seq_stream
        if map_seq_stream_preserves_num_seqs is None and map_seq_stream is not None:
            map_seq_stream_preserves_num_seqs = getattr(map_seq_stream, "preserves_num_seqs", None)
        self.map_seq_stream_preserves_num_seqs = bool(map_seq_stream_preserves_num_seqs)
        self.inner = init_dataset(dataset, default_kwargs={"name": f"{self.name}_inner"})
        self._describe(map_outputs or {})
        self._stream: Iterator[tuple[int, Item]] | None = None
        self._next_seq_idx = 0
        self._expected_num_seqs: int | None = None
        self._inner_dtypes: dict[str, tuple[np.dtype, int]] = {}  # key -> (dtype, ndim) as the inner delivers it

    def _describe(self, map_outputs: dict[str, dict[str, Any] | None]) -> None:
        """The output keys: the inner dataset's, changed, added or removed by ``map_outputs``."""
        if not isinstance(map_outputs, dict):
            raise DatasetError(f"{self}: map_outputs must be a dict {{data_key: {{'dim': ...}} or None}}")
        inner_keys = self.inner.get_data_keys()
        self._declared: dict[str, DataSpec] = {}
        for key, opts in map_outputs.items():
            if opts is None:
                if key not in inner_keys:
                    raise DatasetError(
                        f"{self}: map_outputs drops {key!r}, which the wrapped dataset lacks ({inner_keys})"
                    )
            else:
                self._declared[key] = parse_data_spec(key, opts, f"{self} map_outputs")
        kept = [key for key in inner_keys if key not in map_outputs]
        self._specs = {key: data_spec_of(self.inner, key) for key in kept} | self._declared
        for key, spec in self._specs.items():
            source = (self.inner, key) if key in kept else (None, None)  # kept keys keep the inner labels
            describe_key(self, key, spec, *source)

    # --- corpus and sharding: the wrapped dataset's -------------------------------------------------------

    def supports_sharding(self) -> bool:
        return self.inner.supports_sharding()

    def set_sharding(self, shard_index: int, num_shards: int) -> None:
        super().set_sharding(shard_index, num_shards)
        self.inner.set_sharding(shard_index, num_shards)

    def _stream_error(self, what: str) -> DatasetError:
        return DatasetError(f"{self}: {what} is not defined with map_seq_stream (it can change the sequences)")

    def get_total_num_seqs(self) -> int:
        if self.map_seq_stream is not None:
            raise self._stream_error("the total number of sequences")
        return self.inner.get_total_num_seqs()

    def get_all_tags(self) -> list[str]:
        if self.map_seq_stream is not None:
            raise self._stream_error("the list of all tags")
        return self.inner.get_all_tags()

    def get_current_seq_order(self) -> list[int]:
        if self.map_seq_stream is not None:
            raise self._stream_error("the epoch's order of corpus indices")
        return self.inner.get_current_seq_order()

    # --- epochs ------------------------------------------------------------------------------------------

    def init_seq_order(
        self, epoch: int | None = None, seq_list: Sequence[str] | None = None, seq_order: Sequence[int] | None = None
    ) -> bool:
        """Set up the wrapped dataset's epoch and start the processing stream."""
        explicit = seq_list is not None or seq_order is not None
        if explicit and self.map_seq_stream is not None:
            raise DatasetError(f"{self}: with map_seq_stream, an epoch cannot be given as a list of sequences")
        super().init_seq_order(epoch=epoch, seq_list=seq_list, seq_order=seq_order)
        self.inner.init_seq_order(epoch=epoch, seq_list=seq_list, seq_order=seq_order)
        seed = self._get_random_seed_for_epoch(epoch)
        shard_index, num_shards = (0, 1) if explicit else (self._shard_index, self._num_shards)
        stream: Iterator[Item] = self._mapped_inner(epoch, seed, shard_index, num_shards)
        if self.map_seq_stream is not None:
            rng = np.random.RandomState(np.random.PCG64([seed % 2**63, 1, shard_index, num_shards]))
            stream = self.map_seq_stream(stream, rng=rng, epoch=epoch)
            if not isinstance(stream, Iterator):
                raise DatasetError(f"{self}: map_seq_stream must return an iterator, got {type(stream).__name__}")
        self._stream = enumerate(stream)
        self._next_seq_idx = 0
        self._expected_num_seqs = None
        if self.map_seq_stream is None or self.map_seq_stream_preserves_num_seqs:
            try:
                self._expected_num_seqs = self._num_seqs = self.inner.num_seqs
            except DatasetError:
                pass  # a stream of unknown length: known at its end
        return True

    def _get_epoch_seq_order(
        self, epoch: int | None, seq_list: Sequence[str] | None, seq_order: Sequence[int] | None
    ) -> None:
        return None  # the sequences come from the processing stream

    def _mapped_inner(self, epoch: int | None, seed: int, shard_index: int, num_shards: int) -> Iterator[Item]:
        """The wrapped dataset's sequences of this epoch as dicts, after ``map_seq``."""
        inner, keys = self.inner, self.inner.get_data_keys()
        rngs = _PositionRng(seed)
        seq_idx = 0
        while inner.is_less_than_num_seqs(seq_idx):
            inner.load_seqs(seq_idx, seq_idx + 1)
            item = {key: inner.get_data(seq_idx, key) for key in keys}
            tag = item[SEQ_TAG] = inner.get_tag(seq_idx)
            for key in keys:
                self._inner_dtypes.setdefault(key, (item[key].dtype, item[key].ndim))
            if self.map_seq is not None:
                # Seeded by the position in the whole epoch: the same in every shard layout.
                item = self.map_seq(item, rng=rngs.at(shard_index + seq_idx * num_shards), epoch=epoch)
                if isinstance(item, dict):
                    item.setdefault(SEQ_TAG, tag)
            yield item
            seq_idx += 1

    def _collect_single_seq(self, seq_idx: int) -> DatasetSeq | None:
        if self._stream is None:
            raise DatasetError(f"{self}: call init_seq_order before reading sequences")
        if seq_idx < self._next_seq_idx:
            raise DatasetError(f"{self}: sequences come from a stream and are read in order; {seq_idx} is past")
        for produced_idx, item in self._stream:
            self._next_seq_idx = produced_idx + 1
            if produced_idx == seq_idx:
                return self._to_seq(seq_idx, item)
        if self._expected_num_seqs is not None and seq_idx < self._expected_num_seqs:
            raise DatasetError(
                f"{self}: map_seq_stream stopped after {seq_idx} sequences, but it is declared to preserve the "
                f"number of sequences ({self._expected_num_seqs}); fix the function, or unset "
                "map_seq_stream_preserves_num_seqs"
            )
        return None

    def _to_seq(self, seq_idx: int, item: Any) -> DatasetSeq:
        """Check one result of the functions (see the class docs) and make it a DatasetSeq."""
        source = "map_seq_stream" if self.map_seq_stream is not None else "map_seq"
        if not isinstance(item, dict):
            raise DatasetError(f"{self}: {source} must give dicts {{data_key: array}}, got {type(item).__name__}")
        item = dict(item)
        tag = item.pop(SEQ_TAG, None)
        tag = f"seq-{seq_idx}" if tag is None else tag
        if not isinstance(tag, str):
            raise DatasetError(f"{self}: {source} gave seq_tag {tag!r}; it must be a str")
        if item.keys() != self._specs.keys():
            raise DatasetError(
                f"{self}: {source} gave keys {sorted(item)} for {tag!r}, but the dataset has {sorted(self._specs)}; "
                "declare added keys in map_outputs ({key: {'dim': ...}}) and dropped ones as {key: None}"
            )
        for key, value in item.items():
            item[key] = value = np.asarray(value)
            if key in self._declared:
                problem = spec_mismatch(value, self._declared[key])
                if problem:
                    raise DatasetError(f"{self}: {source} result for {tag!r}, key {key!r}: got {problem} (map_outputs)")
                continue
            dtype, ndim = self._inner_dtypes.get(key, (value.dtype, value.ndim))
            if value.ndim != ndim or not _same_dtype(value.dtype, dtype):
                raise DatasetError(
                    f"{self}: {source} result for {tag!r}, key {key!r}: got dtype {value.dtype.name} with "
                    f"{value.ndim} axes, the wrapped dataset gives {dtype.name} with {ndim}; convert it back, or "
                    "declare the new form in map_outputs"
                )
        return DatasetSeq(seq_idx, item, seq_tag=tag)

    def finish_epoch(self) -> None:
        super().finish_epoch()
        self._stream = None
        self.inner.finish_epoch()

    # --- data description --------------------------------------------------------------------------------

    def get_data_keys(self) -> list[str]:
        return list(self._specs)

    def get_target_list(self) -> list[str]:
        return [key for key in self._specs if key != "data"]


def _same_dtype(dtype: np.dtype, expected: np.dtype) -> bool:
    # Strings vary in their numpy length (<U3, <U7, object): any string type counts as the same.
    return dtype == expected or (dtype.kind in "USO" and expected.kind in "USO")


class _PositionRng:
    """The RandomState of each position of an epoch: the same in every process, and cheap to make (seeding a fresh
    generator per sequence would cost more than many ``map_seq`` functions)."""

    def __init__(self, seed: int):
        self._bit_generator = np.random.PCG64(seed % 2**63)
        self._start = self._bit_generator.state

    def at(self, position: int) -> np.random.RandomState:
        """A new RandomState for ``position``, valid until the next call (they share one bit generator)."""
        self._bit_generator.state = self._start
        self._bit_generator.advance(position << 64)  # 2**64 draws apart: the streams never overlap in practice
        return np.random.RandomState(self._bit_generator)


class LaplaceOrdering:
    """A ``map_seq_stream`` that orders the stream like ``seq_ordering="laplace:.N"``: it takes bins of
    ``num_seqs_per_bin`` sequences and sorts them by length, alternately ascending and descending.

    :param num_seqs_per_bin: sequences per bin.
    :param length_key: the data key whose length (first axis) sorts.
    """

    preserves_num_seqs = True

    def __init__(self, num_seqs_per_bin: int, length_key: str = "data"):
        if not (isinstance(num_seqs_per_bin, int) and num_seqs_per_bin > 0):
            raise DatasetError(f"LaplaceOrdering: num_seqs_per_bin must be a positive int, got {num_seqs_per_bin!r}")
        self.num_seqs_per_bin = num_seqs_per_bin
        self.length_key = length_key

    def __call__(self, iterator: Iterator[Item], **kwargs: Any) -> Iterator[Item]:
        iterator = iter(iterator)
        descending = False
        while True:
            bin_items = list(itertools.islice(iterator, self.num_seqs_per_bin))
            if not bin_items:
                return
            bin_items.sort(key=lambda item: len(item[self.length_key]), reverse=descending)
            yield from bin_items
            descending = not descending


class Sequential:
    """Several ``map_seq`` (or several ``map_seq_stream``) functions as one: ``Sequential(f, g)(x) = g(f(x))``.

    :param funcs: the functions, applied in order; each gets the same keyword arguments.
    """

    def __init__(self, *funcs: Callable[..., Any]):
        for func in funcs:
            check_accepts_kwargs(func, "Sequential")
        self.funcs = funcs

    def __call__(self, arg: Any, **kwargs: Any) -> Any:
        for func in self.funcs:
            arg = func(arg, **kwargs)
        return arg

    @property
    def preserves_num_seqs(self) -> bool:
        """Whether all the functions keep the number of sequences (for ``map_seq_stream``)."""
        return all(getattr(func, "preserves_num_seqs", False) for func in self.funcs)
