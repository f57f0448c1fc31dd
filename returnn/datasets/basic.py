"""The :class:`Dataset` base class: epochs, sequence order, partitioning, sharding, pickling.

A dataset is a list of sequences, each a dict of numpy arrays (one per data key, time first) plus a tag. For
each epoch, :meth:`Dataset.init_seq_order` fixes which sequences are visited in which order; afterwards
``seq_idx`` (0 .. ``num_seqs`` - 1) indexes that order, and :meth:`Dataset.get_corpus_seq_idx` maps it back to
the position in the corpus.

How the order of an epoch is made (:meth:`Dataset.get_seq_order_for_epoch`):

1. the corpus is narrowed once: ``fixed_random_subset``, ``seq_list_filter_file``, ``unique_seq_tags``;
2. per (full) epoch, ``random_subset`` draws a fresh random subset;
3. ``seq_ordering`` orders it (see :mod:`returnn.datasets.seq_order`);
4. ``partition_epoch`` P splits that order into P contiguous parts, and epoch e visits part (e - 1) % P, so P
   consecutive epochs see every sequence once; ``repeat_epoch`` R visits the order R times instead; datasets with
   ``epoch_wise_filter`` filter the result;
5. with :meth:`Dataset.set_sharding` (DataLoader workers, distributed ranks), shard i of n keeps
   ``order[i::n]``, so every sequence lands in exactly one shard.

The random seed of an epoch is ``fixed_random_seed`` if given, else the full epoch (the epoch divided by
``partition_epoch``, rounded up, and again by the ordering's ``:N``) plus ``random_seed_offset``: the same in
every process, and the same for all partitions of one full epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from returnn.datasets.seq_order import SeqOrdering, make_seq_order, parse_seq_ordering
from returnn.datasets.util.files import read_dict_file
from returnn.datasets.util.seq_lists import index_by_tag, read_tag_list
from returnn.errors import DatasetError

__all__ = ["Dataset", "DatasetSeq", "STRING_DTYPE"]

STRING_DTYPE = "string"  # what get_data_dtype gives for variable-length text data (numpy object arrays of str)


class DatasetSeq:
    """One loaded sequence: its data arrays by key, its position in the epoch, and its tag.

    :param seq_idx: the position in the epoch's order.
    :param features: ``{key: array}``, or a single array, which becomes key ``"data"``.
    :param targets: more arrays by key, or a single array, which becomes key ``"classes"`` (RETURNN's form).
    :param seq_tag: the sequence's name; ``"seq-<seq_idx>"`` if not given.
    """

    def __init__(
        self,
        seq_idx: int,
        features: np.ndarray | dict[str, np.ndarray],
        targets: np.ndarray | dict[str, np.ndarray] | None = None,
        seq_tag: str | None = None,
    ):
        self.seq_idx = seq_idx
        self.seq_tag = seq_tag if seq_tag is not None else f"seq-{seq_idx}"
        self.features: dict[str, np.ndarray] = (
            {"data": features} if isinstance(features, np.ndarray) else dict(features)
        )
        if isinstance(targets, np.ndarray):
            targets = {"classes": targets}
        self.features.update(targets or {})

    def __repr__(self) -> str:
        shapes = ", ".join(f"{key}: {value.shape} {value.dtype}" for key, value in self.features.items())
        return f"<DatasetSeq {self.seq_idx} {self.seq_tag!r} {{{shapes}}}>"

    def get_data_keys(self) -> list[str]:
        return list(self.features)

    def get_data(self, key: str) -> np.ndarray:
        if key not in self.features:
            raise DatasetError(f"sequence {self.seq_tag!r} has no data key {key!r}; it has {sorted(self.features)}")
        return self.features[key]

    @property
    def num_frames(self) -> dict[str, int]:
        """The length (first axis) of each key; a scalar counts as length 1."""
        return {key: (value.shape[0] if value.ndim else 1) for key, value in self.features.items()}


def _rebuild_dataset(cls: type, args: tuple, kwargs: dict[str, Any], state: dict[str, Any]) -> Dataset:
    """Unpickle: construct the dataset anew, then restore sharding and the last epoch set-up."""
    dataset = cls(*args, **kwargs)
    dataset.set_sharding(*state["sharding"])
    if state["init_seq_order"] is not None:
        epoch, seq_list, seq_order = state["init_seq_order"]
        dataset.init_seq_order(epoch=epoch, seq_list=seq_list, seq_order=seq_order)
    return dataset


class Dataset:
    """Base class of all datasets. See the module docstring for how an epoch's order is made.

    A subclass provides the data: ``get_data``, the dimensions (``num_inputs``, ``num_outputs``, ``labels`` or
    the ``get_data_*`` methods), and the corpus: either ``get_total_num_seqs`` and ``get_all_tags`` (the base
    ``init_seq_order`` then orders the corpus, and sharding works: return True from ``supports_sharding``), or
    its own ``init_seq_order`` that sets ``self._seq_order`` (the corpus index of each epoch position) or
    overrides ``num_seqs``.

    Pickling rebuilds the dataset from its constructor arguments, then restores the sharding and replays the
    last ``init_seq_order`` call; open files are never pickled, subclasses open them lazily.

    :param name: shown in logs and error messages (the engine passes "train", "dev", ...).
    :param seq_ordering: see :mod:`returnn.datasets.seq_order`.
    :param fixed_random_seed: seed for every epoch instead of one derived from the epoch.
    :param random_seed_offset: added to the derived seed.
    :param partition_epoch: split the data into this many sub-epochs.
    :param repeat_epoch: visit the data this many times per epoch.
    :param seq_list_filter_file: a text file (optionally gzipped) with one sequence tag per line: only those.
    :param unique_seq_tags: visit each sequence tag only once (the first occurrence).
    :param seq_order_seq_lens_file: a Python/JSON dict ``{tag: length}`` for the length-based orderings.
    :param estimated_num_seqs: a hint for progress reports when the number of sequences is not known.
    :param fixed_random_subset: use only this many sequences (int) or this fraction (float < 1) of the corpus,
        chosen once with ``fixed_random_subset_seed``.
    :param fixed_random_subset_seed: seed of the fixed subset.
    :param random_subset: per full epoch, a new random subset of this many sequences (int) or this fraction.
    :param window: (HDFDataset) each frame of ``data`` becomes the ``window`` frames around it, concatenated
        (``[T, window * dim]``, zeros beyond the edges); an even window grows by one.
    """

    supports_window = False  # whether the class implements the option window

    def __new__(cls, *args: Any, **kwargs: Any) -> Dataset:
        # Remember the constructor arguments: unpickling (spawned DataLoader workers) rebuilds from them.
        obj = super().__new__(cls)
        obj._ctor_args = args
        obj._ctor_kwargs = dict(kwargs)
        return obj

    def __init__(
        self,
        name: str | None = None,
        seq_ordering: str = "default",
        fixed_random_seed: int | None = None,
        random_seed_offset: int = 0,
        partition_epoch: int | None = 1,
        repeat_epoch: int | None = 1,
        seq_list_filter_file: str | None = None,
        unique_seq_tags: bool = False,
        seq_order_seq_lens_file: str | None = None,
        estimated_num_seqs: int | None = None,
        fixed_random_subset: int | float | None = None,
        fixed_random_subset_seed: int = 42,
        random_subset: int | float | None = None,
        window: int = 1,
    ):
        self.name = name or type(self).__name__
        self.seq_ordering = seq_ordering
        self._ordering: SeqOrdering = parse_seq_ordering(seq_ordering)
        self.fixed_random_seed = fixed_random_seed
        self.random_seed_offset = random_seed_offset or 0
        self.partition_epoch = _check_count(self, "partition_epoch", partition_epoch)
        self.repeat_epoch = _check_count(self, "repeat_epoch", repeat_epoch)
        if self.partition_epoch > 1 and self.repeat_epoch > 1:
            raise DatasetError(f"{self}: use either partition_epoch or repeat_epoch, not both")
        self.seq_list_filter_file = seq_list_filter_file
        self.unique_seq_tags = unique_seq_tags
        self.seq_order_seq_lens_file = seq_order_seq_lens_file
        self.estimated_num_seqs = estimated_num_seqs
        self.fixed_random_subset = _check_subset(self, "fixed_random_subset", fixed_random_subset)
        self.fixed_random_subset_seed = fixed_random_subset_seed
        self.random_subset = _check_subset(self, "random_subset", random_subset)
        self.window = _check_count(self, "window", window) | 1  # an even window grows by one, as in RETURNN
        if self.window > 1 and not self.supports_window:
            raise DatasetError(f"{self}: the option window is supported by HDFDataset only; stack frames in the model")
        self.epoch: int | None = None
        self.num_inputs = 0
        self.num_outputs: dict[str, tuple[int, int]] = {}
        self.labels: dict[str, list[str]] = {}
        # keys whose number of classes was inferred from the data, not declared (meta datasets may widen it)
        self.inferred_dims: set[str] = set()
        self._seq_order: list[int] | None = None
        self._last_init_seq_order: tuple[Any, Any, Any] | None = None
        self._num_shards = 1
        self._shard_index = 0
        self._corpus_selection: tuple[int, np.ndarray] | None = None  # (corpus size, selected corpus indices)
        self._seq_lens_from_file_cache: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} epoch={self.epoch}>"

    def __str__(self) -> str:
        return f"dataset {self.name!r} ({type(self).__name__})"

    def __reduce__(self) -> tuple:
        state = {"sharding": (self._shard_index, self._num_shards), "init_seq_order": self._last_init_seq_order}
        return _rebuild_dataset, (type(self), self._ctor_args, self._ctor_kwargs, state)

    def initialize(self) -> None:
        """Kept for RETURNN compatibility; datasets are ready after construction."""

    # --- epoch set-up -------------------------------------------------------------------------------------

    def init_seq_order(
        self, epoch: int | None = None, seq_list: Sequence[str] | None = None, seq_order: Sequence[int] | None = None
    ) -> bool:
        """Set up an epoch: decide which sequences are visited in which order.

        :param epoch: the (sub-)epoch, starting at 1; None means "not training": the seed of epoch 1, and no
            partition_epoch or repeat_epoch (forwarding visits every sequence once).
        :param seq_list: visit exactly these sequence tags, in this order (no ordering, partitioning, sharding).
        :param seq_order: visit exactly these corpus indices, in this order (likewise).
        :return: whether the order differs from the previous one.
        """
        self.epoch = epoch
        self._last_init_seq_order = (epoch, seq_list, seq_order)
        old_order = self._seq_order
        self._seq_order = self._get_epoch_seq_order(epoch, seq_list, seq_order)
        return self._seq_order is None or self._seq_order != old_order

    def _get_epoch_seq_order(
        self, epoch: int | None, seq_list: Sequence[str] | None, seq_order: Sequence[int] | None
    ) -> list[int] | None:
        """The corpus indices of the epoch; None where the subclass does not know them (streams)."""
        if seq_order is not None:
            return [int(idx) for idx in seq_order]
        if seq_list is not None:
            return self._corpus_indices_for_tags(seq_list)
        get_seq_len = self.get_corpus_seq_len_fn() if self._ordering.needs_seq_lens else None
        return self.get_seq_order_for_epoch(epoch, self.get_total_num_seqs(), get_seq_len)

    def get_corpus_seq_len_fn(self) -> Callable[[int], int] | None:
        """The length of a sequence by its corpus index, known without loading its data; None if not known.

        The length-based orderings sort with it, here and in datasets that combine this one. It comes from
        ``seq_order_seq_lens_file`` if given, else from the dataset itself (:meth:`_get_seq_len_for_ordering`).
        """
        if self.seq_order_seq_lens_file:
            return self._seq_lens_from_file().item
        return self._get_seq_len_for_ordering()

    def _get_seq_len_for_ordering(self) -> Callable[[int], int] | None:
        """For subclasses: sequence length by corpus index (HDF lengths, durations ...); None if not known up front."""
        return None

    def _corpus_indices_for_tags(self, seq_list: Sequence[str]) -> list[int]:
        corpus_index = index_by_tag(self.get_all_tags())
        unknown = [tag for tag in seq_list if tag not in corpus_index]
        if unknown:
            raise DatasetError(
                f"{self}: {len(unknown)} of the {len(seq_list)} sequence tags given to init_seq_order (seq_list) are "
                f"not in the corpus, e.g. {unknown[:3]}; use tags as get_all_tags() lists them"
            )
        return [corpus_index[tag] for tag in seq_list]

    def set_sharding(self, shard_index: int, num_shards: int) -> None:
        """From the next :meth:`init_seq_order` on, visit only ``order[shard_index::num_shards]`` of each epoch.

        DataLoader workers and distributed ranks use this (shard ``rank * num_workers + worker`` of
        ``world_size * num_workers``).
        """
        if not (isinstance(num_shards, int) and num_shards >= 1 and 0 <= shard_index < num_shards):
            raise DatasetError(f"{self}: invalid shard {shard_index!r} of {num_shards!r}")
        if num_shards > 1 and not self.supports_sharding():
            raise DatasetError(
                f"{self} cannot be sharded (over DataLoader workers or distributed ranks); use one DataLoader "
                "worker, or wrap it in a dataset that supports sharding"
            )
        self._shard_index, self._num_shards = shard_index, num_shards

    def supports_sharding(self) -> bool:
        """Whether :meth:`set_sharding` works: True for datasets whose order comes from get_seq_order_for_epoch."""
        return False

    def get_seq_order_for_epoch(
        self, epoch: int | None, num_seqs: int, get_seq_len: Callable[[int], int] | None = None
    ) -> list[int]:
        """The corpus indices to visit in this epoch, in order (selection, ordering, partition, shard).

        :param num_seqs: the corpus size.
        :param get_seq_len: length by corpus index, for the length-based orderings; without it, the lengths
            come from ``seq_order_seq_lens_file`` if given.
        """
        corpus = self._get_corpus_selection(num_seqs)
        if self.random_subset is not None:
            rng = np.random.default_rng([self._get_random_seed_for_epoch(epoch), 1])
            chosen = rng.choice(len(corpus), _subset_size(self.random_subset, len(corpus)), replace=False)
            corpus = corpus[np.sort(chosen)]
        seq_lens = None
        if self._ordering.needs_seq_lens:
            if get_seq_len is None and self.seq_order_seq_lens_file:
                get_seq_len = self._seq_lens_from_file().item
            if get_seq_len is None:
                raise DatasetError(
                    f"{self}: seq_ordering {self.seq_ordering!r} sorts by sequence length, but this dataset cannot "
                    "tell the lengths before loading the data; give seq_order_seq_lens_file or use an ordering that "
                    "does not sort (default, random)"
                )
            seq_lens = np.fromiter((get_seq_len(idx) for idx in corpus.tolist()), dtype=np.int64, count=len(corpus))
        seed = self._get_random_seed_for_epoch(epoch, self._ordering.num_epochs_fixed)
        order = corpus[make_seq_order(self._ordering, len(corpus), seed=seed, seq_lens=seq_lens)]
        return self._split_epoch_order(epoch, order)

    def _split_epoch_order(self, epoch: int | None, order: np.ndarray) -> list[int]:
        """From the ordered full epoch to this process's part: partition_epoch or repeat_epoch,
        :meth:`_filter_epoch_order`, then the shard."""
        if epoch is not None and self.partition_epoch > 1:
            if 0 < len(order) < self.partition_epoch:
                raise DatasetError(
                    f"{self}: partition_epoch={self.partition_epoch} splits the {len(order)} sequences of a full "
                    f"epoch, so some sub-epochs would have none; set partition_epoch to at most {len(order)}"
                )
            order = np.array_split(order, self.partition_epoch)[(epoch - 1) % self.partition_epoch]
        if epoch is not None and self.repeat_epoch > 1:
            order = np.tile(order, self.repeat_epoch)
        return self._shard_order(self._filter_epoch_order(epoch, order))

    def _filter_epoch_order(self, epoch: int | None, order: np.ndarray) -> np.ndarray:
        """For subclasses: drop sequences from the epoch's order (e.g. ``epoch_wise_filter``). It runs before the
        order is sharded, so that the kept sequences do not depend on the number of shards."""
        return order

    def _shard_order(self, order: Sequence[int] | np.ndarray) -> list[int]:
        """This process's part of an epoch's order (see :meth:`set_sharding`)."""
        return np.asarray(order, dtype=np.int64)[self._shard_index :: self._num_shards].tolist()

    def _get_random_seed_for_epoch(self, epoch: int | None, num_epochs_fixed: int = 1) -> int:
        """The epoch's seed: see the module docstring."""
        if self.fixed_random_seed is not None:
            return self.fixed_random_seed
        full_epoch = math.ceil((epoch or 1) / self.partition_epoch)
        full_epoch = math.ceil(full_epoch / num_epochs_fixed)
        return full_epoch + self.random_seed_offset

    def _seq_random_seed(self, corpus_idx: int) -> int:
        """The seed of one sequence's random choices (generated data, augmentation) in the current epoch: from the
        epoch's seed and the corpus index, so the same in every process, however the epoch is sharded."""
        epoch_seed = self._get_random_seed_for_epoch(self.epoch)
        # SeedSequence mixes the two, so that neighbouring sequences get unrelated random numbers.
        return int(np.random.SeedSequence([epoch_seed % 2**32, corpus_idx]).generate_state(1)[0])

    def _get_corpus_selection(self, num_seqs: int) -> np.ndarray:
        """The corpus indices left after the fixed selections (computed once per corpus size)."""
        if self._corpus_selection is not None and self._corpus_selection[0] == num_seqs:
            return self._corpus_selection[1]
        selected = np.arange(num_seqs, dtype=np.int64)
        if self.fixed_random_subset is not None:
            rng = np.random.default_rng(self.fixed_random_subset_seed)
            chosen = rng.choice(num_seqs, _subset_size(self.fixed_random_subset, num_seqs), replace=False)
            selected = np.sort(chosen).astype(np.int64)
        if self.seq_list_filter_file or self.unique_seq_tags:
            tags = self.get_all_tags()
            allowed = self._read_filter_tags() if self.seq_list_filter_file else None
            seen: set[str] = set()
            keep = []
            for idx in selected.tolist():
                tag = tags[idx]
                if (allowed is None or tag in allowed) and not (self.unique_seq_tags and tag in seen):
                    keep.append(idx)
                    seen.add(tag)
            selected = np.array(keep, dtype=np.int64)
        self._corpus_selection = (num_seqs, selected)
        return selected

    def _read_filter_tags(self) -> set[str]:
        return set(read_tag_list(self.seq_list_filter_file, f"{self} seq_list_filter_file"))

    def _seq_lens_from_file(self) -> np.ndarray:
        """The length of each corpus sequence from ``seq_order_seq_lens_file`` (read once)."""
        if self._seq_lens_from_file_cache is None:
            lens_by_tag = read_dict_file(self.seq_order_seq_lens_file, f"{self} seq_order_seq_lens_file")
            tags = self.get_all_tags()
            missing = [tag for tag in tags if tag not in lens_by_tag]
            if missing:
                raise DatasetError(
                    f"{self}: seq_order_seq_lens_file {self.seq_order_seq_lens_file!r} has no entry for {len(missing)} "
                    f"of the {len(tags)} sequences, e.g. {missing[:3]}; write the file for this corpus"
                )
            self._seq_lens_from_file_cache = np.array([lens_by_tag[tag] for tag in tags], dtype=np.int64)
        return self._seq_lens_from_file_cache

    def finish_epoch(self) -> None:
        """Called after the epoch; subclasses free per-epoch memory here."""

    # --- sequences of the current epoch ------------------------------------------------------------------

    @property
    def num_seqs(self) -> int:
        """The number of sequences of the current epoch (DatasetError if not known or infinite)."""
        if self._seq_order is None:
            raise DatasetError(f"{self}: number of sequences not known (call init_seq_order first)")
        return len(self._seq_order)

    def get_total_num_seqs(self) -> int:
        """The corpus size, independent of epoch, ordering and partitioning."""
        raise DatasetError(f"{self}: the total number of sequences is not known")

    def is_less_than_num_seqs(self, n: int) -> bool:
        """Whether ``seq_idx = n`` is still in this epoch (works also where num_seqs is not known up front)."""
        return n < self.num_seqs

    def get_current_seq_order(self) -> list[int]:
        """The corpus index of each position of the current epoch."""
        if self._seq_order is None:
            raise DatasetError(f"{self}: no sequence order (call init_seq_order first)")
        return self._seq_order

    def have_corpus_seq_idx(self) -> bool:
        return self._seq_order is not None

    def get_corpus_seq_idx(self, seq_idx: int) -> int:
        return self.get_current_seq_order()[seq_idx]

    def have_get_corpus_seq(self) -> bool:
        """Whether :meth:`get_corpus_seq` works (random access by corpus index, independent of the epoch order)."""
        return False

    def get_corpus_seq(self, corpus_idx: int) -> DatasetSeq:
        """The sequence at ``corpus_idx`` of the corpus; see :meth:`have_get_corpus_seq`."""
        raise NotImplementedError(f"{type(self).__name__}.get_corpus_seq")

    def load_seqs(self, start: int, end: int) -> None:
        """Make the sequences ``start`` .. ``end - 1`` available to :meth:`get_data` (a hint for caching)."""
        if start < 0 or end < start:
            raise DatasetError(f"{self}: invalid sequence range {start}..{end}")

    def get_data(self, seq_idx: int, key: str) -> np.ndarray:
        """The data of one sequence for one key, time first."""
        raise NotImplementedError(f"{type(self).__name__}.get_data")

    def get_tag(self, seq_idx: int) -> str:
        return f"seq-{self.get_corpus_seq_idx(seq_idx)}"

    def get_all_tags(self) -> list[str]:
        """The tags of the whole corpus, in corpus order."""
        return [f"seq-{idx}" for idx in range(self.get_total_num_seqs())]

    def get_seq_length(self, seq_idx: int) -> dict[str, int]:
        """The length (first axis) of each key of one sequence; a scalar counts as 1."""
        lengths = {}
        for key in self.get_data_keys():
            data = self.get_data(seq_idx, key)
            lengths[key] = data.shape[0] if data.ndim else 1
        return lengths

    def knows_lengths_without_loading(self) -> bool:
        """Whether, after ``init_seq_order``, :meth:`get_seq_length` and :meth:`get_tag` of any sequence of the epoch
        are cheap without :meth:`load_seqs` (lengths from an index, no data read), and :meth:`get_data` reads any
        sequence in any order. Then with ``batching_scope = "epoch"`` each of several shards batches the epoch on the
        lengths and reads only the sequences of its own batches."""
        return False

    def get_complete_frac(self, seq_idx: int) -> float | None:
        """How much of the epoch is done after ``seq_idx``, in (0, 1]; None if the size is not known."""
        try:
            total = self.num_seqs
        except DatasetError:
            total = self.estimated_num_seqs
        if not total:
            return None
        return min(1.0, (seq_idx + 1) / total)

    # --- data description --------------------------------------------------------------------------------

    def get_data_keys(self) -> list[str]:
        has_data = "data" in self.num_outputs or self.num_inputs
        return (["data"] if has_data else []) + self.get_target_list()

    def get_target_list(self) -> list[str]:
        return [key for key in self.num_outputs if key != "data"]

    def get_data_dim(self, key: str) -> int:
        """The feature dimension (dense data) or the number of classes (sparse data)."""
        if key in self.num_outputs:
            return self.num_outputs[key][0]
        if key == "data" and self.num_inputs:
            return self.num_inputs
        raise DatasetError(f"{self}: unknown data key {key!r}; known keys: {self.get_data_keys()}")

    def get_data_dtype(self, key: str) -> str:
        return "int32" if self.is_data_sparse(key) else "float32"

    def is_data_sparse(self, key: str) -> bool:
        if key in self.num_outputs:
            return self.num_outputs[key][1] <= 1
        return False

    def get_data_shape(self, key: str) -> list[int]:
        """The shape of one time frame: ``[]`` for sparse data, ``[dim]`` (or more) for dense data."""
        if self.is_data_sparse(key):
            return []
        ndim = self.num_outputs[key][1] if key in self.num_outputs else 2
        return [self.get_data_dim(key)] if ndim >= 2 else []

    def len_info(self) -> str:
        """A short description of the size for logs."""
        try:
            return f"{self.name}, {self.num_seqs} seqs"
        except DatasetError:
            return f"{self.name}, unknown number of seqs"

    def serialize_data(self, key: str, data: np.ndarray) -> str:
        """One sequence's data as text: label strings joined by spaces, bytes decoded as UTF-8."""
        if key in self.labels and data.ndim == 1:
            return " ".join(self.labels[key][int(idx)] for idx in data)
        if data.dtype == np.uint8:
            return data.tobytes().decode("utf8")
        return " ".join(map(str, data.flatten().tolist()))


def _check_count(dataset: Dataset, key: str, value: Any) -> int:
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise DatasetError(f"{dataset}: {key} must be a positive int, got {value!r}")
    return value


def _check_subset(dataset: Dataset, key: str, value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise DatasetError(f"{dataset}: {key} must be a count (int >= 1) or a fraction (0 < float <= 1), got {value!r}")
    if isinstance(value, float) and value > 1:
        raise DatasetError(f"{dataset}: {key} as a fraction must be at most 1, got {value!r}")
    return value


def _subset_size(subset: int | float, num_seqs: int) -> int:
    if isinstance(subset, float):
        return max(1, int(round(subset * num_seqs))) if num_seqs else 0
    return min(subset, num_seqs)


def __getattr__(name: str) -> Any:
    # RETURNN's import path ``returnn.datasets.basic.init_dataset``; the registry imports this module, so it is
    # looked up lazily instead of imported at the top.
    if name in ("init_dataset", "get_dataset_class"):
        from returnn.datasets import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
